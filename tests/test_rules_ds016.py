"""DS016: inputs TensorRT needs as constants (TopK K, Slice/Reduce axes) computed by nodes, and
Resize modes TensorRT does not implement. Computed from constants only: folded into an
initializer, exactly; computed from Shape/Size, or an unsupported mode: an error, not rewritten."""

from __future__ import annotations

from typing import Any

import models_reports as R
import onnx
import pytest
from onnx import numpy_helper

from dynashape.pipeline.check import check_model
from dynashape.pipeline.fix import fix_model
from dynashape.testing import assert_models_equivalent

S0: dict[str, tuple[int, ...]] = {"x": (1, 4, 32, 32)}
OTHER = [(2, 4, 24, 40), (1, 4, 17, 9)]


def _ds016(report: Any) -> list[Any]:
    return [f for f in report.findings if f.rule == "DS016"]


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.name == name]
    return node


@pytest.mark.parametrize(("model", "node", "op", "slot", "value", "gone"), [
    (R.topk("folded"), "topk", "TopK", 1, [5], "Add"),
    (R.slice_axes(computed=True), "crop", "Slice", 3, [2], "Add"),
])
def test_constant_subgraph_is_folded_into_an_initializer(model: onnx.ModelProto, node: str, op: str, slot: int,
                                                        value: list[int], gone: str) -> None:
    before = model.SerializeToString()
    report = check_model(model, export_shape=S0)
    (f,) = _ds016(report)
    assert (f.rule, f.node, f.op, f.severity, f.fixable) == ("DS016", node, op, "warning", True)
    result = fix_model(model, export_shape=S0)
    assert len(result.applied) == 1 and result.applied[0].startswith(f"{node}:")
    assert not [u for u in result.unfixed if u.rule == "DS016"]
    fixed = result.fixed
    folded = _node(fixed, node).input[slot]
    inits = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}
    assert folded in inits, f"{op} input {slot} is {folded!r}, not an initializer"
    assert inits[folded].reshape(-1).tolist() == value
    assert gone not in {n.op_type for n in fixed.graph.node}
    for shape in [S0["x"], *OTHER]:
        assert_models_equivalent(model, fixed, {"x": shape}, atol=0.0)
    assert model.SerializeToString() == before
    # the fixed model has nothing left for DS016
    assert _ds016(check_model(fixed, export_shape=S0)) == []


@pytest.mark.parametrize(("model", "node", "op", "what"), [
    (R.topk("shape"), "topk", "TopK", "K (k_from_shape) is not a constant"),
    (R.reduce_axes_from_shape(), "mean", "ReduceMean", "axes (last_axis) is not a constant"),
    (R.resize_mode("cubic"), "up", "Resize", "mode 'cubic'"),
    (R.resize_mode("linear", antialias=1), "up", "Resize", "antialias=1"),
])
def test_what_cannot_be_folded_is_an_error_left_alone(model: onnx.ModelProto, node: str, op: str, what: str) -> None:
    report = check_model(model, export_shape=S0)
    (f,) = _ds016(report)
    assert (f.rule, f.node, f.op, f.severity, f.fixable) == ("DS016", node, op, "error", False)
    assert what in f.message
    result = fix_model(model, export_shape=S0)
    assert ("DS016", node) in {(u.rule, u.node) for u in result.unfixed}
    assert not [a for a in result.applied if a.startswith(f"{node}:")]
    assert_models_equivalent(model, result.fixed, S0, atol=0.0)


@pytest.mark.parametrize("model", [R.topk("initializer"), R.slice_axes(computed=False), R.resize_mode("linear"),
                                   R.resize_mode("nearest")])
def test_constants_and_supported_modes_are_not_reported(model: onnx.ModelProto) -> None:
    report = check_model(model, export_shape=S0)
    assert _ds016(report) == []
    result = fix_model(model, export_shape=S0)
    assert result.applied == []
    assert [n.op_type for n in result.fixed.graph.node] == [n.op_type for n in model.graph.node]
