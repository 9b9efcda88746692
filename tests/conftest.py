import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Tolerances by dtype, relative to the largest |output|.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def assert_close_rel(actual, expected, dtype=None):
    dtype = dtype or actual.dtype
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if expected.numel() == 0:
        return
    # Test inputs are O(1), so the scale is floored at 1: an expected result that is all zeros
    # (every window in the padding) is then compared absolutely instead of relative to zero.
    scale = expected.abs().max().clamp_min(1.0)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]:.1g} for {dtype}"


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


LAYOUTS = ["transposed", "sliced", "channels_last", "expanded"]


def relayout(x, z, layout):
    """Non-contiguous versions of ``x`` and ``z`` (B, C, H, W) in one of :data:`LAYOUTS`."""
    if layout == "transposed":
        x, z = x.transpose(2, 3), z.transpose(2, 3)
    elif layout == "sliced":
        x, z = torch.cat([x, x], dim=3)[..., ::2], z[:, :, :3, 1:]
    elif layout == "channels_last":
        x, z = x.to(memory_format=torch.channels_last), z.to(memory_format=torch.channels_last)
    else:
        x = x[:1].expand(x.shape[0], -1, -1, -1)
    assert not x.is_contiguous()
    return x, z
