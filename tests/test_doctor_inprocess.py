"""``dynashape.pipeline.doctor`` called in-process (the CLI's doctor is tested through a subprocess):
``run_doctor`` on ONNX files with a fixable hazard, with none and with one it cannot fix, the
result's claims and JSON, and ``write_doctor_heatmap``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import models as M
import models_reports as R
import onnx
import pytest

from dynashape.errors import DynashapeError
from dynashape.model import load_model
from dynashape.pipeline.check import check_model
from dynashape.pipeline.doctor import DoctorResult, run_doctor, write_doctor_heatmap
from dynashape.testing import assert_models_equivalent

S0: dict[str, tuple[int, ...]] = {"x": (1, 4, 32, 32)}


def _save(model: onnx.ModelProto, path: Path) -> tuple[Path, str]:
    onnx.save(model, str(path))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _doctor(path: Path, out: Path, **kwargs: object) -> DoctorResult:
    return run_doctor(str(path), out_dir=out, export_shape=S0, tensorrt=False, differential=False,
                      **kwargs)  # type: ignore[arg-type]


def test_doctor_fixes_a_whole_map_pool_and_says_it_is_not_proven(tmp_path: Path) -> None:
    model = M.whole_map_pool(32, 32)
    path, digest = _save(model, tmp_path / "pool.onnx")
    result = _doctor(path, tmp_path / "out", heatmap=True)
    assert [(f.rule, f.node, f.fixable) for f in result.check.findings] == [("DS001", "pool", True)]
    assert len(result.fix.applied) == 1 and result.fix.applied[0].startswith("pool:")
    assert result.fix.unfixed == []
    # every shape of the sweep ran and matched; the reference is the original graph, not the model's source
    assert result.sweep.all_ok and result.healthy
    assert not result.proven and result.not_proven_reason()
    assert (result.tensorrt.status, result.tensorrt.reason) == ("skipped", "disabled with --no-tensorrt")
    # the fixed model is written beside the heat map; the input is untouched
    fixed = load_model(tmp_path / "out" / "pool.fixed.onnx")
    assert "GlobalAveragePool" in {n.op_type for n in fixed.graph.node}
    assert_models_equivalent(model, fixed, S0)
    # at 64x64 the 32x32 kernel pools 2x2 windows (4x the features); the fixed model pools the map
    assert M.run(model, (2, 4, 64, 64))[M.Y].shape == (2, 32)
    M.assert_same_outputs(fixed, M.whole_map_pool(32, 32, reference=True), (2, 4, 64, 64), expected_shape=(2, 8))
    assert result.heatmap is not None and Path(result.heatmap).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "17x17" in result.heatmap_sampled
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    data = json.loads(json.dumps(result.to_json(), default=str))
    assert (data["healthy"], data["proven"]) == (True, False)
    assert data["not_proven"] == result.not_proven_reason()
    assert data["fixed"]["applied"] == result.fix.applied
    assert [f["rule"] for f in data["findings"]] == ["DS001"]


def test_doctor_on_a_clean_model_changes_nothing(tmp_path: Path) -> None:
    model = M.plain_conv()
    path, _ = _save(model, tmp_path / "conv.onnx")
    result = _doctor(path, tmp_path / "out", heatmap=False)
    assert result.check.findings == [] and result.fix.applied == [] and result.fix.unfixed == []
    assert result.healthy and result.heatmap is None
    assert [n.op_type for n in load_model(tmp_path / "out" / "conv.fixed.onnx").graph.node] == \
        [n.op_type for n in model.graph.node]


def test_doctor_with_a_hazard_it_cannot_fix_is_not_healthy(tmp_path: Path) -> None:
    path, _ = _save(R.resize_mode("cubic"), tmp_path / "cubic.onnx")
    result = _doctor(path, tmp_path / "out", heatmap=False)
    assert [(f.rule, f.severity, f.fixable) for f in result.fix.unfixed] == [("DS016", "error", False)]
    assert not result.healthy and not result.proven
    assert result.not_proven_reason() == "some shapes failed or hazards are left"
    assert json.loads(json.dumps(result.to_json(), default=str))["healthy"] is False


def test_doctor_refuses_a_bad_model_before_writing_anything(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx file")
    with pytest.raises(DynashapeError):
        _doctor(path, tmp_path / "out", heatmap=False)
    assert not (tmp_path / "out").exists()


def test_heatmap_is_written_for_two_dynamic_spatial_axes(tmp_path: Path) -> None:
    model = M.whole_map_pool(32, 32)
    report = check_model(model, export_shape=S0)
    heat = write_doctor_heatmap(model, model, report, tmp_path / "map.png")
    assert heat.path.read_bytes()[:4] == b"\x89PNG"
    assert "axis 2 16..48" in heat.sampled and "axis 3 16..48" in heat.sampled


def test_heatmap_needs_two_dynamic_spatial_axes(tmp_path: Path) -> None:
    model = R.conv_input(["N", 4, 32, 32])  # only the batch is dynamic
    report = check_model(model, export_shape=S0)
    with pytest.raises(DynashapeError, match="two dynamic spatial axes"):
        write_doctor_heatmap(model, model, report, tmp_path / "map.png")
    assert not (tmp_path / "map.png").exists()
