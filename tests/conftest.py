import sys
from pathlib import Path

import pytest

# The test modules import their shared helpers (helpers.py, reference.py) by name.
sys.path.insert(0, str(Path(__file__).parent))

from helpers import DEVICES


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
