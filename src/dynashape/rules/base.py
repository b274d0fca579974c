"""The rule interface: ``check`` returns a Finding or a Refusal (why it did not fire);
``rewrite`` applies the fix the finding describes. Rules keep no state between the two: the
plan travels in ``Finding.details``."""

from __future__ import annotations

from typing import Any, ClassVar

import onnx_ir as ir

from dynashape.analysis import Context
from dynashape.findings import Finding, Refusal, Severity


class Rule:
    id: ClassVar[str]
    title: ClassVar[str]  # one line for `check --list-rules`
    ops: ClassVar[tuple[str, ...]]
    # the rewrite is only right at the true export shape (it matches baked constants against
    # export-time sizes); with only a guessed shape it must not be applied
    needs_export_shape: ClassVar[bool] = False

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:  # pragma: no cover
        raise NotImplementedError

    def rewrite(self, ctx: Context, node: ir.Node, finding: Finding) -> str:  # pragma: no cover
        """Apply the fix in ``ctx.model``; return a one-line description of what changed."""
        raise NotImplementedError

    def shadows_downstream(self, finding: Finding) -> bool:
        """Does this (fixable) finding make the shapes after it wrong but consistent at the
        second probe shape? Then this rule's findings downstream of it wait for the next round,
        after the rewrite (a reshape that mixes the batch into the channels makes every reshape
        after it look wrong there)."""
        return False

    def refuse(self, node: ir.Node, reason: str) -> Refusal:
        return Refusal(self.id, node.name or "", reason)

    def finding(self, node: ir.Node, *, severity: Severity, **fields: Any) -> Finding:
        """A finding of this rule on ``node`` (its name, op and inputs filled in)."""
        return Finding(rule=self.id, severity=severity, node=node.name or "", op=node.op_type,
                       inputs=input_names(node), **fields)


def input_names(node: ir.Node) -> list[str]:
    return [v.name or "" if v is not None else "" for v in node.inputs]


def new_name(graph: ir.Graph, base: str) -> str:
    taken = {n.name for n in graph}
    name = base
    k = 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    return name


def replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Make every consumer (and the graph outputs) use ``new``; ``new`` takes ``old``'s name."""
    name = old.name
    if new.type is None:
        new.type = old.type
    if new.shape is None and old.is_graph_output():
        new.shape = old.shape  # a graph output must declare its shape (its rank at least)
    # a graph output is replaced too (onnx_ir refuses to otherwise): a pool or resize can be the last node
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    old.name = f"{name}__replaced"
    new.name = name
