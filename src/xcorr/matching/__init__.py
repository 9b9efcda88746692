"""Template matching: OpenCV's six ``TM_*`` scores on the correlation backends, batched and
differentiable, exact on dark and flat windows; and peak finding.

Each score is one correlation plus window statistics. Unmasked, the correlation goes through
:func:`xcorr.xcorr` and the window statistics come from box filters (:mod:`.dense`, whose notes
say how normed scores keep their precision). Masked windows are weighted by the mask, so their sums
are correlations with the mask, computed in float64 (:mod:`.masked`).

The parts: :mod:`.api`, the public functions and the conversion of their arguments;
:mod:`.checks`, their validation; :mod:`.scores`, which sends a problem to :mod:`.dense` or
:mod:`.masked`; :mod:`.normalise`, OpenCV's rules for normed scores, shared by both;
:mod:`.rounding`, the bound on a float32 numerator's error; :mod:`.peaks`, peak finding.
"""
