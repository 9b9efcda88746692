"""Template matching over many image files: ``python -m xcorr match IMAGE_OR_DIR... --template T``.

The images are listed (directories walked, sorted), shared out between the ranks of a ``torchrun``
job, decoded by a ``DataLoader``'s worker processes, matched in batches of consecutive images of one
size and written as they come (JSON lines or CSV, flushed per batch), so that an interrupted run
keeps what it did and ``--resume`` goes on from there. Under ``torchrun`` each rank writes its own
part (``OUT.rank<k>``) and rank 0 merges the parts into ``OUT`` in image order.
"""

from __future__ import annotations

import csv
import glob
import heapq
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import IO, Any, NamedTuple

import torch

from .cli import CliError

#: The file names a directory is searched for (case-insensitive); files named on the command line
#: are read whatever their name.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".pnm", ".ppm", ".tif", ".tiff", ".webp")

#: How long a rank waits at a barrier for the others (the slowest rank's share of the images).
BARRIER_TIMEOUT = timedelta(hours=12)

#: ``matcher(images (N, C, H, W) float32, templates [(C, h, w) float32, ...])``: one record per
#: image, each with ``boxes`` (n, 4: x, y, w, h), ``scores``, ``template`` and ``scale`` (n,).
Matcher = Callable[[torch.Tensor, list], list]


# --- the images -------------------------------------------------------------------------------


def list_images(paths: Sequence[str]) -> list[str]:
    """The image files named by ``paths``: files as given, directories walked for
    :data:`IMAGE_EXTENSIONS` (recursively, sorted); in argument order, each file once."""
    found: list[str] = []
    seen: set[str] = set()
    for arg in paths:
        if os.path.isdir(arg):
            names = sorted(
                os.path.join(root, name)
                for root, _, files in os.walk(arg)
                for name in files
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.exists(arg):
            names = [arg]
        else:
            raise CliError(f"no such file or directory: {arg}")
        for name in map(os.path.normpath, names):
            if name not in seen:
                seen.add(name)
                found.append(name)
    if not found:
        raise CliError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {' '.join(paths)}")
    return found


class Loaded(NamedTuple):
    """One file as a ``DataLoader`` worker decoded it: ``pixels`` (H, W) or (H, W, 3) uint8, or
    ``error`` saying why it could not."""

    path: str
    pixels: torch.Tensor | None
    error: str | None


class ImageFiles(torch.utils.data.Dataset):
    """The files of ``paths``, decoded with Pillow (greyscale stays greyscale, the rest is RGB)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Loaded:
        from .cli import _read

        path = self.paths[i]
        try:
            return Loaded(path, torch.from_numpy(_read(path, "image")), None)
        except CliError as error:
            return Loaded(path, None, str(error))
        except Exception as error:  # a decoder may raise anything on a broken file; one file never stops the run
            return Loaded(path, None, f"cannot read image {path}: {type(error).__name__}: {error}")


def _as_is(item: Any) -> Any:
    return item


def loaded_images(paths: Sequence[str], workers: int) -> Iterable[Loaded]:
    """``paths`` decoded by ``workers`` processes (none: in this one), in order."""
    return torch.utils.data.DataLoader(
        ImageFiles(paths), batch_size=None, num_workers=workers, collate_fn=_as_is, shuffle=False
    )


def chw(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """(H, W[, 3]) uint8 as (channels, H, W) float32, grey repeated into colour."""
    image = pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)
    return image.expand(channels, -1, -1).float() if image.shape[0] != channels else image.float()


# --- the output -------------------------------------------------------------------------------


class Record(NamedTuple):
    """One image's results: the rows or line a format writes for it."""

    path: str
    text: str


class JsonLines:
    """``.jsonl``: one object per image, ``{"path", "width", "height", "matches": [{"x", "y", "w",
    "h", "score", "template", "scale"}, ...]}``."""

    header = ""

    def record(self, path: str, width: int, height: int, matches: list[dict]) -> Record:
        line = json.dumps({"path": path, "width": width, "height": height, "matches": matches})
        return Record(path, line + "\n")

    def records(self, text: str, name: str) -> Iterator[Record]:
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            try:
                path = json.loads(line)["path"]
            except (ValueError, KeyError, TypeError):
                raise CliError(f"{name}, line {number}: not a result of xcorr match") from None
            yield Record(path, line)


#: The CSV columns; an image without matches has one row with ``x`` ... ``scale`` empty.
CSV_COLUMNS = ("path", "width", "height", "x", "y", "w", "h", "score", "template", "scale")


class CsvRows:
    """``.csv``: a header, then one row per match; an image without matches has one row whose
    match columns are empty, so that every image done is in the file."""

    header = ",".join(CSV_COLUMNS) + "\n"

    def record(self, path: str, width: int, height: int, matches: list[dict]) -> Record:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        rows = [[m[c] for c in CSV_COLUMNS[3:]] for m in matches] or [[""] * 7]
        writer.writerows([path, width, height, *row] for row in rows)
        return Record(path, out.getvalue())

    def records(self, text: str, name: str) -> Iterator[Record]:
        rows = csv.reader(io.StringIO(text, newline=""))
        if next(rows, None) != list(CSV_COLUMNS):
            raise CliError(f"{name}: not a result of xcorr match (its first row is not {self.header.strip()})")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        path = None
        for row in rows:
            if row[0] != path and path is not None:
                yield Record(path, _take(out))
            path = row[0]
            writer.writerow(row)
        if path is not None:
            yield Record(path, _take(out))


def _take(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def output_format(path: str) -> JsonLines | CsvRows:
    """The format ``--out`` names by its suffix."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
        return JsonLines()
    if suffix == ".csv":
        return CsvRows()
    raise CliError(f"--out must end in .jsonl or .csv, got {path!r}")


def read_records(path: str, fmt: JsonLines | CsvRows) -> list[Record]:
    """The complete records of results file ``path`` (none if it is missing). A last line cut short
    (a run stopped while writing it) is dropped from the file."""
    try:
        with open(path, "r+", encoding="utf-8", newline="") as f:
            text = f.read()
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]
                f.seek(0)
                f.truncate(len(text.encode("utf-8")))
    except FileNotFoundError:
        return []
    if not text and fmt.header:
        return []
    return list(fmt.records(text, path))


def part_path(out: str, rank: int) -> str:
    return f"{out}.rank{rank}"


def parts_of(out: str) -> list[str]:
    """The rank parts of ``out`` a run left behind."""
    pattern = re.compile(re.escape(out) + r"\.rank\d+")
    return sorted(p for p in glob.glob(glob.escape(out) + ".rank*") if pattern.fullmatch(p))


def merge(sources: Sequence[Sequence[Record]], order: dict[str, int], skip: set[str]) -> Iterator[Record]:
    """The records of ``sources`` (each in image order) in image order, each image once, none of ``skip``."""
    seen = set(skip)
    for record in heapq.merge(*sources, key=lambda r: order.get(r.path, -1)):
        if record.path not in seen:
            seen.add(record.path)
            yield record


def _append(path: str, records: Iterable[Record]) -> None:
    with open(path, "a", encoding="utf-8", newline="") as f:
        for record in records:
            f.write(record.text)
        f.flush()
        os.fsync(f.fileno())


def prepare_output(out: str, fmt: JsonLines | CsvRows, resume: bool, order: dict[str, int]) -> None:
    """Make ``out`` ready for a run (on one rank): without ``resume`` a new file; with it, the
    parts of a stopped run merged into it first."""
    parts = parts_of(out)
    if not resume:
        for part in parts:
            os.remove(part)
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.write(fmt.header)
        return
    done = {r.path for r in read_records(out, fmt)}
    if not os.path.exists(out) or os.path.getsize(out) == 0:
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.write(fmt.header)
    if parts:
        _append(out, merge([read_records(p, fmt) for p in parts], order, done))
        for part in parts:
            os.remove(part)


def finish_output(out: str, fmt: JsonLines | CsvRows, world: int, order: dict[str, int], done: set[str]) -> None:
    """Rank 0, after every rank has written its part: the parts merged into ``out``, then removed."""
    parts = [part_path(out, rank) for rank in range(world)]
    _append(out, merge([read_records(p, fmt) for p in parts], order, done))
    for part in parts:
        os.remove(part)


# --- the ranks --------------------------------------------------------------------------------


@dataclass
class Ranks:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls) -> Ranks:
        """From a process group already initialised, else from ``RANK``, ``WORLD_SIZE`` and
        ``LOCAL_RANK``, starting a gloo group when there is more than one rank."""
        import torch.distributed as dist

        local_rank = _env_int("LOCAL_RANK", 0)
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank)
        world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise CliError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank} WORLD_SIZE={world}")
        if world == 1:
            return cls()
        if not dist.is_available():
            raise CliError(f"WORLD_SIZE={world} needs torch.distributed, which this torch build lacks")
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        return cls(rank, world, local_rank, owns_group=True)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def total(self, count: int) -> int:
        """``count`` summed over the ranks."""
        if self.world == 1:
            return count
        t = torch.tensor([count], dtype=torch.int64)
        torch.distributed.all_reduce(t)
        return int(t.item())

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    try:
        return default if text is None else int(text)
    except ValueError:
        raise CliError(f"environment variable {name} must be an integer, got {text!r}") from None


# --- progress ---------------------------------------------------------------------------------


class Progress:
    """Images done, their rate and the time left on stderr: tqdm's bar if tqdm is installed, else
    one line updated in place; nothing unless ``shown``."""

    def __init__(self, total: int, shown: bool, label: str = "images") -> None:
        self.total, self.shown, self.label = total, shown, label
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0
        self.bar: Any = None
        if shown:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, unit="image", desc=label, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.shown:
            now = time.perf_counter()
            if now - self.last >= 0.2 or self.done == self.total:
                self.last = now
                print(f"\r{self.line(now - self.start)}", end="", file=sys.stderr, flush=True)

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = _clock((self.total - self.done) / rate) if rate > 0 else "?"
        return f"{self.label}: {self.done}/{self.total}, {rate:.1f} images/s, {left} left"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.shown and self.total:
            print(file=sys.stderr)


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Templates:
    """The templates, (C, h, w) float32 each, in grey and colour as the images need them."""

    grey: list[torch.Tensor]
    colour: bool = field(init=False)

    def __post_init__(self) -> None:
        self.colour = any(t.shape[0] == 3 for t in self.grey)

    def channels(self, pixels: torch.Tensor) -> int:
        """The channels an image and the templates are compared in: colour if either is."""
        return 3 if self.colour or pixels.dim() == 3 else 1

    def on(self, channels: int, device: torch.device) -> list[torch.Tensor]:
        return [t.expand(channels, -1, -1).to(device) for t in self.grey]


def read_templates(paths: Sequence[str]) -> Templates:
    from .cli import _read

    pixels = [torch.from_numpy(_read(p, "template")) for p in paths]
    return Templates([chw(t, 1 if t.dim() == 2 else 3) for t in pixels])


def matches_of(found: Any) -> list[dict]:
    """One image's record of ``find_matches`` as the output's match objects."""
    boxes = found.boxes.tolist()
    return [
        {"x": x, "y": y, "w": w, "h": h, "score": s, "template": t, "scale": c}
        for (x, y, w, h), s, t, c in zip(boxes, found.scores.tolist(), found.template.tolist(), found.scale.tolist())
    ]


@dataclass
class Job:
    """What ``match`` does with each image: the templates, how to match and where to write."""

    templates: Templates
    matcher: Matcher
    fmt: JsonLines | CsvRows
    batch_size: int
    device: torch.device
    failures: int = 0

    def fail(self, message: str) -> None:
        self.failures += 1
        print(f"xcorr match: {message}", file=sys.stderr, flush=True)

    def run(self, loaded: Iterable[Loaded], out: IO[str], progress: Progress) -> None:
        """Match every image of ``loaded`` in batches of consecutive images of one size, writing
        their records to ``out`` batch by batch."""
        batch: list[tuple[str, torch.Tensor]] = []
        for item in loaded:
            if item.pixels is None:
                self.fail(item.error or f"cannot read image {item.path}")
                progress.update(1)
                continue
            image = chw(item.pixels, self.templates.channels(item.pixels))
            if batch and (len(batch) == self.batch_size or batch[0][1].shape != image.shape):
                self.write(batch, out, progress)
                batch = []
            batch.append((item.path, image))
        if batch:
            self.write(batch, out, progress)

    def write(self, batch: list[tuple[str, torch.Tensor]], out: IO[str], progress: Progress) -> None:
        for (path, image), found in zip(batch, self.match(batch)):
            if isinstance(found, str):
                self.fail(f"cannot match {path}: {found}")
            else:
                out.write(self.fmt.record(path, image.shape[2], image.shape[1], matches_of(found)).text)
        out.flush()
        progress.update(len(batch))

    def match(self, batch: list[tuple[str, torch.Tensor]]) -> list[Any]:
        """One record per image of ``batch``, or the error that stopped its matching: the batch at
        once, else image by image so that one bad image costs only itself."""
        images = torch.stack([image for _, image in batch]).to(self.device)
        templates = self.templates.on(images.shape[1], self.device)
        try:
            return list(self.matcher(images, templates))
        except (ValueError, TypeError, RuntimeError) as error:
            if len(batch) == 1:
                return [str(error)]
        return [self.match([item])[0] for item in batch]


#: ``--threshold`` when not given, for the one method whose scores have a usual threshold.
DEFAULT_THRESHOLD = {"ccoeff_normed": 0.8}


@dataclass
class Options:
    """The arguments of ``match``'s many-image form; ``None``: :func:`xcorr.find_matches`'s default."""

    inputs: Sequence[str]
    templates: Sequence[str]
    out: str
    method: str = "ccoeff_normed"
    threshold: float | None = None
    max_overlap: float | None = None
    scales: Sequence[float] | None = None
    resume: bool = False
    batch_size: int = 8
    #: Decoding processes; ``None``: :func:`default_workers`.
    workers: int | None = None
    device: str = "cpu"
    progress: bool = False
    threads: int | None = None


@dataclass
class FindMatches:
    """The matcher of :func:`run`: :func:`xcorr.find_matches` with ``options``' settings."""

    options: Options

    def __post_init__(self) -> None:
        o = self.options
        threshold = DEFAULT_THRESHOLD.get(o.method) if o.threshold is None else o.threshold
        if threshold is None:
            raise CliError(f"--method {o.method} needs --threshold (no threshold suits its scores in every scene)")
        self.settings: dict[str, Any] = {"threshold": threshold}
        if o.max_overlap is not None:
            self.settings["max_overlap"] = o.max_overlap
        if o.scales is not None:
            self.settings["scales"] = list(o.scales)

    def __call__(self, images: torch.Tensor, templates: list) -> list:
        from . import find_matches

        found = find_matches(images, templates, self.options.method, k=None, **self.settings)
        return found if isinstance(found, list) else [found]  # a 4-D batch gives a list

    def check(self, templates: Templates) -> None:
        """The settings tried on a blank image that every template fits at every scale, so that a bad
        one is a usage error before any file is touched."""
        largest = max(self.settings.get("scales", [1.0]) + [1.0])
        h = max(t.shape[1] for t in templates.grey)
        w = max(t.shape[2] for t in templates.grey)
        channels = 3 if templates.colour else 1
        blank = torch.zeros(1, channels, math.ceil(h * largest) + 1, math.ceil(w * largest) + 1)
        try:
            self(blank, templates.on(channels, blank.device))
        except (ValueError, TypeError) as error:
            raise CliError(str(error)) from None


def run(options: Options, matcher: Matcher | None = None) -> int:
    """Match the templates in every image of ``options.inputs`` (with ``matcher``, by default
    :class:`FindMatches`); 0 if every image was matched, 1 if some could not be read or matched
    (each said on stderr)."""
    fmt = output_format(options.out)
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise CliError("reading images needs Pillow: pip install 'xcorr[match]'") from None
    templates = read_templates(options.templates)
    if matcher is None:
        found = FindMatches(options)
        found.check(templates)
        matcher = found
    images = list_images(options.inputs)
    ranks = Ranks.from_env()
    threads = torch.get_num_threads()
    workers = default_workers(threads) if options.workers is None else options.workers
    options = replace(options, workers=workers)
    torch.set_num_threads(matching_threads(options.threads, workers))
    try:
        return _run(options, matcher, fmt, templates, images, ranks)
    finally:
        torch.set_num_threads(threads)
        ranks.close()


def default_workers(cores: int) -> int:
    """Decoding processes by default for ``cores`` threads of torch: 0 (decoding in the matching
    process) up to 3 cores, then one per two cores beyond two, at most 4. Decoding a 640x480 JPEG
    takes a fraction of matching it, so a decoder pays only on a core matching does not need: on
    2 cores, 500 such images with 4 templates took 12.3 s decoded in process, 17.4 s with one
    worker and 19.2 s with two."""
    return 0 if cores <= 3 else min(4, (cores - 2) // 2)


def matching_threads(threads: int | None, workers: int) -> int:
    """torch's threads for matching on the CPU: ``threads``, else torch's own count less the
    decoding workers (at least one): a core shared by a decoder and a matching thread stalls every
    matching thread at the next barrier (measured in docs/detection.md)."""
    return threads if threads is not None else max(1, torch.get_num_threads() - workers)


def _run(
    options: Options, matcher: Matcher, fmt: JsonLines | CsvRows, templates: Templates, images: list[str], ranks: Ranks
) -> int:
    device = _device(options.device, ranks)
    order = {path: i for i, path in enumerate(images)}
    if ranks.rank == 0:
        prepare_output(options.out, fmt, options.resume, order)
    ranks.barrier()
    done = {r.path for r in read_records(options.out, fmt)} if options.resume else set()
    mine = [p for p in images[ranks.rank :: ranks.world] if p not in done]
    job = Job(templates, matcher, fmt, options.batch_size, device)
    label = "images" if ranks.world == 1 else f"rank 0 of {ranks.world}, its images"
    progress = Progress(len(mine), ranks.rank == 0 and (options.progress or sys.stderr.isatty()), label)
    target = options.out if ranks.world == 1 else part_path(options.out, ranks.rank)
    try:
        with open(target, "a" if ranks.world == 1 else "w", encoding="utf-8", newline="") as out:
            if ranks.world > 1:  # a part is a results file of its own, for a stopped run's --resume
                out.write(fmt.header)
            job.run(loaded_images(mine, options.workers or 0), out, progress)
    except KeyboardInterrupt:
        progress.close()
        print(f"xcorr match: stopped; what was done is in {target}: --resume goes on", file=sys.stderr)
        return 130
    progress.close()
    ranks.barrier()
    if ranks.rank == 0 and ranks.world > 1:
        finish_output(options.out, fmt, ranks.world, order, done)
    failures = ranks.total(job.failures)
    if failures and ranks.rank == 0:
        print(f"xcorr match: {failures} of {len(images)} images could not be read or matched", file=sys.stderr)
    return 1 if failures else 0


def _device(text: str, ranks: Ranks) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise CliError(f"--device must be a torch device such as cpu or cuda, got {text!r}") from None
    if device.type == "cuda" and device.index is None and ranks.world > 1:
        return torch.device("cuda", ranks.local_rank)
    return device
