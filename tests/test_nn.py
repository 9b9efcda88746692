import doctest

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_rel
from reference import xcorr_reference

import xcorr
from xcorr import nn as xnn

MODES = ["naive", "depthwise", "upchannel"]
METHODS = ["auto", "direct", "fft", "gather"]


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
    expected_loc = head.loc_adjust(
        xcorr_reference(head.search_loc(x), head.template_loc(z), "upchannel").to(device)
    )
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


@pytest.mark.parametrize(
    "module, text",
    [
        (xcorr.XCorr(), "XCorr()"),
        (xcorr.XCorr("upchannel", stride=2, method="gather"), "XCorr(mode='upchannel', stride=(2, 2), method='gather')"),
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


def test_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(xnn, globs={"torch": torch, **{name: getattr(xnn, name) for name in xnn.__all__}}):
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0 and attempted >= 10


X8, Z8 = torch.zeros(2, 8, 22, 22), torch.zeros(2, 8, 6, 6)
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
]


@pytest.mark.parametrize("call, error, message", BAD_SETTINGS)
def test_bad_settings_and_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()
