"""Correlations of search tensors with templates: :func:`xcorr.xcorr`, :func:`xcorr.pixelwise`,
template plans, their problem (:mod:`.spec`), its gradients as correlations (:mod:`.adjoint`,
:mod:`.passes`), its family for the planner and its backends."""
