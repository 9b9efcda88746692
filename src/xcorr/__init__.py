"""xcorr: exact, fast, batched, differentiable cross-correlation for PyTorch."""
from .ops import choose_method, xcorr
from .planner import set_autotune
from .plans import Plan, plan

__all__ = ["Plan", "choose_method", "plan", "set_autotune", "xcorr"]

__version__ = "0.1.0"
