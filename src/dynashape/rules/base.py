"""The rule interface: ``check`` reports, ``rewrite`` fixes.

``check(ctx, node)`` returns a :class:`Finding` (with the rule's typed plan when it is fixable) or
a :class:`Refusal` (why it did not fire: the reason is the product). ``rewrite(builder, node,
plan)`` applies the plan through the one :class:`RewriteBuilder` and says in one line what changed.
Rules keep no state between the two: everything the rewrite needs is in the plan. The pass manager
(``dynashape.pipeline.passes``) runs them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import onnx_ir as ir

from dynashape.analysis.context import Context
from dynashape.findings import Finding, Refusal, RewritePlan, Severity
from dynashape.rules.builder import RewriteBuilder

PlanT = TypeVar("PlanT", bound=RewritePlan)


class Rule(Generic[PlanT]):
    id: ClassVar[str]
    title: ClassVar[str]  # one line for `check --list-rules`
    ops: ClassVar[tuple[str, ...]]
    # the rewrite is only right at the true export shape (it matches baked constants against
    # export-time sizes); with only a guessed shape it must not be applied
    needs_export_shape: ClassVar[bool] = False

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:  # pragma: no cover
        raise NotImplementedError

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: PlanT) -> str:  # pragma: no cover
        """Apply ``plan`` to ``node`` through ``builder``; return a one-line description of what changed."""
        raise NotImplementedError(f"{self.id} only reports")

    def shadows_downstream(self, finding: Finding) -> bool:
        """Does this (fixable) finding make the shapes after it wrong but consistent at the
        second probe shape? Then this rule's findings downstream of it wait for the next round,
        after the rewrite (a reshape that mixes the batch into the channels makes every reshape
        after it look wrong there)."""
        return False

    def refuse(self, node: ir.Node, reason: str) -> Refusal:
        return Refusal(self.id, node.name or "", reason)

    def finding(self, node: ir.Node, *, severity: Severity, plan: PlanT | None = None, **fields: Any) -> Finding:
        """A finding of this rule on ``node`` (its name, op and inputs filled in); ``plan``: what
        ``rewrite`` needs when it is fixable."""
        return Finding(rule=self.id, severity=severity, node=node.name or "", op=node.op_type,
                       inputs=input_names(node), plan=plan, **fields)


def input_names(node: ir.Node) -> list[str]:
    return [v.name or "" if v is not None else "" for v in node.inputs]
