import json
import subprocess
import sys

import numpy as np
import pytest
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
    argv = [a.format(**files) for a in args]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err
