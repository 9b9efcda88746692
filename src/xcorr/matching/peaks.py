"""Peak finding on score maps: the best positions, best first, with non-maximum suppression."""

from __future__ import annotations

import torch

#: A peak: the template's top-left corner ``(x, y)`` and its score (``(x, y, z, score)`` on volumes).
Peak = tuple


def _peaks(s: torch.Tensor, k: int, distance: int, largest: bool) -> list[Peak]:
    """The ``k`` best positions of the map ``s`` (H', W') or (D', H', W'), at least ``distance``
    apart (Chebyshev); NaN never wins."""
    work = s.double().cpu()
    work = work.clone() if largest else -work
    work[torch.isnan(work)] = -torch.inf
    peaks: list[Peak] = []
    for _ in range(min(k, work.numel())):
        at = tuple(int(i) for i in torch.unravel_index(torch.argmax(work), work.shape))
        if work[at] == -torch.inf:
            break
        peaks.append((*reversed(at), float(s[at])))
        work[tuple(slice(max(0, i - distance + 1), i + distance) for i in at)] = -torch.inf
    return peaks
