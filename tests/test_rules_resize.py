"""DS002: Resize whose output size is a constant frozen at the export shape."""

from __future__ import annotations

import models as M
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dynashape.backends.ort import RunError
from dynashape.check import check_model
from dynashape.testing import assert_models_equivalent

S0 = {"x": (1, 4, 64, 96)}
# includes sizes that are not multiples of 4: with sizes from Shape(skip) any size joins
OTHER_SHAPES = [(2, 4, 128, 40), (1, 4, 50, 70), (3, 4, 32, 32)]


def _ds002(report):  # type: ignore[no-untyped-def]
    return [f for f in report.findings if f.rule == "DS002"]


def _resize_inputs(model: onnx.ModelProto) -> list[str]:
    (node,) = [n for n in model.graph.node if n.op_type == "Resize"]
    return list(node.input)


@pytest.mark.parametrize("join", ["Add", "Concat"])
@pytest.mark.parametrize("sizes", ["legacy", "constant"])
@pytest.mark.parametrize("given", [True, False], ids=["export_shape", "estimated"])
def test_resize_frozen_to_the_skip_size(sizes: str, join: str, given: bool) -> None:
    model = M.resize_skip(64, 96, sizes=sizes, join=join)
    report = check_model(model, export_shape=S0 if given else None)
    # estimated: the frozen 32x48 votes through its join partner (skip, stride 2) for 64x96
    assert report.export_shape == S0
    (finding,) = _ds002(report)
    assert (finding.node, finding.op, finding.fixable, finding.severity) == ("up", "Resize", True, "error")
    # the legacy exporter keeps N, C from Shape; a constant initializer freezes the batch too
    frozen = {"2": 32, "3": 48} if sizes == "legacy" else {"0": 1, "2": 32, "3": 48}
    assert finding.baked_value == frozen
    assert finding.details["plan"] == {"kind": "shape", "ref": "skip"}
    assert "the join with 'skip' fails" in finding.message
    assert report.applied == [f"up: sizes 1x8x32x48 -> Shape(skip) on axes {[int(a) for a in frozen]}"]

    fixed = report.fixed_model
    assert_models_equivalent(model, fixed, S0)
    reference = M.resize_skip(64, 96, sizes="shape", join=join)
    channels = 2
    for shape in OTHER_SHAPES:
        n, _, h, w = shape
        M.assert_same_outputs(fixed, reference, shape, expected_shape=(n, channels, h // 2, w // 2))
    with pytest.raises(RunError):
        M.run(model, OTHER_SHAPES[0])


@pytest.mark.parametrize("opset", [13, 18])
def test_resize_legacy_other_opsets(opset: int) -> None:
    model = M.resize_skip(64, 96, opset=opset)
    report = check_model(model, export_shape=S0)
    assert [(f.rule, f.node, f.fixable) for f in report.findings] == [("DS002", "up", True)]
    assert_models_equivalent(model, report.fixed_model, S0)
    reference = M.resize_skip(64, 96, sizes="shape", opset=opset)
    M.assert_same_outputs(report.fixed_model, reference, (2, 4, 50, 70), expected_shape=(2, 2, 25, 35))


def test_constant_sizes_with_batch_two_at_export() -> None:
    s0 = {"x": (2, 4, 64, 96)}
    model = M.resize_skip(64, 96, sizes="constant", batch0=2)
    report = check_model(model, export_shape=s0)
    (finding,) = _ds002(report)
    assert finding.baked_value == {"0": 2, "2": 32, "3": 48}
    assert_models_equivalent(model, report.fixed_model, s0)
    M.assert_same_outputs(report.fixed_model, M.resize_skip(64, 96, sizes="shape"), (3, 4, 40, 40))


def test_resize_to_the_graph_input_size() -> None:
    model = M.resize_to_input(64, 96)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds002(report)
    assert (finding.node, finding.fixable) == (M.Y, True)
    assert finding.baked_value == {"2": 64, "3": 96}
    assert finding.details["plan"] == {"kind": "shape", "ref": "x"}
    assert_models_equivalent(model, report.fixed_model, S0)
    reference = M.resize_to_input(64, 96, reference=True)
    for shape in OTHER_SHAPES:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 3, *shape[2:]))
    # unfixed, the output stays 64x96 whatever the input
    assert M.run(model, (1, 4, 128, 40))[M.Y].shape == (1, 3, 64, 96)


@pytest.mark.parametrize("sizes", ["legacy", "constant"])
@pytest.mark.parametrize("factor", [2, 3])
def test_resize_by_an_integer_factor_becomes_scales(sizes: str, factor: int) -> None:
    model = M.resize_by_factor(64, 96, factor, sizes=sizes)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds002(report)
    assert finding.node == M.Y and finding.fixable
    assert finding.details["plan"]["kind"] == "scales"
    assert finding.details["plan"]["factor"] == factor
    fixed = report.fixed_model
    inputs = _resize_inputs(fixed)
    assert len(inputs) == 3, f"sizes must be gone: {inputs}"
    scales = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}[inputs[2]]
    np.testing.assert_array_equal(scales, [1, 1, factor, factor])
    assert_models_equivalent(model, fixed, S0)
    reference = M.resize_by_factor(64, 96, factor, reference=True)
    for shape in [(2, 4, 20, 30), (1, 4, 33, 17), (1, 4, 64, 96)]:
        n, _, h, w = shape
        M.assert_same_outputs(fixed, reference, shape, expected_shape=(n, 4, factor * h, factor * w))


def test_resize_without_evidence_of_the_export_shape_is_reported_not_rewritten() -> None:
    # A lone resize to a constant 128x128 says nothing about the export shape: the default
    # guess (512) would "prove" a 1/4 scale at 512 and be wrong at the true 64x64.
    model = M.resize_by_factor(64, 64)
    report = check_model(model)
    assert report.export_shape_source == "default"
    (finding,) = _ds002(report)
    assert finding.node == M.Y and not finding.fixable
    assert "the export shape is unknown" in finding.fix
    assert report.applied == []
    # given the export shape, the same model is fixed
    fixed = check_model(model, export_shape={"x": (1, 4, 64, 64)})
    assert [f.fixable for f in _ds002(fixed)] == [True]
    assert fixed.applied == ["y: sizes 1x4x128x128 -> scales [1.0, 1.0, 2.0, 2.0]"]


@pytest.mark.parametrize("export_shape", [S0, None])
def test_resize_with_scales_is_not_flagged(export_shape: dict | None) -> None:
    report = check_model(M.resize_with_scales(), export_shape=export_shape)
    assert _ds002(report) == []
    assert [r.reason for r in report.refusals if r.rule == "DS002"] == ["resizes by scales, not to a fixed size"]


@pytest.mark.parametrize("export_shape", [S0, None])
def test_resize_with_sizes_from_shape_is_not_flagged(export_shape: dict | None) -> None:
    model = M.resize_skip(64, 96, sizes="shape")
    report = check_model(model, export_shape=export_shape)
    assert _ds002(report) == []
    assert [(r.node, r.reason) for r in report.refusals if r.rule == "DS002"] == [
        ("up", "its output size follows the input size")
    ]
    assert report.applied == []
