"""Splits and slices whose bounds are Python ints taken from the export shape.

* DS006: ``torch.split(y, [h, w], dim=2)`` with ``h, w = int(...)`` exports a ``Split`` with
  constant sizes (an input from opset 13, an attribute before) that add up to the export-time
  size of a dynamic axis. At any other size they no longer add up and the ``Split`` fails. The
  typical case is CoordAttention: the H strip and the W strip are concatenated along axis 2, run
  through a 1x1 conv, and split back. The pieces must follow the tensors that were concatenated,
  so the fix traces the split input up (through ops that keep that axis's size, transposes
  included) to the ``Concat`` and slices at its boundaries, read from ``Shape`` of its inputs.
  Without such a concat, equal pieces (``torch.split(y, h // 2)``) become ``Shape / n`` when the
  axis follows one input axis alone (exact wherever it divides into n); anything else is
  reported with the source change.
* DS014: ``x[:, :, :h0]`` with a Python int exports a ``Slice`` with constant bounds. A bound is
  a hazard when it is an export-time size on a dynamic axis: the sliced axis's own size ("to the
  end": ``INT64_MAX``), a boundary of the ``Concat`` the sliced tensor is made of, or the size
  of a tensor it is computed from that follows the input (cropping a padded tensor back to the
  unpadded size: ``Shape(unpadded)``). When the bound is the axis's own size but a tensor it is
  computed from is smaller at some other size (the pad was zero at the export size), the slice
  is a crop and the bound comes from that tensor. Negative bounds count from the end and are
  not a hazard; a bound that is no tensor's export-time size is a fixed crop and is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import Context, fmt
from dynashape.analysis.probe import Probe
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.rules import trace
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder
from dynashape.rules.padding import pad_axes, pads_at
from dynashape.rules.shape_arith import INT64_MAX, ShapeArith

# marks a bound computed from shapes (it moves with the input): never matched, kept as it is
_COMPUTED = -(2**62)


def _int_list(arr: np.ndarray | None) -> list[int] | None:
    if arr is None or not np.issubdtype(np.asarray(arr).dtype, np.integer) or np.ndim(arr) > 1:
        return None  # bounds are a 1-D list of integers; anything else is not read
    return [int(v) for v in np.atleast_1d(arr)]


def _checked(starts: list[int], ends: list[int], axes: list[int], steps: list[int], attr_form: bool, rank: int
             ) -> tuple[list[int], list[int], list[int], list[int], bool] | str:
    if any(not 0 <= a < rank for a in axes) or len(set(axes)) != len(axes):
        return f"axes {axes} are not distinct axes of a rank-{rank} tensor (ONNX would reject this Slice)"
    if any(s == 0 for s in steps):
        return "a step is 0 (ONNX would reject this Slice)"
    return starts, ends, axes, steps, attr_form


def _concat_boundaries(ctx: Context, cat: ir.Node, axis: int) -> list[int] | None:
    """Export-time sizes of the concat's inputs along its axis."""
    sizes = []
    for inp in cat.inputs:
        d = trace.dim(ctx, inp, axis, ctx.p0)
        if d is None:
            return None
        sizes.append(d)
    return sizes


def _input_factors(ctx: Context, probe: Probe) -> set[float]:
    out: set[float] = set()
    for info in ctx.inputs:
        s0, sp = ctx.s0[info.name], probe.inputs.get(info.name)
        if sp is None:
            continue
        for axis in info.dynamic_axes:
            if s0[axis]:
                out.add(sp[axis] / s0[axis])
    return out


# ---------------------------------------------------------------------------------------- DS006


@dataclass(frozen=True)
class SplitPlan(RewritePlan):
    """DS006: Slices on ``axis`` whose bounds are running sums of ``Shape`` of the inputs of the
    ``concat`` (``kind`` "concat": ``groups`` of its inputs per piece, on ``concat_axis``), or
    ``Shape / parts`` (``kind`` "equal")."""

    kind: str  # "concat" | "equal"
    axis: int
    sizes_s0: tuple[int, ...]
    concat: str = ""
    concat_axis: int = 0
    groups: tuple[tuple[int, ...], ...] = ()
    refs: tuple[tuple[str, ...], ...] = ()
    parts: int = 0


class FrozenSplitSizes(Rule[SplitPlan]):
    id = "DS006"
    title = "Split sizes are constants adding up to an export-time size (torch.split(y, (h, w)) with ints)"
    ops = ("Split",)
    needs_export_shape = True

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        x = node.inputs[0]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        if x is None or x0 is None or x1 is None:
            return self.refuse(node, "input shape unknown")
        axis = trace.norm_axis(node.attributes.get_int("axis", 0), len(x0))
        attr_form = False
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            s0 = _int_list(ctx.value(node.inputs[1], ctx.p0))
            s1 = _int_list(ctx.value(node.inputs[1], ctx.p1))
        elif node.attributes.get("split") is not None:
            s0 = s1 = list(node.attributes.get_ints("split", []) or [])
            attr_form = True
        else:
            return self.refuse(node, "splits into equal parts (no sizes): follows the input")
        if s0 is None or s1 is None:
            return self.refuse(node, "split sizes cannot be computed from shapes alone")
        if s0 != s1:
            return self.refuse(node, "its sizes follow the input size")
        d0, d1 = x0[axis], x1[axis]
        if d0 is None or d1 is None or d0 == d1:
            return self.refuse(node, f"axis {axis} does not change with the input size: constant sizes are right")
        if sum(s0) != d0:
            return self.refuse(
                node, f"sizes {s0} do not add up to axis {axis} of its input ({fmt(x0)}) at the export shape")
        plan = self._concat_plan(ctx, x, axis, s0) or self._equal_plan(ctx, x, axis, s0)
        if plan and ctx.opset < 10:
            plan = None
        return self.finding(
            node,
            severity="error",
            message=(
                f"Split sizes {s0} on axis {axis} add up to the export-time size {d0} of that axis of its input "
                f"({fmt(x0)}){' (an attribute)' if attr_form else ''}: when its input is {fmt(x1)} the axis has "
                f"{d1} and the sizes no longer add up, so the Split fails"
                + (f"; the pieces are the tensors concatenated by {plan.concat!r}" if plan and plan.kind == "concat"
                   else "")
            ),
            fixable=bool(plan),
            baked_value=s0,
            breaks_at="every input size other than the export size",
            fix=self._describe(plan, s0) if plan else (
                "not rewritten: no tensor's size gives the pieces (the split input is no concat of tensors of "
                f"those sizes, and the pieces are not equal parts of one input axis); in the source pass sizes "
                f"that stay tensors, e.g. torch.split(y, [a.shape[{axis}], b.shape[{axis}]], dim={axis}) for the "
                "tensors that were concatenated, not int(...)"
            ),
            details={"axis": axis, "sizes_s0": s0},
            plan=plan,
        )

    @staticmethod
    def _concat_plan(ctx: Context, x: ir.Value, axis: int, sizes: list[int]) -> SplitPlan | None:
        found = trace.trace_concat(ctx, x, axis)
        if found is None:
            return None
        cat, cat_axis = found
        parts = _concat_boundaries(ctx, cat, cat_axis)
        if parts is None:
            return None
        groups: list[list[int]] = []
        j = 0
        for size in sizes:
            group: list[int] = []
            acc = 0
            while j < len(parts) and acc < size:
                acc += parts[j]
                group.append(j)
                j += 1
            if acc != size:
                return None
            groups.append(group)
        if j != len(parts):
            return None
        return SplitPlan("concat", axis, tuple(sizes), concat=cat.name or "", concat_axis=cat_axis,
                         groups=tuple(tuple(g) for g in groups),
                         refs=tuple(tuple(cat.inputs[i].name or "" for i in g) for g in groups))  # type: ignore[union-attr]

    @staticmethod
    def _equal_plan(ctx: Context, x: ir.Value, axis: int, sizes: list[int]) -> SplitPlan | None:
        if len(set(sizes)) != 1 or len(sizes) < 2:
            return None
        d0 = trace.dim(ctx, x, axis, ctx.p0)
        assert d0 is not None
        for probe in islice(trace.probes(ctx), 2):  # S1 and the probe that scales the axes apart
            dp = trace.dim(ctx, x, axis, probe)
            if dp is None or dp / d0 not in _input_factors(ctx, probe):
                return None  # the axis is a sum of sizes (H + W): equal parts would be a guess
        return SplitPlan("equal", axis, tuple(sizes), parts=len(sizes))

    @staticmethod
    def _describe(plan: SplitPlan, sizes: list[int]) -> str:
        if plan.kind == "concat":
            refs = ", ".join("+".join(g) for g in plan.refs)
            return (f"replace by Slices at the boundaries of the concatenated tensors: piece sizes from Shape of "
                    f"{refs} on axis {plan.concat_axis}")
        n = plan.parts
        return (f"replace by {n} Slices of Shape/{n} each (the pieces are equal parts of an axis that follows one "
                f"input axis; exact wherever that axis divides into {n}, where PyTorch would also give {n} pieces)")

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: SplitPlan) -> str:
        axis = plan.axis
        x = node.inputs[0]
        assert x is not None
        sa = ShapeArith(builder, f"{node.name}_bounds")
        outs = [o for o in node.outputs]
        ends: list[ir.Value] = []  # the end of every piece but the last
        if plan.kind == "concat":
            cat = builder.find_node(plan.concat)
            assert cat is not None
            running: ir.Value | None = None
            for group in plan.groups[:-1]:
                for j in group:
                    src = cat.inputs[j]
                    assert src is not None
                    d = sa.dim(src, plan.concat_axis)
                    running = d if running is None else sa.add(running, d)
                assert running is not None
                ends.append(running)
        else:
            piece = sa.div(sa.dim(x, axis), plan.parts)
            ends = [piece] + [sa.mul(piece, i) for i in range(2, len(outs))]
        zero = builder.const(f"{node.name}_start", [0])
        last = builder.const(f"{node.name}_to_end", [INT64_MAX])
        axes = builder.const(f"{node.name}_axis", [axis])
        sa.insert_before(node)
        slices = []
        for i in range(len(outs)):
            start = zero if i == 0 else ends[i - 1]
            end = last if i == len(outs) - 1 else ends[i]
            slices.append(builder.node("Slice", [x, start, end, axes], name=f"{node.name}_piece{i}"))
        builder.insert_before(node)
        for out, sl in zip(outs, slices):
            if out is not None:
                builder.replace_uses(out, sl.outputs[0])
        builder.remove(node)
        how = "concatenated tensors" if plan.kind == "concat" else f"Shape / {plan.parts}"
        return f"{node.name}: Split sizes {list(plan.sizes_s0)} -> Slices with bounds from {how}"


# ---------------------------------------------------------------------------------------- DS014


@dataclass(frozen=True)
class BoundEntry:
    """One bound of a Slice to rebuild: entry ``index`` of its ``which`` ("start"/"end") bounds, on
    ``axis``, ``value`` at the export shape. ``kind``: "to_end" (INT64_MAX), "concat" (the sum of
    ``Shape`` of the first ``upto`` inputs of ``concat`` on ``concat_axis``) or "ref"
    (``Shape(ref)[ref_axis]``; ``pad``: the Pad whose input ``ref`` is, for a crop after it)."""

    index: int
    which: str
    axis: int
    value: int
    kind: str
    concat: str = ""
    concat_axis: int = 0
    upto: int = 0
    refs: tuple[str, ...] = ()
    ref: str = ""
    ref_axis: int = 0
    pad: str = ""

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> BoundEntry:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
        return cls(**fields)


@dataclass(frozen=True)
class SlicePlan(RewritePlan):
    """DS014: the bounds to rebuild; the others keep their export-time values (``starts_s0``,
    ``ends_s0``: ``_COMPUTED`` where the graph computes them, kept as computed)."""

    entries: tuple[BoundEntry, ...]
    starts_s0: tuple[int, ...]
    ends_s0: tuple[int, ...]


class FrozenSliceBounds(Rule[SlicePlan]):
    id = "DS014"
    title = "Slice bounds are export-time sizes (x sliced to :h0 with a Python int h0)"
    ops = ("Slice",)
    needs_export_shape = True

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        x = node.inputs[0]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        if x is None or x0 is None or x1 is None:
            return self.refuse(node, "input shape unknown")
        bounds = self._bounds(ctx, node, len(x0))
        if isinstance(bounds, str):
            return self.refuse(node, bounds)
        starts, ends, axes, steps, attr_form = bounds
        entries: list[dict] = []
        for j, axis in enumerate(axes):
            d0, d1 = x0[axis], x1[axis]
            if d0 is not None and d0 == d1 and steps[j] == 1 and 2 <= ends[j] < d0:
                crop = self._crop_after_pad(ctx, x, axis, ends[j], starts[j])
                if crop:
                    entries.append({"index": j, "which": "end", "axis": axis, "value": ends[j], **crop})
                continue
            if d0 is None or d1 is None or d0 == d1 or steps[j] != 1:
                continue
            for which, v in (("start", starts[j]), ("end", ends[j])):
                if v < 2 or v > d0 or (which == "start" and v == d0):
                    continue  # negative (from the end), 0/1, past the end, or an empty slice
                plan = self._bound_plan(ctx, node, x, axis, v, which)
                if plan:
                    entries.append({"index": j, "which": which, "axis": axis, "value": v, **plan})
        if not entries:
            return self.refuse(node, "no bound is an export-time size of a dynamic axis (fixed crop or open ends)")
        bounds_plan = SlicePlan(tuple(BoundEntry.from_dict(e) for e in entries), tuple(starts), tuple(ends))
        if attr_form and any(e.kind != "to_end" for e in bounds_plan.entries):
            fixable, why = False, "opset < 10 keeps the bounds in attributes; re-export with opset >= 10"
        else:
            fixable, why = True, ""
        what = []
        for e in bounds_plan.entries:
            if e.kind == "to_end":
                what.append(f"{e.which} {e.value} on axis {e.axis} is the axis's own export-time size")
            elif e.kind == "concat":
                what.append(f"{e.which} {e.value} on axis {e.axis} is where {', '.join(e.refs)} end in "
                            f"the concat {e.concat!r}")
            elif e.pad:
                what.append(f"{e.which} {e.value} on axis {e.axis} is the export-time size of {e.ref!r}, "
                            f"the input of Pad {e.pad!r} it is computed from (the crop back to the unpadded size; "
                            "the axis only looks fixed because the reshapes in between hold export-time sizes)")
            else:
                what.append(f"{e.which} {e.value} on axis {e.axis} is the export-time size of {e.ref!r}")
        kept = self._kept_at(x1, starts, ends, axes, {e.axis for e in bounds_plan.entries})
        return self.finding(
            node,
            severity="error",
            message=(f"Slice of {fmt(x0)} with constant bounds: {'; '.join(what)}: when its input is {fmt(x1)} the "
                     f"slice still keeps {kept} (a Python int taken from the export shape)"),
            fixable=fixable,
            baked_value={f"{e.which}[{e.axis}]": e.value for e in bounds_plan.entries},
            breaks_at="every input size other than the export size",
            fix=("; ".join(self._describe(e) for e in bounds_plan.entries) if fixable else
                 f"not rewritten: {why}; in the source slice with open ends or bounds from another tensor's shape"),
            details={"axes": axes},
            plan=bounds_plan,
        )

    @staticmethod
    def _bounds(ctx: Context, node: ir.Node, rank: int
                ) -> tuple[list[int], list[int], list[int], list[int], bool] | str:
        if len(node.inputs) >= 3:
            vals = []
            for slot in (1, 2):
                v = node.inputs[slot]
                a0, a1 = _int_list(ctx.value(v, ctx.p0)), _int_list(ctx.value(v, ctx.p1))
                if a0 is None:
                    return "bounds cannot be computed from shapes alone"
                vals.append((a0, a1))
            (starts, st1), (ends, en1) = vals
            axes_v = node.inputs[3] if len(node.inputs) > 3 else None
            steps_v = node.inputs[4] if len(node.inputs) > 4 else None
            axes = _int_list(ctx.value(axes_v, ctx.p0)) if axes_v is not None else list(range(len(starts)))
            steps = _int_list(ctx.value(steps_v, ctx.p0)) if steps_v is not None else [1] * len(starts)
            if axes is None or steps is None:
                return "axes or steps unknown"
            if not len(starts) == len(ends) == len(axes) == len(steps) or (
                    st1 is not None and len(st1) != len(starts)) or (en1 is not None and len(en1) != len(ends)):
                return "starts, ends, axes and steps differ in length (ONNX would reject this Slice)"
            # a bound computed from shapes moves with the input: keep only the constant ones
            starts = [s if st1 is None or st1[i] == s else _COMPUTED for i, s in enumerate(starts)]
            ends = [e if en1 is None or en1[i] == e else _COMPUTED for i, e in enumerate(ends)]
            return _checked(starts, ends, [trace.norm_axis(a, rank) for a in axes], steps, False, rank)
        s_attr, e_attr = node.attributes.get("starts"), node.attributes.get("ends")
        if s_attr is None or e_attr is None:
            return "no bounds"
        starts, ends = list(s_attr.as_ints()), list(e_attr.as_ints())
        a_attr = node.attributes.get("axes")
        axes = list(a_attr.as_ints()) if a_attr is not None else list(range(len(starts)))
        if not len(starts) == len(ends) == len(axes):
            return "starts, ends and axes differ in length (ONNX would reject this Slice)"
        return _checked(starts, ends, [trace.norm_axis(a, rank) for a in axes], [1] * len(starts), True, rank)

    def _bound_plan(self, ctx: Context, node: ir.Node, x: ir.Value, axis: int, value: int, which: str) -> dict:
        d0 = trace.dim(ctx, x, axis, ctx.p0)
        found = trace.trace_concat(ctx, x, axis)
        if found is not None:
            cat, cat_axis = found
            parts = _concat_boundaries(ctx, cat, cat_axis)
            if parts is not None:
                acc = 0
                for q, size in enumerate(parts[:-1]):
                    acc += size
                    if acc == value:
                        return {"kind": "concat", "concat": cat.name, "concat_axis": cat_axis, "upto": q + 1,
                                "refs": [i.name for i in cat.inputs[: q + 1] if i is not None]}
        refs = self._refs(ctx, node, x, axis, value)
        if value == d0:
            for ref in refs:  # own size at export, but smaller than the sliced axis elsewhere: a crop
                if any(self._smaller(ctx, ref, x, axis, p) for p in trace.probes(ctx)):
                    return {"kind": "ref", "ref": ref.name, "ref_axis": axis}
            return {"kind": "to_end"} if which == "end" else {}
        for ref in refs:
            if all(not self._smaller(ctx, x, ref, axis, p) for p in trace.probes(ctx)):
                return {"kind": "ref", "ref": ref.name, "ref_axis": axis}
        return {}

    @staticmethod
    def _crop_after_pad(ctx: Context, x: ir.Value, axis: int, end: int, start: int) -> dict:
        """A crop ``x[:, :h0]`` whose input looks fixed on ``axis`` at S1 but is computed from a
        ``Pad`` that pads that axis after its end at the export shape, from ``end`` (the pad's
        input, which follows the input) to ``x``'s size: the crop back after window attention, with
        window-partition reshapes in between that hold export-time sizes (DS005's). The end is the
        pad input's size at every shape, whatever those reshapes become."""
        if start != 0:
            return {}
        r = trace.rank(ctx, x)
        size0 = trace.dim(ctx, x, axis, ctx.p0)
        for v in trace.ancestors(x):
            pad = v.producer()
            if pad is None or pad.op_type != "Pad" or trace.rank(ctx, v) != r:
                continue
            src = pad.inputs[0]
            if (src is None or trace.dim(ctx, v, axis, ctx.p0) != size0
                    or trace.dim(ctx, src, axis, ctx.p0) != end):
                continue
            src1 = trace.dim(ctx, src, axis, ctx.p1)
            pads0 = pads_at(ctx, pad, ctx.p0)
            padded = pad_axes(ctx, pad, r or 0)
            if src1 is None or src1 == end or pads0 is None or padded is None or axis not in padded:
                continue
            k = padded.index(axis)
            if pads0[k] == 0 and pads0[k + len(padded)] > 0:
                return {"kind": "ref", "ref": src.name, "ref_axis": axis, "pad": pad.name}
        return {}

    @staticmethod
    def _smaller(ctx: Context, a: ir.Value, b: ir.Value, axis: int, probe: Probe) -> bool:
        da, db = trace.dim(ctx, a, axis, probe), trace.dim(ctx, b, axis, probe)
        return da is not None and db is not None and da < db

    @staticmethod
    def _refs(ctx: Context, node: ir.Node, x: ir.Value, axis: int, value: int) -> list[ir.Value]:
        """Tensors whose size on ``axis`` is ``value`` at the export shape and changes with the
        input: those the slice is joined with (cropping a skip to the upsampled map), then those
        ``x`` is computed from (nearest first), then the graph inputs."""
        r = trace.rank(ctx, x)
        out: list[ir.Value] = []
        seen: set[int] = set()
        graph_inputs = [v for v in ctx.model.graph.inputs if v.const_value is None]
        for v in [*trace.slice_partners(node), *trace.ancestors(x), *graph_inputs]:
            if id(v) in seen or v is x:
                continue
            seen.add(id(v))
            if trace.rank(ctx, v) != r:
                continue
            v0, v1 = trace.dim(ctx, v, axis, ctx.p0), trace.dim(ctx, v, axis, ctx.p1)
            if v0 == value and v1 is not None and v1 != v0:
                out.append(v)
        return out

    @staticmethod
    def _kept_at(dims: tuple[int | None, ...], starts: list[int], ends: list[int], axes: list[int],
                 flagged: set[int]) -> str:
        parts = []
        for s, e, a in zip(starts, ends, axes):
            size = dims[a]
            if a not in flagged or size is None:
                continue
            lo = max(0, min(size, s if s >= 0 else size + s))
            hi = max(0, min(size, e if e >= 0 else size + e))
            parts.append(f"{lo}:{hi} of {size} on axis {a}")
        return ", ".join(parts)

    @staticmethod
    def _describe(entry: BoundEntry) -> str:
        if entry.kind == "to_end":
            return f"end on axis {entry.axis} -> INT64_MAX (to the end)"
        if entry.kind == "concat":
            return (f"{entry.which} on axis {entry.axis} -> sum of Shape({'), Shape('.join(entry.refs)}) "
                    f"on axis {entry.concat_axis}")
        return f"{entry.which} on axis {entry.axis} -> Shape({entry.ref})[{entry.ref_axis}]"

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: SlicePlan) -> str:
        entries = plan.entries
        if len(node.inputs) < 3:  # opset < 10: only "to the end" reaches here
            new_ends = list(node.attributes.get_ints("ends", []) or [])
            for e in entries:
                new_ends[e.index] = INT64_MAX
            node.attributes["ends"] = ir.AttrInt64s("ends", new_ends)
            return f"{node.name}: " + "; ".join(self._describe(e) for e in entries)
        sa = ShapeArith(builder, f"{node.name}_bounds")
        by_slot: dict[str, dict[int, ir.Value | int]] = {"start": {}, "end": {}}
        values: dict[str, ir.Value | None] = {}
        for e in entries:
            if e.kind == "to_end":
                by_slot[e.which][e.index] = INT64_MAX
            elif e.kind == "concat":
                cat = builder.find_node(e.concat)
                assert cat is not None
                running: ir.Value | None = None
                for inp in cat.inputs[: e.upto]:
                    assert inp is not None
                    d = sa.dim(inp, e.concat_axis)
                    running = d if running is None else sa.add(running, d)
                assert running is not None
                by_slot[e.which][e.index] = running
            else:
                ref = builder.find_value(e.ref)
                assert ref is not None
                by_slot[e.which][e.index] = sa.dim(ref, e.ref_axis)
        for which, slot, old in (("start", 1, plan.starts_s0), ("end", 2, plan.ends_s0)):
            changes = by_slot[which]
            if not changes:
                values[which] = None
                continue
            current = node.inputs[slot]
            assert current is not None
            parts: list[ir.Value] = []
            for i in range(len(old)):
                new = changes.get(i)
                if new is None:  # a bound left alone: the original constant, or its computed entry
                    parts.append(sa.const([old[i]], which) if old[i] != _COMPUTED else sa.pick(current, i))
                elif isinstance(new, int):
                    parts.append(sa.const([new], which))
                else:
                    parts.append(new)
            values[which] = sa.concat(parts, f"{which}s")
        sa.insert_before(node)
        for which, slot in (("start", 1), ("end", 2)):
            v = values[which]
            if v is not None:
                node.replace_input_with(slot, v)
        return f"{node.name}: " + "; ".join(self._describe(e) for e in entries)


RULES: list[Rule] = [FrozenSplitSizes(), FrozenSliceBounds()]
