"""Drop-in replacements for the compiled correlation extensions of optical-flow networks.

Changing one import line ports a network; the rest of its code stays as it is:

* ``from spatial_correlation_sampler import SpatialCorrelationSampler`` becomes
  ``from xcorr.compat.spatial_correlation_sampler import SpatialCorrelationSampler``
  (:mod:`xcorr.compat.spatial_correlation_sampler`);
* ``from correlation_package.correlation import Correlation`` (flownet2-pytorch) becomes
  ``from xcorr.compat.flownet2 import Correlation`` (:mod:`xcorr.compat.flownet2`).

Both are plain PyTorch on :func:`xcorr.volumes.correlate`, so they run on any device, in every
floating-point dtype (half precision accumulated in float32), differentiate in both inputs,
export to ONNX and compile, and let the planner choose the method.
"""

from . import flownet2, spatial_correlation_sampler

__all__ = ["flownet2", "spatial_correlation_sampler"]
