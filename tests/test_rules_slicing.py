"""DS006 (Split sizes frozen at the export shape) and DS014 (Slice bounds frozen at the export shape)."""

from __future__ import annotations

import importlib.util

import models as M
import models_slicing as MS
import models_window as MW
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from dynashape.backends.ort import RunError, run_model
from dynashape.findings import Finding
from dynashape.pipeline.check import check_model
from dynashape.rules.slicing import BoundEntry, SlicePlan, SplitPlan
from dynashape.testing import assert_models_equivalent

requires_torch = [pytest.mark.torch,
                  pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")]


def _split(f: Finding) -> SplitPlan:
    assert isinstance(f.plan, SplitPlan) and "plan" not in f.to_json()["details"]
    return f.plan


def _bounds(f: Finding) -> tuple[BoundEntry, ...]:
    """The bounds a DS014 rewrite rebuilds (its plan; the JSON keeps the axes only)."""
    assert isinstance(f.plan, SlicePlan) and set(f.details) == {"axes"}
    return f.plan.entries


def _by_rule(report, rule: str):  # type: ignore[no-untyped-def]
    return [f for f in report.findings if f.rule == rule]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _eager(net, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    import torch

    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        return x, net(torch.from_numpy(x)).numpy()


def _matches_eager(net, model: onnx.ModelProto, shapes: list[tuple[int, ...]]) -> None:  # type: ignore[no-untyped-def]
    for shape in shapes:
        x, want = _eager(net, shape)
        got = next(iter(run_model(model, {"input": x}).values()))
        assert got.shape == want.shape, shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------- DS006

CA_SHAPES = [(1, 4, 64, 64), (2, 4, 33, 47), (1, 4, 100, 17)]


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
@pytest.mark.parametrize("hw", [(64, 48), (64, 64)], ids=["64x48", "square"])
def test_coordinate_attention_split_follows_the_concatenated_strips(opset: int, hw: tuple[int, int]) -> None:
    h0, w0 = hw
    s0 = {"x": (1, 4, h0, w0)}
    model = MS.coord_split(h0, w0, opset=opset)
    report = check_model(model, export_shape=s0)
    (f,) = _by_rule(report, "DS006")
    assert (f.node, f.op, f.severity, f.fixable) == ("split", "Split", "error", True)
    assert f.baked_value == [h0, w0]
    # even at a square export the pieces are the H strip and the W strip, not two halves
    assert _split(f) == SplitPlan("concat", 2, (h0, w0), concat="cat", concat_axis=2, groups=((0,), (1,)),
                                  refs=(("x_h",), ("x_w",)))
    assert f.details == {"axis": 2, "sizes_s0": [h0, w0]}
    assert (f"Split sizes [{h0}, {w0}] on axis 2 add up to the export-time size {h0 + w0}" in f.message
            and "the sizes no longer add up, so the Split fails" in f.message)
    assert (" (an attribute)" in f.message) == (opset < 13)
    assert report.applied == [f"split: Split sizes [{h0}, {w0}] -> Slices with bounds from concatenated tensors"]
    fixed = report.fixed_model
    assert "Split" not in _ops(fixed)
    assert_models_equivalent(model, fixed, s0)
    reference = MS.coord_split(h0, w0, opset=opset, reference=True)
    for shape in CA_SHAPES:
        M.assert_same_outputs(fixed, reference, shape, expected_shape=shape)
    with pytest.raises(RunError):
        M.run(model, (1, 4, 64, 40))


def test_equal_parts_become_shape_over_n() -> None:
    # torch.split(x, h // 2, dim=2) with h a Python int: [32, 32] at 64
    s0 = {"x": (1, 4, 64, 48)}
    model = MS.split_parts(64)
    report = check_model(model, export_shape=s0)
    (f,) = _by_rule(report, "DS006")
    assert (_split(f).kind, _split(f).parts) == ("equal", 2)
    assert "exact wherever that axis divides into 2" in f.fix
    assert_models_equivalent(model, report.fixed_model, s0)
    reference = MS.split_parts(64, reference=True)  # Split with no sizes: equal parts
    for shape in [(2, 4, 32, 48), (1, 4, 100, 7)]:
        n, c, h, w = shape
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(n, c, h // 2, w))
    # an odd height has no two equal halves: the lattice says H must be even
    assert any(g.rule == "DS003" and "multiple of 2" in g.message for g in report.findings)


def test_split_of_a_sum_of_two_axes_is_not_guessed() -> None:
    # the H and W strips concatenated, then flattened (the concat can no longer be traced): at a
    # square export the sizes [64, 64] look like halves, but the axis is H + W, not 2 * H
    g = M.GraphBuilder()
    x_h = g.reduce("ReduceMean", M.X, [3], "x_h")
    x_w = g.op("Transpose", [g.reduce("ReduceMean", M.X, [2], "x_w_mean")], "x_w", perm=[0, 1, 3, 2])
    flat = g.op("Reshape", [g.op("Concat", [x_h, x_w], "cat", axis=2), g.i64("flat_shape", [0, 0, -1])], "flat")
    g.nodes.append(helper.make_node("Split", [flat, g.i64("sizes", [64, 64])], ["a", "b"], name="split", axis=2))
    g.op("Concat", ["b", "a"], M.Y, axis=2)
    report = check_model(g.model([M.Y]), export_shape={"x": (1, 4, 64, 64)})
    (f,) = _by_rule(report, "DS006")
    assert not f.fixable and f.plan is None
    assert "torch.split(y, [a.shape[2], b.shape[2]], dim=2)" in f.fix
    assert report.applied == []


def test_unequal_sizes_without_a_concat_are_reported_with_the_source_fix() -> None:
    report = check_model(MS.split_parts(64, [40, 24]), export_shape={"x": (1, 4, 64, 48)})
    (f,) = _by_rule(report, "DS006")
    assert not f.fixable and f.fix.startswith("not rewritten: no tensor's size gives the pieces")


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        pytest.param(lambda: MS.split_parts(64, [1, 3], axis=1), "does not change with the input size",
                     id="channels"),
        pytest.param(MS.split_from_shape, "follow the input size", id="sizes_from_shape"),
        pytest.param(lambda: MS.split_parts(64, reference=True), "equal parts", id="no_sizes"),
    ],
)
def test_splits_that_are_fine(build, reason: str) -> None:  # type: ignore[no-untyped-def]
    report = check_model(build(), export_shape={"x": (1, 4, 64, 48)})
    assert _by_rule(report, "DS006") == [] and report.applied == []
    reasons = [r.reason for r in report.refusals if r.rule == "DS006"]
    assert reasons and all(reason in r for r in reasons), reasons


@pytest.mark.parametrize("_", [pytest.param(0, marks=requires_torch)], ids=["torch"])
def test_torch_coordinate_attention_fix_is_proven_and_matches_eager(_: int) -> None:
    from dynashape.export import export_module
    from dynashape.pipeline.fix import fix_model

    net = MS.torch_modules()["coord_att"]().eval()
    exported = export_module(net, {"input": (1, 3, 64, 48)}, exporter="legacy")
    result = fix_model(exported.model)
    (f,) = _by_rule(result.report, "DS006")
    assert f.fixable and _split(f).kind == "concat"
    assert result.unfixed == []
    assert result.export_proof is not None and result.export_proof.status == "ok"
    assert result.other_proofs and all(p.status == "ok" for p in result.other_proofs)
    _matches_eager(net, result.fixed, [(1, 3, 64, 64), (2, 3, 33, 47), (1, 3, 20, 90)])


@pytest.mark.parametrize("_", [pytest.param(0, marks=requires_torch)], ids=["torch"])
def test_torch_half_split_matches_eager_at_even_heights(_: int) -> None:
    from dynashape.export import export_module

    net = MS.torch_modules()["half_split"]().eval()
    exported = export_module(net, {"input": (1, 3, 64, 48)}, exporter="legacy")
    report = check_model(exported.model)
    (f,) = _by_rule(report, "DS006")
    assert (_split(f).kind, _split(f).parts) == ("equal", 2)
    _matches_eager(net, report.fixed_model, [(1, 3, 32, 32), (2, 3, 100, 7)])


# ---------------------------------------------------------------------------------------- DS014

CROP_SHAPES = [(1, 4, 64, 64), (2, 4, 33, 47), (1, 4, 100, 17)]


def _ends(model: onnx.ModelProto, node: str) -> np.ndarray | None:
    (n,) = [n for n in model.graph.node if n.name == node or node in n.output]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits.get(n.input[2])


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_crop_back_to_the_unpadded_size(opset: int) -> None:
    # pad to a multiple of 8 (pads from Shape: correct), context branch, y[:, :, :h, :w] with ints
    s0 = {"x": (1, 4, 61, 62)}
    model = MS.pad_crop(61, 62, opset=opset)
    report = check_model(model, export_shape=s0)
    (f,) = _by_rule(report, "DS014")
    assert (f.node, f.op, f.fixable) == (M.Y, "Slice", True)
    assert f.baked_value == {"end[2]": 61, "end[3]": 62}
    assert [(e.kind, e.ref) for e in _bounds(f)] == [("ref", "x"), ("ref", "x")]
    assert "end 61 on axis 2 is the export-time size of 'x'" in f.message
    assert "keeps 0:61 of 128 on axis 2, 0:62 of 128 on axis 3" in f.message
    assert report.applied == [f"{M.Y}: end on axis 2 -> Shape(x)[2]; end on axis 3 -> Shape(x)[3]"]
    assert_models_equivalent(model, report.fixed_model, s0)
    reference = MS.pad_crop(61, 62, opset=opset, reference=True)
    for shape in CROP_SHAPES:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 4, *shape[2:]))
    assert M.run(model, (1, 4, 64, 64))[M.Y].shape == (1, 4, 61, 62)  # unfixed: always 61x62


def test_crop_exported_where_the_pad_was_zero() -> None:
    # at 64x64 the pad is 0 and the crop ends equal the sliced size: "to the end" would keep the
    # padding at 33x47; the unpadded input is smaller there, so the bound is Shape(x)
    s0 = {"x": (1, 4, 64, 64)}
    model = MS.pad_crop(64, 64)
    report = check_model(model, export_shape=s0)
    (f,) = _by_rule(report, "DS014")
    assert [(e.kind, e.ref) for e in _bounds(f)] == [("ref", "x"), ("ref", "x")]
    reference = MS.pad_crop(64, 64, reference=True)
    assert_models_equivalent(model, report.fixed_model, s0)
    for shape in CROP_SHAPES:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 4, *shape[2:]))


@pytest.mark.parametrize("hw", [(65, 63), (64, 64)], ids=["odd", "even"])
def test_skip_cropped_to_the_upsampled_map_it_is_joined_with(hw: tuple[int, int]) -> None:
    # at 65x63 the crop ends (64, 62) are the upsampled map's size; at 64x64 they are the skip's
    # own size, but the upsampled map is smaller at odd sizes: either way the bound is Shape(up)
    s0 = {"x": (1, 4, *hw)}
    model = MS.skip_crop(*hw)
    report = check_model(model, export_shape=s0)
    (f,) = _by_rule(report, "DS014")
    assert [(e.kind, e.ref) for e in _bounds(f)] == [("ref", "up"), ("ref", "up")]
    assert_models_equivalent(model, report.fixed_model, s0)
    reference = MS.skip_crop(*hw, reference=True)
    for shape in CROP_SHAPES:
        n, _, h, w = shape
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(n, 2, h // 2 * 2, w // 2 * 2))


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_slice_to_the_export_size_means_to_the_end(opset: int) -> None:
    # x[:, :, 1:h] with h = int(x.shape[2]): end 64 is the sliced axis's own size
    s0 = {"x": (1, 4, 64, 48)}
    if opset >= 10:
        model = MS.slice_rows(64, opset=opset)
    else:  # Slice-1: bounds are attributes
        g = M.GraphBuilder(opset)
        s = g.op("Slice", [M.X], "rows", starts=[1], ends=[64], axes=[2])
        g.op("Mul", [s, g.f32("two", [2.0])], M.Y)
        model = g.model([M.Y])
    report = check_model(model, export_shape=s0)
    (f,) = _by_rule(report, "DS014")
    assert f.fixable and _bounds(f)[0].kind == "to_end"
    assert "end 64 on axis 2 is the axis's own export-time size" in f.message
    assert report.applied == ["rows: end on axis 2 -> INT64_MAX (to the end)"]
    (rows,) = [n for n in report.fixed_model.graph.node if n.name == "rows"]
    if opset >= 10:
        assert _ends(report.fixed_model, "rows").tolist() == [MS.INT64_MAX]  # type: ignore[union-attr]
    else:
        assert helper.get_attribute_value(next(a for a in rows.attribute if a.name == "ends")) == [MS.INT64_MAX]
    assert_models_equivalent(model, report.fixed_model, s0)
    reference = MS.slice_rows(64, reference=True, opset=max(opset, 10))
    for shape in [(2, 4, 32, 48), (1, 4, 100, 7)]:
        n, c, h, w = shape
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(n, c, h - 1, w))


@pytest.mark.parametrize("hw", [(64, 48), (64, 64)], ids=["64x48", "square"])
def test_coordinate_attention_with_slices(hw: tuple[int, int]) -> None:
    h0, w0 = hw
    s0 = {"x": (1, 4, h0, w0)}
    model = MS.coord_slices(h0, w0)
    report = check_model(model, export_shape=s0)
    found = {f.node: f for f in _by_rule(report, "DS014")}
    assert sorted(found) == ["take_h", "take_w"]
    assert [(e.which, e.kind) for e in _bounds(found["take_h"])] == [("end", "concat")]
    assert [(e.which, e.kind) for e in _bounds(found["take_w"])] == [
        ("start", "concat"), ("end", "to_end")]
    assert f"start {h0} on axis 2 is where x_h end in the concat 'cat'" in found["take_w"].message
    assert_models_equivalent(model, report.fixed_model, s0)
    reference = MS.coord_slices(h0, w0, reference=True)
    for shape in CA_SHAPES:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=shape)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: MS.slice_rows(64, start=0, end=32), id="fixed_crop_32_of_64"),
        pytest.param(lambda: MS.slice_rows(64, start=-8, end=MS.INT64_MAX), id="negative_start"),
        pytest.param(lambda: MS.slice_rows(64, start=0, end=-1), id="negative_end"),
        pytest.param(lambda: MS.slice_rows(64, reference=True), id="open_end"),
        pytest.param(lambda: MS.slice_rows(64, start=0, end=1), id="first_row"),
        pytest.param(lambda: MS.slice_rows(64, start=0, end=2, axis=1), id="channels"),
        pytest.param(MS.slice_from_shape, id="ends_from_shape"),
        pytest.param(lambda: MS.pad_crop(61, 62, reference=True), id="crop_from_shape"),
    ],
)
def test_slices_that_are_fine(build) -> None:  # type: ignore[no-untyped-def]
    report = check_model(build(), export_shape={"x": (1, 4, 64, 48)})
    assert _by_rule(report, "DS014") == [] and report.applied == []
    assert any(r.rule == "DS014" for r in report.refusals)


@pytest.mark.parametrize(("name", "export"), [
    pytest.param("pad_crop", (1, 3, 61, 62), id="pad_crop-padded", marks=requires_torch),
    pytest.param("pad_crop", (1, 3, 64, 64), id="pad_crop-pad_zero", marks=requires_torch),
    pytest.param("unet_skip_crop", (1, 3, 64, 64), id="unet_skip_crop-even", marks=requires_torch),
    pytest.param("unet_skip_crop", (1, 3, 65, 63), id="unet_skip_crop-odd", marks=requires_torch),
])
def test_torch_crops_fix_is_proven_and_matches_eager(name: str, export: tuple[int, ...]) -> None:
    from dynashape.export import export_module
    from dynashape.pipeline.fix import fix_model

    net = MS.torch_modules()[name]().eval()
    exported = export_module(net, {"input": export}, exporter="legacy")
    result = fix_model(exported.model)
    found = _by_rule(result.report, "DS014")
    assert found and all(f.fixable for f in found)
    assert {e.kind for f in found for e in _bounds(f)} == {"ref"}
    assert result.export_proof is not None and result.export_proof.status == "ok"
    assert result.other_proofs and all(p.status == "ok" for p in result.other_proofs)
    _matches_eager(net, result.fixed, [(1, 3, 64, 64), (2, 3, 33, 47), (1, 3, 100, 101)])


def _window_check(**kw):  # type: ignore[no-untyped-def]
    from dynashape.export import export_module

    net = MW.window_block(sizes="int_all", **kw)
    exported = export_module(net, {"input": (1, 3, 256, 256)}, exporter="legacy")
    return exported.model, check_model(exported.model, export_shape={"input": (1, 3, 256, 256)})


def _value_at(model: onnx.ModelProto, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``name`` computed from the input alone (the nodes after it may fail at ``shape``)."""
    from onnx.utils import Extractor

    sub = Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(["input"], [name])
    x = np.zeros(shape, np.float32)
    return next(iter(run_model(sub, {"input": x}).values()))


@pytest.mark.parametrize("_", [pytest.param(0, marks=requires_torch)], ids=["torch"])
def test_crop_back_after_window_attention_with_frozen_reshapes(_: int) -> None:
    # Swin with every size a Python int: the window-partition reshapes hold 10 and 70 (DS005's),
    # so the crop's input looks fixed at S1 (70); the crop end 64 is the size of the Pad's input
    model, report = _window_check()
    crops = _by_rule(report, "DS014")
    assert [(e.which, e.axis, e.value, e.pad) for c in crops for e in _bounds(c)] == [
        ("end", 1, 64, "/Pad"), ("end", 2, 64, "/Pad")]
    assert all(c.fixable for c in crops)
    assert "the input of Pad '/Pad' it is computed from (the crop back to the unpadded size" in crops[0].message
    assert_models_equivalent(model, report.fixed_model, {"input": (1, 3, 256, 256)})
    fixed = report.fixed_model
    for shape, rows in [((1, 3, 240, 240), 60), ((2, 3, 320, 192), 80)]:  # the ends follow the unpadded map
        (crop,) = [n for n in fixed.graph.node if n.name == crops[0].node]
        assert _value_at(fixed, crop.input[2], shape).tolist() == [rows]
    (crop0,) = [n for n in model.graph.node if n.name == crops[0].node]
    assert _value_at(model, crop0.input[2], (1, 3, 240, 240)).tolist() == [64]  # as exported: always 64


@pytest.mark.parametrize("_", [pytest.param(0, marks=requires_torch)], ids=["torch"])
def test_crop_shorter_than_the_unpadded_size_is_a_fixed_crop(_: int) -> None:
    # y[:, :height - 1, :width - 1] after the window attention: 63 is no tensor's size
    _, report = _window_check(crop="short")
    assert _by_rule(report, "DS014") == []
    assert _by_rule(report, "DS013")  # the pad itself is still the window's


def test_titles_survive_rich_and_the_rules_run_in_order() -> None:
    import re

    from dynashape.rules import DEFAULT_RULES, rule_catalogue

    # rich reads "[word...]" as markup and drops it from `check --list-rules`
    assert [rid for rid, title in rule_catalogue() if re.search(r"\[[a-z#/@]", title)] == []
    order = [r.id for r in DEFAULT_RULES]
    for rid in ("DS004", "DS006", "DS013", "DS014"):
        assert order.count(rid) == 1
    # a frozen pad shifts every size after it; splits and slices come before the reshapes
    assert order.index("DS013") < order.index("DS004") < order.index("DS006") < order.index("DS014")
    assert order.index("DS014") < order.index("DS005") < order.index("DS009")
