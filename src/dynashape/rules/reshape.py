"""DS005: ``Reshape`` whose target holds export-time sizes or their products.

``x.view(b, c, h * w)`` with Python ints exports the target ``[1, 32, 1024]``: at another size the
element counts differ (an error), or, next to a ``-1``, the reshape silently mixes the batch into
another axis. Entries that copy a dynamic input dim become ``0`` (copy), one entry that is a
product of dynamic dims becomes ``-1``; when that is not expressible the target is built from
``Shape``.

The target is often only partly frozen: the dynamo exporter builds it with ``Concat`` from sizes
it computes and constants where Python turned a size into an int (Swin's
``B = int(windows.shape[0] / (H * W / ws / ws))``: ``[1, H/ws, W/ws, ws, ws, -1]``). Computed
entries stay computed in the rewrite; only the frozen ones are replaced. Four signatures:

* **a copy or a product**: a frozen entry equal to the export-time size of a dynamic input dim in
  the same place, or to the product of a run of input dims (one of them dynamic and not 1).
  Where an entry only matches by coincidence (Swin's window size 7 on a 7x7 feature map), the
  candidates kept are those with which the reshape holds at the second probe shape.
* **a regrouping that moves**: at the export shape the target splits and merges the input's axes
  in blocks (``[64, 7, 7, 32] -> [1, 8, 8, 7, 7, 32]``: 64 = 1·8·8, 7, 7, 32). At another shape
  the same blocks must hold; a frozen entry in a block that grows with the input makes the
  block too small, and the ``-1`` takes the rest from another block (the batch ends up in the
  channels). Exact fix when one block moves and holds one frozen entry: that entry becomes
  ``-1``, and a ``-1`` that sat in a block of static axes gets its export-time value.
* **a spatial extent**: a frozen entry equal to the export-time size per batch item of a
  dynamic input axis that follows a spatial input axis (``attn.view(B_ // nW, nW, ...)`` with
  ``nW`` = 64 windows of a 56x56 map frozen), told by probes that move the batch alone and the
  spatial axes alone. A value that is also a static dim of the input (the channels) is read as
  that dim. Reported, not rewritten: the tensor this feeds is usually joined with a constant of
  the same frozen size (the shifted-window attention mask), which no rewrite of the reshape can
  regenerate. The entry must split that axis at the export shape: GroupNorm(32, C)'s
  ``[0, 32, -1]`` on a map 32 pixels wide splits the channels, and is right at every size.
* **an earlier tensor's shape**: ``t.view(b, c, h * w)``, attention, ``.view(b, c, h, w)``: the
  frozen entries are the export-time sizes of the map the tokens came from, not of the reshape's
  input. They are gathered from ``Shape`` of the nearest tensor upstream whose axes give a
  target that holds at the second probe shape and with the batch and each spatial axis moved
  alone.

Entries are frozen only where the graph holds them as constants: an entry computed from
``Shape`` (``view(tgt_len * bsz, embed_dim)`` in multi-head attention) is never replaced, even
where the two probes give it the same value or it regroups axes at the second shape.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import Context, fmt, is_descendant, origin_of
from dynashape.analysis.probe import Probe
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder
from dynashape.shapes import ShapeMap

Dims = tuple[int, ...]


def _resolve(dims: Dims, target: list[int], allowzero: bool) -> list[int] | None:
    """The target's entries with ``0`` (copy) and ``-1`` resolved against ``dims``; None when the
    reshape is impossible."""
    total = math.prod(dims)
    resolved = [dims[i] if (v == 0 and not allowzero and i < len(dims)) else v for i, v in enumerate(target)]
    if resolved.count(-1) > 1:
        return None
    if -1 in resolved:
        rest = math.prod(v for v in resolved if v != -1)
        if rest == 0 or total % rest:
            return None
        resolved[resolved.index(-1)] = total // rest
    return resolved if math.prod(resolved) == total else None


def _reshape_ok(dims: tuple[int | None, ...], target: list[int], allowzero: bool) -> bool:
    if any(d is None for d in dims):
        return True
    return _resolve(tuple(int(d or 0) for d in dims), target, allowzero) is not None


def _blocks(dims: Dims, out: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """The finest grouping of input axes and output entries into contiguous blocks of equal
    product, each taking at least one from each side while both last. None when the products
    never meet."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(dims) or j < len(out):
        ins: list[int] = []
        outs: list[int] = []
        pi = po = 1
        if i < len(dims):
            pi, i = dims[i], i + 1
            ins.append(i - 1)
        if j < len(out):
            po, j = out[j], j + 1
            outs.append(j - 1)
        while pi != po:
            if pi < po and i < len(dims):
                pi, i = pi * dims[i], i + 1
                ins.append(i - 1)
            elif po < pi and j < len(out):
                po, j = po * out[j], j + 1
                outs.append(j - 1)
            else:
                return None
        blocks.append((ins, outs))
    return blocks


@dataclass(frozen=True)
class ReshapePlan(RewritePlan):
    """DS005: the reshape's new target. ``kind`` "const": ``target``; "shape": built from ``Shape`` of
    the input (``copies`` of its dims in place, ``products`` of runs of them); "regroup": ``entries``
    set to constants (-1 among them); "earlier": entries from ``Shape(tensor)`` (entry -> its
    ``axes``). ``live`` entries are computed by the graph and stay computed; the others keep their
    export-time value in ``target_s0``."""

    kind: str  # "const" | "shape" | "regroup" | "earlier"
    target_s0: tuple[int, ...]
    valid_at_s1: bool  # it runs at S1 but mixes axes (see Rule.shadows_downstream)
    target: tuple[int, ...] = ()
    copies: tuple[int, ...] = ()
    products: tuple[tuple[int, tuple[int, ...]], ...] = ()  # entry -> the input axes it multiplies
    entries: tuple[tuple[int, int], ...] = ()  # entry -> constant
    live: tuple[int, ...] = ()
    tensor: str = ""
    axes: tuple[tuple[int, int], ...] = ()  # entry -> axis of ``tensor``

    @classmethod
    def from_dict(cls, plan: dict[str, Any], target_s0: list[int], valid_at_s1: bool) -> ReshapePlan:
        """From the planning helpers' dict (entry keys as strings, as they print in the messages)."""
        return cls(
            plan["kind"], tuple(target_s0), valid_at_s1, target=tuple(plan.get("target", ())),
            copies=tuple(plan.get("copies", ())),
            products=tuple((int(k), tuple(v)) for k, v in plan.get("products", {}).items()),
            entries=tuple((int(k), int(v)) for k, v in plan.get("entries", {}).items()),
            live=tuple(plan.get("live", ())), tensor=plan.get("tensor", ""),
            axes=tuple((int(k), int(a)) for k, a in plan.get("axes", {}).items()),
        )


class FrozenReshapeTarget(Rule[ReshapePlan]):
    id = "DS005"
    title = "Reshape target holds export-time sizes or their products (view(b, c, h*w) with ints)"
    ops = ("Reshape",)

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        if len(node.inputs) < 2:
            return self.refuse(node, "no target shape input")
        x, target = node.inputs[0], node.inputs[1]
        x0o, x1o = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        t0v, t1v = ctx.value(target, ctx.p0), ctx.value(target, ctx.p1)
        if x0o is None or x1o is None or any(d is None for d in x0o) or any(d is None for d in x1o):
            return self.refuse(node, "input shape unknown")
        if t0v is None or t1v is None:
            return self.refuse(node, "target shape is computed from data, not from shapes")
        if np.ndim(t0v) > 1 or np.ndim(t1v) > 1:
            return self.refuse(node, "the target shape is not a 1-D tensor (ONNX would reject this Reshape)")
        x0 = tuple(int(d or 0) for d in x0o)
        x1 = tuple(int(d or 0) for d in x1o)
        t0 = [int(v) for v in np.atleast_1d(t0v)]
        t1 = [int(v) for v in np.atleast_1d(t1v)]
        if len(t0) != len(t1):
            return self.refuse(node, "the target's rank changes with the input size")
        allowzero = bool(node.attributes.get_int("allowzero", 0))
        dynamic = [i for i in range(len(x0)) if x0[i] != x1[i]]
        if not dynamic:
            return self.refuse(node, "its input does not change with the input size")
        # entries computed in the graph (from Shape, or from data) stay computed, even where the
        # two probes give them the same value (a batch frozen upstream); only constants are frozen
        computed = _computed_entries(ctx, target, len(t0)) if target is not None else set()
        live = [i for i in range(len(t0)) if t0[i] != t1[i] or i in computed]
        frozen = [i for i in range(len(t0)) if i not in live and t0[i] not in (0, -1)]
        if not frozen:
            return self.refuse(node, f"target {t0} holds no constant size: each entry is 0, -1 or computed from shapes")
        fails_at_s1 = not _reshape_ok(x1, t1, allowzero)

        copies, products = _candidates(x0, dynamic, t0, frozen)
        plan: dict = {}
        if copies or products:
            copies, products = _consistent(x1, t1, copies, products)
            if _resolve(x1, _trial(x1, t1, copies, products), allowzero=True) is not None:
                plan = _copy_plan(t0, copies, products, live, allowzero)
        # silent only where the reshape moves elements across the blocks it keeps apart at the
        # export shape: [-1, 49, C] of (1, nH, nW, 7, 7, C) at batch 1 has a 49 = 1·1·7·7 that is
        # right at every size (the -1 takes nH·nW)
        silent = bool(copies or products) and -1 in t1 and not fails_at_s1 and _regroups(x0, x1, t0, t1, allowzero)
        regroup: dict = {}
        # the block analysis reads the input's shape at S1: past a node that fails there, shape
        # inference goes on with the shape that node was asked for, which may be wrong; then
        # the regrouping is reported, not rewritten (and looked at again once that is fixed)
        upstream_failure = _fails_upstream(ctx, ctx.p1, x)
        if not plan:
            regroup = _regroup_plan(x0, x1, t0, t1, frozen, allowzero)
            if regroup:
                copies, products = [], {}
                if not upstream_failure:
                    plan = {"kind": "regroup", "entries": regroup["entries"], "live": live}
        extents: dict[int, int] = {}
        if not plan:
            extents = _spatial_extents(ctx, x, x0, dynamic, t0, frozen, allowzero)
        earlier: dict = {}
        if not plan and not extents and (fails_at_s1 or _regroups(x0, x1, t0, t1, allowzero)):
            earlier = _earlier_plan(ctx, node, x0, t0, frozen, allowzero)
            if earlier:
                plan = {**earlier, "live": live}
        moves = bool(regroup) or (bool(extents) and -1 in t1 and not fails_at_s1)
        if not fails_at_s1 and not silent and not moves:
            return self.refuse(node, f"target {t0} stays valid when the input changes ({fmt(x0)} -> {fmt(x1)})")
        if not (copies or products or regroup or extents or earlier):
            baked: dict[str, int] | list[int] = t0
            where = ""
        else:
            entries = sorted(set(copies) | set(products) | {int(k) for k in regroup.get("frozen", [])} | set(extents)
                             | {int(k) for k in earlier.get("axes", {})})
            baked = {str(i): t0[i] for i in entries}
            where = " at entries " + ", ".join(str(i) for i in entries)
        what = "fails" if fails_at_s1 else "silently mixes axes"
        why = ""
        if regroup:
            why = (f"; at the export shape it regroups the input axes in blocks {regroup['blocks_s0']}, which "
                   f"no longer hold at input {fmt(x1)}")
        elif earlier:
            why = (f"; the entries are the export-time sizes of an earlier tensor {earlier['tensor']!r} "
                   f"({fmt(earlier['dims_s0'])}), which follow the input")
        elif extents:
            why = "; " + ", ".join(
                f"entry {i} ({t0[i]}) is the export-time size per batch item of input axis {k}, which follows "
                "the spatial input size" for i, k in sorted(extents.items()))
        return self.finding(
            node,
            severity="error",
            message=(
                f"Reshape target {t0} holds export-time sizes of its input {fmt(x0)}{where}: at input "
                f"{fmt(x1)} it {what}{why}"
            ),
            fixable=bool(plan),
            baked_value=baked,
            breaks_at="every input size other than the export size",
            fix=(_describe(plan) if plan else _no_plan_text(extents, ctx.p1 if upstream_failure else None)),
            details={"target_s0": t0, "valid_at_s1": not fails_at_s1},
            plan=ReshapePlan.from_dict(plan, t0, not fails_at_s1) if plan else None,
        )

    @staticmethod
    def _rewrite_from_earlier(builder: RewriteBuilder, node: ir.Node, plan: ReshapePlan) -> str:
        """Entries from ``Shape`` of the earlier tensor, computed entries kept, the rest as they were."""
        old_target = node.inputs[1]
        source = next((v for v in _ancestors(node.inputs[0]) if v.name == plan.tensor), None)
        assert source is not None and old_target is not None
        shape = builder.op("Shape", [source], name=f"{node.name}_shape_of_earlier")
        pieces: list[ir.Value] = []
        axes = dict(plan.axes)
        live = set(plan.live)
        t0 = list(plan.target_s0)
        for i, v in enumerate(t0):
            if i in axes or i in live:
                src, at = (shape, axes[i]) if i in axes else (old_target, i)
                pieces.append(builder.op("Gather", [src, builder.const(f"{node.name}_i{i}", [at])], axis=0,
                                         name=f"{node.name}_dim{i}" if i in axes else f"{node.name}_keep{i}"))
            else:
                pieces.append(builder.const(f"{node.name}_c{i}", [v]))
        _install_target(builder, node, pieces)
        return f"{node.name}: target entries {sorted(axes)} of {t0} from Shape({plan.tensor}) (axes {axes})"

    def shadows_downstream(self, finding: Finding) -> bool:
        # a reshape that runs at the second shape but mixes axes hands on consistent wrong shapes
        return isinstance(finding.plan, ReshapePlan) and finding.plan.valid_at_s1

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: ReshapePlan) -> str:
        t0 = list(plan.target_s0)
        if plan.kind == "const":
            node.replace_input_with(1, builder.const(f"{node.name}_shape", list(plan.target)))
            return f"{node.name}: target {t0} -> {list(plan.target)}"
        x, old_target = node.inputs[0], node.inputs[1]
        assert x is not None and old_target is not None
        live = set(plan.live)
        entries = dict(plan.entries)
        if plan.kind == "regroup" and not live:
            new = [entries.get(i, v) for i, v in enumerate(t0)]
            node.replace_input_with(1, builder.const(f"{node.name}_shape", new))
            return f"{node.name}: target {t0} -> {new}"
        if plan.kind == "earlier":
            return self._rewrite_from_earlier(builder, node, plan)
        shape = builder.op("Shape", [x], name=f"{node.name}_shape_in") if plan.kind == "shape" else None
        pieces: list[ir.Value] = []
        products = dict(plan.products)
        for i, v in enumerate(t0):
            if i in plan.copies:
                assert shape is not None
                pieces.append(builder.op("Gather", [shape, builder.const(f"{node.name}_i{i}", [i])], axis=0,
                                         name=f"{node.name}_dim{i}"))
            elif i in products:
                assert shape is not None
                g = builder.op("Gather", [shape, builder.const(f"{node.name}_i{i}", list(products[i]))], axis=0,
                               name=f"{node.name}_dims{i}")
                pieces.append(builder.op("ReduceProd", [g], keepdims=1, name=f"{node.name}_prod{i}"))
            elif i in entries:
                pieces.append(builder.const(f"{node.name}_c{i}", [entries[i]]))
            elif i in live:
                # computed from shapes in the graph: keep computing it
                pieces.append(builder.op("Gather", [old_target, builder.const(f"{node.name}_i{i}", [i])], axis=0,
                                         name=f"{node.name}_keep{i}"))
            else:
                pieces.append(builder.const(f"{node.name}_c{i}", [v]))
        _install_target(builder, node, pieces)
        if plan.kind == "regroup":
            return f"{node.name}: target entries {entries} set, the computed ones kept"
        return f"{node.name}: target {t0} -> built from Shape({x.name})"


def _earlier_plan(ctx: Context, node: ir.Node, x0: Dims, t0: list[int], frozen: list[int], allowzero: bool) -> dict:
    """Frozen entries that are the export-time sizes of an *earlier* tensor: ``t.view(b, c, h * w)``,
    attention, then ``.view(b, c, h, w)`` back to the shape of ``t``. The rewrite gathers them from
    ``Shape`` of that tensor.

    Candidates are the tensors the reshape's input is computed from, nearest first. An entry may
    be any dynamic axis of the candidate with its export-time size, or stay constant; an
    assignment holds when the rebuilt target reshapes the input at every probe shape (the second
    shape, the batch moved alone, each spatial axis moved alone) without regrouping its axes
    differently from the export shape. Among those that hold, the ones keeping the candidate's
    axis order, then the most in the same place, then the fewest changes; where two of them
    disagree at some probe (a square export leaves h and w interchangeable), nothing is
    rewritten. {} when no candidate holds."""
    x, target = node.inputs[0], node.inputs[1]
    views: list[tuple[Probe, Dims, list[int]]] = []
    for probe in _moved_probes(ctx):
        x_at, t_at = ctx.dims(x, probe), ctx.value(target, probe)
        if _fails_upstream(ctx, probe, x) or x_at is None or t_at is None or any(d is None for d in x_at):
            return {}
        views.append((probe, tuple(int(d or 0) for d in x_at), [int(v) for v in np.atleast_1d(t_at)]))
    for cand in _ancestors(x):
        known = [ctx.dims(cand, probe) for probe in (ctx.p0, *(v[0] for v in views))]
        if any(d is None or len(d) != len(known[0] or ()) or any(k is None for k in d) for d in known):
            continue
        c0, *cps = [tuple(int(k or 0) for k in d or ()) for d in known]
        dyn = [a for a in range(len(c0)) if any(cp[a] != c0[a] for cp in cps)]
        options = [[None, *(a for a in dyn if c0[a] == t0[i])] for i in frozen]
        if all(len(o) == 1 for o in options) or math.prod(len(o) for o in options) > 1024:
            continue
        valid: list[tuple[tuple[bool, int, int], dict[int, int], list[list[int]]]] = []
        for combo in itertools.product(*options):
            assign = {i: a for i, a in zip(frozen, combo) if a is not None}
            if not assign:
                continue
            resolved = []
            for (_, xp, tp), cp in zip(views, cps):
                trial = [cp[assign[i]] if i in assign else v for i, v in enumerate(tp)]
                r = _resolve(xp, trial, allowzero)
                if r is None or _regroups(x0, xp, t0, trial, allowzero):
                    break
                resolved.append(r)
            else:
                axes = [assign[i] for i in sorted(assign)]
                key = (axes == sorted(axes), sum(i == a for i, a in assign.items()), -len(assign))
                valid.append((key, assign, resolved))
        if not valid:
            continue
        best = max(key for key, _, _ in valid)
        top = [(assign, resolved) for key, assign, resolved in valid if key == best]
        if any(resolved != top[0][1] for _, resolved in top):
            return {}
        return {"kind": "earlier", "tensor": cand.name, "dims_s0": list(c0),
                "axes": {str(i): a for i, a in sorted(top[0][0].items())}}
    return {}


def _ancestors(value: ir.Value | None, limit: int = 256) -> Iterator[ir.Value]:
    """The tensors ``value`` is computed from (itself first), nearest first; constants and
    shape computations (``Shape`` and what it feeds) are not tensors of the model."""
    if value is None:
        return
    queue: deque[ir.Value] = deque([value])
    seen = {id(value)}
    while queue and limit > 0:
        v = queue.popleft()
        limit -= 1
        yield v
        producer = v.producer()
        if producer is None or producer.op_type in ("Shape", "Size", "Constant"):
            continue
        for i in producer.inputs:
            if i is not None and i.const_value is None and id(i) not in seen:
                seen.add(id(i))
                queue.append(i)


def _moved_probes(ctx: Context) -> list[Probe]:
    """The second probe shape, then S0 with the batch moved alone, then with each other dynamic
    axis moved alone (to the sizes of the second shape)."""
    groups: dict[int, ShapeMap] = {}
    for info in ctx.inputs:
        if info.name not in ctx.s0:
            continue
        for a in info.dynamic_axes:
            moved = groups.setdefault(a, {k: tuple(v) for k, v in ctx.s0.items()})
            dims = list(moved[info.name])
            dims[a] = ctx.s1[info.name][a]
            moved[info.name] = tuple(dims)
    probes = [ctx.p1]
    if len(groups) > 1:
        probes += [ctx.prober.at(groups[a]) for a in sorted(groups)]
    return probes


def _computed_entries(ctx: Context, target: ir.Value, n: int) -> set[int]:
    """The entries of a reshape target that the graph computes (from ``Shape``, or from data)
    rather than holds as constants, read from the graph's structure: a ``Concat`` of pieces is
    read piece by piece (the legacy exporter's ``[Unsqueeze(Gather(Shape)), 8, -1]``), anything
    else as a whole."""
    if target.const_value is not None:
        return set()
    producer = target.producer()
    if producer is not None and producer.op_type == "Concat" and producer.domain in ("", "ai.onnx"):
        computed: set[int] = set()
        at = 0
        for piece in producer.inputs:
            value = ctx.value(piece, ctx.p0) if piece is not None else None
            if piece is None or value is None:
                break
            size = int(np.asarray(value).size)
            computed.update(at + i for i in _computed_entries(ctx, piece, size))
            at += size
        else:
            if at == n:
                return computed
    return set() if origin_of(target).kind == "constant" else set(range(n))


def _candidates(
    x0: Dims, dynamic: list[int], t0: list[int], frozen: list[int]
) -> tuple[list[int], dict[int, list[int]]]:
    """Frozen entries that are export-time sizes: a copy of a dynamic dim in place, or a product."""
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
        run = _product_run(x0, dynamic, t0[i])
        if run:
            products[i] = run
    return copies, products


def _trial(x1: Dims, t1: list[int], copies: list[int], products: dict[int, list[int]]) -> list[int]:
    trial = list(t1)
    for i in copies:
        trial[i] = x1[i]
    for i, run in products.items():
        trial[i] = math.prod(x1[j] for j in run)
    return trial


def _consistent(
    x1: Dims, t1: list[int], copies: list[int], products: dict[int, list[int]]
) -> tuple[list[int], dict[int, list[int]]]:
    """The largest set of candidates with which the reshape holds at the second shape (a window
    size 7 that matches a 7x7 feature map by coincidence is dropped); all of them if none does."""
    cands = [("c", i) for i in copies] + [("p", i) for i in products]
    if len(cands) > 8:
        return copies, products
    for size in range(len(cands), 0, -1):
        for subset in itertools.combinations(cands, size):
            c = [i for kind, i in subset if kind == "c"]
            p = {i: products[i] for kind, i in subset if kind == "p"}
            if _resolve(x1, _trial(x1, t1, c, p), allowzero=True) is not None:
                return c, p
    return copies, products


def _copy_plan(t0: list[int], copies: list[int], products: dict[int, list[int]], live: list[int],
               allowzero: bool) -> dict:
    minus_one = t0.count(-1) + len(products)
    if not allowzero and minus_one <= 1 and not live:
        return {"kind": "const", "target": [
            0 if i in copies else (-1 if i in products else v) for i, v in enumerate(t0)
        ]}
    plan: dict = {"kind": "shape", "copies": copies, "products": {str(k): v for k, v in products.items()}}
    if live:
        plan["live"] = live
    return plan


def _prefixes(values: Dims | list[int]) -> list[int]:
    out, prod = [], 1
    for v in values:
        prod *= v
        out.append(prod)
    return out


def _groups(shapes: list[tuple[Dims, list[int]]]) -> int:
    """How many blocks the finest grouping of input axes and output entries has that holds at
    every one of ``shapes`` ((input dims, resolved target) pairs): the longest chain of cut
    points (after a input axes and b entries) where the running products meet at all of them.
    Size-1 axes may go with either neighbour, so the chain is searched, not walked."""
    n, m = len(shapes[0][0]), len(shapes[0][1])
    cuts = [(a, b) for a in range(1, n + 1) for b in range(1, m + 1)
            if all(_prefixes(d)[a - 1] == _prefixes(r)[b - 1] for d, r in shapes)]
    best: dict[tuple[int, int], int] = {}
    for a, b in cuts:  # cuts come sorted by a, then b
        best[(a, b)] = 1 + max((v for (pa, pb), v in best.items() if pa < a and pb < b), default=0)
    return best.get((n, m), 0)


def _regroups(x0: Dims, x1: Dims, t0: list[int], t1: list[int], allowzero: bool) -> bool:
    """Does the reshape move elements across axes at S1 that it keeps apart at the export shape?
    True when the grouping of input axes into output entries that holds at both shapes is
    coarser than the one at the export shape alone (or the reshape fails at S1)."""
    r0, r1 = _resolve(x0, t0, allowzero), _resolve(x1, t1, allowzero)
    if r1 is None:
        return True
    if r0 is None or not x0 or not r0:
        return False
    return _groups([(x0, r0), (x1, r1)]) < _groups([(x0, r0)])


def _regroup_plan(x0: Dims, x1: Dims, t0: list[int], t1: list[int], frozen: list[int], allowzero: bool) -> dict:
    """The exact rewrite of a regrouping that moves with the input size, or {} when there is none.

    The smallest change that keeps the target at the export shape and stops the regrouping at
    S1: one frozen entry becomes -1 (it stood for a size that grows, like the batch), and a -1
    that took up what it should not have gets its export-time value. An entry computed from
    shapes keeps being computed (``view(tgt_len * bsz, embed_dim)`` in multi-head attention
    rightly merges the batch into the queries), except next to a frozen copy of a dynamic input
    axis in place (``b = int(...)``, the batch) that becomes -1, where the computed entry is at
    the export shape (a part of) an input axis that does not change and yet its value changes:
    the dynamo exporter writes the ``-1`` of ``reshape(b, H, W, -1)`` as ``numel // (b * H * W)``,
    which with ``b`` frozen takes up the batch. When two different changes of the same size would
    do, nothing is rewritten."""
    r0 = _resolve(x0, t0, allowzero)
    if r0 is None or not _regroups(x0, x1, t0, t1, allowzero):
        return {}
    to_minus = [None, *frozen]
    static = [k for k in range(len(x0)) if x0[k] == x1[k]]
    in_place = {i for i in frozen if i < len(x0) and x0[i] == t0[i] and x0[i] != x1[i]}
    polluted = {j for j in range(len(t0))
                if t1[j] != t0[j] and r0[j] > 1 and any(_within(x0, r0, j, k) for k in static)}
    to_const = [j for j in range(len(t0)) if t0[j] == -1 or j in polluted]
    best: list[tuple[dict[str, int], list[int]]] = []
    for size in range(1, len(to_const) + 2):
        for minus in to_minus:
            for fixed in itertools.combinations(to_const, size - (minus is not None)):
                if minus in fixed or (minus not in in_place and polluted.intersection(fixed)):
                    continue
                entries = {str(j): r0[j] for j in fixed}
                if minus is not None:
                    entries[str(minus)] = -1
                new0 = [int(entries.get(str(j), v)) for j, v in enumerate(t0)]
                new1 = [int(entries.get(str(j), v)) for j, v in enumerate(t1)]
                if new1.count(-1) > 1 or _resolve(x0, new0, allowzero) != r0:
                    continue
                resolved = _resolve(x1, new1, allowzero)
                if resolved is None or _regroups(x0, x1, new0, new1, allowzero):
                    continue
                best.append((entries, resolved))
        if best:
            break
    if not best or any(r != best[0][1] for _, r in best):
        return {}
    entries = best[0][0]
    blocks = _blocks(x0, r0) or []
    text = " ".join(
        "[" + ",".join(str(x0[i]) for i in b_in) + "]->[" + ",".join(str(r0[j]) for j in b_out) + "]"
        for b_in, b_out in blocks)
    return {"entries": entries, "frozen": [int(j) for j, v in entries.items() if v == -1], "blocks_s0": text}


def _spatial_extents(
    ctx: Context, x: ir.Value | None, x0: Dims, dynamic: list[int], t0: list[int], frozen: list[int],
    allowzero: bool,
) -> dict[int, int]:
    """Frozen entries equal to a dynamic input axis's export-time size per batch item, where that
    axis follows a spatial input axis, and that split that axis at the export shape: entry ->
    input axis. An entry that splits another axis only has the same value by coincidence:
    GroupNorm(32, C)'s ``[0, 32, -1]`` splits the channels, whatever the width (32 at export)
    is."""
    # a value that is also a static dim of the input (the channels) is read as that dim
    static = {x0[k] for k in range(len(x0)) if k not in dynamic}
    wanted = [i for i in frozen if t0[i] > 1 and t0[i] not in static and not (i < len(x0) and t0[i] == x0[i])]
    if not wanted or x is None:
        return {}
    batch_moved, spatial_moved = _one_kind_moved(ctx)
    if spatial_moved is None:
        return {}
    ps = ctx.prober.at(spatial_moved)
    pb = ctx.prober.at(batch_moved) if batch_moved is not None else None
    if _fails_upstream(ctx, ps, x) or (pb is not None and _fails_upstream(ctx, pb, x)):
        return {}
    xs = ctx.dims(x, ps)
    xb = ctx.dims(x, pb) if pb is not None else None
    b0, b1 = _batch_sizes(ctx)
    per_item: dict[int, int] = {}
    for k in dynamic:
        if xs is None or k >= len(xs) or xs[k] is None or xs[k] == x0[k]:
            continue  # does not follow the spatial size
        size = x0[k]
        moved = xb[k] if xb is not None and k < len(xb) else None
        if moved is not None and moved != size:
            # follows the batch too: the part per batch item, when it is proportional to it
            if not b0 or moved * b0 != size * b1 or size % b0:
                continue
            size //= b0
        if size > 1:
            per_item[k] = size
    r0 = _resolve(x0, t0, allowzero)
    found: dict[int, int] = {}
    for i in wanted:
        axes = [k for k, size in per_item.items()
                if size == t0[i] and k != i and r0 is not None and _within(x0, r0, i, k)]
        if axes:
            found[i] = axes[0]
    return found


def _within(dims: Dims, resolved: list[int], entry: int, axis: int) -> bool:
    """Does output ``entry`` of the reshape ``dims`` -> ``resolved`` take its elements from
    input ``axis`` alone (it is that axis, or a part of it)? In row-major order, the entry spans
    the strides from ``prod(resolved[entry + 1:])`` up to ``prod(resolved[entry:])``, the axis
    those from ``prod(dims[axis + 1:])`` up to ``prod(dims[axis:])``."""
    inner, outer = math.prod(resolved[entry + 1:]), math.prod(resolved[entry:])
    axis_inner, axis_outer = math.prod(dims[axis + 1:]), math.prod(dims[axis:])
    return inner % axis_inner == 0 and axis_outer % outer == 0


def _fails_upstream(ctx: Context, probe: Probe, value: ir.Value | None) -> bool:
    """Does the probe fail at a node that ``value`` is computed from?"""
    failed = probe.failure.node if probe.failure is not None else None
    if not failed or value is None:
        return False
    node = next((n for n in ctx.model.graph if n.name == failed), None)
    return node is not None and is_descendant(value, node)


def _install_target(builder: RewriteBuilder, node: ir.Node, pieces: list[ir.Value]) -> None:
    """Concat ``pieces`` into the reshape's new target; insert the new nodes before ``node``."""
    target = builder.op("Concat", pieces, name=f"{node.name}_target", axis=0)
    builder.insert_before(node)
    node.replace_input_with(1, target)


def _batch_sizes(ctx: Context) -> tuple[int, int]:
    """The export-time batch and the batch of the second probe shape (0, 0: no dynamic batch)."""
    for info in ctx.inputs:
        if 0 in info.dynamic_axes and info.rank >= 3 and info.name in ctx.s0:
            return int(ctx.s0[info.name][0]), int(ctx.s1[info.name][0])
    return 0, 0


def _one_kind_moved(ctx: Context) -> tuple[dict | None, dict | None]:
    """S0 with only the batch moved to its S1 size, and S0 with only the other dynamic axes moved."""
    batch = {k: tuple(v) for k, v in ctx.s0.items()}
    spatial = {k: tuple(v) for k, v in ctx.s0.items()}
    any_batch = any_spatial = False
    for info in ctx.inputs:
        if info.name not in ctx.s0:
            continue
        for a in info.dynamic_axes:
            target = batch if (a == 0 and info.rank >= 3) else spatial
            moved = list(target[info.name])
            moved[a] = ctx.s1[info.name][a]
            target[info.name] = tuple(moved)
            if target is batch:
                any_batch = True
            else:
                any_spatial = True
    return (batch if any_batch else None), (spatial if any_spatial else None)


def _product_run(dims: Dims, dynamic: list[int], value: int) -> list[int] | None:
    """A contiguous run of >= 2 input dims whose product is ``value``, one of them dynamic.

    A run whose dynamic dims are all 1 at the export shape is taken only when no run with a
    larger dynamic dim exists: ``[8, 6144]`` of ``1x8x64x96`` is batch·channels, but in
    ``[-1, 49, C]`` of ``1x1x1x7x7xC`` (one 7x7 window) the 49 is 7·7, not 1·1·7·7."""
    for min_size in (2, 1):
        for start in range(len(dims)):
            prod = 1
            for end in range(start, len(dims)):
                prod *= dims[end]
                if prod > value:
                    break
                if end > start and prod == value and any(start <= d <= end and dims[d] >= min_size
                                                         for d in dynamic):
                    return list(range(start, end + 1))
    return None


def _describe(plan: dict) -> str:
    if plan["kind"] == "earlier":
        return (f"build target entries {', '.join(plan['axes'])} from Shape({plan['tensor']}) "
                f"(axes {', '.join(str(a) for a in plan['axes'].values())}), keeping the other entries")
    if plan["kind"] == "const":
        return f"use target {plan['target']} (0 copies the input dim, -1 infers it)"
    if plan["kind"] == "regroup":
        return (f"set target entries {plan['entries']} (the frozen entry of the block that grows becomes -1), "
                "keeping the entries computed from shapes")
    return "build the target from Shape of the input"


def _no_plan_text(extents: dict[int, int], failing: Probe | None = None) -> str:
    if failing is not None and failing.failure is not None:
        return (f"not rewritten: at {fmt(next(iter(failing.inputs.values())))} the graph already fails before "
                f"this node ({failing.failure.op} {failing.failure.node!r}), so the shapes it would get there are "
                "not known; fix that first, then check again")
    if extents:
        return ("not rewritten: the entry is a count taken from the feature-map size at export (e.g. the number "
                "of attention windows), and a constant joined with this tensor usually has the same frozen size; "
                "in the source compute it from the tensor's shape (nW = x.shape[0] // B) and build masks from "
                "the padded size in forward")
    return ("not rewritten: the constant entries match no input dim or product of dims; in the source "
            "use x.flatten(...) / x.view(b, c, -1) with sizes from x.shape")


RULES: list[Rule] = [FrozenReshapeTarget()]
