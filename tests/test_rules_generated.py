"""DS007 (tensors generated at the export size) and DS008 (feature-map buffers) joined with a
tensor that follows the input."""

from __future__ import annotations

from typing import Any

import models as M
import models_generated as G
import numpy as np
import onnx
import pytest

from dynashape.backends.ort import RunError, run_model
from dynashape.findings import Finding
from dynashape.pipeline.check import check_model
from dynashape.pipeline.fix import fix_model
from dynashape.rules.generated import GeneratedPlan, GeneratedTensor, Level
from dynashape.testing import assert_models_equivalent, random_feeds

S0 = {"x": (1, 4, 32, 48)}
OTHER = [(2, 4, 64, 96), (3, 4, 20, 36), (1, 4, 33, 17)]


def _recipe(f: Finding, operand: int = 0) -> Any:
    """How the rewrite regenerates the operand (its plan, not in the JSON)."""
    assert isinstance(f.plan, GeneratedPlan) and "plan" not in f.details["operands"][operand]
    return f.plan.operands[operand].recipe


def _rule(report: Any, rule: str) -> list[Any]:
    return [f for f in report.findings if f.rule == rule]


def _refusals(report: Any, rule: str) -> list[str]:
    return [r.reason for r in report.refusals if r.rule == rule]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# ------------------------------------------------------------------------------ DS007: fills


@pytest.mark.parametrize("join", ["Add", "Mul", "Concat"])
@pytest.mark.parametrize("source", ["initializer", "constant", "cos"])
def test_full_tensor_is_rebuilt_from_the_shape(source: str, join: str) -> None:
    model = G.add_fill(32, 48, source=source, join=join)
    report = check_model(model, export_shape=S0)
    (f,) = report.findings
    assert (f.rule, f.fixable, f.severity) == ("DS007", True, "error")
    assert (f.node, f.op) == (("fill", "ConstantOfShape") if source == "cos" else (M.Y, join))
    # a Concat also needs the batch (1 at export), an Add/Mul broadcasts it
    baked = {"2": 32, "3": 48} if join != "Concat" else {"0": 1, "2": 32, "3": 48}
    assert f.baked_value == baked
    assert "export-time size of that tensor" in f.message and f"the {join} fails" in f.message
    fixed = report.fixed_model
    assert "ConstantOfShape" in _ops(fixed)
    assert not any(list(t.dims) == [1, 4, 32, 48] for t in fixed.graph.initializer)  # the old constant is gone
    assert_models_equivalent(model, fixed, S0)
    for shape in OTHER:
        n, _, h, w = shape
        reference = G.add_fill(h, w, source=source, join=join, batch0=n if join == "Concat" else 1)
        M.assert_same_outputs(fixed, reference, shape)
    with pytest.raises(RunError):
        M.run(model, OTHER[0])


def test_full_with_the_export_batch_baked() -> None:
    s0 = {"x": (2, 4, 32, 48)}
    model = G.add_fill(32, 48, batch0=2, value=-1.0)
    report = check_model(model, export_shape=s0)
    (f,) = _rule(report, "DS007")
    assert f.baked_value == {"0": 2, "2": 32, "3": 48}
    assert _recipe(f) == {"kind": "fill", "value": -1.0, "dtype": "float32"}
    assert_models_equivalent(model, report.fixed_model, s0)
    for n, h, w in [(1, 16, 16), (3, 40, 8)]:
        M.assert_same_outputs(report.fixed_model, G.add_fill(h, w, batch0=n, value=-1.0), (n, 4, h, w))


def test_constant_of_shape_with_a_partly_constant_size() -> None:
    # torch.full((y.shape[0], 4, h, w), 0.5): the batch comes from Shape, H and W are ints
    model = G.add_fill(32, 48, source="cos_partial")
    report = check_model(model, export_shape=S0)
    (f,) = report.findings
    assert (f.rule, f.node, f.op, f.fixable) == ("DS007", "fill", "ConstantOfShape", True)
    plan = _recipe(f)
    assert plan["kind"] == "constant_of_shape" and plan["shape_s0"] == [1, 4, 32, 48]
    assert plan["entries"] == [{"keep": 0}, {"const": 4}, {"ref": "conv", "axis": 2}, {"ref": "conv", "axis": 3}]
    assert report.applied == ["fill: shape [1, 4, 32, 48] -> from Shape(conv)"]
    assert_models_equivalent(model, report.fixed_model, S0)
    for shape in OTHER:
        M.assert_same_outputs(report.fixed_model, G.add_fill(shape[2], shape[3], source="reference"), shape)


# ------------------------------------------------------------------------------ DS007: rows


@pytest.mark.parametrize(
    ("form", "source", "mode"),
    [
        ("index", "initializer", "step"),
        ("stride", "initializer", "step"),
        ("half", "initializer", "size"),
        ("linspace", "initializer", "size-1"),
        ("index", "range", "step"),
        ("stride", "range", "step"),
        ("half", "range", "size"),
    ],
)
def test_arange_rows_are_regenerated_with_range(form: str, source: str, mode: str) -> None:
    model = G.add_row(48, form=form, source=source)
    report = check_model(model, export_shape=S0)
    (f,) = report.findings
    assert (f.rule, f.fixable) == ("DS007", True)
    # with Range(0, 48, 1) in the graph the finding names that node; a folded row names the join
    assert f.node == ("arange" if source == "range" else M.Y)
    assert f.baked_value == {"0": 48}
    (operand,) = f.details["operands"]
    assert operand["meets"] == {"0": ["conv", 3]}
    (term,) = _recipe(f)["terms"]
    assert term["mode"] == mode
    fixed = report.fixed_model
    assert "Range" in _ops(fixed)
    assert_models_equivalent(model, fixed, S0, atol=1e-6)
    for shape in OTHER:
        # the builder baked at this width is right at this width
        M.assert_same_outputs(fixed, G.add_row(shape[3], form=form, source=source), shape, atol=1e-5)
    with pytest.raises(RunError):
        M.run(model, OTHER[0])


@pytest.mark.parametrize("build", [
    pytest.param(lambda: G.add_row(48, source="reference"), id="arange_from_shape"),
    pytest.param(lambda: G.add_row(48, form="half", source="reference"), id="half_cells_from_shape"),
    pytest.param(lambda: G.add_fill(32, 48, source="reference"), id="full_from_shape"),
])
def test_tensors_generated_from_the_shape_do_not_fire(build: Any) -> None:
    report = check_model(build(), export_shape=S0)
    assert report.findings == [] and report.applied == []


def test_a_computed_table_is_not_a_generated_grid() -> None:
    # sin(0.37 i): the right length for W0 but not a progression: refused, with the reason
    report = check_model(G.add_row(48, form="sin"), export_shape=S0)
    assert _rule(report, "DS007") == [] and _rule(report, "DS008") == []
    assert any("vary irregularly" in r for r in _refusals(report, "DS007"))


def test_a_learned_table_is_refused() -> None:
    report = check_model(G.learned_pos(32, 48), export_shape=S0)
    assert _rule(report, "DS007") == [] and _rule(report, "DS008") == []
    assert any("pos: its values vary irregularly" in r for r in _refusals(report, "DS008"))


def test_parameters_that_equal_an_export_size_do_not_fire() -> None:
    # 32 channels at a 32x32 export: the bias/scale/shift meet the static channel axis only
    report = check_model(G.channel_params(32), export_shape={"x": (1, 4, 32, 32)})
    assert report.findings == []
    reasons = _refusals(report, "DS007")
    assert reasons and all("no input has an axis frozen" in r for r in reasons)


def test_a_triangular_mask_is_reported_not_rewritten() -> None:
    s0 = {"x": (1, 4, 4, 6)}
    model = G.causal_mask(4, 6)
    report = check_model(model, export_shape=s0)
    (f,) = _rule(report, "DS007")  # one size (L0 = 24) twice: a mask, not a feature-map buffer
    assert (f.node, f.op, f.fixable) == (M.Y, "Where", False)
    assert f.baked_value == {"0": 24, "1": 24}
    assert f.fix.startswith("not rewritten: a bool tensor") and "make the mask at run time" in f.fix
    assert report.applied == []


# ------------------------------------------------------------------------------ DS008


@pytest.mark.parametrize("source", ["initializer", "constant"])
def test_yolo_grids_are_ds008_and_regenerated(source: str) -> None:
    model = G.yolo_grid(32, 48, source=source)
    report = check_model(model, export_shape=S0)
    by_node = {f.node: f for f in report.findings}
    assert set(by_node) == {"xy_grid", "wh_out"}
    assert all(f.rule == "DS008" and f.fixable for f in by_node.values())
    grid = by_node["xy_grid"]
    assert grid.baked_value == {"2": 32, "3": 48}
    assert "constant 'grid' (1x3x32x48x2, an index grid along axes 2, 3)" in grid.message
    assert grid.fix.startswith("regenerate it with Range(0, Shape(xy2)[2]), Range(0, Shape(xy2)[3])")
    anchors = _recipe(by_node["wh_out"])
    assert anchors["kind"] == "grid" and anchors["terms"] == []  # constant over H, W: an Expand
    assert any("reported as DS008" in r for r in _refusals(report, "DS007"))
    fixed = report.fixed_model
    assert not {"grid", "anchor_grid"} & {t.name for t in fixed.graph.initializer}
    assert_models_equivalent(model, fixed, S0)
    for shape in OTHER:
        M.assert_same_outputs(fixed, G.yolo_grid(shape[2], shape[3], source=source), shape)


def test_coordinate_channels_concatenated_at_batch_one() -> None:
    model = G.coord_concat(32, 48)
    report = check_model(model, export_shape=S0)
    (f,) = report.findings
    assert (f.rule, f.node, f.fixable) == ("DS008", M.Y, True)
    assert f.baked_value == {"0": 1, "2": 32, "3": 48}  # the batch of 1 does not broadcast in a Concat
    assert_models_equivalent(model, report.fixed_model, S0, atol=1e-6)
    for shape in OTHER:
        M.assert_same_outputs(report.fixed_model, G.coord_concat(shape[2], shape[3], batch0=shape[0]), shape,
                              atol=1e-6)


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("build", [
    pytest.param(lambda h, w, opset: G.add_row(w, form="linspace", opset=opset), id="DS007_linspace"),
    pytest.param(lambda h, w, opset: G.add_fill(h, w, source="cos_partial", opset=opset), id="DS007_cos"),
    pytest.param(lambda h, w, opset: G.yolo_grid(h, w, opset=opset), id="DS008"),
])
def test_rewrites_are_valid_in_older_and_newer_opsets(build: Any, opset: int) -> None:
    model = build(32, 48, opset)
    report = check_model(model, export_shape=S0)
    assert report.applied and all(f.fixable for f in report.findings)
    onnx.checker.check_model(report.fixed_model, full_check=True)
    assert_models_equivalent(model, report.fixed_model, S0, atol=1e-6)
    for shape in OTHER[:2]:
        M.assert_same_outputs(report.fixed_model, build(shape[2], shape[3], opset), shape, atol=1e-5)


# ------------------------------------------------------------------------------ fix, end to end


@pytest.mark.parametrize("build", [
    pytest.param(lambda: G.add_row(48, form="half"), id="DS007"),
    pytest.param(lambda: G.yolo_grid(32, 48), id="DS008"),
])
def test_fix_proves_the_rewrite(build: Any) -> None:
    model = build()
    result = fix_model(model, export_shape=S0)
    assert result.applied and result.unfixed == []
    assert result.export_proof is not None and result.export_proof.status == "ok"
    assert result.other_proofs and all(p.status == "ok" for p in result.other_proofs)
    for p in result.other_proofs:
        h, w = p.shapes["x"][2:]
        assert p.output_shapes[M.Y][2:4] == [h, w]


@pytest.mark.parametrize("build", [
    pytest.param(lambda: G.add_fill(32, 48), id="DS007"),
    pytest.param(lambda: G.yolo_grid(32, 48, source="constant"), id="DS008"),
])
def test_the_export_shape_is_recovered_from_the_joined_constant(build: Any) -> None:
    model = build()
    report = check_model(model)
    assert report.export_shape_source == "estimated" and report.export_shape == S0
    assert report.applied and all(f.fixable for f in report.findings)
    assert_models_equivalent(model, report.fixed_model, S0)


def test_a_range_joined_with_the_map_pins_its_axis_only() -> None:
    # Range(0, 48, 1) added along W: the graph holds only where W is 48, so W is solved (issue 11:
    # the export shape is recovered from every frozen operand of a join, not only initializers);
    # no constant depends on H, which is said, and the row is rebuilt from W alone
    model = G.add_row(48, source="range")
    report = check_model(model)
    assert report.export_shape_source == "estimated" and report.export_shape["x"][3] == 48
    assert "x[2] = x[3] (no baked constant depends on it)" in report.export_shape_note
    assert [f.fixable for f in _rule(report, "DS007")] == [True]
    reference = G.add_row(48, source="reference")
    for shape in OTHER:
        M.assert_same_outputs(report.fixed_model, reference, shape)


def test_a_batch_pinned_by_a_constant_is_recovered() -> None:
    # exported at batch 2: the constant's batch of 2 meets the input's batch, which pins it (at
    # batch 1 x would broadcast against it and give 2 results for 1 input), so the whole fill,
    # batch included, is rebuilt from Shape
    model = G.add_fill(32, 48, batch0=2)
    report = check_model(model)
    assert report.export_shape == {"x": (2, 4, 32, 48)} and report.export_shape_source == "estimated"
    assert [f.fixable for f in _rule(report, "DS007")] == [True]
    reference = G.add_fill(32, 48, source="reference")
    for shape in OTHER:
        M.assert_same_outputs(report.fixed_model, reference, shape)


# ------------------------------------------------------------------------------ PyTorch


torch_only = pytest.mark.torch


def _torch() -> Any:
    return pytest.importorskip("torch")


def _export(net: Any, s0: tuple[int, ...], exporter: str = "legacy") -> onnx.ModelProto:
    from dynashape.export import export_module

    return export_module(net, {"input": s0}, exporter=exporter).model


def _assert_matches_eager(model: onnx.ModelProto, net: Any, shapes: list[tuple[int, ...]], atol: float = 1e-4) -> None:
    torch = _torch()
    for shape in shapes:
        feeds = random_feeds(model, {"input": shape}, seed=7)
        (got,) = run_model(model, feeds).values()
        with torch.no_grad():
            want = net(torch.from_numpy(feeds["input"])).numpy()
        assert got.shape == want.shape, (shape, got.shape, want.shape)
        np.testing.assert_allclose(got, want, atol=atol, rtol=1e-5, err_msg=str(shape))


TORCH_S0 = (1, 3, 32, 48)
TORCH_OTHER = [(2, 3, 64, 80), (3, 3, 24, 40)]


@torch_only
@pytest.mark.parametrize(("name", "batch", "node_op"), [
    ("AddZeros", 1, "Add"),
    ("AddZeros", 2, "Add"),
    ("MulFull", 2, "ConstantOfShape"),
    ("AddArange", 1, "Add"),
    ("CellCentres", 1, "Mul"),
    ("LinspaceRows", 1, "Add"),
])
def test_torch_generated_tensors_legacy(name: str, batch: int, node_op: str) -> None:
    _torch()
    import models_generated_torch as T

    net = getattr(T, name)().eval()
    s0 = (batch, *TORCH_S0[1:])
    model = _export(net, s0)
    report = check_model(model)  # the export shape comes from the model's metadata
    found = _rule(report, "DS007")
    assert [f.op for f in found] == [node_op] and found[0].fixable, [f.message for f in report.findings]
    assert _rule(report, "DS008") == []
    assert_models_equivalent(model, report.fixed_model, {"input": s0})
    _assert_matches_eager(report.fixed_model, net, TORCH_OTHER)


@torch_only
@pytest.mark.parametrize("name", ["CleanGenerated", "LearnedPosition", "ChannelParams"])
def test_torch_negatives_legacy(name: str) -> None:
    _torch()
    import models_generated_torch as T

    net = getattr(T, name)().eval()
    s0 = (1, 3, 32, 32) if name == "ChannelParams" else TORCH_S0
    report = check_model(_export(net, s0))
    assert _rule(report, "DS007") == [] and _rule(report, "DS008") == []


@torch_only
@pytest.mark.parametrize("batch", [1, 2])
def test_torch_yolo_cached_grid_is_ds008(batch: int) -> None:
    torch = _torch()
    import models_generated_torch as T

    net = T.YoloDetect().eval()
    s0 = (batch, *TORCH_S0[1:])
    with torch.no_grad():  # the warm-up run that caches the grids (outside inference mode)
        net(torch.zeros(s0))
    model = _export(net, s0)
    report = check_model(model)
    found = _rule(report, "DS008")
    assert len(found) == 2 and all(f.fixable for f in found), [f.message for f in report.findings]
    assert sorted(f.baked_value["2"] for f in found) == [32, 32]
    assert _rule(report, "DS007") == []
    assert_models_equivalent(model, report.fixed_model, {"input": s0})
    _assert_matches_eager(report.fixed_model, net, TORCH_OTHER)  # eager rebuilds its grid per size


@torch_only
def test_torch_coordconv_is_ds008() -> None:
    _torch()
    import models_generated_torch as T

    net = T.CoordChannels().eval()
    model = _export(net, TORCH_S0)
    report = check_model(model)
    assert [(f.rule, f.fixable) for f in report.findings] == [("DS008", True)]
    _assert_matches_eager(report.fixed_model, net, TORCH_OTHER)


@torch_only
def test_torch_fix_end_to_end() -> None:
    _torch()
    import models_generated_torch as T

    net = T.CellCentres().eval()
    model = _export(net, TORCH_S0)
    result = fix_model(model)
    assert [f.rule for f in result.report.findings] == ["DS007"]
    assert result.export_proof is not None and result.export_proof.status == "ok"
    assert result.other_proofs and all(p.status == "ok" for p in result.other_proofs)


@torch_only
@pytest.mark.parametrize("name", ["AddZeros", "AddArange", "CellCentres", "CleanGenerated", "YoloDetectDynamic",
                                  "CoordChannels"])
def test_torch_dynamo_exports_correctly_or_refuses(name: str) -> None:
    """The dynamo exporter keeps int(x.shape[i]) symbolic: it either exports a graph that is right
    at every size (and the rules stay quiet) or refuses the module."""
    _torch()
    import models_generated_torch as T

    from dynashape.errors import DynashapeError

    net = getattr(T, name)().eval()
    try:
        model = _export(net, TORCH_S0, exporter="dynamo")
    except DynashapeError as exc:
        assert "dynamo exporter" in str(exc)
        return
    report = check_model(model)
    assert _rule(report, "DS007") == [] and _rule(report, "DS008") == []
    _assert_matches_eager(model, net, TORCH_OTHER)


# ------------------------------------------------------------------------------ DS007 vs DS012


def test_a_row_made_at_the_export_width_then_expanded_is_rebuilt_whole() -> None:
    model = G.expanded_row(32, 48)
    report = check_model(model, export_shape=S0)
    (f,) = report.findings
    assert (f.rule, f.node, f.op, f.fixable) == ("DS007", "arange", "Range", True)
    assert f.baked_value == {"2": 32, "3": 48}
    ds012 = [r.reason for r in report.refusals if r.rule == "DS012"]
    assert any("itself a constant of export size on axes [3]" in r for r in ds012), ds012
    assert not {"row_expand", "arange"} & {n.name for n in report.fixed_model.graph.node}
    assert_models_equivalent(model, report.fixed_model, S0)
    for shape in OTHER:
        M.assert_same_outputs(report.fixed_model, G.expanded_row(shape[2], shape[3]), shape)


def test_a_scalar_expanded_to_the_export_size_is_ds012_only() -> None:
    model = G.expanded_scalar(32, 48)
    report = check_model(model, export_shape=S0)
    assert [(f.rule, f.node) for f in report.findings] == [("DS012", "half_expand")]
    # DS007 alone leaves it to DS012 (which runs first in the default order)
    alone = check_model(model, export_shape=S0, rules=[GeneratedTensor()], scan_lattice=False)
    assert alone.findings == []
    assert any("its size is set by Expand 'half_expand' (DS012)" in r for r in _refusals(alone, "DS007"))
    for shape in OTHER:
        M.assert_same_outputs(report.fixed_model, G.expanded_scalar(shape[2], shape[3]), shape)


@pytest.mark.parametrize("build", [
    pytest.param(lambda h, w: G.add_fill(h, w, source="cos_partial"), id="DS007_cos"),
    pytest.param(lambda h, w: G.add_row(w, form="half", source="range"), id="DS007_range"),
    pytest.param(lambda h, w: G.yolo_grid(h, w), id="DS008"),
    pytest.param(lambda h, w: G.expanded_scalar(h, w), id="DS012"),
])
def test_unnamed_nodes_are_rewritten_in_the_right_place(build: Any) -> None:
    model = G.unnamed(build(32, 48))
    report = check_model(model, export_shape=S0)
    assert report.applied and report.findings and all(f.fixable for f in report.findings)
    assert_models_equivalent(model, report.fixed_model, S0)
    for shape in OTHER[:2]:  # the builder baked at this shape is right there
        assert_models_equivalent(build(shape[2], shape[3]), report.fixed_model, {"x": shape})


@torch_only
def test_torch_yolov8_one_level_anchors_are_regenerated() -> None:
    """anchors [2, H·W] are cell centres flattened over the map (through the Slices ``chunk``
    exports to): one axis that follows H and W, so DS008, not a progression along it, but a grid
    over the map that the Reshape flattened: rebuilt from Shape of that map."""
    torch = _torch()
    import models_generated_torch as T

    net = T.Yolo8Head().eval()
    with torch.no_grad():
        net(torch.zeros(TORCH_S0))
    model = _export(net, TORCH_S0)
    report = check_model(model)
    ds008 = _rule(report, "DS008")
    # the stride column (a fill over H·W) is seen once the anchors before it are rebuilt
    assert [f.op for f in ds008] == ["Sub", "Add", "Mul"], [f.message for f in report.findings]
    assert all(f.fixable and list(f.baked_value.values()) == [32 * 48] for f in ds008)
    assert [_recipe(f)["kind"] for f in ds008] == ["levels", "levels", "fill"]
    assert _rule(report, "DS007") == []
    assert_models_equivalent(model, report.fixed_model, {"input": TORCH_S0})
    _assert_matches_eager(report.fixed_model, net, TORCH_OTHER)


YOLO_OTHER = [(2, 3, 64, 96), (1, 3, 96, 64), (3, 3, 32, 32), (1, 3, 128, 160)]


@torch_only
@pytest.mark.parametrize(("task", "joins", "s0"), [
    ("detect", ["Sub", "Add", "Mul"], (1, 3, 64, 96)),  # anchors - lt, anchors + rb, * strides
    # the 32-stride map is 1x2 at 32x48: its step along H is read from the other maps
    ("detect", ["Sub", "Add", "Mul"], (1, 3, 32, 48)),
    ("detect", ["Sub", "Add", "Mul"], (2, 3, 64, 64)),
    ("pose", ["Sub", "Add", "Add", "Mul", "Mul"], (1, 3, 64, 96)),  # + keypoints: (anchors - 0.5), * strides
    # the non-export kpts_decode: anchors[0] - 0.5 and anchors[1] - 0.5 rows
    ("pose_rows", ["Sub", "Add", "Add", "Mul", "Add", "Mul", "Mul"], (1, 3, 64, 96)),
])
def test_torch_yolov8_multi_level_anchors_are_regenerated(task: str, joins: list[str], s0: tuple[int, ...]) -> None:
    """Three levels (strides 8/16/32): anchors [2, Σ h·w] and strides [1, Σ h·w] concatenated over
    the levels are rebuilt per level from Shape of each level's map and concatenated again."""
    torch = _torch()
    import models_generated_torch as T

    net = T.Yolo8Levels(task).eval()
    with torch.no_grad():  # the warm-up run that caches anchors and strides
        net(torch.zeros(s0))
    model = _export(net, s0)
    report = check_model(model)
    found = _rule(report, "DS008")
    assert sorted(f.op for f in found) == sorted(joins), [f.message for f in report.findings]
    assert all(f.fixable for f in found) and _rule(report, "DS007") == []
    maps = [[-(-s0[2] // s), -(-s0[3] // s)] for s in (8, 16, 32)]
    n0 = sum(h * w for h, w in maps)
    assert all(list(f.baked_value.values()) == [n0] for f in found)
    plans = [_recipe(f) for f in found]
    assert all(p["kind"] == "levels" and [lv["size_s0"] for lv in p["levels"]] == maps for p in plans)
    strides = [p for p in plans if all(lv["plan"]["kind"] == "fill" for lv in p["levels"])]
    assert strides and all([lv["plan"]["value"] for lv in p["levels"]] == [8.0, 16.0, 32.0] for p in strides)
    sizes = " + ".join(f"{h}x{w}" for h, w in maps)
    assert f"3 flattened per-map grids concatenated: {sizes}" in found[0].message
    fixed = report.fixed_model
    assert_models_equivalent(model, fixed, {"input": s0})
    _assert_matches_eager(fixed, net, YOLO_OTHER)
    with pytest.raises(RunError):
        run_model(model, random_feeds(model, {"input": (1, 3, 128, 160)}))


def test_a_thin_map_takes_its_step_from_the_other_maps_only_when_one_reproduces_it() -> None:
    import onnx_ir as ir

    from dynashape.rules.generated import _plan_levels

    levels = [Level(ir.Value(name="p3"), (2, 3), (2, 3), (4, 6)), Level(ir.Value(name="p4"), (2, 3), (1, 2), (2, 3))]

    def anchors(offset_thin: float) -> np.ndarray:
        maps = []
        for (h, w), offset in zip([(2, 3), (1, 2)], [0.5, offset_thin]):
            ys, xs = np.meshgrid(np.arange(h) + offset, np.arange(w) + offset, indexing="ij")
            maps.append(np.stack([xs.ravel(), ys.ravel()]))
        return np.concatenate(maps, 1)[None].astype(np.float32)

    plan, why = _plan_levels(anchors(0.5), 2, levels)
    assert plan is not None and plan["levels"][1]["plan"] is plan["levels"][0]["plan"], why
    plan, why = _plan_levels(anchors(0.25), 2, levels)  # a map that is not like the others: no guess
    assert plan is None and "the 1x2 map is one row at the export shape" in why


@torch_only
def test_torch_yolov8_anchors_made_in_forward_are_left_alone() -> None:
    """ultralytics' ``dynamic`` flag: the anchors come from the maps' shapes in every forward."""
    _torch()
    import models_generated_torch as T

    net = T.Yolo8Levels(dynamic=True).eval()
    model = _export(net, TORCH_S0)
    report = check_model(model)
    assert _rule(report, "DS007") == [] and _rule(report, "DS008") == [] and report.applied == []
    _assert_matches_eager(model, net, YOLO_OTHER[:2])


@torch_only
def test_torch_learned_anchor_table_of_the_levels_size_is_refused() -> None:
    """A trained [2, Σ h·w] table has the levels' total length but is no grid per level."""
    torch = _torch()
    import models_generated_torch as T

    net = T.Yolo8Levels("learned").eval()
    with torch.no_grad():
        net(torch.zeros(TORCH_S0))
    report = check_model(_export(net, TORCH_S0))
    assert _rule(report, "DS008") == [] and _rule(report, "DS007") == []
    reasons = _refusals(report, "DS008")
    assert any("vary irregularly" in r and "split over the feature maps 4x6 + 2x3 + 1x2 it is not a grid per map"
               in r for r in reasons), reasons
    assert not any("Sub" in a or "Add" in a for a in report.applied)


def test_a_flat_index_is_not_regenerated_with_a_frozen_step() -> None:
    # i * W0 + j: rebuilding it with the constant step 48 would be silently wrong at another width
    report = check_model(G.add_flat_index(32, 48), export_shape=S0)
    findings = _rule(report, "DS007") + _rule(report, "DS008")
    assert [(f.rule, f.fixable) for f in findings] == [("DS008", False)]
    assert "its step along axis 0 is 48, the export-time size of another of its axes" in findings[0].fix
    assert report.applied == []


def _export_plain(net: Any, s0: tuple[int, ...], name: str = "images") -> onnx.ModelProto:
    """What users write: ``torch.onnx.export`` with dynamic batch, H and W (no dynashape metadata)."""
    import io

    torch = _torch()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(s0),), buf, dynamo=False, opset_version=17, input_names=[name],
                          dynamic_axes={name: {0: "N", 2: "H", 3: "W"}})
    return onnx.load_from_string(buf.getvalue())


def _first_output(net: Any, x: np.ndarray) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        y = net(torch.from_numpy(x))
    while isinstance(y, (tuple, list)):
        y = y[0]
    return y.numpy()


@torch_only
@pytest.mark.slow
def test_ultralytics_yolov8n_detect_is_fixed() -> None:
    """The real head (DFL, make_anchors, dist2bbox), built from its yaml, warmed up, exported with
    dynamic H and W: broken at every other size as exported, equal to eager after the rewrite."""
    pytest.importorskip("ultralytics")
    import models_generated_torch as T

    s0 = (1, 3, 256, 256)
    net = T.ultralytics_model("yolov8n", s0)
    model = _export_plain(net, s0)
    report = check_model(model, export_shape={"images": s0})
    found = _rule(report, "DS008")
    assert sorted(f.op for f in found) == ["Add", "Mul", "Sub"] and all(f.fixable for f in found)
    assert all([lv["size_s0"] for lv in _recipe(f)["levels"]] == [[32, 32], [16, 16], [8, 8]]
               for f in found)
    fixed = report.fixed_model
    assert_models_equivalent(model, fixed, {"images": s0})
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 320, 320), (1, 3, 256, 416), (2, 3, 480, 352)]:
        x = rng.standard_normal(shape).astype(np.float32)
        got = next(iter(run_model(fixed, {"images": x}).values()))
        np.testing.assert_allclose(got, _first_output(net, x), atol=1e-3, rtol=1e-5, err_msg=str(shape))
        with pytest.raises(RunError):
            run_model(model, {"images": x})


@torch_only
@pytest.mark.parametrize("s0", [(1, 3, 64, 64), (1, 3, 96, 96)])
def test_multi_level_anchors_are_fixed_with_the_export_shape_estimated(s0: tuple[int, ...]) -> None:
    torch = _torch()
    import models_generated_torch as T

    net = T.Yolo8Levels().eval()
    with torch.no_grad():
        net(torch.zeros(s0))
    model = _export_plain(net, s0, "input")
    report = check_model(model)  # no metadata, no --export-shape
    assert report.export_shape == {"input": s0}
    found = _rule(report, "DS008")
    assert len(found) == 3 and all(f.fixable for f in found)
    _assert_matches_eager(report.fixed_model, net, YOLO_OTHER[:2])


@torch_only
def test_multi_level_anchors_off_square_without_the_export_shape_ask_for_it() -> None:
    # only the anchor count (H/8*W/8 + ... = 126 at 64x96) is pinned by the shapes, not H and W
    # apart, and the graph holds at no square size: check says so with an error and asks for S0;
    # it neither rewrites at a guessed size nor calls the model clean
    torch = _torch()
    import models_generated_torch as T

    s0 = (1, 3, 64, 96)
    net = T.Yolo8Levels().eval()
    with torch.no_grad():
        net(torch.zeros(s0))
    report = check_model(_export_plain(net, s0, "input"))
    assert report.export_shape_source == "unknown"
    assert report.applied == []
    (finding,) = report.findings
    assert (finding.rule, finding.severity, finding.fixable) == ("DS003", "error", False)
    assert "--export-shape input:Nx3xHxW" in finding.fix and "needed" in report.export_shape_note
    given = check_model(_export_plain(net, s0, "input"), export_shape={"input": s0})
    assert len(_rule(given, "DS008")) == 3 and len(given.applied) == 3
