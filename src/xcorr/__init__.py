"""xcorr: exact, fast, batched, differentiable cross-correlation for PyTorch."""
from .ops import xcorr

__all__ = ["xcorr"]

__version__ = "0.1.0"
