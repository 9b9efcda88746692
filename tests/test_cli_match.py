"""``python -m xcorr match IMAGE_OR_DIR... --template T --out FILE``: many images into one file."""

import csv
import json
import os
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
import torch
from helpers import exit_code
from PIL import Image

from xcorr import match_files
from xcorr.cli import CliError, main
from xcorr.match_files import Options, Progress, list_images


class Found(NamedTuple):
    boxes: torch.Tensor
    scores: torch.Tensor
    template: torch.Tensor
    scale: torch.Tensor


class Brightest:
    """A matcher that finds each image's brightest pixel (none in a black image) and keeps the
    batches it was given."""

    def __init__(self, fail_on=None):
        self.batches = []
        self.fail_on = fail_on

    def __call__(self, images, templates):
        self.batches.append((tuple(images.shape), [tuple(t.shape) for t in templates]))
        found = []
        for image in images:
            if self.fail_on is not None and float(image.max()) == self.fail_on:
                raise ValueError(f"an image of maximum {self.fail_on}")
            total = image.sum(0)
            h, w = templates[0].shape[1:]
            if float(total.max()) == 0:
                found.append(
                    Found(
                        torch.zeros(0, 4, dtype=torch.long),
                        torch.zeros(0),
                        torch.zeros(0, dtype=torch.long),
                        torch.zeros(0),
                    )
                )
                continue
            y, x = divmod(int(total.argmax()), total.shape[1])
            found.append(
                Found(torch.tensor([[x, y, w, h]]), total.max().reshape(1), torch.tensor([0]), torch.tensor([1.0]))
            )
        return found


def spot(path, size, at, value=200, colour=False):
    """A black image of ``size`` (h, w) with one bright pixel at ``at`` (x, y)."""
    pixels = np.zeros((*size, 3) if colour else size, np.uint8)
    pixels[at[1], at[0]] = value
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder(tmp_path):
    """Images of two sizes in a folder and a subfolder, a black one, a corrupt one and a text file;
    with the spots (x, y) of the readable ones by path."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    spots = {}
    for name, size, at in [
        ("a.png", (20, 30), (3, 4)),
        ("b.png", (20, 30), (10, 2)),
        ("c.PNG", (20, 30), (29, 19)),
        ("sub/d.png", (24, 16), (5, 5)),
        ("sub/e.bmp", (24, 16), (0, 7)),
    ]:
        spot(root / name, size, at, colour=name == "b.png")
        spots[os.path.normpath(str(root / name))] = at
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "sub" / "f.png")
    spots[os.path.normpath(str(root / "sub" / "f.png"))] = None
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "notes.txt").write_text("not an image")
    template = tmp_path / "t.png"
    Image.fromarray(np.full((3, 5), 9, np.uint8)).save(template)
    return {
        "root": str(root),
        "template": str(template),
        "spots": spots,
        "broken": os.path.join(str(root), "broken.jpg"),
    }


def options(folder, out, **kw):
    return Options([folder["root"]], [folder["template"]], str(out), **{"workers": 0, **kw})


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- listing ----------------------------------------------------------------------------------


def test_directories_are_walked_sorted_and_files_taken_as_given(folder, tmp_path):
    root = folder["root"]
    listed = list_images([root])
    names = [os.path.relpath(p, root) for p in listed]
    assert names == ["a.png", "b.png", "broken.jpg", "c.PNG", "sub/d.png", "sub/e.bmp", "sub/f.png"]
    # A file named on the command line is read whatever its name; each file once, in argument order.
    notes = os.path.join(root, "notes.txt")
    again = list_images([notes, os.path.join(root, "sub"), root + "/./a.png", root])
    assert again[:4] == [notes, *(os.path.join(root, "sub", n) for n in ("d.png", "e.bmp", "f.png"))]
    assert again[4] == os.path.join(root, "a.png") and len(again) == 8


@pytest.mark.parametrize(
    "paths, message",
    [(["nowhere"], "no such file or directory: nowhere"), (["{empty}"], "no images (.bmp, .gif")],
)
def test_listing_errors(tmp_path, paths, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CliError, match=message.replace("(", r"\(").replace(".", r"\.")):
        list_images([p.format(empty=tmp_path / "empty") for p in paths])


# --- one process ------------------------------------------------------------------------------


def test_jsonl_records_every_readable_image_in_order_and_reports_the_others(folder, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    matcher = Brightest()
    assert match_files.run(options(folder, out), matcher) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"xcorr match: cannot read image {folder['broken']}: cannot identify image file '{folder['broken']}'",
        "xcorr match: 1 of 7 images could not be read or matched",
    ]
    records = read_jsonl(out)
    assert [r["path"] for r in records] == list(folder["spots"])
    for r in records:
        at = folder["spots"][r["path"]]
        expected = (
            []
            if at is None
            else [
                {
                    "x": at[0],
                    "y": at[1],
                    "w": 5,
                    "h": 3,
                    "score": 200.0 * (1 + 2 * r["path"].endswith("b.png")),
                    "template": 0,
                    "scale": 1.0,
                }
            ]
        )
        assert r["matches"] == expected
    assert {(r["width"], r["height"]) for r in records} == {(30, 20), (16, 24)}


def test_batches_are_consecutive_images_of_one_size_and_channels(folder, tmp_path):
    matcher = Brightest()
    assert match_files.run(options(folder, tmp_path / "r.jsonl", batch_size=2), matcher) == 1
    # a (grey), b (colour: the template repeated into three channels), c; d, e; f.
    assert matcher.batches == [
        ((1, 1, 20, 30), [(1, 3, 5)]),
        ((1, 3, 20, 30), [(3, 3, 5)]),
        ((1, 1, 20, 30), [(1, 3, 5)]),
        ((2, 1, 24, 16), [(1, 3, 5)]),
        ((1, 1, 20, 30), [(1, 3, 5)]),
    ]


def test_csv_has_a_row_per_match_and_an_empty_row_per_image_without(folder, tmp_path):
    out = tmp_path / "r.csv"
    assert match_files.run(options(folder, out), Brightest()) == 1
    assert out.read_text().splitlines()[0] == "path,width,height,x,y,w,h,score,template,scale"
    rows = read_csv(out)
    assert [r["path"] for r in rows] == list(folder["spots"])
    for row in rows:
        at = folder["spots"][row["path"]]
        if at is None:
            assert [row[c] for c in ("width", "height", "x", "y", "w", "h", "score", "template", "scale")] == [
                "30",
                "20",
            ] + [""] * 7
        else:
            assert (int(row["x"]), int(row["y"]), row["w"], row["h"], row["template"]) == (*at, "5", "3", "0")


def test_a_path_with_commas_quotes_and_a_newline_survives_csv_and_resume(tmp_path):
    odd = tmp_path / 'a, "b"\nc.png'
    spot(odd, (8, 9), (1, 2))
    template = tmp_path / "t.png"
    Image.fromarray(np.full((2, 2), 9, np.uint8)).save(template)
    out = tmp_path / "r.csv"
    args = Options([str(odd)], [str(template)], str(out), workers=0)
    assert match_files.run(args, Brightest()) == 0
    assert [r["path"] for r in read_csv(out)] == [str(odd)]
    matcher = Brightest()
    assert match_files.run(Options(**{**args.__dict__, "resume": True}), matcher) == 0
    assert matcher.batches == [] and len(read_csv(out)) == 1


def test_an_image_the_matcher_rejects_costs_only_itself(folder, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    matcher = Brightest(fail_on=200)  # every image but the black one
    assert match_files.run(options(folder, out, batch_size=8), matcher) == 1
    err = capsys.readouterr().err.splitlines()
    failed = [p for p, at in folder["spots"].items() if at is not None]
    broken = f"xcorr match: cannot read image {folder['broken']}: cannot identify image file '{folder['broken']}'"
    assert sorted(err[:-1]) == sorted(
        [f"xcorr match: cannot match {p}: an image of maximum 200" for p in failed] + [broken]
    )
    assert err[-1] == "xcorr match: 6 of 7 images could not be read or matched"
    assert [r["path"] for r in read_jsonl(out)] == [p for p, at in folder["spots"].items() if at is None]


def test_workers_decode_in_other_processes_in_the_same_order(folder, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert match_files.run(options(folder, one), Brightest()) == 1
    assert match_files.run(options(folder, two, workers=2, batch_size=3), Brightest()) == 1
    assert one.read_text() == two.read_text()


def test_matching_threads_leave_a_core_to_each_decoder_and_are_restored(folder, tmp_path):
    seen = []

    def counting(images, templates):
        seen.append(torch.get_num_threads())
        return Brightest()(images, templates)

    before = torch.get_num_threads()
    assert match_files.matching_threads(None, 0) == before
    assert match_files.matching_threads(None, before + 3) == 1
    assert match_files.matching_threads(5, 2) == 5
    assert match_files.run(options(folder, tmp_path / "r.jsonl", threads=1), counting) == 1
    assert match_files.run(options(folder, tmp_path / "r.jsonl", workers=before), counting) == 1
    assert set(seen) == {1} and torch.get_num_threads() == before


@pytest.mark.parametrize(("cores", "workers"), [(1, 0), (2, 0), (3, 0), (4, 1), (6, 2), (8, 3), (10, 4), (64, 4)])
def test_decoders_by_default_only_on_cores_that_matching_does_not_need(cores, workers):
    assert match_files.default_workers(cores) == workers


def test_the_default_decodes_in_process_on_two_cores(folder, tmp_path, monkeypatch):
    seen = []
    real = match_files.loaded_images
    monkeypatch.setattr(match_files, "loaded_images", lambda paths, w: seen.append(w) or real(paths, w))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        opts = Options([folder["root"]], [folder["template"]], str(tmp_path / "r.jsonl"))
        assert match_files.run(opts, Brightest()) == 1
    finally:
        torch.set_num_threads(before)
    assert seen == [0]


# --- resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_skips_what_is_done_and_drops_a_line_cut_short(folder, tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    full = tmp_path / f"full{suffix}"
    assert match_files.run(options(folder, full), Brightest()) == 1
    first = Options([os.path.join(folder["root"], "sub")], [folder["template"]], str(out), workers=0)
    assert match_files.run(first, Brightest()) == 0
    with open(out, "a") as f:
        f.write(f"{folder['root']}/a.png,30,2" if suffix == ".csv" else '{"path": "cut sh')
    matcher = Brightest()
    assert match_files.run(options(folder, out, resume=True), matcher) == 1
    assert sum(shape[0] for shape, _ in matcher.batches) == 3  # a, b and c; d, e and f were done
    read = read_csv if suffix == ".csv" else read_jsonl
    done, expected = read(out), read(full)
    assert sorted(map(json.dumps, done)) == sorted(map(json.dumps, expected))  # each image once
    assert [r["path"] for r in done] == [p for p in folder["spots"] if "sub" in p] + [
        p for p in folder["spots"] if "sub" not in p
    ]
    # Nothing left to do: the file stays as it is.
    before = out.read_text()
    assert match_files.run(options(folder, out, resume=True), Brightest()) == 1
    assert out.read_text() == before


def test_without_resume_the_file_and_stale_parts_start_again(folder, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("old\n")
    (tmp_path / "r.jsonl.rank3").write_text("old\n")
    assert match_files.run(options(folder, out), Brightest()) == 1
    assert len(read_jsonl(out)) == 6 and not (tmp_path / "r.jsonl.rank3").exists()


def test_resume_merges_the_parts_of_a_stopped_run_in_image_order(folder, tmp_path):
    out = tmp_path / "r.jsonl"
    full = tmp_path / "full.jsonl"
    assert match_files.run(options(folder, full), Brightest()) == 1
    lines = full.read_text().splitlines(keepends=True)  # a, b, c, d, e, f
    out.write_text(lines[0])
    (tmp_path / "r.jsonl.rank0").write_text(lines[0] + lines[2])  # a again, c
    (tmp_path / "r.jsonl.rank1").write_text(lines[1] + lines[3][:10])  # b, d cut short
    matcher = Brightest()
    assert match_files.run(options(folder, out, resume=True), matcher) == 1
    assert out.read_text() == "".join(lines[:3]) + "".join(lines[3:])
    assert sum(shape[0] for shape, _ in matcher.batches) == 3
    assert match_files.parts_of(str(out)) == []


@pytest.mark.parametrize(
    "content, message",
    [("path,score\nx,1\n", "r.csv: not a result of xcorr match"), (None, "")],
)
def test_resume_refuses_a_file_it_did_not_write(folder, tmp_path, content, message):
    if content is None:  # the jsonl case
        out = tmp_path / "r.jsonl"
        out.write_text('{"path": "a.png"}\n[1, 2]\n')
        message = "r.jsonl, line 2: not a result of xcorr match"
    else:
        out = tmp_path / "r.csv"
        out.write_text(content)
    with pytest.raises(CliError, match=message):
        match_files.run(options(folder, out, resume=True), Brightest())


# --- progress ---------------------------------------------------------------------------------


def test_progress_line_without_tqdm_says_count_rate_and_time_left(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    progress = Progress(200, shown=True)
    progress.done = 50
    assert progress.line(10.0) == "images: 50/200, 5.0 images/s, 0:30 left"
    progress.done = 0
    assert progress.line(0.0) == "images: 0/200, 0.0 images/s, ? left"
    progress.done, progress.total = 10, 100000
    assert progress.line(1.0) == "images: 10/100000, 10.0 images/s, 2:46:39 left"
    progress.total = 11
    progress.update(1)
    progress.close()
    err = capsys.readouterr().err
    assert err.startswith("\rimages: 11/11, ") and err.endswith(" left\n")


def test_progress_is_tqdm_when_installed_and_silent_unless_shown(capsys):
    pytest.importorskip("tqdm")
    quiet = Progress(3, shown=False)
    quiet.update(3)
    quiet.close()
    assert capsys.readouterr().err == ""
    bar = Progress(3, shown=True)
    bar.update(3)
    bar.close()
    assert "3/3" in capsys.readouterr().err


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (("{root}", "--template", "{template}"), "--template needs --out FILE.jsonl or FILE.csv"),
        (("{root}", "--template", "{template}", "--out", "r.txt"), "--out must end in .jsonl or .csv, got 'r.txt'"),
        (
            ("{root}", "--template", "{template}", "--out", "r.csv", "--top-k", "2"),
            "--top-k is for one IMAGE and one TEMPLATE, not with --template",
        ),
        (
            ("{root}", "--template", "{template}", "--out", "r.csv", "--json"),
            "--json is for one IMAGE and one TEMPLATE",
        ),
        (("{root}", "{template}", "--out", "r.csv"), "--out needs --template (for many images)"),
        (("{root}", "{template}", "--workers", "1"), "--workers needs --template"),
        (
            ("{root}", "{template}", "{template}"),
            "give one IMAGE and one TEMPLATE, or many images with --template; got 3 paths",
        ),
        (("{root}", "--template", "{template}", "--out", "r.csv", "--method", "zncc"), "unknown method 'zncc'"),
        (("{root}", "--template", "missing.png", "--out", "r.csv"), "template file not found: missing.png"),
        (("nowhere", "--template", "{template}", "--out", "r.csv"), "no such file or directory: nowhere"),
        (
            ("{root}", "--template", "{template}", "--out", "r.csv", "--device", "gpu9"),
            "--device must be a torch device",
        ),
        (
            ("{root}", "--template", "{template}", "--out", "r.csv", "--batch-size", "0"),
            "argument --batch-size: must be a positive integer, got '0'",
        ),
        (
            ("{root}", "--template", "{template}", "--out", "r.csv", "--workers", "-1"),
            "argument --workers: must be a non-negative integer, got '-1'",
        ),
        (
            ("{root}", "--template", "{template}", "--out", "r.csv", "--threshold", "high"),
            "argument --threshold: invalid float value: 'high'",
        ),
        (
            ("{root}", "--template", "{template}", "--out", "r.csv", "--scales"),
            "argument --scales: expected at least one argument",
        ),
    ],
)
def test_usage_errors_are_one_line_and_exit_code_2(folder, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code = exit_code(main, ["match", *(a.format(**folder) for a in args)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r.csv").exists()


# --- with find_matches ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Noise images (two sizes, grey and colour) with two templates pasted at known places, and a
    corrupt file; the expected matches {(template, x, y)} by path."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(1)
    templates = [rng.integers(0, 256, (7, 9), dtype=np.uint8), rng.integers(0, 256, (8, 6), dtype=np.uint8)]
    paths = []
    for i, t in enumerate(templates):
        paths.append(str(root / f"t{i}.png"))
        Image.fromarray(t).save(paths[-1])
    expected = {}
    for n in range(7):
        side = (30, 40) if n < 5 else (36, 28)
        image = rng.integers(0, 256, side, dtype=np.uint8)
        places = set()
        for i, t in enumerate(templates[: 1 + n % 2]):
            x, y = 2 + 12 * i + n, 3 + 2 * n
            image[y : y + t.shape[0], x : x + t.shape[1]] = t
            places.add((i, x, y))
        name = root / "images" / f"{n}.png"
        name.parent.mkdir(exist_ok=True)
        Image.fromarray(np.stack([image] * 3, 2) if n == 3 else image).save(name)
        expected[str(name)] = places
    (root / "images" / "3b.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    return {
        "images": str(root / "images"),
        "templates": paths,
        "expected": expected,
        "corrupt": str(root / "images" / "3b.png"),
    }


def cli(scenes, out, *extra):
    templates = [a for t in scenes["templates"] for a in ("--template", t)]
    return ["match", scenes["images"], *templates, "--out", str(out), "--workers", "0", *extra]


def found(records):
    return {r["path"]: {(m["template"], m["x"], m["y"]) for m in r["matches"]} for r in records}


def test_find_matches_finds_every_pasted_template(scenes, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(cli(scenes, out, "--batch-size", "3")) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        len(err) == 2 and scenes["corrupt"] in err[0] and err[1].endswith("1 of 8 images could not be read or matched")
    )
    records = read_jsonl(out)
    assert [r["path"] for r in records] == list(scenes["expected"])
    assert found(records) == scenes["expected"]
    for r in records:
        assert all(m["score"] == pytest.approx(1, abs=1e-4) and m["scale"] == 1.0 for m in r["matches"])
        assert all((m["w"], m["h"]) == ((9, 7), (6, 8))[m["template"]] for m in r["matches"])


def test_csv_with_scales_and_sqdiff_normed(scenes, tmp_path):
    out = tmp_path / "r.csv"
    assert main(cli(scenes, out, "--method", "sqdiff_normed", "--threshold", "1e-6", "--scales", "1", "2")) == 1
    rows = read_csv(out)
    by_path = {}
    for row in rows:
        by_path.setdefault(row["path"], set()).add((int(row["template"]), int(row["x"]), int(row["y"])))
    assert by_path == scenes["expected"]
    assert {row["scale"] for row in rows} == {"1.0"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--method", "ccorr"), "--method ccorr needs --threshold"),
        (("--max-overlap", "1.5"), "max_overlap must be in [0, 1]"),
        (("--scales", "0.01"), "smaller than one pixel"),
    ],
)
def test_bad_settings_are_usage_errors_before_any_file_is_written(scenes, tmp_path, capsys, extra, message):
    out = tmp_path / "r.jsonl"
    assert main(cli(scenes, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_all_images_read_exit_0_in_a_subprocess(scenes, tmp_path):
    out = tmp_path / "r.jsonl"
    images = sorted(scenes["expected"])[:2]
    done = subprocess.run(
        [sys.executable, "-m", "xcorr", *cli(scenes, out)[:1], *images, *cli(scenes, out)[2:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
    assert found(read_jsonl(out)) == {p: scenes["expected"][p] for p in images}


def torchrun(*args):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "xcorr",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_two_ranks_write_one_file_in_image_order_and_resume_a_stopped_run(scenes, tmp_path):
    one, out = tmp_path / "one.csv", tmp_path / "r.csv"
    assert main(cli(scenes, one)) == 1
    done = torchrun(*cli(scenes, out, "--batch-size", "2"))
    assert done.returncode == 1, done.stderr  # the corrupt file
    assert done.stderr.count(f"cannot read image {scenes['corrupt']}") == 1
    assert "xcorr match: 1 of 8 images could not be read or matched" in done.stderr
    rows, expected = read_csv(out), read_csv(one)  # each image once, in image order
    assert [r["path"] for r in rows] == [r["path"] for r in expected] and len(rows) == 10
    for row, want in zip(rows, expected):
        assert float(row.pop("score")) == pytest.approx(float(want.pop("score")), abs=1e-5)
        assert row == want
    assert match_files.parts_of(str(out)) == []
    # A stopped run: two images in the file, one in a rank's part; --resume does the rest once.
    one, out = tmp_path / "one.jsonl", tmp_path / "r.jsonl"
    assert main(cli(scenes, one)) == 1
    lines = one.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1])
    (tmp_path / "r.jsonl.rank1").write_text(lines[4])
    again = torchrun(*cli(scenes, out, "--resume"))
    assert again.returncode == 1, again.stderr
    paths = [json.loads(line)["path"] for line in lines]
    assert [r["path"] for r in read_jsonl(out)] == [paths[i] for i in (0, 1, 4, 2, 3, 5, 6)]
    assert found(read_jsonl(out)) == scenes["expected"]
    assert match_files.parts_of(str(out)) == []
