import sys
from pathlib import Path

import pytest
import torch

# The test modules import their shared helpers (helpers.py, reference.py) by name.
sys.path.insert(0, str(Path(__file__).parent))

from helpers import DEVICES

import xcorr
from xcorr.planning.engine import ENGINE


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def fresh_planner():
    """A planning engine without measured winners, back to its defaults afterwards."""
    xcorr.clear_cache()
    yield
    xcorr.set_autotune(None)
    ENGINE.reset_constants()
    xcorr.clear_cache()


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches emptied before and after the test (compiled graphs of earlier tests would
    otherwise be reused or counted against the recompilation limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
