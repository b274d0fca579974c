"""DS007 and DS008: a tensor made at the export size and joined with one that follows the input.

Both are constants (or a ``ConstantOfShape`` whose size is partly constant) whose dims equal the
export-time sizes of the dynamic axes they meet at a join (``Add``/``Mul``/``Concat``/``Where``…).
At any other size the join fails. They are told apart by the graph signature:

* **DS007** — a tensor *generated* from a size: ``torch.zeros/ones/full/arange`` or a mask built
  with Python ints. In the graph: a ``ConstantOfShape``/``Range`` node with a constant size (the
  finding names that node), a uniform constant of any rank (zeros/ones/full folded by the
  exporter), or a constant that meets the live tensor on a single axis (an ``arange(W)`` row, a
  repeated row over the batch).
* **DS008** — a *buffer the size of a feature map*: a non-uniform initializer or ``Constant``
  (no generating node) whose axes meet a feature map's spatial axes: two or more axes that follow
  *different* input axes (H and W; told by probes that move one input axis at a time), or one
  axis that follows both (H·W flattened; uniform there too: a stride column). YOLOv5's
  ``self.grid`` / ``self.anchor_grid`` ``[1, na, ny0, nx0, 2]`` and YOLOv8's ``self.anchors``
  ``[2, Σ ny_i·nx_i]`` and ``self.strides`` ``[1, Σ ny_i·nx_i]``, cached during a warm-up run.
  An ``L0 x L0`` attention mask meets one size twice and an ``arange(W0)`` row one axis: DS007.
  The same graph comes out of a meshgrid built in ``forward`` with Python ints and folded by the
  exporter; the graph cannot tell the two apart and the fix is the same. (Differential
  export, ``--torch``, sees a grid rebuilt in forward change between exports: DS007 there.)

A constant made at the export size *before* an ``Expand``/``Tile`` is rebuilt whole here; sizes
set by the ``Expand``/``Tile`` itself are DS012's.

Exact fix: the tensor is rebuilt from ``Shape`` of the tensor it is joined with, when its values
can be regenerated exactly:

* constant along every export-size axis (zeros/ones/full, an anchor grid): ``ConstantOfShape`` or
  ``Expand`` of its first slice to the partner's size;
* a sum of per-axis progressions ``base + Σ step·i`` (``arange``, a meshgrid of aranges, a YOLO
  grid): ``Range(0, Gather(Shape(t), axis))`` cast, scaled, reshaped onto its axis and added;
* per-level grids concatenated along one flattened axis (YOLOv8's ``anchors [2, Σ h_i·w_i]`` and
  ``strides [1, Σ h_i·w_i]`` over detection levels 8/16/32): the levels are read from the graph's
  own flattenings of feature maps (a ``Reshape`` of ``[.., h, w]`` to ``[.., h·w]`` per level, their
  ``Concat``) whose lengths add up to the constant's at S0 and to the partner's at S1; each
  segment, unflattened to ``h x w``, is regenerated as here from ``Shape`` of its map, reshaped to
  ``h·w`` and the segments are concatenated again;
* normalized grids whose step is ``span / size`` or ``span / (size − 1)`` (``(i + 0.5) / W``,
  ``linspace(-1, 1, W)``): the same with a division by the live size. A step is read as a
  constant when it is an integer, else as ``span/size`` when the span is a multiple of 1/4, else
  as a constant when it is a multiple of 1/4; anything else is reported, not guessed. An integer
  step equal to another of its export-size axes (a flat index ``i·W0 + j``) is reported too.
  Ambiguity left: ``arange(4) * 0.25`` and ``arange(4) / 4`` give the same constant; the second
  reading wins.

The regenerated values are compared with the constant at the export shape before a rewrite is
planned. Values that vary irregularly along the export-size axes (a learned position table) are
not a generated tensor: those are refused here (a learned embedding is DS011's family).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import SAME_SIZE_UNARY, Context, fmt, is_descendant, origin_of
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder
from dynashape.rules.joined import (
    Meeting,
    Origin,
    SizeBuilder,
    SizeEntry,
    build_size_vector,
    constant_array,
    expanded_axes_frozen,
    input_axes_behind,
    known_dims,
    meeting_at,
    upstream_through_unary,
)

_GENERATORS = ("ConstantOfShape", "Range", "EyeLike")
_MAX_ELEMENTS = 1 << 22
# elementwise ops that keep the shape of their non-constant input when the other one is small
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "And", "Or", "Xor", "Equal", "Less", "Greater",
                "LessOrEqual", "GreaterOrEqual", "Max", "Min", "BitShift"}


@dataclass
class Operand:
    """One frozen input of a join and what the rules found out about it."""

    join: ir.Node
    slot: int
    value: ir.Value
    dims0: tuple[int, ...]
    meeting: Meeting
    origin: Origin
    rule: str = ""  # "DS007" | "DS008" | "" (refused)
    why_not: str = ""
    generator: ir.Node | None = None
    array: np.ndarray | None = None
    plan: dict | None = None
    plan_why_not: str = ""

    @property
    def spatial(self) -> list[int]:
        return [a for a in self.meeting.axes if self.dims0[a] > 1]


# ------------------------------------------------------------------------------------ analysis


def frozen_operands(ctx: Context, join: ir.Node) -> tuple[list[Operand], list[str]]:
    """Inputs of ``join`` with axes frozen at the export-time size of a dynamic partner axis."""
    found: list[Operand] = []
    reasons: list[str] = []
    for slot, v in enumerate(join.inputs):
        if v is None:
            continue
        d0, d1 = known_dims(ctx, v, ctx.p0), known_dims(ctx, v, ctx.p1)
        if d0 is None or any(d is None for d in d0):
            continue
        dims0 = tuple(int(d or 0) for d in d0)
        constant_like = v.const_value is not None or (v.producer() is not None and v.producer().op_type == "Constant")  # type: ignore[union-attr]
        if constant_like:
            frozen = list(range(len(dims0)))
        elif d1 is None or len(d1) != len(d0):
            continue
        else:
            frozen = [a for a in range(len(dims0)) if d1[a] == dims0[a]]
        if not frozen:
            continue
        meeting = meeting_at(ctx, join, slot, dims0, frozen)
        if meeting.conflicts:
            reasons.append(f"{v.name}: {meeting.conflicts[0]}: the export shape {fmt(next(iter(ctx.s0.values())))} "
                           "does not look like the true one (give it with --export-shape)")
            continue
        if not meeting.axes:
            continue
        found.append(Operand(join, slot, v, dims0, meeting, Origin("", [])))
    if not found and not reasons:
        reasons.append("no input has an axis frozen at the export-time size of a dynamic axis it meets")
    return found, reasons


def _classified_operands(ctx: Context, join: ir.Node) -> tuple[list[Operand], list[str]]:
    """``frozen_operands``, each classified (read only afterwards: DS007 and DS008 share them)."""
    operands, reasons = frozen_operands(ctx, join)
    for op in operands:
        classify(ctx, op)
    return operands, reasons


def classify(ctx: Context, op: Operand) -> None:
    """Fill in ``op.rule`` (DS007/DS008, or why neither) and the rewrite plan."""
    producer = upstream_through_unary(op.value)
    op.origin = origin_of(op.value)
    # DS012 owns the sizes an Expand/Tile sets; a constant that is itself made at the export size
    # before it is expanded is rebuilt whole here (DS012 refuses it)
    if producer is not None and producer.op_type in ("Expand", "Tile") and (
            op.origin.kind != "constant" or not expanded_axes_frozen(ctx, producer, sorted(op.meeting.axes))):
        op.why_not = f"its size is set by {producer.op_type} {producer.name!r} (DS012)"
        return
    cos = _constant_of_shape_above(ctx, op.value)
    if cos is not None:
        op.generator = cos
        op.rule = "DS007"
        op.plan, op.plan_why_not = _cos_plan(ctx, op, cos)
        return
    if op.origin.kind != "constant":
        src = producer.op_type if producer is not None else "a graph input"
        op.why_not = (f"it is not a generated constant ({op.origin.why or 'computed from data'}); its frozen axes "
                      f"come from {src}, which another rule owns")
        return
    if math.prod(op.dims0) > _MAX_ELEMENTS:
        op.why_not = f"too large to analyse ({fmt(op.dims0)})"
        return
    op.generator = next((n for n in op.origin.nodes if n.op_type in _GENERATORS), None)
    arr = constant_array(ctx, op.value, op.origin)
    if arr is None or tuple(arr.shape) != op.dims0:
        op.why_not = "its value cannot be computed"
        return
    op.array = arr
    uniform = arr.size > 0 and bool(np.all(arr == arr.reshape(-1)[0]))
    plan, why = decompose(arr, sorted(op.meeting.axes))
    if plan is None and len(op.spatial) == 1:
        # one axis that is H·W flattened: per-level grids concatenated (YOLOv8 anchors, strides)
        plan, why_levels = levels_plan(ctx, op, arr)
        why = "" if plan is not None else f"{why}, and {why_levels}"
    if plan is None and not _looks_generated(arr):
        op.why_not = (f"its values vary irregularly along the export-size axes ({why}): a learned or computed "
                      "table, not a generated grid (a learned position embedding is DS011's family)")
        return
    op.plan, op.plan_why_not = plan, why
    # a fill over a flattened H·W axis is a cached buffer too (YOLOv8's stride column of one level):
    # found only once the anchors before it are rebuilt, after DS007 has run
    flattened = len(op.spatial) == 1
    op.rule = "DS008" if op.generator is None and (not uniform or flattened) and _feature_map_shaped(ctx, op) \
        else "DS007"


def _feature_map_shaped(ctx: Context, op: Operand) -> bool:
    """Its axes meet a feature map's spatial axes: two or more axes that follow different input
    axes (H and W: ``[1, na, ny0, nx0, 2]``), or a single axis that follows two (H·W flattened:
    YOLOv8's ``anchors [2, L0]``). Not one size twice (an ``L0 x L0`` attention mask) and not a
    single size (an ``arange(W0)`` row)."""
    if not op.spatial:
        return False
    behind = [input_axes_behind(ctx, *op.meeting.axes[a]) for a in op.spatial]
    spatial_inputs = [frozenset(ax for ax in b if ax[1] != 0) for b in behind]
    distinct = {b for b in spatial_inputs if b}
    if len(op.spatial) == 1:
        return len(spatial_inputs[0]) >= 2
    return len(distinct) >= 2


def _constant_of_shape_above(ctx: Context, value: ir.Value) -> ir.Node | None:
    """A ``ConstantOfShape`` that ``value`` is computed from by shape-keeping ops only."""
    current = value
    want0, want1 = known_dims(ctx, value, ctx.p0), known_dims(ctx, value, ctx.p1)
    for _ in range(16):
        producer = current.producer()
        if producer is None:
            return None
        if producer.op_type == "ConstantOfShape":
            return producer if ctx.value(producer.inputs[0], ctx.p0) is not None else None
        nxt: ir.Value | None = None
        if producer.op_type in SAME_SIZE_UNARY:
            nxt = producer.inputs[0]
        elif producer.op_type in _ELEMENTWISE:
            live = [i for i in producer.inputs if i is not None and not _is_constant(i)]
            if len(live) == 1:
                nxt = live[0]
        if nxt is None or known_dims(ctx, nxt, ctx.p0) != want0 or known_dims(ctx, nxt, ctx.p1) != want1:
            return None
        current = nxt
    return None


def _is_constant(v: ir.Value) -> bool:
    p = v.producer()
    return v.const_value is not None or (p is not None and p.op_type == "Constant")


def _cos_plan(ctx: Context, op: Operand, cos: ir.Node) -> tuple[dict | None, str]:
    shape = cos.inputs[0]
    v0, v1 = ctx.value(shape, ctx.p0), ctx.value(shape, ctx.p1)
    if v0 is None or v1 is None:
        return None, "its shape cannot be computed at the second probe shape"
    t0 = [int(v) for v in np.atleast_1d(v0)]
    t1 = [int(v) for v in np.atleast_1d(v1)]
    if len(t0) != len(op.dims0):
        return None, f"its shape {t0} does not match {fmt(op.dims0)}"
    for partner, _pa in op.meeting.axes.values():
        if is_descendant(partner, cos):
            return None, f"the tensor it is joined with ({partner.name!r}) is computed from it"
    entries: list[dict] = []
    for e in range(len(t0)):
        if e in op.meeting.axes:
            partner, pa = op.meeting.axes[e]
            entries.append({"ref": partner.name, "axis": pa})
        elif t0[e] == t1[e]:
            entries.append({"const": t0[e]})
        else:
            entries.append({"keep": e})
    return {"kind": "constant_of_shape", "node": cos.name, "output": cos.outputs[0].name, "entries": entries,
            "shape_s0": t0,
            "shape_value": shape.name if shape is not None else ""}, ""


def _looks_generated(arr: np.ndarray) -> bool:
    """Masks, index grids and fills: booleans, integers, or floats on a 1/4 grid / few values."""
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return True
    finite = arr[np.isfinite(arr)].astype(np.float64)
    if finite.size == 0 or np.unique(arr).size <= 16:
        return True
    return bool(np.all(np.abs(finite * 4 - np.round(finite * 4)) <= 1e-6 * np.maximum(1, np.abs(finite))))


def _is_int(x: np.ndarray) -> bool:
    return bool(np.all(np.abs(x - np.round(x)) <= 1e-6 * np.maximum(1.0, np.abs(x))))


def _nice(x: np.ndarray) -> bool:
    """Multiples of 1/4 (0.5 cell offsets, spans of 1 or 2), up to float32 rounding."""
    return _is_int(np.asarray(x, np.float64) * 4)


def decompose(arr: np.ndarray, axes: list[int]) -> tuple[dict | None, str]:
    """A plan that regenerates ``arr`` from the sizes of ``axes``, or why there is none.

    ``{"kind": "fill", "value"}``; or ``{"kind": "grid", "base", "terms"}``: ``base`` has size 1 on
    ``axes``; each term adds, along its axis ``i = 0..n-1``, ``i * scale`` (mode ``step``) or
    ``((i + offset) * span) / m`` with ``m = n`` (``size``) or ``n - 1`` (``size-1``).
    """
    dtype = arr.dtype
    flat = arr.reshape(-1)
    if flat.size and bool(np.all(arr == flat[0])):
        return {"kind": "fill", "value": flat[0].item(), "dtype": str(dtype)}, ""
    floating = np.issubdtype(dtype, np.floating)
    if not floating and not np.issubdtype(dtype, np.integer):
        return None, f"a {dtype} tensor that changes along the export-size axes (not a Range)"
    if floating and not np.all(np.isfinite(arr)):
        return None, "non-finite values that change along the export-size axes"
    wide = arr.astype(np.float64)
    first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(arr.ndim))
    base = wide[first]
    diffs: dict[int, np.ndarray] = {}
    for j in axes:
        sl = tuple(slice(None) if a == j else (slice(0, 1) if a in axes else slice(None)) for a in range(arr.ndim))
        diffs[j] = wide[sl] - base
    recon = base + sum(diffs.values())
    tol = 4 * (np.finfo(dtype).eps if floating else 0) * max(1.0, float(np.max(np.abs(wide))))
    if np.max(np.abs(recon - wide)) > tol:
        return None, "its values are not a sum of per-axis progressions (e.g. a triangular mask or a flat index)"
    terms: list[dict] = []
    new_base = base.copy()
    offset_taken = np.zeros(base.shape, bool)
    for j, diff in diffs.items():
        if not np.any(diff):
            continue
        n0 = arr.shape[j]
        step = np.take(diff, [1], axis=j)
        index = np.arange(n0, dtype=np.float64).reshape([-1 if a == j else 1 for a in range(arr.ndim)])
        if np.max(np.abs(diff - index * step)) > tol * max(1, n0):
            return None, f"its values along axis {j} are not evenly spaced"
        nz = step != 0
        steps = step[nz]
        if not floating or _is_int(steps):
            # a step equal to another export-size axis is a flat index (i * W0 + j): the step is
            # itself a size and would stay W0 at every other size
            sizes = {arr.shape[k] for k in axes if k != j and arr.shape[k] > 1}
            tied = sorted({int(abs(round(float(v)))) for v in steps} & sizes)
            if tied:
                return None, (f"its step along axis {j} is {tied[0]}, the export-time size of another of its axes "
                              "(a flat index i·W + j): the step itself is a size")
            scale = step.tolist() if floating else np.round(step).tolist()
            terms.append({"axis": j, "mode": "step", "scale": scale})
            continue
        term = None
        for mode, m0 in (("size", n0), ("size-1", n0 - 1)):
            span = step * m0
            if m0 < 1 or not _nice(span[nz]) or not np.all(np.abs(steps) < 1) or np.max(np.abs(span)) > 16:
                continue
            offset = np.zeros(base.shape)
            ok = True
            for idx in zip(*np.nonzero(nz)):
                if offset_taken[idx]:
                    ok = False  # two normalized axes feed one component: the offsets are ambiguous
                    break
                b = new_base[idx]
                for c in (0.0, 0.5):
                    if _nice(np.array(b - c * step[idx])):
                        offset[idx] = c
                        break
                else:
                    ok = False
                    break
            if not ok:
                continue
            for idx in zip(*np.nonzero(nz)):
                new_base[idx] -= offset[idx] * step[idx]
                offset_taken[idx] = True
            term = {"axis": j, "mode": mode, "span": np.round(span * 4).astype(np.float64).__truediv__(4).tolist(),
                    "offset": offset.tolist()}
            break
        if term is None:
            if _nice(steps):
                terms.append({"axis": j, "mode": "step", "scale": step.tolist()})
                continue
            return None, (f"the step along axis {j} ({_show(steps)}) is neither a constant (integer, multiple of 1/4) "
                          f"nor a span of 1/4 multiples over the size {n0}")
        terms.append(term)
    if floating:
        new_base = np.where(np.abs(new_base * 4 - np.round(new_base * 4)) <= 1e-6 * np.maximum(1, np.abs(new_base)),
                            np.round(new_base * 4) / 4, new_base)
    plan = {"kind": "grid", "dtype": str(dtype), "base": new_base.astype(dtype).tolist(), "terms": terms,
            "shape_s0": list(arr.shape)}
    regen = simulate(plan, {j: arr.shape[j] for j in axes}, arr.ndim)
    err = float(np.max(np.abs(np.broadcast_to(regen, arr.shape).astype(np.float64) - wide)))
    if err > tol:
        return None, f"regenerating it from Range differs from the constant by {err:.3g} at the export shape"
    plan["max_error_s0"] = err
    return plan, ""


def _show(values: np.ndarray) -> str:
    uniq = np.unique(values)
    return ", ".join(f"{v:.6g}" for v in uniq[:4]) + (", ..." if uniq.size > 4 else "")


def simulate(plan: dict, sizes: dict[int, int], rank: int) -> np.ndarray:
    """numpy twin of the nodes ``_emit_grid`` writes, in the same dtype and order."""
    dtype = np.dtype(plan["dtype"])
    base = np.asarray(plan["base"], dtype)
    out: np.ndarray | None = None if _all_zero(plan["base"]) and plan["terms"] else base
    for term in plan["terms"]:
        j = term["axis"]
        i = np.arange(sizes[j], dtype=np.int64).astype(dtype).reshape([-1 if a == j else 1 for a in range(rank)])
        if term["mode"] == "step":
            v = i if _all_one(term["scale"]) else i * np.asarray(term["scale"], dtype)
        else:
            v = i if _all_zero(term["offset"]) else i + np.asarray(term["offset"], dtype)
            v = v if _all_one(term["span"]) else v * np.asarray(term["span"], dtype)
            m = max(sizes[j] - 1, 1) if term["mode"] == "size-1" else sizes[j]
            v = v / np.asarray(m, dtype)
        out = v if out is None else out + v
    assert out is not None
    return out


def _all_zero(values: list) -> bool:
    return bool(np.all(np.asarray(values) == 0))


def _all_one(values: list) -> bool:
    return bool(np.all(np.asarray(values) == 1))


# ------------------------------------------------------------------------ multi-level grids


@dataclass(frozen=True)
class Level:
    """A feature map whose two axes ``axes`` (H, W) are flattened into one: ``view(b, c, -1)``."""

    ref: ir.Value
    axes: tuple[int, int]
    size0: tuple[int, int]  # (h, w) at S0
    size1: tuple[int, int]  # at S1


def levels_plan(ctx: Context, op: Operand, arr: np.ndarray) -> tuple[dict | None, str]:
    """A plan that regenerates ``arr`` level by level, or why there is none.

    ``arr`` meets one flattened axis ``j`` (H·W, or Σ H_i·W_i over detection levels). The
    candidates are the graph's own flattenings of feature maps (a ``Reshape``/``Flatten`` of
    ``[.., h, w, ..]`` into ``[.., h·w, ..]``, or a ``Concat`` of several along that axis) whose
    sizes add up to ``arr``'s at S0 and to the partner's at S1. Each level's segment of ``arr``,
    unflattened to ``h x w``, must be a grid ``decompose`` regenerates (a fill: the stride
    tensor), and the levels rebuilt and concatenated must equal ``arr`` at S0."""
    (j,) = op.spatial
    n0 = op.dims0[j]
    partner, pa = op.meeting.axes[j]
    p1 = known_dims(ctx, partner, ctx.p1)
    n1 = p1[pa] if p1 is not None else None
    if n1 is None:
        return None, "the size it meets at the second probe shape is unknown"
    tried: set[tuple[tuple[int, int], ...]] = set()
    why = f"no flattened feature maps (Reshape/Concat of [.., h, w] maps) add up to its {n0} entries"
    for levels in _flattened_level_lists(ctx, n0):
        sizes = tuple(level.size0 for level in levels)
        if sizes in tried or sum(h * w for h, w in (lv.size1 for lv in levels)) != n1:
            continue
        tried.add(sizes)
        if any(is_descendant(level.ref, op.join) for level in levels):
            continue
        plan, reason = _plan_levels(arr, j, levels)
        if plan is not None:
            return plan, ""
        why = f"split over the feature maps {_sizes_text(sizes)} it is not a grid per map: {reason}"
    return None, why


def _sizes_text(sizes: tuple[tuple[int, int], ...]) -> str:
    return " + ".join(f"{h}x{w}" for h, w in sizes)


def _plan_levels(arr: np.ndarray, j: int, levels: list[Level]) -> tuple[dict | None, str]:
    rank = arr.ndim
    grids: list[np.ndarray] = []
    start = 0
    for level in levels:
        h, w = level.size0
        segment = np.take(arr, np.arange(start, start + h * w), axis=j)
        start += h * w
        grids.append(segment.reshape((*arr.shape[:j], h, w, *arr.shape[j + 1:])))
    # a map one row or column high at S0 (the 32-stride map of a small export) shows no step
    # along that axis: its plan is that of a map where both steps show, if one reproduces it
    plans: list[dict | None] = [None] * len(levels)
    for k, grid in enumerate(grids):
        if min(grid.shape[j:j + 2]) > 1:
            plan, why = decompose(grid, [j, j + 1])
            if plan is None:
                return None, f"the {'x'.join(map(str, grid.shape[j:j + 2]))} map: {why}"
            plans[k] = plan
    observed = [p for p in plans if p is not None]
    for k, grid in enumerate(grids):
        if plans[k] is None:
            plans[k] = _plan_of_a_thin_map(grid, j, observed)
            if plans[k] is None:
                h, w = grid.shape[j:j + 2]
                return None, (f"the {h}x{w} map is one {'row' if h == 1 else 'column'} at the export shape, so its "
                              "step along the other axis cannot be read, and no other map's grid reproduces it")
    pieces: list[np.ndarray] = []
    entries: list[dict] = []
    for level, grid, plan in zip(levels, grids, plans):
        assert plan is not None
        h, w = level.size0
        if plan["kind"] == "fill":
            regen = np.full(grid.shape, plan["value"], arr.dtype)
        else:
            regen = np.broadcast_to(simulate(plan, {j: h, j + 1: w}, rank + 1), grid.shape)
        pieces.append(regen.reshape((*arr.shape[:j], h * w, *arr.shape[j + 1:])))
        entries.append({"ref": level.ref.name, "axes": list(level.axes), "size_s0": [h, w], "plan": plan})
    whole = np.concatenate(pieces, axis=j)
    floating = np.issubdtype(arr.dtype, np.floating)
    tol = 4 * (np.finfo(arr.dtype).eps if floating else 0) * max(1.0, float(np.max(np.abs(arr)))) if arr.size else 0
    err = float(np.max(np.abs(whole.astype(np.float64) - arr.astype(np.float64)))) if arr.size else 0.0
    if err > tol:
        return None, f"the levels rebuilt and concatenated differ from it by {err:.3g} at the export shape"
    return {"kind": "levels", "dtype": str(arr.dtype), "axis": j, "shape_s0": list(arr.shape), "levels": entries,
            "max_error_s0": err}, ""


def _plan_of_a_thin_map(grid: np.ndarray, j: int, observed: list[dict]) -> dict | None:
    """The plan of a map with a size-1 axis at S0: a fill where every other map is a fill, else
    the first grid plan of another map that gives exactly its values."""
    own, _ = decompose(grid, [j, j + 1])
    if observed and all(p["kind"] == "fill" for p in observed):
        return own if own is not None and own["kind"] == "fill" else None
    sizes = {j: grid.shape[j], j + 1: grid.shape[j + 1]}
    for plan in observed:
        if plan["kind"] != "grid":
            continue
        regen = np.broadcast_to(simulate(plan, sizes, grid.ndim), grid.shape).astype(np.float64)
        wide = grid.astype(np.float64)
        floating = np.issubdtype(grid.dtype, np.floating)
        tol = 4 * (np.finfo(grid.dtype).eps if floating else 0) * max(1.0, float(np.max(np.abs(wide))))
        if float(np.max(np.abs(regen - wide))) <= tol:
            return plan
    return None


def _flattened_level_lists(ctx: Context, n0: int) -> list[list[Level]]:
    """Every flattening of feature maps in the graph whose flattened axis is ``n0`` long at S0:
    one ``Reshape``/``Flatten`` (a single map) or a ``Concat`` of several along that axis."""
    found: list[list[Level]] = []
    for node in ctx.nodes("Concat", "Reshape", "Flatten"):
        out = node.outputs[0]
        o0 = known_dims(ctx, out, ctx.p0)
        if o0 is None:
            continue
        if node.op_type == "Concat":
            axis = node.attributes.get_int("axis", 0) % max(len(o0), 1)
            if axis >= len(o0) or o0[axis] != n0:
                continue
            levels = [_level_behind(ctx, v, axis) if v is not None else None for v in node.inputs]
            if levels and all(level is not None for level in levels):
                found.append([level for level in levels if level is not None])
            continue
        for k, d in enumerate(o0):
            level = _flattened(ctx, node, k) if d == n0 else None
            if level is not None:
                found.append([level])
    return found


def _level_behind(ctx: Context, value: ir.Value, axis: int) -> Level | None:
    """The feature map whose flattened H·W is ``axis`` of ``value`` (through shape-keeping ops
    and transposes)."""
    current = value
    for _ in range(16):
        producer = current.producer()
        if producer is None or not producer.inputs or producer.inputs[0] is None:
            return None
        if producer.op_type in ("Reshape", "Flatten"):
            return _flattened(ctx, producer, axis)
        if producer.op_type == "Transpose":
            perm_attr = producer.attributes.get("perm")
            if perm_attr is None:
                return None
            axis = list(perm_attr.as_ints())[axis]
        elif producer.op_type not in SAME_SIZE_UNARY:
            return None
        current = producer.inputs[0]
    return None


def _flattened(ctx: Context, node: ir.Node, k: int) -> Level | None:
    """``node`` flattens axes ``k, k+1`` of its input (both dynamic) into its output axis ``k``,
    keeping every other axis: ``[.., h, w, ..] -> [.., h·w, ..]`` at both probe shapes."""
    x = node.inputs[0]
    sizes: list[tuple[int, int]] = []
    for probe in (ctx.p0, ctx.p1):
        d, o = known_dims(ctx, x, probe), known_dims(ctx, node.outputs[0], probe)
        if d is None or o is None or any(v is None for v in (*d, *o)) or len(d) != len(o) + 1 or k + 1 >= len(d):
            return None
        di, oi = [int(v or 0) for v in d], [int(v or 0) for v in o]
        if oi != [*di[:k], di[k] * di[k + 1], *di[k + 2:]]:
            return None
        sizes.append((di[k], di[k + 1]))
    if sizes[0] == sizes[1] or min(sizes[0]) < 1:
        return None  # not a map that follows the input
    assert x is not None
    return Level(x, (k, k + 1), sizes[0], sizes[1])


# ------------------------------------------------------------------------------------ the rules


@dataclass(frozen=True)
class OperandPlan:
    """One frozen operand of the join to regenerate: the tensor in input ``slot`` (``value``, of
    ``dims_s0`` at the export shape), whose axes ``meets`` (axis, partner tensor, partner axis).
    ``recipe``: how its values are regenerated, as ``decompose``/``levels_plan``/``_cos_plan`` give
    it ("fill", "grid", "levels" or "constant_of_shape", with their numbers); ``simulate`` reads it."""

    slot: int
    value: str
    dims_s0: tuple[int, ...]
    meets: tuple[tuple[int, str, int], ...]
    recipe: Mapping[str, Any]


@dataclass(frozen=True)
class GeneratedPlan(RewritePlan):
    """DS007/DS008: the operands of the join making ``join_output`` to rebuild from ``Shape``."""

    join: str
    join_output: str  # the join is found by its output (node names may repeat)
    operands: tuple[OperandPlan, ...]


class _GeneratedBase(Rule[GeneratedPlan]):
    """DS007 and DS008 look at the same joins and split the frozen operands between them."""

    needs_export_shape = True
    source_fix = ""  # what to change in the source when the tensor cannot be regenerated
    ops = tuple(sorted({"Add", "Sub", "Mul", "Div", "Concat", "Sum", "Max", "Min", "Mean", "Where", "Pow"}))

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        # DS007 and DS008 analyse every join alike: the second asks the context for the first's
        # analysis, which it keeps until the graph is refreshed
        operands, reasons = ctx.memo("generated-operands", node, lambda: _classified_operands(ctx, node))
        if not operands:
            return self.refuse(node, reasons[0])
        mine: list[Operand] = []
        others: list[str] = []
        for op in operands:
            if op.rule == self.id:
                mine.append(op)
            else:
                slot_name = op.value.name or f"input {op.slot}"
                others.append(f"{slot_name}: {op.why_not or 'reported as ' + op.rule}")
        if not mine:
            return self.refuse(node, "; ".join(others))
        return self._finding(ctx, node, mine)

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: GeneratedPlan) -> str:
        return rewrite_operands(builder, plan)

    def _finding(self, ctx: Context, join: ir.Node, ops: list[Operand]) -> Finding:
        parts: list[str] = []
        baked: dict[str, dict[str, int]] = {}
        fixes: list[str] = []
        for op in ops:
            parts.append(self._describe(ctx, op))
            baked[op.value.name or str(op.slot)] = {str(a): op.dims0[a] for a in sorted(op.meeting.axes)}
            fixes.append(self._fix_text(op))
        generators = {op.generator.name for op in ops if op.generator is not None}
        named = next(op.generator for op in ops if op.generator is not None) if len(generators) == 1 and len(ops) == 1 \
            else join
        assert named is not None
        fixable = all(op.plan is not None for op in ops)
        return self.finding(
            named,
            severity="error",
            message="; ".join(parts),
            fixable=fixable,
            baked_value=baked if len(baked) > 1 else next(iter(baked.values())),
            breaks_at="; ".join(_breaks_at(op) for op in ops),
            fix="; ".join(fixes),
            details={
                "join": join.name,
                "operands": [
                    {"slot": op.slot, "value": op.value.name, "dims_s0": list(op.dims0), "meets": op.meeting.to_json(),
                     "generator": op.generator.name if op.generator is not None else None}
                    for op in ops
                ],
            },
            plan=GeneratedPlan(join.name or "", join.outputs[0].name or "", tuple(
                OperandPlan(op.slot, op.value.name or "", tuple(op.dims0),
                            tuple((a, p.name or "", pa) for a, (p, pa) in sorted(op.meeting.axes.items())),
                            op.plan or {})
                for op in ops)) if fixable else None,
        )

    def _describe(self, ctx: Context, op: Operand) -> str:
        axes = sorted(op.meeting.axes)
        partner = op.meeting.axes[axes[0]][0]
        p_axes = [op.meeting.axes[a][1] for a in axes if op.meeting.axes[a][0] is partner]
        own_axes = [a for a in axes if op.meeting.axes[a][0] is partner]
        p1 = known_dims(ctx, partner, ctx.p1)
        if op.generator is not None and op.plan is not None and op.plan.get("kind") == "constant_of_shape":
            what = f"ConstantOfShape {op.generator.name!r} (shape {op.plan['shape_s0']})"
        elif op.generator is not None:
            what = (f"{op.generator.op_type} {op.generator.name!r} with constant inputs, giving "
                    f"{op.value.name!r} ({fmt(op.dims0)}{_values_text(op)})")
        else:
            what = f"constant {op.value.name!r} ({fmt(op.dims0)}{_values_text(op)})"
        s1 = fmt(next(iter(ctx.s1.values())))
        verb = {"Concat": "concatenated with", "Where": "selected against"}.get(op.join.op_type, "combined with")
        size = "x".join(str(op.dims0[a]) for a in own_axes)
        return (f"{what} is {verb} {partner.name!r} in {op.join.op_type} {op.join.name!r}; its size {size} on axes "
                f"{own_axes} is the export-time size of that tensor on axes {p_axes}: at input {s1} that tensor is "
                f"{fmt(p1)} and the {op.join.op_type} fails")

    def _fix_text(self, op: Operand) -> str:
        axes = sorted(op.meeting.axes)
        partner = op.meeting.axes[axes[0]][0].name
        if op.plan is None:
            return f"not rewritten: {op.plan_why_not}; in the source, {self.source_hint(op)}"
        kind = op.plan["kind"]
        if kind == "constant_of_shape":
            return f"take entries {axes} of the ConstantOfShape size from Shape({partner})"
        if kind == "fill":
            return f"ConstantOfShape(Shape({partner}) on axes {axes}) filled with {op.plan['value']}"
        if kind == "levels":
            per_map = "; ".join(
                ("a fill of {:g} over".format(level["plan"]["value"]) if level["plan"]["kind"] == "fill"
                 else "a grid from Range over") + f" Shape({level['ref']})[{level['axes'][0]}, {level['axes'][1]}]"
                for level in op.plan["levels"])
            return (f"regenerate it per feature map ({per_map}), each flattened, then Concat along axis "
                    f"{op.plan['axis']} (matches the constant at the export shape)")
        if not op.plan["terms"]:
            return f"Expand its first slice to Shape({partner}) on axes {axes}"
        along = ", ".join(
            f"Range(0, Shape({op.meeting.axes[t['axis']][0].name})[{op.meeting.axes[t['axis']][1]}])"
            + (" divided by that size" if t["mode"] == "size" else " divided by that size - 1" if t["mode"] != "step"
               else "") for t in op.plan["terms"])
        return f"regenerate it with {along} (matches the constant at the export shape)"

    def source_hint(self, op: Operand) -> str:
        if op.array is not None and op.array.dtype == np.bool_:
            return ("make the mask at run time from the tensor's size (e.g. torch.ones(L, L, dtype=torch.bool)"
                    ".tril() with L = x.shape[-1], not int(x.shape[-1])), or pass is_causal / an attn_mask")
        return self.source_fix


def _breaks_at(op: Operand) -> str:
    by_partner: dict[str, list[tuple[int, int]]] = {}
    for a, (partner, pa) in sorted(op.meeting.axes.items()):
        by_partner.setdefault(partner.name or "?", []).append((pa, op.dims0[a]))
    return "; ".join(
        f"every input where {name!r} is not {'x'.join(str(d) for _, d in axes)} on axes {[pa for pa, _ in axes]}"
        for name, axes in by_partner.items())


def _values_text(op: Operand) -> str:
    plan = op.plan
    if plan is None:
        return ""
    if plan["kind"] == "fill":
        return f", all {plan['value']}"
    if plan["kind"] == "levels":
        sizes = " + ".join("x".join(str(d) for d in level["size_s0"]) for level in plan["levels"])
        return f", {len(plan['levels'])} flattened per-map grids concatenated: {sizes}"
    if plan["kind"] != "grid":
        return ""
    if not plan["terms"]:
        return ", one slice repeated along the export-size axes"
    axes_text = ", ".join(str(t["axis"]) for t in plan["terms"])
    base = np.unique(np.asarray(plan["base"]))
    per_component = [np.unique(np.asarray(t[k])).size > 1 for t in plan["terms"] for k in ("scale", "offset", "span")
                     if k in t]
    if base.size > 1 or any(per_component):
        return f", an index grid along axes {axes_text}"
    parts: list[str] = [f"{base[0]:g}"] if base[0] != 0 else []
    for t in plan["terms"]:
        j = t["axis"]
        if t["mode"] == "step":
            scale = float(np.asarray(t["scale"]).reshape(-1)[0])
            parts.append(f"i{j}" if scale == 1 else f"{scale:g}·i{j}")
            continue
        offset = float(np.asarray(t["offset"]).reshape(-1)[0])
        span = float(np.asarray(t["span"]).reshape(-1)[0])
        num = f"i{j}" if offset == 0 else f"(i{j} + {offset:g})"
        if span != 1:
            num += f"·{span:g}"
        parts.append(f"{num}/{f'n{j}' if t['mode'] == 'size' else f'(n{j}-1)'}")
    sizes = ", ".join(f"n{t['axis']} = {op.dims0[t['axis']]}" for t in plan["terms"])
    return f", values {' + '.join(parts)} with {sizes}"


class GeneratedTensor(_GeneratedBase):
    id = "DS007"
    title = ("Tensor made at the export size (zeros/ones/full/arange, a mask) joined with one that follows "
             "the input: a constant, ConstantOfShape or Range")
    source_fix = ("build it from the tensor it is joined with: torch.zeros_like(x) / x.new_zeros(x.shape), "
                  "torch.arange(x.shape[-1]), cls.expand(x.shape[0], -1, -1) (sizes as tensors, not ints)")


class CachedFeatureMapBuffer(_GeneratedBase):
    id = "DS008"
    title = "Buffer the size of a feature map (YOLO grid cached in a warm-up run) joined with the live feature map"
    source_fix = ("compute the grid in forward from the feature map's shape (torch.arange(x.shape[-1]), "
                  "meshgrid) instead of caching it on the module (self.grid) from a warm-up run")


# ------------------------------------------------------------------------------------ rewriting


def _size_entries(dims0: list[int], meets: Mapping[int, tuple[str, int]]) -> list[SizeEntry]:
    """A tensor's size: ``Shape`` of the partner on the axes that meet one, the export-time size elsewhere."""
    return [SizeEntry(ref=meets[a][0], axis=meets[a][1]) if a in meets else SizeEntry(const=d)
            for a, d in enumerate(dims0)]


def rewrite_operands(rewrite: RewriteBuilder, plan: GeneratedPlan) -> str:
    join = rewrite.producer_of(plan.join_output)
    if join is None:
        raise LookupError(f"the join {plan.join!r} is gone")
    done: list[str] = []
    for spec in plan.operands:
        recipe = spec.recipe
        slot = spec.slot
        old = join.inputs[slot]
        assert old is not None
        meets = {a: (ref, pa) for a, ref, pa in spec.meets}
        if recipe["kind"] == "constant_of_shape":
            done.append(_rewrite_cos(rewrite, recipe))
            continue
        prefix = f"{join.name}_in{slot}"
        builder = SizeBuilder(rewrite, prefix)
        dims0 = list(spec.dims_s0)
        target_entries = _size_entries(dims0, meets)
        dtype = np.dtype(recipe["dtype"])
        refs = sorted({r for r, _ in meets.values()})
        if recipe["kind"] == "fill":
            target = build_size_vector(builder, target_entries, None)
            new = builder.add("ConstantOfShape", [target], "fill", value=ir.tensor(np.array([recipe["value"]], dtype)))
            what = f"ConstantOfShape filled with {recipe['value']}"
        elif recipe["kind"] == "levels":
            new = _emit_levels(builder, recipe)
            refs = [level["ref"] for level in recipe["levels"]]
            what = f"{len(refs)} per-map grids concatenated"
        else:
            new = _emit_grid(builder, recipe, meets, len(dims0), target_entries)
            what = "Range" if recipe["terms"] else "Expand"
        builder.insert(join)
        origin = origin_of(old)
        join.replace_input_with(slot, new)
        if origin.kind == "constant":
            rewrite.remove_dead(origin.nodes, [old])
        done.append(f"{join.name}: input {old.name} ({fmt(tuple(dims0))}) -> {what} from Shape({', '.join(refs)})")
    return "; ".join(done)


def _emit_grid(builder: SizeBuilder, plan: Mapping[str, Any], meets: Mapping[int, tuple[str, int]], rank: int,
               target_entries: list[SizeEntry]) -> ir.Value:
    dtype = np.dtype(plan["dtype"])
    to = int(ir.DataType.from_numpy(dtype))
    out: ir.Value | None = None
    # the static part of the result's shape: constants broadcast into it, terms add their axis
    static = [1] * rank

    def constant(values: list, suffix: str) -> ir.Value:
        arr = np.asarray(values, dtype)
        static[:] = np.broadcast_shapes(tuple(static), (1,) * (rank - arr.ndim) + arr.shape)
        return builder.const(arr, suffix, dtype=dtype)

    if not (_all_zero(plan["base"]) and plan["terms"]):
        out = constant(plan["base"], "base")
    covered: set[int] = set()
    for term in plan["terms"]:
        j = int(term["axis"])
        ref = builder.builder.find_value(meets[j][0])
        if ref is None:
            raise LookupError(f"tensor {meets[j][0]!r} is gone")
        n = builder.dim(ref, meets[j][1])
        i = builder.add("Range", [builder.const(0, "start", scalar=True), n, builder.const(1, "delta", scalar=True)],
                        f"range{j}")
        if dtype != np.int64:
            i = builder.add("Cast", [i], f"cast{j}", to=to)
        if rank > 1:
            i = builder.add("Reshape", [i, builder.const([-1 if a == j else 1 for a in range(rank)], "onto")],
                            f"axis{j}")
        if term["mode"] == "step":
            v = i if _all_one(term["scale"]) else builder.add("Mul", [i, constant(term["scale"], "step")], f"step{j}")
        else:
            v = i if _all_zero(term["offset"]) else builder.add(
                "Add", [i, constant(term["offset"], "offset")], f"offset{j}")
            if not _all_one(term["span"]):
                v = builder.add("Mul", [v, constant(term["span"], "span")], f"span{j}")
            if term["mode"] == "size-1":
                # linspace(a, b, 1) is [a]: at size 1 divide by 1, not 0 (Max in float: integer
                # Max needs opset 12)
                m = builder.add("Sub", [n, builder.const(1, "one", scalar=True)], f"intervals{j}")
                m = builder.add("Cast", [m], f"size{j}", to=to)
                m = builder.add("Max", [m, builder.const(1, "one_f", scalar=True, dtype=dtype)], f"intervals{j}_min1")
            else:
                m = builder.add("Cast", [n], f"size{j}", to=to)
            v = builder.add("Div", [v, m], f"norm{j}")
        out = v if out is None else builder.add("Add", [out, v], f"sum{j}")
        covered.add(j)
    assert out is not None
    dims0 = [e.const if e.const is not None else 0 for e in target_entries]
    full = all(a in covered if a in meets else static[a] == dims0[a] for a in range(rank))
    if not full:
        target = build_size_vector(builder, target_entries, None)
        out = builder.add("Expand", [out, target], "expand")
    return out


def _emit_levels(builder: SizeBuilder, plan: Mapping[str, Any]) -> ir.Value:
    """Each level's grid (or fill) from Shape of its feature map, flattened onto the axis, then
    one Concat along it: the twin of ``_plan_levels``."""
    j = int(plan["axis"])
    dims0 = [int(d) for d in plan["shape_s0"]]
    dtype = np.dtype(plan["dtype"])
    pieces: list[ir.Value] = []
    for k, level in enumerate(plan["levels"]):
        ref_name = str(level["ref"])
        ha, wa = (int(a) for a in level["axes"])
        h0, w0 = (int(d) for d in level["size_s0"])
        meets = {j: (ref_name, ha), j + 1: (ref_name, wa)}
        grid_dims = [*dims0[:j], h0, w0, *dims0[j + 1:]]
        entries = _size_entries(grid_dims, meets)
        segment = level["plan"]
        if segment["kind"] == "fill":
            target = build_size_vector(builder, entries, None)
            grid = builder.add("ConstantOfShape", [target], f"level{k}_fill",
                               value=ir.tensor(np.array([segment["value"]], dtype)))
        else:
            grid = _emit_grid(builder, segment, meets, len(grid_dims), entries)
        # h·w computed from the shape (not -1): shape inference then knows each level's length
        ref = builder.builder.find_value(ref_name)
        if ref is None:
            raise LookupError(f"tensor {ref_name!r} is gone")
        hw = builder.add("Mul", [builder.dims(ref, [ha]), builder.dims(ref, [wa])], f"level{k}_hw")
        flat = [builder.const(dims0[:j], "lead")] if j else []
        flat.append(hw)
        if j + 1 < len(dims0):
            flat.append(builder.const(dims0[j + 1:], "trail"))
        pieces.append(builder.add("Reshape", [grid, builder.concat(flat, f"level{k}_shape")], f"level{k}_flat"))
    return pieces[0] if len(pieces) == 1 else builder.add("Concat", pieces, "levels", axis=j)


def _rewrite_cos(rewrite: RewriteBuilder, plan: Mapping[str, Any]) -> str:
    cos = rewrite.producer_of(plan["output"])
    if cos is None or cos.inputs[0] is None:
        return f"{plan['node']}: already rebuilt"
    old = cos.inputs[0]
    if old.name != plan["shape_value"]:
        return f"{cos.name}: size already rebuilt from Shape"
    builder = SizeBuilder(rewrite, f"{cos.name}_shape")
    new = build_size_vector(builder, [SizeEntry.from_dict(e) for e in plan["entries"]], old)
    builder.insert(cos)
    origin = origin_of(old)
    cos.replace_input_with(0, new)
    if origin.kind == "constant":
        rewrite.remove_dead(origin.nodes, [old])
    refs = sorted({e["ref"] for e in plan["entries"] if "ref" in e})
    return f"{cos.name}: shape {plan['shape_s0']} -> from Shape({', '.join(refs)})"


RULES: list[Rule] = [GeneratedTensor(), CachedFeatureMapBuffer()]

