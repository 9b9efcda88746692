"""A backend added from outside the package: one record and one registration, nothing else edited.

The toy computes every correlation by ``F.unfold`` and a matrix product (exact, differentiable);
its record declares its own rules and cost terms. The test sees it validated, planned, measured,
fitted and saved like the built-in methods.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_rel
from reference import xcorr_reference

import xcorr
from xcorr.benchmarks import costmodel
from xcorr.correlation.backends import Backend
from xcorr.correlation.family import CORRELATION
from xcorr.correlation.spec import Spec, check_xcorr
from xcorr.planning import Terms, profile
from xcorr.planning.engine import ENGINE

pytestmark = pytest.mark.usefixtures("fresh_planner")


def unfolded(x: torch.Tensor, z: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The correlation of validated inputs as one matrix product of the search's patches."""
    B, C = spec.x_shape[:2]
    Bz, Cz, h, w = spec.z_shape
    Ho, Wo = spec.out_size
    patches = F.unfold(x, (h, w), dilation=spec.dilation, padding=spec.padding, stride=spec.stride)
    patches = patches.reshape(Bz, B // Bz, C, h * w, Ho * Wo)
    taps = z.reshape(Bz, Cz // C, C, h * w)
    if spec.mode == "depthwise":
        out = torch.einsum("tkcpl,tcp->tkcl", patches, taps[:, 0])
    else:
        out = torch.einsum("tkcpl,tjcp->tkjl", patches, taps)
    return out.reshape(B, -1, Ho, Wo)


def toy_terms(spec: Spec) -> Terms:
    h, w = spec.z_shape[-2:]
    Ho, Wo = spec.out_size
    macs = spec.batch * spec.channels * spec.out_channels * Ho * Wo * h * w
    return Terms({"toy_call": 1.0, "toy_mac": float(macs)}, "toy_backward")


TOY = Backend(
    "toy",
    run=unfolded,
    prepare=lambda z, spec: lambda x: unfolded(x, z, spec.with_batch(x.shape[0])),
    bind=lambda spec, grad: lambda x, z: unfolded(x, z, spec),
    terms=toy_terms,
    constants={"AVX2": {"toy_call": 1e9, "toy_mac": 1.0, "toy_backward": 2.0}},
)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv(profile.PROFILE_ENV, str(tmp_path / "profile.json"))
    CORRELATION.register(TOY)
    yield TOY
    CORRELATION.unregister("toy")
    ENGINE.reset_constants()


def problem(mode="naive"):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 13, 12, generator=gen, dtype=torch.float64)
    z = torch.randn(2, 6 if mode == "upchannel" else 3, 4, 3, generator=gen, dtype=torch.float64)
    return x, z


@pytest.mark.parametrize("mode", ["naive", "depthwise", "upchannel"])
def test_it_is_validated_and_runs_every_path(toy, mode):
    x, z = problem(mode)
    x.requires_grad_(True)
    geometry = {"padding": (1, 2), "stride": (2, 1), "dilation": (1, 2)}
    out = xcorr.xcorr(x, z, mode, method="toy", **geometry)
    assert_close_rel(out, xcorr_reference(x, z, mode, geometry["padding"], geometry["stride"], geometry["dilation"]))
    assert_close_rel(xcorr.plan(z, x.shape, mode, method="toy", **geometry)(x), out)
    with pytest.raises(ValueError, match="'toy'"):  # the choices the message lists include it
        xcorr.xcorr(x, z, mode, method="nope")
    assert torch.autograd.gradcheck(lambda a: xcorr.xcorr(a, z, mode, method="toy"), (x,), fast_mode=True)


def test_it_is_planned_by_its_own_terms_and_constants(toy):
    x, z = problem()
    spec = check_xcorr(x, z, "naive", 0, 1, 1)
    assert "toy" in CORRELATION.candidates(spec)
    assert "toy" in ENGINE.estimate(spec) and xcorr.choose_method(x, z) != "toy"  # its call costs 1 s
    cheap = ENGINE.constants(CORRELATION, "cpu").replace(toy_call=0.0, toy_mac=1e-9)
    ENGINE.set_constants("correlation", "cpu", cheap)
    assert xcorr.choose_method(x, z) == "toy"


def test_it_is_measured(toy):
    x, z = problem()
    measured = xcorr.choose_method(x, z, measure=True)
    assert "toy" in measured.timings and measured.timings["toy"] > 0


def test_it_is_fitted_and_saved(toy):
    truth = ENGINE.constants(CORRELATION, "cpu").replace(toy_call=5000.0, toy_mac=0.5, toy_backward=1.5)
    rows = []
    for mode, x_shape, z_shape in costmodel.random_problems(12, seed=4):
        row = {"mode": mode, "x": x_shape, "z": z_shape}
        spec = costmodel._spec(row)
        row["fwd"] = {m: ENGINE.estimate(spec, False, truth)[m] for m in CORRELATION.candidates(spec)}
        row["both"] = {m: ENGINE.estimate(spec, True, truth)[m] for m in CORRELATION.candidates(spec)}
        rows.append(row)
    fitted = costmodel.fit(rows)
    assert fitted["toy_mac"] == pytest.approx(0.5, rel=1e-6)
    assert fitted["toy_backward"] == pytest.approx(1.5, rel=1e-6)
    path = profile.save_constants("cpu", {"correlation": dict(fitted)})
    assert json.loads(path.read_text())["entries"][0]["constants"]["correlation"]["toy_mac"] == fitted["toy_mac"]
    ENGINE.reset_constants()
    assert ENGINE.constants(CORRELATION, "cpu")["toy_mac"] == fitted["toy_mac"]


def test_its_measured_winners_are_saved_and_loaded(toy, tmp_path):
    x, z = problem()
    spec = check_xcorr(x, z, "naive", 0, 1, 1)
    ENGINE.record(CORRELATION.key(spec, False), "toy")
    path = tmp_path / "tuning.json"
    xcorr.save_tuning(path)
    xcorr.clear_cache()
    assert xcorr.load_tuning(path) == 1 and xcorr.choose_method(x, z) == "toy"
