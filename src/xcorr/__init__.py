"""xcorr: exact, fast, batched, differentiable cross-correlation for PyTorch."""

import torch.fx

from . import nn
from .correlation.api import choose_method, pixelwise, xcorr
from .correlation.plans import Plan, plan
from .matching.api import find_peaks, match_template
from .matching.detect import Matches, find_matches
from .matching.plans import MatchPlan, match_plan
from .nn import DepthwiseXCorrHead, LocalCorrelation, SiamFCHead, StereoCorrelation, UpChannelHead, XCorr
from .planning import clear_cache, load_tuning, save_tuning, set_autotune
from .volumes.api import local_correlation, stereo_correlation
from .volumes.pyramid import CorrPyramid
from .volumes.stereo_pyramid import StereoCorrPyramid

# Leaf functions of torch.fx.symbolic_trace for models that call xcorr.xcorr / xcorr.pixelwise
# themselves (the heads of xcorr.nn are covered in nn.py): one call_function node each.
torch.fx.wrap("xcorr")
torch.fx.wrap("pixelwise")
torch.fx.wrap("local_correlation")
torch.fx.wrap("stereo_correlation")

__all__ = [
    "CorrPyramid",
    "DepthwiseXCorrHead",
    "LocalCorrelation",
    "MatchPlan",
    "Matches",
    "Plan",
    "SiamFCHead",
    "StereoCorrPyramid",
    "StereoCorrelation",
    "UpChannelHead",
    "XCorr",
    "choose_method",
    "clear_cache",
    "find_matches",
    "find_peaks",
    "load_tuning",
    "local_correlation",
    "match_plan",
    "match_template",
    "nn",
    "pixelwise",
    "plan",
    "save_tuning",
    "set_autotune",
    "stereo_correlation",
    "xcorr",
]

__version__ = "0.1.0"
