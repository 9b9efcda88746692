"""Sphinx configuration of the xcorr reference: ``make docs`` builds it into docs/_build/html."""

import importlib

from sphinx.util import logging

import xcorr
import xcorr.compat

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

# Every reference must resolve (with -W, one that does not fails the build). The site builds
# offline, so there is no intersphinx: names of other projects (torch, numpy, the standard library)
# stay plain text, and so do the dimension names of shapes written as types, Tensor[B, C, H, W].
nitpicky = True
nitpick_ignore_regex = [
    ("py:class", r"(torch|numpy|np|os|collections\.abc|typing)\.\w+(\.\w+)*"),
    ("py:class", r"Tensor|ndarray"),
    ("py:class", r"[A-Z][a-z]?|[a-z]|\w+(\*\w+)+"),
]

# api.rst documents every name of xcorr.__all__; a class of xcorr.nn left out of it would be missing
# from the reference.
_missing = set(xcorr.nn.__all__) - set(xcorr.__all__)
if _missing:
    raise RuntimeError(f"xcorr.nn exports {sorted(_missing)} but xcorr.__all__ does not; add them there")

# The public modules (every drop-in of xcorr.compat among them): every name of their __all__ must be
# on the site, under its own name or, for a module that exports a function of the package again
# (xcorr.volumes.local_correlation), under the package's.
PUBLIC_MODULES = (
    "xcorr",
    "xcorr.nn",
    "xcorr.volumes",
    "xcorr.compat",
    *(f"xcorr.compat.{name}" for name in xcorr.compat.__all__),
)


def _check_public_names(app, env):
    documented = set(env.get_domain("py").objects)
    top_level = {id(getattr(xcorr, name)): f"xcorr.{name}" for name in xcorr.__all__}
    missing = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        if module_name not in documented:
            missing[module_name] = None
        for name in module.__all__:
            value = getattr(module, name)
            names = {f"{module_name}.{name}", top_level.get(id(value)), getattr(value, "__name__", None)}
            if not names & documented:
                missing[f"{module_name}.{name}"] = None
    if missing:
        logging.getLogger(__name__).warning("public names missing from the API reference: %s", ", ".join(missing))


def setup(app):
    app.connect("env-check-consistency", _check_public_names)
