"""The only place that chooses a method for :func:`xcorr.xcorr`."""
from __future__ import annotations

import torch

from ._spec import Spec

#: Template area (taps, after dilation) from which FFT beats direct convolution.
FFT_MIN_TEMPLATE_AREA = 15 * 15

#: The method ``auto`` picks while a graph is exported: no convolution takes a run-time weight
#: (TensorRT and mobile runtimes refuse those) and nothing depends on the batch size.
EXPORT_METHOD = "gather"


def exporting() -> bool:
    """Whether ``torch.onnx.export`` (either exporter) or ``torch.export`` is tracing the caller."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # absent from older torch
    return torch.onnx.is_in_onnx_export() or (is_exporting is not None and is_exporting())


def select(spec: Spec) -> str:
    """Pick the method for a validated problem."""
    if exporting():
        return EXPORT_METHOD
    hd, wd = spec.dilated_template
    h, w = spec.z_shape[-2:]
    if h * w >= FFT_MIN_TEMPLATE_AREA and spec.stride == (1, 1):
        return "fft"
    return "direct"
