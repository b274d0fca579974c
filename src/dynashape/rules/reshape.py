"""DS005: ``Reshape`` whose constant target holds export-time sizes or their products.

``x.view(b, c, h * w)`` with Python ints exports the target ``[1, 32, 1024]``: at another size the
element counts differ (an error), or, next to a ``-1``, the reshape silently mixes the batch into
another axis. Entries that copy a dynamic input dim become ``0`` (copy), one entry that is a
product of dynamic dims becomes ``-1``; when that is not expressible the target is built from
``Shape``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from dynashape.analysis import Context, const_i64, fmt
from dynashape.findings import Finding, Refusal
from dynashape.rules.base import Rule, input_names, new_name


def _reshape_ok(dims: tuple[int | None, ...], target: list[int], allowzero: bool) -> bool:
    if any(d is None for d in dims):
        return True
    total = math.prod(d for d in dims if d is not None)
    resolved = [dims[i] if (v == 0 and not allowzero and i < len(dims)) else v for i, v in enumerate(target)]
    if -1 in resolved:
        rest = math.prod(v for v in resolved if v != -1)  # type: ignore[misc]
        return rest != 0 and total % rest == 0
    return math.prod(resolved) == total  # type: ignore[arg-type]


class FrozenReshapeTarget(Rule):
    id = "DS005"
    title = "Reshape target is a constant holding export-time sizes or their products (view(b, c, h*w) with ints)"
    ops = ("Reshape",)

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        x, target = node.inputs[0], node.inputs[1]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        t0v, t1v = ctx.value(target, ctx.p0), ctx.value(target, ctx.p1)
        if x0 is None or x1 is None or any(d is None for d in x0) or any(d is None for d in x1):
            return self.refuse(node, "input shape unknown")
        if t0v is None or t1v is None:
            return self.refuse(node, "target shape is computed from data, not from shapes")
        t0 = [int(v) for v in np.atleast_1d(t0v)]
        t1 = [int(v) for v in np.atleast_1d(t1v)]
        allowzero = bool(node.attributes.get_int("allowzero", 0))
        dynamic = [i for i in range(len(x0)) if x0[i] != x1[i]]
        if not dynamic:
            return self.refuse(node, "its input does not change with the input size")
        frozen = [i for i in range(len(t0)) if t0[i] == t1[i] and t0[i] not in (0, -1)]
        # which frozen entries are export-time sizes: a copy of a dynamic dim, or a product
        copies: list[int] = []
        products: dict[int, list[int]] = {}
        for i in frozen:
            if i < len(x0) and i in dynamic and t0[i] == x0[i]:
                copies.append(i)
                continue
            if i < len(x0) and i not in dynamic and t0[i] == x0[i]:
                # a fixed dim kept in place (the channels of view(b, c, -1)): not an export-time
                # size, even though 1 * c is a product over a batch of 1
                continue
            run = _product_run(x0, dynamic, t0[i])  # type: ignore[arg-type]
            if run:
                products[i] = run
        fails_at_s1 = not _reshape_ok(x1, t1, allowzero)
        silent = bool(copies or products) and -1 in t1 and not fails_at_s1
        if not fails_at_s1 and not silent:
            return self.refuse(node, f"target {t0} stays valid when the input changes ({fmt(x0)} -> {fmt(x1)})")
        baked = {str(i): t0[i] for i in copies + sorted(products)}
        plan: dict = {}
        if copies or products:
            minus_one = t0.count(-1) + len(products)
            if not allowzero and minus_one <= 1:
                plan = {"kind": "const", "target": [
                    0 if i in copies else (-1 if i in products else v) for i, v in enumerate(t0)
                ]}
            else:
                plan = {"kind": "shape", "copies": copies, "products": {str(k): v for k, v in products.items()}}
            trial = list(t0)
            for i in copies:
                trial[i] = int(x1[i] or 0)
            for i, run in products.items():
                trial[i] = math.prod(x1[j] for j in run)  # type: ignore[misc]
            if not _reshape_ok(x1, trial, allowzero=True):
                plan = {}
        what = "fails" if fails_at_s1 else "silently mixes axes"
        return Finding(
            rule=self.id,
            severity="error",
            node=node.name or "",
            op=node.op_type,
            inputs=input_names(node),
            message=(
                f"Reshape target {t0} holds export-time sizes of its input {fmt(x0)}"
                f"{' at entries ' + ', '.join(sorted(baked)) if baked else ''}: at input {fmt(x1)} it {what}"
            ),
            fixable=bool(plan),
            baked_value=baked or t0,
            breaks_at="every input size other than the export size",
            fix=(_describe(plan) if plan else
                 "not rewritten: the constant entries match no input dim or product of dims; in the source "
                 "use x.flatten(...) / x.view(b, c, -1) with sizes from x.shape"),
            details={"plan": plan, "target_s0": t0},
        )

    def rewrite(self, ctx: Context, node: ir.Node, finding: Finding) -> str:
        graph = ctx.model.graph
        plan = finding.details["plan"]
        t0 = finding.details["target_s0"]
        if plan["kind"] == "const":
            new_target = const_i64(graph, f"{node.name}_shape", plan["target"])
            node.replace_input_with(1, new_target)
            return f"{node.name}: target {t0} -> {plan['target']}"
        x = node.inputs[0]
        assert x is not None
        shape = ir.node("Shape", [x], name=new_name(graph, f"{node.name}_shape_in"))
        new_nodes = [shape]
        pieces: list[ir.Value] = []
        products = {int(k): v for k, v in plan["products"].items()}
        for i, v in enumerate(t0):
            if i in plan["copies"]:
                g = ir.node("Gather", [shape.outputs[0], const_i64(graph, f"{node.name}_i{i}", [i])],
                            attributes={"axis": 0}, name=new_name(graph, f"{node.name}_dim{i}"))
                new_nodes.append(g)
                pieces.append(g.outputs[0])
            elif i in products:
                g = ir.node("Gather", [shape.outputs[0], const_i64(graph, f"{node.name}_i{i}", products[i])],
                            attributes={"axis": 0}, name=new_name(graph, f"{node.name}_dims{i}"))
                p = ir.node("ReduceProd", [g.outputs[0]], attributes={"keepdims": 1},
                            name=new_name(graph, f"{node.name}_prod{i}"))
                new_nodes += [g, p]
                pieces.append(p.outputs[0])
            else:
                pieces.append(const_i64(graph, f"{node.name}_c{i}", [v]))
        cat = ir.node("Concat", pieces, attributes={"axis": 0}, name=new_name(graph, f"{node.name}_target"))
        new_nodes.append(cat)
        for n in new_nodes:
            n.outputs[0].name = f"{n.name}_output"
        graph.insert_before(node, new_nodes)
        node.replace_input_with(1, cat.outputs[0])
        return f"{node.name}: target {t0} -> built from Shape({x.name})"


def _product_run(dims: tuple[int, ...], dynamic: list[int], value: int) -> list[int] | None:
    """A contiguous run of >= 2 input dims, one of them dynamic, whose product is ``value``."""
    for start in range(len(dims)):
        prod = 1
        for end in range(start, len(dims)):
            prod *= dims[end]
            if prod > value:
                break
            if end > start and prod == value and any(start <= d <= end for d in dynamic):
                return list(range(start, end + 1))
    return None


def _describe(plan: dict) -> str:
    if plan["kind"] == "const":
        return f"use target {plan['target']} (0 copies the input dim, -1 infers it)"
    return "build the target from Shape of the input"


RULES: list[Rule] = [FrozenReshapeTarget()]
