import sys
from pathlib import Path

import pytest

# The test modules import their shared helpers (helpers.py, reference.py) by name.
sys.path.insert(0, str(Path(__file__).parent))

from helpers import DEVICES

from xcorr import planner


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def fresh_planner():
    """A planner without measured winners, back to its defaults afterwards."""
    planner.clear_cache()
    yield
    planner.set_autotune(None)
    planner.PLANNER.reset_constants()
    planner.clear_cache()
