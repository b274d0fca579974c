"""DS016: what TensorRT 8.5 rejects at any shape — BatchNormalization in training mode, conv
weights computed in the graph.

HF BiT standardizes its conv weights with ``F.batch_norm(weight, training=True)``: on the H200 the
parser rejected the training-mode node, and once that was folded alone the build failed on the
computed weights ("Cask convolution isConsistent"). The weights are constants only, the same at
every size: they fold into initializers. A training-mode BatchNormalization of data is reported.
"""

from __future__ import annotations

import io

import models as M
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dynashape.backends.ort import run_model
from dynashape.pipeline.check import check_model
from dynashape.pipeline.fix import fix_model
from dynashape.testing import assert_models_equivalent


def _ds016(report):  # type: ignore[no-untyped-def]
    return [f for f in report.findings if f.rule == "DS016" and f.op == "BatchNormalization"]


def _bn_on_input(training: int) -> onnx.ModelProto:
    """x -> BatchNormalization(training_mode) -> y: statistics of the data itself."""
    c = M.C
    inits = [numpy_helper.from_array(np.ones(c, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(c, np.float32), "bias"),
             numpy_helper.from_array(np.zeros(c, np.float32), "mean"),
             numpy_helper.from_array(np.ones(c, np.float32), "var")]
    outputs = ["y", "run_mean", "run_var"] if training else ["y"]  # training mode has all three
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], outputs, name="bn",
                            training_mode=training)
    graph = helper.make_graph(
        [node], "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.torch
def test_weight_standardization_in_training_mode_is_folded_into_the_weight() -> None:
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class StdConv(nn.Conv2d):  # the way HF BiT's WeightStandardizedConv2d writes it
        def forward(self, x):  # type: ignore[no-untyped-def]
            w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                             momentum=0.0, eps=1e-8).reshape_as(self.weight)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    torch.manual_seed(0)
    net = nn.Sequential(StdConv(3, 8, 3, padding=1), nn.ReLU(), StdConv(8, 4, 3, padding=1)).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})
    model = onnx.load_from_string(buf.getvalue())
    assert [n.attribute for n in model.graph.node if n.op_type == "BatchNormalization"]
    s0 = {"x": (1, 3, 32, 32)}
    result = fix_model(model, export_shape=s0)
    found = [f for f in result.report.findings if f.rule == "DS016"]
    assert [f.op for f in found] == ["Conv", "Conv"] and all(f.fixable for f in found)
    assert "weights" in found[0].message
    inits = {t.name for t in result.fixed.graph.initializer}
    convs = [n for n in result.fixed.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in inits for n in convs)  # weights are initializers now
    assert not [n for n in result.fixed.graph.node if n.op_type == "BatchNormalization"]
    assert result.rolled_back == []
    assert_models_equivalent(model, result.fixed, s0)
    for shape in [(2, 3, 40, 24), (1, 3, 17, 33)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = net(x).numpy()
        (got,) = run_model(result.fixed, {"x": x.numpy()}).values()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_training_mode_batchnorm_of_a_constant_is_folded() -> None:
    # a standardized table added to the data (not a conv weight): the BatchNormalization rule folds it
    c = M.C
    table = numpy_helper.from_array(np.arange(2 * c * 3, dtype=np.float32).reshape(1, c, 6) ** 1.5, "table")
    inits = [table, numpy_helper.from_array(np.ones(c, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(c, np.float32), "bias"),
             numpy_helper.from_array(np.zeros(c, np.float32), "mean"),
             numpy_helper.from_array(np.ones(c, np.float32), "var"),
             numpy_helper.from_array(np.array([1, c, 1, 6], np.int64), "shape4")]
    nodes = [helper.make_node("BatchNormalization", ["table", "scale", "bias", "mean", "var"],
                              ["std", "run_mean", "run_var"], name="bn", training_mode=1),
             helper.make_node("Reshape", ["std", "shape4"], ["std4"], name="std4"),
             helper.make_node("Add", ["x", "std4"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "bn_const", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, "H", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, "H", 6])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    s0 = {"x": (1, c, 5, 6)}
    result = fix_model(model, export_shape=s0)
    (finding,) = _ds016(result.report)
    assert finding.fixable and finding.severity == "warning"
    assert not [n for n in result.fixed.graph.node if n.op_type == "BatchNormalization"]
    assert_models_equivalent(model, result.fixed, s0)
    assert_models_equivalent(model, result.fixed, {"x": (3, c, 9, 6)})


def test_batch_statistics_of_data_are_reported_not_folded() -> None:
    report = check_model(_bn_on_input(1), export_shape={"x": (2, M.C, 8, 8)})
    (finding,) = _ds016(report)
    assert (finding.fixable, finding.severity) == (False, "error")
    assert "training_mode=1" in finding.message and "eval mode" in finding.fix
    assert report.applied == []


def test_batchnorm_in_inference_mode_is_left_alone() -> None:
    report = check_model(_bn_on_input(0), export_shape={"x": (1, M.C, 8, 8)})
    assert _ds016(report) == []
    assert any(r.rule == "DS016" and "inference mode" in r.reason for r in report.refusals)
