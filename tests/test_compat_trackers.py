"""The tracker drop-ins of xcorr.compat against the upstream modules, rewritten here in plain F.conv2d.

The ``Pysot*`` classes and functions compute as pysot does (``pysot/core/xcorr.py``,
``pysot/models/head/rpn.py``, ``pysot/models/head/mask.py``): the per-item loop, the grouped
convolutions with the batch folded into the channels, and the same layers under the same names.
``siamfc_reference`` computes as siamfc-pytorch's ``SiamFC._fast_xcorr`` (``siamfc/heads.py``).
They use ``reshape`` where upstream uses ``view``, so that they take the non-contiguous inputs
the drop-ins are tested with. Each drop-in loads its reference's ``state_dict()`` with
``strict=True`` and must give its outputs: within 1e-12 in float64 and 2e-6 in float32,
relative to the largest output, the float32 run held against the float64 reference.
"""

import copy
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xcorr
from xcorr.compat import pysot, siamfc
from xcorr.compat.pysot import (
    DepthwiseRPN,
    DepthwiseXCorr,
    MaskCorr,
    MultiRPN,
    UPChannelRPN,
    xcorr_depthwise,
    xcorr_fast,
    xcorr_slow,
)
from xcorr.compat.siamfc import SiamFC

#: Relative to the largest |output|: float64 against float64, float32 against float64.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6}


def rel_err(actual, expected):
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert expected.numel() == 0 or expected.abs().max() > 0  # a zero reference would compare nothing
    return ((actual - expected).abs().max() / expected.abs().max()).item() if expected.numel() else 0.0


def assert_matches(actual, expected, dtype):
    assert actual.dtype == dtype
    err = rel_err(actual, expected)
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]:.0g} in {dtype}"


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def non_contiguous(t, layout):
    if layout == "contiguous":
        return t
    if layout == "transposed":  # (B, C, W, H) storage seen as (B, C, H, W)
        out = t.transpose(2, 3).contiguous().transpose(2, 3)
    elif layout == "sliced":
        out = t.repeat_interleave(2, dim=3)[..., ::2]
    else:
        out = t.to(memory_format=torch.channels_last)
    assert torch.equal(out, t)
    return out


# pysot's correlations, as pysot/core/xcorr.py computes them.


def pysot_xcorr_slow(x, kernel):
    outs = [
        F.conv2d(x[i].reshape(1, -1, *x.shape[2:]), kernel[i].reshape(1, -1, *kernel.shape[2:]))
        for i in range(x.shape[0])
    ]
    return torch.cat(outs, 0)


def pysot_xcorr_fast(x, kernel):
    batch = kernel.shape[0]
    pk = kernel.reshape(-1, x.shape[1], *kernel.shape[2:])
    po = F.conv2d(x.reshape(1, -1, *x.shape[2:]), pk, groups=batch)
    return po.reshape(batch, -1, *po.shape[2:])


def pysot_xcorr_depthwise(x, kernel):
    batch, channel = kernel.shape[:2]
    out = F.conv2d(
        x.reshape(1, batch * channel, *x.shape[2:]),
        kernel.reshape(batch * channel, 1, *kernel.shape[2:]),
        groups=batch * channel,
    )
    return out.reshape(batch, channel, *out.shape[2:])


# pysot's heads, as pysot/models/head/rpn.py and mask.py build and compute them.


class PysotDepthwiseXCorr(nn.Module):
    def __init__(self, in_channels, hidden, out_channels, kernel_size=3, hidden_kernel_size=5):
        super().__init__()

        def branch():
            return nn.Sequential(
                nn.Conv2d(in_channels, hidden, kernel_size, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)
            )

        self.conv_kernel = branch()
        self.conv_search = branch()
        self.head = nn.Sequential(
            nn.Conv2d(hidden, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
        )

    def forward(self, kernel, search):
        return self.head(pysot_xcorr_depthwise(self.conv_search(search), self.conv_kernel(kernel)))


class PysotMaskCorr(PysotDepthwiseXCorr):
    def forward(self, kernel, search):
        feature = pysot_xcorr_depthwise(self.conv_search(search), self.conv_kernel(kernel))
        return self.head(feature), feature


class PysotDepthwiseRPN(nn.Module):
    def __init__(self, anchor_num=5, in_channels=256, out_channels=256):
        super().__init__()
        self.cls = PysotDepthwiseXCorr(in_channels, out_channels, 2 * anchor_num)
        self.loc = PysotDepthwiseXCorr(in_channels, out_channels, 4 * anchor_num)

    def forward(self, z_f, x_f):
        return self.cls(z_f, x_f), self.loc(z_f, x_f)


class PysotUPChannelRPN(nn.Module):
    def __init__(self, anchor_num=5, feature_in=256):
        super().__init__()
        C, cls_out, loc_out = feature_in, 2 * anchor_num, 4 * anchor_num
        self.template_cls_conv = nn.Conv2d(C, C * cls_out, 3)
        self.template_loc_conv = nn.Conv2d(C, C * loc_out, 3)
        self.search_cls_conv = nn.Conv2d(C, C, 3)
        self.search_loc_conv = nn.Conv2d(C, C, 3)
        self.loc_adjust = nn.Conv2d(loc_out, loc_out, 1)

    def forward(self, z_f, x_f):
        cls = pysot_xcorr_fast(self.search_cls_conv(x_f), self.template_cls_conv(z_f))
        loc = self.loc_adjust(pysot_xcorr_fast(self.search_loc_conv(x_f), self.template_loc_conv(z_f)))
        return cls, loc


class PysotMultiRPN(nn.Module):
    def __init__(self, anchor_num, in_channels, weighted=False):
        super().__init__()
        self.weighted = weighted
        for i, c in enumerate(in_channels):
            self.add_module(f"rpn{i + 2}", PysotDepthwiseRPN(anchor_num, c, c))
        if weighted:
            self.cls_weight = nn.Parameter(torch.ones(len(in_channels)))
            self.loc_weight = nn.Parameter(torch.ones(len(in_channels)))

    def forward(self, z_fs, x_fs):
        cls, loc = [], []
        for level, (z_f, x_f) in enumerate(zip(z_fs, x_fs), start=2):
            c, b = getattr(self, f"rpn{level}")(z_f, x_f)
            cls.append(c)
            loc.append(b)
        if not self.weighted:
            return sum(cls) / len(cls), sum(loc) / len(loc)
        cw, lw = F.softmax(self.cls_weight, 0), F.softmax(self.loc_weight, 0)
        c_sum, l_sum = 0, 0
        for i in range(len(cw)):
            c_sum = c_sum + cls[i] * cw[i]
            l_sum = l_sum + loc[i] * lw[i]
        return c_sum, l_sum


def siamfc_reference(z, x, out_scale):
    """siamfc-pytorch's head: the search batch folded into rows of nz items, one group per template."""
    nz = z.shape[0]
    nx, c, h, w = x.shape
    out = F.conv2d(x.reshape(-1, nz * c, h, w), z, groups=nz)
    return out.reshape(nx, -1, *out.shape[-2:]) * out_scale


def randomise(module, seed):
    """Every parameter and batch-norm statistic of ``module`` drawn at random (the statistics
    positive where they are variances), so that no layer is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                values = (
                    torch.rand(t.shape, generator=g) + 0.5
                    if name.endswith("running_var")
                    else torch.randn(t.shape, generator=g)
                )
                t.copy_(0.5 * values if name.endswith("weight") and t.dim() == 4 else values)
    return module


def twins(reference, ours, seed=0):
    """``reference`` with random weights and ``ours`` loaded from it (strict), both in eval mode."""
    randomise(reference, seed)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    return reference.eval(), ours.eval()


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


def run_both(reference, ours, inputs, dtype):
    """Ours in ``dtype`` against the reference in float64 on the same (``dtype``-rounded) weights and inputs."""
    inputs = [[t.to(dtype) for t in arg] if isinstance(arg, list) else arg.to(dtype) for arg in inputs]
    ours = ours.to(dtype)
    reference.load_state_dict(ours.state_dict())
    reference = reference.double()
    wide = [[t.double() for t in arg] if isinstance(arg, list) else arg.double() for arg in inputs]
    with torch.no_grad():
        got, want = outputs(ours(*inputs)), outputs(reference(*wide))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert_matches(a, b, dtype)


# (B, C, K, H, W, h, w): odd and even sizes, batches 0, 1 and above, a template as large as the search.
FUNCTION_GEOMETRIES = [
    (1, 3, 2, 9, 11, 3, 5),
    (3, 4, 3, 13, 10, 5, 4),
    (2, 1, 1, 7, 7, 7, 7),
    (5, 2, 4, 8, 9, 1, 2),
    (0, 3, 2, 9, 9, 3, 3),
]
FUNCTIONS = [
    (xcorr_slow, pysot_xcorr_slow, False),
    (xcorr_fast, pysot_xcorr_fast, True),
    (xcorr_depthwise, pysot_xcorr_depthwise, False),
]
LAYOUTS = ["contiguous", "transposed", "sliced", "channels_last"]


def function_inputs(B, C, K, H, W, h, w, upchannel, dtype=torch.float64, seed=0):
    x = randn(B, C, H, W, seed=seed, dtype=dtype)
    kernel = randn(B, K * C if upchannel else C, h, w, seed=seed + 1, dtype=dtype)
    return x, kernel


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geometry", FUNCTION_GEOMETRIES)
@pytest.mark.parametrize("case", range(len(FUNCTIONS)), ids=["xcorr_slow", "xcorr_fast", "xcorr_depthwise"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_functions_match_pysot(case, geometry, layout, dtype):
    ours, reference, upchannel = FUNCTIONS[case]
    x, kernel = function_inputs(*geometry, upchannel, dtype)
    xs = non_contiguous(x, layout)
    if layout != "contiguous" and x.shape[0] and x.shape[1] > 1:
        assert not xs.is_contiguous()
    got = ours(xs, non_contiguous(kernel, layout))
    B, C, K, H, W, h, w = geometry
    if B == 0:  # where pysot's loop and grouped convolutions fail, an empty output
        K = {xcorr_slow: 1, xcorr_fast: K, xcorr_depthwise: C}[ours]
        assert got.shape == (0, K, H - h + 1, W - w + 1) and got.dtype == dtype
    else:
        assert_matches(got, reference(x.double(), kernel.double()), dtype)


@pytest.mark.parametrize("case", range(len(FUNCTIONS)), ids=["xcorr_slow", "xcorr_fast", "xcorr_depthwise"])
def test_functions_gradcheck(case):
    ours, _, upchannel = FUNCTIONS[case]
    x, kernel = (t.requires_grad_() for t in function_inputs(2, 2, 3, 6, 5, 3, 2, upchannel))
    assert torch.autograd.gradcheck(ours, (x, kernel), fast_mode=True)


@pytest.mark.parametrize("case", range(len(FUNCTIONS)), ids=["xcorr_slow", "xcorr_fast", "xcorr_depthwise"])
def test_function_gradients_match_pysot(case):
    ours, reference, upchannel = FUNCTIONS[case]
    x, kernel = (t.requires_grad_() for t in function_inputs(3, 3, 2, 9, 8, 4, 3, upchannel, seed=4))
    weight = randn(*reference(x, kernel).shape, seed=9)
    got = torch.autograd.grad((ours(x, kernel) * weight).sum(), (x, kernel))
    want = torch.autograd.grad((reference(x, kernel) * weight).sum(), (x, kernel))
    for a, b in zip(got, want):
        assert_matches(a, b, torch.float64)


# (reference, ours, (template, search) shapes' (B, h, w, H, W)): batches 1 and above, odd sizes.
def head_cases():
    return {
        "DepthwiseXCorr": (PysotDepthwiseXCorr(4, 5, 6), DepthwiseXCorr(4, 5, 6), 4),
        "DepthwiseXCorr-k1": (PysotDepthwiseXCorr(3, 4, 2, 1, 7), DepthwiseXCorr(3, 4, 2, 1, 7), 3),
        "MaskCorr": (PysotMaskCorr(4, 3, 9), MaskCorr(4, 3, 9), 4),
        "DepthwiseRPN": (PysotDepthwiseRPN(2, 4, 5), DepthwiseRPN(2, 4, 5), 4),
        "UPChannelRPN": (PysotUPChannelRPN(2, 3), UPChannelRPN(2, 3), 3),
    }


HEAD_SIZES = [(1, 7, 7, 31, 31), (3, 6, 5, 13, 16), (2, 5, 5, 5, 5)]


@pytest.mark.parametrize("sizes", HEAD_SIZES)
@pytest.mark.parametrize("name", list(head_cases()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_heads_load_pysot_weights_and_match(name, sizes, dtype):
    reference, ours, C = head_cases()[name]
    reference, ours = twins(reference, ours)
    B, h, w, H, W = sizes
    run_both(reference, ours, [randn(B, C, h, w, seed=1), randn(B, C, H, W, seed=2)], dtype)


@pytest.mark.parametrize("layout", LAYOUTS[1:])
@pytest.mark.parametrize("name", ["DepthwiseRPN", "UPChannelRPN"])
def test_heads_take_non_contiguous_inputs(name, layout):
    reference, ours, C = head_cases()[name]
    reference, ours = twins(reference.double(), ours.double())
    z, x = randn(2, C, 7, 6, seed=1), randn(2, C, 15, 12, seed=2)
    with torch.no_grad():
        got = ours(non_contiguous(z, layout), non_contiguous(x, layout))
        want = reference(z, x)
    for a, b in zip(got, want):
        assert_matches(a, b, torch.float64)


def test_heads_in_training_mode_match():
    # Batch norm on the batch's statistics, and the running statistics updated alike.
    reference, ours = twins(PysotDepthwiseRPN(2, 4, 3).double(), DepthwiseRPN(2, 4, 3).double())
    reference.train(), ours.train()
    z, x = randn(3, 4, 7, 7, seed=1), randn(3, 4, 15, 13, seed=2)
    for a, b in zip(ours(z, x), reference(z, x)):
        assert_matches(a, b, torch.float64)
    for (name, a), (_, b) in zip(ours.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b) if name.endswith("num_batches_tracked") else rel_err(a, b) <= 1e-12, name


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_multi_rpn_loads_pysot_weights_and_matches(weighted, dtype):
    channels = [4, 3, 5]
    reference, ours = twins(PysotMultiRPN(2, channels, weighted), MultiRPN(2, channels, weighted), seed=3)
    assert [name for name, _ in ours.named_children()] == ["rpn2", "rpn3", "rpn4"]
    if weighted:  # random weights: the softmax is not uniform
        assert not torch.allclose(ours.cls_weight, ours.cls_weight[0])
    z_fs = [randn(2, c, 7, 7, seed=10 + i) for i, c in enumerate(channels)]
    x_fs = [randn(2, c, 15, 15, seed=20 + i) for i, c in enumerate(channels)]
    run_both(reference, ours, [z_fs, x_fs], dtype)


def test_multi_rpn_weights_are_a_softmax_average():
    rpn = MultiRPN(1, [2, 2], weighted=True).double().eval()
    z_fs, x_fs = [randn(1, 2, 5, 5, seed=1)] * 2, [randn(1, 2, 9, 9, seed=2), randn(1, 2, 9, 9, seed=3)]
    with torch.no_grad():
        rpn.cls_weight.copy_(torch.tensor([0.0, math.log(3.0)], dtype=torch.float64))  # softmax (1/4, 3/4)
        cls, _ = rpn(z_fs, x_fs)
        c2, _ = rpn.rpn2(z_fs[0], x_fs[0])
        c3, _ = rpn.rpn3(z_fs[1], x_fs[1])
    assert_matches(cls, 0.25 * c2 + 0.75 * c3, torch.float64)


def test_a_pysot_checkpoints_head_loads_after_stripping_its_prefix():
    # A checkpoint of pysot's ModelBuilder: backbone.*, neck.*, rpn_head.* (as in docs/trackers.md).
    reference = randomise(PysotMultiRPN(5, [8, 8, 8], weighted=True), seed=5)
    checkpoint = {"backbone.layer2.0.conv1.weight": torch.zeros(1)}
    checkpoint.update({f"rpn_head.{k}": v for k, v in reference.state_dict().items()})
    head = MultiRPN(5, [8, 8, 8], weighted=True)
    head.load_state_dict(
        {k.removeprefix("rpn_head."): v for k, v in checkpoint.items() if k.startswith("rpn_head.")}, strict=True
    )
    for name, t in reference.state_dict().items():
        assert torch.equal(head.state_dict()[name], t)


# siamfc-pytorch's head: (nz, nx) with one template, one per item, and nx = k * nz with k = 2, 3.
SIAMFC_BATCHES = [(1, 1), (1, 3), (4, 4), (2, 4), (2, 6), (3, 6), (2, 0)]


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels_last"])
@pytest.mark.parametrize("batches", SIAMFC_BATCHES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_siamfc_matches_siamfc_pytorch(batches, layout, dtype):
    nz, nx = batches
    z, x = randn(nz, 5, 6, 5, seed=1, dtype=dtype), randn(nx, 5, 17, 14, seed=2, dtype=dtype)
    got = SiamFC(out_scale=0.25)(non_contiguous(z, layout), non_contiguous(x, layout))
    if nx == 0:  # where siamfc-pytorch's reshape fails, an empty response
        assert got.shape == (0, 1, 12, 10) and got.dtype == dtype
    else:
        assert_matches(got, siamfc_reference(z.double(), x.double(), 0.25), dtype)


def test_siamfc_pairs_item_b_with_template_b_mod_nz():
    # nz = 2, nx = 6: items 0, 2, 4 meet template 0 and 1, 3, 5 template 1 (xcorr.xcorr's pairing
    # would give items 0, 1, 2 template 0).
    z, x = randn(2, 3, 4, 4, seed=1), randn(6, 3, 9, 9, seed=2)
    got = SiamFC(out_scale=1.0)(z, x)
    for b in range(6):
        assert_matches(got[b : b + 1], F.conv2d(x[b : b + 1], z[b % 2 : b % 2 + 1]), torch.float64)
    assert rel_err(xcorr.xcorr(x, z), got) > 0.1


def test_siamfc_gradcheck():
    z, x = randn(2, 2, 3, 3, seed=1).requires_grad_(), randn(4, 2, 7, 6, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, x: SiamFC(out_scale=0.5)(z, x), (z, x), fast_mode=True)


def test_inputs_are_not_modified():
    z, x = randn(2, 4, 7, 7, seed=1), randn(2, 4, 15, 15, seed=2)
    copies = z.clone(), x.clone()
    DepthwiseRPN(2, 4, 4).double().train()(z, x)
    UPChannelRPN(2, 4).double()(z, x)
    SiamFC()(z, x)
    xcorr_depthwise(x, z)
    assert torch.equal(z, copies[0]) and torch.equal(x, copies[1])


class Tracker(nn.Module):
    """pysot's ModelBuilder's shape: a backbone for both crops, then the head."""

    def __init__(self, head, channels):
        super().__init__()
        self.backbone = nn.Conv2d(channels, channels, 1)
        self.rpn_head = head

    def forward(self, z, x):
        return self.rpn_head(self.backbone(z), self.backbone(x))


@pytest.mark.parametrize(
    "head, leaf",
    [
        (DepthwiseRPN(2, 3, 3), pysot.xcorr_depthwise),
        (UPChannelRPN(2, 3), pysot.xcorr_fast),
        (SiamFC(), siamfc._fast_xcorr),
    ],
)
def test_heads_trace_with_fx(head, leaf):
    model = Tracker(head, 3).double().eval()
    traced = torch.fx.symbolic_trace(model)
    calls = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert leaf in calls
    z, x = randn(2, 3, 7, 7, seed=1), randn(2, 3, 13, 13, seed=2)
    for a, b in zip(outputs(traced(z, x)), outputs(model(z, x))):
        assert_matches(a, b, torch.float64)


@pytest.mark.parametrize(
    "head", [DepthwiseRPN(2, 4, 4), UPChannelRPN(2, 4), SiamFC()], ids=["DepthwiseRPN", "UPChannelRPN", "SiamFC"]
)
def test_export_with_dynamic_batch(head):
    # The TorchScript exporter: no custom op and no Conv by a run-time weight, any batch.
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    head = randomise(head, seed=7).eval()
    wide = copy.deepcopy(head).double()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {"z": {0: "batch"}, "x": {0: "batch"}}
        torch.onnx.export(
            head,
            (randn(2, 4, 7, 7, dtype=torch.float32), randn(2, 4, 15, 15, dtype=torch.float32)),
            f,
            dynamo=False,
            input_names=list(axes),
            dynamic_axes=axes,
        )
    model = onnx.load_from_string(f.getvalue())
    assert not {node.domain for node in model.graph.node} - {"", "ai.onnx"}
    weights = {init.name for init in model.graph.initializer}
    assert all(node.input[1] in weights for node in model.graph.node if node.op_type == "Conv")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (5, 1):
        z, x = (
            randn(batch, 4, 7, 7, seed=batch, dtype=torch.float32),
            randn(batch, 4, 15, 15, seed=batch + 1, dtype=torch.float32),
        )
        got = session.run(None, {"z": z.numpy(), "x": x.numpy()})
        with torch.no_grad():
            want = outputs(wide(z.double(), x.double()))
        for a, b in zip(got, want):
            assert_matches(torch.from_numpy(a), b, torch.float32)


@pytest.mark.parametrize(
    "module, text",
    [
        (DepthwiseXCorr(8, 4, 2), "in_channels=8, hidden=4, out_channels=2"),
        (DepthwiseXCorr(8, 4, 2, 1, 3), "in_channels=8, hidden=4, out_channels=2, kernel_size=1, hidden_kernel_size=3"),
        (DepthwiseRPN(), ""),
        (DepthwiseRPN(3, 8, 4), "anchor_num=3, in_channels=8, out_channels=4"),
        (UPChannelRPN(feature_in=8), "feature_in=8"),
        (MultiRPN(5, [8, 8], True), "anchor_num=5, in_channels=[8, 8], weighted=True"),
        (SiamFC(), ""),
        (SiamFC(0.5), "out_scale=0.5"),
    ],
)
def test_reprs_show_the_settings(module, text):
    assert module.extra_repr() == text


def test_one_import_line_ports_a_tracker():
    assert pysot.__all__ == sorted(pysot.__all__)
    assert set(pysot.__all__) == {
        "DepthwiseRPN",
        "DepthwiseXCorr",
        "MaskCorr",
        "MultiRPN",
        "UPChannelRPN",
        "xcorr_depthwise",
        "xcorr_fast",
        "xcorr_slow",
    }
    assert siamfc.__all__ == ["SiamFC"]
    assert issubclass(MaskCorr, DepthwiseXCorr)


X, Z = randn(2, 4, 15, 15, dtype=torch.float32), randn(2, 4, 7, 7, seed=1, dtype=torch.float32)
SWAPPED = r"the arguments may be swapped"
# One row a case: (call, error, message regex).
# fmt: off
BAD_INPUTS = [
    (lambda: xcorr_depthwise(X.numpy(), Z), TypeError, r"x must be a torch\.Tensor of shape \(B, C, H, W\), got numpy\.ndarray"),
    (lambda: xcorr_depthwise(X, Z[0]), ValueError, r"kernel must be 4-D \(B, Ck, h, w\), got shape \(4, 7, 7\)"),
    (lambda: xcorr_slow(X.long(), Z), TypeError, r"x must have a floating-point dtype"),
    (lambda: xcorr_fast(X, Z.double()), TypeError, r"x and kernel must have the same dtype, got x torch\.float32 and kernel torch\.float64"),
    (lambda: xcorr_depthwise(X, Z[:1]), ValueError, r"x and kernel must have the same batch \(xcorr_depthwise correlates search item i with template i\); got x \(2, 4, 15, 15\) and kernel \(1, 4, 7, 7\)"),
    (lambda: xcorr_slow(X[:1], Z), ValueError, r"x and kernel must have the same batch \(xcorr_slow"),
    (lambda: xcorr_depthwise(X, Z[:, :3]), ValueError, r"needs kernel to have as many channels as x; got x \(2, 4, 15, 15\) \(C=4\) and kernel \(2, 3, 7, 7\)"),
    (lambda: xcorr_fast(X, Z[:, :3]), ValueError, r"needs kernel's channels to be a positive multiple K\*C of x's channels C"),
    (lambda: xcorr_depthwise(Z, X), ValueError, r"kernel \(2, 4, 15, 15\) with dilation \(1, 1\) spans 15x15, but x \(2, 4, 7, 7\).*kernel \(template\) is larger than x \(search\): xcorr_depthwise takes \(x, kernel\) = \(search, template\); " + SWAPPED),
    (lambda: xcorr_fast(X[..., :5], Z), ValueError, r"template must fit in the padded search: kernel \(2, 4, 7, 7\) .* x \(2, 4, 15, 5\) .* is 15x5$"),
    (lambda: DepthwiseXCorr(4, 0, 2), ValueError, r"hidden must be a positive int, got 0"),
    (lambda: DepthwiseXCorr(4, 4, 2, hidden_kernel_size=2.0), TypeError, r"hidden_kernel_size must be a positive int, got float 2\.0"),
    (lambda: DepthwiseRPN(anchor_num=0), ValueError, r"anchor_num must be a positive int, got 0"),
    (lambda: UPChannelRPN(feature_in="256"), TypeError, r"feature_in must be a positive int, got str '256'"),
    (lambda: MultiRPN(5, 256), TypeError, r"in_channels must be a non-empty list or tuple of ints \(one per level\), got 256"),
    (lambda: MultiRPN(5, []), TypeError, r"in_channels must be a non-empty list or tuple"),
    (lambda: MultiRPN(5, [256, -1]), ValueError, r"in_channels\[1\] must be a positive int, got -1"),
    (lambda: MultiRPN(5, [256], weighted=1), TypeError, r"weighted must be a bool, got 1"),
    (lambda: DepthwiseXCorr(4, 4, 2)(X, Z), ValueError, r"kernel \(2, 4, 15, 15\) does not fit in search \(2, 4, 7, 7\); kernel \(template\) is larger than search \(search\): DepthwiseXCorr takes forward\(kernel, search\) = \(template, search\); " + SWAPPED),
    (lambda: MaskCorr(4, 4, 2)(Z[:, :2], X), ValueError, r"kernel must have 4 channels \(in_channels\), got shape \(2, 2, 7, 7\)"),
    (lambda: DepthwiseXCorr(4, 4, 2, kernel_size=9)(Z, X), ValueError, r"kernel must be at least 9x9, the kernel of the head's branch convolutions; got shape \(2, 4, 7, 7\)"),
    (lambda: DepthwiseRPN(2, 4, 4)(X, Z), ValueError, r"z_f \(2, 4, 15, 15\) does not fit in x_f \(2, 4, 7, 7\); z_f \(template\) is larger than x_f \(search\): DepthwiseRPN takes forward\(z_f, x_f\) = \(template, search\); " + SWAPPED),
    (lambda: DepthwiseRPN(2, 4, 4)(Z[:1], X), ValueError, r"x_f and z_f must have the same batch \(DepthwiseRPN correlates search item i with template i\)"),
    (lambda: DepthwiseRPN(2, 4, 4)(Z, X.double()), TypeError, r"x_f and z_f must have the same dtype"),
    (lambda: UPChannelRPN(2, 4)(X, Z), ValueError, r"z_f \(2, 4, 15, 15\) does not fit in x_f \(2, 4, 7, 7\).*UPChannelRPN takes forward\(z_f, x_f\) = \(template, search\); " + SWAPPED),
    (lambda: UPChannelRPN(2, 8)(Z, X), ValueError, r"x_f must have 8 channels \(feature_in\), got shape \(2, 4, 15, 15\)"),
    (lambda: UPChannelRPN(2, 4)(Z, X[0]), ValueError, r"x_f must be 4-D \(B, C, H, W\), got shape \(4, 15, 15\)"),
    (lambda: UPChannelRPN(2, 4)(Z[..., :2], X), ValueError, r"z_f must be at least 3x3"),
    (lambda: UPChannelRPN(2, 4)(randn(2, 4, 9, 3, dtype=torch.float32), X[..., :8, :8]), ValueError, r"z_f \(2, 4, 9, 3\) does not fit in x_f \(2, 4, 8, 8\); the template must not be larger than the search \(UPChannelRPN takes forward\(z_f, x_f\) = \(template, search\)\)"),
    (lambda: MultiRPN(2, [4, 4])([Z], [X, X]), ValueError, r"z_fs must hold 2 feature maps \(one per level of in_channels\), got 1"),
    (lambda: MultiRPN(2, [4, 4])([Z, Z], X), TypeError, r"x_fs must be a list or tuple of 2 feature maps \(one per level\), got Tensor"),
    (lambda: MultiRPN(2, [4, 3])([Z, Z], [X, X]), ValueError, r"x_fs\[1\] must have 3 channels \(in_channels\[1\]\), got shape \(2, 4, 15, 15\)"),
    (lambda: MultiRPN(2, [4, 4])([Z, X], [X, Z]), ValueError, r"z_fs\[1\] \(2, 4, 15, 15\) does not fit in x_fs\[1\] \(2, 4, 7, 7\); z_fs\[1\] \(template\) is larger than x_fs\[1\] \(search\): MultiRPN takes forward\(z_fs, x_fs\) = \(template, search\); " + SWAPPED),
    (lambda: SiamFC(out_scale="1e-3"), TypeError, r"out_scale must be a real number, got str '1e-3'"),
    (lambda: SiamFC(out_scale=float("inf")), ValueError, r"out_scale must be finite, got inf"),
    (lambda: SiamFC()(X, Z), ValueError, r"z \(2, 4, 15, 15\) with dilation \(1, 1\) spans 15x15, but x \(2, 4, 7, 7\).*z \(template\) is larger than x \(search\): SiamFC takes forward\(z, x\) = \(template, search\); " + SWAPPED),
    (lambda: SiamFC()(Z, X[:1]), ValueError, r"x's batch must be a multiple of z's \(non-zero\) batch \(siamfc-pytorch pairs search item b with template b % nz\); got x \(1, 4, 15, 15\) and z \(2, 4, 7, 7\)"),
    (lambda: SiamFC()(Z[:0], X), ValueError, r"x's batch must be a multiple of z's \(non-zero\) batch"),
    (lambda: SiamFC()(Z[:, :3], X), ValueError, r"needs z to have as many channels as x"),
    (lambda: SiamFC()(Z, X.tolist()), TypeError, r"x must be a torch\.Tensor of shape \(B, C, H, W\), got list"),
]
# fmt: on


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_settings_and_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
