"""Sphinx configuration: the user guide (Markdown, MyST) and the API reference (autodoc)."""

project = "vmm-reference"
author = "the vmm-reference developers"
copyright = "the vmm-reference developers"  # noqa: A001

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
html_theme = "alabaster"
