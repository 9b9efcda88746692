"""Cost volumes: local_correlation, stereo_correlation and the engine under them (volumes.correlate)."""

import io
import multiprocessing
import warnings
from dataclasses import replace

import pytest
import torch
from helpers import TOL, assert_close_rel
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import local_correlation_reference, stereo_reference, volume_reference

import xcorr
from xcorr.planning.engine import ENGINE
from xcorr.volumes.api import correlate
from xcorr.volumes.backends import VOLUME_BACKENDS, fused
from xcorr.volumes.family import VOLUMES, select_volume
from xcorr.volumes.spec import VolumeSpec, check_local_correlation, check_stereo_correlation

# The compiled loops where numba is installed (the "fast" extra; the dev extra has it).
BACKENDS = [name for name in VOLUME_BACKENDS if name != "fused" or fused.available()]
needs_numba = pytest.mark.skipif(not fused.available(), reason="needs numba (the 'fast' extra)")
METHODS = ["auto", *BACKENDS]


def pair(B, C, H, W, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    f2 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    return f1.to(device, dtype), f2.to(device, dtype)


def local(f1, f2, method, max_displacement, **kw):
    """local_correlation with ``method`` forced (``"auto"``: the public function itself)."""
    if method == "auto":
        return xcorr.local_correlation(f1, f2, max_displacement, **kw)
    args = {"displacement_stride": 1, "stride": 1, "kernel_size": 1, "normalize": "none", "layout": "flat", **kw}
    spec = check_local_correlation(f1, f2, max_displacement, *args.values())
    out = correlate(f1, f2, spec, method).squeeze(1)
    P = spec.dy[2]
    return out.unflatten(1, (P, P)) if args["layout"] == "grid" else out


def stereo(left, right, method, max_disparity, groups=None, normalize="mean"):
    if method == "auto":
        return xcorr.stereo_correlation(left, right, max_disparity, groups=groups, normalize=normalize)
    spec = check_stereo_correlation(left, right, max_disparity, groups, normalize)
    out = correlate(left, right, spec, method)
    return out if groups is not None else out.squeeze(1)


# (B, C, H, W, max_displacement, displacement_stride, stride, kernel_size, normalize, layout)
LOCAL = [
    (2, 3, 9, 11, 4, 1, 1, 1, "none", "flat"),
    (1, 4, 12, 10, 4, 2, 1, 1, "mean", "grid"),  # FlowNetC's displacement stride
    (3, 2, 11, 13, 3, 2, 2, 3, "mean", "flat"),
    (2, 5, 8, 7, 2, 1, 3, 2, "sqrt", "grid"),  # even kernel, stride 3
    (1, 2, 5, 6, 7, 3, 1, 1, "none", "flat"),  # window larger than the map
    (2, 1, 7, 9, 0, 1, 1, 3, "mean", "flat"),  # one displacement
    (1, 3, 13, 6, 5, 2, 3, 1, "none", "flat"),  # displacement stride 2 with output stride 3
]

# (B, C, H, W, max_disparity, groups, normalize)
STEREO = [
    (2, 6, 5, 13, 5, None, "mean"),
    (1, 6, 4, 9, 4, 3, "mean"),
    (3, 4, 3, 7, 9, 2, "none"),  # more disparities than columns
    (1, 8, 6, 11, 1, 8, "sqrt"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", LOCAL)
@pytest.mark.parametrize("method", METHODS)
def test_local_correlation_matches_reference(method, geometry, dtype, device):
    B, C, H, W, d, ds, s, k, normalize, layout = geometry
    f1, f2 = pair(B, C, H, W, dtype, device=device)
    kw = dict(displacement_stride=ds, stride=s, kernel_size=k, normalize=normalize, layout=layout)
    out = local(f1, f2, method, d, **kw)
    assert out.dtype == dtype and out.device == f1.device
    assert_close_rel(out, local_correlation_reference(f1.cpu(), f2.cpu(), d, ds, s, k, normalize, layout), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", STEREO)
@pytest.mark.parametrize("method", METHODS)
def test_stereo_correlation_matches_reference(method, geometry, dtype, device):
    B, C, H, W, D, groups, normalize = geometry
    left, right = pair(B, C, H, W, dtype, device=device)
    out = stereo(left, right, method, D, groups, normalize)
    assert out.dtype == dtype
    assert_close_rel(out, stereo_reference(left.cpu(), right.cpu(), D, groups, normalize), dtype)


def test_the_references_agree_with_the_definition_of_the_spec():
    f1, f2 = pair(2, 4, 9, 8)
    for d, ds, s, k, normalize in [(3, 1, 1, 1, "none"), (4, 2, 2, 3, "mean"), (2, 1, 3, 2, "sqrt")]:
        spec = check_local_correlation(f1, f2, d, ds, s, k, normalize, "flat")
        torch.testing.assert_close(
            volume_reference(f1, f2, spec)[:, 0], local_correlation_reference(f1, f2, d, ds, s, k, normalize)
        )
    for groups in (None, 2):
        spec = check_stereo_correlation(f1, f2, 5, groups, "mean")
        out = volume_reference(f1, f2, spec)
        torch.testing.assert_close(out if groups else out[:, 0], stereo_reference(f1, f2, 5, groups))


def general_spec(f1, **changes):
    """A spec beyond what the public functions build (the drop-ins build these): dilated kernels,
    origins, unequal strides, negative or unequal displacement steps."""
    B, C, H, W = f1.shape
    base = VolumeSpec(
        shape=(B, C, H, W),
        groups=1,
        kernel=(1, 1),
        kernel_dilation=(1, 1),
        origin=(0, 0),
        stride=(1, 1),
        out_size=(H, W),
        dy=(-2, 1, 5),
        dx=(-2, 1, 5),
        scale=1.0,
        dtype=f1.dtype,
        device=f1.device,
    )
    return replace(base, **changes)


GENERAL = [
    dict(kernel=(2, 3), kernel_dilation=(2, 1), origin=(-1, -2), out_size=(6, 7)),
    dict(stride=(2, 3), out_size=(4, 3), origin=(1, 0), dy=(-3, 3, 3), dx=(1, 2, 4)),
    dict(dy=(2, -1, 4), dx=(3, -2, 3), scale=0.5),
    dict(kernel=(3, 3), stride=(2, 2), origin=(-2, -2), out_size=(5, 5), dy=(-4, 2, 5), dx=(-4, 4, 3)),
    dict(origin=(-3, 4), out_size=(3, 2), dy=(0, 1, 1), dx=(-6, 3, 5), groups=2),
]


@pytest.mark.parametrize("changes", GENERAL)
@pytest.mark.parametrize("method", METHODS)
def test_correlate_matches_the_definition_for_any_spec(method, changes):
    f1, f2 = pair(2, 4, 9, 8)
    spec = general_spec(f1, **changes)
    out = correlate(f1, f2, spec, method)
    assert out.shape == spec.out_shape
    assert_close_rel(out, volume_reference(f1, f2, spec))


@pytest.mark.parametrize("kind", ["transposed", "sliced", "channels_last", "expanded"])
@pytest.mark.parametrize("method", METHODS)
def test_non_contiguous_inputs_are_read_and_left_unmodified(method, kind):
    f1, f2 = pair(3, 4, 10, 10)
    if kind == "transposed":
        f1, f2 = f1.transpose(2, 3), f2.transpose(2, 3)
    elif kind == "sliced":
        f1, f2 = torch.cat([f1, f1], 3)[..., ::2], torch.cat([f2, f2], 2)[:, :, 1::2]
    elif kind == "channels_last":
        f1, f2 = f1.to(memory_format=torch.channels_last), f2.to(memory_format=torch.channels_last)
    else:
        f1 = f1[:1].expand(3, -1, -1, -1)
    assert not f1.is_contiguous()
    before = f1.clone(), f2.clone()
    out = local(f1, f2, method, 3, displacement_stride=1, kernel_size=3)
    assert_close_rel(out, local_correlation_reference(f1, f2, 3, 1, 1, 3))
    out = stereo(f1, f2, method, 4, groups=2)
    assert_close_rel(out, stereo_reference(f1, f2, 4, 2))
    assert torch.equal(f1, before[0]) and torch.equal(f2, before[1])


@pytest.mark.parametrize("method", METHODS)
def test_batch_zero_keeps_shapes_and_gradients(method):
    f1, f2 = pair(0, 3, 7, 6)
    f1.requires_grad_(True)
    f2.requires_grad_(True)
    out = local(f1, f2, method, 2, stride=2)
    assert out.shape == (0, 25, 4, 3)
    vol = stereo(f1, f2, method, 3, groups=3)
    assert vol.shape == (0, 3, 3, 7, 6)
    (out.sum() + vol.sum()).backward()
    assert f1.grad.shape == f1.shape and f2.grad.shape == f2.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_is_accumulated_in_float32(method, dtype):
    f1, f2 = pair(2, 8, 9, 10, dtype)
    out = local(f1, f2, method, 3, normalize="mean")
    assert out.dtype == dtype
    assert_close_rel(out, local_correlation_reference(f1, f2, 3, normalize="mean"), dtype)
    vol = stereo(f1, f2, method, 4)
    assert vol.dtype == dtype
    assert_close_rel(vol, stereo_reference(f1, f2, 4), dtype)


@pytest.mark.parametrize("method", METHODS)
def test_float16_features_of_magnitude_10_at_a_flownetc_size_stay_finite(method):
    # 256 channels of products of magnitude 100 reach 25 600: fine in float16, if summed in float32.
    f1 = torch.full((1, 256, 12, 16), 10.0, dtype=torch.float16)
    f2 = -f1
    out = local(f1, f2, method, 6, displacement_stride=2)
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    assert_close_rel(out, local_correlation_reference(f1, f2, 6, 2), torch.float16, tol=1e-3)


@pytest.mark.parametrize("method", BACKENDS)
def test_gradcheck_local_correlation(method):
    f1, f2 = pair(2, 3, 7, 6)
    f1.requires_grad_(True)
    f2.requires_grad_(True)

    def f(a, b):
        return local(a, b, method, 3, displacement_stride=2, stride=2, kernel_size=3, normalize="mean")

    assert torch.autograd.gradcheck(f, (f1, f2), fast_mode=True)


@pytest.mark.parametrize("changes", GENERAL[1:3])
@pytest.mark.parametrize("method", BACKENDS)
def test_gradcheck_general_specs_and_stereo_groups(method, changes):
    f1, f2 = pair(2, 4, 7, 6)
    f1.requires_grad_(True)
    f2.requires_grad_(True)
    spec = general_spec(f1, **changes)
    assert torch.autograd.gradcheck(lambda a, b: correlate(a, b, spec, method), (f1, f2), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a, b: stereo(a, b, method, 3, groups=2), (f1, f2), fast_mode=True)


@pytest.mark.parametrize("method", BACKENDS)
def test_gradients_match_the_reference_in_float32(method):
    f1, f2 = pair(2, 16, 12, 20, torch.float32)
    weight = torch.randn(2, 81, 12, 20, generator=torch.Generator().manual_seed(1))
    a, b = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    (local(a, b, method, 8, displacement_stride=2, normalize="mean") * weight).sum().backward()
    # Autograd through the definition's loop over displacements gives the reference gradients.
    ra, rb = f1.double().requires_grad_(True), f2.double().requires_grad_(True)
    spec = check_local_correlation(f1, f2, 8, 2, 1, 1, "mean", "flat")
    (volume_reference(ra, rb, spec)[:, 0] * weight.double()).sum().backward()
    assert_close_rel(a.grad, ra.grad, torch.float32)
    assert_close_rel(b.grad, rb.grad, torch.float32)


def test_flat_and_grid_layouts_hold_the_same_values_dy_major():
    f1, f2 = pair(1, 2, 6, 7)
    flat = xcorr.local_correlation(f1, f2, 2)
    grid = xcorr.local_correlation(f1, f2, 2, layout="grid")
    assert grid.shape == (1, 5, 5, 6, 7)
    torch.testing.assert_close(flat, grid.reshape(1, 25, 6, 7))
    # Channel i*P + j holds displacement (dy, dx) = (i - R, j - R): here (1, -2) at (2, 3).
    assert torch.allclose(flat[0, 3 * 5 + 0, 2, 3], (f1[0, :, 2, 3] * f2[0, :, 3, 1]).sum())


ERRORS = [
    (
        lambda f: xcorr.local_correlation(f, f[:, :, :5], 2),
        ValueError,
        r"f1 and f2 must have the same shape.*\(2, 4, 6, 7\).*\(2, 4, 5, 7\)",
    ),
    (lambda f: xcorr.local_correlation(f, f.double(), 2), TypeError, r"f1 and f2 must have the same dtype"),
    (
        lambda f: xcorr.local_correlation(f[0], f[0], 2),
        ValueError,
        r"f1 must be 4-D \(B, C, H, W\), got shape \(4, 6, 7\)",
    ),
    (lambda f: xcorr.local_correlation(f.numpy(), f, 2), TypeError, r"f1 must be a torch.Tensor"),
    (lambda f: xcorr.local_correlation(f.int(), f.int(), 2), TypeError, r"f1 must have a floating-point dtype"),
    (
        lambda f: xcorr.local_correlation(f[:, :0], f[:, :0], 2),
        ValueError,
        r"^f1 and f2 must have at least one channel, got shape \(2, 0, 6, 7\)$",
    ),
    (
        lambda f: xcorr.local_correlation(f[:, :, :0], f[:, :, :0], 2),
        ValueError,
        r"^f1 and f2 must have at least one row and column, got shape \(2, 4, 0, 7\)$",
    ),
    (
        lambda f: xcorr.stereo_correlation(f[:, :0], f[:, :0], 4),
        ValueError,
        r"^left and right must have at least one channel, got shape \(2, 0, 6, 7\)$",
    ),
    (lambda f: xcorr.local_correlation(f, f, -1), ValueError, r"max_displacement must be a non-negative int, got -1"),
    (
        lambda f: xcorr.local_correlation(f, f, 2.0),
        TypeError,
        r"max_displacement must be a non-negative int, got float 2.0",
    ),
    (
        lambda f: xcorr.local_correlation(f, f, True),
        TypeError,
        r"max_displacement must be a non-negative int, got bool",
    ),
    (
        lambda f: xcorr.local_correlation(f, f, 2, displacement_stride=0),
        ValueError,
        r"displacement_stride must be a positive int, got 0",
    ),
    (lambda f: xcorr.local_correlation(f, f, 2, stride=0), ValueError, r"stride must be a positive int, got 0"),
    (lambda f: xcorr.local_correlation(f, f, 2, stride=(1, 1)), TypeError, r"stride must be a positive int, got tuple"),
    (
        lambda f: xcorr.local_correlation(f, f, 2, kernel_size=0),
        ValueError,
        r"kernel_size must be a positive int, got 0",
    ),
    (
        lambda f: xcorr.local_correlation(f, f, 2, normalize="l2"),
        ValueError,
        r"unknown normalize 'l2'; valid values are 'none', 'mean', 'sqrt'",
    ),
    (
        lambda f: xcorr.local_correlation(f, f, 2, layout="nhwc"),
        ValueError,
        r"unknown layout 'nhwc'; valid values are 'flat', 'grid'",
    ),
    (lambda f: xcorr.local_correlation(f, f, 2, layout=None), TypeError, r"layout must be a string"),
    (lambda f: xcorr.stereo_correlation(f, f[:1], 4), ValueError, r"left and right must have the same shape"),
    (lambda f: xcorr.stereo_correlation(f, f, 0), ValueError, r"max_disparity must be a positive int, got 0"),
    (lambda f: xcorr.stereo_correlation(f, f, 4.5), TypeError, r"max_disparity must be a positive int, got float 4.5"),
    (
        lambda f: xcorr.stereo_correlation(f, f, 4, groups=3),
        ValueError,
        r"groups must divide the channels.*groups=3 for C=4",
    ),
    (lambda f: xcorr.stereo_correlation(f, f, 4, groups=0), ValueError, r"groups must be a positive int, got 0"),
    (lambda f: xcorr.stereo_correlation(f, f, 4, normalize="max"), ValueError, r"unknown normalize 'max'"),
    (
        lambda f: correlate(f, f, check_local_correlation(f, f, 1, 1, 1, 1, "none", "flat"), "loop"),
        ValueError,
        r"unknown method 'loop'; valid values are 'auto', ",
    ),
    (
        lambda f: correlate(f, f, (2, 4, 6, 7)),
        TypeError,
        r"^spec must be a VolumeSpec, got tuple$",
    ),
    (
        lambda f: correlate(f[:, :, 1:], f[:, :, 1:], check_local_correlation(f, f, 1, 1, 1, 1, "none", "flat")),
        ValueError,
        r"^f1 and f2 must have the spec's shape, dtype and device \(2, 4, 6, 7\), torch\.float32, cpu; got \(2, 4, 5, 7\), torch\.float32, cpu$",
    ),
    (
        lambda f: correlate(f.double(), f.double(), check_local_correlation(f, f, 1, 1, 1, 1, "none", "flat")),
        ValueError,
        r"must have the spec's shape, dtype and device .*; got \(2, 4, 6, 7\), torch\.float64, cpu$",
    ),
    (lambda f: xcorr.nn.LocalCorrelation(-2), ValueError, r"max_displacement must be a non-negative int, got -2"),
    (lambda f: xcorr.nn.LocalCorrelation(4, layout="nchw"), ValueError, r"unknown layout 'nchw'"),
    (lambda f: xcorr.nn.StereoCorrelation(0), ValueError, r"max_disparity must be a positive int, got 0"),
    (lambda f: xcorr.nn.StereoCorrelation(8, groups=-1), ValueError, r"groups must be a positive int, got -1"),
]


@pytest.mark.parametrize("call, error, message", ERRORS)
def test_bad_input_raises_naming_the_argument(call, error, message):
    f = torch.randn(2, 4, 6, 7)
    with pytest.raises(error, match=message):
        call(f)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2),
    C=st.integers(1, 4),
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    d=st.integers(0, 6),
    ds=st.integers(1, 3),
    s=st.integers(1, 3),
    k=st.integers(1, 4),
    method=st.sampled_from(BACKENDS),
)
def test_random_local_geometries_match_the_reference(B, C, H, W, d, ds, s, k, method):
    f1, f2 = pair(B, C, H, W)
    out = local(f1, f2, method, d, displacement_stride=ds, stride=s, kernel_size=k)
    assert_close_rel(out, local_correlation_reference(f1, f2, d, ds, s, k))


@settings(max_examples=25, deadline=None)
@given(
    H=st.integers(1, 8),
    W=st.integers(1, 8),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    origin=st.tuples(st.integers(-4, 3), st.integers(-4, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    out_size=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    dy=st.tuples(st.integers(-5, 5), st.integers(-3, 3).filter(bool), st.integers(1, 4)),
    dx=st.tuples(st.integers(-5, 5), st.integers(-3, 3).filter(bool), st.integers(1, 4)),
    groups=st.sampled_from([1, 2]),
    method=st.sampled_from(BACKENDS),
)
def test_random_specs_match_the_definition(H, W, kernel, dilation, origin, stride, out_size, dy, dx, groups, method):
    f1, f2 = pair(1, 4, H, W)
    spec = general_spec(
        f1,
        kernel=kernel,
        kernel_dilation=dilation,
        origin=origin,
        stride=stride,
        out_size=out_size,
        dy=dy,
        dx=dx,
        groups=groups,
        scale=0.25,
    )
    assert_close_rel(correlate(f1, f2, spec, method), volume_reference(f1, f2, spec))


# Planning.


def test_repeated_displacements_leave_the_banded_method_out():
    f1, f2 = pair(1, 2, 5, 6)
    spec = general_spec(f1, dx=(1, 0, 3))
    assert "banded" not in VOLUMES.options(spec) and "shifted" in VOLUMES.options(spec)
    assert_close_rel(correlate(f1, f2, spec), volume_reference(f1, f2, spec))
    for method in VOLUMES.options(spec):
        assert_close_rel(correlate(f1, f2, spec, method), volume_reference(f1, f2, spec))


def test_auto_is_one_of_the_candidates_and_is_remembered():
    f1, f2 = pair(2, 8, 16, 16, torch.float32)
    spec = check_local_correlation(f1, f2, 4, 1, 1, 1, "mean", "flat")
    method = select_volume(spec, grad=False)
    assert method in VOLUMES.options(spec)
    costs = ENGINE.estimate(spec, grad=False)
    assert method == min(VOLUMES.options(spec), key=costs.get)


def test_autotune_measures_cost_volumes_and_clear_cache_forgets_them():
    f1, f2 = pair(1, 4, 8, 8, torch.float32)
    spec = check_local_correlation(f1, f2, 2, 1, 1, 1, "none", "flat")
    key = VOLUMES.key(spec, False)
    try:
        xcorr.set_autotune(True)
        xcorr.local_correlation(f1, f2, 2)
        assert ENGINE.measured_winners()[key] in BACKENDS
        xcorr.clear_cache()
        assert key not in ENGINE.measured_winners()
    finally:
        xcorr.set_autotune(None)


# Tracing: export and compile.

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class Volumes(torch.nn.Module):
    def forward(self, f1, f2):
        flow = xcorr.local_correlation(f1, f2, 3, displacement_stride=2, kernel_size=3, normalize="mean")
        gwc = xcorr.stereo_correlation(f1, f2, 4, groups=2)
        return flow, gwc


@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_export_with_a_dynamic_batch(dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    f1, f2 = pair(2, 4, 9, 10, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch")
            model = torch.onnx.export(
                Volumes(), (f1, f2), dynamo=True, verbose=False, dynamic_shapes=({0: batch}, {0: batch})
            ).model_proto
        else:
            buffer = io.BytesIO()
            axes = {"f1": {0: "batch"}, "f2": {0: "batch"}}
            torch.onnx.export(Volumes(), (f1, f2), buffer, dynamo=False, input_names=["f1", "f2"], dynamic_axes=axes)
            model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for B in (5, 1):
        a, b = pair(B, 4, 9, 10, torch.float32, seed=B)
        got = session.run(None, dict(zip(names, (a.numpy(), b.numpy()))))
        flow = local_correlation_reference(a, b, 3, 2, 1, 3, "mean")
        gwc = stereo_reference(a, b, 4, 2)
        for g, want in zip(got, (flow, gwc)):
            assert_close_rel(torch.from_numpy(g), want, torch.float32, tol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_compile_fullgraph_forward_and_backward(method):
    torch._dynamo.reset()

    def f(a, b):
        flow = local(a, b, method, 2, kernel_size=3, stride=2, normalize="mean")
        return flow.square().sum() + stereo(a, b, method, 3, groups=2).sum()

    f1, f2 = pair(2, 4, 7, 9)
    if method == "fused":  # compiled loops of its own: it says so, and "auto" leaves it out
        with pytest.raises(Exception, match="method='fused' runs eagerly only"):
            torch.compile(f, fullgraph=True, backend="aot_eager")(f1, f2)
        torch._dynamo.reset()
        return
    ac, bc = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    ae, be = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    torch.compile(f, fullgraph=True, backend="aot_eager")(ac, bc).backward()
    f(ae, be).backward()
    assert_close_rel(ac.grad, ae.grad)
    assert_close_rel(bc.grad, be.grad)
    torch._dynamo.reset()


def test_tolerances_cover_the_dtypes():
    assert set(TOL) >= {torch.float16, torch.bfloat16, torch.float32, torch.float64}


@pytest.mark.usefixtures("fresh_planner")
def test_repeated_calls_are_validated_and_planned_once_per_signature(monkeypatch):
    import xcorr.volumes.api as api

    f1, f2 = pair(2, 8, 9, 11, torch.float32)
    first = xcorr.local_correlation(f1, f2, 2, normalize="mean")
    stereo = xcorr.stereo_correlation(f1, f2, 3, groups=2)
    checks, decisions = [], []
    real_local, real_stereo, real_decide = api.check_local_correlation, api.check_stereo_correlation, ENGINE.decide
    monkeypatch.setattr(api, "check_local_correlation", lambda *a: checks.append("local") or real_local(*a))
    monkeypatch.setattr(api, "check_stereo_correlation", lambda *a: checks.append("stereo") or real_stereo(*a))
    monkeypatch.setattr(ENGINE, "decide", lambda *a, **k: decisions.append(a) or real_decide(*a, **k))
    for _ in range(3):  # the same signatures: neither validated nor planned again (each call may
        # still try another method on its own calls: equal within float32 rounding)
        assert_close_rel(xcorr.local_correlation(f1.clone(), f2.clone(), 2, normalize="mean"), first)
        assert_close_rel(xcorr.stereo_correlation(f1, f2, 3, groups=2), stereo)
    assert checks == [] and decisions == []
    for _ in range(2):  # a new setting and a new dtype: each validated once
        xcorr.local_correlation(f1, f2, 1, normalize="mean")
        xcorr.local_correlation(f1.double(), f2.double(), 2, normalize="mean")
    assert checks == ["local", "local"] and len(decisions) == 2
    with pytest.raises(ValueError, match="max_displacement"):  # bad settings still say why, every time
        xcorr.local_correlation(f1, f2, -1)


# The compiled loops (method="fused").


@needs_numba
def test_fused_keeps_the_callers_thread_count_and_its_result_does_not_depend_on_it():
    f1, f2 = pair(2, 12, 9, 13, torch.float32)
    spec = check_local_correlation(f1, f2, 3, 1, 1, 1, "mean", "flat")
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(correlate(f1, f2, spec, "fused"))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def _fused_sum(f1, f2, spec, results):
    results.put(float(correlate(f1, f2, spec, "fused").sum()))


@needs_numba
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_fused_runs_in_a_forked_child_after_its_parent():
    f1, f2 = pair(2, 8, 9, 10)
    spec = check_local_correlation(f1, f2, 2, 1, 1, 1, "none", "flat")
    expected = float(correlate(f1, f2, spec, "fused").sum())
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_fused_sum, args=(f1, f2, spec, results))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert results.get(timeout=5) == expected


def test_without_numba_fused_is_no_option_and_asking_for_it_says_what_to_install(monkeypatch):
    f1, f2 = pair(1, 4, 6, 7)
    spec = check_local_correlation(f1, f2, 1, 1, 1, 1, "none", "flat")
    monkeypatch.setattr(fused, "available", lambda: False)
    assert "fused" not in VOLUMES.options(spec) and "fused" not in ENGINE.estimate(spec)
    with pytest.raises(ModuleNotFoundError, match=r"method='fused' needs numba: pip install 'xcorr\[fast\]'"):
        fused._kernels.__wrapped__()


@needs_numba
def test_fused_is_left_out_while_tracing_and_refuses_to_be_traced(monkeypatch):
    f1, f2 = pair(1, 4, 6, 7)
    spec = check_local_correlation(f1, f2, 1, 1, 1, 1, "none", "flat")
    assert "fused" in VOLUMES.options(spec)
    monkeypatch.setattr(fused, "tracing", lambda: True)
    assert "fused" not in VOLUMES.options(spec)
    with pytest.raises(ValueError, match="method='fused' runs eagerly only"):
        fused.cost_volume(f1, f2, spec)
