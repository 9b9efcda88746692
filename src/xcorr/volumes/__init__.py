"""Cost volumes for optical flow and stereo: local and stereo correlations (:mod:`.api`), RAFT's
correlation pyramid (:mod:`.pyramid`), their problem (:mod:`.spec`), their families for the planner
and their backends."""

from .api import correlate, local_correlation, stereo_correlation
from .spec import VolumeSpec

__all__ = ["VolumeSpec", "correlate", "local_correlation", "stereo_correlation"]
