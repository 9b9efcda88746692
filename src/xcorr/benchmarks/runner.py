"""``python -m xcorr bench``: run suites with the peers side by side in one process.

Each case's contenders are warmed up, then timed in interleaved rounds (in a new shuffled order
every round, so drifting machine load and each other's cache evictions spread over all of them)
and summarised by their medians. The table shows each contender's median, our ratio to the
fastest peer and whether the case's target is met; JSON and a PNG chart are optional.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import torch

from ..correlation.family import CORRELATION
from ..planning.engine import ENGINE
from . import OURS, Case

#: Suite name -> module exposing ``cases() -> list[Case]``; imported only when run.
SUITES = {
    "siamese": "xcorr.benchmarks.siamese",
    "match": "xcorr.benchmarks.match",
    "flow": "xcorr.benchmarks.flow",
}

#: Timed calls per contender, at least, unless the case says otherwise.
REPEATS = 7
#: Contenders whose timed calls add up to less than this many seconds are timed again...
MIN_TIME = 0.5
#: ... up to this many calls.
MAX_SAMPLES = 101
#: A contender stops being timed once its calls add up to this many seconds (at least one call).
TIME_BUDGET = 3.0
#: A warm-up call longer than this counts as a timed call: it is not warming anything up.
SLOW_CALL = 1.0
#: Warm-up calls of ours: a repeated call signature tries the planner's options on its first calls
#: (:mod:`xcorr.planning.trials`: 3 calls, then 2 per other option), as a training loop or a tracker does
#: in its first steps; the table shows the steady state that follows.
OURS_WARM_CALLS = 12

INSTALL_HINT = "pip install -e '.[bench]'"

#: Bytes of one block allocated and freed before the first case (see :func:`_settle_allocator`).
SETTLING_BYTES = 30 << 20


class Unavailable(Exception):
    """A suite that cannot run here, with the reason and the fix."""


@dataclass
class Result:
    suite: str
    case: str
    times: dict[str, float]
    target: float | None
    samples: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: Seconds of our call per stage (``--profile``), where the case measures them.
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        peers = [t for name, t in self.times.items() if name != OURS]
        if OURS not in self.times or not peers:
            return None
        return self.times[OURS] / min(peers)

    @property
    def met(self) -> bool | None:
        if self.ratio is None or self.target is None:
            return None
        return self.ratio <= self.target


def load(name: str) -> list[Case]:
    """The cases of suite ``name``, or :class:`Unavailable` saying why not."""
    if name not in SUITES:
        raise Unavailable(f"unknown suite {name!r}; valid values are {', '.join(map(repr, SUITES))}")
    module_name = SUITES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name + ".").startswith(error.name + "."):
            raise Unavailable(f"suite {name!r} is unavailable: its module {module_name} is not installed") from None
        raise Unavailable(
            f"suite {name!r} is unavailable: it needs the package {error.name} ({INSTALL_HINT})"
        ) from None
    missing = [p for p in getattr(module, "PEERS", ()) if importlib.util.find_spec(p) is None]
    if missing:
        raise Unavailable(
            f"suite {name!r} is unavailable: its peers' packages {', '.join(missing)} are missing ({INSTALL_HINT})"
        )
    return list(module.cases())


def set_threads(n: int) -> None:
    """Run torch and, where installed, OpenCV on ``n`` CPU threads: peers timed side by side
    get the same number."""
    torch.set_num_threads(n)
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        cv2.setNumThreads(n)


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Inside the block, torch and OpenCV run on ``n`` threads (unchanged for ``None``)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    cv2 = importlib.import_module("cv2") if importlib.util.find_spec("cv2") is not None else None
    cv2_before = cv2.getNumThreads() if cv2 is not None else None
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if cv2 is not None:
            cv2.setNumThreads(cv2_before)


def _call(fn: Callable[[], Any], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_case(case: Case, repeats: int = REPEATS, device: str | torch.device = "cpu", profile: bool = False) -> Result:
    """Warm up, then time the contenders in interleaved rounds; medians per contender.

    Every round runs the contenders still being timed in a freshly shuffled order (seeded, so
    runs repeat). A fixed rotation would always run one contender right after the same other
    one, and after a slow peer that has just evicted the caches, the next call pays for it.

    Each contender gets ``case.repeats`` timed calls if the case sets them, else at least
    ``repeats``; then a contender whose calls add up to less than :data:`MIN_TIME` seconds keeps
    being timed, up to :data:`MAX_SAMPLES` calls, so that sub-millisecond medians are stable.

    The case's inputs are made on ``device`` (as the default device during ``setup``); the calls
    are timed outside that context, whose per-call dispatch cost would otherwise weigh on every
    small operation. The case runs at its own thread count where it sets one
    (:attr:`Case.threads`), and with ``profile`` its stages of our call are measured afterwards
    (:attr:`Case.stages`).
    """
    with threads(case.threads):
        return _time_case(case, repeats, torch.device(device), profile)


def _time_case(case: Case, repeats: int, device: torch.device, profile: bool) -> Result:
    with device:
        contenders = case.setup()
    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    spent = dict.fromkeys(names, 0.0)
    for name in names:
        first = _call(contenders[name], device)
        spent[name] += first
        if first > SLOW_CALL:
            samples[name].append(first)
        elif name == OURS:
            for _ in range(OURS_WARM_CALLS - 1):
                if _call(contenders[name], device) > SLOW_CALL:
                    break
    wanted = case.repeats or repeats
    extend = not case.repeats

    def wants_more(name: str) -> bool:
        n = len(samples[name])
        if n < wanted:
            return not (n and spent[name] > TIME_BUDGET)
        return extend and n < MAX_SAMPLES and spent[name] < MIN_TIME

    order = random.Random(0)
    while True:
        running = [n for n in names if wants_more(n)]
        if not running:
            break
        order.shuffle(running)
        for name in running:
            t = _call(contenders[name], device)
            samples[name].append(t)
            spent[name] += t
    result = Result(
        case.suite,
        case.name,
        {n: statistics.median(s) for n, s in samples.items()},
        case.target,
        {n: len(s) for n, s in samples.items()},
    )
    if case.info is not None:
        with device:
            result.info = case.info()
    if case.stages is not None and profile:
        result.stages = case.stages()
    return result


def _progress(total: int, out: TextIO):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, file=out, unit="case", leave=False, dynamic_ncols=True)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g}" if seconds < 1 else f"{seconds * 1e3:.0f}"


def table(results: Sequence[Result]) -> str:
    """The results as a fixed-width text table; times are medians in milliseconds."""
    peers: list[str] = []
    for r in results:
        peers += [n for n in r.times if n != OURS and n not in peers]
    head = ["case", OURS, *peers, "ratio", "target", "", "method", "f32 error"]
    rows = []
    for r in results:
        met = {True: "ok", False: "MISS", None: ""}[r.met]
        error = r.info.get("error")
        rows.append(
            [
                r.case,
                _ms(r.times.get(OURS)),
                *(_ms(r.times.get(p)) for p in peers),
                "-" if r.ratio is None else f"{r.ratio:.3f}",
                "-" if r.target is None else f"{r.target:g}",
                met,
                str(r.info.get("method", "")),
                "" if error is None else f"{error:.1e}",
            ]
        )
    return _text_table(head, rows)


def stage_table(results: Sequence[Result]) -> str:
    """Our time per stage (ms, median calls) in the cases that measure their stages, with the
    share of the call each takes."""
    shown = [r for r in results if r.stages]
    if not shown:
        return "no case of these suites measures its stages"
    names = [n for n in shown[0].stages if n != "total"]
    head = ["case (stages of ours, ms)", "total", *names, "other"]
    rows = []
    for r in shown:
        total = r.stages["total"]
        parts = [r.stages.get(n, 0.0) for n in names]
        rows.append([r.case, _ms(total), *(f"{_ms(t)} ({t / total:.0%})" for t in parts), _ms(total - sum(parts))])
    return _text_table(head, rows)


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    device = torch.device(device)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "constants": ENGINE.constants_source(CORRELATION, device.type),
        "tuning": ENGINE.tuning_source,
    }


def write_json(path: str, results: Sequence[Result], device: str | torch.device = "cpu") -> None:
    rows = [
        {
            "suite": r.suite,
            "case": r.case,
            "seconds": r.times,
            "samples": r.samples,
            "ratio": r.ratio,
            "target": r.target,
            "met": r.met,
            **r.info,
        }
        for r in results
    ]
    with open(path, "w") as f:
        json.dump({"environment": environment(device), "results": rows}, f, indent=2)


def plot(path: str, results: Sequence[Result]) -> None:
    """A bar per case: our time relative to the fastest peer (log scale), with its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(shown) + 1.5))
    ys = range(len(shown))
    colors = ["tab:green" if r.met in (True, None) else "tab:red" for r in shown]
    ax.barh(list(ys), [r.ratio or 0.0 for r in shown], color=colors)
    for y, r in zip(ys, shown):
        if r.target is not None:
            ax.plot([r.target, r.target], [y - 0.4, y + 0.4], color="black")
    ax.set_yticks(list(ys), [r.case for r in shown])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_xlabel("xcorr time / fastest peer's (median; black tick: target)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _settle_allocator() -> None:
    """Put glibc's allocator where it is in a process that has done other work: a fresh process
    serves every block above 128 KiB with ``mmap``, fresh zero-filled pages on every call, until
    one block of up to 32 MiB is freed and the threshold rises to it. Whichever contender runs
    first would otherwise set it for the rest of the run: the detection case's OpenCV loop took
    562 ms in a fresh process and 359 ms after one 30 MB block had been freed (and our calls'
    blocks had been raising it for OpenCV's too)."""
    block = bytearray(SETTLING_BYTES)
    del block


def run(
    suites: Sequence[str],
    *,
    repeats: int = REPEATS,
    json_path: str | None = None,
    plot_path: str | None = None,
    out: TextIO | None = None,
    device: str | torch.device = "cpu",
    profile: bool = False,
) -> list[Result]:
    """Run the named suites and print the table; returns the results. With ``profile``, a second
    table shows where our time goes in the cases that measure their stages.

    Suites that cannot run here are reported (with the reason) and skipped; if none can run,
    :class:`Unavailable` is raised.
    """
    out = out or sys.stdout
    cases: list[Case] = []
    problems = []
    for name in suites:
        try:
            cases += load(name)
        except Unavailable as error:
            problems.append(str(error))
            print(error, file=out)
    if not cases:
        raise Unavailable("; ".join(problems) or "no cases to run")
    _settle_allocator()
    env = environment(device)
    print(
        f"xcorr bench: torch {env['torch']}, {env['threads']} threads, {env['device']}, CPU capability "
        f"{env['cpu_capability']}; cost-model constants: {env['constants']}; measured winners: {env['tuning']}; "
        "methods per pass: forward/search grad/template grad where they differ; medians in ms",
        file=out,
        flush=True,
    )
    bar = _progress(len(cases), sys.stderr)
    results = []
    for case in cases:
        if bar is not None:
            bar.set_description(case.name)
        else:
            print(f"  running {case.name} ...", file=sys.stderr, flush=True)
        results.append(time_case(case, repeats, device, profile))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    print(table(results), file=out)
    if profile:
        print(stage_table(results), file=out)
    if json_path:
        write_json(json_path, results, device)
        print(f"wrote {json_path}", file=out)
    if plot_path:
        plot(plot_path, results)
        print(f"wrote {plot_path}", file=out)
    return results
