"""torch.compile(fullgraph=True) over xcorr: no graph break, and the same results as eager."""

import pytest
import torch
from helpers import METHODS, MODES, assert_close_rel

import xcorr

GEOMETRY = dict(padding=(1, 2), stride=(2, 1), dilation=(1, 2))


def make(mode, B=4, Bz=2, dtype=torch.float32, seed=0, h=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, 13, 12, generator=g).to(dtype)
    z = torch.randn(Bz, 6 if mode == "upchannel" else 3, h, 4, generator=g).to(dtype)
    return x, z


@pytest.fixture(autouse=True)
def _fresh_dynamo_for_every_test(fresh_dynamo):
    """Every test here compiles: each starts and ends with dynamo's caches empty."""


def method_in(graph):
    """The method a Dynamo graph runs, told by its calls: FFTs, a convolution, or neither (gather).

    A custom autograd function (the direct and FFT backward passes) is a subgraph of its own.
    """
    targets = [
        str(node.target)
        for module in graph.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
        if node.op == "call_function"
    ]
    if any("fft" in t for t in targets):
        return "fft"
    return "direct" if any("conv" in t for t in targets) else "gather"


class Recording:
    """A ``torch.compile`` backend that keeps each graph Dynamo captures, then runs it with ``then``."""

    def __init__(self, then="aot_eager"):
        self.graphs, self.then = [], then

    def __call__(self, graph, example_inputs):
        self.graphs.append(graph)
        return torch._dynamo.lookup_backend(self.then)(graph, example_inputs)


@pytest.mark.parametrize("mode", MODES)
def test_inductor_fullgraph_matches_eager(mode):
    def f(x, z):
        return xcorr.xcorr(x, z, mode, **GEOMETRY)

    compiled = torch.compile(f, fullgraph=True)
    for seed, (B, Bz) in enumerate([(4, 2), (3, 1)]):
        x, z = make(mode, B, Bz, seed=seed)
        assert_close_rel(compiled(x, z), f(x, z))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_every_method_traces_without_graph_break_forward_and_backward(mode, method):
    def f(x, z):
        return xcorr.xcorr(x, z, mode, method=method, **GEOMETRY).square().sum()

    backend = Recording()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    x, z = make(mode, dtype=torch.float64)
    xc, zc = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
    xe, ze = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
    compiled(xc, zc).backward()
    f(xe, ze).backward()
    (graph,) = backend.graphs
    assert method_in(graph) == (xcorr.choose_method(xe, ze, mode, **GEOMETRY) if method == "auto" else method)
    assert_close_rel(xc.grad, xe.grad)
    assert_close_rel(zc.grad, ze.grad)


def test_dynamic_shapes_follow_the_planner():
    def f(x, z):
        return xcorr.xcorr(x, z, "depthwise")

    backend = Recording(then="eager")
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=backend)
    # A small template (direct) and one past DIRECT_MAX_TAPS_FLOAT32 (FFT): the planner's choice
    # is a guard, so the larger template compiles a graph of its own, with the planner's method.
    for h, method in ((3, "direct"), (33, "fft")):
        x, z = torch.randn(2, 3, 40, 40), torch.randn(2, 3, h, h)
        assert xcorr.choose_method(x, z, "depthwise") == method
        assert_close_rel(compiled(x, z), f(x, z))
        assert method_in(backend.graphs[-1]) == method
    assert len(backend.graphs) == 2


def test_pixelwise_and_heads_compile_without_graph_break():
    head = xcorr.DepthwiseXCorrHead(4, 4, 2).eval()
    x, z = torch.randn(2, 4, 11, 11), torch.randn(2, 4, 5, 5)

    def f(x, z):
        return head(x, z), xcorr.pixelwise(x, z), xcorr.SiamFCHead()(x, z), xcorr.XCorr("depthwise")(x, z)

    for got, want in zip(torch.compile(f, fullgraph=True, backend="aot_eager")(x, z), f(x, z)):
        assert_close_rel(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["direct", "fft", "gather"])
def test_half_precision_compiles(method, dtype):
    def f(x, z):
        return xcorr.xcorr(x, z, "upchannel", method=method)

    x, z = make("upchannel", dtype=dtype)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, z)
    assert out.dtype == dtype
    assert_close_rel(out, f(x, z))


@pytest.mark.parametrize("mode", MODES)
def test_torch_export_traces_the_exportable_method(mode):
    def targets(program):
        return {str(node.target) for node in program.graph.nodes if node.op == "call_function"}

    x, z = make(mode, B=2, Bz=2)
    batch = torch.export.Dim("batch")
    program = torch.export.export(XCorrModule(mode), (x, z), dynamic_shapes=({0: batch}, {0: batch}))
    assert not any("conv" in t for t in targets(program))
    x3, z3 = make(mode, B=3, Bz=3, seed=3)
    assert_close_rel(program.module()(x3, z3), xcorr.xcorr(x3, z3, mode, **GEOMETRY))
    # A method asked for explicitly is kept while exporting.
    direct = torch.export.export(XCorrModule(mode, method="direct"), (x, z))
    assert any("conv" in t for t in targets(direct))


class XCorrModule(torch.nn.Module):
    def __init__(self, mode, method="auto"):
        super().__init__()
        self.mode, self.method = mode, method

    def forward(self, x, z):
        return xcorr.xcorr(x, z, self.mode, method=self.method, **GEOMETRY)
