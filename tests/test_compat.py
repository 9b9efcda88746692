"""The drop-ins of xcorr.compat against float64 loops written from the packages' own sources.

``sampler_reference`` follows spatial-correlation-sampler's CPU code (``correlation.cpp``:
``correlate_patch`` and ``correlation_cpp_forward``), ``flownet2_reference`` flownet2-pytorch's
CUDA kernel (``correlation_forward`` in ``correlation_cuda_kernel.cu`` and the output size of
``correlation_cuda.cc``). Where ``spatial_correlation_sampler`` is importable the drop-in is also
compared with the package itself.
"""

import importlib.util
import math

import pytest
import torch
from helpers import TOL, assert_close_rel
from hypothesis import given, settings
from hypothesis import strategies as st

from xcorr.compat import flownet2, spatial_correlation_sampler
from xcorr.compat.flownet2 import Correlation
from xcorr.compat.spatial_correlation_sampler import SpatialCorrelationSampler, spatial_correlation_sample


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def sampler_positions(size, kernel_size, stride, padding, dilation):
    """The package's output size on one axis: C++ integer division, which rounds toward zero."""
    return math.trunc((size + 2 * padding - ((kernel_size - 1) * dilation + 1)) / stride) + 1


def sampler_reference(in1, in2, kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1):
    """spatial-correlation-sampler's CPU forward in float64, one output and one tap at a time."""
    (kH, kW), (pH, pW), (dH, dW) = _pair(kernel_size), _pair(patch_size), _pair(stride)
    (padH, padW), (dilH, dilW), (dpH, dpW) = _pair(padding), _pair(dilation), _pair(dilation_patch)
    in1, in2 = in1.double(), in2.double()
    B, C, iH, iW = in1.shape
    oH = sampler_positions(iH, kH, dH, padH, dilH)
    oW = sampler_positions(iW, kW, dW, padW, dilW)
    out = torch.zeros(B, pH, pW, oH, oW, dtype=torch.float64)
    for ph in range(pH):
        for pw in range(pW):
            shift_u, shift_v = (ph - (pH - 1) // 2) * dpH, (pw - (pW - 1) // 2) * dpW
            for h in range(oH):
                for w in range(oW):
                    u, v = -padH + h * dH, -padW + w * dW
                    for i in range(kH):
                        i1 = u + i * dilH
                        i2 = i1 + shift_u
                        if not (0 <= i1 < iH and 0 <= i2 < iH):
                            continue
                        for j in range(kW):
                            j1 = v + j * dilW
                            j2 = j1 + shift_v
                            if 0 <= j1 < iW and 0 <= j2 < iW:
                                out[:, ph, pw, h, w] += (in1[:, :, i1, j1] * in2[:, :, i2, j2]).sum(1)
    return out


def flownet2_reference(in1, in2, pad_size, kernel_size, max_displacement, stride1, stride2):
    """flownet2-pytorch's CUDA forward in float64 (zeros where its kernel would read outside the padding)."""
    in1 = torch.nn.functional.pad(in1.double(), [pad_size] * 4)
    in2 = torch.nn.functional.pad(in2.double(), [pad_size] * 4)
    B, C, pH, pW = in1.shape
    kr = (kernel_size - 1) // 2
    border = kr + max_displacement
    R = max_displacement // stride2
    P = 2 * R + 1
    oH = math.ceil((pH - 2 * border) / stride1)
    oW = math.ceil((pW - 2 * border) / stride1)
    nelems = kernel_size * kernel_size * C

    def at(t, y, x):
        inside = 0 <= y < pH and 0 <= x < pW
        return t[:, :, y, x] if inside else torch.zeros(B, C, dtype=torch.float64)

    out = torch.zeros(B, P * P, oH, oW, dtype=torch.float64)
    for oy in range(oH):
        for ox in range(oW):
            y1, x1 = oy * stride1 + max_displacement, ox * stride1 + max_displacement
            for tj in range(-R, R + 1):
                for ti in range(-R, R + 1):
                    y2, x2 = y1 + tj * stride2, x1 + ti * stride2
                    acc = torch.zeros(B, dtype=torch.float64)
                    for j in range(-kr, kr + 1):
                        for i in range(-kr, kr + 1):
                            acc += (at(in1, y1 + j, x1 + i) * at(in2, y2 + j, x2 + i)).sum(1)
                    out[:, (tj + R) * P + (ti + R), oy, ox] = acc / nelems
    return out


def features(B, C, H, W, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g).to(dtype), torch.randn(B, C, H, W, generator=g).to(dtype)


# (B, C, H, W, kernel_size, patch_size, stride, padding, dilation, dilation_patch): odd sizes,
# even and rectangular patches, kernels larger than one tap, dilations, strides, padding, and
# kernels overhanging the padded input by less than a stride (one row) and by a stride (no rows).
SAMPLER_GEOMETRIES = [
    (1, 3, 7, 9, 1, 5, 1, 0, 1, 1),
    (3, 2, 8, 7, 1, 4, 1, 0, 1, 1),
    (2, 4, 9, 8, 1, 4, 1, 0, 1, 2),
    (1, 3, 10, 9, 3, 3, 1, 1, 1, 1),
    (2, 2, 9, 11, 2, (3, 6), 1, 0, 1, (2, 1)),
    (1, 3, 11, 10, 3, 5, 2, 2, 2, 1),
    (2, 2, 12, 9, (2, 3), (5, 2), (2, 3), (1, 2), (1, 2), (1, 3)),
    (5, 1, 6, 6, 1, 7, 3, 0, 1, 2),
    (1, 5, 5, 8, 4, 2, 1, 3, 1, 1),
    (2, 2, 6, 11, 4, 3, 2, 0, 2, 1),
    (2, 3, 5, 9, 4, 3, 2, 0, 2, (1, 2)),
]


@pytest.mark.parametrize("geometry", SAMPLER_GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sampler_matches_its_definition(geometry, dtype):
    B, C, H, W, *args = geometry
    in1, in2 = features(B, C, H, W, dtype)
    out = spatial_correlation_sample(in1, in2, *args)
    assert out.dtype == dtype
    assert_close_rel(out, sampler_reference(in1, in2, *args))


def test_even_patch_with_dilated_offsets_uses_the_cpu_offsets():
    # patch 4, dilation_patch 2: offsets (p - 1) * 2 = -2, 0, 2, 4 (the package's CUDA kernel: -3, -1, 1, 3).
    in1 = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    in1[0, 0, 4, 4] = 1.0
    in2 = torch.zeros_like(in1)
    for offset, value in zip((-2, 0, 2, 4), (1.0, 2.0, 3.0, 4.0)):
        in2[0, 0, 4 + offset, 4] = value
    out = spatial_correlation_sample(in1, in2, patch_size=4, dilation_patch=2)
    assert out[0, :, 1, 4, 4].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_kernel_is_anchored_at_its_top_left():
    in1 = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    in1[0, 0, 2, 3] = 1.0
    out = spatial_correlation_sample(in1, in1, kernel_size=3)
    assert out.shape == (1, 1, 1, 3, 3)
    hits = (out[0, 0, 0] != 0).nonzero().tolist()
    # The tap (2, 3) lies in the 3x3 windows whose top-left corner is within 2 rows/columns above and left.
    assert hits == [[r, c] for r in range(0, 3) for c in range(1, 3)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sampler_non_contiguous_inputs(dtype):
    in1, in2 = features(3, 5, 9, 8, dtype)
    in1, in2 = in1.transpose(2, 3), in2.permute(0, 1, 3, 2)  # (3, 5, 8, 9), not contiguous
    args = (1, 3, 1, 1, 1, 2)
    assert_close_rel(spatial_correlation_sample(in1, in2, *args), sampler_reference(in1, in2, *args))


def test_sampler_empty_batch_keeps_the_shape_and_the_graph():
    in1, in2 = (t.requires_grad_() for t in features(0, 3, 7, 6))
    out = spatial_correlation_sample(in1, in2, 3, (4, 5), 2, 1)
    assert out.shape == (0, 4, 5, 4, 3)
    out.sum().backward()
    assert in1.grad.shape == in1.shape and in2.grad.shape == in2.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sampler_half_precision(dtype):
    in1, in2 = features(2, 8, 7, 9, dtype)
    out = spatial_correlation_sample(in1, in2, 1, 5, 1, 0, 1, 2)
    assert out.dtype == dtype
    assert_close_rel(out, sampler_reference(in1, in2, 1, 5, 1, 0, 1, 2))


def test_half_precision_accumulates_in_float32():
    # 256 channels of magnitude ~10: products of 100, sums of thousands to tens of thousands.
    g = torch.Generator().manual_seed(1)
    in1 = (10 * torch.randn(1, 256, 12, 16, generator=g)).half()
    in2 = (in1.float() + torch.randn(1, 256, 12, 16, generator=g)).half()
    out = spatial_correlation_sample(in1, in2, patch_size=5, dilation_patch=2)
    assert torch.isfinite(out).all()
    wanted = spatial_correlation_sample(in1.double(), in2.double(), patch_size=5, dilation_patch=2)
    assert_close_rel(out, wanted, tol=TOL[torch.float16])
    fn = Correlation(4, 1, 4, 1, 2)
    assert torch.isfinite(fn(in1, in2)).all()


@pytest.mark.parametrize(
    "args",
    [(1, 3, 1, 0, 1, 1), (2, (3, 4), (1, 2), 1, (2, 1), (1, 2)), (1, 4, 2, 1, 1, 2)],
)
def test_sampler_gradcheck(args):
    in1, in2 = (t.requires_grad_() for t in features(2, 2, 6, 5))
    assert torch.autograd.gradcheck(lambda a, b: spatial_correlation_sample(a, b, *args), (in1, in2), fast_mode=True)


def test_sampler_gradients_match_the_reference():
    in1, in2 = (t.requires_grad_() for t in features(2, 3, 7, 6, seed=3))
    args = (2, 4, 1, 1, 1, 2)
    weight = torch.randn(spatial_correlation_sample(in1, in2, *args).shape, dtype=torch.float64)
    ours = torch.autograd.grad((spatial_correlation_sample(in1, in2, *args) * weight).sum(), (in1, in2))
    wanted = torch.autograd.grad((sampler_reference(in1, in2, *args) * weight).sum(), (in1, in2))
    for a, b in zip(ours, wanted):
        assert_close_rel(a, b)


def test_inputs_are_not_modified():
    in1, in2 = features(2, 3, 6, 7, torch.float32)
    copies = in1.clone(), in2.clone()
    spatial_correlation_sample(in1, in2, 3, 4, 1, 1)
    Correlation(2, 3, 2, 1, 1)(in1, in2)
    assert torch.equal(in1, copies[0]) and torch.equal(in2, copies[1])


def test_sampler_module():
    module = SpatialCorrelationSampler(kernel_size=1, patch_size=(5, 3), dilation_patch=2)
    assert repr(module) == "SpatialCorrelationSampler(patch_size=(5, 3), dilation_patch=2)"
    assert repr(SpatialCorrelationSampler(stride=(1, 1))) == "SpatialCorrelationSampler()"
    assert module.patch_size == (5, 3) and module.dilation_patch == 2  # kept as given, like the package
    in1, in2 = features(2, 3, 7, 8)
    torch.testing.assert_close(module(in1, in2), spatial_correlation_sample(in1, in2, 1, (5, 3), 1, 0, 1, 2))


@given(
    B=st.integers(1, 2),
    C=st.integers(1, 3),
    H=st.integers(1, 7),
    W=st.integers(1, 7),
    kernel=st.integers(1, 3),
    patch=st.integers(1, 5),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    dilation_patch=st.integers(1, 3),
)
@settings(max_examples=30, deadline=None)
def test_sampler_any_geometry(B, C, H, W, kernel, patch, stride, padding, dilation, dilation_patch):
    in1, in2 = features(B, C, H, W)
    args = (kernel, patch, stride, padding, dilation, dilation_patch)
    if min(sampler_positions(n, kernel, stride, padding, dilation) for n in (H, W)) < 0:
        # Where the package fails to allocate its output.
        with pytest.raises(ValueError, match=r"the kernel must overhang the padded input by less than two strides"):
            spatial_correlation_sample(in1, in2, *args)
        return
    assert_close_rel(spatial_correlation_sample(in1, in2, *args), sampler_reference(in1, in2, *args))


def test_kernel_overhanging_the_padded_input():
    # 6 rows, kernel 4 with dilation 2 (span 7), stride 2: (6 - 7) / 2 rounds to 0, one row whose
    # window's last tap reads a zero below the input; 5 rows: (5 - 7) / 2 = -1, no rows.
    in1, in2 = (t.requires_grad_() for t in features(2, 3, 6, 9))
    out = spatial_correlation_sample(in1, in2, 4, 3, 2, 0, 2, 1)
    assert out.shape == (2, 3, 3, 1, 2)
    assert_close_rel(out, sampler_reference(in1, in2, 4, 3, 2, 0, 2, 1))
    empty = spatial_correlation_sample(in1[:, :, :5], in2[:, :, :5], 4, 3, 2, 0, 2, 1)
    assert empty.shape == (2, 3, 3, 0, 2)
    empty.sum().backward()
    assert torch.equal(in1.grad, torch.zeros_like(in1)) and torch.equal(in2.grad, torch.zeros_like(in2))


# (B, C, H, W, pad_size, kernel_size, max_displacement, stride1, stride2): FlowNetC's and
# PWC-Net's settings at small sizes, larger and even kernels, strides, a max_displacement that
# stride2 does not divide, and padding smaller than the displacement.
FLOWNET2_GEOMETRIES = [
    (2, 3, 9, 11, 6, 1, 6, 1, 2),
    (1, 4, 8, 9, 4, 1, 4, 1, 1),
    (3, 2, 10, 9, 3, 3, 2, 1, 1),
    (1, 3, 11, 12, 2, 2, 2, 1, 1),
    (2, 2, 13, 10, 3, 1, 3, 2, 1),
    (1, 3, 12, 13, 4, 3, 5, 2, 2),
    (2, 2, 9, 9, 1, 1, 3, 1, 1),
    (1, 2, 8, 10, 2, 4, 1, 3, 3),
]


@pytest.mark.parametrize("geometry", FLOWNET2_GEOMETRIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_flownet2_matches_its_definition(geometry, dtype):
    B, C, H, W, *args = geometry
    in1, in2 = features(B, C, H, W, dtype)
    out = Correlation(*args)(in1, in2)
    assert out.dtype == dtype
    assert_close_rel(out, flownet2_reference(in1, in2, *args))


def test_flownet2_output_size_and_order():
    # FlowNetC: pad 20, kernel 1, max displacement 20, stride2 2 -> 21 x 21 = 441 channels, same size.
    corr = Correlation(pad_size=20, kernel_size=1, max_displacement=20, stride1=1, stride2=2)
    in1 = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    in1[0, 0, 2, 3] = 1.0
    in2 = torch.zeros_like(in1)
    in2[0, 0, 4, 1] = 1.0  # 2 rows down, 2 columns left: (dy, dx) = (+1, -1) strides of 2
    out = corr(in1, in2)
    assert out.shape == (1, 441, 6, 8)
    assert (out != 0).nonzero().tolist() == [[0, (10 + 1) * 21 + (10 - 1), 2, 3]]
    assert out[0, 11 * 21 + 9, 2, 3] == 1.0  # a single channel: divided by k*k*C = 1


def test_flownet2_empty_batch_half_and_non_contiguous():
    corr = Correlation(3, 3, 2, 1, 1)
    in1, in2 = (t.requires_grad_() for t in features(0, 3, 7, 6))
    out = corr(in1, in2)
    assert out.shape == (0, 25, 7, 6)
    out.sum().backward()
    assert in1.grad.shape == in1.shape
    in1, in2 = features(2, 4, 8, 9, torch.bfloat16)
    assert_close_rel(corr(in1, in2), flownet2_reference(in1, in2, 3, 3, 2, 1, 1), torch.bfloat16)
    in1, in2 = (t.transpose(2, 3) for t in features(2, 4, 9, 8))
    assert_close_rel(corr(in1, in2), flownet2_reference(in1, in2, 3, 3, 2, 1, 1))


@pytest.mark.parametrize("args", [(2, 1, 2, 1, 1), (2, 3, 2, 2, 2)])
def test_flownet2_gradcheck(args):
    in1, in2 = (t.requires_grad_() for t in features(2, 2, 6, 7))
    corr = Correlation(*args)
    assert torch.autograd.gradcheck(corr, (in1, in2), fast_mode=True)


def test_flownet2_module_settings():
    corr = Correlation(4, 1, 4, 1, 1)
    assert repr(corr) == "Correlation(pad_size=4, kernel_size=1, max_displacement=4, stride1=1, stride2=1)"
    assert "corr_multiply=2" in repr(Correlation(4, 1, 4, 1, 1, corr_multiply=2))
    in1, in2 = features(1, 3, 9, 9)
    # corr_multiply has no effect, as in flownet2-pytorch.
    torch.testing.assert_close(Correlation(4, 1, 4, 1, 1, corr_multiply=3)(in1, in2), corr(in1, in2))


@pytest.mark.skipif(
    importlib.util.find_spec("spatial_correlation_sampler") is None,
    reason="spatial_correlation_sampler is not installed (`make sampler` builds its CPU extension); "
    "the float64 loop of its CPU code stands in for it",
)
@pytest.mark.parametrize("geometry", SAMPLER_GEOMETRIES)
def test_sampler_matches_the_package(geometry):
    import spatial_correlation_sampler as package

    B, C, H, W, *args = geometry
    in1, in2 = (t.requires_grad_() for t in features(B, C, H, W))
    ours = spatial_correlation_sample(in1, in2, *args)
    theirs = package.spatial_correlation_sample(in1, in2, *args)
    assert_close_rel(ours, theirs)
    weight = torch.randn(ours.shape, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad((ours * weight).sum(), (in1, in2)), torch.autograd.grad((theirs * weight).sum(), (in1, in2))
    ):
        assert_close_rel(a, b)


F1, F2 = features(2, 3, 8, 8, torch.float32)
# One row a case: (call, error, message regex).
# fmt: off
BAD_INPUTS = [
    (lambda: spatial_correlation_sample(F1, F2[:, :2]), ValueError, r"input1 and input2 must have the same shape.*\(2, 3, 8, 8\).*\(2, 2, 8, 8\)"),
    (lambda: spatial_correlation_sample(F1, F2.double()), TypeError, r"input1 and input2 must have the same dtype"),
    (lambda: spatial_correlation_sample(F1[0], F2[0]), ValueError, r"input1 must be 4-D \(B, C, H, W\), got shape \(3, 8, 8\)"),
    (lambda: spatial_correlation_sample(F1.long(), F2.long()), TypeError, r"input1 must have a floating-point dtype"),
    (lambda: spatial_correlation_sample(F1, F2, patch_size=0), ValueError, r"patch_size must be at least 1, got 0"),
    (lambda: spatial_correlation_sample(F1, F2, kernel_size=(1, 0)), ValueError, r"kernel_size must be at least 1, got \(1, 0\)"),
    (lambda: spatial_correlation_sample(F1, F2, stride=0), ValueError, r"stride must be at least 1, got 0"),
    (lambda: spatial_correlation_sample(F1, F2, padding=-1), ValueError, r"padding must be non-negative, got -1"),
    (lambda: spatial_correlation_sample(F1, F2, dilation_patch=1.5), TypeError, r"dilation_patch must be an int or a pair of ints, got 1\.5"),
    (lambda: spatial_correlation_sample(F1, F2, dilation=(1, 2, 3)), TypeError, r"dilation must be an int or a pair"),
    (lambda: spatial_correlation_sample(F1, F2, kernel_size=5, dilation=(2, 3)), ValueError, r"kernel must overhang the padded input by less than two strides .*: kernel_size \(5, 5\) with dilation \(2, 3\) spans 9x13, input1 \(2, 3, 8, 8\) with padding \(0, 0\) is 8x8, stride \(1, 1\): 0x-4 positions"),
    (lambda: spatial_correlation_sample(F1[:, :0], F2[:, :0]), ValueError, r"^input1 and input2 must have at least one channel, got shape \(2, 0, 8, 8\)$"),
    (lambda: Correlation(4, 1, 4, 1, 1)(F1[:, :0], F2[:, :0]), ValueError, r"^input1 and input2 must have at least one channel, got shape \(2, 0, 8, 8\)$"),
    (lambda: SpatialCorrelationSampler(patch_size=-3), ValueError, r"patch_size must be at least 1, got -3"),
    (lambda: Correlation(-1, 1, 4, 1, 1), ValueError, r"pad_size must be a non-negative int, got -1"),
    (lambda: Correlation(4, 0, 4, 1, 1), ValueError, r"kernel_size must be a positive int, got 0"),
    (lambda: Correlation(4, 1, 4.0, 1, 1), TypeError, r"max_displacement must be a non-negative int, got float 4\.0"),
    (lambda: Correlation(4, 1, 4, 0, 1), ValueError, r"stride1 must be a positive int, got 0"),
    (lambda: Correlation(4, 1, 4, 1, True), TypeError, r"stride2 must be a positive int, got bool True"),
    (lambda: Correlation(4, 1, 4, 1, 1, corr_multiply="2"), TypeError, r"corr_multiply must be a real number"),
    (lambda: Correlation(0, 3, 4, 1, 1)(F1, F2), ValueError, r"padded input must be larger than 2 \* \(kernel radius \+ max_displacement\) = 10.*pad_size 0, 8x8"),
    (lambda: Correlation(4, 1, 4, 1, 1)(F1, F2[:1]), ValueError, r"input1 and input2 must have the same shape"),
    (lambda: Correlation(4, 1, 4, 1, 1)(F1, F2.to("meta")), ValueError, r"input1 and input2 must be on the same device"),
]
# fmt: on


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "module", [SpatialCorrelationSampler(3, 4, 1, 1, 1, 2), Correlation(4, 1, 4, 1, 2)], ids=["sampler", "flownet2"]
)
def test_export_with_dynamic_batch(module):
    # The TorchScript exporter (about a second); the torch.export one is covered for the volumes themselves.
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import io
    import warnings

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {"input1": {0: "batch"}, "input2": {0: "batch"}}
        torch.onnx.export(
            module, features(2, 4, 9, 10, torch.float32), f, dynamo=False, input_names=list(axes), dynamic_axes=axes
        )
    model = onnx.load_from_string(f.getvalue())
    assert not {node.domain for node in model.graph.node} - {"", "ai.onnx"}  # no custom op
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (5, 1):
        in1, in2 = features(batch, 4, 9, 10, torch.float32, seed=batch)
        (got,) = session.run(None, {"input1": in1.numpy(), "input2": in2.numpy()})
        assert_close_rel(torch.from_numpy(got), module(in1.double(), in2.double()), torch.float32)


def test_one_import_line_ports_a_network():
    assert spatial_correlation_sampler.__all__ == ["SpatialCorrelationSampler", "spatial_correlation_sample"]
    assert flownet2.__all__ == ["Correlation"]
