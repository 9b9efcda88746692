"""The only place that chooses a method for :func:`xcorr.xcorr`."""
from __future__ import annotations

from ._spec import Spec

#: Template area (taps, after dilation) from which FFT beats direct convolution.
FFT_MIN_TEMPLATE_AREA = 15 * 15


def select(spec: Spec) -> str:
    """Pick the method for a validated problem."""
    hd, wd = spec.dilated_template
    h, w = spec.z_shape[-2:]
    if h * w >= FFT_MIN_TEMPLATE_AREA and spec.stride == (1, 1):
        return "fft"
    return "direct"
