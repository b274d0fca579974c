"""DS002: ``Resize`` whose output size is frozen at the export-time size.

``F.interpolate(feat32, size=(H16, W16))`` with Python ints exports ``sizes`` whose spatial
entries are constants (often behind ``Concat(Shape(x)[0:2], [h0, w0])``). At any other input
size the output stays ``h0 x w0`` and the join with the skip connection fails.

Fixes, in order of preference:
1. the frozen entries equal the export-time size of the tensor the output is joined with (or
   of another tensor available before the resize, such as the graph input): take them from
   ``Shape`` of that tensor;
2. they equal the resize input's size times one factor: a constant ``scales`` input.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx_ir as ir

from dynashape.analysis import Context, const_i64, fmt, is_descendant, join_partners
from dynashape.findings import Finding, Refusal
from dynashape.rules.base import Rule, new_name


class FrozenResizeSize(Rule):
    id = "DS002"
    title = "Resize output size is a constant frozen at the export shape (interpolate(size=...) with ints)"
    ops = ("Resize",)
    needs_export_shape = True

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        if len(node.inputs) < 4 or node.inputs[3] is None:
            return self.refuse(node, "resizes by scales, not to a fixed size")
        x, sizes = node.inputs[0], node.inputs[3]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        v0, v1 = ctx.value(sizes, ctx.p0), ctx.value(sizes, ctx.p1)
        if x0 is None or x1 is None:
            return self.refuse(node, "input shape unknown")
        if v0 is None or v1 is None:
            return self.refuse(node, "sizes cannot be computed from shapes alone")
        s0 = [int(v) for v in np.atleast_1d(v0)]
        s1 = [int(v) for v in np.atleast_1d(v1)]
        if len(s0) != len(x0):
            return self.refuse(node, f"sizes has {len(s0)} entries for a rank-{len(x0)} input")
        frozen = [i for i in range(len(s0)) if x0[i] != x1[i] and s0[i] == s1[i]]
        if not frozen:
            return self.refuse(node, "its output size follows the input size")
        plan = self._plan(ctx, node, s0, frozen)
        out_dims = ctx.dims(node.outputs[0], ctx.p1)
        partner_txt = ""
        if plan.get("kind") == "shape":
            partner_txt = f", the export-time size of {plan['ref']!r}"
        frozen_txt = "x".join(str(s0[i]) for i in frozen)
        x_txt = "x".join(str(x1[i]) for i in frozen)
        message = (
            f"Resize output size {frozen_txt} (axes {frozen}) is a constant{partner_txt}: at input "
            f"{fmt(next(iter(ctx.s1.values())))} its input is {x_txt} and it still produces {frozen_txt}"
        )
        joined = [p.name for p in join_partners(node.outputs[0])]
        if joined:
            message += f", so the join with {joined[0]!r} fails"
        return self.finding(
            node,
            severity="error",
            message=message,
            fixable=bool(plan),
            baked_value={str(i): s0[i] for i in frozen},
            breaks_at="every input size other than the export size",
            fix=self._describe(plan) if plan else (
                "not rewritten: the frozen size matches no tensor's export-time size and no integer "
                "scale of the input; in the source use F.interpolate(x, size=ref.shape[-2:]) or scale_factor"
            ),
            details={"frozen_axes": frozen, "sizes_s0": s0, "plan": plan, "out_s1": list(out_dims or [])},
        )

    def _plan(self, ctx: Context, node: ir.Node, s0: list[int], frozen: list[int]) -> dict:
        for ref in self._reference_candidates(ctx, node):
            r0 = ctx.dims(ref, ctx.p0)
            if r0 is None or len(r0) != len(s0):
                continue
            dyn = set(ctx.dynamic_axes_of(ref))
            if all(r0[i] == s0[i] and i in dyn for i in frozen):
                return {"kind": "shape", "ref": ref.name}
        x0 = ctx.dims(node.inputs[0], ctx.p0)
        assert x0 is not None
        per_axis = {i: Fraction(s0[i], x0[i]) for i in frozen if x0[i]}
        # a frozen axis kept at its input size (the batch of a constant ``sizes``) scales by 1
        scaled = {i: f for i, f in per_axis.items() if f != 1}
        factors = set(scaled.values())
        if len(factors) == 1 and len(per_axis) == len(frozen):
            f = factors.pop()
            if f.denominator == 1 or f.numerator == 1:
                return {"kind": "scales", "factor": float(f), "axes": sorted(scaled)}
        return {}

    def _reference_candidates(self, ctx: Context, node: ir.Node) -> list[ir.Value]:
        """The joined partners first, then graph inputs, then earlier tensors (nearest first)."""
        cands: list[ir.Value] = [p for p in join_partners(node.outputs[0]) if not is_descendant(p, node)]
        cands += [v for v in ctx.model.graph.inputs]
        order = list(ctx.model.graph)
        idx = order.index(node)
        for earlier in reversed(order[:idx]):
            cands.extend(o for o in earlier.outputs if o is not None)
        return cands

    @staticmethod
    def _describe(plan: dict) -> str:
        if plan["kind"] == "shape":
            return f"take the frozen entries of sizes from Shape({plan['ref']})"
        return f"use constant scales (factor {plan['factor']:g}) instead of sizes"

    def rewrite(self, ctx: Context, node: ir.Node, finding: Finding) -> str:
        graph = ctx.model.graph
        plan = finding.details["plan"]
        frozen: list[int] = finding.details["frozen_axes"]
        s0: list[int] = finding.details["sizes_s0"]
        x = node.inputs[0]
        assert x is not None
        if plan["kind"] == "scales":
            rank = len(s0)
            scaled_axes = plan.get("axes", frozen)
            scales = np.array([plan["factor"] if i in scaled_axes else 1.0 for i in range(rank)], np.float32)
            scales_v = ir.Value(
                name=new_name_init(graph, f"{node.name}_scales"), shape=ir.Shape([rank]),
                type=ir.TensorType(ir.DataType.FLOAT), const_value=ir.tensor(scales),
            )
            scales_v.const_value.name = scales_v.name  # type: ignore[union-attr]
            graph.register_initializer(scales_v)
            roi = node.inputs[1]
            if roi is None and ctx.opset < 13:
                roi = ir.Value(
                    name=new_name_init(graph, f"{node.name}_roi"), shape=ir.Shape([0]),
                    type=ir.TensorType(ir.DataType.FLOAT), const_value=ir.tensor(np.zeros(0, np.float32)),
                )
                graph.register_initializer(roi)
            node.resize_inputs(3)
            node.replace_input_with(1, roi)
            node.replace_input_with(2, scales_v)
            return f"{node.name}: sizes {fmt(tuple(s0))} -> scales {scales.tolist()}"
        ref = next(v for v in _all_values(ctx) if v.name == plan["ref"])
        shape_x = ir.node("Shape", [x], name=new_name(graph, f"{node.name}_shape_in"))
        shape_r = ir.node("Shape", [ref], name=new_name(graph, f"{node.name}_shape_ref"))
        new_nodes = [shape_x, shape_r]
        pieces: list[ir.Value] = []
        # consecutive axes from the same source become one Gather
        runs: list[tuple[bool, list[int]]] = []
        for i in range(len(s0)):
            from_ref = i in frozen
            if runs and runs[-1][0] == from_ref:
                runs[-1][1].append(i)
            else:
                runs.append((from_ref, [i]))
        for from_ref, axes in runs:
            src = shape_r if from_ref else shape_x
            idx = const_i64(graph, f"{node.name}_axes_{axes[0]}", axes)
            g = ir.node("Gather", [src.outputs[0], idx], attributes={"axis": 0},
                        name=new_name(graph, f"{node.name}_gather_{axes[0]}"))
            new_nodes.append(g)
            pieces.append(g.outputs[0])
        if len(pieces) == 1:
            sizes = pieces[0]
        else:
            cat = ir.node("Concat", pieces, attributes={"axis": 0}, name=new_name(graph, f"{node.name}_sizes"))
            new_nodes.append(cat)
            sizes = cat.outputs[0]
        for n in new_nodes:
            n.outputs[0].name = f"{n.name}_output"
        graph.insert_before(node, new_nodes)
        node.replace_input_with(3, sizes)
        return f"{node.name}: sizes {fmt(tuple(s0))} -> Shape({plan['ref']}) on axes {frozen}"


def _all_values(ctx: Context) -> list[ir.Value]:
    vals: list[ir.Value] = list(ctx.model.graph.inputs)
    for n in ctx.model.graph:
        vals.extend(o for o in n.outputs if o is not None)
    return vals


def new_name_init(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers)
    name = base
    k = 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    return name


RULES: list[Rule] = [FrozenResizeSize()]
