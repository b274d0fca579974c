"""Following a tensor's axis through the graph at several probe shapes.

The rules that rebuild a baked size from ``Shape(ref)`` must pick ``ref`` so that its size equals
the baked one at the export shape *and* moves with the input the same way the size should. Two
probes (S0, S1 = every dynamic axis doubled) cannot tell ``H`` from ``W`` at a square export
shape, nor a padded size from the unpadded one when S1 is still a multiple; the extra probes here
scale the axes by different factors and to odd sizes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import chain

import onnx_ir as ir

from dynashape.analysis.context import Context, is_descendant, join_partners
from dynashape.analysis.probe import Dims, Probe
from dynashape.shapes import ShapeMap


def _scaled(ctx: Context, how: str) -> ShapeMap:
    shapes: ShapeMap = {}
    for info in ctx.inputs:
        shape = list(ctx.s0[info.name])
        k = 0
        for axis in info.dynamic_axes:
            if axis == 0 and info.rank >= 3:
                shape[axis] = shape[axis] + 2
                continue
            if how == "asym":  # axes scaled by 3, 2, 3, ...: H and W no longer move together
                shape[axis] = shape[axis] * (3 if k % 2 == 0 else 2)
            else:  # odd sizes, off every power-of-two lattice
                shape[axis] = 2 * shape[axis] + 2 * k + 3
            k += 1
        shapes[info.name] = tuple(shape)
    return shapes


def probes(ctx: Context) -> Iterator[Probe]:
    """S1, then axes scaled by different factors, then odd sizes. Lazy: a probe is inferred only
    when a caller gets that far (the prober caches it after that)."""
    yield ctx.p1
    yield ctx.prober.at(_scaled(ctx, "asym"))
    yield ctx.prober.at(_scaled(ctx, "odd"))


def dim(ctx: Context, value: ir.Value | None, axis: int, probe: Probe) -> int | None:
    dims: Dims | None = ctx.dims(value, probe)
    if dims is None or axis >= len(dims):
        return None
    return dims[axis]


def rank(ctx: Context, value: ir.Value | None) -> int | None:
    dims = ctx.dims(value, ctx.p0)
    return None if dims is None else len(dims)


def norm_axis(axis: int, rank_: int) -> int:
    return axis + rank_ if axis < 0 else axis


def same_axis(ctx: Context, a: ir.Value, a_axis: int, b: ir.Value, b_axis: int, thorough: bool = True) -> bool:
    """Equal sizes at S0 and S1 (both must be known), and (``thorough``) wherever else both are known."""
    for i, probe in enumerate(chain([ctx.p0], probes(ctx) if thorough else [ctx.p1])):
        da, db = dim(ctx, a, a_axis, probe), dim(ctx, b, b_axis, probe)
        if da is None or db is None:
            if i <= 1:
                return False
            continue
        if da != db:
            return False
    return True


def trace_concat(ctx: Context, value: ir.Value, axis: int, limit: int = 16) -> tuple[ir.Node, int] | None:
    """The ``Concat`` along ``axis`` that ``value`` is computed from through ops that keep that
    axis's size (1x1 convs, normalisation, activations, transposes that move the axis), with the
    concat's own axis index; None when there is none."""
    current, cur_axis = value, axis
    for _ in range(limit):
        node = current.producer()
        if node is None:
            return None
        r = rank(ctx, current)
        if r is None:
            return None
        if node.op_type == "Concat":
            cat_axis = norm_axis(node.attributes.get_int("axis", 0), r)
            return (node, cat_axis) if cat_axis == cur_axis else None
        if node.op_type == "Transpose":
            attr = node.attributes.get("perm")
            perm = list(attr.as_ints()) if attr is not None else list(reversed(range(r)))
            src = node.inputs[0]
            if src is None:
                return None
            current, cur_axis = src, perm[cur_axis]
            continue
        nxt = None
        for inp in node.inputs:
            if inp is None or inp.const_value is not None or rank(ctx, inp) != r:
                continue
            if same_axis(ctx, inp, cur_axis, current, cur_axis):
                nxt = inp
                break
        if nxt is None:
            return None
        current = nxt
    return None


def ancestors(value: ir.Value, limit: int = 256) -> Iterator[ir.Value]:
    """Tensors ``value`` is computed from, nearest first (graph inputs included, constants not)."""
    queue: deque[ir.Value] = deque([value])
    seen: set[int] = {id(value)}
    count = 0
    while queue and count < limit:
        v = queue.popleft()
        producer = v.producer()
        if producer is None:
            continue
        for inp in producer.inputs:
            if inp is None or id(inp) in seen or inp.const_value is not None:
                continue
            seen.add(id(inp))
            count += 1
            yield inp
            queue.append(inp)


def slice_partners(node: ir.Node) -> list[ir.Value]:
    """Tensors the output of a slice is joined with (``Add``/``Concat``/...), following
    same-size ops and further slices (``x[:, :, :h]`` then ``[..., :w]`` are two Slice nodes),
    that do not depend on it."""
    out = node.outputs[0] if node.outputs else None
    if out is None:
        return []
    return [p for p in join_partners(out, through_slices=True) if not is_descendant(p, node)]
