"""DS012: ``Expand``/``Tile`` whose ``shape``/``repeats`` hold an export-time size.

``cls.expand(int(x.shape[0]), -1, -1)``, ``mask.expand(b, -1, -1, -1)`` or ``x.repeat(b, 1, 1)``
with Python ints export a constant target (the legacy exporter computes ``-1`` away with a small
``Where``/``Equal`` subgraph that folds to ``[B0, 1, 1]``). The output then keeps the export batch
(or height, width) while the tensor it is joined with follows the input, and the join fails.

An entry is a hazard only when it stays put between the two probes and either
* equals the input's own export-time size on an axis where the input is dynamic (``x.expand(b,
  c, h, w)`` with ints): at S1 the input no longer broadcasts to it. Fix: ``1``, which keeps the
  input's size; or
* sets an output axis (the input is static there) to the export-time size of the dynamic axis it
  meets at a join (``Concat``, ``Add``...); an entry of 1 is a hazard only in a ``Concat``, where
  it does not broadcast. Fix: that entry from ``Shape(partner)`` (for ``Tile``, divided by the
  input's size on the axis). With no join, an entry equal to the export batch of a graph input
  whose batch is dynamic (the output keeps it) is taken from that input.

Entries of 1 that broadcast, and entries on static axes (the channels), are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import Context, fmt, origin_of
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder
from dynashape.rules.joined import (
    SizeBuilder,
    SizeEntry,
    build_size_vector,
    downstream_joins,
    expanded_axes_frozen,
    known_dims,
    meeting_at,
)


@dataclass(frozen=True)
class ExpandPlan(RewritePlan):
    """DS012: the ``shape``/``repeats`` of the node making ``output``, rebuilt from ``entries``."""

    output: str  # the node's output: the node is found by it (node names may repeat)
    size_s0: tuple[int, ...]
    entries: tuple[SizeEntry, ...]


class FrozenExpandTile(Rule[ExpandPlan]):
    id = "DS012"
    title = "Expand/Tile with a constant shape or repeats holding an export-time size (expand(b, -1, -1) with ints)"
    ops = ("Expand", "Tile")
    needs_export_shape = True

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        what = "shape" if node.op_type == "Expand" else "repeats"
        x, size = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        if x is None or size is None:
            return self.refuse(node, f"no {what} input")
        v0, v1 = ctx.value(size, ctx.p0), ctx.value(size, ctx.p1)
        if v0 is None or v1 is None:
            return self.refuse(node, f"its {what} is computed from data, not from shapes and constants")
        t0 = [int(v) for v in np.atleast_1d(v0)]
        t1 = [int(v) for v in np.atleast_1d(v1)]
        x0, x1 = known_dims(ctx, x, ctx.p0), known_dims(ctx, x, ctx.p1)
        if x0 is None or x1 is None or len(x0) != len(x1) or any(d is None for d in x0):
            return self.refuse(node, "input shape unknown")
        if len(t0) != len(t1):
            return self.refuse(node, f"its {what} changes length with the input size")
        if not any(a == b for a, b in zip(t0, t1)):
            return self.refuse(node, f"its {what} follows the input size")
        if node.op_type == "Tile" and len(t0) != len(x0):
            return self.refuse(node, f"repeats {t0} do not match the rank-{len(x0)} input")
        rank = max(len(x0), len(t0))
        lead_t, lead_x = rank - len(t0), rank - len(x0)
        own: list[int] = []  # entries equal to the input's own dynamic size
        frozen: list[int] = []  # output axes this op sets to a fixed size
        out0: list[int] = []
        for k in range(rank):
            e, xa = k - lead_t, k - lead_x
            xk0 = int(x0[xa] or 0) if xa >= 0 else 1
            xk1 = x1[xa] if xa >= 0 else 1
            x_dynamic = xk1 is not None and xk1 != xk0
            if e < 0:
                out0.append(xk0)
                continue
            te0, te1 = t0[e], t1[e]
            if node.op_type == "Tile":
                out0.append(xk0 * te0)
                if te0 == te1 and not x_dynamic and (te0 > 1 or xk0 == 1):
                    frozen.append(k)
                continue
            if xk0 != 1 and te0 not in (1, xk0):
                return self.refuse(node, f"shape {t0} does not broadcast from {fmt(x0)} even at the export shape")
            out0.append(xk0 if te0 == 1 else te0)
            if te0 != te1:
                continue
            if x_dynamic:
                if te0 == xk0 and te0 > 1 and xk1 != 1:
                    own.append(e)
            elif te0 > xk0 or te0 == xk0 == 1:
                frozen.append(k)
        axes: dict[int, tuple[ir.Value, int]] = {}
        joins: list[str] = []
        for join, slot in downstream_joins(node.outputs[0]):
            meeting = meeting_at(ctx, join, slot, tuple(out0), [k for k in frozen if k not in axes], avoid=node)
            if meeting.axes:
                joins.append(join.name or "")
                axes.update(meeting.axes)
        x_frozen = expanded_axes_frozen(ctx, node, [k for k in range(rank) if k - lead_x >= 0 and not (
            x1[k - lead_x] is not None and x1[k - lead_x] != x0[k - lead_x])])
        if x_frozen and origin_of(x).kind == "constant":
            for join, slot in downstream_joins(node.outputs[0]):
                met = meeting_at(ctx, join, slot, tuple(out0), x_frozen, avoid=node)
                if met.axes:
                    return self.refuse(
                        node, f"the tensor it {'expands' if node.op_type == 'Expand' else 'tiles'} ({x.name!r}) is "
                        f"itself a constant of export size on axes {sorted(met.axes)}: DS007 rebuilds the whole tensor")
        batch_ref = None
        if not axes and 0 in frozen and out0[0] > 1:
            batch_ref = self._input_batch(ctx, out0[0])
        if not own and not axes and batch_ref is None:
            return self.refuse(
                node, f"its {what} {t0} holds no export-time size of a dynamic axis: the axes it fixes "
                f"({', '.join(str(k) for k in frozen) or 'none'}) meet no dynamic axis at a join")
        entries: list[SizeEntry] = []
        baked: dict[str, int] = {}
        reasons: list[str] = []
        for e in range(len(t0)):
            k = e + lead_t
            xa = k - lead_x
            xk0 = int(x0[xa] or 0) if xa >= 0 else 1
            if e in own:
                entries.append(SizeEntry(const=1))
                baked[str(e)] = t0[e]
                reasons.append(f"entry {e} = {t0[e]} is its input's own export-time size on a dynamic axis")
            elif k in axes:
                partner, pa = axes[k]
                entries.append(SizeEntry(ref=partner.name or "", axis=pa,
                                         divide=xk0 if node.op_type == "Tile" and xk0 > 1 else 1))
                baked[str(e)] = t0[e]
                p1 = known_dims(ctx, partner, ctx.p1)
                reasons.append(
                    f"entry {e} = {t0[e]} makes output axis {k} {out0[k]}, the export-time size of axis {pa} of "
                    f"{partner.name!r} ({p1[pa] if p1 else '?'} at S1)")
            elif k == 0 and batch_ref is not None:
                entries.append(SizeEntry(ref=batch_ref.name or "", axis=0))
                baked[str(e)] = t0[e]
                reasons.append(f"entry {e} = {t0[e]} is the export batch of input {batch_ref.name!r}")
            elif t0[e] == t1[e]:
                entries.append(SizeEntry(const=t0[e]))
            else:
                entries.append(SizeEntry(keep=e))
        s1 = fmt(next(iter(ctx.s1.values())))
        if own and not axes:
            consequence = f"the {node.op_type} fails (its input is {fmt(x1)} there)"
        elif joins:
            consequence = f"the output stays {'x'.join(str(out0[k]) for k in sorted(axes))} on axes " \
                          f"{sorted(axes)} and the join {joins[0]!r} fails"
        elif axes or batch_ref is not None:
            consequence = "the output keeps the export batch while the input batch changes"
        else:
            consequence = "it fails"
        const_only = all(e.const is not None for e in entries)
        return self.finding(
            node,
            severity="error",
            message=(f"{node.op_type} {node.name}: {what} {t0} holds export-time sizes ({'; '.join(reasons)}): "
                     f"at input {s1} {consequence}"),
            fixable=True,
            baked_value=baked,
            breaks_at=("every input size other than the export size" if own and not axes else
                       "every input where " + ", ".join(f"{p.name!r} axis {pa} is not {out0[k]}"
                                                        for k, (p, pa) in sorted(axes.items()))
                       if axes else "every batch other than the export batch"),
            fix=(f"use {what} {[e.const for e in entries]} (1 broadcasts: the input keeps its own size)"
                 if const_only else _describe_entries(what, entries, own)),
            details={"size_s0": t0, "own": own,
                     "meets": {str(k): [p.name, pa] for k, (p, pa) in sorted(axes.items())}, "joins": joins},
            plan=ExpandPlan(node.outputs[0].name or "", tuple(t0), tuple(entries)),
        )

    @staticmethod
    def _input_batch(ctx: Context, size: int) -> ir.Value | None:
        for info in ctx.inputs:
            if 0 in info.dynamic_axes and info.rank >= 2 and ctx.s0[info.name][0] == size:
                return next((v for v in ctx.model.graph.inputs if v.name == info.name), None)
        return None

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: ExpandPlan) -> str:
        found = builder.producer_of(plan.output)
        if found is None:
            raise LookupError(f"{node.name!r} is gone")
        node = found
        old = node.inputs[1]
        assert old is not None
        entries = plan.entries
        sizes = SizeBuilder(builder, f"{node.name}_{'shape' if node.op_type == 'Expand' else 'repeats'}")
        new = build_size_vector(sizes, entries, old)
        sizes.insert(node)
        origin = origin_of(old)
        node.replace_input_with(1, new)
        if origin.kind == "constant":
            builder.remove_dead(origin.nodes, [old])
        what = "shape" if node.op_type == "Expand" else "repeats"
        t0 = list(plan.size_s0)
        if all(e.const is not None for e in entries):
            return f"{node.name}: {what} {t0} -> {[e.const for e in entries]}"
        refs = sorted({e.ref for e in entries if e.kind == "ref"})
        return f"{node.name}: {what} {t0} -> from Shape({', '.join(refs)})"


def _describe_entries(what: str, entries: list[SizeEntry], own: list[int]) -> str:
    parts = []
    if own:
        parts.append(f"entries {own} -> 1 (the input keeps its own size)")
    refs: dict[str, list[str]] = {}
    for i, e in enumerate(entries):
        if e.kind == "ref":
            refs.setdefault(e.ref, []).append(f"{i}" + (f" (/ {e.divide})" if e.divide != 1 else ""))
    for ref, idx in refs.items():
        parts.append(f"entr{'ies' if len(idx) > 1 else 'y'} {', '.join(idx)} from Shape({ref})")
    return f"build the {what} with " + "; ".join(parts)


RULES: list[Rule] = [FrozenExpandTile()]
