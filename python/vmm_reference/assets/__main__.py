"""``python -m vmm_reference.assets``."""

import sys

from .cli import main

sys.exit(main())
