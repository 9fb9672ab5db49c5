"""``python -m vmm_reference``: the same as the ``vmm-reference`` command."""

import sys

from .cli import main

sys.exit(main())
