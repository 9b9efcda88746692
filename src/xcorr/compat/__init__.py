"""Drop-in replacements for the correlations of other packages: compiled extensions of
optical-flow networks, and the correlation heads of Siamese trackers.

Changing one import line ports a network; the rest of its code stays as it is:

* ``from spatial_correlation_sampler import SpatialCorrelationSampler`` becomes
  ``from xcorr.compat.spatial_correlation_sampler import SpatialCorrelationSampler``
  (:mod:`xcorr.compat.spatial_correlation_sampler`);
* ``from correlation_package.correlation import Correlation`` (flownet2-pytorch) becomes
  ``from xcorr.compat.flownet2 import Correlation`` (:mod:`xcorr.compat.flownet2`);
* ``from pysot.core.xcorr import xcorr_depthwise`` and ``from pysot.models.head.rpn import
  DepthwiseRPN`` (pysot: SiamRPN, SiamRPN++, SiamMask) become ``from xcorr.compat.pysot import
  ...`` (:mod:`xcorr.compat.pysot`), whose heads load pysot checkpoints' weights as they are;
* ``from siamfc.heads import SiamFC`` (siamfc-pytorch) becomes ``from xcorr.compat.siamfc import
  SiamFC`` (:mod:`xcorr.compat.siamfc`);
* ``from skimage.feature import match_template`` (scikit-image) becomes ``from
  xcorr.compat.skimage import match_template`` (:mod:`xcorr.compat.skimage`), numpy in and out.

The network layers are plain PyTorch on :func:`xcorr.volumes.correlate` (the flow layers) or
:func:`xcorr.xcorr` (the tracker heads), so they run on any device, in every floating-point dtype
(half precision accumulated in float32), differentiate in their inputs and let the planner choose
the method. scikit-image's ``match_template`` is :func:`xcorr.match_template`'s ``"ccoeff_normed"``
numerator and window sums, in float64, under scikit-image's rules for windows without spread.
"""

from . import flownet2, pysot, siamfc, skimage, spatial_correlation_sampler

__all__ = ["flownet2", "pysot", "siamfc", "skimage", "spatial_correlation_sampler"]
