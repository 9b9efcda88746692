"""Whether PyTorch is tracing the caller: ``torch.compile``, ``torch.export``, ``torch.jit.trace``
or either ONNX exporter (the TorchScript one traces with ``torch.jit``, the dynamo one with
``torch.export``).

Caches keyed by shapes must not be read or filled while tracing, where shapes may be symbolic
and tensors fake. :func:`tracing` costs well under a microsecond, so the eager path can ask it
on every call; the ONNX flags behind :func:`exporting` cost a few microseconds and are only
asked while tracing.
"""

from __future__ import annotations

import torch

_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)  # absent from older torch
_is_exporting = getattr(getattr(torch, "compiler", None), "is_exporting", None)


def compiling() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing the caller."""
    return bool(_is_compiling()) if _is_compiling is not None else False


def tracing() -> bool:
    """Whether any tracer (compile, export, ``torch.jit.trace``, ONNX export) runs the caller."""
    return torch.jit.is_tracing() or compiling()


def exporting() -> bool:
    """Whether ``torch.onnx.export`` (either exporter) or ``torch.export`` is tracing the caller."""
    if not tracing():
        return False
    return torch.onnx.is_in_onnx_export() or (bool(_is_exporting()) if _is_exporting is not None else False)
