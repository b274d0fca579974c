"""The pass manager, the rewrite builder and the plans: check reports, the passes rewrite."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from dynashape.analysis.context import Context
from dynashape.demo import demo_onnx_path
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.model import load_model
from dynashape.pipeline.check import check_model
from dynashape.pipeline.passes import PassManager, RewritePolicy
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder


def _relu_chain(n: int = 3) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    names = ["x", *(f"r{k}" for k in range(n - 1)), "y"]
    nodes = [helper.make_node("Relu", [names[k]], [names[k + 1]], name=f"relu{k}") for k in range(n)]
    model = helper.make_model(helper.make_graph(nodes, "chain", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class FirstReluPlan(RewritePlan):
    pass


class FirstReluToIdentity(Rule[FirstReluPlan]):
    """Test rule: only the first Relu of a chain is a hazard; rewriting it makes the next one first."""

    id = "DSTEST"
    title = "test only"
    ops = ("Relu",)

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        x = node.inputs[0]
        producer = x.producer() if x is not None else None
        if producer is not None and producer.op_type == "Relu":
            return self.refuse(node, "not the first Relu")
        return self.finding(node, severity="warning", message="first Relu", fixable=True, plan=FirstReluPlan())

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: FirstReluPlan) -> str:
        identity = builder.node("Identity", [node.inputs[0]], name=f"{node.name}_identity")
        builder.insert_before(node)
        builder.replace_uses(node.outputs[0], identity.outputs[0])
        builder.remove(node)
        return f"{node.name} -> Identity"


def test_a_rule_repeats_until_a_round_rewrites_nothing() -> None:
    ctx = Context.create(_relu_chain(3), {"x": (1, 4)})
    done = PassManager([FirstReluToIdentity()]).run(ctx)
    # one rewrite per round, each making the next Relu the first; the fourth round changes nothing
    assert done.applied == ["relu0 -> Identity", "relu1 -> Identity", "relu2 -> Identity"]
    assert [n.op_type for n in done.model.graph.node] == ["Identity"] * 3
    assert [o.name for o in done.model.graph.output] == ["y"]  # the replacement took the output's name
    assert [f.node for f in done.findings] == ["relu0", "relu1", "relu2"] and done.refusals == []


def test_at_most_max_rounds() -> None:
    ctx = Context.create(_relu_chain(3), {"x": (1, 4)})
    done = PassManager([FirstReluToIdentity()], max_rounds=2).run(ctx)
    assert done.applied == ["relu0 -> Identity", "relu1 -> Identity"]
    # the last round's verdict stands: relu2 was refused while relu1 was still a Relu
    assert [r.node for r in done.refusals] == ["relu2"]


def test_a_policy_keeps_a_finding_but_not_its_rewrite() -> None:
    ctx = Context.create(_relu_chain(2), {"x": (1, 4)})
    done = PassManager([FirstReluToIdentity()], RewritePolicy(exclude={("DSTEST", "relu0"): "made it worse"})).run(ctx)
    assert done.applied == []
    (f,) = done.findings
    assert not f.fixable and f.fix.startswith("not rewritten: made it worse")


def test_the_builder_names_uniquely_and_inserts_in_order() -> None:
    proto = _relu_chain(2)
    model = ir.serde.deserialize_model(proto)
    builder = RewriteBuilder(model, proto)
    anchor = builder.find_node("relu1")
    assert anchor is not None and builder.find_node("nope") is None
    a = builder.const("k", [1, 2])
    b = builder.const("k", [3])
    assert (a.name, b.name) == ("k", "k_1") and a.const_value is not None and a.const_value.numpy().tolist() == [1, 2]
    first = builder.node("Shape", [anchor.inputs[0]], name="relu1")  # a name the graph has: suffixed
    second = builder.node("Shape", [anchor.inputs[0]], name="relu1")  # and one queued here
    assert (first.name, second.name) == ("relu1_1", "relu1_2") and first.outputs[0].name == "relu1_1_output"
    assert builder.pending
    builder.insert_before(anchor)
    assert not builder.pending
    assert [n.name for n in model.graph] == ["relu0", "relu1_1", "relu1_2", "relu1"]
    assert builder.producer_of("relu1_2_output") is second and builder.find_value("r0") is anchor.inputs[0]


@pytest.fixture(scope="module")
def demo() -> onnx.ModelProto:
    return load_model(demo_onnx_path())


def test_fixable_findings_carry_a_frozen_plan_kept_out_of_the_json(demo: onnx.ModelProto) -> None:
    report = check_model(demo)
    fixable = [f for f in report.findings if f.fixable]
    assert len(fixable) == 3 and len(report.applied) == 3
    for f in fixable:
        assert isinstance(f.plan, RewritePlan) and dataclasses.is_dataclass(f.plan)
        with pytest.raises(dataclasses.FrozenInstanceError):
            f.plan.kind = "changed"  # type: ignore[attr-defined]
        assert "plan" not in f.to_json() and "plan" not in f.details
    text = json.dumps(report.to_json())
    assert '"plan"' not in text
