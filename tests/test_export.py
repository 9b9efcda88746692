"""ONNX export of xcorr with a dynamic batch, checked with onnxruntime at other batch sizes.

Both exporters of torch.onnx are covered: the torch.export-based one (``dynamo=True``, the
default since PyTorch 2.9, needs onnxscript) and the TorchScript-based one (``dynamo=False``).
"""

import copy
import io
import warnings

import pytest
import torch

import xcorr
from xcorr._tracing import exporting
from xcorr.correlation.family import CORRELATION
from xcorr.planning.engine import ENGINE

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

EXPORT_BATCH, CHECK_BATCHES = 2, (5, 1)


class Correlate(torch.nn.Module):
    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x, z):
        return self.fn(x, z, **self.kwargs)


GEOMETRY = dict(padding=(1, 0), stride=(1, 2), dilation=(2, 1))

# name: (module, x's shape and z's shape without the batch, whether z has one shared template)
CASES = {
    "xcorr-naive": (Correlate(xcorr.xcorr, mode="naive", **GEOMETRY), (4, 13, 12), (4, 3, 3), False),
    "xcorr-depthwise": (Correlate(xcorr.xcorr, mode="depthwise", **GEOMETRY), (4, 13, 12), (4, 3, 3), False),
    "xcorr-upchannel": (Correlate(xcorr.xcorr, mode="upchannel", **GEOMETRY), (4, 13, 12), (8, 3, 3), False),
    "xcorr-naive-shared": (Correlate(xcorr.xcorr, mode="naive"), (4, 11, 11), (4, 5, 4), True),
    "xcorr-depthwise-shared": (Correlate(xcorr.xcorr, mode="depthwise"), (4, 11, 11), (4, 5, 4), True),
    "xcorr-upchannel-shared": (Correlate(xcorr.xcorr, mode="upchannel"), (4, 11, 11), (12, 5, 4), True),
    "pixelwise": (Correlate(xcorr.pixelwise), (4, 9, 10), (4, 3, 2), False),
    "SiamFCHead": (xcorr.SiamFCHead(), (16, 22, 22), (16, 6, 6), False),
    "UpChannelHead": (xcorr.UpChannelHead(in_channels=16, anchors=2), (16, 22, 22), (16, 6, 6), False),
    "DepthwiseXCorrHead": (xcorr.DepthwiseXCorrHead(16, 16, 4), (16, 31, 31), (16, 7, 7), False),
}


def inputs(case, batch, seed=0):
    _, x_shape, z_shape, shared = CASES[case]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *x_shape, generator=g), torch.randn(1 if shared else batch, *z_shape, generator=g)


def export(module, args, shared, dynamo):
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if dynamo:
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                verbose=False,
                input_names=["x", "z"],
                dynamic_shapes=({0: batch}, None if shared else {0: batch}),
            )
            return program.model_proto
        f = io.BytesIO()
        axes = {"x": {0: "batch"}} if shared else {"x": {0: "batch"}, "z": {0: "batch"}}
        torch.onnx.export(module, args, f, dynamo=False, input_names=["x", "z"], dynamic_axes=axes)
        return onnx.load_from_string(f.getvalue())


def node_types(model):
    return sorted({node.op_type for node in model.graph.node})


def runtime_weight_convs(model):
    """The Conv/ConvTranspose nodes whose weight is neither an initializer nor a Constant's output."""
    found = []

    def walk(nodes, constants):
        constants = constants | {out for node in nodes if node.op_type == "Constant" for out in node.output}
        for node in nodes:
            if node.op_type in ("Conv", "ConvTranspose") and node.input[1] not in constants:
                found.append(node.name or node.op_type)
            for attribute in node.attribute:
                for graph in [attribute.g, *attribute.graphs]:
                    walk(graph.node, constants | {t.name for t in graph.initializer})

    walk(model.graph.node, {t.name for t in model.graph.initializer})
    for function in model.functions:
        walk(function.node, set())
    return found


def run_onnx(model, x, z):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, dict(zip(names, (x.numpy(), z.numpy()))))
    return [torch.from_numpy(o) for o in outputs]


def expected(case, x, z):
    module = copy.deepcopy(CASES[case][0]).double().eval()
    with torch.no_grad():
        out = module(x.double(), z.double())
    return list(out) if isinstance(out, tuple) else [out]


def relative_error(actual, wanted):
    return ((actual.double() - wanted).abs().max() / wanted.abs().max()).item()


@pytest.fixture(params=["dynamo", "torchscript"])
def dynamo(request):
    if request.param == "dynamo":
        pytest.importorskip("onnxscript")
    return request.param == "dynamo"


@pytest.mark.parametrize("case", CASES)
def test_export_with_dynamic_batch(case, dynamo):
    module, _, _, shared = CASES[case]
    model = export(module, inputs(case, EXPORT_BATCH), shared, dynamo)
    onnx.checker.check_model(model)
    assert runtime_weight_convs(model) == [], node_types(model)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    for B in CHECK_BATCHES:
        x, z = inputs(case, B, seed=B)
        got, want = run_onnx(model, x, z), expected(case, x, z)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            assert relative_error(g, w) <= 1e-5


def test_the_graph_check_finds_a_convolution_by_the_template(dynamo):
    # What trackers export without xcorr: the template as the weight of F.conv2d.
    model = export(Correlate(torch.nn.functional.conv2d), inputs("xcorr-naive-shared", EXPORT_BATCH), True, dynamo)
    assert "Conv" in node_types(model) and runtime_weight_convs(model) != []


def test_auto_outside_export_follows_the_cost_model():
    x, z = inputs("xcorr-naive", 2)
    assert not exporting()
    spec = xcorr.correlation.spec.check_xcorr(x, z, "naive", 0, 1, 1)
    costs = ENGINE.estimate(spec)
    assert ENGINE.decide(spec) == min(CORRELATION.candidates(spec), key=costs.get)
