"""Deterministic mode (``torch.use_deterministic_algorithms(True)``): identical calls give identical
bits, within a process and across processes, and no decision comes from a timing.

Run as a script (``python tests/test_determinism.py``), this module prints the SHA-256 of every
case's outputs and gradients in deterministic mode: two processes must print the same.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DEVICES, assert_close_rel

import xcorr
from xcorr.compat.flownet2 import Correlation
from xcorr.compat.spatial_correlation_sampler import spatial_correlation_sample
from xcorr.correlation.family import CORRELATION
from xcorr.correlation.spec import check_xcorr
from xcorr.matching import dense
from xcorr.planning import engine
from xcorr.planning import trials as _trials
from xcorr.planning.engine import ENGINE, signature
from xcorr.volumes.family import PYRAMIDS, VOLUMES
from xcorr.volumes.spec import PyramidSpec, check_local_correlation

#: A shape whose repeated training calls try other options outside deterministic mode (the
#: model's pick, then per-pass and FFT: their results differ in the last bits).
TRIED = ((4, 16, 40, 40), (4, 16, 9, 9), "depthwise")

REPEATS = 40


def _randn(*shape, seed, device="cpu"):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _step(fn, *inputs):
    """``fn``'s output and the gradients of ``inputs`` (fresh leaves) under a fixed weighting of it."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    (out * weights).sum().backward()
    return [out.detach(), *(t.grad for t in leaves if t.requires_grad)]


def _pyramid_coords(B, H, W, seed, device="cpu"):
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return (torch.stack([xs, ys])[None] + 3 * _randn(B, 2, H, W, seed=seed)).to(device)


def cases(device="cpu"):
    """name -> a call returning its output and gradients, one per public path and method."""
    x, z = _randn(3, 4, 13, 11, seed=0, device=device), _randn(1, 4, 4, 3, seed=1, device=device)
    zk = _randn(3, 8, 4, 3, seed=2, device=device)
    f1, f2 = _randn(2, 8, 12, 14, seed=3, device=device), _randn(2, 8, 12, 14, seed=4, device=device)
    p1, p2 = _randn(1, 8, 16, 20, seed=5, device=device), _randn(1, 8, 16, 20, seed=6, device=device)
    coords = _pyramid_coords(1, 16, 20, 7, device)
    image, template = _randn(1, 2, 20, 23, seed=8, device=device), _randn(1, 2, 5, 4, seed=9, device=device)
    mask = (_randn(1, 1, 5, 4, seed=10, device=device) > 0).float()
    tx, tz = _randn(*TRIED[0], seed=11, device=device), _randn(*TRIED[1], seed=12, device=device)
    table = {"tried auto": lambda: _step(lambda a, b: xcorr.xcorr(a, b, TRIED[2]), tx, tz)}
    for mode, template_ in (("naive", z), ("depthwise", z), ("upchannel", zk)):
        for method in ("auto", "direct", "fft", "gather"):
            if method == "gather" and mode == "depthwise":
                continue
            table[f"xcorr {mode} {method}"] = lambda m=mode, t=template_, me=method: _step(
                lambda a, b: xcorr.xcorr(a, b, m, padding=1, method=me), x, t
            )
    table["pixelwise"] = lambda: _step(xcorr.pixelwise, x, z)
    table["plan"] = lambda: _step(lambda a, b: xcorr.plan(b, tuple(a.shape), "depthwise")(a), x, z)
    for method in ("auto", "shifted", "banded"):
        spec = check_local_correlation(f1, f2, 3, 1, 2, 3, "mean", "flat")
        table[f"local {method}"] = lambda s=spec, me=method: _step(
            lambda a, b: xcorr.volumes.correlate(a, b, s, me), f1, f2
        )
    table["local_correlation"] = lambda: _step(lambda a, b: xcorr.local_correlation(a, b, 4, stride=2), f1, f2)
    table["stereo_correlation"] = lambda: _step(lambda a, b: xcorr.stereo_correlation(a, b, 5, groups=4), f1, f2)
    table["spatial_correlation_sample"] = lambda: _step(
        lambda a, b: spatial_correlation_sample(a, b, patch_size=5, dilation_patch=2), f1, f2
    )
    table["flownet2"] = lambda: _step(Correlation(2, 1, 2, 1, 1), f1, f2)
    for method in ("auto", "all_pairs", "on_demand"):
        for radius in (1, 3):  # on demand: levels correlated whole (dense), then window by window too
            table[f"pyramid {method} r{radius}"] = lambda me=method, r=radius: _step(
                lambda a, b, c: xcorr.CorrPyramid(a, b, 3, r, method=me)(c), p1, p2, coords
            )
    for method in ("sqdiff", "sqdiff_normed", "ccorr", "ccorr_normed", "ccoeff", "ccoeff_normed"):
        for dtype in (torch.float32, torch.float64):
            table[f"match {method} {dtype}"] = lambda me=method, d=dtype: _step(
                lambda a, b: xcorr.match_template(a, b, me), image.to(d), template.to(d)
            )
        table[f"match {method} masked"] = lambda me=method: _step(
            lambda a, b: xcorr.match_template(a, b, me, mask=mask), image, template
        )
    return table


def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digests(repeats=REPEATS):
    """Every case's digest in deterministic mode; the repeated-call case run ``repeats`` times
    first (where, outside deterministic mode, its options would be tried)."""
    torch.use_deterministic_algorithms(True)
    table = cases()
    tried = {digest(table["tried auto"]()) for _ in range(repeats)}
    assert len(tried) == 1, tried
    return {name: digest(run()) for name, run in table.items()}


#: What cuBLAS needs in deterministic mode (torch raises on CUDA without it).
CUBLAS = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


@pytest.fixture
def deterministic(fresh_planner, monkeypatch):
    """Deterministic mode for the test, the flags as they were afterwards."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    for name, value in CUBLAS.items():
        monkeypatch.setenv(name, value)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


pytestmark = pytest.mark.usefixtures("deterministic")


def spec_of(x_shape, z_shape, mode):
    return check_xcorr(torch.empty(x_shape), torch.empty(z_shape), mode, 0, 1, 1)


@pytest.mark.parametrize("mode", ["tried", "naive", "depthwise", "upchannel"])
def test_repeated_training_calls_give_identical_bits(mode):
    name = "tried auto" if mode == "tried" else f"xcorr {mode} auto"
    run = cases()[name]
    results = {digest(run()) for _ in range(REPEATS)}
    assert len(results) == 1
    assert ENGINE.measured_winners() == {}  # nothing tried, nothing measured


@pytest.mark.parametrize("device", DEVICES)
def test_every_path_runs_and_repeats_in_deterministic_mode(device):
    """No path raises (torch refuses its kernels without a deterministic form), each repeats its
    bits, and agrees with the same call outside deterministic mode."""
    for name, run in cases(device).items():
        first = run()
        assert digest(run()) == digest(first), name
        torch.use_deterministic_algorithms(False)
        try:
            free = run()
        finally:
            torch.use_deterministic_algorithms(True)
        for a, b in zip(first, free):
            tol = 1e-10 if a.dtype == torch.float64 else 1e-5
            assert_close_rel(a, b, tol=tol)


def test_two_processes_give_identical_bits(tmp_path):
    script = Path(__file__)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(xcorr.__file__).parents[1]), os.environ.get("PYTHONPATH")) if p
        ),
        "XCORR_PROFILE": str(tmp_path / "none.json"),
        **CUBLAS,
    }
    runs = [
        subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600, check=True)
        for _ in range(2)
    ]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == second and len(first) == len(cases())


def _no_timing(monkeypatch):
    """Every routine that times an option fails the test."""

    def fail(*args, **kwargs):
        pytest.fail("an option was timed in deterministic mode")

    monkeypatch.setattr(engine, "bench", fail)
    monkeypatch.setattr(ENGINE, "measure", fail)
    monkeypatch.setattr(_trials.Trials, "__init__", fail)


@pytest.mark.parametrize("autotune", [None, True])
def test_nothing_is_timed_in_deterministic_mode(monkeypatch, autotune):
    _no_timing(monkeypatch)
    xcorr.set_autotune(autotune)
    for run in cases().values():
        run()
        run()
    assert ENGINE.measured_winners() == {}


def test_devices_without_constants_use_the_model_in_deterministic_mode(monkeypatch):
    # As on CUDA, where no constants are built in: outside deterministic mode it measures.
    builtin = ENGINE.model_constants(CORRELATION, "cpu")
    monkeypatch.setattr(ENGINE, "constants", lambda family, device_type: None)
    monkeypatch.setattr(ENGINE, "model_constants", lambda family, device_type: builtin)
    spec = spec_of((2, 3, 20, 20), (1, 3, 5, 5), "naive")
    torch.use_deterministic_algorithms(False)
    assert ENGINE.measuring(CORRELATION, "cpu")
    torch.use_deterministic_algorithms(True)
    _no_timing(monkeypatch)
    assert not ENGINE.measuring(CORRELATION, "cpu") and not ENGINE.trials_enabled(CORRELATION, "cpu")
    assert ENGINE.decide(spec) == argmin_of_model(spec)


def argmin_of_model(spec, grad=False):
    costs = ENGINE.estimate(spec, grad)
    return min(CORRELATION.options(spec, grad), key=lambda o: costs.get(o, float("inf")))


def test_trials_are_bound_outside_deterministic_mode_only():
    spec = spec_of(*TRIED)
    assert not isinstance(ENGINE.bind(spec, True).run, _trials.Trials)
    torch.use_deterministic_algorithms(False)
    assert isinstance(ENGINE.bind(spec, True).run, _trials.Trials)


def test_a_signature_keeps_a_bound_call_per_mode():
    x, z = torch.rand(1, 2, 8, 8), torch.rand(1, 2, 3, 3)
    fixed = signature("xcorr", (x, z), ("naive", 0, 1, 1, "auto"))
    torch.use_deterministic_algorithms(False)
    assert signature("xcorr", (x, z), ("naive", 0, 1, 1, "auto")) != fixed


def _other_than_model(spec, options, grad=False):
    pick = ENGINE.decide(spec, grad)
    return pick, next(o for o in options if o != pick)


@pytest.mark.parametrize("family", ["correlation", "volume", "pyramid"])
def test_winners_measured_here_are_not_used_but_loaded_ones_are(family, tmp_path, monkeypatch):
    if family == "correlation":
        spec = spec_of((2, 3, 20, 20), (1, 3, 5, 5), "naive")
        options, key = CORRELATION.options(spec, False), CORRELATION.key(spec, False)
    elif family == "volume":
        f = torch.empty(1, 8, 12, 16)
        spec = check_local_correlation(f, f, 2, 1, 1, 1, "none", "flat")
        options, key = VOLUMES.options(spec), VOLUMES.key(spec, False)
    else:
        spec = PyramidSpec((1, 8, 16, 16), 2, 1, torch.float32, torch.device("cpu"))
        options, key = PYRAMIDS.options(spec), PYRAMIDS.key(spec, False)
    model, other = _other_than_model(spec, options)
    ENGINE.record(key, other)  # as the trials or autotune would
    assert ENGINE.decide(spec) == model
    torch.use_deterministic_algorithms(False)
    assert ENGINE.decide(spec) == other
    path = tmp_path / "tuning.json"
    xcorr.save_tuning(path)
    xcorr.clear_cache()
    torch.use_deterministic_algorithms(True)
    assert ENGINE.decide(spec) == model
    assert xcorr.load_tuning(path) == 1
    _no_timing(monkeypatch)
    monkeypatch.setattr(ENGINE, "estimate", lambda *a, **k: pytest.fail("modelled despite a loaded winner"))
    assert ENGINE.decide(spec) == other


def test_choose_method_measures_but_auto_keeps_the_model():
    x, z = torch.rand(2, 3, 20, 20), torch.rand(1, 3, 5, 5)
    model = xcorr.choose_method(x, z)
    measured = xcorr.choose_method(x, z, measure=True)
    assert set(measured.timings) == set(CORRELATION.options(check_xcorr(x, z, "naive", 0, 1, 1), False))
    assert measured.method == model == xcorr.choose_method(x, z)


def test_window_sums_by_doubling_match_the_running_sums():
    # The form matching's float64 window sums take on CUDA in deterministic mode (no cumsum there).
    x = _randn(2, 3, 17, 23, seed=0).double()
    for h, w in ((1, 1), (4, 3), (5, 8), (17, 23)):
        assert_close_rel(dense._slide_columns(dense._slide(x, h), w), dense._box(x, h, w), tol=1e-13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_window_sums_avoid_cumsum_in_deterministic_mode(monkeypatch):
    x = _randn(1, 2, 9, 12, seed=1, device="cuda").double()
    expected = dense._box(x.cpu(), 3, 4)
    monkeypatch.setattr(dense.torch, "cumsum", lambda *a, **k: pytest.fail("cumsum on CUDA"))
    assert_close_rel(dense._box(x, 3, 4), expected, tol=1e-13)


def test_loaded_winners_are_forgotten_with_the_others(tmp_path):
    spec = spec_of((2, 3, 20, 20), (1, 3, 5, 5), "naive")
    model, other = _other_than_model(spec, CORRELATION.options(spec, False))
    ENGINE.add_winners({CORRELATION.key(spec, False): other})
    assert ENGINE.decide(spec) == other
    xcorr.clear_cache()
    assert ENGINE.decide(spec) == model


if __name__ == "__main__":
    print(json.dumps(digests()))
