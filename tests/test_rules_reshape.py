"""DS005: Reshape whose constant target holds export-time sizes or their products."""

from __future__ import annotations

import models as M
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dynashape.backends.ort import RunError
from dynashape.check import check_model
from dynashape.testing import assert_models_equivalent

S0 = {"x": (1, 8, 64, 96)}


def _ds005(report):  # type: ignore[no-untyped-def]
    return [f for f in report.findings if f.rule == "DS005"]


def _target(model: onnx.ModelProto, node_name: str) -> np.ndarray:
    (node,) = [n for n in model.graph.node if n.name == node_name]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits[node.input[1]]


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_view_b_c_hw_with_ints(opset: int) -> None:
    # x.view(b, c, h * w) with b, h, w Python ints at 1x8x64x96: target [1, 8, 6144]
    model = M.reshape_baked(8, 64, 96, opset=opset)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds005(report)
    assert (finding.node, finding.op, finding.fixable) == ("flat", "Reshape", True)
    # entry 0 copies the batch, entry 2 is H*W; the channels (8) are a fixed dim in place
    assert finding.baked_value == {"0": 1, "2": 6144}
    assert finding.details["plan"] == {"kind": "const", "target": [0, 8, -1]}
    assert "at input 2x8x128x192 it fails" in finding.message
    assert report.applied == ["flat: target [1, 8, 6144] -> [0, 8, -1]"]
    np.testing.assert_array_equal(_target(report.fixed_model, "flat"), [0, 8, -1])
    assert [f.rule for f in report.findings] == ["DS005"]  # no DS003: the fixed model is valid everywhere

    assert_models_equivalent(model, report.fixed_model, S0)
    reference = M.reshape_reference(8, target=(0, 0, -1), opset=opset)
    for shape in [(2, 8, 32, 48), (3, 8, 17, 5), (1, 8, 96, 64)]:
        n, c, h, w = shape
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(n, c, h * w))
    with pytest.raises(RunError):
        M.run(model, (2, 8, 64, 96))


def test_view_b_c_hw_without_the_export_shape_is_still_reported() -> None:
    # nothing but the reshape hints at 64x96: the hazard is found at the guessed export shape
    report = check_model(M.reshape_baked(8, 64, 96))
    assert [f.node for f in _ds005(report)] == ["flat"]


def test_view_bc_hw_with_ints_builds_the_target_from_shape() -> None:
    # x.view(b * c, h * w) at batch 1: [8, 6144]; both entries are products of input dims
    model = M.reshape_bc_hw(8, 64, 96)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds005(report)
    assert finding.fixable and finding.details["plan"]["kind"] == "shape"
    assert finding.details["plan"]["products"] == {"0": [0, 1], "1": [2, 3]}
    ops = [n.op_type for n in report.fixed_model.graph.node]
    assert "Shape" in ops and "ReduceProd" in ops
    assert_models_equivalent(model, report.fixed_model, S0)
    g = M.GraphBuilder(channels=8)  # reference: Flatten(axis=2) is exactly [N*C, H*W]
    g.op("Softmax", [g.op("Flatten", [M.X], "flat", axis=2)], M.Y, axis=1)
    reference = g.model([M.Y], channels=8)
    for shape in [(2, 8, 32, 48), (3, 8, 7, 9)]:
        n, c, h, w = shape
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(n * c, h * w))


@pytest.mark.parametrize("export_shape", [{"x": (1, 4, 64, 96)}, None])
def test_view_1_minus_1_silently_mixes_the_batch(export_shape: dict | None) -> None:
    model = M.reshape_silent()
    # the silent hazard: at batch 3 the original runs and returns one row of 3 samples
    assert M.run(model, (3, 4, 8, 8))[M.Y].shape == (1, 3 * 4 * 8 * 8)
    report = check_model(model, export_shape=export_shape)
    (finding,) = _ds005(report)
    assert (finding.node, finding.fixable) == (M.Y, True)
    assert "silently mixes axes" in finding.message
    assert finding.details["plan"] == {"kind": "const", "target": [0, -1]}
    np.testing.assert_array_equal(_target(report.fixed_model, M.Y), [0, -1])
    assert_models_equivalent(model, report.fixed_model, {"x": (1, 4, 64, 96)})
    reference = M.flatten()
    for shape in [(3, 4, 8, 8), (2, 4, 33, 17)]:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 4 * shape[2] * shape[3]))


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: M.reshape_reference(4, target=(0, 0, -1)), id="copy_and_infer"),
        pytest.param(lambda: M.reshape_reference(4, target=(0, 4, -1)), id="fixed_channels"),
        pytest.param(lambda: M.reshape_reference(4, target=(-1, 4), softmax_axis=None), id="minus1_first"),
        pytest.param(M.reshape_from_shape, id="view_size0_c_minus1_from_Shape"),
        pytest.param(M.flatten, id="flatten"),
    ],
)
@pytest.mark.parametrize("export_shape", [{"x": (1, 4, 64, 96)}, None])
def test_reshapes_that_are_fine(build, export_shape: dict | None) -> None:  # type: ignore[no-untyped-def]
    model = build()
    report = check_model(model, export_shape=export_shape)
    assert report.findings == []
    assert report.applied == []
    reasons = [r.reason for r in report.refusals if r.rule == "DS005"]
    assert all("stays valid" in r or "does not change" in r for r in reasons), reasons
