"""DS013: "same" padding computed in Python at the export size.

``F.pad(x, (0, (s - w % s) % s, 0, (s - h % s) % s))`` with Python ints, or TensorFlow-style
"SAME" padding (``pad = max((ceil(h / s) - 1) * s + (k - 1) * d + 1 - h, 0)`` split into halves,
as in EfficientNet's ``Conv2dDynamicSamePadding`` / timm's ``pad_same`` with ``math.ceil`` on the
size) exports a ``Pad`` whose pads hold the export-time remainder: constants, or ``const - H``
when only ``ceil(h / s)`` was frozen. At another size the pad no longer rounds the axis up to a
multiple of the stride (or is negative: a crop), and every size after it is off by a row.

Signature: a ``Pad`` on a dynamic axis whose pads, at the export size H0, equal
``(s - H0 mod s) mod s`` (pad to a multiple of s) or ``max(k_eff - s + (s - H0 mod s) mod s, 0)``
(TF "SAME" for the following kernel k_eff = (k - 1) * d + 1), split at the end, at the start or
in halves, with a nonzero remainder ``(s - H0 mod s) mod s`` on at least one axis (a pad that is
the same at every multiple of s cannot be told from a fixed one). s is inferred from the graph,
never guessed: the stride of the first strided ``Conv``/pool after the pad (TF "SAME" when that
op adds no padding of its own on the axis), or for "pad to a multiple" the product of the strides
after it (the largest one that matches: the network's total stride on that path). The finding
states which. A symmetric pad of (k - 1) / 2 in front of an unpadded strided conv is what
``nn.ZeroPad2d`` + ``Conv2d(padding=0)`` exports, so it is not reported.

At a multiple of the stride, TF "SAME" is the fixed ``k - s`` split less-first: (0, 1) for a 3x3/2
conv, exactly what ``nn.ZeroPad2d(correct_pad(k))`` exports (HF EfficientNet, right at every size).
Constant pads there are rebuilt only when the graph shows that it computes its pads in Python:
another Pad, constant and all zero, before an unpadded conv/pool (HF MobileNetV2's
``apply_tf_padding`` pads before every conv, 1x1 ones included; nobody writes a Pad that adds
nothing). Without that witness they are refused, saying how to tell the two apart. Pads equal to
the export-time ones at S1 but not at another probe are computed from ``Shape``: checked like any
computed pad (right at other sizes, or rebuilt).

The fix rebuilds the pads from ``Shape``: ``(s - H mod s) mod s`` (plus ``k_eff - s`` for "SAME"),
split the way the export-time pads were.

Window partitioning (Swin's ``maybe_pad``: ``pad_right = (window - width % window) % window``,
then ``view(b, h // window, window, w // window, window, c)``) has no stride after the pad: the
multiple is the window, read from the first ``Reshape`` after the pad (through transposes, the
``Slice``/``Concat`` of a cyclic shift and same-size ops) that splits the padded axis into
``(count, window)``: the inner factor, which must stay the same at S1 where that reshape's output
is known. Only a pad taken at the export size (nonzero) counts: a zero pad cannot be told from no
pad, and the crop back after attention is then a Python branch absent from the graph (DS009).

Split with DS009 (``rules/reports.py``): DS013 owns a ``Pad`` that a later stride or window
partition needs and that it can rebuild exactly (they say which multiple the pad rounds up to);
DS009 keeps the ``If`` on a size and the pads with nothing after them to say which multiple, and
the pads computed from ``Shape`` (right at every size; the Python branches around them are not),
which it only reports. DS009 asks :func:`owns_pad` before reporting a ``Pad``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import JOINS, SAME_SIZE_UNARY, Context, fmt, origin_of
from dynashape.analysis.probe import Probe
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.rules import trace
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder
from dynashape.rules.shape_arith import ShapeArith

_STRIDED = ("Conv", "AveragePool", "MaxPool", "LpPool")
# ops between a window pad and the window-partition reshape that keep the padded axis (Slice and
# Concat: a cyclic shift, torch.roll, cuts the axis in two and joins the pieces back)
_TO_WINDOWS = SAME_SIZE_UNARY | JOINS | {"Slice", "Transpose", "LayerNormalization"}
_MAX_MULTIPLE = 128
RIGHT_FOR_STRIDE = "its pads are computed from the input size and are right at other sizes"
_MAX_VISITS = 400
_STYLES = ("end", "floor", "ceil", "begin")  # where the pad goes: all after, halves (TF: less first), all before


@dataclass
class FirstStride:
    """The first strided conv/pool after the pad on one axis."""

    node: str
    op: str
    kernel: int  # effective: (k - 1) * d + 1
    stride: int
    own_pad: int  # the op's own padding on that axis (begin + end)


@dataclass
class AxisPad:
    axis: int
    kind: str  # "same" | "multiple"
    multiple: int
    kernel: int = 0  # effective kernel, for "same"
    evidence: bool = False
    styles: set[str] = field(default_factory=set)
    consumer: str = ""
    window: bool = False  # the multiple is the window of a window-partition reshape, not a stride
    witness: str = ""  # the no-op Pad that shows this graph computes its pads in Python (see _python_pad_witness)


@dataclass
class PadPlan:
    axes: list[int]  # the pad's axes, in the order of its pads
    pads0: list[int]
    rebuilt: dict[int, AxisPad]


def _remainder(size: int, m: int) -> int:
    return (m - size % m) % m


def _total(kind: str, size: int, m: int, kernel: int) -> int:
    if kind == "same":
        return max(kernel - m + _remainder(size, m), 0)
    return _remainder(size, m)


def _split(total: int, style: str) -> tuple[int, int]:
    begin = {"end": 0, "begin": total, "floor": total // 2, "ceil": total - total // 2}[style]
    return begin, total - begin


def _styles(begin: int, end: int) -> set[str]:
    return {s for s in _STYLES if _split(begin + end, s) == (begin, end)}


def _ints_attr(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


def _strides_after(ctx: Context, value: ir.Value, axis: int) -> tuple[FirstStride | None, set[int]]:
    """The first strided conv/pool reached from ``value`` through ops that keep ``axis``'s size,
    and the cumulative strides (products along paths) of the strided ops after it."""
    first: FirstStride | None = None
    multiples: set[int] = set()
    frontier: list[tuple[ir.Value, int]] = [(value, 1)]
    seen: set[tuple[int, int]] = set()
    visits = 0
    while frontier and visits < _MAX_VISITS:
        v, m = frontier.pop(0)
        for use in v.uses():
            node = use.node
            visits += 1
            key = (id(node), m)
            if key in seen:
                continue
            seen.add(key)
            out = node.outputs[0] if node.outputs else None
            if out is None:
                continue
            if node.op_type in _STRIDED and use.idx == 0:
                kernel = _ints_attr(node, "kernel_shape", [])
                if not kernel and node.op_type == "Conv":
                    w = node.inputs[1]
                    wd = ctx.dims(w, ctx.p0)
                    kernel = [int(d or 1) for d in wd[2:]] if wd else []
                sp = len(kernel)
                if sp == 0 or axis < 2 or axis - 2 >= sp:
                    continue
                i = axis - 2
                s = _ints_attr(node, "strides", [1] * sp)[i]
                d = _ints_attr(node, "dilations", [1] * sp)[i]
                pads = _ints_attr(node, "pads", [0] * 2 * sp)
                if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                    continue
                if s > 1:
                    if m == 1 and first is None:
                        first = FirstStride(node.name or "", node.op_type, (kernel[i] - 1) * d + 1, s,
                                            pads[i] + pads[i + sp])
                    if m * s <= _MAX_MULTIPLE:
                        multiples.add(m * s)
                        frontier.append((out, m * s))
                elif _keeps(ctx, v, out, axis):
                    frontier.append((out, m))
            elif (node.op_type in SAME_SIZE_UNARY or node.op_type in JOINS) and _keeps(ctx, v, out, axis):
                frontier.append((out, m))
    return first, multiples


@dataclass
class Window:
    """A window-partition ``Reshape`` after a pad: it splits the padded axis into (count, size)."""

    size: int
    reshape: str


def window_after(ctx: Context, value: ir.Value, axis: int) -> Window | None:
    """The window of the first ``Reshape`` reached from ``value`` (through transposes, which move
    ``axis``, the slices and concat of a cyclic shift, and same-size ops) that splits ``axis``,
    whole, into two factors ``(count, window)``. The window is the inner factor: a row-major view
    into windows keeps a window's rows contiguous. Where the reshape's output is known at S1 the
    window must not move (the count does), else the split is no window partition."""
    size0 = trace.dim(ctx, value, axis, ctx.p0)
    if size0 is None:
        return None
    frontier: list[tuple[ir.Value, int]] = [(value, axis)]
    seen: set[tuple[int, int]] = set()
    visits = 0
    while frontier and visits < _MAX_VISITS:
        v, a = frontier.pop(0)
        for use in v.uses():
            node = use.node
            visits += 1
            out = node.outputs[0] if node.outputs else None
            if out is None or (id(node), a) in seen:
                continue
            seen.add((id(node), a))
            if node.op_type == "Reshape":
                if use.idx == 0 and trace.dim(ctx, v, a, ctx.p0) == size0:
                    window = _split_window(ctx, v, a, out)
                    if window is not None:
                        return Window(window, node.name or "")
                continue
            if node.op_type == "Transpose":
                attr = node.attributes.get("perm")
                r = trace.rank(ctx, v)
                perm = list(attr.as_ints()) if attr is not None else list(reversed(range(r or 0)))
                if a in perm:
                    frontier.append((out, perm.index(a)))
            elif node.op_type in _TO_WINDOWS and trace.rank(ctx, out) == trace.rank(ctx, v):
                frontier.append((out, a))
    return None


def _split_window(ctx: Context, x: ir.Value, axis: int, out: ir.Value) -> int | None:
    """The inner factor when the reshape ``x -> out`` splits ``axis`` into two factors > 1."""
    din, dout = ctx.dims(x, ctx.p0), ctx.dims(out, ctx.p0)
    if din is None or dout is None or any(d is None for d in (*din, *dout)):
        return None
    before = int(np.prod([d or 0 for d in din[:axis]]))
    acc = 1
    for k in range(len(dout) - 1):
        if acc == before:
            count, window = dout[k] or 0, dout[k + 1] or 0
            if count > 1 and window > 1 and count * window == din[axis]:
                out1 = ctx.dims(out, ctx.p1)
                if out1 is not None and len(out1) == len(dout) and out1[k + 1] is not None and out1[k + 1] != window:
                    return None
                return window
        acc *= dout[k] or 0
        if acc > before:
            return None
    return None


def _keeps(ctx: Context, a: ir.Value, b: ir.Value, axis: int) -> bool:
    if trace.rank(ctx, a) != trace.rank(ctx, b):
        return False
    return trace.same_axis(ctx, a, axis, b, axis, thorough=False)


def pads_at(ctx: Context, node: ir.Node, probe: Probe) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = ctx.value(node.inputs[1], probe)
        if arr is None or not np.issubdtype(np.asarray(arr).dtype, np.integer):
            return None
        return [int(v) for v in np.atleast_1d(arr)]
    attr = node.attributes.get("pads")
    return list(attr.as_ints()) if attr is not None else None


def pad_axes(ctx: Context, node: ir.Node, rank: int) -> list[int] | None:
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        arr = ctx.value(node.inputs[3], ctx.p0)
        if arr is None:
            return None
        return [trace.norm_axis(int(a), rank) for a in np.atleast_1d(arr)]
    return list(range(rank))


def same_padding_plan(ctx: Context, node: ir.Node) -> PadPlan | str:
    """The rebuild plan of a Pad holding a stride's "same" padding at the export size, or why not."""
    x = node.inputs[0]
    x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
    if x is None or x0 is None or x1 is None or any(d is None for d in x0):
        return "input shape unknown"
    if len(x1) != len(x0):
        # the graph fails at the second shape before this Pad (an earlier frozen pad, say) and the
        # traced dims fell back to an ancestor of another rank: nothing to compare against there
        return (f"input shape at the second shape unknown (rank {len(x1)} where the export shape has "
                f"{len(x0)}: the graph fails there before this Pad)")
    pads0 = pads_at(ctx, node, ctx.p0)
    if pads0 is None:
        return "pads unknown at the export shape (computed from data?)"
    axes = pad_axes(ctx, node, len(x0))
    if axes is None or len(pads0) != 2 * len(axes):
        return "pads do not match the input rank"
    n = len(axes)
    pads1 = pads_at(ctx, node, ctx.p1)
    constant = pads1 is None or pads1 == pads0
    candidates: dict[int, list[AxisPad]] = {}
    windows: dict[int, Window] = {}  # window partitions after a pad not taken, or not to the window
    witnesses: str | None = None  # looked for once, on the first axis that needs it
    varies = False  # the same at S1 (same remainders) but not at another probe: computed from Shape
    for j, axis in enumerate(axes):
        size0, size1 = x0[axis], x1[axis]
        if size0 is None or size1 is None or size0 == size1:
            continue
        begin, end = pads0[j], pads0[j + n]
        total = begin + end
        if begin < 0 or end < 0:
            continue
        # pads computed from the size (only part of it frozen, e.g. ceil(h / s)) cannot be a fixed
        # pad: matching the formula at the export size is evidence enough
        moving = pads1 is not None and (pads1[j], pads1[j + n]) != (begin, end)
        first, multiples = _strides_after(ctx, node.outputs[0], axis)
        options: list[AxisPad] = []
        if (first is not None and first.own_pad == 0 and first.kernel > first.stride
                and total == _total("same", size0, first.stride, first.kernel)):
            shown = moving or _remainder(size0, first.stride) != 0
            witness = ""
            if not shown and constant and begin != end and begin == total // 2:
                # TF 'SAME' at a multiple of the stride is (k - s) split less-first, which is also
                # what a fixed nn.ZeroPad2d((k - s) // 2, ...) exports: pads that change at another
                # probe are computed from Shape (checked below); constant ones, only another Pad of
                # this graph can tell (see _python_pad_witness)
                if _varies(ctx, node, pads0):
                    varies = shown = True
                else:
                    witness = _python_pad_witness(ctx, node) if witnesses is None else witnesses
                    witnesses = witness
                    shown = bool(witness)
            options.append(AxisPad(axis, "same", first.stride, first.kernel, evidence=shown,
                                   styles=_styles(begin, end), consumer=f"{first.op} {first.node!r}",
                                   witness=witness))
        for m in sorted(multiples, reverse=True):
            if total == _remainder(size0, m):
                via = (f"{first.op} {first.node!r}" if first is not None and m == first.stride
                       else f"the strides after it (x{m} in total)")
                options.append(AxisPad(axis, "multiple", m, evidence=moving or total > 0, styles=_styles(begin, end),
                                       consumer=via))
                break
        window = window_after(ctx, node.outputs[0], axis) if not options else None
        if window is not None and total == _remainder(size0, window.size):
            # a zero pad is rebuilt only beside a pad taken on another axis (same window)
            options.append(AxisPad(axis, "multiple", window.size, evidence=total > 0, styles=_styles(begin, end),
                                   consumer=f"the window partition Reshape {window.reshape!r}", window=True))
        if window is not None and not (total > 0 and total == _remainder(size0, window.size)):
            windows[axis] = window
        if options:
            candidates[axis] = options
    evidential = {a: next(o for o in opts if o.evidence) for a, opts in candidates.items()
                  if any(o.evidence for o in opts)}
    if not evidential:
        if windows and all(pads0[axes.index(a)] + pads0[axes.index(a) + n] == 0 for a in windows):
            axis, window = next(iter(windows.items()))
            pads_v = node.inputs[1] if len(node.inputs) > 1 else None
            computed = pads_v is not None and origin_of(pads_v).kind == "shape"
            return (f"pads {pads0} are zero at the export shape: axis {axis} ({x0[axis]}) is already a multiple of "
                    f"the window {window.size} of the window partition Reshape {window.reshape!r}"
                    + (" (they are computed from the input size: right at every size)" if computed else
                       ", and a pad not taken cannot be told from no pad")
                    + "; if the source crops back only when it padded, that crop is a Python branch absent from "
                    "this graph (DS009)")
        if windows:
            axis, window = next((a, w) for a, w in windows.items() if pads0[axes.index(a)] + pads0[axes.index(a) + n])
            j = axes.index(axis)
            size0 = x0[axis] or 0
            return (f"pads {pads0} add {pads0[j] + pads0[j + n]} on axis {axis} (size {size0}) before the window "
                    f"partition Reshape {window.reshape!r} (windows of {window.size}), not the "
                    f"({window.size} - {size0} mod {window.size}) mod {window.size} = "
                    f"{_remainder(size0, window.size)} that rounds it up to a multiple of the window: not padding "
                    "computed from the size (nothing to rebuild exactly)")
        if witnesses is not None:  # an asymmetric pad equal to TF 'SAME' at a multiple of the stride
            consumer = next(o.consumer for opts in candidates.values() for o in opts if o.kind == "same")
            return (f"pads {pads0} equal TF 'SAME' padding for {consumer} at the export shape ({fmt(x0)}), but "
                    "the axis is a multiple of the stride there, where 'SAME' is the fixed (k - s) that an "
                    "nn.ZeroPad2d before an unpadded conv exports too (EfficientNet's correct_pad), and no Pad "
                    "of this graph shows padding computed in Python (a Pad adding nothing before a conv): "
                    "left alone; export at a size that is not a multiple of the stride, or check the PyTorch "
                    "module with --torch, to tell them apart")
        return (f"pads {pads0} are not the remainder that rounds a dynamic axis of the input ({fmt(x0)}) up to "
                "the stride of a strided conv/pool or the window of a window-partition Reshape after it "
                "(nothing to rebuild exactly)")
    styles = set(_STYLES)
    for evidence in evidential.values():
        styles &= evidence.styles
    if not styles:
        return f"pads {pads0} are split differently on each axis"
    kinds = {p.kind for p in evidential.values()}
    order = ("floor", "ceil", "end", "begin") if kinds == {"same"} else ("end", "floor", "ceil", "begin")
    style = next(s for s in order if s in styles)
    symmetric = all(pads0[j] == pads0[j + n] for j in range(n))
    if constant and symmetric and all(
        p.kind == "same" and _total("same", x0[p.axis] or 0, p.multiple, p.kernel) == p.kernel - 1
        for p in evidential.values()
    ):
        return (f"symmetric pads {pads0} of (kernel - 1) / 2 before an unpadded strided conv: ordinary fixed "
                "padding (nn.ZeroPad2d + Conv2d(padding=0))")
    rebuilt: dict[int, AxisPad] = {}
    for axis, opts in candidates.items():
        pick: AxisPad | None = evidential.get(axis) or next(
            (o for o in opts if (o.kind, o.multiple) in {(p.kind, p.multiple) for p in evidential.values()}), None)
        if pick is not None and style in pick.styles:
            pick.styles = {style}
            rebuilt[axis] = pick
    if not constant or varies:
        assert pads1 is not None
        # computed from shapes: every axis it does not rebuild must at least be constant
        for j, axis in enumerate(axes):
            if axis not in rebuilt and (pads1[j], pads1[j + n]) != (pads0[j], pads0[j + n]):
                return f"pads change with the input size on axis {axis}, and not as same padding"
        if _follows(ctx, node, axes, rebuilt):
            windows_after = sorted({p.consumer for p in rebuilt.values() if p.window})
            if windows_after:
                return (f"its pads are computed from the input size (up to a multiple of the window of "
                        f"{', '.join(windows_after)}) and are right at other sizes")
            return RIGHT_FOR_STRIDE
    return PadPlan(axes, pads0, rebuilt)


def _expected(plan: PadPlan, dims: tuple[int | None, ...]) -> list[int] | None:
    n = len(plan.axes)
    out = list(plan.pads0)
    for j, axis in enumerate(plan.axes):
        p = plan.rebuilt.get(axis)
        if p is None:
            continue
        size = dims[axis]
        if size is None:
            return None
        out[j], out[j + n] = _split(_total(p.kind, size, p.multiple, p.kernel), next(iter(p.styles)))
    return out


def _follows(ctx: Context, node: ir.Node, axes: list[int], rebuilt: dict[int, AxisPad]) -> bool:
    plan = PadPlan(axes, pads_at(ctx, node, ctx.p0) or [], rebuilt)
    checked = 0
    for probe in trace.probes(ctx):  # S1 first: a mismatch there spares the other probes
        pads = pads_at(ctx, node, probe)
        dims = ctx.dims(node.inputs[0], probe)
        if pads is None or dims is None:
            continue
        if pads != _expected(plan, dims):
            return False
        checked += 1
    return checked > 0


def _varies(ctx: Context, node: ir.Node, pads0: list[int]) -> bool:
    """Do the pads differ from the export shape's at a probe after S1 (odd sizes among them)?"""
    for probe in list(trace.probes(ctx))[1:]:
        pads = pads_at(ctx, node, probe)
        if pads is not None and pads != pads0:
            return True
    return False


def _python_pad_witness(ctx: Context, node: ir.Node) -> str:
    """A Pad of this graph, other than ``node``, that shows its pads are computed in Python, as HF
    MobileNetV2's ``apply_tf_padding`` computes TF 'SAME' before every conv: constant pads, all
    zero at the export shape, on a tensor with a dynamic axis, consumed by a conv/pool that adds
    no padding of its own. Nobody writes a Pad that adds nothing: a function of the size (or the
    kernel) that came out 0 put it there. Its name, or "" when there is none."""
    for other in ctx.nodes("Pad"):
        if other is node:
            continue
        pads0, pads1 = pads_at(ctx, other, ctx.p0), pads_at(ctx, other, ctx.p1)
        if pads0 is None or pads0 != pads1 or any(pads0):
            continue
        x0, x1 = ctx.dims(other.inputs[0], ctx.p0), ctx.dims(other.inputs[0], ctx.p1)
        if x0 is None or x1 is None or len(x0) != len(x1) or x0 == x1:
            continue
        for use in other.outputs[0].uses():
            consumer = use.node
            if (consumer.op_type in _STRIDED and use.idx == 0 and not any(_ints_attr(consumer, "pads", []))
                    and consumer.attributes.get_string("auto_pad", "NOTSET") in ("NOTSET", "VALID")):
                return other.name or "a Pad"
    return ""


def owns_pad(ctx: Context, node: ir.Node) -> bool:
    """Does DS013 answer for this Pad, so DS009 must not report it? It does when it reports it, and
    when its pads are computed from the input size and right for the stride after them (DS013's own
    rewrite, or an exporter that traced them): that is same padding, not a window partition."""
    plan = same_padding_plan(ctx, node)
    return isinstance(plan, PadPlan) or plan == RIGHT_FOR_STRIDE


@dataclass(frozen=True)
class AxisRebuild:
    """One axis of a rebuilt pad: the total ``(m - H mod m) mod m`` (plus ``kernel - m`` for "same"),
    split by ``style``."""

    axis: int
    kind: str  # "same" | "multiple"
    multiple: int
    kernel: int
    style: str  # "end" | "begin" | "floor" | "ceil"


@dataclass(frozen=True)
class SamePaddingPlan(RewritePlan):
    """DS013: the pads rebuilt from ``Shape`` of the input on the ``rebuilt`` axes; the other entries
    keep their export-time ``pads_s0``."""

    axes: tuple[int, ...]  # the pad's axes, in the order of its pads
    pads_s0: tuple[int, ...]
    rebuilt: tuple[AxisRebuild, ...]


class ComputedSamePadding(Rule[SamePaddingPlan]):
    id = "DS013"
    title = "Same padding computed in Python: Pad holding (s - H mod s) mod s of the export size before a stride"
    ops = ("Pad",)
    needs_export_shape = True

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        plan = same_padding_plan(ctx, node)
        if isinstance(plan, str):
            return self.refuse(node, plan)
        x = node.inputs[0]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        assert x0 is not None and x1 is not None
        pads1 = pads_at(ctx, node, ctx.p1)
        want1 = _expected(plan, x1)
        n = len(plan.axes)
        parts = []
        for j, axis in enumerate(plan.axes):
            p = plan.rebuilt.get(axis)
            if p is None:
                continue
            size0 = x0[axis] or 0
            formula = f"({p.multiple} - {size0} mod {p.multiple}) mod {p.multiple}"
            if p.kind == "same":
                formula = f"max({p.kernel} - {p.multiple} + {formula}, 0)"
                what = f"TF 'SAME' padding for {p.consumer} (kernel {p.kernel}, stride {p.multiple})"
            else:
                what = f"rounding up to a multiple of {p.multiple} for {p.consumer}"
            parts.append(f"axis {axis}: {plan.pads0[j]} + {plan.pads0[j + n]} = {formula}, {what}")
        style = next(iter(next(iter(plan.rebuilt.values())).styles))
        split = {"end": "all after", "begin": "all before", "floor": "half before (rounded down), the rest after",
                 "ceil": "half before (rounded up), the rest after"}[style]
        at_s1 = (f"at input {fmt(x1)} the pads are {pads1} where same padding needs {want1}" if pads1 is not None
                 else f"at input {fmt(x1)} same padding needs {want1}")
        attr_form = not (len(node.inputs) > 1 and node.inputs[1] is not None)
        witness = next((p.witness for p in plan.rebuilt.values() if p.witness), "")
        why = (f"; the input is a multiple of the stride here, where these pads also equal a fixed asymmetric pad, "
               f"but Pad {witness!r} adds nothing before a conv: this graph computes its pads in Python (TF "
               "'SAME' as HF MobileNetV2's apply_tf_padding)" if witness else "")
        return self.finding(
            node,
            severity="error",
            message=(f"Pad pads {plan.pads0} hold the export-time remainder of its input ({fmt(x0)}): "
                     f"{'; '.join(parts)} (padding computed in Python from the export size){why}; {at_s1}"),
            fixable=not attr_form,
            baked_value={str(a): [plan.pads0[plan.axes.index(a)], plan.pads0[plan.axes.index(a) + n]]
                         for a in plan.rebuilt},
            breaks_at="every size whose remainder differs from the export size's (e.g. odd vs even)",
            fix=(f"build the pads from Shape of the input: the formula above with H read from the tensor, split "
                 f"{split} (assumes the multiple is the stride named above)"
                 if not attr_form else
                 "not rewritten: opset < 11 keeps pads in an attribute; re-export with opset >= 11, or in the "
                 "source compute the padding from x.shape with tensor ops"),
            details={"axes": plan.axes, "pads_s0": plan.pads0,
                     "rebuilt": {str(a): {"kind": p.kind, "multiple": p.multiple, "kernel": p.kernel,
                                          "style": next(iter(p.styles)), "consumer": p.consumer}
                                 for a, p in plan.rebuilt.items()}},
            plan=SamePaddingPlan(tuple(plan.axes), tuple(plan.pads0), tuple(
                AxisRebuild(a, p.kind, p.multiple, p.kernel, next(iter(p.styles))) for a, p in plan.rebuilt.items())),
        )

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: SamePaddingPlan) -> str:
        axes, pads0 = plan.axes, plan.pads_s0
        rebuilt = {r.axis: r for r in plan.rebuilt}
        x = node.inputs[0]
        assert x is not None
        sa = ShapeArith(builder, f"{node.name}_pads")
        n = len(axes)
        begins: list[ir.Value] = []
        ends: list[ir.Value] = []
        for j, axis in enumerate(axes):
            spec = rebuilt.get(axis)
            if spec is None:
                begins.append(sa.const([pads0[j]], "begin"))
                ends.append(sa.const([pads0[j + n]], "end"))
                continue
            m = spec.multiple
            total = sa.mod(sa.sub(m, sa.mod(sa.dim(x, axis), m)), m)
            if spec.kind == "same":
                total = sa.add(total, spec.kernel - m)
                if spec.kernel < m:
                    total = sa.max(total, 0)
            style = spec.style
            if style == "end":
                begin = sa.const([0], "zero")
            elif style == "begin":
                begin = total
            elif style == "floor":
                begin = sa.div(total, 2)
            else:
                begin = sa.sub(total, sa.div(total, 2))
            begins.append(begin)
            ends.append(sa.sub(total, begin) if style != "end" else total)
        pads = sa.concat(begins + ends, "pads")
        sa.insert_before(node)
        node.replace_input_with(1, pads)
        return f"{node.name}: pads {list(pads0)} -> built from Shape({x.name}) on axes {sorted(rebuilt)}"


RULES: list[Rule] = [ComputedSamePadding()]
