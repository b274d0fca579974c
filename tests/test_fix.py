"""fix: rewrites proven at the export shape, --pad-to, and nothing written on failure."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import models as M
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from dynashape.analysis.context import Context, const_i64
from dynashape.backends.ort import run_model
from dynashape.demo import demo_onnx_path
from dynashape.errors import DynashapeError
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.model import load_model
from dynashape.pipeline.fix import fix_model, pad_wrap, proof_shapes, write_fixed
from dynashape.rules import DEFAULT_RULES
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder
from dynashape.shapes import ShapeMap, parse_ranges
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


# ------------------------------------------------------------------------------ monotone fix


@dataclass(frozen=True)
class FreezePlan(RewritePlan):
    slot: int
    values: tuple[int, ...]


class FreezeShapeInput(Rule[FreezePlan]):
    """A deliberately wrong rule: it freezes a computed shape input (a Reshape target, a Resize
    size) at its export-time value, which breaks the model at every other shape. Written as any
    rule is: check decides (with probes), the plan carries it, rewrite applies it."""

    id = "DSBAD"
    title = "test only: freezes a computed shape input"
    ops = ("Reshape", "Resize")

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        slot = 1 if node.op_type == "Reshape" else 3
        value = node.inputs[slot] if len(node.inputs) > slot else None
        frozen = ctx.value(value, ctx.p0) if value is not None else None
        if value is None or value.const_value is not None or frozen is None:
            return self.refuse(node, "no computed shape input")
        return self.finding(node, severity="error", message="computed shape input", fixable=True,
                            fix="freeze it", details={"slot": slot},
                            plan=FreezePlan(slot, tuple(int(v) for v in np.ravel(frozen))))

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: FreezePlan) -> str:
        node.replace_input_with(plan.slot, builder.const(f"{node.name}_frozen", list(plan.values)))
        return f"{node.name}: froze input {plan.slot}"


def test_a_rewrite_that_breaks_a_working_shape_is_rolled_back() -> None:
    model = M.reshape_from_shape()
    s0 = {"x": (1, M.C, 16, 16)}
    result = fix_model(model, export_shape=s0, rules=[FreezeShapeInput()])
    assert [(r.rule, r.node) for r in result.rolled_back] == [("DSBAD", "y")]
    # batch 2 has a reference without one given: the original item by item at S0
    assert result.rolled_back[0].shapes == {"x": (2, M.C, 16, 16)}
    assert "where the original was right" in result.rolled_back[0].reason
    assert result.applied == []
    (finding,) = result.unfixed
    assert not finding.fixable and "rolled back" in finding.fix
    assert all(p.verdict != "worse" for p in [result.export_proof, *result.other_proofs] if p is not None)
    for shape in [(2, M.C, 16, 16), (1, M.C, 24, 8)]:
        assert_models_equivalent(model, result.fixed, {"x": shape})


def test_only_the_breaking_rewrite_is_rolled_back(demo: onnx.ModelProto) -> None:
    # the demo's three real rewrites run first; the bad rule then freezes the fixed Resize's size
    result = fix_model(demo, rules=[*DEFAULT_RULES, FreezeShapeInput()])
    assert [r.rule for r in result.rolled_back] == ["DSBAD"]
    assert len(result.applied) == 3
    assert all(p.verdict in ("same", "runs") for p in result.other_proofs)
    assert [p.verdict for p in result.other_proofs if p.shapes["input"][0] == 2] == ["same"]


def test_a_correct_fix_rolls_nothing_back(demo: onnx.ModelProto) -> None:
    result = fix_model(demo)
    assert result.rolled_back == []
    # batch 2 is among the proofs: the original runs there, and the fixed model equals it
    assert any(p.shapes["input"][0] == 2 and p.verdict == "same" for p in result.other_proofs)


class _OriginalAsReference:
    """A reference that says the original model is right everywhere it runs."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model

    def outputs(self, shapes: ShapeMap, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        return run_model(self.model, feeds)


def test_with_a_reference_a_changed_value_is_worse() -> None:
    # a strip pool fixed to ReduceMean changes the output where the original ran (larger input:
    # H-k+1 rows); without a reference that is unproven, with one that calls the original right
    # it is worse and rolled back
    model = M.strip_pool(16, 16, axes="h")
    s0 = {"x": (1, M.C, 16, 16)}
    plain = fix_model(model, export_shape=s0)
    assert plain.rolled_back == [] and plain.applied
    assert "changed" in {p.verdict for p in plain.other_proofs}  # 24x24: one 16-row window, then one row
    judged = fix_model(model, export_shape=s0, reference=_OriginalAsReference(model), reference_label="original")
    assert judged.rolled_back and judged.applied == []


def test_proof_shapes_follow_the_range_and_include_a_batch() -> None:
    model = M.reshape_from_shape()
    s0 = {"x": (1, M.C, 64, 64)}
    ranges = parse_ranges(f"x:[1..2]x{M.C}x[32..96]x[32..96]", ["x"])
    shapes = proof_shapes(model, s0, {}, ranges)
    assert {"x": (2, M.C, 64, 64)} in shapes
    assert {"x": (1, M.C, 32, 32)} in shapes and {"x": (2, M.C, 96, 96)} in shapes
    assert all(ranges["x"].contains(s["x"]) for s in shapes)
    # the range's far end is skipped when it holds more than 8x the export shape's elements
    wide = parse_ranges(f"x:[1..4]x{M.C}x[32..1024]x[32..1024]", ["x"])
    assert {"x": (4, M.C, 1024, 1024)} not in proof_shapes(model, s0, {}, wide)


def _doubled(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its first output multiplied by 2: wrong everywhere, S0 included."""
    m = ir.serde.deserialize_model(model)
    out = m.graph.outputs[0]
    two = const_i64(m.graph, "two_i64", [2])
    cast = ir.node("Cast", [two], attributes={"to": out.dtype}, num_outputs=1)
    mul = ir.node("Mul", [out, cast.outputs[0]], num_outputs=1)
    m.graph.extend([cast, mul])
    mul.outputs[0].name, mul.outputs[0].shape, mul.outputs[0].type = "doubled", out.shape, out.type
    m.graph.outputs[0] = mul.outputs[0]
    return ir.serde.serialize_model(m)


def test_a_worse_model_no_rewrite_explains_is_never_written(
    demo: onnx.ModelProto, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the rewrites, the written model must be no worse than the original. Break the
    # step after the rules (the wrap that --pad-to would add): every rewrite is taken back in turn,
    # none explains it, and fix refuses instead of writing a worse model.
    fixmod = importlib.import_module("dynashape.pipeline.fix")

    monkeypatch.setattr(fixmod, "_wrapped", lambda report, multiple: _doubled(report.fixed_model))
    out = tmp_path / "fixed.onnx"
    with pytest.raises(DynashapeError, match=r"worse than the original.*nothing was written"):
        result = fix_model(demo)
        write_fixed(result, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
