"""Peak finding on score maps: the best positions, best first, with non-maximum suppression."""

from __future__ import annotations

import torch

#: A peak: the template's top-left corner ``(x, y)`` and its score.
Peak = tuple[int, int, float]


def _peaks(s: torch.Tensor, k: int, distance: int, largest: bool) -> list[Peak]:
    """The ``k`` best positions of the map ``s`` (H', W'), at least ``distance`` apart (Chebyshev);
    NaN never wins."""
    work = s.double().cpu()
    work = work.clone() if largest else -work
    work[torch.isnan(work)] = -torch.inf
    H, W = work.shape
    peaks = []
    for _ in range(min(k, H * W)):
        index = int(torch.argmax(work))
        y, x = divmod(index, W)
        if work[y, x] == -torch.inf:
            break
        peaks.append((x, y, float(s[y, x])))
        work[max(0, y - distance + 1) : y + distance, max(0, x - distance + 1) : x + distance] = -torch.inf
    return peaks
