"""The benchmark runner on a tiny fake suite (speed itself is never asserted)."""

import importlib.util
import json
import sys
import types

import pytest
import torch

from xcorr import cli
from xcorr.benchmarks import OURS, Case, runner, siamese


def fake_suite(monkeypatch, cases, peers=()):
    module = types.ModuleType("xcorr_fake_suite")
    module.cases = lambda: cases
    module.PEERS = peers
    monkeypatch.setitem(sys.modules, "xcorr_fake_suite", module)
    monkeypatch.setitem(runner.SUITES, "fake", "xcorr_fake_suite")


def counting_case(calls, target=2.0):
    def setup():
        return {
            OURS: lambda: calls.append(OURS),
            "peer": lambda: calls.append("peer"),
        }

    return Case("fake", "one", setup, target, repeats=3, info=lambda: {"method": "direct", "error": 1e-7})


def test_time_case_warms_up_then_interleaves(monkeypatch):
    calls = []
    result = runner.time_case(counting_case(calls))
    # ours warms up as a repeated signature settles (its trials), a peer with one call; three timed each
    assert calls.count(OURS) == runner.OURS_WARM_CALLS + 3 and calls.count("peer") == 4
    timed = calls[runner.OURS_WARM_CALLS + 1 :]
    assert timed != [OURS] * 3 + ["peer"] * 3  # rounds alternate the contenders
    assert result.samples == {OURS: 3, "peer": 3}
    assert result.ratio == pytest.approx(result.times[OURS] / result.times["peer"])
    assert result.info == {"method": "direct", "error": 1e-7}


def test_fast_contenders_are_timed_longer_in_shuffled_rounds():
    calls = []

    def setup():
        return {name: (lambda name=name: calls.append(name)) for name in (OURS, "a", "b")}

    result = runner.time_case(Case("fake", "fast", setup, 1.0), repeats=5)
    # Calls that take no time are timed up to MAX_SAMPLES times, not just 5.
    assert result.samples == dict.fromkeys((OURS, "a", "b"), runner.MAX_SAMPLES)
    timed = calls[3:]
    predecessors = {(timed[i - 1], timed[i]) for i in range(1, len(timed))}
    # Every contender is run right after each of the others at some point (no fixed rotation).
    assert predecessors >= {(p, n) for p in (OURS, "a", "b") for n in (OURS, "a", "b") if p != n}


def test_table_json_and_ratio(monkeypatch, tmp_path, capsys):
    fake_suite(monkeypatch, [counting_case([])])
    path = tmp_path / "bench.json"
    results = runner.run(["fake"], json_path=str(path))
    out = capsys.readouterr().out
    assert "one" in out and "peer" in out and "ratio" in out and "direct" in out
    data = json.loads(path.read_text())
    assert data["results"][0]["case"] == "one"
    assert data["results"][0]["ratio"] == pytest.approx(results[0].ratio)
    assert set(data["environment"]) >= {"torch", "threads", "device"}


def test_the_allocator_is_settled_before_the_first_case(monkeypatch):
    # A block of up to glibc's 32 MiB maximum, freed: its mmap threshold rises to it, as in a
    # process that has done other work, before any contender runs.
    calls = []
    monkeypatch.setattr(runner, "_settle_allocator", lambda: calls.append("settled"))
    fake_suite(monkeypatch, [counting_case(calls)])
    runner.run(["fake"])
    assert calls[0] == "settled" and calls.count("settled") == 1 and OURS in calls
    assert 16 << 20 < runner.SETTLING_BYTES <= 32 << 20


def test_result_meets_its_target():
    r = runner.Result("s", "c", {OURS: 1.0, "a": 4.0, "b": 2.0}, target=0.5)
    assert r.ratio == 0.5 and r.met is True
    assert runner.Result("s", "c", {OURS: 1.0, "a": 1.5}, target=0.5).met is False
    assert runner.Result("s", "c", {OURS: 1.0}, target=0.5).ratio is None


def test_missing_suite_module_is_reported(monkeypatch):
    monkeypatch.setitem(runner.SUITES, "gone", "xcorr.benchmarks.no_such_suite")
    with pytest.raises(
        runner.Unavailable, match=r"suite 'gone' is unavailable: its module xcorr\.benchmarks\.no_such_suite"
    ):
        runner.load("gone")


def test_missing_peer_package_is_reported(monkeypatch):
    fake_suite(monkeypatch, [], peers=("no_such_peer_package",))
    with pytest.raises(runner.Unavailable, match=r"peers' packages no_such_peer_package are missing \(pip install"):
        runner.load("fake")


def test_cli_says_when_nothing_can_run(monkeypatch, capsys):
    monkeypatch.setitem(runner.SUITES, "match", "xcorr.benchmarks.no_such_suite")
    assert cli.main(["bench", "--suite", "match"]) == 2
    assert "suite 'match' is unavailable" in capsys.readouterr().err


def test_siamese_suite_lists_the_issue_shapes():
    names = [c.name for c in siamese.cases()]
    assert len(names) == len(set(names)) == 16
    assert all(c.target is not None for c in siamese.cases())


def test_grouped_peer_formulation_is_correct():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    import xcorr

    gen = torch.Generator().manual_seed(0)
    for mode, (B, C, K) in {"naive": (3, 2, 1), "depthwise": (3, 2, 2), "upchannel": (3, 2, 3)}.items():
        for Bz in (1, B):
            if Bz == 1 and mode != "naive" and B > 1:
                continue  # the hand-written shared-template forms take one search item
            x = torch.randn(B, C, 9, 9, generator=gen, dtype=torch.float64)
            z = torch.randn(Bz, C * K if mode == "upchannel" else C, 3, 3, generator=gen, dtype=torch.float64)
            torch.testing.assert_close(siamese.grouped(F.conv2d, x, z, mode), xcorr.xcorr(x, z, mode))


def test_cli_rejects_zero_threads(capsys):
    assert cli.main(["bench", "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_flow_suite_runs_at_tiny_sizes(monkeypatch, capsys):
    from xcorr.benchmarks import flow

    module = types.ModuleType("xcorr_tiny_flow")
    module.cases = lambda: flow.cases(tiny=True)
    monkeypatch.setitem(sys.modules, "xcorr_tiny_flow", module)
    monkeypatch.setitem(runner.SUITES, "tiny flow", "xcorr_tiny_flow")
    results = runner.run(["tiny flow"])
    out = capsys.readouterr().out
    names = [r.case for r in results]
    assert len(names) == len(set(names)) == sum(len(p.grads) for p in flow.PROBLEMS) == 27
    assert "FlowNetC B8 fwd+bwd" in names and "PWC-Net level 2 B4 fwd" in names and "GwcNet B2 fwd" in names
    # RAFT and RAFT-Stereo as they train and evaluate: lookups of one pyramid per call.
    assert {
        "RAFT B2, 12 lookups fwd+bwd",
        "RAFT B2, 12 lookups on demand fwd",
        "RAFT 55x128 B1, 32 lookups fwd",
        "RAFT-Stereo B2, 12 lookups fwd+bwd",
        "RAFT-Stereo B2, 32 lookups fwd",
    } <= set(names)
    assert "RAFT 55x128 B1, 32 lookups fwd+bwd" not in names and "RAFT-Stereo B2, 32 lookups fwd+bwd" not in names
    sampler = {flow.SAMPLER} if flow.sampler_available() else set()
    for r in results:
        if r.case.startswith("RAFT-Stereo"):
            peers = {flow.CORR_BLOCK_1D}
        elif r.case.startswith("RAFT"):
            peers = {flow.CORR_BLOCK}
        else:
            local = r.case.startswith(("FlowNetC", "PWC-Net"))
            peers = {flow.LOOP, flow.UNFOLD} | (sampler if local else set())
        assert set(r.times) >= {OURS, *peers} and r.ratio is not None and r.target is not None
        assert r.info["error"] <= 2e-6, r.case
        assert set(r.info["peak_bytes"]) == set(r.times) and all(v is not None for v in r.info["peak_bytes"].values())
    assert "peak MiB: xcorr" in out and "shifted loop" in out and "CorrBlock" in out
    if not flow.sampler_available():
        assert "spatial-correlation-sampler is unavailable" in out and "make sampler" in out


def test_flow_peers_over_the_memory_budget_are_left_out(monkeypatch):
    from xcorr.benchmarks import flow

    monkeypatch.setattr(flow, "memory_budget", lambda device: 0.0)
    case = flow.cases(tiny=True)[1]  # FlowNetC fwd+bwd
    result = runner.time_case(case, repeats=1)
    assert set(result.times) == {OURS} and result.ratio is None
    sampler = {flow.SAMPLER} if flow.sampler_available() else set()
    assert set(result.info["left_out_bytes"]) == {flow.LOOP, flow.UNFOLD} | sampler
    assert "left out, over the memory budget: shifted loop" in result.info["method"]


def test_flow_peak_memory_of_a_peer_is_that_of_its_call_alone():
    from xcorr.benchmarks import flow

    case = flow.cases(tiny=True)[1]  # FlowNetC fwd+bwd
    assert case.name == "FlowNetC B8 fwd+bwd"
    peaks = runner.time_case(case, repeats=1).info["peak_bytes"]
    p = flow.PROBLEMS[0].tiny()
    f1, f2 = (torch.randn(p.shape).requires_grad_() for _ in range(2))
    peers = [(flow.LOOP, flow.shifted_loop), (flow.UNFOLD, flow.unfold_local)]
    peers += [(flow.SAMPLER, flow.sampler_local)] if flow.sampler_available() else []
    for name, peer in peers:
        f1.grad = f2.grad = None
        alone = flow.peak_bytes(
            lambda peer=peer: peer(f1, f2, p.reach, p.displacement_stride).sum().backward(), torch.device("cpu")
        )
        # The gradients ours left on the shared inputs are not freed inside the peer's measured call.
        assert peaks[name] == alone and alone >= 2 * f1.numel() * 4, name


def test_flow_peer_formulations_are_correct():
    import torch

    import xcorr
    from xcorr.benchmarks import flow

    gen = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 2, 4, 7, 9, generator=gen, dtype=torch.float64)
    for md, ds in ((3, 1), (4, 2), (3, 2)):
        wanted = xcorr.local_correlation(f1, f2, md, displacement_stride=ds, normalize="mean")
        torch.testing.assert_close(flow.shifted_loop(f1, f2, md, ds), wanted)
        torch.testing.assert_close(flow.unfold_local(f1, f2, md, ds), wanted)
    for D, G in ((5, None), (4, 2)):
        wanted = xcorr.stereo_correlation(f1, f2, D, groups=G)
        torch.testing.assert_close(flow.stereo_loop(f1, f2, D, G), wanted)
        torch.testing.assert_close(flow.unfold_stereo(f1, f2, D, G), wanted)
    f1, f2 = torch.randn(2, 2, 3, 12, 10, generator=gen, dtype=torch.float64)
    coords = torch.rand(2, 2, 12, 10, generator=gen, dtype=torch.float64) * 14 - 2
    block = flow.CorrBlock(f1, f2, num_levels=3, radius=2)
    torch.testing.assert_close(block.lookup(coords), xcorr.CorrPyramid(f1, f2, 3, 2)(coords))
    assert block(coords).dtype == torch.float32  # as RAFT's CorrBlock returns it
    block_1d = flow.CorrBlock1D(f1, f2, num_levels=2, radius=2)
    torch.testing.assert_close(block_1d.lookup(coords), xcorr.StereoCorrPyramid(f1, f2, 2, 2)(coords))
    assert block_1d(coords).dtype == torch.float32  # as RAFT-Stereo's CorrBlock1D returns it
    # RAFT-Stereo's rows: two lookups (at coords and coords + 1/2), their sum weighted.
    weights = torch.randn(2, 10, 12, 10, generator=gen, dtype=torch.float64)
    run = flow._weighted(flow._looked_up(lambda a, b: xcorr.StereoCorrPyramid(a, b, 2, 2), 2))
    pyramid = xcorr.StereoCorrPyramid(f1, f2, 2, 2)
    torch.testing.assert_close(run(f1, f2, coords, weights), (pyramid(coords) + pyramid(coords + 0.5)) * weights)


@pytest.mark.skipif(
    importlib.util.find_spec("spatial_correlation_sampler") is None,
    reason="spatial_correlation_sampler is not installed (`make sampler` builds its CPU extension)",
)
def test_flow_sampler_peer_is_correct():
    import xcorr
    from xcorr.benchmarks import flow

    gen = torch.Generator().manual_seed(0)
    f1, f2 = (t.requires_grad_() for t in torch.randn(2, 2, 4, 7, 9, generator=gen, dtype=torch.float64))
    for md, ds in ((3, 1), (4, 2), (3, 2)):
        ours = xcorr.local_correlation(f1, f2, md, displacement_stride=ds, normalize="mean")
        theirs = flow.sampler_local(f1, f2, md, ds)
        torch.testing.assert_close(theirs, ours)
        weight = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
        for a, b in zip(
            torch.autograd.grad((theirs * weight).sum(), (f1, f2)), torch.autograd.grad((ours * weight).sum(), (f1, f2))
        ):
            torch.testing.assert_close(a, b)


def test_a_case_runs_at_its_threads_for_torch_and_opencv_then_restores_them():
    import cv2
    import torch

    seen = []

    def setup():
        return {OURS: lambda: seen.append((torch.get_num_threads(), cv2.getNumThreads())), "peer": lambda: None}

    before = torch.get_num_threads(), cv2.getNumThreads()
    runner.time_case(Case("fake", "one thread", setup, 1.0, repeats=1, threads=1))
    assert seen and set(seen) == {(1, 1)}
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before


def test_profile_prints_the_stages_of_cases_that_measure_them(monkeypatch, capsys):
    stages = {"numerator": 0.002, "window statistics": 0.001, "total": 0.004}
    staged = Case("fake", "staged", counting_case([]).setup, 1.0, repeats=1, stages=lambda: dict(stages))
    fake_suite(monkeypatch, [staged, counting_case([])])
    results = runner.run(["fake"], profile=True)
    assert results[0].stages == stages and results[1].stages == {}
    out = capsys.readouterr().out
    head, *rows = out.split("case (stages of ours, ms)")[1].splitlines()
    assert "numerator" in head and "window statistics" in head and "other" in head
    assert rows[1].split() == ["staged", "4", "2", "(50%)", "1", "(25%)", "1"]
    assert not any(r.startswith("one") for r in rows)  # a case without stages is left out
    runner.run(["fake"])
    assert "case (stages" not in capsys.readouterr().out  # only with profile


def test_match_suite_lists_photographs_one_thread_rows_a_batch_and_a_video():
    from xcorr.benchmarks import match

    cases = match.cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert any("photo camera" in n for n in names) and any("sqdiff_normed" in n for n in names)
    ones = [c for c in cases if c.threads == 1 and "detect" not in c.name]
    assert len(ones) == len(match.ONE_THREAD) and all(c.name.endswith("(1 thread)") for c in ones)
    assert all(c.target == match.ONE_THREAD_TARGET for c in ones)
    detect = [c for c in cases if "detect" in c.name]
    assert [c.threads for c in detect] == [None, 1] and {c.target for c in detect} == {match.DETECT_TARGET}
    others = ("batch", "video", "volume", "detect")
    assert {c.target for c in cases if c.threads is None and not any(o in c.name for o in others)} == {
        match.SINGLE_TARGET
    }
    assert all(c.stages is not None for c in cases)
    (volume,) = [c for c in cases if "volume" in c.name]
    assert volume.target == match.VOLUME_TARGET and "128³ / 16³" in volume.name
    drop_in = [c for c in cases if c.name.startswith(match.DROP_IN[0])]
    assert [c.threads for c in drop_in] == [None, 1]
    contenders = drop_in[0].setup()
    assert set(contenders) == {match.OURS, match.SKIMAGE}
    torch.testing.assert_close(
        torch.from_numpy(contenders[match.OURS]()), torch.from_numpy(contenders[match.SKIMAGE]()), atol=1e-9, rtol=0
    )


def test_flow_raft_rows_look_one_pyramid_up_as_raft_iterates():
    from xcorr.benchmarks import flow

    built = []

    def build(f1, f2):
        built.append(1)
        return lambda coords: coords * f1.sum() + f2.sum()

    f1, f2, coords = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.arange(8.0).view(1, 2, 2, 2)
    out = flow._looked_up(build, 4)(f1, f2, coords)
    assert built == [1]
    torch.testing.assert_close(out, sum(4 * (coords + k / 4) for k in range(4)))
