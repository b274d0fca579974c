"""Small ONNX models and the GPU skip shared by the TensorRT tests (engine, bench, CLI)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@functools.lru_cache(maxsize=1)
def trt_gpu_reason() -> str | None:
    """None when TensorRT imports and cuda-python sees a GPU, else why not."""
    from dynashape.trt import compat as trt_compat
    from dynashape.trt import cudart

    reason = trt_compat.tensorrt_available()
    if reason is not None:
        return reason
    return cudart.cuda_available()


def require_trt_gpu() -> None:
    reason = trt_gpu_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def skip_gpu_tests_without_trt(request: pytest.FixtureRequest) -> None:
    """Import this into a test module: its ``gpu``-marked tests skip cleanly without TensorRT/GPU."""
    if request.node.get_closest_marker("gpu") is not None:
        require_trt_gpu()


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv_model(cin: int = 3, cout: int = 4, seed: int = 0) -> onnx.ModelProto:
    """input [N,cin,H,W] -> Conv3x3(pad 1) -> Relu -> Conv1x1 -> output [N,cout,H,W]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, cin, 3, 3)).astype(np.float32) * 0.3, "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((cout, 8, 1, 1)).astype(np.float32) * 0.3, "w2")
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["output"], name="conv2"),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", cin, "H", "W"])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", cout, "H", "W"])
    return _model(nodes, [inp], [out], [w1, b1, w2])


def two_input_model() -> onnx.ModelProto:
    """a [N,4,L], b [N,4,L] -> (a*b + 1, mean over L of a) : two inputs, two outputs."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [
        helper.make_node("Mul", ["a", "b"], ["ab"], name="mul"),
        helper.make_node("Add", ["ab", "one"], ["sum"], name="add"),
        helper.make_node("ReduceMean", ["a"], ["mean"], name="mean", axes=[2], keepdims=1),
    ]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4, "L"]) for n in ("a", "b")]
    outs = [
        helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 4, "L"]),
        helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 4, 1]),
    ]
    return _model(nodes, ins, outs, [one])


@functools.lru_cache(maxsize=1)
def _fixed_demo_bytes() -> bytes:
    from dynashape.demo import demo_onnx_path
    from dynashape.model import load_model
    from dynashape.pipeline.fix import fix_model

    return fix_model(load_model(demo_onnx_path())).fixed.SerializeToString()


def fixed_demo_model() -> onnx.ModelProto:
    """The demo as `dynashape fix` rewrites it (DS001/DS002 fixed; DS003 stays a lattice)."""
    return onnx.load_model_from_string(_fixed_demo_bytes())
