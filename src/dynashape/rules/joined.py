"""Helpers shared by the rules for tensors frozen at the export size and joined with live ones
(DS007, DS008, DS012): which axes of a frozen tensor meet a dynamic axis of a join partner, and
building sizes from ``Shape`` of that partner in a rewrite.

A join is an op whose inputs must agree in shape (``Add``/``Mul``/``Where`` broadcast, ``Concat``
must match exactly off its axis). A frozen axis of size ``d`` *meets* a partner axis when the two
are aligned at the join, the partner's axis is dynamic (it differs between the S0 and S1 probes)
and its size at S0 is ``d``. A size-1 axis only meets a partner in a ``Concat``: elsewhere 1
broadcasts and stays right at every size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import JOINS, SAME_SIZE_UNARY, Context, Origin, is_descendant
from dynashape.analysis.probe import Dims, Probe
from dynashape.rules.builder import RewriteBuilder, fold_value


@dataclass
class Meeting:
    """Axes of a frozen tensor that meet dynamic partner axes at one join."""

    join: ir.Node
    slot: int  # the join's input slot that carries the frozen tensor
    axes: dict[int, tuple[ir.Value, int]] = field(default_factory=dict)  # own axis -> (partner, its axis)
    # frozen axes > 1 facing a dynamic partner axis of size 1 at S0: the partner broadcasts to the
    # constant, which only makes sense if S0 is not the true export shape (e.g. a guessed batch)
    conflicts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str | int]]:
        return {str(a): [p.name or "", pa] for a, (p, pa) in sorted(self.axes.items())}


def known_dims(ctx: Context, value: ir.Value | None, probe: Probe, depth: int = 0) -> Dims | None:
    """The value's dims in the probe, completed where shape inference lost some: from its probed
    value, or through ``Slice`` (bounds computed from shapes, as ``chunk`` exports), ``Concat``
    and elementwise ops, whose output sizes follow from their inputs'. ONNX inference does not
    take the probe's numpy-computed bounds back, so these dims stay unknown there."""
    dims = ctx.dims(value, probe)
    if value is None or (dims is not None and all(d is not None for d in dims)):
        return dims
    known = ctx.value(value, probe)
    if known is not None and (dims is None or np.ndim(known) == len(dims)):
        return tuple(int(d) for d in np.shape(known))
    producer = value.producer()
    if producer is None or depth >= 12:
        return dims
    derived = _derived_dims(ctx, producer, probe, depth)
    if derived is None or (dims is not None and len(derived) != len(dims)):
        return dims
    if dims is not None and any(a is not None and a != b for a, b in zip(dims, derived)):
        return dims  # disagrees with inference: trust inference
    return derived


def _derived_dims(ctx: Context, node: ir.Node, probe: Probe, depth: int) -> Dims | None:
    def complete(v: ir.Value | None) -> tuple[int, ...] | None:
        d = known_dims(ctx, v, probe, depth + 1)
        if d is None or any(x is None for x in d):
            return None
        return tuple(int(x or 0) for x in d)

    op = node.op_type
    if op == "Slice" and len(node.inputs) >= 3:
        x = complete(node.inputs[0])
        vals = [ctx.value(v, probe) if v is not None else None for v in node.inputs[1:5]]
        if x is None or vals[0] is None or vals[1] is None or any(np.ndim(v) > 1 for v in vals if v is not None):
            return None  # Slice's starts, ends, axes and steps are 1-D lists
        starts, ends = np.atleast_1d(vals[0]), np.atleast_1d(vals[1])
        axes = np.atleast_1d(vals[2]) if len(vals) > 2 and vals[2] is not None else np.arange(len(starts))
        steps = np.atleast_1d(vals[3]) if len(vals) > 3 and vals[3] is not None else np.ones(len(starts), np.int64)
        if len(node.inputs) > 3 and node.inputs[3] is not None and len(vals) > 2 and vals[2] is None:
            return None
        out = list(x)
        if not out or any(d < 0 for d in out):  # a scalar cannot be sliced, no size is negative:
            return None  # the graph is not what this reads it as
        for st, en, ax, step in zip(starts, ends, axes, steps):
            a = int(ax) % len(out)
            out[a] = len(range(*slice(int(st), int(en), int(step)).indices(out[a])))
        return tuple(out)
    if op == "Concat":
        shapes = [d for d in (complete(v) for v in node.inputs) if d is not None]
        if not shapes or len(shapes) != len(node.inputs) or not shapes[0]:
            return None
        axis = node.attributes.get_int("axis", 0) % len(shapes[0])
        out = list(shapes[0])
        out[axis] = sum(d[axis] for d in shapes)
        return tuple(out)
    if op in SAME_SIZE_UNARY:
        return complete(node.inputs[0]) if node.inputs else None
    if op == "ConstantOfShape":
        shape = ctx.value(node.inputs[0], probe)
        return tuple(int(v) for v in np.atleast_1d(shape)) if shape is not None and np.ndim(shape) <= 1 else None
    if op in ("Expand", "Tile", "Reshape") and len(node.inputs) > 1:
        size = ctx.value(node.inputs[1], probe)
        x = complete(node.inputs[0])
        if x is None or size is None or np.ndim(size) > 1:
            return None
        target = [int(v) for v in np.atleast_1d(size)]
        if op == "Tile":
            return tuple(a * b for a, b in zip(x, target)) if len(target) == len(x) else None
        if op == "Expand":
            try:
                return tuple(int(d) for d in np.broadcast_shapes(x, tuple(target)))
            except ValueError:
                return None
        allowzero = node.attributes.get_int("allowzero", 0)
        out = [x[i] if v == 0 and not allowzero and i < len(x) else v for i, v in enumerate(target)]
        if out.count(-1) == 1:
            rest = int(np.prod([v for v in out if v != -1]))
            out[out.index(-1)] = int(np.prod(x)) // rest if rest else 0
        return tuple(out) if -1 not in out else None
    if op == "Transpose":
        x = complete(node.inputs[0])
        if x is None:
            return None
        perm_attr = node.attributes.get("perm")
        perm = list(perm_attr.as_ints()) if perm_attr is not None else list(reversed(range(len(x))))
        if sorted(perm) != list(range(len(x))):
            return None  # not a permutation of x's axes: what x's dims say is not what this node reads
        return tuple(x[i] for i in perm)
    if op in JOINS:  # elementwise: numpy broadcasting of the inputs
        given = [v for v in node.inputs if v is not None]
        shapes = [d for d in (complete(v) for v in given) if d is not None]
        if not shapes or len(shapes) != len(given):
            return None
        try:
            return tuple(int(d) for d in np.broadcast_shapes(*shapes))
        except ValueError:
            return None
    return None


def input_axes_behind(ctx: Context, value: ir.Value, axis: int) -> frozenset[tuple[str, int]]:
    """The dynamic graph-input axes that ``axis`` of ``value`` follows: probes that move one input
    axis at a time to its S1 size and see whether this dim moves with it."""
    dims0 = known_dims(ctx, value, ctx.p0)
    if dims0 is None or axis >= len(dims0):
        return frozenset()
    found: set[tuple[str, int]] = set()
    for info in ctx.inputs:
        for a in info.dynamic_axes:
            shapes = {k: tuple(v) for k, v in ctx.s0.items()}
            moved = list(shapes[info.name])
            moved[a] = ctx.s1[info.name][a]
            shapes[info.name] = tuple(moved)
            d = known_dims(ctx, value, ctx.prober.at(shapes))
            if d is not None and axis < len(d) and d[axis] is not None and d[axis] != dims0[axis]:
                found.add((info.name, a))
    return frozenset(found)


def _concat_axis(join: ir.Node, rank: int) -> int | None:
    if join.op_type != "Concat":
        return None
    axis = join.attributes.get_int("axis", 0)
    return axis + rank if axis < 0 else axis


def aligned_axis(join: ir.Node, own_rank: int, partner_rank: int, axis: int) -> int | None:
    """The partner axis that ``axis`` of an input of ``join`` lines up with (None: none)."""
    if join.op_type == "Concat":
        if own_rank != partner_rank or axis == _concat_axis(join, own_rank):
            return None
        return axis
    p = axis + partner_rank - own_rank  # numpy broadcasting aligns the trailing axes
    return p if 0 <= p < partner_rank else None


def meeting_at(
    ctx: Context, join: ir.Node, slot: int, dims0: Dims, frozen: list[int], avoid: ir.Node | None = None
) -> Meeting:
    """Which of the ``frozen`` axes (dims ``dims0`` at S0) of input ``slot`` meet a dynamic partner axis.

    ``avoid``: a partner computed from this node is skipped (its Shape would make a cycle when
    the node's size is rebuilt from it).
    """
    meeting = Meeting(join, slot)
    for k, partner in enumerate(join.inputs):
        if k == slot or partner is None or partner.const_value is not None:
            continue
        p0, p1 = known_dims(ctx, partner, ctx.p0), known_dims(ctx, partner, ctx.p1)
        if p0 is None or p1 is None or len(p0) != len(p1):
            continue
        if avoid is not None and is_descendant(partner, avoid):
            continue
        for axis in frozen:
            if axis in meeting.axes or axis >= len(dims0) or dims0[axis] is None:
                continue
            pa = aligned_axis(join, len(dims0), len(p0), axis)
            if pa is None or p0[pa] is None or p1[pa] is None or p0[pa] == p1[pa]:
                continue
            if p0[pa] != dims0[axis]:
                if p0[pa] == 1 and (dims0[axis] or 0) > 1:
                    meeting.conflicts.append(
                        f"its axis {axis} is {dims0[axis]} where {partner.name!r} is 1 at the export shape")
                continue
            if dims0[axis] == 1 and join.op_type != "Concat":
                continue  # 1 broadcasts against any size
            meeting.axes[axis] = (partner, pa)
    return meeting


def downstream_joins(value: ir.Value) -> Iterator[tuple[ir.Node, int]]:
    """(join, slot) for every join the value reaches directly or through same-size unary ops."""
    frontier = [value]
    seen: set[int] = set()
    while frontier:
        v = frontier.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        for use in v.uses():
            node = use.node
            if node.op_type in SAME_SIZE_UNARY and use.idx == 0 and node.outputs:
                frontier.append(node.outputs[0])
            elif node.op_type in JOINS:
                yield node, use.idx


def upstream_through_unary(value: ir.Value) -> ir.Node | None:
    """The first producer above ``value`` that is not a same-size unary op."""
    current: ir.Value | None = value
    for _ in range(64):
        if current is None:
            return None
        producer = current.producer()
        if producer is None or producer.op_type not in SAME_SIZE_UNARY:
            return producer
        current = producer.inputs[0] if producer.inputs else None
    return None


# -------------------------------------------------------------------------------- constants


def constant_node_array(node: ir.Node) -> np.ndarray | None:
    """The value of a ``Constant`` node."""
    for name, attr in node.attributes.items():
        if name in ("value", "sparse_value"):
            try:
                return np.asarray(attr.as_tensor().numpy())
            except Exception:  # sparse or external: unknown
                return None
        if name == "value_float":
            return np.array(attr.as_float(), np.float32)
        if name == "value_floats":
            return np.array(list(attr.as_floats()), np.float32)
        if name == "value_int":
            return np.array(attr.as_int(), np.int64)
        if name == "value_ints":
            return np.array(list(attr.as_ints()), np.int64)
    return None


def constant_array(ctx: Context, value: ir.Value, origin: Origin) -> np.ndarray | None:
    """The value of a constant-only tensor (``origin.kind == "constant"``)."""
    if value.const_value is not None:
        try:
            return np.asarray(value.const_value.numpy())
        except Exception:  # external data that is not loaded
            return None
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        return constant_node_array(producer)
    probed = ctx.value(value, ctx.p0)
    if probed is not None:
        return np.asarray(probed)
    outputs = {o.name for n in origin.nodes for o in n.outputs if o is not None and o.name}
    try:
        return fold_value(ctx.proto, value.name or "", outputs)
    except Exception:  # an op the reference evaluator does not know: unknown
        return None


# -------------------------------------------------------------------------------- rewriting


@dataclass(frozen=True)
class SizeEntry:
    """One entry of a size vector a rewrite builds: ``const``, ``Shape(ref)[axis]`` (divided by
    ``divide``: a Tile's repeats) or entry ``keep`` of the size tensor it replaces."""

    const: int | None = None
    ref: str = ""
    axis: int = 0
    divide: int = 1
    keep: int | None = None

    @property
    def kind(self) -> str:
        return "const" if self.const is not None else "keep" if self.keep is not None else "ref"

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> SizeEntry:
        """From ``{"const": v}``, ``{"ref": name, "axis": a[, "divide": d]}`` or ``{"keep": i}``."""
        if "const" in entry:
            return cls(const=int(entry["const"]))
        if "keep" in entry:
            return cls(keep=int(entry["keep"]))
        return cls(ref=str(entry["ref"]), axis=int(entry["axis"]), divide=int(entry.get("divide", 1)))


class SizeBuilder:
    """New nodes, made through the rewrite's builder, that compute sizes from ``Shape`` of reference
    tensors, named ``<prefix>_<suffix>``; ``insert`` puts them into the graph before a node."""

    def __init__(self, builder: RewriteBuilder, prefix: str) -> None:
        self.builder = builder
        self.prefix = prefix
        self.nodes: list[ir.Node] = []
        self._shapes: dict[int, ir.Value] = {}

    def add(self, op: str, inputs: list[ir.Value], suffix: str, **attrs: Any) -> ir.Value:
        # the names these nodes always had (a fixed model must not change): unique in the graph, and
        # one this builder gave already gets the count of its nodes appended
        name = self.builder.node_name(f"{self.prefix}_{suffix}", among_queued=False)
        if name in {n.name for n in self.nodes}:
            name = self.builder.node_name(f"{name}_{len(self.nodes)}", among_queued=False)
        node = self.builder.node(op, inputs, name=name, attributes=attrs, exact_name=True)
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, values: int | list[int] | np.ndarray, suffix: str, scalar: bool = False,
              dtype: np.dtype | type = np.int64) -> ir.Value:
        return self.builder.const(f"{self.prefix}_{suffix}", values, dtype=dtype, scalar=scalar)

    def shape_of(self, ref: ir.Value) -> ir.Value:
        if id(ref) not in self._shapes:
            self._shapes[id(ref)] = self.add("Shape", [ref], "shape")
        return self._shapes[id(ref)]

    def dims(self, ref: ir.Value, axes: list[int]) -> ir.Value:
        """1-D int64: ``Shape(ref)[axes]``."""
        return self.add("Gather", [self.shape_of(ref), self.const(axes, "axes")], "dims", axis=0)

    def dim(self, ref: ir.Value, axis: int) -> ir.Value:
        """0-D int64: ``Shape(ref)[axis]`` (for Range)."""
        return self.add("Gather", [self.shape_of(ref), self.const([axis], "axis", scalar=True)], "dim", axis=0)

    def concat(self, pieces: list[ir.Value], suffix: str) -> ir.Value:
        return pieces[0] if len(pieces) == 1 else self.add("Concat", pieces, suffix, axis=0)

    def insert(self, before: ir.Node) -> None:
        self.builder.insert_before(before)


def expanded_axes_frozen(ctx: Context, node: ir.Node, axes: list[int]) -> list[int]:
    """Of the output ``axes`` of an ``Expand``/``Tile``, those where its data input itself is
    larger than 1 (it was not expanded there: the size is the input's own)."""
    x = node.inputs[0]
    x0 = known_dims(ctx, x, ctx.p0)
    out = known_dims(ctx, node.outputs[0], ctx.p0)
    if x0 is None:
        return []
    rank = len(out) if out is not None else len(x0)
    lead = rank - len(x0)
    return [a for a in axes if 0 <= a - lead < len(x0) and (x0[a - lead] or 0) > 1]


def build_size_vector(sizes: SizeBuilder, entries: Sequence[SizeEntry], original: ir.Value | None) -> ir.Value:
    """A 1-D int64 size from ``entries``; neighbouring entries of one kind are merged."""
    pieces: list[ir.Value] = []
    run_consts: list[int] = []

    def flush() -> None:
        if run_consts:
            pieces.append(sizes.const(list(run_consts), "c"))
            run_consts.clear()

    i = 0
    while i < len(entries):
        e = entries[i]
        if e.const is not None:
            run_consts.append(e.const)
            i += 1
            continue
        flush()
        if e.keep is not None:
            assert original is not None
            idx = [e.keep]
            while i + 1 < len(entries) and entries[i + 1].keep is not None:
                i += 1
                idx.append(int(entries[i].keep or 0))
            pieces.append(sizes.add("Gather", [original, sizes.const(idx, "keep")], "keep", axis=0))
        else:
            ref = sizes.builder.find_value(e.ref)
            if ref is None:
                raise LookupError(f"tensor {e.ref!r} is gone")
            axes = [e.axis]
            while (e.divide == 1 and i + 1 < len(entries) and entries[i + 1].kind == "ref"
                   and entries[i + 1].ref == e.ref and entries[i + 1].divide == 1):
                i += 1
                axes.append(entries[i].axis)
            dims = sizes.dims(ref, axes)
            if e.divide != 1:
                dims = sizes.add("Div", [dims, sizes.const([e.divide], "div")], "per_copy")
            pieces.append(dims)
        i += 1
    flush()
    return sizes.concat(pieces, "size")
