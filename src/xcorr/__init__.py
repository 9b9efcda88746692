"""xcorr: exact, fast, batched, differentiable cross-correlation for PyTorch."""
from .match import find_peaks, match_template
from .ops import xcorr

__all__ = ["find_peaks", "match_template", "xcorr"]

__version__ = "0.1.0"
