"""fix: rewrites proven at the export shape, --pad-to, and nothing written on failure."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from dynashape.backends.ort import run_model
from dynashape.demo import demo_onnx_path
from dynashape.errors import DynashapeError
from dynashape.fix import fix_model, pad_wrap, write_fixed
from dynashape.model import load_model
from dynashape.testing import assert_models_equivalent, random_feeds


@pytest.fixture(scope="module")
def demo() -> onnx.ModelProto:
    return load_model(demo_onnx_path())


def test_fix_demo_is_proven_and_runs_off_export(demo: onnx.ModelProto) -> None:
    result = fix_model(demo)
    assert len(result.applied) == 3
    assert result.export_proof is not None and result.export_proof.status == "ok"
    assert result.export_proof.max_abs_error is not None and result.export_proof.max_abs_error < 1e-5
    assert result.other_proofs and all(p.status == "ok" for p in result.other_proofs)
    for p in result.other_proofs:
        h, w = p.shapes["input"][2:]
        assert p.output_shapes["output"][2:] == [h, w]
    assert_models_equivalent(demo, result.fixed, {"input": (1, 3, 512, 512)})


def test_fixed_demo_no_longer_has_the_baked_ops(demo: onnx.ModelProto) -> None:
    ops = [n.op_type for n in fix_model(demo).fixed.graph.node]
    assert "AveragePool" not in ops
    assert ops.count("ReduceMean") == 2


def test_input_model_untouched(demo: onnx.ModelProto) -> None:
    before = demo.SerializeToString()
    fix_model(demo)
    assert demo.SerializeToString() == before


def test_write_fixed_is_atomic(tmp_path, demo: onnx.ModelProto) -> None:
    result = fix_model(demo)
    out = tmp_path / "fixed.onnx"
    write_fixed(result, out)
    assert load_model(out).graph.node
    assert [p.name for p in tmp_path.iterdir()] == ["fixed.onnx"]


def test_pad_to_runs_off_lattice_and_crops_back(demo: onnx.ModelProto) -> None:
    result = fix_model(demo, pad_to="auto")
    assert result.pad_to == 16
    out = run_model(result.fixed, random_feeds(demo, {"input": (1, 3, 517, 300)}))
    assert out["output"].shape == (1, 2, 517, 300)
    # on the lattice the padding is empty, so the wrapped model equals the unpadded fix
    plain = fix_model(demo).fixed
    assert_models_equivalent(plain, result.fixed, {"input": (1, 3, 256, 320)})


def test_pad_to_rejects_garbage(demo: onnx.ModelProto) -> None:
    with pytest.raises(DynashapeError, match="--pad-to"):
        fix_model(demo, pad_to="seven")


def test_pad_wrap_interior_matches_reference(demo: onnx.ModelProto) -> None:
    fixed = fix_model(demo).fixed
    wrapped = pad_wrap(fixed, 16, {"input": (1, 3, 512, 512)})
    feeds = random_feeds(demo, {"input": (1, 3, 256, 256)})
    a = run_model(fixed, feeds)["output"]
    b = run_model(wrapped, feeds)["output"]
    np.testing.assert_allclose(a, b, atol=1e-5)
