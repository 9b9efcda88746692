"""The scores of many templates against the same images, the images' share of the work done once.

:func:`xcorr.find_matches` scores several templates, each at several scales, against one image.
Scored one by one (:mod:`.dense`), every template would transform the image again and sum its
windows again. Here:

* **One correlation per template size.** The templates of one size are the output channels of
  :func:`xcorr.xcorr` calls in ``"upchannel"`` mode, so the image is transformed once per size
  (for FFT) and every template's spectrum meets the same image spectrum. (Padding the templates
  to the largest size, for one call in all, padded the image too: 1024 + 18 rows took transforms
  of 1050, 1.5-5x the cost of 1024's.)
* **Window statistics once per distinct template size**, shared by the templates of that size
  (once per call of that size where the images are cut into pieces).
* Per template, what depends on it: the numerator's exactness check (:class:`.dense._Problem`, so
  every normed score keeps :mod:`.dense`'s guarantee, within 2e-4 of float64 at every window) and
  the normalisation (OpenCV's rules, :func:`.normalise._normalise`).

The shifts that keep large means out of the rounding must not depend on the template, since the
templates share the image's correlation: ``ccoeff`` centres each template and each image by its
own mean, as :mod:`.dense` does, and ``ccorr`` shifts nothing. ``sqdiff`` shifts image and
template by the template's mean, so it is not scored here (see :data:`SHARED`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..correlation import api as correlation
from ..correlation.family import CORRELATION, PER_PASS
from .dense import (
    _PIECE,
    _assemble,
    _centred_sums,
    _pieces,
    _Problem,
    _shifted_image,
    _Template,
    _window_squares,
    _without_residual,
)
from .normalise import _normalise
from .rounding import _Rounding, energies
from .stages import stage

#: Output elements of one correlation call (images x templates x positions): the numerators of
#: one template size wait in memory until every one of them is scored, so more templates are
#: correlated in several calls. The FFT backend bounds its own temporaries within a call (its
#: up-channel groups), so only the outputs count here: 64 MB of float32.
_CALL_ELEMENTS = 1 << 24


def _many(x: torch.Tensor, zs: Sequence[torch.Tensor], method: str) -> list[torch.Tensor]:
    """The ``method`` scores (N, 1, H-h+1, W-w+1) of images ``x`` (N, C, H, W) against each template
    of ``zs`` (1, C, h, w each, sizes may differ, none larger than the images): as
    :func:`.dense._dense` with one template for all images, without gradients. ``method`` one of
    :data:`SHARED`; finite inputs of float32 or float64 only (the caller sends others through
    :func:`.scores._scores`)."""
    out: list[torch.Tensor | None] = [None] * len(zs)
    for j, score in _each(x, zs, method):
        out[j] = score
    return [o for o in out if o is not None]


def _each(x: torch.Tensor, zs: Sequence[torch.Tensor], method: str) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`_many`'s scores one template at a time, as ``(index in zs, scores)``, templates of
    one size after another: a caller that reduces each map before taking the next (as
    :func:`xcorr.find_matches` does) holds the numerators of one call and the scores of one
    template, not every template's maps at once (24 maps of 1024x1024 made and freed in each
    call came back as fresh pages from the kernel on the next: a quarter of its time)."""
    family = method.split("_")[0]
    N, C, H, W = x.shape
    xs, shift = _shifted_image(x, family, None, N)
    piece = 2 * _PIECE if family == "ccoeff" and x.dtype == torch.float32 else _PIECE
    x2 = None  # the images' energies, for every FFT numerator's rounding bound
    for (h, w), members in _by_size(zs).items():
        step = max(1, _CALL_ELEMENTS // (N * (H - h + 1) * (W - w + 1)))
        rows_images = list(_pieces(N, C, [H, W], h, piece))
        # One piece's statistics serve every call of this size; several pieces' are made again
        # per call (keeping them all would undo the pieces' bound on memory).
        whole = _Statistics(x, xs, shift, h, w) if len(rows_images) == 1 else None
        for start in range(0, len(members), step):
            group = members[start : start + step]
            templates = [_Template.of(zs[j], method) for j in group]
            with stage("numerator"):
                nums, chosen = _numerators(xs, [t.zs for t in templates])
            if method in ("ccorr", "ccoeff"):
                yield from zip(group, nums)
                continue
            x2 = energies(xs) if x2 is None and chosen == "fft" and x.dtype == torch.float32 else x2
            problems = [_problem(x, xs, t, num, method, chosen, shift, x2) for t, num in zip(templates, nums)]
            pieces: list[list] = [[] for _ in group]
            for i, (rows, images) in enumerate(rows_images):
                stats = (
                    whole
                    if whole is not None
                    else _Statistics(x[images, :, rows], xs[images, :, rows], shift[images], h, w)
                )
                for k, j in enumerate(group):
                    pieces[k].append((images, _SCORE[family](problems[k], rows, images, stats)))
                    if i + 1 == len(rows_images):  # its last piece: the template's scores are whole
                        yield j, _assemble(pieces[k], x.dtype)
                        pieces[k] = []


def _by_size(zs: Sequence[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    """The templates' indices per distinct size (h, w), in order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for j, z in enumerate(zs):
        groups.setdefault((z.shape[2], z.shape[3]), []).append(j)
    return groups


def _numerators(xs: torch.Tensor, zs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], str]:
    """The correlation of ``xs`` with each of ``zs`` (templates of one size; views
    (N, 1, H-h+1, W-w+1) of their ``"upchannel"`` output) in one call, and the backend whose
    forward computed them."""
    stacked = torch.cat(list(zs), 1)
    bound = correlation.bound(xs, stacked, "upchannel")
    out, option = bound.call(xs, stacked)
    chosen = CORRELATION.passes(option, bound.spec).forward if option == PER_PASS else option
    return [out[:, k : k + 1] for k in range(len(zs))], chosen


def _problem(
    x: torch.Tensor,
    xs: torch.Tensor,
    t: _Template,
    num: torch.Tensor,
    method: str,
    chosen: str,
    shift: torch.Tensor,
    x2: torch.Tensor | None = None,
) -> _Problem:
    """:mod:`.dense`'s problem of template ``t`` against every image (``k = N``), its numerator's
    error bound that of its output channel of the shared correlation."""
    N = x.shape[0]
    rounding = None
    if method.endswith("_normed") and num.dtype == torch.float32:
        rounding = _Rounding.of(xs, t.zs, num, chosen, N, x2)
    residual = t.residual.expand(N, -1) if t.residual is not None and num.dtype == torch.float32 else None
    flat = None if t.flat is None else t.flat.expand(N)
    return _Problem(x, xs, t.zs, num, method, N, t.tz2.expand(N), t.tnorm.expand(N), flat, rounding, shift, residual)


@dataclass
class _Statistics:
    """The window statistics of one piece (images ``x``, shifted ``xs = x - shift``; rows of the
    piece) for ``h x w`` windows, each computed on first use and shared by the templates of that
    size."""

    x: torch.Tensor
    xs: torch.Tensor
    shift: torch.Tensor
    h: int
    w: int
    _cache: dict = field(default_factory=dict)

    def _get(self, name: str, make):
        if name not in self._cache:
            with stage("window statistics"):
                self._cache[name] = make()
        return self._cache[name]

    def energy(self) -> torch.Tensor:
        """Window sums of squares of the images themselves (:meth:`.dense._Problem.energy`)."""
        return self._get("energy", lambda: _window_squares(self.x, self.h, self.w))

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ccoeff``'s ``(diff2, s2, s1)`` of the centred images (:func:`.dense._centred_sums`)."""
        return self._get("centred", lambda: _centred_sums(self.x, self.xs, self.shift, (self.h, self.w)))

    def most(self) -> float:
        """The largest window sum of squares of ``xs``."""
        return self._get("most", lambda: float(self.centred()[1].amax()))

    def denominator(self, family: str) -> torch.Tensor:
        """The squared denominator of ``family``'s normed scores: :meth:`energy` for ``ccorr``,
        ``diff2`` of :meth:`centred` for ``ccoeff``."""
        return self.energy() if family == "ccorr" else self.centred()[0]

    def lowest(self, family: str) -> torch.Tensor:
        """Each image's smallest :meth:`denominator`, (N,)."""
        return self._get(f"lowest {family}", lambda: self.denominator(family).flatten(1).amin(1))

    def least(self, family: str) -> float:
        """The smallest :meth:`denominator` of all the images."""
        return self._get(f"least {family}", lambda: float(self.lowest(family).amin()))

    def root(self, family: str, dtype: torch.dtype) -> torch.Tensor:
        """``rsqrt`` of :meth:`denominator` in ``dtype`` (the numerators'), for
        :func:`.normalise._normalise`'s case without near-flat windows."""
        return self._get(f"root {family} {dtype}", lambda: torch.rsqrt(self.denominator(family).to(dtype)))


def _ccorr_piece(p: _Problem, rows: slice, images: slice, stats: _Statistics) -> torch.Tensor:
    energy = stats.energy()
    with stage("exactness check"):
        num = p.numerator(rows, images, energy, energy, lowest=stats.lowest("ccorr"))
    with stage("normalisation"):
        low, root = stats.least("ccorr"), lambda: stats.root("ccorr", num.dtype)
        return _normalise(num, energy, p.scale(images), p.method, low=low, root=root)


def _ccoeff_piece(p: _Problem, rows: slice, images: slice, stats: _Statistics) -> torch.Tensor:
    h, w = p.size
    diff2, s2, s1 = stats.centred()
    with stage("exactness check"):
        num = p.numerator(rows, images, diff2, s2, lowest=stats.lowest("ccoeff"))
        if p.residual is not None:
            num = _without_residual(num, s1, p.residual[images], h * w)
    most = (stats.most() ** 0.5 + (h * w * float(p.shift2[images].amax())) ** 0.5) ** 2
    with stage("normalisation"):
        low, root = stats.least("ccoeff"), lambda: stats.root("ccoeff", num.dtype)
        score = _normalise(num, diff2, p.scale(images), p.method, stats.energy, most, low=low, root=root)
        assert p.flat is not None  # ccoeff_normed's problems have the flat-template rule
        if bool(p.flat[images].any()):
            score = torch.ones_like(score)
    return score


_SCORE = {"ccorr": _ccorr_piece, "ccoeff": _ccoeff_piece}

#: The methods scored here; ``sqdiff``'s shift is the template's own mean (:mod:`.dense`), which
#: the templates cannot share, so its templates are scored one by one.
SHARED = ("ccorr", "ccorr_normed", "ccoeff", "ccoeff_normed")
