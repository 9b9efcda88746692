import pytest
import torch
import torch.nn.functional as F
from helpers import METHODS, MODES, assert_close_rel
from reference import xcorr_reference

import xcorr


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_xcorr_module_matches_reference(mode, method, device):
    corr = xcorr.XCorr(mode, padding=(1, 2), stride=(2, 1), dilation=(1, 2), method=method)
    x = randn(4, 3, 11, 10).to(device)
    z = randn(2, 6 if mode == "upchannel" else 3, 3, 4, seed=1).to(device)
    expected = xcorr_reference(x, z, mode, padding=(1, 2), stride=(2, 1), dilation=(1, 2))
    assert_close_rel(corr(x, z), expected)


def test_siamfc_head_shape_and_scale(device):
    head = xcorr.SiamFCHead(out_scale=0.25)
    x, z = randn(3, 8, 22, 22).to(device), randn(3, 8, 6, 6, seed=1).to(device)
    out = head(x, z)
    assert out.shape == (3, 1, 17, 17)
    assert_close_rel(out, 0.25 * xcorr_reference(x, z))


def test_upchannel_head_default_shapes():
    cls, loc = xcorr.UpChannelHead()(torch.randn(2, 256, 22, 22), torch.randn(2, 256, 6, 6))
    assert cls.shape == (2, 10, 17, 17) and loc.shape == (2, 20, 17, 17)


def test_upchannel_head_matches_its_definition(device):
    head = xcorr.UpChannelHead(in_channels=3, anchors=2).double().to(device)
    x, z = randn(4, 3, 12, 11).to(device), randn(2, 3, 6, 5, seed=1).to(device)
    cls, loc = head(x, z)
    expected_cls = xcorr_reference(head.search_cls(x), head.template_cls(z), "upchannel")
    expected_loc = head.loc_adjust(xcorr_reference(head.search_loc(x), head.template_loc(z), "upchannel").to(device))
    assert cls.shape == (4, 4, 7, 7) and loc.shape == (4, 8, 7, 7)
    assert_close_rel(cls, expected_cls)
    assert_close_rel(loc, expected_loc)


def test_depthwise_head_default_shapes():
    head = xcorr.DepthwiseXCorrHead(256, 256, 10)
    assert head(torch.randn(2, 256, 31, 31), torch.randn(2, 256, 7, 7)).shape == (2, 10, 25, 25)


@pytest.mark.parametrize("train", [True, False])
def test_depthwise_head_matches_its_definition(train, device):
    head = xcorr.DepthwiseXCorrHead(3, 4, 5, kernel_size=1).double().to(device).train(train)
    x, z = randn(4, 3, 9, 10).to(device), randn(4, 3, 4, 3, seed=1).to(device)
    out = head(x, z)
    # A second, independent evaluation: the grouped-convolution formulation the head replaces.
    xs, zs = head.search(x), head.template(z)
    grouped = F.conv2d(xs.reshape(1, -1, 9, 10), zs.reshape(-1, 1, 4, 3), groups=16).reshape(4, 4, 6, 8)
    expected = head.head(grouped)
    assert out.shape == (4, 5, 6, 8)
    assert_close_rel(out, expected)


def _heads():
    return [
        (xcorr.SiamFCHead(out_scale=0.5), 3, 5, 3),
        (xcorr.UpChannelHead(in_channels=2, anchors=1), 2, 6, 4),
        (xcorr.DepthwiseXCorrHead(2, 3, 2, kernel_size=2), 2, 6, 3),
    ]


@pytest.mark.parametrize("case", range(3))
def test_heads_gradcheck(case):
    head, C, H, h = _heads()[case]
    head = head.double().eval()
    x = randn(2, C, H, H).requires_grad_(True)
    z = randn(2, C, h, h, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, z: head(x, z), (x, z), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(3))
def test_heads_half_precision(case, dtype):
    head, C, H, h = _heads()[case]
    head = head.eval()
    x, z = randn(2, C, H, H, dtype=torch.float32), randn(2, C, h, h, dtype=torch.float32, seed=1)
    expected = head(x, z)
    out = head.to(dtype)(x.to(dtype), z.to(dtype))
    for got, want in zip(*(o if isinstance(o, tuple) else (o,) for o in (out, expected))):
        assert got.dtype == dtype
        # The weights themselves are rounded to dtype, so the tolerance is a few roundings.
        assert ((got.float() - want).abs().max() / want.abs().max()).item() < 10 * torch.finfo(dtype).eps


class Tracker(torch.nn.Module):
    """A Siamese tracker's shape: one backbone for search and template, then a correlation head."""

    def __init__(self, head, channels):
        super().__init__()
        self.backbone = torch.nn.Conv2d(channels, channels, kernel_size=1)
        self.head = head

    def forward(self, x, z):
        return self.head(self.backbone(x), self.backbone(z))


FX_CASES = [*_heads(), (xcorr.XCorr("depthwise", padding=1, stride=2), 2, 7, 3)]


@pytest.mark.parametrize("case", range(len(FX_CASES)))
def test_heads_trace_with_fx(case):
    # torch.fx.symbolic_trace (torchvision's feature extraction) keeps xcorr as one leaf call per
    # correlation, and the input checks of the heads as calls that still run in the traced model.
    head, C, H, h = FX_CASES[case]
    model = Tracker(head, C).double().eval()
    traced = torch.fx.symbolic_trace(model)
    calls = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert calls.count(xcorr.xcorr) == (2 if isinstance(head, xcorr.UpChannelHead) else 1)
    for B in (2, 3):  # the graph holds no shapes: any batch runs
        x, z = randn(B, C, H, H), randn(B, C, h, h, seed=1)
        for got, want in zip(*(o if isinstance(o, tuple) else (o,) for o in (traced(x, z), model(x, z)))):
            assert_close_rel(got, want)
    if isinstance(head, (xcorr.UpChannelHead, xcorr.DepthwiseXCorrHead)):
        with pytest.raises(ValueError, match=f"x must have {C} channels"):
            torch.fx.symbolic_trace(head.double())(randn(2, C + 1, H, H), randn(2, C, h, h))


class Functional(torch.nn.Module):
    """A model that calls the functionals itself, as ``xcorr.xcorr`` / ``xcorr.pixelwise``."""

    def forward(self, x, z):
        return xcorr.xcorr(x, z, "depthwise", padding=1), xcorr.pixelwise(x, z)


def test_functionals_called_by_a_model_trace_with_fx_as_leaves():
    traced = torch.fx.symbolic_trace(Functional())
    calls = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert calls == [xcorr.xcorr, xcorr.pixelwise]
    x, z = randn(3, 2, 7, 7), randn(3, 2, 3, 3, seed=1)
    for got, want in zip(traced(x, z), Functional()(x, z)):
        assert_close_rel(got, want)


def test_torchvision_feature_extraction():
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    model = Tracker(xcorr.DepthwiseXCorrHead(2, 3, 2, kernel_size=1), 2).double().eval()
    train_nodes, eval_nodes = feature_extraction.get_graph_node_names(model)
    assert "head.xcorr" in eval_nodes and "head.xcorr" in train_nodes
    extractor = feature_extraction.create_feature_extractor(
        model, {"head.xcorr": "correlation", "head.head": "response"}
    )
    x, z = randn(2, 2, 9, 9), randn(2, 2, 4, 4, seed=1)
    features = extractor(x, z)
    assert_close_rel(features["response"], model(x, z))
    correlation = xcorr.xcorr(model.head.search(model.backbone(x)), model.head.template(model.backbone(z)), "depthwise")
    assert_close_rel(features["correlation"], correlation)


@pytest.mark.parametrize(
    "module, text",
    [
        (xcorr.XCorr(), "XCorr()"),
        (
            xcorr.XCorr("upchannel", stride=2, method="gather"),
            "XCorr(mode='upchannel', stride=(2, 2), method='gather')",
        ),
        (xcorr.XCorr(padding=(1, 0), dilation=(1, 3)), "XCorr(padding=(1, 0), dilation=(1, 3))"),
        (xcorr.SiamFCHead(), "SiamFCHead()"),
        (xcorr.SiamFCHead(out_scale=1), "SiamFCHead(out_scale=1.0)"),
    ],
)
def test_repr_shows_non_default_settings(module, text):
    assert repr(module) == text


def test_head_reprs_show_settings_then_layers():
    assert repr(xcorr.UpChannelHead(in_channels=8)).startswith("UpChannelHead(\n  in_channels=8\n  (template_cls)")
    assert repr(xcorr.UpChannelHead(8, anchors=3)).startswith("UpChannelHead(\n  in_channels=8, anchors=3\n")
    assert repr(xcorr.DepthwiseXCorrHead(8, 4, 2)).startswith(
        "DepthwiseXCorrHead(\n  in_channels=8, hidden=4, out_channels=2\n"
    )
    assert repr(xcorr.DepthwiseXCorrHead(8, 4, 2, kernel_size=1)).startswith(
        "DepthwiseXCorrHead(\n  in_channels=8, hidden=4, out_channels=2, kernel_size=1\n"
    )


def test_xcorr_module_has_no_state():
    assert list(xcorr.XCorr().state_dict()) == [] and list(xcorr.SiamFCHead().parameters()) == []


def test_public_names():
    assert xcorr.__all__ == sorted(xcorr.__all__)
    assert xcorr.nn.XCorr is xcorr.XCorr and xcorr.nn.__all__ == sorted(xcorr.nn.__all__)


X8, Z8 = torch.zeros(2, 8, 22, 22), torch.zeros(2, 8, 6, 6)
# One row a case: (call, error, message regex).
# fmt: off
BAD_SETTINGS = [
    (lambda: xcorr.XCorr("pixel"), ValueError, r"unknown mode 'pixel'; valid values are 'naive', 'depthwise', 'upchannel'"),
    (lambda: xcorr.XCorr(padding=-1), ValueError, r"padding must be non-negative, got -1"),
    (lambda: xcorr.XCorr(stride=(1, 0)), ValueError, r"stride must be at least 1, got \(1, 0\)"),
    (lambda: xcorr.XCorr(dilation=1.5), TypeError, r"dilation must be an int or a pair of ints, got 1\.5"),
    (lambda: xcorr.XCorr(method="winograd"), ValueError, r"unknown method 'winograd'; valid values are 'auto', 'direct', 'fft', 'gather'"),
    (lambda: xcorr.XCorr(method=None), TypeError, r"method must be a string"),
    (lambda: xcorr.SiamFCHead(out_scale="0.001"), TypeError, r"out_scale must be a real number, got str '0\.001'"),
    (lambda: xcorr.SiamFCHead(out_scale=float("nan")), ValueError, r"out_scale must be finite, got nan"),
    (lambda: xcorr.SiamFCHead(out_scale=True), TypeError, r"out_scale must be a real number, got bool"),
    (lambda: xcorr.UpChannelHead(in_channels=0), ValueError, r"in_channels must be a positive int, got 0"),
    (lambda: xcorr.UpChannelHead(anchors=2.0), TypeError, r"anchors must be a positive int, got float 2\.0"),
    (lambda: xcorr.DepthwiseXCorrHead(8, -4, 2), ValueError, r"hidden must be a positive int, got -4"),
    (lambda: xcorr.DepthwiseXCorrHead(8, 4, "2"), TypeError, r"out_channels must be a positive int, got str '2'"),
    (lambda: xcorr.DepthwiseXCorrHead(8, 4, 2, kernel_size=0), ValueError, r"kernel_size must be a positive int, got 0"),
    (lambda: xcorr.DepthwiseXCorrHead(8, 4, 2)(X8[:, :4], Z8), ValueError, r"x must have 8 channels \(in_channels\), got shape \(2, 4, 22, 22\)"),
    (lambda: xcorr.UpChannelHead(8, 1)(X8, Z8[0]), ValueError, r"z must be 4-D \(B, C, H, W\), got shape \(8, 6, 6\)"),
    (lambda: xcorr.UpChannelHead(8, 1)(X8.long(), Z8), TypeError, r"x must have a floating-point dtype"),
    (lambda: xcorr.SiamFCHead()(X8, Z8[:, :4]), ValueError, r"mode 'naive' needs z to have as many channels as x"),
    (lambda: xcorr.XCorr("depthwise")(X8[:1], Z8), ValueError, r"x's batch must be a multiple of z's batch"),
    (lambda: xcorr.SiamFCHead()(Z8, X8), ValueError, r"z \(2, 8, 22, 22\) does not fit in x \(2, 8, 6, 6\); z \(template\) is larger than x \(search\): the head takes forward\(x, z\) = \(search, template\); the arguments may be swapped"),
    (lambda: xcorr.UpChannelHead(8, 1)(Z8, X8), ValueError, r"z \(2, 8, 22, 22\) does not fit in x \(2, 8, 6, 6\); .*the head takes forward\(x, z\) = \(search, template\); the arguments may be swapped"),
    (lambda: xcorr.DepthwiseXCorrHead(8, 4, 2)(Z8, X8), ValueError, r"z \(2, 8, 22, 22\) does not fit in x \(2, 8, 6, 6\); .*the head takes forward\(x, z\) = \(search, template\); the arguments may be swapped"),
    (lambda: xcorr.XCorr()(Z8, X8), ValueError, r"template must fit in the padded search.*z \(template\) is larger than x \(search\): xcorr takes \(x, z\) = \(search, template\); the arguments may be swapped"),
    (lambda: xcorr.DepthwiseXCorrHead(8, 4, 2)(X8, Z8[..., :2]), ValueError, r"z must be at least 3x3, the kernel of the head's branch convolutions; got shape \(2, 8, 6, 2\)"),
    (lambda: xcorr.SiamFCHead()(X8[..., :5], Z8), ValueError, r"z \(2, 8, 6, 6\) does not fit in x \(2, 8, 22, 5\); the template must not be larger than the search \(the head takes forward\(x, z\) = \(search, template\)\)"),
    (lambda: xcorr.UpChannelHead(8, 1)(X8, Z8.double()), TypeError, r"x and z must have the same dtype"),
]
# fmt: on


@pytest.mark.parametrize("call, error, message", BAD_SETTINGS)
def test_bad_settings_and_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
