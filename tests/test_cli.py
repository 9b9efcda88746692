import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import exit_code
from PIL import Image

from xcorr.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("match")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :80]
    image = (127 + 60 * np.sin(yy / 5.0) * np.cos(xx / 7.0) + rng.normal(0, 10, (60, 80))).clip(0, 255).astype(np.uint8)
    rgb = np.stack([image, 255 - image, image // 2], axis=2)
    paths = {
        "image": root / "image.png",
        "rgb": root / "rgb.png",
        "template": root / "template.png",
        "rgb_template": root / "rgb_template.png",
        "mask": root / "mask.png",
        "corrupt": root / "corrupt.png",
    }
    Image.fromarray(image).save(paths["image"])
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(image[20:32, 30:45]).save(paths["template"])
    Image.fromarray(rgb[5:17, 50:66]).save(paths["rgb_template"])
    mask = np.full((12, 15), 255, np.uint8)
    mask[:3, :3] = 0
    Image.fromarray(mask).save(paths["mask"])
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {k: str(v) for k, v in paths.items()}


def run(*args):
    return subprocess.run([sys.executable, "-m", "xcorr", *args], capture_output=True, text=True, timeout=120)


def test_subprocess_json_top_k_heatmap_and_mask(files, tmp_path):
    out_png = tmp_path / "heat.png"
    done = run(
        "match",
        files["image"],
        files["template"],
        "--top-k",
        "3",
        "--json",
        "--mask",
        files["mask"],
        "--heatmap",
        str(out_png),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["x"], result["y"], result["method"]) == (30, 20, "ccoeff_normed")
    assert result["score"] == pytest.approx(1, abs=1e-5)
    assert len(result["matches"]) == 3 and result["matches"][0] == {k: result[k] for k in ("x", "y", "score")}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subprocess_errors_are_one_line_with_exit_code_2(files):
    for args, message in [
        (("match", files["image"], "missing.png"), "template file not found: missing.png"),
        (("match", files["template"], files["image"]), "must not be larger than the image"),
    ]:
        done = run(*args)
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1 and message in done.stderr
        assert "Traceback" not in done.stderr


def test_text_output_and_methods(files, capsys):
    assert main(["match", files["rgb"], files["rgb_template"], "--method", "sqdiff", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("1. x=50 y=5 score=0 (sqdiff, 16x12 template)")


def test_grey_template_in_colour_image(files, capsys):
    assert main(["match", files["rgb"], files["template"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert -1 <= result["score"] <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("match", "{image}", "{template}", "--method", "tm_ccoeff"),
            "unknown method 'tm_ccoeff'; valid values are 'sqdiff',",
        ),
        (("match", "{image}", "{corrupt}"), "cannot read template"),
        (("match", "nowhere.png", "{template}"), "image file not found: nowhere.png"),
        (("match", "{image}", "{template}", "--mask", "{rgb_template}"), "mask must have the template's size"),
        (("match", "{image}", "{template}", "--top-k", "0"), "argument --top-k: must be a positive integer, got '0'"),
        (("match", "{image}"), "the following arguments are required: TEMPLATE"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_errors_in_process(files, capsys, args, message):
    code = exit_code(main, [a.format(**files) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err


# --- --heatmap's picture ------------------------------------------------------------------------


def _heatmap(method, k):
    import matplotlib

    matplotlib.use("Agg")
    from xcorr.cli import heatmap_figure

    image = np.zeros((30, 40), np.uint8)
    scores = np.linspace(0, 1, 25 * 30, dtype=np.float32).reshape(25, 30)
    peaks = [(3 * i, 2 * i, 1.0 - 0.1 * i) for i in range(k)]
    return heatmap_figure(image, scores, peaks, (6, 11), method)


@pytest.mark.parametrize(
    "k, legend",
    [
        (1, ["1: best match"]),
        (2, ["1: best match", "2: the next, as printed"]),
        (4, ["1: best match", "2-4: the next, as printed"]),
    ],
)
def test_heatmap_legend_names_the_best_match_and_numbers_the_others(k, legend):
    import matplotlib.pyplot as plt

    from xcorr.cli import BEST_COLOUR, OTHER_COLOUR

    fig = _heatmap("ccoeff_normed", k)
    image_ax, scores_ax = fig.axes[:2]
    assert [t.get_text() for t in image_ax.get_legend().get_texts()] == legend
    # Every match numbered as printed (1 the best) on the image and on the score map, in its colour.
    for ax in (image_ax, scores_ax):
        numbers = [(t.get_text(), t.get_color()) for t in ax.texts]
        assert numbers == [(str(r), BEST_COLOUR if r == 1 else OTHER_COLOUR) for r in range(1, k + 1)]
    boxes = [p for p in image_ax.patches if p.get_width() == 11 and p.get_height() == 6]
    assert len(boxes) == k
    plt.close(fig)


@pytest.mark.parametrize("method, best", [("sqdiff", "lowest"), ("ccorr_normed", "highest")])
def test_heatmap_colour_bar_says_which_end_is_best(method, best):
    import matplotlib.pyplot as plt

    fig = _heatmap(method, 1)
    assert fig.axes[2].get_ylabel() == f"score (best: {best}, bright)"
    # Bright (the colour map's top) is the best end for every method.
    shown = fig.axes[1].images[0]
    assert shown.get_cmap().name == ("viridis_r" if best == "lowest" else "viridis")
    plt.close(fig)


# --- the demo -----------------------------------------------------------------------------------


def test_demo_flag_selects_the_full_sizes(monkeypatch):
    from xcorr import demo

    calls = []
    monkeypatch.setattr(demo, "main", lambda full: calls.append(full))
    assert main(["demo"]) == 0 and main(["demo", "--full"]) == 0
    assert calls == [False, True]
    assert demo.QUICK.channels < demo.FULL.channels and demo.QUICK[1:] == demo.FULL[1:] == (255, 127)


@pytest.mark.parametrize(
    "seconds, digits, text",
    [
        (0.05234, 3, "52.3 ms"),
        (0.0001234, 3, "0.123 ms"),
        (0.9996, 3, "1.00 s"),
        (1.7751, 3, "1.78 s"),
        (567.9, 2, "570 s"),
        (38.4, 2, "38 s"),
        (232.401, 2, "230 s"),
    ],
)
def test_format_seconds_rounds_to_significant_figures(seconds, digits, text):
    from xcorr.demo import format_seconds

    assert format_seconds(seconds, digits) == text


@pytest.mark.parametrize("measure_batches", [False, True])
def test_demo_table_labels_batches_and_marks_estimates(capsys, measure_batches):
    from xcorr.demo import Sizes, run_seed_cases

    rows = run_seed_cases(Sizes(2, 15, 7), measure_batches=measure_batches)
    out = capsys.readouterr().out
    assert [r["batch"] for r in rows] == [1, 8, 1, 8]
    assert [r["estimated"] for r in rows] == [False, not measure_batches, False, not measure_batches]
    for row in rows:
        line = next(line for line in out.splitlines() if line.startswith(row["case"]))
        assert line.split()[len(row["case"].split())] == str(row["batch"])  # the batch column
        assert ("est." in line) == row["estimated"]
    if not measure_batches:  # an estimate is the one-item time times the batch
        assert rows[1]["grouped"] == pytest.approx(8 * rows[0]["grouped"])
        assert rows[3]["grouped"] == pytest.approx(8 * rows[2]["grouped"])
    assert ("est.: the grouped conv's time on one item" in out) == (not measure_batches)
    assert "ms*" not in out and "/call" in out and "/item" in out


def test_demo_picture_shows_every_template_found_beside_its_true_place(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xcorr.demo import MatchResult, match_figure, run_matching, shown_template

    hits = run_matching(str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hits["ccoeff_normed"] >= 5 and hits["ccorr"] <= 1

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (40, 50)).astype(np.float32)
    corners = [(2, 3), (10, 20), (25, 30)]
    templates = [photo[y : y + 8, x : x + 9].astype(np.uint8) for y, x in corners]
    results = []
    for method, found in [("sqdiff", [(3, 2), (20, 10), (0, 0)]), ("ccorr", [(3, 2), (0, 0), (30, 25)])]:
        # Most scores near one end, as sqdiff_normed's are: the colour scale must still spread them.
        scores = []
        for _ in corners:
            a = rng.uniform(0.9, 1.0, (33, 30))
            low = rng.random((33, 30)) < 0.1
            a[low] = rng.uniform(0, 0.9, int(low.sum()))
            scores.append(a.astype(np.float32))
        results.append(MatchResult(method, found, scores))
    # Template 1 is found by both methods; 2 and 3 by one of the two: the first of those is shown.
    assert shown_template(corners, results) == 1
    fig = match_figure(photo, photo.astype(np.uint8), templates, corners, results)
    top = fig.axes[1:3]
    for ax, result in zip(top, results):
        right = sum(f == (x, y) for f, (y, x) in zip(result.found, corners))
        assert ax.get_title() == f"{result.method}: {right}/3 found"
        boxes = [(p.get_x() + 0.5, p.get_y() + 0.5, p.get_linestyle()) for p in ax.patches]
        assert sorted(boxes[0::2]) == sorted((x, y, "--") for y, x in corners)  # every true place, dashed
        assert sorted(b[:2] for b in boxes[1::2]) == sorted(result.found)  # beside every found box
        assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3"]
    assert fig.axes[3].get_title() == "template 2, scored at right"
    maps = [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape == (33, 30)]
    assert [ax.get_title() for ax in maps] == ["sqdiff: best = lowest", "ccorr: best = highest"]
    for ax, result in zip(maps, results):
        shown = ax.images[0]
        # Bright is the best end; the median in the middle of the colours, so no panel is one colour.
        assert shown.get_cmap().name == ("viridis" if result.largest else "viridis_r")
        levels = np.ma.getdata(shown.norm(result.scores[1]))
        assert float(np.median(levels)) == pytest.approx(0.5, abs=0.01)
        assert 0.2 < float(np.mean(levels > 0.5)) < 0.8
    assert len([ax for ax in fig.axes if ax.get_ylabel().startswith("score: min, median, max")]) == 2
    plt.close(fig)


@pytest.mark.parametrize(
    "value, digits, text", [(151.2, 2, "150"), (151.2, 3, "151"), (0.9942, 2, "0.99"), (8.25, 2, "8.2")]
)
def test_significant_figures_without_an_exponent(value, digits, text):
    from xcorr.demo import significant

    assert significant(value, digits) == text
