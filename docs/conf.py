"""Sphinx configuration of the xcorr reference: ``make docs`` builds it into docs/_build/html."""

import xcorr

project = "xcorr"
author = "xcorr contributors"
copyright = "xcorr contributors"
release = version = xcorr.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"xcorr {release}"

# The docstrings are Google style (Args:, Returns:, Example:) with types written in the text.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
# extra_repr is the hook behind repr() of an nn.Module, not API of its own.
autodoc_default_options = {"members": True, "exclude-members": "extra_repr"}
# nn.Module.forward's docstring is PyTorch's boilerplate; each class says what forward(x, z) does.
autodoc_inherit_docstrings = False
# Headings in the markdown pages get anchors, so pages can link to a section.
myst_heading_anchors = 3

# api.rst documents every name of xcorr.__all__; a class of xcorr.nn left out of it would be missing
# from the reference.
_missing = set(xcorr.nn.__all__) - set(xcorr.__all__)
if _missing:
    raise RuntimeError(f"xcorr.nn exports {sorted(_missing)} but xcorr.__all__ does not; add them there")
