import threading
from dataclasses import replace

import pytest
import torch
from helpers import assert_close_rel
from reference import xcorr_reference

import xcorr
from xcorr.correlation import family
from xcorr.correlation.backends import direct, gather
from xcorr.correlation.family import CORRELATION, pass_problems
from xcorr.correlation.spec import check_xcorr
from xcorr.planning.engine import ENGINE


def builtin(capability=None):
    return CORRELATION.builtin_constants("cpu", capability)[0]


pytestmark = pytest.mark.usefixtures("fresh_planner")


def spec_of(x_shape, z_shape, mode="naive", dtype=torch.float32, padding=0, stride=1, dilation=1):
    x = torch.empty(x_shape, dtype=dtype)
    z = torch.empty(z_shape, dtype=dtype)
    return check_xcorr(x, z, mode, padding, stride, dilation)


def test_device_without_fft_kernels_gets_direct():
    spec = replace(spec_of((2, 3, 16, 16), (1, 3, 15, 15), "depthwise"), device=torch.device("meta"))
    assert CORRELATION.candidates(spec) == ["direct"]
    assert ENGINE.decide(spec) == "direct"
    naive = replace(spec_of((2, 3, 16, 16), (1, 3, 15, 15)), device=torch.device("meta"))
    assert CORRELATION.candidates(naive) == ["direct", "gather"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode, Cz", [("depthwise", 2), ("naive", 2), ("upchannel", 4)])
def test_large_float32_templates_avoid_direct_in_every_mode(dtype, mode, Cz):
    side = int(direct.MAX_TAPS_FLOAT32**0.5) + 1
    spec = spec_of((1, 2, side + 4, side + 4), (1, Cz, side, side), mode, dtype)
    assert "direct" not in CORRELATION.candidates(spec)
    smaller = spec_of((1, 2, side + 4, side + 4), (1, Cz, side - 1, side - 1), mode, dtype)
    assert "direct" in CORRELATION.candidates(smaller)


def test_float64_and_small_templates_keep_both_methods():
    side = int(direct.MAX_TAPS_FLOAT32**0.5) + 1
    assert CORRELATION.candidates(spec_of((1, 2, 50, 50), (1, 2, side, side), "depthwise", torch.float64)) == [
        "direct",
        "fft",
    ]
    assert CORRELATION.candidates(spec_of((1, 2, 50, 50), (1, 2, 7, 7), "depthwise")) == ["direct", "fft"]


def test_export_keeps_only_the_exportable_method(monkeypatch):
    spec = spec_of((2, 3, 64, 64), (1, 3, 20, 20))
    assert CORRELATION.candidates(spec) == ["direct", "fft", "gather"]  # not exporting: all of them
    monkeypatch.setattr(family, "exporting", lambda: True)
    assert CORRELATION.candidates(spec) == ["gather"]
    assert ENGINE.decide(spec) == "gather"


CLEAR_CUT = [
    ((3, 256, 22, 22), (1, 256, 6, 6), "naive", "gather"),  # SiamFC tracking
    ((8, 256, 20, 20), (8, 2560, 4, 4), "upchannel", "gather"),  # SiamRPN up-channel
    ((32, 256, 31, 31), (32, 256, 7, 7), "depthwise", "direct"),  # SiamRPN++ training
    ((1, 256, 255, 255), (1, 256, 127, 127), "naive", "fft"),  # the seed's full size
    ((8, 64, 128, 128), (8, 64, 32, 32), "depthwise", "fft"),
]


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
@pytest.mark.parametrize("x_shape, z_shape, mode, expected", CLEAR_CUT)
def test_cost_model_on_clear_cut_shapes(x_shape, z_shape, mode, expected, capability):
    ENGINE.set_constants("correlation", "cpu", builtin(capability))
    if capability == "AVX2" and mode == "upchannel":
        expected = "direct"  # oneDNN's dense AVX2 kernels: within 5% of gather there
    assert ENGINE.decide(spec_of(x_shape, z_shape, mode)) == expected


def test_constants_follow_the_cpu_capability():
    cap = torch.backends.cpu.get_cpu_capability()
    assert family.CPU_CAPABILITY == cap
    assert ENGINE.constants(CORRELATION, "cpu") == builtin(cap if cap == "AVX512" else "AVX2")
    assert builtin("DEFAULT") == builtin("AVX2")
    assert (cap if cap == "AVX512" else "AVX2") in ENGINE.constants_source(CORRELATION, "cpu")
    assert builtin("AVX2") != builtin("AVX512")
    assert set(builtin()) == set(CORRELATION.constant_names())


def test_gather_competes_only_in_channel_summing_modes_within_memory():
    assert "gather" in CORRELATION.candidates(spec_of((8, 256, 20, 20), (8, 2560, 4, 4), "upchannel"))
    assert "gather" not in CORRELATION.candidates(spec_of((8, 256, 20, 20), (8, 256, 4, 4), "depthwise"))
    # The seed's full size: 127*127 maps of 255*255 floats, far past the budget.
    big = spec_of((1, 256, 255, 255), (1, 256, 127, 127))
    assert gather.maps_bytes(big) > gather.MAX_BYTES
    assert "gather" not in CORRELATION.candidates(big)


def test_gather_memory_rule_is_per_item_since_gather_works_in_chunks_of_items():
    # 512 items of 16*16 maps of 64x64 floats: 4 MiB each, 2 GiB in all, made a chunk at a time.
    many = spec_of((512, 8, 64, 64), (1, 8, 16, 16))
    assert gather.MAX_BYTES < many.batch * gather.maps_bytes(many)
    assert gather.maps_bytes(many) < gather.MAX_BYTES
    assert "gather" in CORRELATION.candidates(many)


def test_estimate_has_no_gather_where_gather_does_not_compete():
    assert set(ENGINE.estimate(spec_of((1, 8, 32, 32), (1, 8, 5, 5), "depthwise"))) == {"direct", "fft"}


def test_estimate_grows_with_the_work():
    small = ENGINE.estimate(spec_of((1, 8, 32, 32), (1, 8, 5, 5)))
    large = ENGINE.estimate(spec_of((8, 8, 32, 32), (8, 8, 5, 5)))
    assert all(large[m] > small[m] > 0 for m in ("direct", "fft", "gather"))
    assert ENGINE.estimate(spec_of((1, 8, 32, 32), (1, 8, 5, 5)), grad=True)["direct"] > small["direct"]


@pytest.mark.parametrize("mode", ["naive", "depthwise", "upchannel"])
def test_choose_method_is_the_cheapest_candidate_of_the_model(mode):
    x, z = torch.rand(2, 3, 20, 20), torch.rand(1, 6 if mode == "upchannel" else 3, 5, 5)
    spec = check_xcorr(x, z, mode, 0, 1, 1)
    costs = ENGINE.estimate(spec)
    allowed = CORRELATION.candidates(spec)
    assert xcorr.choose_method(x, z, mode) == min(allowed, key=costs.get)
    assert xcorr.choose_method(x, z.requires_grad_(), mode) == min(allowed, key=ENGINE.estimate(spec, True).get)


def test_measure_says_which_constants_are_in_force():
    x, z = torch.rand(2, 3, 20, 20), torch.rand(1, 3, 5, 5)
    result = xcorr.choose_method(x, z, measure=True)
    assert result.constants == CORRELATION.builtin_constants("cpu")[1]
    assert result.method == result[0] and result.timings == result[1]
    ENGINE.set_constants("correlation", "cpu", builtin().replace(fft_call=0.0), source="a test")
    assert xcorr.choose_method(x, z, measure=True).constants == "a test"


def test_measure_returns_timings_and_fills_the_cache(monkeypatch):
    x, z = torch.rand(2, 3, 20, 20), torch.rand(1, 3, 5, 5)
    method, timings = xcorr.choose_method(x, z, "depthwise", padding=1, measure=True)
    assert set(timings) == {"direct", "fft"}
    assert all(t > 0 for t in timings.values())
    assert method == min(timings, key=timings.get)
    monkeypatch.setattr(ENGINE, "estimate", lambda *a, **k: pytest.fail("cost model used despite a cached winner"))
    assert xcorr.choose_method(x, z, "depthwise", padding=1) == method


def test_autotune_measures_once_per_key(monkeypatch):
    calls = []
    real = ENGINE.measure

    def counting(spec, grad, allowed, inputs=None):
        calls.append((spec.x_shape, grad))
        return real(spec, grad, allowed, inputs)

    monkeypatch.setattr(ENGINE, "measure", counting)
    xcorr.set_autotune(True)
    x, z = torch.rand(3, 2, 12, 12), torch.rand(3, 2, 3, 3)
    first = xcorr.xcorr(x, z)
    again = xcorr.xcorr(x, z)
    assert calls == [((3, 2, 12, 12), False)]
    torch.testing.assert_close(first, again)
    assert_close_rel(first, xcorr_reference(x, z))
    xcorr.xcorr(x, z.requires_grad_(True))  # a backward may follow: a different key
    # ... whose per-pass option measures the two gradient problems first, forward only, once each
    search, template = pass_problems(check_xcorr(x, z, "naive", 0, 1, 1))
    assert sorted(calls[1:]) == sorted([((3, 2, 12, 12), True), (search.x_shape, False), (template.x_shape, False)])
    xcorr.xcorr(x, z)
    assert len(calls) == 4


def test_autotune_is_thread_safe(monkeypatch):
    calls = []
    real = ENGINE.measure

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ENGINE, "measure", counting)
    xcorr.set_autotune(True)
    x, z = torch.rand(2, 2, 10, 10), torch.rand(1, 2, 3, 3)
    outs = [None] * 4

    def work(i):
        outs[i] = xcorr.xcorr(x, z)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    for out in outs:
        torch.testing.assert_close(out, outs[0])


def test_autotune_off_never_measures(monkeypatch):
    monkeypatch.setattr(ENGINE, "measure", lambda *a, **k: pytest.fail("measured"))
    xcorr.set_autotune(False)
    xcorr.xcorr(torch.rand(2, 2, 10, 10), torch.rand(1, 2, 3, 3))


def test_devices_without_constants_measure_by_default():
    spec = spec_of((2, 2, 10, 10), (1, 2, 3, 3))
    meta = replace(spec, device=torch.device("meta"))
    assert ENGINE.measuring(CORRELATION, spec.device.type) is False
    assert ENGINE.measuring(CORRELATION, meta.device.type) is True
    xcorr.set_autotune(False)
    assert ENGINE.measuring(CORRELATION, meta.device.type) is False


def test_builtin_constants_are_read_only():
    with pytest.raises(TypeError):
        builtin()["fft_call"] = 0.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        builtin().fft_call = 0.0  # type: ignore[misc]
    assert direct.BACKEND.constants["AVX2"]["direct_call"] == builtin("AVX2")["direct_call"]


def test_new_constants_apply_to_shapes_already_seen(monkeypatch):
    # 9x9 templates on 40x40: direct by the built-in model; with a free FFT, fft must win at once.
    x, z = torch.rand(1, 4, 40, 40), torch.rand(1, 4, 9, 9)
    xcorr.xcorr(x, z, "depthwise")  # the bound call of this signature is cached
    assert xcorr.choose_method(x, z, "depthwise") == "direct"
    picks = []
    real_select = ENGINE.decide
    monkeypatch.setattr(ENGINE, "decide", lambda *a, **k: picks.append(real_select(*a, **k)) or picks[-1])
    free = builtin().replace(fft_call=0.0, fft_chunk=0.0, fft_point=0.0, fft_product=0.0)
    ENGINE.set_constants("correlation", "cpu", free)
    assert_close_rel(xcorr.xcorr(x, z, "depthwise"), xcorr_reference(x, z, "depthwise"))
    assert picks == ["fft"]


def test_invalidate_drops_every_derived_answer():
    x, z = torch.rand(2, 3, 9, 9), torch.rand(1, 3, 4, 4)
    xcorr.xcorr(x, z)
    before = ENGINE.generation
    assert ENGINE.derived
    ENGINE.invalidate()
    assert ENGINE.generation == before + 1 and not ENGINE.derived and not ENGINE._modelled


def test_compiled_call_decides_without_measuring(monkeypatch):
    monkeypatch.setattr(ENGINE, "measure", lambda *a, **k: pytest.fail("measured while compiling"))
    xcorr.set_autotune(True)
    f = torch.compile(lambda x, z: xcorr.xcorr(x, z, "depthwise", padding=1), fullgraph=True, backend="eager")
    x, z = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 4, 4)
    assert_close_rel(f(x, z), xcorr_reference(x, z, "depthwise", padding=1))


X, Z = torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 3, 3)
BAD_INPUTS = [
    (lambda: xcorr.choose_method(X, Z, measure="yes"), TypeError, r"measure must be a bool, got 'yes'"),
    (lambda: xcorr.choose_method(X[0], Z), ValueError, r"x must be 4-D \(B, C, H, W\), got shape \(3, 8, 8\)"),
    (lambda: xcorr.choose_method(X, Z, "pixel"), ValueError, r"unknown mode 'pixel'"),
    (lambda: xcorr.choose_method(X, Z, stride=0), ValueError, r"stride must be at least 1, got 0"),
    (lambda: xcorr.set_autotune("on"), TypeError, r"enabled must be True, False or None, got 'on'"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_repeated_calls_skip_validation_and_planning(monkeypatch):
    from xcorr.correlation import api as ops

    x, z = torch.rand(2, 3, 9, 9), torch.rand(1, 3, 4, 4)
    first = xcorr.xcorr(x, z, "depthwise", padding=1)
    checks, selects = [], []
    real_check, real_select = ops.check_xcorr, ENGINE.decide
    monkeypatch.setattr(ops, "check_xcorr", lambda *a: checks.append(a) or real_check(*a))
    monkeypatch.setattr(ENGINE, "decide", lambda *a, **k: selects.append(a) or real_select(*a, **k))
    assert torch.equal(xcorr.xcorr(x.clone(), z.clone(), "depthwise", padding=1), first)  # same signature
    assert checks == [] and selects == []
    for _ in range(2):  # another signature each (the pair, another dtype): validated once
        assert torch.equal(xcorr.xcorr(x, z, "depthwise", padding=(1, 1)), first)
        xcorr.xcorr(x.double(), z.double(), "depthwise", padding=1)
    assert len(checks) == 2 and len(selects) == 2


def test_repeated_call_signatures_tell_plain_ints_from_look_alikes():
    x, z = torch.rand(1, 2, 6, 6), torch.rand(1, 2, 3, 3)
    xcorr.xcorr(x, z, padding=1, stride=1)  # cached with plain ints
    for bad in (True, 1.0, (1, True), (1.0, 1)):
        with pytest.raises(TypeError, match="padding must be an int or a pair of ints"):
            xcorr.xcorr(x, z, padding=bad)
    # a list is not cached, and means what the tuple means
    assert torch.equal(xcorr.xcorr(x, z, padding=[1, 1]), xcorr.xcorr(x, z, padding=(1, 1)))


def test_repeated_calls_are_planned_again_after_a_setting_changes(monkeypatch):
    x, z = torch.rand(2, 3, 9, 9), torch.rand(1, 3, 4, 4)
    xcorr.xcorr(x, z)
    selects = []
    real_select = ENGINE.decide
    monkeypatch.setattr(ENGINE, "decide", lambda *a, **k: selects.append(a) or real_select(*a, **k))
    xcorr.xcorr(x, z)
    assert selects == []
    for change in (
        lambda: xcorr.set_autotune(False),
        xcorr.clear_cache,
        lambda: xcorr.choose_method(x, z, measure=True),
        lambda: ENGINE.set_constants("correlation", "cpu", builtin()),
    ):
        change()
        selects.clear()
        xcorr.xcorr(x, z)
        xcorr.xcorr(x, z)
        assert len(selects) == 1  # once per change
        selects.clear()
