"""The hand-written backward passes: direct (forward correlations) and FFT (saved spectra)."""

import pytest
import torch
from helpers import MODES, assert_close_rel, make
from reference import xcorr_reference, xcorr_reference_grads

import xcorr
from xcorr.correlation.backends import fft


@pytest.fixture(autouse=True)
def fresh_bound_calls():
    """Bound calls keep the chunking worked out for their signature: tests that change a chunk
    budget start without them, and leave none behind."""
    xcorr.clear_cache()
    yield
    xcorr.clear_cache()


# (B, Bz, C, K, H, W, h, w, padding, stride, dilation)
GEOMETRIES = [
    (2, 2, 2, 2, 7, 8, 3, 2, (1, 0), (1, 2), (2, 1)),
    (3, 1, 2, 3, 9, 7, 2, 3, 2, 3, 1),  # one template shared by three items
    (1, 1, 3, 1, 6, 6, 6, 6, 0, 1, 1),  # template as large as the search
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_gradcheck(method, mode, geometry):
    B, Bz, C, K, H, W, h, w, padding, stride, dilation = geometry
    x, z = make(B, Bz, C, K, H, W, h, w, mode)
    x.requires_grad_(True)
    z.requires_grad_(True)

    def f(x, z):
        return xcorr.xcorr(x, z, mode, padding=padding, stride=stride, dilation=dilation, method=method)

    assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_gradgradcheck_direct(mode):
    method = "direct"
    x, z = make(2, 1, 2, 2, 6, 6, 2, 3, mode)
    x.requires_grad_(True)
    z.requires_grad_(True)
    f = lambda x, z: xcorr.xcorr(x, z, mode, padding=1, method=method)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, z), fast_mode=True)


def test_fft_second_derivative_is_refused_clearly():
    x, z = make(2, 1, 2, 1, 6, 6, 2, 3, "naive")
    x.requires_grad_(True)
    (gx,) = torch.autograd.grad(xcorr.xcorr(x, z, method="fft").sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(gx.sum(), x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_gradient_of_one_input_only(method, mode):
    # Each input's gradient alone (the backward skips the other), against the float64 reference.
    x, z = make(2, 2, 2, 2, 8, 8, 3, 3, mode)
    weight = torch.randn(xcorr_reference(x, z, mode).shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    expected = xcorr_reference_grads(x, z, mode, weight)
    for i in range(2):
        inputs = [x.clone(), z.clone()]
        inputs[i].requires_grad_(True)
        (grad,) = torch.autograd.grad((xcorr.xcorr(*inputs, mode, method=method) * weight).sum(), inputs[i])
        assert_close_rel(grad, expected[i])


def test_long_axes_are_tiled():
    n, T, L = fft.axis_plan(2000, 5)
    assert n > 1 and T == L < 2000 and n * (T - 5 + 1) >= 2000 - 5 + 1
    assert fft.axis_plan(22, 6) == (1, 22, 24)  # short: one transform at a fast length


@pytest.mark.parametrize("mode", MODES)
def test_overlap_save_tiles(mode, monkeypatch):
    # Tiles of 12 (odd leftovers at both axes' ends), with padding, stride and dilation.
    monkeypatch.setattr(fft, "tile_length", lambda padded, span: min(padded, 12))
    assert fft.axis_plan(40, 5) == (5, 12, 12)
    x, z = make(2, 1, 2, 2, 37, 30, 3, 4, mode)
    kw = dict(padding=(1, 2), stride=(2, 1), dilation=(2, 1))
    out = xcorr.xcorr(x, z, mode, method="fft", **kw)
    assert_close_rel(out, xcorr_reference(x, z, mode, **kw))
    x.requires_grad_(True)
    z.requires_grad_(True)
    f = lambda x, z: xcorr.xcorr(x, z, mode, method="fft", **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)


# Chunk budgets in search maps (one map: 12 x 6 bins of complex128): one channel of one item,
# two channels, one item (a template's k = 2 items are then split for Bz = 2), three items
# (balanced: the 4 items go in two chunks of 2, one template each for Bz = 2).
CHUNK_MAPS = [1, 2, 3, 9]


@pytest.mark.parametrize("maps", CHUNK_MAPS)
@pytest.mark.parametrize("Bz", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_chunks_of_items_and_channels(mode, Bz, maps, monkeypatch):
    x, z = make(4, Bz, 3, 2, 9, 8, 3, 3, mode)
    spec = xcorr.correlation.spec.check_xcorr(x, z, mode, 1, 1, 1)
    assert fft.axis_plan(11, 3)[2] == 12  # the padded 11x10 search is transformed at 12 x 10
    monkeypatch.setattr(fft, "CHUNK_BYTES", maps * 12 * 6 * 16)
    monkeypatch.setattr(fft, "LARGE_MAP_CHUNK_BYTES", maps * 12 * 6 * 16)
    if mode == "upchannel":  # whole items, under a budget of its own
        monkeypatch.setattr(fft, "UPCHANNEL_CHUNK_BYTES", 1 if maps < 9 else 1 << 30)
        items, channels = fft.chunk_plan(spec)
        assert channels == 3 and (items == 1 if maps < 9 else items >= 4)
    else:
        assert fft.chunk_plan(spec) == ((1, 1), (1, 2), (1, 3), (2, 3))[CHUNK_MAPS.index(maps)]
    out = xcorr.xcorr(x, z, mode, padding=1, method="fft")
    assert_close_rel(out, xcorr_reference(x, z, mode, 1))
    p = xcorr.plan(z, x.shape, mode, padding=1, method="fft")
    assert_close_rel(p(x), xcorr_reference(x, z, mode, 1))
    x.requires_grad_(True)
    z.requires_grad_(True)
    f = lambda x, z: xcorr.xcorr(x, z, mode, padding=1, method="fft")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)


# Up-channel output groups: at most one map per group, two, and four (of the five: even groups of 3
# and 2); 3-row templates on 9 rows (they take rfft2) and 6-row ones on 48 (few rows: their rows'
# transforms are placed in zeros made once).
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("Bz", [1, 2, 4])  # 4: one item per template (the product in place for C = 1)
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("rows, h", [(9, 3), (48, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upchannel_output_groups(group, Bz, C, rows, h, dtype, monkeypatch):
    """Without gradients, few search channels against many templates transform the search once
    and the templates group by group; every geometry agrees with the reference, eager and
    planned, and a backward pass takes the whole product."""
    x, z = make(4, Bz, C, 5, rows, 8, h, 3, "upchannel")
    x, z = x.to(dtype), z.to(dtype)
    kw = dict(padding=(1, 1), stride=(1, 2), dilation=(1, 1))
    spec = xcorr.correlation.spec.check_xcorr(x, z, "upchannel", (1, 1), (1, 2), 1)
    layout = fft.Layout.of(spec)
    assert layout.n == (1, 1) and (h <= fft.FEW_TEMPLATE_ROWS * layout.L[0]) == (rows == 48)
    per_map = layout.L[0] * (layout.L[1] // 2 + 1) * 2 * x.element_size()
    monkeypatch.setattr(fft, "CHUNK_BYTES", group * C * per_map)
    assert fft._output_groups(spec, layout, grad=True) == 0
    assert fft._output_groups(spec, layout, grad=False) == {1: 1, 2: 2, 4: 3}[group]  # 5 maps, even parts
    calls = []
    grouped = fft._upchannel_groups
    monkeypatch.setattr(fft, "_upchannel_groups", lambda *a: calls.append(a[-1]) or grouped(*a))
    expected = xcorr_reference(x.double(), z.double(), "upchannel", **kw).to(dtype)
    assert_close_rel(xcorr.xcorr(x, z, "upchannel", method="fft", **kw), expected)
    p = xcorr.plan(z, x.shape, "upchannel", method="fft", **kw)
    assert_close_rel(p(x), expected)
    assert calls and set(calls) == {fft._output_groups(spec, layout, grad=False)}
    big = dict(padding=(1, 1), stride=(1, 2), dilation=(2, 1))  # dilated taps, spread once
    assert_close_rel(
        xcorr.xcorr(x, z, "upchannel", method="fft", **big),
        xcorr_reference(x.double(), z.double(), "upchannel", **big).to(dtype),
    )
    if dtype == torch.float64:
        x.requires_grad_(True)
        z.requires_grad_(True)
        calls.clear()
        f = lambda x, z: xcorr.xcorr(x, z, "upchannel", method="fft", **kw)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)
        assert not calls


@pytest.mark.parametrize("n, most", [(256, 15), (64, 63), (64, 64), (10, 3), (3, 5), (7, 1)])
def test_channel_chunks_are_even(n, most):
    parts = fft._even_slices(n, most)
    sizes = [p.stop - p.start for p in parts]
    assert [i for p in parts for i in range(n)[p]] == list(range(n))  # every channel once, in order
    assert len(parts) == -(-n // most) and max(sizes) <= most and max(sizes) - min(sizes) <= 1


def test_chunks_are_even():
    cases = {(64, 63): 32, (64, 64): 64, (64, 65): 64, (10, 3): 3, (8, 12): 8, (0, 5): 1}
    assert {case: fft._even(*case) for case in cases} == cases


@pytest.mark.parametrize("Bz", [1, 2, 4])
def test_item_chunks_keep_templates_with_their_items(Bz):
    x, z = make(4, Bz, 1, 1, 5, 5, 2, 2, "naive")
    spec = xcorr.correlation.spec.check_xcorr(x, z, "naive", 0, 1, 1)
    for per in (1, 2, 3, 4, 5):
        chunks = fft._item_chunks(spec, per)
        items = [i for c, _ in chunks for i in range(4)[c]]
        assert items == [0, 1, 2, 3]  # every item once, in order
        for c, t in chunks:
            items, templates = list(range(4)[c]), list(range(Bz)[t])
            assert len(items) <= per
            # the chunk's templates are exactly those of its items, and item i is served by i // k
            assert sorted({i // spec.k for i in items}) == templates
            assert [templates.index(i // spec.k) for i in items] == [
                j // (len(items) // len(templates)) for j in range(len(items))
            ]


@pytest.mark.parametrize("items", [1, 2, 3])
@pytest.mark.parametrize("Bz", [1, 2])
@pytest.mark.parametrize("mode", ["naive", "upchannel"])
def test_gather_chunks_of_items(mode, Bz, items, monkeypatch):
    from xcorr.correlation.backends import gather

    K = 2 if mode == "upchannel" else 1
    per_item = K * 3 * 3 * 11 * 10 * 8  # float64 maps: K x 3 x 3 taps x the padded 11 x 10 search
    monkeypatch.setattr(gather, "CHUNK_BYTES", items * per_item)
    calls = []
    inner = gather._correlate_chunk
    monkeypatch.setattr(gather, "_correlate_chunk", lambda x, *args: calls.append(x.shape[0]) or inner(x, *args))
    x, z = make(4, Bz, 3, K, 9, 8, 3, 3, mode)
    out = xcorr.xcorr(x, z, mode, padding=1, method="gather")
    assert_close_rel(out, xcorr_reference(x, z, mode, 1))
    # One template: `items` items a chunk. Two templates (k = 2): whole templates with their items.
    expected = {(1, 1): [1, 1, 1, 1], (1, 2): [2, 2], (1, 3): [3, 1], (2, 1): [2, 2], (2, 2): [2, 2], (2, 3): [2, 2]}
    assert calls == expected[Bz, items]
    x.requires_grad_(True)
    z.requires_grad_(True)
    f = lambda x, z: xcorr.xcorr(x, z, mode, padding=1, method="gather")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, z), fast_mode=True)


def test_large_maps_keep_naive_channels_together():
    # One 1024x1024 spectrum (1024 x 513 bins of complex64, 4.2 MB) passes CHUNK_BYTES alone:
    # naive mode keeps an RGB image's channels in one chunk (one inverse transform), depthwise
    # mode transforms every channel back anyway and keeps its small chunks.
    x, z = torch.empty(2, 3, 1024, 1024, device="meta"), torch.empty(1, 3, 48, 48, device="meta")
    assert fft.chunk_plan(xcorr.correlation.spec.check_xcorr(x, z, "naive", 0, 1, 1)) == (1, 3)
    assert fft.chunk_plan(xcorr.correlation.spec.check_xcorr(x, z, "depthwise", 0, 1, 1)) == (1, 1)
    many = torch.empty(1, 16, 1024, 1024, device="meta")
    assert fft.chunk_plan(
        xcorr.correlation.spec.check_xcorr(many, torch.empty(1, 16, 48, 48, device="meta"), "naive", 0, 1, 1)
    ) == (1, 4)


def test_chunk_size_follows_the_budget(monkeypatch):
    spec = xcorr.correlation.spec.check_xcorr(torch.empty(64, 8, 100, 100), torch.empty(64, 8, 9, 9), "naive", 0, 1, 1)
    # 100 x 51 bins of complex64: 40.8 kB a map, 102 maps (12 items) a chunk at most: 6 chunks of 11
    assert fft.chunk_plan(spec) == (11, 8)
    monkeypatch.setattr(fft, "CHUNK_BYTES", 1 << 30)
    assert fft.chunk_plan(spec)[0] >= 64


@pytest.mark.parametrize("n", [1, 7, 11, 13, 97, 255, 1000])
def test_fast_lengths(n):
    m = fft.next_fast_len(n)
    assert m >= n
    r = m
    for p in (2, 3, 5, 7):
        while r % p == 0:
            r //= p
    assert r == 1
    assert all(fft.next_fast_len(k) != k for k in range(n, m))


@pytest.mark.parametrize("mode", ["naive", "upchannel", "depthwise"])
@pytest.mark.parametrize("Bz", [1, 3])
def test_gather_bound_to_a_signature_equals_its_plain_form(mode, Bz, monkeypatch):
    from xcorr.correlation.backends import gather

    x, z = make(3, Bz, 2, 2, 9, 8, 3, 2, mode)
    for padding, chunk in ((0, gather.CHUNK_BYTES), (1, gather.CHUNK_BYTES), (1, 1)):  # 1 byte: chunks
        monkeypatch.setattr(gather, "CHUNK_BYTES", chunk)
        spec = xcorr.correlation.spec.check_xcorr(x, z, mode, padding, 1, 1)
        run = gather.BACKEND.bind(spec, False)
        assert torch.equal(run(x, z), gather.correlate(x, z, spec))
        assert_close_rel(run(x, z), xcorr_reference(x, z, mode, padding))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("Bz", [1, 3])
def test_direct_bound_to_a_signature_equals_its_plain_form(mode, Bz):
    from xcorr.correlation.backends import direct

    x, z = make(3, Bz, 2, 2, 9, 8, 3, 2, mode)
    spec = xcorr.correlation.spec.check_xcorr(x, z, mode, (1, 0), (2, 1), (1, 2))
    run = direct.BACKEND.bind(spec, False)
    assert torch.equal(run(x, z), direct.correlate(x, z, spec))
    assert_close_rel(run(x, z), xcorr_reference(x, z, mode, (1, 0), (2, 1), (1, 2)))
    # Bound for a backward pass, it takes the plain form, custom backward included.
    x.requires_grad_(True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(direct.BACKEND.bind(spec, True), (x, z), fast_mode=True)
