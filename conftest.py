"""Session set-up shared by the tests and the docstring examples of src/xcorr."""

import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

import xcorr

# Running the package's entry point would start the command line.
collect_ignore = ["src/xcorr/__main__.py"]

_profile_dir = None


def pytest_configure(config):
    # A profile saved by `python -m xcorr fit --save` on this machine would change the planner's
    # answers; tests and examples are written against the built-in constants. The planner reads
    # the profile on its first decision, so pointing it at an empty folder here covers everything.
    global _profile_dir
    _profile_dir = tempfile.mkdtemp(prefix="xcorr-tests-")
    os.environ["XCORR_PROFILE"] = os.path.join(_profile_dir, "profile.json")


def pytest_unconfigure(config):
    if _profile_dir is not None:
        shutil.rmtree(_profile_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    """Examples are written as a user would type them, with ``torch``, ``np`` and ``xcorr`` imported."""
    doctest_namespace.update(torch=torch, np=np, xcorr=xcorr)
