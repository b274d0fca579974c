"""Pooling with a window taken from the export-time size.

* DS001: the kernel is the whole axis. ``h = torch.tensor(x.shape[2]).item(); F.avg_pool2d(q,
  [h, 1])`` exports an ``AveragePool`` with ``kernel_shape=[h0, 1]``. At the export shape it
  reduces the whole axis to 1; at a larger size it returns H-h0+1 rows, at a smaller one the
  kernel no longer fits. The exact rewrite is a reduction over the pooled axes
  (``ReduceMean``/``ReduceMax``, keepdims), or the global pool when every spatial axis is pooled
  whole.
* DS004: the kernel is the axis divided into k > 1 bins (``adaptive_avg_pool2d(x, k)`` in PSP/PPM
  heads as the dynamo exporter writes it, or the export workaround ``F.avg_pool2d(x, h // k)``
  with Python ints): ``kernel == stride`` and ``kernel * k == export size``. The grid is k x k
  only at the export size. Such a window is also what a fixed ``nn.AvgPool2d(kernel)`` looks
  like, so the rule fires only with a sign of adaptive pooling: sibling pools of the same tensor
  with other bin counts (or a global pool: bin 1), or the pooled map flattened into a fixed-size
  ``Gemm``/``MatMul``; a resize of the pooled map back to a size counts alone only when the
  windows are at least twice the bin count (a fixed context branch is resized back too). A
  flatten whose size the dynamo exporter computed from the input (``C * (H // k) * (W // k)``)
  is rewritten with the pool. The rewrite ``Reshape[N, C, k, H/k, k, W/k]``
  (from ``Shape``) + ``ReduceMean`` over the H/k and W/k axes keeps the k x k grid at every size
  divisible by k; PyTorch's adaptive pool uses uneven bins at other sizes, which this rewrite does
  not reproduce (the fixed model rejects those sizes, and the lattice says so). A node with a
  binned axis belongs to DS004 even when another axis is pooled whole (``adaptive_avg_pool2d(x,
  (k, 1))``); DS001 leaves it alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import SAME_SIZE_UNARY, Context, fmt
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder
from dynashape.rules.shape_arith import ShapeArith

_REDUCE = {"AveragePool": "ReduceMean", "MaxPool": "ReduceMax"}
_GLOBAL = {"AveragePool": "GlobalAveragePool", "MaxPool": "GlobalMaxPool"}


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


@dataclass(frozen=True)
class PoolPlan(RewritePlan):
    """DS001: reduce ``pooled_axes`` (keepdims), or the global pool when they are every spatial axis."""

    pooled_axes: tuple[int, ...]
    global_pool: bool
    kernel: tuple[int, ...]


class WholeAxisPooling(Rule[PoolPlan]):
    id = "DS001"
    title = "Pooling kernel equals the export-time size of the axis it pools (frozen (h, 1) / whole-map pool)"
    ops = ("AveragePool", "MaxPool")

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        kernel = _ints(node, "kernel_shape", [])
        x = node.inputs[0]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        if not kernel or x0 is None or len(x0) != len(kernel) + 2:
            return self.refuse(node, "input shape unknown at the export shape")
        spatial = len(kernel)
        pads = _ints(node, "pads", [0] * 2 * spatial)
        strides = _ints(node, "strides", [1] * spatial)
        dilations = _ints(node, "dilations", [1] * spatial)
        dynamic = set(ctx.dynamic_axes_of(x)) if x is not None else set()
        # a 2x2 or 3x3 window that happens to cover a 2x2/3x3 map at the export shape is ordinary
        # downsampling (MaxPool2d(2) deep in a net exported small); a strip kernel [h, 1] is not
        strip = 1 in kernel
        pooled = [
            2 + i for i, k in enumerate(kernel) if k > 1 and (k > 3 or strip) and x0[2 + i] == k and (2 + i) in dynamic
        ]
        if not pooled:
            return self.refuse(
                node,
                f"kernel {kernel} is not the size of a dynamic axis at the export shape "
                f"(input {fmt(x0)}): ordinary windowed pooling",
            )
        binned = adaptive_bins(ctx, node)
        if isinstance(binned, AdaptiveBins):
            return self.refuse(node, f"axes {binned.binned_axes} are pooled in bins, not whole: DS004 owns it")
        problems = []
        if any(pads):
            problems.append(f"it pads ({pads}), so the reduction is not exact")
        if any(d != 1 for d in dilations):
            problems.append("it is dilated")
        for i in range(spatial):
            if 2 + i not in pooled and (kernel[i] != 1 or strides[i] != 1):
                problems.append(f"axis {2 + i} is pooled with a window {kernel[i]}/{strides[i]}, not whole")
        if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
            problems.append("its indices output is used")
        baked = {str(a): x0[a] for a in pooled}
        x1_txt = fmt(x1) if x1 else "?"
        rows: list[int | None] = []
        for a in pooled:
            size = x1[a] if x1 else None
            rows.append(None if size is None else (size - kernel[a - 2]) // strides[a - 2] + 1)
        at_s1 = (
            "its kernel no longer fits"
            if any(r is not None and r < 1 for r in rows)
            else f"it returns {', '.join(str(r) for r in rows)} instead of 1 on axis {pooled}"
        )
        reduce_op = _REDUCE[node.op_type]
        whole = len(pooled) == spatial
        fix = f"{_GLOBAL[node.op_type]}" if whole else f"{reduce_op}(axes={pooled}, keepdims=1)"
        return self.finding(
            node,
            severity="error",
            message=(
                f"{node.op_type} kernel {kernel} equals the export-time size of axis "
                f"{', '.join(str(a) for a in pooled)} of its input ({fmt(x0)}): it pools the whole axis "
                f"only at the export shape; when its input is {x1_txt}, {at_s1}"
            ),
            fixable=not problems,
            baked_value=baked,
            breaks_at=f"every input size other than the export size (e.g. pool input {x1_txt})",
            fix=(
                f"replace with {fix}"
                if not problems
                else "not rewritten: "
                + "; ".join(problems)
                + "; in the source, pool with a kernel from the tensor (x.mean(dim, keepdim=True))"
            ),
            details={"pooled_axes": pooled, "global": whole},
            plan=PoolPlan(tuple(pooled), whole, tuple(kernel)),
        )

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: PoolPlan) -> str:
        pooled = list(plan.pooled_axes)
        x = node.inputs[0]
        assert x is not None
        if plan.global_pool:
            op = _GLOBAL[node.op_type]
            new = builder.node(op, [x], name=f"{node.name}_global")
        else:
            op = _REDUCE[node.op_type]
            if builder.opset >= 18:
                axes = builder.const(f"{node.name}_axes", pooled)
                new = builder.node(op, [x, axes], attributes={"keepdims": 1}, name=f"{node.name}_reduce")
            else:
                new = builder.node(op, [x], attributes={"axes": pooled, "keepdims": 1}, name=f"{node.name}_reduce")
        builder.insert_before(node)
        builder.replace_uses(node.outputs[0], new.outputs[0])
        builder.remove(node)
        return f"{node.name}: {node.op_type} kernel {list(plan.kernel)} -> {op} over axes {pooled}"


# ---------------------------------------------------------------------------------------- DS004

# a grid of more bins than this is ordinary downsampling, not a pyramid-pooling bin count
_MAX_BINS = 16
_FORWARD_DEPTH = 6


@dataclass
class AdaptiveBins:
    """How each spatial axis of a pool is cut: ``keep`` (window 1), ``whole`` (1 bin) or k bins."""

    modes: list[str]  # per spatial axis: "keep" | "whole" | "bins"
    bins: list[int]  # per spatial axis: output size at the export shape
    signs: list[str]
    flattens: list[tuple[str, int]]  # (Reshape node, axis) flattening the grid with a size from the input

    @property
    def binned_axes(self) -> list[int]:
        return [2 + i for i, m in enumerate(self.modes) if m == "bins"]


def adaptive_bins(ctx: Context, node: ir.Node) -> AdaptiveBins | str:
    """The bins of a pool that looks like an adaptive pool frozen at the export size, or why not."""
    kernel = _ints(node, "kernel_shape", [])
    x = node.inputs[0]
    x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
    if not kernel or x0 is None or x1 is None or len(x0) != len(kernel) + 2:
        return "input shape unknown at the export shape"
    spatial = len(kernel)
    strides = _ints(node, "strides", [1] * spatial)
    modes: list[str] = []
    bins: list[int] = []
    dynamic_bins = False
    for i, k in enumerate(kernel):
        size, size1, s = x0[2 + i], x1[2 + i], strides[i]
        if size is None:
            return "input shape unknown at the export shape"
        if k == 1 and s == 1:
            modes.append("keep")
            bins.append(size)
        elif k == size:
            modes.append("whole")
            bins.append(1)
        elif k == s and k > 3 and size % k == 0 and 2 <= size // k <= min(k, _MAX_BINS):
            modes.append("bins")
            bins.append(size // k)
            dynamic_bins = dynamic_bins or (size1 is not None and size1 != size)
        else:
            return (f"kernel {kernel} / stride {strides} does not cut the input ({fmt(x0)}) into a few "
                    "equal bins (kernel == stride > 3, at most as many bins as the window is wide): "
                    "ordinary windowed pooling")
    if not dynamic_bins:
        return "no axis that follows the input is cut into bins"
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "auto_pad pooling"
    if any(_ints(node, "pads", [0] * 2 * spatial)) or any(d != 1 for d in _ints(node, "dilations", [1] * spatial)):
        return "padded or dilated pooling: not a bin pool"
    signs, strong = _adaptive_signs(ctx, node)
    few_big_bins = all(kernel[i] >= 2 * bins[i] for i, m in enumerate(modes) if m == "bins")
    if not strong and not (signs and few_big_bins):
        return (f"kernel {kernel} == stride cuts the input ({fmt(x0)}) into a {'x'.join(map(str, bins))} grid, "
                "but nothing marks it as adaptive pooling (no sibling pool of other bins, no fixed-size "
                "Gemm/MatMul after it, and no resize back to a size with windows at least twice the bin count): "
                "taken as a fixed nn.AvgPool2d window")
    return AdaptiveBins(modes, bins, signs, _flattens(ctx, node))


def _adaptive_signs(ctx: Context, node: ir.Node) -> tuple[list[str], bool]:
    """What marks a kernel == stride pool as an adaptive pool, and whether that is enough alone.

    Sibling pools of other bin counts (a pyramid) and a fixed-size Gemm/MatMul after it (the
    model cannot run at another grid anyway) are; a resize back to a size is not: a fixed
    ``nn.AvgPool2d(k)`` context branch is resized back just the same."""
    signs: list[str] = []
    strong = False
    x = node.inputs[0]
    kernel = _ints(node, "kernel_shape", [])
    assert x is not None
    siblings = []
    for use in x.uses():
        other = use.node
        if other is node or use.idx != 0:
            continue
        if other.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
            siblings.append(f"{other.op_type} {other.name!r} (1 bin)")
        elif other.op_type in ("ReduceMean", "ReduceMax"):  # keepdims: the rank stays
            out0 = ctx.dims(other.outputs[0], ctx.p0)
            if out0 is not None and len(out0) == len(kernel) + 2 and all(d == 1 for d in out0[2:]):
                siblings.append(f"{other.op_type} {other.name!r} (1 bin)")
        elif other.op_type in ("AveragePool", "MaxPool"):
            k2 = _ints(other, "kernel_shape", [])
            if k2 and k2 != kernel and k2 == _ints(other, "strides", [1] * len(k2)):
                siblings.append(f"{other.op_type} {other.name!r} (kernel {k2})")
    if siblings:
        signs.append("the same tensor is pooled into other bin counts by " + ", ".join(siblings))
        strong = True
    frontier = [(node.outputs[0], 0)]
    seen: set[int] = set()
    while frontier:
        value, depth = frontier.pop()
        for use in value.uses():
            nxt = use.node
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if nxt.op_type == "Resize" and len(nxt.inputs) > 3 and nxt.inputs[3] is not None and use.idx == 0:
                signs.append(f"its output is resized to a size by {nxt.name!r} (pyramid pooling)")
            elif nxt.op_type in ("Gemm", "MatMul") and any(
                i is not None and i.const_value is not None for i in nxt.inputs[1:]
            ):
                signs.append(f"it is flattened into the fixed-size {nxt.op_type} {nxt.name!r}")
                strong = True
            elif depth + 1 < _FORWARD_DEPTH and nxt.op_type not in ("Shape", "Size"):
                frontier.extend((o, depth + 1) for o in nxt.outputs if o is not None)
    return sorted(set(signs)), strong


def _flattens(ctx: Context, node: ir.Node) -> list[tuple[str, int]]:
    """Reshapes that flatten the pooled map (from axis a) with a target computed from the input
    size, as if the grid grew with it (the dynamo exporter writes ``torch.flatten(p, 1)`` as
    ``C * (H // k) * (W // k)``): with the grid fixed, the target must be ``Shape(p)[:a] + [-1]``."""
    out: list[tuple[str, int]] = []
    frontier = [node.outputs[0]]
    while frontier:
        value = frontier.pop()
        for use in value.uses():
            nxt = use.node
            if nxt.op_type in SAME_SIZE_UNARY:
                frontier.extend(o for o in nxt.outputs[:1] if o is not None)
            elif nxt.op_type == "Reshape" and use.idx == 0:
                d0 = ctx.dims(value, ctx.p0)
                t0, t1 = ctx.value(nxt.inputs[1], ctx.p0), ctx.value(nxt.inputs[1], ctx.p1)
                if d0 is None or t0 is None or t1 is None or any(d is None for d in d0):
                    continue
                target0 = [int(v) for v in np.atleast_1d(t0)]
                if target0 == [int(v) for v in np.atleast_1d(t1)]:
                    continue  # a constant target: DS005's business
                for a in range(1, len(d0)):
                    if target0 == [*d0[:a], math.prod(d for d in d0[a:] if d is not None)]:
                        out.append((nxt.name or "", a))
                        break
    return out


@dataclass(frozen=True)
class AdaptivePoolPlan(RewritePlan):
    """DS004: reshape into ``bins`` x window per spatial axis (by ``modes``), reduce the windows, and
    flatten the grid with ``Shape[:axis] + [-1]`` in the reshapes ``flattens`` names."""

    modes: tuple[str, ...]
    bins: tuple[int, ...]
    kernel: tuple[int, ...]
    flattens: tuple[tuple[str, int], ...]


class AdaptivePoolBins(Rule[AdaptivePoolPlan]):
    id = "DS004"
    title = "Adaptive pooling into k>1 bins frozen as a kernel == stride window (adaptive_avg_pool2d(x, k), PSP/PPM)"
    ops = ("AveragePool", "MaxPool")
    needs_export_shape = True

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        found = adaptive_bins(ctx, node)
        if isinstance(found, str):
            return self.refuse(node, found)
        x = node.inputs[0]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        assert x0 is not None and x1 is not None
        kernel = _ints(node, "kernel_shape", [])
        strides = _ints(node, "strides", [1] * len(kernel))
        grid0 = "x".join(str(b) for b in found.bins)
        out1 = ctx.dims(node.outputs[0], ctx.p1)
        grid1 = "x".join("?" if d is None else str(d) for d in out1[2:]) if out1 else "?"
        binned = found.binned_axes
        per_axis = "; ".join(
            f"axis {2 + i}: {x0[2 + i]} / {found.bins[i]} = {kernel[i]}"
            for i, m in enumerate(found.modes) if m == "bins"
        )
        problems = []
        if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
            problems.append("its indices output is used")
        multiple = found.bins[binned[0] - 2] if len(binned) == 1 else _lcm([found.bins[a - 2] for a in binned])
        reduce_op = _REDUCE[node.op_type]
        target = ["N", "C"]
        names = {1: "L", 2: "HW", 3: "DHW"}.get(len(found.modes), "".join(f"{i}" for i in range(len(found.modes))))
        for i, mode in enumerate(found.modes):
            d = names[i]
            target += {"bins": [str(found.bins[i]), f"{d}/{found.bins[i]}"], "whole": ["1", d], "keep": [d, "1"]}[mode]
        adaptive = "adaptive_avg_pool" if node.op_type == "AveragePool" else "adaptive_max_pool"
        return self.finding(
            node,
            severity="error",
            message=(
                f"{node.op_type} kernel {kernel} / stride {strides} cuts its input ({fmt(x0)}) into a {grid0} grid "
                f"only at the export size ({per_axis}): the output grid is {grid0} only there; when its input is "
                f"{fmt(x1)} it gives {grid1} instead of {grid0} ({adaptive} with the window frozen from the "
                f"export shape; {'; '.join(found.signs)})"
                + "".join(f"; Reshape {name!r} flattens it with a size computed from the input as if the grid "
                          "grew with it" for name, _ in found.flattens)
            ),
            fixable=not problems,
            baked_value={str(2 + i): kernel[i] for i, m in enumerate(found.modes) if m == "bins"},
            breaks_at=(
                f"every input size other than the export size (the grid is {grid0} only at {fmt(x0)}); "
                f"the rewrite is exact where the pooled axes are multiples of their bin count ({multiple} "
                f"on axes {binned}), and sizes in between are not exact vs PyTorch's uneven bins"
            ),
            fix=(
                f"Reshape to [{', '.join(target)}] built from Shape, then {reduce_op} over the window axes: the "
                f"grid stays {grid0} at every size where the pooled axes divide into their bins; not exact at "
                f"other sizes (PyTorch's {adaptive} uses uneven bins there, the rewritten model rejects them)"
                + "".join(f"; Reshape {name!r} flattens from Shape[:{a}] and -1" for name, a in found.flattens)
                if not problems
                else "not rewritten: " + "; ".join(problems)
                + f"; in the source use a reduction over bins ({adaptive} at a size divisible by the bins)"
            ),
            details={"modes": found.modes, "bins": found.bins, "signs": found.signs, "kernel": kernel,
                     "flattens": [list(f) for f in found.flattens]},
            plan=AdaptivePoolPlan(tuple(found.modes), tuple(found.bins), tuple(kernel), tuple(found.flattens)),
        )

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: AdaptivePoolPlan) -> str:
        modes, bins = plan.modes, plan.bins
        x = node.inputs[0]
        assert x is not None
        sa = ShapeArith(builder, node.name or "pool")
        parts: list[ir.Value] = [sa.dims(x, [0, 1])]
        for i, mode in enumerate(modes):
            d = sa.dim(x, 2 + i)
            if mode == "bins":
                parts += [sa.const([bins[i]], "bins"), sa.div(d, bins[i])]
            elif mode == "whole":
                parts += [sa.const([1], "one"), d]
            else:
                parts += [d, sa.const([1], "one")]
        target = sa.concat(parts, "target")
        sa.insert_before(node)
        reshape = builder.node("Reshape", [x, target], name=f"{node.name}_bins")
        window_axes = [3 + 2 * i for i in range(len(modes))]
        op = _REDUCE[node.op_type]
        if builder.opset >= 18:
            axes = builder.const(f"{node.name}_window_axes", window_axes)
            reduce = builder.node(op, [reshape.outputs[0], axes], attributes={"keepdims": 0},
                                  name=f"{node.name}_reduce")
        else:
            reduce = builder.node(op, [reshape.outputs[0]], attributes={"axes": window_axes, "keepdims": 0},
                                  name=f"{node.name}_reduce")
        builder.insert_before(node)
        builder.replace_uses(node.outputs[0], reduce.outputs[0])
        builder.remove(node)
        grid = "x".join(str(b) for b in bins)
        done = f"{node.name}: {node.op_type} kernel {list(plan.kernel)} -> Reshape into a {grid} grid " \
               f"of windows (from Shape) + {op}"
        for name, axis in plan.flattens:
            flat = builder.find_node(name)
            src = flat.inputs[0] if flat is not None else None
            if flat is None or src is None:
                continue
            fa = ShapeArith(builder, f"{name}_flat")
            flat.replace_input_with(1, fa.concat([fa.dims(src, list(range(axis))), fa.const([-1], "rest")], "target"))
            fa.insert_before(flat)
            done += f"; {name}: flatten target -> Shape[:{axis}] + [-1]"
        return done


def _lcm(values: list[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


RULES: list[Rule] = [WholeAxisPooling(), AdaptivePoolBins()]
