"""Draw docs/detection.png: a synthetic scene, and the boxes that xcorr.find_matches finds in it.

Three patterns are pasted into a noisy background, some several times, some scaled and two
touching; each found box is drawn in its template's colour with its score.

    python tools/detection_figure.py [OUT.png]
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import xcorr
from xcorr.matching.detect import _resized

SCALES = (0.75, 1.0, 1.5)
#: (template, scale, x, y) of each pasted copy.
PLACED = [
    (0, 1.0, 20, 20),
    (1, 1.0, 48, 22),
    (2, 1.0, 150, 40),
    (0, 1.5, 210, 110),
    (1, 0.75, 60, 130),
    (2, 0.75, 250, 30),
    (0, 1.0, 120, 150),
    (1, 1.5, 20, 170),
]


def scene(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    image = (0.5 + 0.08 * rng.standard_normal((230, 300))).astype(np.float32)
    yy, xx = np.mgrid[:28, :28] / 27.0
    ring = (np.abs(np.hypot(yy - 0.5, xx - 0.5) - 0.32) < 0.1).astype(np.float32)
    cross = ((np.abs(yy - 0.5) < 0.12) | (np.abs(xx - 0.5) < 0.12)).astype(np.float32)
    wedge = (yy > xx).astype(np.float32) * 0.8 + 0.1 * np.sin(12 * xx)
    templates = [ring, cross, wedge.astype(np.float32)]
    for i, s, x, y in PLACED:
        t = _resized(torch.from_numpy(templates[i])[None, None], s)[0, 0].numpy()
        image[y : y + t.shape[0], x : x + t.shape[1]] = t
    image += (0.05 * rng.standard_normal(image.shape)).astype(np.float32)
    return image, templates


def main(out: str = "docs/detection.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image, templates = scene()
    found = xcorr.find_matches(image, templates, threshold=0.8, scales=list(SCALES))
    colours = ["tab:red", "tab:blue", "tab:orange"]
    fig, ax = plt.subplots(figsize=(6, 4.6), dpi=80)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    for (x, y, w, h), t, s, score in zip(found.boxes, found.template, found.scale, found.scores):
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, lw=1.6, color=colours[t]))
        ax.text(x, y - 2, f"{t}@{s:g}: {score:.2f}", color=colours[t], fontsize=7)
    ax.set_title(f"find_matches: {len(found)} matches of 3 templates at scales {SCALES}", fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    # 64 colours keep the noisy background small (a tenth of the full-colour file).
    Image.open(buffer).convert("RGB").quantize(64).save(out, optimize=True)
    print(f"{out}: {len(found)} matches")


if __name__ == "__main__":
    main(*sys.argv[1:])
