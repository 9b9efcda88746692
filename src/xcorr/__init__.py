"""xcorr: exact, fast, batched, differentiable cross-correlation for PyTorch."""

import torch.fx

from . import nn
from .match import find_peaks, match_template
from .nn import DepthwiseXCorrHead, SiamFCHead, UpChannelHead, XCorr
from .ops import choose_method, pixelwise, xcorr
from .planner import clear_cache, load_tuning, save_tuning, set_autotune
from .plans import Plan, plan

# Leaf functions of torch.fx.symbolic_trace for models that call xcorr.xcorr / xcorr.pixelwise
# themselves (the heads of xcorr.nn are covered in nn.py): one call_function node each.
torch.fx.wrap("xcorr")
torch.fx.wrap("pixelwise")

__all__ = [
    "DepthwiseXCorrHead",
    "Plan",
    "SiamFCHead",
    "UpChannelHead",
    "XCorr",
    "choose_method",
    "clear_cache",
    "find_peaks",
    "load_tuning",
    "match_template",
    "nn",
    "pixelwise",
    "plan",
    "save_tuning",
    "set_autotune",
    "xcorr",
]

__version__ = "0.1.0"
