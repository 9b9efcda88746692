"""What the tests share: devices, tolerances, input makers and layouts (fixtures live in conftest.py)."""

import math

import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

METHODS = ["auto", "direct", "fft", "gather"]
MODES = ["naive", "depthwise", "upchannel"]

#: Tolerances by dtype, relative to the largest |output|. float32 is the promise of the planner
#: and docs/performance.md: within 2e-6 of float64 (measured 1e-7 to 6e-7 on the test shapes).
TOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def direct_float32_tol(terms: int) -> float:
    """The float32 tolerance of ``method="direct"`` whose outputs are running sums of ``terms`` products.

    A convolution kernel may sum each output in one float32 running sum (the depthwise kernels of
    modes naive and depthwise: h*w terms; the dense one of mode upchannel with one template:
    C*h*w), whose error grows as the square root of its length: measured 1.1e-6 to 1.4e-6 at
    32x32 taps, 2.4e-6 at 64x64, 5.2e-6 at 127x127 (one channel, uniform data), 6.7e-6 at
    8x64x64 (upchannel). That is why the planner leaves float32 direct out past 32x32 taps
    (``DIRECT_MAX_TAPS_FLOAT32``); asked for by name, it is held to 2e-6 per 32 of the square
    root of its length.
    """
    return TOL[torch.float32] * max(1.0, math.sqrt(terms) / 32)


def assert_close_rel(actual, expected, dtype=None, tol=None):
    """``actual`` within ``tol`` (by default :data:`TOL` of ``dtype``) of ``expected``, relative to its largest |value|."""
    dtype = dtype or actual.dtype
    tol = TOL[dtype] if tol is None else tol
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if expected.numel() == 0:
        return
    # Test inputs are O(1), so the scale is floored at 1: an expected result that is all zeros
    # (every window in the padding) is then compared absolutely instead of relative to zero.
    scale = expected.abs().max().clamp_min(1.0)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= tol, f"relative error {err:.3g} > {tol:.2g} for {dtype}"


# (B, Bz, C, K, H, W, h, w, padding, stride, dilation): odd sizes, shared and per-item templates.
GEOMETRIES = [
    (1, 1, 3, 2, 9, 11, 3, 5, 0, 1, 1),
    (3, 3, 2, 1, 8, 7, 4, 3, 1, 1, 1),
    (5, 1, 3, 3, 13, 10, 5, 4, (2, 1), (2, 3), 1),
    (6, 2, 2, 2, 12, 15, 3, 3, 0, 1, (2, 3)),
    (4, 2, 4, 2, 17, 16, 4, 5, (1, 3), 3, 2),
    (1, 1, 1, 1, 5, 5, 5, 5, 0, 1, 1),
    (2, 2, 3, 1, 6, 6, 1, 1, 0, 2, 1),
]


def make(B, Bz, C, K, H, W, h, w, mode, dtype=torch.float64, device="cpu", seed=0):
    """Search (B, C, H, W) and template (Bz, C or K*C, h, w) of standard normal values."""
    g = torch.Generator().manual_seed(seed)
    Cz = K * C if mode == "upchannel" else C
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    z = torch.randn(Bz, Cz, h, w, generator=g, dtype=torch.float64)
    return x.to(device, dtype), z.to(device, dtype)


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


def exit_code(main, argv) -> int:
    """``main(argv)``'s exit status, argparse's usage errors (a ``SystemExit``) included."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code
