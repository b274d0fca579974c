"""DS012: Expand/Tile whose shape/repeats hold an export-time size."""

from __future__ import annotations

from typing import Any

import models as M
import models_generated as G
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dynashape.backends.ort import RunError, run_model
from dynashape.pipeline.check import check_model
from dynashape.pipeline.fix import fix_model
from dynashape.rules.expand import ExpandPlan
from dynashape.rules.generated import GeneratedPlan
from dynashape.rules.joined import SizeEntry
from dynashape.testing import assert_models_equivalent, random_feeds

OTHER = [(2, 4, 32, 48), (3, 4, 20, 36), (1, 4, 16, 8)]


def _ds012(report: Any) -> list[Any]:
    return [f for f in report.findings if f.rule == "DS012"]


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.name == name]
    return node


@pytest.mark.parametrize("batch0", [1, 2])
@pytest.mark.parametrize(("op", "shape"), [("Expand", "constant"), ("Expand", "legacy"), ("Tile", "constant")])
def test_class_token_batch_from_the_tokens(op: str, shape: str, batch0: int) -> None:
    s0 = {"x": (batch0, 4, 32, 48)}
    model = G.cls_token(batch0, op=op, shape=shape)
    report = check_model(model, export_shape=s0)
    (f,) = report.findings
    node = "cls_expand" if op == "Expand" else "cls_tile"
    assert (f.rule, f.node, f.op, f.fixable, f.severity) == ("DS012", node, op, True, "error")
    # batch 1 at export: the 1 is still the export batch, and a Concat does not broadcast it
    assert f.baked_value == {"0": batch0}
    assert f.details["meets"] == {"0": ["tokens", 0]} and f.details["joins"] == [M.Y]
    assert "the join 'y' fails" in f.message
    fixed = report.fixed_model
    # the legacy subgraph turns expand's -1 into 1 (Expand broadcasts it)
    size0 = [batch0, 1, 4] if (op, shape) == ("Expand", "constant") else [batch0, 1, 1]
    # the plan: the batch from Shape(tokens), the rest as exported; it stays out of the JSON
    assert isinstance(f.plan, ExpandPlan) and f.plan.size_s0 == tuple(size0)
    assert f.plan.entries[0] == SizeEntry(ref="tokens", axis=0) and all(e.kind == "const" for e in f.plan.entries[1:])
    assert "plan" not in f.to_json() and set(f.details) == {"size_s0", "own", "meets", "joins"}
    assert report.applied == [f"{node}: {'shape' if op == 'Expand' else 'repeats'} {size0} -> from Shape(tokens)"]
    if shape == "legacy":  # the Where/Equal subgraph that computed -1 away is gone
        assert not {"Where", "Equal"} & {n.op_type for n in fixed.graph.node}
    assert_models_equivalent(model, fixed, s0)
    reference = G.cls_token(batch0, op=op, shape="reference")
    for shape_ in OTHER:
        n, _, h, w = shape_
        M.assert_same_outputs(fixed, reference, shape_, expected_shape=(n, 1 + h * w, 4))
    with pytest.raises(RunError):
        M.run(model, (batch0 + 1, 4, 32, 48))


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("op", ["Expand", "Tile"])
def test_class_token_in_older_and_newer_opsets(op: str, opset: int) -> None:
    s0 = {"x": (2, 4, 32, 48)}
    model = G.cls_token(2, op=op, shape="legacy" if op == "Expand" else "constant", opset=opset)
    report = check_model(model, export_shape=s0)
    assert [(f.rule, f.fixable) for f in report.findings] == [("DS012", True)]
    onnx.checker.check_model(report.fixed_model, full_check=True)
    assert_models_equivalent(model, report.fixed_model, s0)
    M.assert_same_outputs(report.fixed_model, G.cls_token(2, op=op, shape="reference", opset=opset), (3, 4, 20, 36))


def test_mask_expanded_to_the_int_batch() -> None:
    s0 = {"x": (2, 4, 32, 48)}
    model = G.mask_concat(2)
    report = check_model(model, export_shape=s0)
    (f,) = report.findings
    assert (f.rule, f.node, f.baked_value) == ("DS012", "mask_expand", {"0": 2})
    assert_models_equivalent(model, report.fixed_model, s0)
    for shape in OTHER:
        # re-specialized reference: the builder with this shape's batch
        M.assert_same_outputs(report.fixed_model, G.mask_concat(shape[0]), shape)


def test_expand_to_its_own_export_sizes_broadcasts_with_ones() -> None:
    s0 = {"x": (2, 4, 32, 48)}
    model = G.expand_own(2, 32, 48)
    report = check_model(model, export_shape=s0)
    (f,) = report.findings
    assert (f.rule, f.node) == ("DS012", M.Y)
    assert f.details["own"] == [0, 2, 3] and f.details["meets"] == {}
    assert f.fix.startswith("use shape [1, 8, 1, 1]")
    assert "the Expand fails" in f.message
    target = _node(report.fixed_model, M.Y).input[1]
    inits = {t.name: numpy_helper.to_array(t) for t in report.fixed_model.graph.initializer}
    np.testing.assert_array_equal(inits[target], [1, 8, 1, 1])
    assert_models_equivalent(model, report.fixed_model, s0)
    for shape in OTHER:
        M.assert_same_outputs(report.fixed_model, G.expand_own(1, 1, 1, reference=True), shape,
                              expected_shape=(shape[0], 8, shape[2], shape[3]))


def test_expand_to_the_export_batch_with_no_join() -> None:
    s0 = {"x": (3, 4, 16, 16)}
    model = G.expand_batch_output(3)
    report = check_model(model, export_shape=s0)
    (f,) = _ds012(report)
    assert (f.node, f.baked_value) == ("z", {"0": 3})
    assert "export batch of input 'x'" in f.message
    assert_models_equivalent(model, report.fixed_model, s0)
    for n in (1, 5):
        feeds = random_feeds(model, {"x": (n, 4, 16, 16)})
        z = run_model(report.fixed_model, feeds)["z"]
        np.testing.assert_array_equal(z, np.broadcast_to(np.arange(8, dtype=np.float32), (n, 8)))


@pytest.mark.parametrize("build", [
    pytest.param(G.harmless_expands, id="ones_bias_tile_shape"),
    pytest.param(lambda: G.cls_token(1, shape="reference"), id="cls_from_shape"),
    pytest.param(lambda: G.cls_token(1, op="Tile", shape="reference"), id="cls_tile_from_shape"),
    pytest.param(G.cls_token_add, id="cls_added_broadcasts"),
])
def test_expands_that_are_right_at_every_size(build: Any) -> None:
    model = build()
    report = check_model(model, export_shape={"x": (1, 4, 32, 48)})
    assert _ds012(report) == [] and report.applied == []
    reasons = [r.reason for r in report.refusals if r.rule == "DS012"]
    assert reasons and all("no export-time size" in r or "follows the input" in r for r in reasons), reasons
    for shape in OTHER:  # and they do run everywhere
        M.run(model, shape)


def test_fix_proves_the_rewrite() -> None:
    s0 = {"x": (1, 4, 32, 48)}
    result = fix_model(G.cls_token(1, shape="legacy"), export_shape=s0)
    assert [f.rule for f in result.report.findings] == ["DS012"]
    assert result.export_proof is not None and result.export_proof.status == "ok"
    assert result.other_proofs and all(p.status == "ok" for p in result.other_proofs)


# ------------------------------------------------------------------------------ PyTorch


def _export(net: Any, s0: tuple[int, ...], exporter: str = "legacy") -> onnx.ModelProto:
    from dynashape.export import export_module

    return export_module(net, {"input": s0}, exporter=exporter).model


def _assert_matches_eager(model: onnx.ModelProto, net: Any, shapes: list[tuple[int, ...]]) -> None:
    import torch

    for shape in shapes:
        feeds = random_feeds(model, {"input": shape}, seed=3)
        (got,) = run_model(model, feeds).values()
        with torch.no_grad():
            want = net(torch.from_numpy(feeds["input"])).numpy()
        assert got.shape == want.shape, (shape, got.shape, want.shape)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=str(shape))


TORCH_OTHER = [(3, 3, 64, 80), (1, 3, 24, 40)]


@pytest.mark.torch
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(("name", "args", "op"), [
    ("ClassToken", ("expand",), "Expand"),
    ("ClassToken", ("repeat",), "Tile"),
    ("MaskExpand", (), "Expand"),
    ("ExpandOwn", (), "Expand"),
])
def test_torch_legacy(name: str, args: tuple, op: str, batch: int) -> None:
    pytest.importorskip("torch")
    import models_generated_torch as T

    net = getattr(T, name)(*args).eval()
    s0 = (batch, 3, 32, 48)
    model = _export(net, s0)
    report = check_model(model)
    found = _ds012(report)
    if name == "ExpandOwn" and batch == 1:
        # b = 1 is harmless there (1 keeps the input's batch); h and w are still frozen
        assert found and found[0].details["own"] == [2, 3]
    assert [f.op for f in found] == [op] and found[0].fixable, [x.message for x in report.findings]
    assert_models_equivalent(model, report.fixed_model, {"input": s0})
    _assert_matches_eager(report.fixed_model, net, TORCH_OTHER)


@pytest.mark.torch
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torch_clean_class_token(exporter: str, batch: int) -> None:
    pytest.importorskip("torch")
    import models_generated_torch as T

    net = T.ClassToken("clean").eval()
    model = _export(net, (batch, 3, 32, 48), exporter)
    report = check_model(model)
    assert report.findings == []
    _assert_matches_eager(model, net, TORCH_OTHER)


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["expand", "repeat"])
def test_torch_dynamo(mode: str) -> None:
    """dynamo keeps int(x.shape[0]) symbolic, except at batch 1, which it specialises: the expanded
    class token is then folded into a [1, 1, C] constant (no Expand left), a DS007 finding."""
    pytest.importorskip("torch")
    import models_generated_torch as T

    net = T.ClassToken(mode).eval()
    for batch in (1, 2):
        model = _export(net, (batch, 3, 32, 48), "dynamo")
        report = check_model(model)
        if batch == 2:
            assert report.findings == []
            _assert_matches_eager(model, net, TORCH_OTHER)
            continue
        (f,) = report.findings
        assert (f.rule, f.op, f.fixable) == ("DS007", "Concat", True)
        assert isinstance(f.plan, GeneratedPlan)
        assert f.plan.operands[0].recipe["terms"] == []  # one slice, expanded to Shape(tokens)
        _assert_matches_eager(report.fixed_model, net, TORCH_OTHER)


@pytest.mark.torch
@pytest.mark.parametrize(("name", "args"), [("ClassToken", ("expand",)), ("MaskExpand", ())])
def test_torch_differential_export_names_the_expand(name: str, args: tuple) -> None:
    """Differential export agrees with the static rule: the int batch reaches the Expand through
    the legacy Where(shape == -1, 1, shape) subgraph, one DS012 finding there."""
    pytest.importorskip("torch")
    import models_generated_torch as T

    from dynashape.pipeline.differential import differential_export

    net = getattr(T, name)(*args).eval()
    result = differential_export(net, {"input": (2, 3, 32, 48)})
    assert [(f.rule, f.op) for f in result.findings] == [("DS012", "Expand")]
    (f,) = result.findings
    static = _ds012(check_model(result.export_s0.model))
    assert [g.node for g in static] == [f.node]
