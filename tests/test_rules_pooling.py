"""DS001: pooling whose kernel is the export-time size of the axis it pools."""

from __future__ import annotations

import models as M
import onnx
import pytest
from onnx import helper

from dynashape.backends.ort import RunError
from dynashape.check import check_model
from dynashape.testing import assert_models_equivalent

S0 = {"x": (1, 4, 64, 96)}
OTHER_SHAPES = [(2, 4, 32, 48), (1, 4, 100, 30), (3, 4, 64, 96)]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _ds001(report) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {f.node: f for f in report.findings if f.rule == "DS001"}


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
@pytest.mark.parametrize("given", [True, False], ids=["export_shape", "estimated"])
def test_strip_pooling_h1_and_1w(op: str, opset: int, given: bool) -> None:
    model = M.strip_pool(64, 96, op=op, opset=opset)
    report = check_model(model, export_shape=S0 if given else None)
    # both strip kernels are anchors: the estimate recovers the non-square export shape
    assert report.export_shape == S0
    assert report.export_shape_source == ("given" if given else "estimated")
    found = _ds001(report)
    assert sorted(found) == ["pool_h", "pool_w"]
    h, w = found["pool_h"], found["pool_w"]
    assert (h.severity, h.op, h.detected_by, h.fixable) == ("error", op, "static", True)
    assert h.baked_value == {"2": 64} and w.baked_value == {"3": 96}
    assert h.details == {"pooled_axes": [2], "global": False}
    assert w.details == {"pooled_axes": [3], "global": False}
    assert "kernel [64, 1] equals the export-time size of axis 2 of its input (1x4x64x96)" in h.message
    reduce_op = {"AveragePool": "ReduceMean", "MaxPool": "ReduceMax"}[op]
    assert report.applied == [
        f"pool_h: {op} kernel [64, 1] -> {reduce_op} over axes [2]",
        f"pool_w: {op} kernel [1, 96] -> {reduce_op} over axes [3]",
    ]

    fixed = report.fixed_model
    assert op not in _ops(fixed)
    reduces = [n for n in fixed.graph.node if n.op_type == reduce_op]
    assert len(reduces) == 2
    for node in reduces:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["keepdims"] == 1
        if opset >= 18:  # axes moved from an attribute to an input in opset 18
            assert "axes" not in attrs and len(node.input) == 2
        else:
            assert attrs["axes"] in ([2], [3]) and len(node.input) == 1
    assert_models_equivalent(model, fixed, S0)
    reference = M.strip_pool(64, 96, op=op, opset=opset, reference=True)
    for shape in OTHER_SHAPES:
        M.assert_same_outputs(fixed, reference, shape, expected_shape=shape)


def test_the_original_strip_pool_breaks_off_the_export_shape() -> None:
    model = M.strip_pool(64, 96)
    M.run(model, S0["x"])
    with pytest.raises(RunError):  # [1,4,2,96] + [1,4,128,1]: the attention add fails
        M.run(model, (1, 4, 128, 96))


@pytest.mark.parametrize(("axes", "node", "axis", "size"), [("h", "pool_h", 2, 64), ("w", "pool_w", 3, 96)])
@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_single_strip(axes: str, node: str, axis: int, size: int, op: str) -> None:
    model = M.strip_pool(64, 96, op=op, axes=axes)
    reference = M.strip_pool(64, 96, op=op, axes=axes, reference=True)
    for export_shape in (S0, None):
        report = check_model(model, export_shape=export_shape)
        # estimated: one kernel speaks for one axis; the other is taken square
        assert report.export_shape["x"][axis] == size
        assert [(f.rule, f.node) for f in report.findings] == [("DS001", node)]
        assert report.findings[0].details["pooled_axes"] == [axis]
        assert_models_equivalent(model, report.fixed_model, S0)
        for shape in OTHER_SHAPES:
            M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=shape)


@pytest.mark.parametrize(("op", "global_op"), [("AveragePool", "GlobalAveragePool"), ("MaxPool", "GlobalMaxPool")])
@pytest.mark.parametrize("given", [True, False], ids=["export_shape", "estimated"])
def test_whole_map_pooling_becomes_global(op: str, global_op: str, given: bool) -> None:
    model = M.whole_map_pool(64, 96, op=op)
    report = check_model(model, export_shape=S0 if given else None)
    assert report.export_shape == S0
    (finding,) = [f for f in report.findings if f.rule == "DS001"]
    assert finding.node == "pool"
    assert finding.details == {"pooled_axes": [2, 3], "global": True}
    assert finding.baked_value == {"2": 64, "3": 96}
    assert finding.fix == f"replace with {global_op}"
    assert global_op in _ops(report.fixed_model) and op not in _ops(report.fixed_model)
    assert_models_equivalent(model, report.fixed_model, S0)
    reference = M.whole_map_pool(64, 96, op=op, reference=True)
    for shape in OTHER_SHAPES:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 8))
    # unfixed, a larger map gives a 2x1 pooled map: the classifier's width doubles
    assert M.run(model, (1, 4, 128, 96))[M.Y].shape == (1, 16)


@pytest.mark.parametrize("export_shape", [S0, {"x": (1, 4, 2, 2)}, None])
def test_ordinary_pooling_is_not_flagged(export_shape: dict | None) -> None:
    # at 1x4x2x2 the 2x2 MaxPool covers the whole map: still ordinary downsampling
    model = M.ordinary_pooling()
    report = check_model(model, export_shape=export_shape)
    assert [f for f in report.findings if f.rule == "DS001"] == []
    assert report.applied == []
    refused = {r.node: r.reason for r in report.refusals if r.rule == "DS001"}
    assert set(refused) == {"maxpool2", "avgpool3", "maxpool3s2"}
    if export_shape == S0:
        assert "ordinary windowed pooling" in refused["maxpool2"]
    assert _ops(report.fixed_model) == _ops(model)


def test_two_by_two_pool_on_a_two_by_two_map_at_a_small_export_shape() -> None:
    # six MaxPool 2x2/2 at a 64x64 export: the last one pools a 2x2 map with a 2x2 window. A
    # GlobalMaxPool "fix" would be wrong at 128x128 (2x2 output, not 1x1).
    g = M.GraphBuilder()
    cur = M.X
    for i in range(6):
        cur = g.op("MaxPool", [cur], f"down{i}" if i < 5 else M.Y, kernel_shape=[2, 2], strides=[2, 2])
    model = g.model([M.Y])
    report = check_model(model, export_shape={"x": (1, 4, 64, 64)})
    assert [f.rule for f in report.findings] == []
    assert report.applied == []


def test_padded_whole_axis_pool_is_reported_but_not_rewritten() -> None:
    g = M.GraphBuilder()
    g.op("AveragePool", [M.X], M.Y, kernel_shape=[64, 1], strides=[64, 1], pads=[1, 0, 1, 0])
    model = g.model([M.Y])
    report = check_model(model, export_shape=S0)
    (finding,) = report.findings
    assert (finding.rule, finding.node, finding.fixable) == ("DS001", M.Y, False)
    assert "it pads ([1, 0, 1, 0])" in finding.fix
    assert report.applied == [] and _ops(report.fixed_model) == ["AveragePool"]


def test_global_average_pool_and_reduce_mean_are_not_flagged() -> None:
    g = M.GraphBuilder()
    gap = g.op("GlobalAveragePool", [M.X], "gap")
    mean = g.reduce("ReduceMean", M.X, [2], "mean_h")
    g.op("Add", [gap, mean], M.Y)
    report = check_model(g.model([M.Y]), export_shape=S0)
    assert report.findings == [] and report.applied == []
