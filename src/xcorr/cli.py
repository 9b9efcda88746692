"""Command line: ``python -m xcorr {demo,bench,match,fit}``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class CliError(Exception):
    """A user error worth one line on stderr and exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xcorr", description="Exact, fast cross-correlation for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="run the Siamese trackers' correlations and template matching on a real photo",
        description="Time the four correlations of Siamese trackers against the grouped-conv formulation, "
        "then match templates in a photograph and write a picture of the matches (xcorr-match-demo.png).",
    )
    demo.add_argument(
        "--full",
        action="store_true",
        help="the correlations at the grouped conv's slowest sizes (256 channels, 255x255 searches, 127x127 "
        "templates; minutes) instead of 64 channels, 127x127 and 63x63 (seconds)",
    )
    _add_match(sub)
    _add_bench(sub)
    _add_fit(sub)
    return parser


def _add_match(sub: Any) -> None:
    match = sub.add_parser(
        "match",
        help="find templates in an image, or in many image files and folders",
        usage="xcorr match IMAGE TEMPLATE [--method M] [--mask FILE] [--top-k K] [--heatmap OUT.png] [--json]\n"
        "       xcorr match IMAGE_OR_DIR... --template T [--template T ...] --out FILE.jsonl|FILE.csv [options]",
        description="With IMAGE TEMPLATE: find TEMPLATE in IMAGE and print the best match(es): x, y (top-left "
        "corner) and score (OpenCV's matchTemplate scores). With --template: find every template in every "
        "image (folders searched recursively for image files) and write each image's matches to --out, as "
        "they come; under torchrun the ranks share the images and one file comes out.",
    )
    match.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="IMAGE TEMPLATE (files Pillow reads); with --template: image files and folders",
    )
    match.add_argument(
        "--method",
        default="ccoeff_normed",
        metavar="M",
        help="sqdiff, sqdiff_normed, ccorr, ccorr_normed, ccoeff or ccoeff_normed (default: ccoeff_normed)",
    )
    one = match.add_argument_group("one image, one template (IMAGE TEMPLATE)")
    one.add_argument("--mask", metavar="FILE", help="template-sized mask image; non-zero pixels take part")
    one.add_argument("--top-k", type=_positive, metavar="K", help="how many matches to report (default 1)")
    one.add_argument("--heatmap", metavar="OUT.png", help="write the image with its match boxes beside the score map")
    one.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    many = match.add_argument_group("many images (IMAGE_OR_DIR... --template T --out FILE)")
    many.add_argument(
        "--template", action="append", metavar="T", help="template file; repeat for more templates (index 0, 1, ...)"
    )
    many.add_argument(
        "--out",
        metavar="FILE",
        help="results: .jsonl (one object per image) or .csv (one row per match, one empty row for an image "
        "without matches)",
    )
    many.add_argument(
        "--threshold",
        type=float,
        metavar="S",
        help="the score a match must reach (at most, for sqdiff and sqdiff_normed); default 0.8 for "
        "ccoeff_normed, needed for the other methods",
    )
    many.add_argument(
        "--max-overlap",
        type=float,
        metavar="F",
        help="the largest overlap (intersection over union) of a match with a better one (default 0.3)",
    )
    many.add_argument("--scales", type=float, nargs="+", metavar="S", help="template scales to try (default: 1)")
    many.add_argument(
        "--resume", action="store_true", help="skip the images already in --out and append the others to it"
    )
    many.add_argument(
        "--batch-size",
        type=_positive,
        metavar="N",
        help="images of one size matched together, at most (default 8)",
    )
    many.add_argument(
        "--workers",
        type=_non_negative,
        metavar="N",
        help="processes decoding images (default: 0 up to 3 cores, then one per two cores beyond two, at most 4; 0: decode in the matching process)",
    )
    many.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="torch's CPU threads for matching (default: torch's count less --workers, at least 1)",
    )
    many.add_argument("--device", help="device to match on, e.g. cpu or cuda (default: cpu)")
    many.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="time xcorr against its peers and print a table")
    bench.add_argument(
        "--suite",
        default="siamese",
        choices=["siamese", "match", "flow", "all"],
        help="which suite to run (default: siamese)",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--plot", metavar="FILE", help="also draw the ratios as a PNG chart")
    bench.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="timed calls per contender, at least (default: 7; fast contenders are timed for 0.5 s)",
    )
    bench.add_argument("--device", default="cpu", help="device to run on, e.g. cpu or cuda (default: cpu)")
    bench.add_argument(
        "--threads", type=int, help="CPU threads for torch and OpenCV alike (default: each library's own choice)"
    )
    bench.add_argument(
        "--profile", action="store_true", help="also print where our time goes, per stage, in the cases that say"
    )


def _add_fit(sub: Any) -> None:
    fit = sub.add_parser(
        "fit",
        help="fit the planning engine's cost-model constants on this machine",
        description="Time every method on random problems, fit the cost model's constants, and show how "
        "often the fitted model picks the fastest method on held-out problems.",
    )
    fit.add_argument("--problems", type=_positive, default=100, metavar="N", help="problems to fit on (default 100)")
    fit.add_argument("--held-out", type=_positive, default=40, metavar="N", help="problems to evaluate on (default 40)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the random problems (default 0)")
    fit.add_argument(
        "--max-macs",
        type=float,
        default=4e8,
        metavar="M",
        help="largest problem, in direct multiply-adds (default 4e8)",
    )
    fit.add_argument("--device", default="cpu", help="device to time on, e.g. cpu or cuda (default: cpu)")
    fit.add_argument(
        "--volumes",
        action="store_true",
        help="fit the cost-volume methods' constants (local correlation, stereo) instead, on CPU "
        "(--save stores them beside the correlations'); each problem takes seconds: try --problems 20 "
        "--held-out 10",
    )
    fit.add_argument("--json", metavar="FILE", help="also write the timings, constants and evaluation as JSON")
    fit.add_argument(
        "--save",
        action="store_true",
        help="save the fitted constants in the profile the planning engine reads ($XCORR_PROFILE, by default "
        "xcorr/profile.json in the user's cache directory), for this device kind, thread count and "
        "torch version",
    )


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an int of at least ``low``, else "must be ``what``"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "a non-negative integer")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from . import demo

        demo.main(full=args.full)
        return 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "fit":
        return _fit(args)
    try:
        return _match_files(args) if args.template else _match(args)
    except CliError as error:
        print(f"xcorr match: error: {error}", file=sys.stderr)
        return 2


def _read(path: str, what: str, mode: str | None = None):
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise CliError("reading images needs Pillow: pip install 'xcorr[match]'") from None
    import numpy as np

    try:
        with Image.open(path) as image:
            image.load()
            if mode is None:
                mode = "L" if image.mode in ("1", "L", "LA") else "RGB"
            return np.array(image.convert(mode))  # writable, for torch.from_numpy
    except FileNotFoundError:
        raise CliError(f"{what} file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise CliError(f"cannot read {what} {path}: {error}") from None


#: The options of each form of ``match``, by their names in ``args``.
_ONE_IMAGE = ("mask", "top_k", "heatmap", "json")
_MANY_IMAGES = (
    "out",
    "threshold",
    "max_overlap",
    "scales",
    "resume",
    "batch_size",
    "workers",
    "threads",
    "device",
    "progress",
)


def _given(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n) not in (None, False)]


def _match_files(args: argparse.Namespace) -> int:
    from . import match_files

    mixed = _given(args, _ONE_IMAGE)
    if mixed:
        raise CliError(f"{mixed[0]} is for one IMAGE and one TEMPLATE, not with --template")
    if args.out is None:
        raise CliError("--template needs --out FILE.jsonl or FILE.csv")
    _check_method(args.method)
    options = match_files.Options(
        args.inputs,
        args.template,
        args.out,
        method=args.method,
        threshold=args.threshold,
        max_overlap=args.max_overlap,
        scales=args.scales,
        resume=args.resume,
        batch_size=8 if args.batch_size is None else args.batch_size,
        workers=args.workers,
        device=args.device or "cpu",
        progress=args.progress,
        threads=args.threads,
    )
    return match_files.run(options)


def _check_method(method: str) -> None:
    from ._checks import check_choice
    from .matching.checks import MATCH_METHODS

    try:
        check_choice(method, "method", MATCH_METHODS)
    except ValueError as error:
        raise CliError(str(error)) from None


def _match(args: argparse.Namespace) -> int:
    import numpy as np

    from .matching.api import find_peaks, match_template

    mixed = _given(args, _MANY_IMAGES)
    if mixed:
        raise CliError(f"{mixed[0]} needs --template (for many images)")
    if len(args.inputs) != 2:
        if len(args.inputs) == 1:
            raise CliError("the following arguments are required: TEMPLATE")
        raise CliError(f"give one IMAGE and one TEMPLATE, or many images with --template; got {len(args.inputs)} paths")
    _check_method(args.method)
    image_path, template_path = args.inputs
    top_k = 1 if args.top_k is None else args.top_k
    image = _read(image_path, "image")
    template = _read(template_path, "template")
    if image.ndim != template.ndim:  # one greyscale, one colour: compare in colour
        image, template = (np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a for a in (image, template))
    mask = None if args.mask is None else _read(args.mask, "mask", "L")
    try:
        scores = match_template(image, template, args.method, mask=mask)
    except (ValueError, TypeError) as error:
        raise CliError(str(error)) from None
    h, w = template.shape[:2]
    largest = not args.method.startswith("sqdiff")
    peaks = find_peaks(scores, top_k, min_distance=max(1, min(h, w) // 2), largest=largest)
    if args.heatmap:
        _heatmap(args.heatmap, image, scores, peaks, (h, w), args.method)
    matches = [{"x": x, "y": y, "score": score} for x, y, score in peaks]
    if args.json:
        print(json.dumps({**matches[0], "method": args.method, "matches": matches}))
    else:
        for rank, m in enumerate(matches, 1):
            print(f"{rank}. x={m['x']} y={m['y']} score={m['score']:.6g} ({args.method}, {w}x{h} template)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .benchmarks import runner

    suites = list(runner.SUITES) if args.suite == "all" else [args.suite]
    if args.threads is not None:
        if args.threads < 1:
            print(f"xcorr bench: --threads must be at least 1, got {args.threads}", file=sys.stderr)
            return 2
        runner.set_threads(args.threads)
    if _torch_device("bench", args.device) is None:
        return 2
    try:
        runner.run(
            suites,
            repeats=args.repeats,
            json_path=args.json,
            plot_path=args.plot,
            device=args.device,
            profile=args.profile,
        )
    except runner.Unavailable as error:
        print(f"xcorr bench: {error}", file=sys.stderr)
        return 2
    return 0


def _torch_device(command: str, text: str):
    """``torch.device(text)``, or None after saying on stderr why ``text`` is not one."""
    import torch

    try:
        return torch.device(text)
    except RuntimeError:
        print(f"xcorr {command}: --device must be a torch device such as cpu or cuda, got {text!r}", file=sys.stderr)
        return None


def _fit(args: argparse.Namespace) -> int:
    from .benchmarks import costmodel

    device = _torch_device("fit", args.device)
    if device is None:
        return 2
    try:
        import scipy  # noqa: F401
    except ImportError:
        print("xcorr fit: fitting needs scipy (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    if args.volumes:
        return _fit_volumes(args, device)
    train = costmodel.random_problems(args.problems, args.seed, args.max_macs)
    held = costmodel.random_problems(args.held_out, args.seed + 1, args.max_macs)
    total = len(train) + len(held)
    done = []

    def progress(row: dict) -> None:
        done.append(row)
        print(
            f"  timed {len(done)}/{total}: {row['mode']} x {tuple(row['x'])} z {tuple(row['z'])}",
            file=sys.stderr,
            flush=True,
        )

    rows = costmodel.collect(train, device, progress)
    held_rows = costmodel.collect(held, device, progress)
    fitted, report = _report_fit(rows, held_rows, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"train": rows, "held_out": held_rows, "fitted": dict(fitted), "evaluation": report},
                f,
                indent=1,
            )
    if args.save:
        from .correlation.family import CORRELATION

        return _save_fit(device, CORRELATION.name, fitted, args, report["fitted"])
    return 0


def _fit_volumes(args: argparse.Namespace, device: Any) -> int:
    """``fit --volumes``: the cost-volume family's constants, timed on the CPU."""
    from .benchmarks import volume_costmodel
    from .volumes.family import VOLUMES

    if device.type != "cpu":
        print(f"xcorr fit: --volumes times on the CPU only, got --device {args.device}", file=sys.stderr)
        return 2
    fitted, accuracy = volume_costmodel.main(args.problems, args.held_out, args.seed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"fitted": dict(fitted), "evaluation": accuracy}, f, indent=1)
    if args.save:
        return _save_fit(device, VOLUMES.name, fitted, args, accuracy)
    return 0


def _save_fit(device: Any, family: str, fitted: Any, args: argparse.Namespace, evaluation: dict) -> int:
    """``fit --save``: ``family``'s fitted constants into this machine's entry of the profile."""
    from .planning import profile as _profile

    fit = {"problems": args.problems, "held_out": args.held_out, "seed": args.seed, "evaluation": evaluation}
    try:
        path = _profile.save_constants(device.type, {family: dict(fitted)}, {family: fit})
    except OSError as error:
        print(f"xcorr fit: cannot save the profile: {error}", file=sys.stderr)
        return 1
    print(f"saved to {path}: the planning engine uses these {family} constants from the next process on")
    return 0


def _report_fit(rows: list, held_rows: list, device: Any) -> tuple[Any, dict]:
    """Fit on ``rows``, print the constants and how the current and the fitted ones pick on ``held_rows``."""
    import torch

    from .benchmarks import costmodel
    from .correlation.family import CORRELATION
    from .planning.engine import ENGINE

    current = ENGINE.model_constants(CORRELATION, device.type)
    source = ENGINE.constants_source(CORRELATION, device.type)
    fitted = costmodel.fit(rows, current)
    print(f"fitted on {len(rows)} problems ({device.type}, {torch.get_num_threads()} threads):")
    print(costmodel.constants_source(fitted))
    report = {}
    for label, constants in (("current", current), ("fitted", fitted)):
        report[label] = costmodel.evaluate(held_rows, constants)
        for key, name in (("fwd", "forward"), ("both", "forward+backward")):
            r = report[label][key]
            print(
                f"{label:7s} constants, {name:16s}: fastest method picked on {r['best']}/{r['problems']} "
                f"held-out problems, within {costmodel.NEAR}x of it on {r['near']}; mean loss "
                f"{r['mean_loss']:.2f}x, worst {r['worst_loss']:.2f}x {r['worst']}"
            )
    print(f"current constants: {source}")
    return fitted, report


#: The colours of the best match and of the others in ``--heatmap``.
BEST_COLOUR, OTHER_COLOUR = "red", "orange"


def heatmap_figure(image, scores, peaks, size: tuple[int, int], method: str) -> Any:
    """The picture of ``--heatmap`` (a matplotlib Figure): the image with a box per match, numbered
    as the matches are printed (1 the best), beside the score map with the matches' corners."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    h, w = size
    largest = not method.startswith("sqdiff")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    left.imshow(image, cmap="gray" if image.ndim == 2 else None)
    for rank, (x, y, _) in enumerate(peaks, 1):
        colour = BEST_COLOUR if rank == 1 else OTHER_COLOUR
        left.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, lw=2, color=colour))
        left.text(x + 1, y + 1, str(rank), color=colour, fontsize=10, fontweight="bold", va="top")
    left.set_title("best match" if len(peaks) == 1 else f"{len(peaks)} best matches")
    handles = [Patch(fill=False, edgecolor=BEST_COLOUR, lw=2, label="1: best match")]
    if len(peaks) > 1:
        others = "2" if len(peaks) == 2 else f"2-{len(peaks)}"
        handles.append(Patch(fill=False, edgecolor=OTHER_COLOUR, lw=2, label=f"{others}: the next, as printed"))
    left.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.8)
    shown = right.imshow(scores, cmap="viridis" if largest else "viridis_r")
    for rank, (x, y, _) in enumerate(peaks, 1):
        colour = BEST_COLOUR if rank == 1 else OTHER_COLOUR
        right.plot([x], [y], "+", color=colour, markersize=12, mew=2)
        right.text(x + 2, y + 2, str(rank), color=colour, fontsize=10, fontweight="bold", va="top")
    right.set_title(f"{method} scores (at the template's top-left corner)")
    bar = fig.colorbar(shown, ax=right, shrink=0.8)
    bar.set_label(f"score (best: {'highest' if largest else 'lowest'}, bright)")
    fig.tight_layout()
    return fig


def _heatmap(path: str, image, scores, peaks, size: tuple[int, int], method: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--heatmap needs matplotlib: pip install 'xcorr[match]'") from None
    fig = heatmap_figure(image, scores, peaks, size, method)
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot write heatmap {path}: {error}") from None
    finally:
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
