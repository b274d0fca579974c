"""Small int64 shape computations for rewrites: ``Shape -> Gather -> Add/Div/Mod -> Concat``.

A rewrite that replaces a baked size with one read from a tensor builds a few nodes; this writes
them through the rewrite's :class:`RewriteBuilder`, named ``<prefix>_<what>``, and inserts them in one
place before the node they feed. Every value is a 1-D int64 tensor of one element (``[1]``) unless
``concat`` joins several.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from dynashape.rules.builder import RewriteBuilder

INT64_MAX = 2**63 - 1


class ShapeArith:
    """One shape computation; ``insert_before(node)`` puts its nodes in the graph."""

    def __init__(self, builder: RewriteBuilder, prefix: str) -> None:
        self.builder = builder
        self.prefix = prefix
        self._shapes: dict[int, ir.Value] = {}
        self._dims: dict[tuple[int, int], ir.Value] = {}

    def _node(self, op: str, inputs: Sequence[ir.Value], what: str, **attrs: int) -> ir.Value:
        return self.builder.op(op, inputs, name=f"{self.prefix}_{what}", **attrs)

    def const(self, values: int | Sequence[int], what: str = "c") -> ir.Value:
        vals = [values] if isinstance(values, int) else list(values)
        return self.builder.const(f"{self.prefix}_{what}", vals)

    def shape(self, value: ir.Value) -> ir.Value:
        if id(value) not in self._shapes:
            self._shapes[id(value)] = self._node("Shape", [value], "shape")
        return self._shapes[id(value)]

    def dim(self, value: ir.Value, axis: int) -> ir.Value:
        """``Shape(value)[axis]`` as a ``[1]`` tensor."""
        key = (id(value), axis)
        if key not in self._dims:
            self._dims[key] = self._node(
                "Gather", [self.shape(value), self.const([axis], f"axis{axis}")], f"dim{axis}", axis=0
            )
        return self._dims[key]

    def dims(self, value: ir.Value, axes: Sequence[int]) -> ir.Value:
        """``Shape(value)[axes]`` as a 1-D tensor."""
        return self._node("Gather", [self.shape(value), self.const(list(axes), "axes")], "dims", axis=0)

    def pick(self, vec: ir.Value, index: int) -> ir.Value:
        """``vec[index]`` of a 1-D tensor, as a ``[1]`` tensor."""
        return self._node("Gather", [vec, self.const([index], f"i{index}")], f"pick{index}", axis=0)

    def _operand(self, v: ir.Value | int, what: str) -> ir.Value:
        return self.const([v], what) if isinstance(v, int) else v

    def binary(self, op: str, a: ir.Value | int, b: ir.Value | int) -> ir.Value:
        what = op.lower()
        return self._node(op, [self._operand(a, what), self._operand(b, what)], what)

    def add(self, a: ir.Value | int, b: ir.Value | int) -> ir.Value:
        return self.binary("Add", a, b)

    def sub(self, a: ir.Value | int, b: ir.Value | int) -> ir.Value:
        return self.binary("Sub", a, b)

    def mul(self, a: ir.Value | int, b: ir.Value | int) -> ir.Value:
        return self.binary("Mul", a, b)

    def div(self, a: ir.Value | int, b: ir.Value | int) -> ir.Value:
        """Integer division; the operands here are never negative, so it is the floor."""
        return self.binary("Div", a, b)

    def mod(self, a: ir.Value | int, b: ir.Value | int) -> ir.Value:
        return self.binary("Mod", a, b)

    def max(self, a: ir.Value | int, b: ir.Value | int) -> ir.Value:
        return self.binary("Max", a, b)

    def concat(self, parts: Sequence[ir.Value], what: str = "concat") -> ir.Value:
        if len(parts) == 1:
            return parts[0]
        return self._node("Concat", parts, what, axis=0)

    def insert_before(self, node: ir.Node) -> None:
        self.builder.insert_before(node)
