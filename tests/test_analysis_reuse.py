"""What the analysis keeps from before a rewrite (issue 16: check in under a second): a prober built
from the one before (``Prober(..., previous=)``), the context's ``memo`` and the shape engine's
decisive guards. None of it may answer for a graph it was not computed from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import models as M
import models_generated as G
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from dynashape.analysis.context import Context
from dynashape.analysis.probe import Probe, Prober
from dynashape.pipeline.check import check_model
from dynashape.rules.builder import RewriteBuilder

S0 = {"x": (1, 4, 32, 48)}


def _shape_arith_model(*, half: int = 2, kernel: int = 2, constant_node: bool = True) -> onnx.ModelProto:
    """x -> Reshape(x, (n, c, h / half, w * half)) -> back -> MaxPool(kernel): a shape subgraph with
    its constants as Constant nodes (or initializers) and a pool the prober checks."""
    g = M.GraphBuilder()
    shape = g.op("Shape", [M.X], "shape")

    def const(name: str, values: list[int]) -> str:
        if not constant_node:
            return g.i64(name, values)
        g.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_node",
                                        value=numpy_helper.from_array(np.asarray(values, np.int64), name)))
        return name

    dims = [g.op("Gather", [shape, const(f"i{k}", [k])], f"d{k}", axis=0) for k in range(4)]
    h = g.op("Div", [dims[2], const("half", [half])], "h")
    w = g.op("Mul", [dims[3], const("double", [half])], "w")
    target = g.op("Concat", [dims[0], dims[1], h, w], "target", axis=0)
    folded = g.op("Reshape", [M.X, target], "folded")
    back = g.op("Reshape", [folded, shape], "back")
    g.op("MaxPool", [back], M.Y, kernel_shape=[kernel, kernel], strides=[2, 2])
    return g.model([M.Y])


def _same_probes(a: Prober, b: Prober, shapes: list[dict[str, tuple[int, ...]]]) -> None:
    for s in shapes:
        pa, pb = a.at(s), b.at(s)
        assert str(pa.failure) == str(pb.failure), s
        for name in b._value_names:
            assert pa.shape(name) == pb.shape(name), (s, name)
            va, vb = pa.value(name), pb.value(name)
            assert (va is None) == (vb is None), (s, name)
            if va is not None:
                np.testing.assert_array_equal(va, vb)


SHAPES = [{"x": (1, 4, h, w)} for h, w in ((32, 48), (64, 96), (33, 48), (2, 2), (4, 6), (1, 1))]


@pytest.mark.parametrize("constant_node", [True, False])
def test_a_prober_made_from_the_one_before_a_rewrite_probes_as_a_new_one(constant_node: bool) -> None:
    before = _shape_arith_model(constant_node=constant_node)
    previous = Prober(before)
    for s in SHAPES:
        previous.at(s)  # its nodes' derived data made, and its probes
    # the same names, other contents: a Constant's value (or an initializer), a pool's kernel
    after = _shape_arith_model(half=4, kernel=3, constant_node=constant_node)
    reused = Prober(after, previous=previous)
    fresh = Prober(after)
    for p in (reused, fresh):
        p._engine_state = "off"  # ONNX inference only: the prober's own answers
    _same_probes(reused, fresh, SHAPES)
    np.testing.assert_array_equal(reused.constants["half"], [4])  # not the 2 of before
    assert [c.kernel for c in reused._checked if c.op == "MaxPool"] == [[3, 3]]
    # and what it answers is the new graph's, not the old one's
    assert reused.at({"x": (1, 4, 32, 48)}).value("h").tolist() == [8]
    assert previous.at({"x": (1, 4, 32, 48)}).value("h").tolist() == [16]


def test_a_prober_made_from_the_one_before_reuses_the_nodes_left_as_they_were() -> None:
    model = _shape_arith_model()
    previous = Prober(model)
    reused = Prober(model, previous=previous)
    # equal bytes, equal node: what was derived from it is taken over, not made again
    i = previous._table.names.index("half_node")
    assert reused._table._derived[i] is previous._table._derived[i]
    assert reused.constants["half"] is previous.constants["half"]
    _same_probes(reused, Prober(model), SHAPES)


def test_a_context_refreshed_after_a_rewrite_probes_as_a_new_one() -> None:
    ctx = Context.create(_shape_arith_model(), {"x": (1, 4, 32, 48)})
    assert ctx.p0.value("h").tolist() == [16] and ctx.p1.ok
    # a rewrite: Div by a new constant 4 instead of the Constant node "half" (2)
    builder = RewriteBuilder(ctx.model, ctx.proto)
    div = builder.find_node("h")
    assert div is not None
    div.replace_input_with(1, builder.const("quarter", [4]))
    ctx.refresh()
    assert ctx.p0.value("h").tolist() == [8]
    fresh = Prober(ctx.proto)
    ctx.prober._engine_state = fresh._engine_state = "off"
    _same_probes(ctx.prober, fresh, SHAPES)


# ------------------------------------------------------------------------------------ memo


def test_memo_is_kept_until_the_graph_is_refreshed() -> None:
    model = _shape_arith_model()
    ctx = Context.create(model, {"x": (1, 4, 32, 48)})
    made: list[int] = []

    def consumers_of_h() -> int:
        node = next(n for n in ctx.model.graph if n.name == "h")
        made.append(1)
        return len(node.outputs[0].uses())

    node = next(n for n in ctx.model.graph if n.name == "h")
    assert ctx.memo("test", node, consumers_of_h) == 1
    assert ctx.memo("test", node, consumers_of_h) == 1 and len(made) == 1  # kept
    assert ctx.memo("other", node, consumers_of_h) == 1 and len(made) == 2  # per purpose
    # a rewrite: h gets a second consumer; after the refresh the memo answers for the new graph
    builder = RewriteBuilder(ctx.model, ctx.proto)
    target = next(n for n in ctx.model.graph if n.name == "target")
    builder.op("Identity", [node.outputs[0]], name="h_copy")
    builder.insert_before(target)
    ctx.refresh()
    assert ctx.memo("test", node, consumers_of_h) == 2 and len(made) == 3


def _without_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    def memo(self: Context, purpose: str, node: Any, make: Callable[[], Any]) -> Any:
        return make()

    monkeypatch.setattr(Context, "memo", memo)


def _results(model: onnx.ModelProto) -> tuple[list[Any], list[Any], list[str]]:
    report = check_model(model, export_shape=S0)
    return ([f.to_json() for f in report.findings], [(r.rule, r.node, r.reason) for r in report.refusals],
            report.applied)


@pytest.mark.parametrize("build", [
    lambda: G.add_fill(32, 48, source="constant", join="Add"),  # DS007 rewrites, DS008 then looks again
    lambda: G.add_fill(32, 48, source="cos", join="Concat"),
    lambda: G.yolo_grid(32, 48, source="constant"),  # DS007 refers to DS008, which rewrites
    lambda: G.coord_concat(32, 48),
])
def test_ds007_and_ds008_share_their_analysis_but_never_across_a_rewrite(
        build: Callable[[], onnx.ModelProto], monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _results(build())
    _without_memo(monkeypatch)
    assert shared == _results(build())
    # the rule that looks second after a rewrite saw the rewritten graph (a stale analysis would
    # still find the frozen operand the first rule rewrote)
    assert shared[2]


# ------------------------------------------------------------------------- decisive guards


def test_a_pool_window_larger_than_its_input_is_answered_without_an_onnx_probe() -> None:
    prober = Prober(_shape_arith_model())
    prober.at({"x": (1, 4, 32, 48)})
    prober.at({"x": (2, 4, 64, 96)})
    assert prober._engine_trusted()
    probed: list[dict[str, tuple[int, ...]]] = []
    real = prober._probe

    def counted(shapes: dict[str, tuple[int, ...]]) -> Probe:
        probed.append(shapes)
        return real(shapes)

    prober._probe = counted  # type: ignore[method-assign]
    assert prober.at({"x": (1, 4, 2, 2)}).ok and not probed
    # 2x1: the reshapes hold, the 2x2 pool's window is wider than its input; ONNX gives that
    # pool an output size of its own (the engine is not sure of it), but the prober fails there
    failed = prober.at({"x": (1, 4, 2, 1)})
    assert not failed.ok and not probed
    assert failed.failure is not None and "larger than its input" in str(failed.failure)
    assert probed == [{"x": (1, 4, 2, 1)}]  # its words are the prober's, made when read
