"""Symbolic shapes: every tensor's dims as integer expressions of the graph's input dims.

Built once per model (``ShapeEngine.build``), then evaluated at any input shape in about a
millisecond (``ShapeEngine.at``), where ONNX shape inference with its feedback passes over the
protobuf takes tens (``dynashape.analysis.probe.Prober``). The expressions are hash-consed: the thousands
of per-tensor dims of a graph reduce to a few hundred distinct expressions of ``(input, axis)``
leaves, and only those are evaluated per shape.

The engine never answers where it is not sure to answer as the prober does:

- every condition under which ONNX inference or the prober's own checks would fail (a join of
  differing dims, a reshape that changes the element count, a pool larger than its input) and
  every condition its formulas assume (sizes of at least 1, a convolution window inside its
  input) is a *guard*; at a shape where one does not hold, ``at`` returns None and the caller
  probes as before;
- an op it does not model, a subgraph, a function or a custom domain makes ``build`` return None;
- the prober only trusts it after comparing it, value by value, with probes of its own (see
  ``Prober.at``): a dim ONNX cannot infer (None) must be None here too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

log = logging.getLogger(__name__)


class Expr:
    """A symbolic integer; made only by ``Exprs`` (one object per distinct expression).

    ``linear``: the expression as ``const + sum(coefficient * atom)`` over expressions that are not
    sums themselves, so that sums that are equal are one expression (``(h - 1) + 1`` is ``h``)."""

    __slots__ = ("index", "linear")

    def __init__(self, index: int) -> None:
        self.index = index
        self.linear: tuple[tuple[tuple[Expr, int], ...], int] = (((self, 1),), 0)

    def __repr__(self) -> str:
        return f"e{self.index}"


Dim = int | Expr | None  # known at build, known per shape, or unknown (as ONNX leaves it)


def _floordiv(a: int, b: int) -> int:
    return a // b


def _ceildiv(a: int, b: int) -> int:
    return -(-a // b)


def _truncdiv(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _slice_len(dim: int, start: int, end: int, step: int) -> int:
    return len(range(*slice(start, end, step).indices(dim)))


def _slice_start(dim: int, start: int, end: int, step: int) -> int:
    return slice(start, end, step).indices(dim)[0]


def _float_range_len(start: float, limit: float, delta: float) -> int:
    """ONNX's Range output size for float32 operands: ceil((1.0 * (limit - start)) / delta)."""
    span = float(np.float32(limit) - np.float32(start))
    return max(math.ceil(span / float(np.float32(delta))), 0)


def _scale(dim: int, scale: float) -> int:
    return math.floor(float(np.float32(dim) * np.float32(scale)))


_OPS: dict[str, Callable[..., Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": _floordiv,
    "ceil//": _ceildiv,
    "trunc/": _truncdiv,
    "%": lambda a, b: a % b,
    "max": max,
    "min": min,
    "slice_len": _slice_len,
    "slice_start": _slice_start,
    "scale": _scale,
    "frange": _float_range_len,
    "ceil_pos": lambda room, stride: math.ceil(float(np.float32(room) / np.float32(stride))),
    # float32 scalars, as numpy computes them (a size divided and rounded in float, as
    # ``math.ceil(h / patch)`` is exported)
    "f+": lambda a, b: float(np.float32(a) + np.float32(b)),
    "f-": lambda a, b: float(np.float32(a) - np.float32(b)),
    "f*": lambda a, b: float(np.float32(a) * np.float32(b)),
    "f/": lambda a, b: float(np.float32(a) / np.float32(b)),
    "fceil": lambda a: float(np.ceil(np.float32(a))),
    "ffloor": lambda a: float(np.floor(np.float32(a))),
    "f2i": lambda a: int(np.float32(a)),
    "eq": lambda a, b: int(a == b),
    "where": lambda c, a, b: a if c else b,
}


_FLOAT_OPS = frozenset({"f+", "f-", "f*", "f/", "fceil", "ffloor"})  # results that are float32 values


class Exprs:
    """The hash-consed expression table: ``leaf``, ``apply``; ``evaluate`` at given leaf values."""

    def __init__(self) -> None:
        self._index: dict[tuple[Any, ...], Expr] = {}
        # per expression: (operation or None for a leaf, operands: (is_expr, int or expr index))
        self._code: list[tuple[Callable[..., int] | None, tuple[tuple[bool, Any], ...]]] = []

    def __len__(self) -> int:
        return len(self._code)

    def leaf(self, key: Any) -> Expr:
        found = self._index.get(("leaf", key))
        if found is None:
            found = self._index[("leaf", key)] = Expr(len(self._code))
            self._code.append((None, ((False, key),)))
        return found

    def apply(self, op: str, *args: Dim | float) -> Dim:
        """``op`` of ``args``: a number when all are numbers, None when one is unknown."""
        if any(a is None for a in args):
            return None
        fn = _OPS[op]
        if not any(isinstance(a, Expr) for a in args):
            result = fn(*args)
            return result if op in _FLOAT_OPS else int(result)
        if op in ("+", "-") or (op == "*" and any(isinstance(a, int) for a in args)):
            return self._linear(op, args[0], args[1])  # type: ignore[arg-type]
        simple = self._simplify(op, args)
        if simple is not _NO_SIMPLIFICATION:
            return simple  # type: ignore[return-value]
        key = (op, *(("e", a.index) if isinstance(a, Expr) else ("c", a) for a in args))
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = Expr(len(self._code))
            self._code.append((fn, tuple((True, a.index) if isinstance(a, Expr) else (False, a) for a in args)))
        return found

    def _linear(self, op: str, a: int | Expr, b: int | Expr) -> Dim:
        """A sum, difference or multiple in its canonical form (see ``Expr.linear``)."""
        terms: dict[Expr, int] = {}
        const = 0
        if op == "*":
            k, e = (a, b) if isinstance(a, int) else (b, a)
            assert isinstance(e, Expr) and isinstance(k, int)
            atoms, c = e.linear
            for atom, coef in atoms:
                terms[atom] = coef * k
            const = c * k
        else:
            for operand, sign in ((a, 1), (b, 1 if op == "+" else -1)):
                if isinstance(operand, int):
                    const += sign * operand
                    continue
                atoms, c = operand.linear
                const += sign * c
                for atom, coef in atoms:
                    terms[atom] = terms.get(atom, 0) + sign * coef
        items = tuple(sorted(((atom, coef) for atom, coef in terms.items() if coef), key=lambda t: t[0].index))
        if not items:
            return const
        if len(items) == 1 and items[0][1] == 1 and const == 0:
            return items[0][0]
        key = ("linear", tuple((atom.index, coef) for atom, coef in items), const)
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = Expr(len(self._code))
            found.linear = (items, const)
            coefs = tuple(coef for _, coef in items)
            operands = tuple((True, atom.index) for atom, _ in items)

            def combine(*values: int, coefs: tuple[int, ...] = coefs, const: int = const) -> int:
                return const + sum(c * v for c, v in zip(coefs, values))

            self._code.append((combine, operands))
        return found

    @staticmethod
    def _simplify(op: str, args: Sequence[Any]) -> object:
        if op == "where" and not isinstance(args[0], Expr):
            return args[1] if args[0] else args[2]
        if op == "eq" and args[0] is args[1]:
            return 1
        a, b = (args[0], args[1]) if len(args) == 2 else (None, None)
        if op == "+" and b == 0 and not isinstance(b, Expr):
            return a
        if op == "+" and a == 0 and not isinstance(a, Expr):
            return b
        if op == "-" and b == 0 and not isinstance(b, Expr):
            return a
        if op == "*" and b == 1 and not isinstance(b, Expr):
            return a
        if op == "*" and a == 1 and not isinstance(a, Expr):
            return b
        if op in ("//", "ceil//", "trunc/") and b == 1 and not isinstance(b, Expr):
            return a
        if op in ("max", "min") and a is b:
            return a
        return _NO_SIMPLIFICATION

    def extend(self, values: list[int], shapes: Mapping[str, Sequence[int]]) -> None:
        """Evaluate, into ``values``, the expressions made since it was last extended (leaves
        ``(input, axis)`` from ``shapes``); ArithmeticError where one cannot be."""
        if len(values) >= len(self._code):
            return  # nothing new (most nodes make no new expression)
        with np.errstate(all="ignore"):  # a float size divided by 0 is inf, then OverflowError
            for i in range(len(values), len(self._code)):
                fn, operands = self._code[i]
                if fn is None:
                    name, axis = operands[0][1]
                    values.append(int(shapes[name][axis]))
                else:
                    values.append(fn(*[values[v] if is_expr else v for is_expr, v in operands]))

    def evaluate(self, leaves: dict[Any, int]) -> list[int]:
        """Every expression's value; raises KeyError for a leaf not given."""
        values: list[int] = [0] * len(self._code)
        with np.errstate(all="ignore"):  # a float size divided by 0 is inf, then OverflowError
            for i, (fn, operands) in enumerate(self._code):
                if fn is None:
                    values[i] = leaves[operands[0][1]]
                else:
                    values[i] = fn(*[values[v] if is_expr else v for is_expr, v in operands])
        return values


_NO_SIMPLIFICATION = object()


def _objects(elements: Sequence[Any], shape: Sequence[int] | None = None) -> np.ndarray:
    arr = np.empty(len(elements), dtype=object)
    for i, e in enumerate(elements):
        arr[i] = e
    return arr.reshape(tuple(shape)) if shape is not None else arr


def _flat(arr: np.ndarray) -> list[Any]:
    return list(arr.reshape(-1))


class Unsupported(Exception):
    """The graph holds something the engine does not model."""


# guards: (kind, operands); see _holds
Guard = tuple[Any, ...]


def _holds(guard: Guard, values: list[int]) -> bool:
    """Does ``(kind, *operands[, failing])`` hold at these expression values?"""
    kind = guard[0]
    v = [values[x.index] if isinstance(x, Expr) else x for x in guard[1:] if not isinstance(x, bool)]
    if kind == "ge":
        return v[0] >= v[1]
    if kind == "eq":
        return v[0] == v[1]
    if kind == "bc":  # broadcastable: equal, or either is 1
        return v[0] == v[1] or v[0] == 1 or v[1] == 1
    if kind == "ne":
        return v[0] != v[1]
    if kind == "divides":
        return v[1] != 0 and v[0] % v[1] == 0
    if kind == "range":  # |value| small enough for float64 and int64 arithmetic to be exact
        return -(2**31) <= v[0] <= 2**31
    raise ValueError(kind)


# a probe made otherwise: its input shapes and the dims it gives each value
Witness = tuple[Mapping[str, Sequence[int]], Callable[[str], "tuple[int | None, ...] | None"]]


class ShapeEngine:
    """Dims (and small integer values) of every value of one graph, as expressions."""

    def __init__(self) -> None:
        self.exprs = Exprs()
        self.shapes: dict[str, tuple[Dim, ...] | None] = {}
        # each guard: whether the prober fails where it does not hold, and the position in the
        # graph of the first node that needs it
        self.guards: dict[Guard, tuple[bool, int]] = {}
        self._decisive: set[Guard] = set()  # failing guards whose failure does not depend on the node's outputs
        self._output_guards: set[Guard] = set()  # non-failing: the sizes a node makes are at least 1
        self._position = 0
        self.leaves: list[tuple[str, int]] = []  # (input, axis) of each leaf
        self._values: dict[str, np.ndarray] = {}  # small integer tensors: object arrays of Dim
        self._constants: dict[str, np.ndarray] = {}
        self._input_ranks: dict[str, int] = {}
        self._carriers: set[str] | frozenset[str] = frozenset()
        self._floats: dict[str, Dim | float] = {}
        self._witnesses: list[tuple[Witness, list[int]]] = []
        # values whose dims a witness knew less of (see _compare_with_witnesses): the engine
        # then answers only whether a shape is valid, and the graph outputs' dims
        self.knows_more: set[str] = set()  # float32 scalars: an integer size cast, or a constant

    # ------------------------------------------------------------------------------ build

    @classmethod
    def build(
        cls, model: onnx.ModelProto, constants: dict[str, np.ndarray],
        carriers: set[str] | frozenset[str] = frozenset(),
        integers: set[str] | frozenset[str] = frozenset(), witnesses: Sequence[Witness] = (),
    ) -> ShapeEngine | None:
        """The engine of ``model`` (its graph inputs as leaves), or None when it holds an op,
        attribute or form the engine does not model. ``constants``: values of initializers and
        Constant nodes (the prober's, small ones). ``carriers``: values that may hold ONNX-propagated
        shape data in some probe (``probe._data_carriers``): ONNX's data propagation of an
        elementwise op fails on two integer ones (``integers``: the values of an integer type)
        whose element counts do not broadcast. ``witnesses``: (input shapes, dims of each value
        there) of probes made otherwise; the build stops at the first value whose dims differ
        from a witness's (None too), and where a witness is valid the engine must not fail."""
        engine = cls()
        engine._carriers = frozenset(carriers) & frozenset(integers)
        engine._witnesses = [(w, []) for w in witnesses]
        try:
            engine._build(model, constants)
            for (shapes, _), _ in engine._witnesses:
                found = engine.at(shapes)
                if found is not None and found.fails:
                    raise Unsupported(f"it fails at {dict(shapes)}, where the probe does not")
        except Unsupported as exc:
            log.debug("no symbolic shapes: %s", exc)
            return None
        except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as exc:  # a form not foreseen
            log.debug("no symbolic shapes: %s: %s", type(exc).__name__, exc)
            return None
        return engine

    def _build(self, model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> None:
        if model.functions:
            raise Unsupported("model-local functions")
        opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is None:
            raise Unsupported("no standard opset")
        self.opset = opset
        self._constants = dict(constants)
        inits = {t.name for t in model.graph.initializer}
        for t in model.graph.initializer:
            self.shapes[t.name] = tuple(int(d) for d in t.dims)
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
                raise Unsupported(f"input {vi.name!r} without a shape")
            dims = []
            for axis in range(len(tt.shape.dim)):
                dims.append(self.exprs.leaf((vi.name, axis)))
                self.leaves.append((vi.name, axis))
            self._input_ranks[vi.name] = len(dims)
            self.shapes[vi.name] = tuple(dims)
        subgraphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        get_value = onnx.helper.get_attribute_value
        for position, node in enumerate(model.graph.node):
            self._position = position
            op_type, domain = node.op_type, node.domain
            if domain not in ("", "ai.onnx"):
                raise Unsupported(f"custom op {domain}::{op_type}")
            # the attributes read once (proto access is slow): a subgraph in any of them is not modelled
            attributes = list(node.attribute)
            if any(a.type in subgraphs for a in attributes):
                raise Unsupported(f"subgraph in {op_type}")
            handler = _HANDLERS.get(op_type)
            if handler is None:
                raise Unsupported(f"op {op_type}")
            attrs = {a.name: get_value(a) for a in attributes}
            built = _Node(self, node, attrs, op_type)
            built.run(handler)
            self._compare_with_witnesses(built.outputs)

    def _compare_with_witnesses(self, names: Sequence[str]) -> None:
        """Raise Unsupported unless each witness has the dims given here (see ``build``); a dim
        known here that the witness leaves unknown (its feedback passes ran out) is noted in
        ``knows_more`` instead."""
        for (shapes, dims_of), values in self._witnesses:
            self.exprs.extend(values, shapes)
            for name in names:
                if not name:
                    continue
                dims = self.shapes.get(name)
                found = None if dims is None else tuple(
                    [values[d.index] if isinstance(d, Expr) else d for d in dims])
                expected = dims_of(name)
                if found == expected:
                    continue
                if found is not None and expected is not None and len(found) == len(expected) and all(
                        e is None or e == f for e, f in zip(expected, found)):
                    self.knows_more.add(name)
                    continue
                raise Unsupported(f"{name!r} is {found} at {dict(shapes)}; the probe says {expected}")

    def guard(self, kind: str, *operands: Dim, fail: bool = False, decisive: bool = False) -> None:
        """A condition the engine's answer needs. ``fail``: where it does not hold, the prober
        fails too (ONNX inference or its own checks find the graph inconsistent); else the
        engine is only not sure there, and the prober must answer. ``decisive`` (with ``fail``):
        the condition reads only the node's inputs and attributes, and the prober checks it
        itself, so it fails there even where the engine is not sure of the node's output dims
        (see ``at``)."""
        if any(o is None for o in operands):
            raise Unsupported("a guard on an unknown dim")
        if not any(isinstance(o, Expr) for o in operands):
            if not _holds((kind, *operands), []):
                raise Unsupported(f"the graph fails at every shape ({kind} {operands})")
            return
        key = (kind, *operands, fail)
        if key not in self.guards:
            self.guards[key] = (fail, self._position)
            if decisive and fail:
                self._decisive.add(key)

    def value(self, name: str) -> np.ndarray | None:
        """A small integer tensor as an object array of its elements (int, Expr or None)."""
        found = self._values.get(name)
        if found is not None:
            return found
        const = self._constants.get(name)
        if const is not None and (np.issubdtype(const.dtype, np.integer) or const.dtype == np.bool_):
            found = self._values[name] = _objects([int(v) for v in const.reshape(-1)], const.shape)
            return found
        return None

    # ------------------------------------------------------------------------------ evaluate

    def at(self, shapes: Mapping[str, Sequence[int]]) -> EngineShapes | None:
        """The dims at these input shapes; ``fails`` set where a failing guard does not hold (the
        prober would fail: its words are the prober's to give). None where a guard that is not a
        failing one does not hold, or a graph input is not given with its rank: the caller probes."""
        leaves: dict[Any, int] = {}
        for name, rank in self._input_ranks.items():
            shape = shapes.get(name)
            if shape is None or len(shape) != rank:
                return None
            for axis, size in enumerate(shape):
                leaves[(name, axis)] = int(size)
        try:
            values = self.exprs.evaluate(leaves)
        except (ArithmeticError, ValueError, OverflowError):  # a size of 0 divides: the prober says what
            return None
        # the first node (in graph order) with a guard that does not hold decides: every dim
        # before it is right, so a failing guard there is a failure of the prober's too, while
        # any other guard there leaves the answer to the prober; except that a decisive guard
        # that does not hold is a failure whatever the node's output dims (the only other
        # guards there that may not hold are then those on its outputs: a pool's window larger
        # than its input gives an output size below 1, which ONNX computes otherwise)
        first: int | None = None
        all_failing = decisive = only_outputs = True
        for guard, (failing, position) in self.guards.items():
            if (first is None or position <= first) and not _holds(guard, values):
                if first is None or position < first:
                    first, all_failing, decisive, only_outputs = position, True, False, True
                all_failing = all_failing and failing
                decisive = decisive or guard in self._decisive
                only_outputs = only_outputs and (failing or guard in self._output_guards)
        if first is not None and not all_failing and not (decisive and only_outputs):
            return None
        return EngineShapes(self.shapes, values, first is not None)


class EngineShapes:
    """The dims of one evaluation: ``get(name)`` as ``LazyDims.get`` answers it."""

    def __init__(self, shapes: dict[str, tuple[Dim, ...] | None], values: list[int], fails: bool = False) -> None:
        self._shapes = shapes
        self._values = values
        self.fails = fails

    def get(self, name: str) -> tuple[int | None, ...] | None:
        dims = self._shapes.get(name)
        if dims is None:
            return None
        values = self._values
        return tuple([values[d.index] if isinstance(d, Expr) else d for d in dims])


# ---------------------------------------------------------------------------------- op handlers


class _Node:
    """One node while building: its input dims and values, and where to put its outputs'."""

    def __init__(self, engine: ShapeEngine, node: onnx.NodeProto, attrs: dict[str, Any],
                 op_type: str | None = None) -> None:
        self.engine = engine
        self.node = node
        self.op = node.op_type if op_type is None else op_type
        self.attrs = attrs
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.x = engine.exprs

    def run(self, handler: Callable[[_Node], None]) -> None:
        handler(self)
        floats = self.engine._floats
        if self.op in _MOVES_DATA and self.inputs and self.inputs[0] in floats and self.outputs[0]:
            floats[self.outputs[0]] = floats[self.inputs[0]]  # a float32 scalar, reshaped
        engine = self.engine
        shapes, guards = engine.shapes, engine.guards
        for out in self.outputs:
            if out and out not in shapes:
                shapes[out] = None
            dims = shapes.get(out)
            for d in dims or ():
                if isinstance(d, Expr):
                    # a size the engine computes is at least 1 wherever it answers (zero-sized and
                    # negative results are the prober's to report, with its own words):
                    # engine.guard("ge", d, 1), inlined (every dim of every value comes here)
                    key = ("ge", d, 1, False)
                    if key not in guards:
                        guards[key] = (False, engine._position)
                        engine._output_guards.add(key)

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and bool(self.inputs[i])

    def shape(self, i: int) -> tuple[Dim, ...] | None:
        if not self.has(i):
            return None
        if self.inputs[i] not in self.engine.shapes:
            raise Unsupported(f"{self.op} reads {self.inputs[i]!r} before it is made")
        return self.engine.shapes[self.inputs[i]]

    def value(self, i: int) -> np.ndarray | None:
        return self.engine.value(self.inputs[i]) if self.has(i) else None

    def vector(self, i: int) -> list[Dim] | None:
        """The elements of a 0-D or 1-D integer value."""
        v = self.value(i)
        return _flat(v) if v is not None and v.ndim <= 1 else None

    def map(self, op: str, *arrays: np.ndarray) -> np.ndarray | None:
        """``op`` elementwise over broadcast object arrays."""
        try:
            parts = np.broadcast_arrays(*arrays)
        except ValueError:
            return None
        out = np.empty(parts[0].shape, dtype=object)
        flat = out.reshape(-1)
        for k, elems in enumerate(zip(*(p.reshape(-1) for p in parts))):
            flat[k] = self.apply(op, *elems)
        return out

    def const(self, i: int) -> np.ndarray | None:
        return self.engine._constants.get(self.inputs[i]) if self.has(i) else None

    def ints(self, i: int, attr: str | None = None) -> list[int] | None:
        """Integers given by a constant input ``i`` or (older opsets) the attribute ``attr``."""
        if attr is not None and attr in self.attrs:
            return [int(v) for v in self.attrs[attr]]
        c = self.const(i)
        if c is None:
            return None
        return [int(v) for v in np.atleast_1d(c).reshape(-1)]

    def set(self, dims: Sequence[Dim] | None, k: int = 0, value: np.ndarray | None = None) -> None:
        if k >= len(self.outputs) or not self.outputs[k]:
            return
        self.engine.shapes[self.outputs[k]] = tuple(dims) if dims is not None else None
        if value is not None and not isinstance(value, np.ndarray):
            value = _objects([value], ())  # numpy gives an object array's single element bare
        if value is not None and value.size <= 4096:
            self.engine._values[self.outputs[k]] = value

    def apply(self, op: str, *args: Any) -> Dim:
        return self.x.apply(op, *args)

    def rank_axis(self, axis: int, rank: int) -> int:
        a = axis + rank if axis < 0 else axis
        if not 0 <= a < rank:
            raise Unsupported(f"{self.op} axis {axis} of rank {rank}")
        return a


_MOVES_DATA = {"Squeeze", "Unsqueeze", "Reshape", "Identity", "Flatten"}


def _same_shape(n: _Node) -> None:
    n.set(n.shape(0))
    if n.op in ("Ceil", "Floor") and n.inputs and n.inputs[0] in n.engine._floats:
        n.engine._floats[n.outputs[0]] = n.apply("fceil" if n.op == "Ceil" else "ffloor", n.engine._floats[n.inputs[0]])
    for k in range(1, len(n.outputs)):
        if n.outputs[k]:
            raise Unsupported(f"{n.op} with {len(n.outputs)} outputs")


def _identity(n: _Node) -> None:
    n.set(n.shape(0), value=n.value(0))


def _broadcast(n: _Node, shapes: list[tuple[Dim, ...] | None]) -> tuple[Dim, ...] | None:
    """ONNX's multidirectional broadcast, with guards where ONNX would fail."""
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)  # type: ignore[arg-type]
    out: list[Dim] = []
    for pos in range(rank):
        known: Dim = 1
        unknown = 0
        for s in shapes:
            assert s is not None
            j = pos - (rank - len(s))
            if j < 0:
                continue
            d = s[j]
            if d is None:
                unknown += 1
                continue
            if isinstance(d, int) and d == 1:
                continue
            if isinstance(known, int) and known == 1:
                known = d
            elif d is not known:
                n.engine.guard("bc", known, d, fail=True)
                known = n.apply("max", known, d)
        if unknown:
            if isinstance(known, Expr):
                n.engine.guard("ne", known, 1)  # a known size of 1 next to an unknown one is unknown
                out.append(known)
            else:
                out.append(known if known != 1 else None)
        else:
            out.append(known)
    return tuple(out)


_FLOAT_ARITH = {"Add": "f+", "Sub": "f-", "Mul": "f*", "Div": "f/"}
_ARITH = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "trunc/", "Mod": "%", "Max": "max", "Min": "min", "Equal": "eq"}


def _elementwise(n: _Node) -> None:
    shapes = [n.shape(i) for i in range(len(n.inputs)) if n.has(i)]
    out = _broadcast(n, shapes)
    present = [name for name in n.inputs if name]
    if len(present) == 2 and all(name in n.engine._carriers for name in present):
        # ONNX propagates their data as flat vectors: their sizes must be equal or 1
        sizes = [None if s is None else _product(n, s) for s in shapes]
        if sizes[0] is None or sizes[1] is None:
            raise Unsupported(f"{n.op} of shape data of unknown sizes")
        n.engine.guard("bc", sizes[0], sizes[1])
    value = None
    fop = _FLOAT_ARITH.get(n.op)
    if fop is not None and len(shapes) == 2 and n.outputs[0]:
        fa, fb = _float_scalar(n, 0), _float_scalar(n, 1)
        if fa is not None and fb is not None:
            for e in (fa, fb):
                if isinstance(e, Expr):
                    n.engine.guard("range", e)
            n.engine._floats[n.outputs[0]] = n.apply(fop, fa, fb)
    op = _ARITH.get(n.op)
    a, b = (n.value(0), n.value(1)) if len(shapes) == 2 else (None, None)
    if op is not None and a is not None and b is not None and not (n.op == "Mod" and n.attrs.get("fmod", 0)):
        if op in ("trunc/", "%"):
            for e in _flat(b):
                if isinstance(e, Expr):
                    n.engine.guard("ne", e, 0)
            if any(isinstance(e, int) and e == 0 for e in _flat(b)):
                op = None
        if op is not None:
            for e in _flat(a) + _flat(b):
                if isinstance(e, Expr):
                    n.engine.guard("range", e)
            value = n.map(op, a, b)
    n.set(out, value=value)


def _where(n: _Node) -> None:
    c, a, b = n.value(0), n.value(1), n.value(2)
    value = n.map("where", c, a, b) if c is not None and a is not None and b is not None else None
    n.set(_broadcast(n, [n.shape(0), n.shape(1), n.shape(2)]), value=value)


def _shape(n: _Node) -> None:
    s = n.shape(0)
    if s is None:
        n.set(None)
        return
    start = int(n.attrs.get("start", 0))
    end = n.attrs.get("end")
    part = s[slice(start, int(end) if end is not None else None)]
    n.set((len(part),), value=_objects(part))


def _size(n: _Node) -> None:
    s = n.shape(0)
    total: Dim = 1
    for d in s or (None,):
        total = n.apply("*", total, d)
    n.set((), value=_objects([total], ()) if s is not None else None)


def _cast(n: _Node) -> None:
    to = int(n.attrs.get("to", 0))
    value = n.value(0) if to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) else None
    x = n.shape(0)
    scalar = _float_scalar(n, 0) if x is not None and len(x) <= 1 and all(d == 1 for d in x) else None
    if value is None and scalar is not None and x is not None and to in (onnx.TensorProto.INT64,
                                                                          onnx.TensorProto.INT32):
        value = _objects([n.apply("f2i", scalar)], [1] * len(x))  # numpy's float32 -> int: toward zero
    if to == onnx.TensorProto.FLOAT and scalar is not None and n.outputs[0]:
        n.engine._floats[n.outputs[0]] = scalar
    n.set(x, value=value)
    src = n.value(0)
    if to == onnx.TensorProto.FLOAT and src is not None and src.size == 1 and n.outputs[0]:
        n.engine._floats[n.outputs[0]] = _flat(src)[0]  # an integer size as float32, for Range


def _conv_like(n: _Node, pool: bool) -> None:
    x = n.shape(0)
    if x is None:
        n.set(None)
        return
    ceil_mode = bool(n.attrs.get("ceil_mode", 0))
    spatial = len(x) - 2
    if spatial < 1:
        raise Unsupported(f"{n.op} of rank {len(x)}")
    kernel = n.attrs.get("kernel_shape")
    if pool:
        channels: Dim = x[1]
    else:
        w = n.shape(1)
        if w is None or any(not isinstance(d, int) for d in w):
            raise Unsupported("Conv weight without static dims")
        channels = w[0]
        group = int(n.attrs.get("group", 1))
        if x[1] is not None:
            n.engine.guard("eq", x[1], int(w[1]) * group, fail=True)  # type: ignore[arg-type]
        if kernel is None:
            kernel = list(w[2:])
    if kernel is None or len(kernel) != spatial:
        raise Unsupported(f"{n.op} without a kernel of rank {spatial}")
    strides = list(n.attrs.get("strides", [1] * spatial))
    dilations = list(n.attrs.get("dilations", [1] * spatial))
    pads = list(n.attrs.get("pads", [0] * (2 * spatial)))
    auto_pad = n.attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    out: list[Dim] = [x[0], channels]
    for i in range(spatial):
        d = x[2 + i]
        k = (int(kernel[i]) - 1) * int(dilations[i]) + 1
        s = int(strides[i])
        if d is None:
            out.append(None)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(n.apply("ceil//", d, s))
        elif auto_pad in ("NOTSET", "VALID"):
            padded = d if auto_pad == "VALID" else n.apply("+", d, int(pads[i]) + int(pads[i + spatial]))
            room = n.apply("-", padded, k)
            # a pool's window larger than its input is the prober's failure; a convolution's is not
            if ceil_mode:  # a window may hang over the end: the prober checks only the output
                n.engine.guard("ge", room, 0)
                out.append(n.apply("+", n.apply("ceil_pos", room, s), 1))
            else:
                # the prober checks a pool's window against its input and pads itself (``_extra_checks``)
                failing = pool and all(int(v) == 1 for v in dilations)
                n.engine.guard("ge", room, 0, fail=failing,
                               decisive=failing and (auto_pad == "NOTSET" or "pads" not in n.attrs))
                out.append(n.apply("+", n.apply("//", room, s), 1))
        else:
            raise Unsupported(f"auto_pad {auto_pad}")
    n.set(out)
    if len(n.outputs) > 1 and n.outputs[1]:
        n.set(out, 1)


def _conv(n: _Node) -> None:
    _conv_like(n, pool=False)


def _pool(n: _Node) -> None:
    if n.op == "LpPool":
        raise Unsupported("LpPool")
    _conv_like(n, pool=True)


def _global_pool(n: _Node) -> None:
    x = n.shape(0)
    n.set(None if x is None else (*x[:2], *([1] * (len(x) - 2))))


def _conv_transpose(n: _Node) -> None:
    x, w = n.shape(0), n.shape(1)
    if x is None:
        n.set(None)
        return
    if w is None or any(not isinstance(d, int) for d in w):
        raise Unsupported("ConvTranspose weight without static dims")
    if "output_shape" in n.attrs or n.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise Unsupported("ConvTranspose with output_shape or auto_pad")
    spatial = len(x) - 2
    group = int(n.attrs.get("group", 1))
    kernel = list(n.attrs.get("kernel_shape", w[2:]))
    strides = list(n.attrs.get("strides", [1] * spatial))
    dilations = list(n.attrs.get("dilations", [1] * spatial))
    pads = list(n.attrs.get("pads", [0] * (2 * spatial)))
    extra = list(n.attrs.get("output_padding", [0] * spatial))
    if x[1] is not None:
        n.engine.guard("eq", x[1], w[0])
    out: list[Dim] = [x[0], int(w[1]) * group]  # type: ignore[arg-type]
    for i in range(spatial):
        d = x[2 + i]
        k = (int(kernel[i]) - 1) * int(dilations[i]) + 1
        grown = n.apply("*", n.apply("-", d, 1), int(strides[i]))
        out.append(n.apply("+", grown, int(extra[i]) + k - int(pads[i]) - int(pads[i + spatial])))
    n.set(out)


def _matmul(n: _Node) -> None:
    a, b = n.shape(0), n.shape(1)
    if a is None or b is None:
        n.set(None)
        return
    if len(a) < 2 or len(b) < 2:
        raise Unsupported("MatMul of a vector")
    if a[-1] is not None and b[-2] is not None:
        n.engine.guard("eq", a[-1], b[-2], fail=True)
    batch = _broadcast(n, [a[:-2], b[:-2]])
    assert batch is not None
    n.set((*batch, a[-2], b[-1]))


def _gemm(n: _Node) -> None:
    a, b = n.shape(0), n.shape(1)
    if a is None or b is None:
        n.set(None)
        return
    if len(a) != 2 or len(b) != 2:
        raise Unsupported("Gemm of rank other than 2")
    m = a[1] if n.attrs.get("transA", 0) else a[0]
    k_a = a[0] if n.attrs.get("transA", 0) else a[1]
    k_b = b[1] if n.attrs.get("transB", 0) else b[0]
    cols = b[0] if n.attrs.get("transB", 0) else b[1]
    if k_a is not None and k_b is not None:
        n.engine.guard("eq", k_a, k_b)
    n.set((m, cols))


def _product(n: _Node, dims: Sequence[Dim]) -> Dim:
    total: Dim = 1
    for d in dims:
        total = n.apply("*", total, d)
    return total


def _reshape(n: _Node) -> None:
    x = n.shape(0)
    target = n.vector(1)
    allowzero = int(n.attrs.get("allowzero", 0))
    value = None
    src = n.value(0)
    if target is None:
        ts = n.shape(1)
        n.set((None,) * ts[0] if ts is not None and len(ts) == 1 and isinstance(ts[0], int) else None)
        return
    elems = list(target)
    out: list[Dim] = []
    minus = None
    for i, t in enumerate(elems):
        if t is None:
            out.append(None)
        elif isinstance(t, Expr):
            n.engine.guard("ge", t, 1)
            out.append(t)
        elif t == -1:
            if minus is not None:
                raise Unsupported("Reshape with two -1")
            minus = i
            out.append(None)
        elif t == 0 and not allowzero:
            if x is None or i >= len(x):
                raise Unsupported("Reshape copying a dim it has not")
            out.append(x[i])
        elif t < 0:
            raise Unsupported("Reshape to a negative size")
        else:
            out.append(t)
    if x is not None and all(d is not None for d in x):
        total = _product(n, x)
        if minus is not None:
            rest = _product(n, [d for i, d in enumerate(out) if i != minus])
            if rest is not None:
                n.engine.guard("ge", rest, 1)
                n.engine.guard("divides", total, rest, fail=True)
                out[minus] = n.apply("//", total, rest)
        elif all(d is not None for d in out):
            n.engine.guard("eq", total, _product(n, out), fail=True)
    elif minus is not None:
        out[minus] = None
    if src is not None and all(isinstance(t, int) for t in elems):
        try:
            value = np.reshape(src, [int(src.shape[i]) if t == 0 and not allowzero else int(t)  # type: ignore[arg-type]
                                     for i, t in enumerate(elems)])
        except (ValueError, IndexError):
            value = None
    n.set(out, value=value)


def _flatten(n: _Node) -> None:
    x = n.shape(0)
    if x is None:
        n.set(None)
        return
    axis = int(n.attrs.get("axis", 1))
    axis = axis + len(x) if axis < 0 else axis
    n.set((_product(n, x[:axis]), _product(n, x[axis:])))


def _transpose(n: _Node) -> None:
    x = n.shape(0)
    if x is None:
        n.set(None)
        return
    perm = n.attrs.get("perm")
    perm = list(perm) if perm is not None else list(reversed(range(len(x))))
    src = n.value(0)
    value = np.transpose(src, perm) if src is not None and src.ndim == len(perm) else None
    n.set(tuple(x[int(p)] for p in perm), value=value)


def _concat(n: _Node) -> None:
    shapes = [n.shape(i) for i in range(len(n.inputs)) if n.has(i)]
    values = [n.value(i) for i in range(len(n.inputs)) if n.has(i)]
    value = None
    if all(v is not None for v in values):
        try:
            value = np.concatenate([np.atleast_1d(v) for v in values if v is not None],
                                   axis=int(n.attrs.get("axis", 0)))
        except ValueError:
            value = None
    if any(s is None for s in shapes):
        n.set(None, value=value)  # ONNX needs every input's rank
        return
    rank = len(shapes[0])  # type: ignore[arg-type]
    if any(len(s) != rank for s in shapes):  # type: ignore[arg-type]
        raise Unsupported("Concat of differing ranks")
    axis = n.rank_axis(int(n.attrs.get("axis", 0)), rank)
    out: list[Dim] = []
    for pos in range(rank):
        dims = [s[pos] for s in shapes]  # type: ignore[index]
        if pos == axis:
            total: Dim = 0
            for d in dims:
                total = n.apply("+", total, d)
            out.append(total)
            continue
        first: Dim = None
        for d in dims:
            if d is None:
                continue
            if first is None:
                first = d
            elif d is not first:
                n.engine.guard("eq", first, d, fail=True)
        out.append(first)
    n.set(out, value=value)


def _split(n: _Node) -> None:
    x = n.shape(0)
    count = len(n.outputs)
    if x is None:
        for k in range(count):
            n.set(None, k)
        return
    axis = n.rank_axis(int(n.attrs.get("axis", 0)), len(x))
    sizes = n.ints(1, "split")
    if sizes is None and n.has(1):
        raise Unsupported("Split with computed sizes")
    d = x[axis]
    if sizes is None:
        if "num_outputs" in n.attrs:
            raise Unsupported("Split with num_outputs")
        if d is None:
            parts: list[Dim] = [None] * count
        else:
            n.engine.guard("divides", d, count)
            part = n.apply("//", d, count)
            parts = [part] * count
    else:
        if len(sizes) != count:
            raise Unsupported("Split sizes and outputs differ")
        if d is not None:
            n.engine.guard("eq", d, sum(sizes))
        parts = list(sizes)
    for k in range(count):
        n.set((*x[:axis], parts[k], *x[axis + 1:]), k)


def _slice(n: _Node) -> None:
    x = n.shape(0)
    if n.engine.opset < 10:
        starts, ends = n.attrs.get("starts"), n.attrs.get("ends")
        axes_list = n.attrs.get("axes")
        steps_list: list[Dim] | None = None
        starts_v = [int(v) for v in starts] if starts is not None else None
        ends_v = [int(v) for v in ends] if ends is not None else None
    else:
        starts_v, ends_v = n.vector(1), n.vector(2)  # type: ignore[assignment]
        axes_list = n.ints(3) if n.has(3) else None
        if n.has(3) and axes_list is None:
            raise Unsupported("Slice with computed axes")
        steps_list = n.vector(4) if n.has(4) else None
        if n.has(4) and steps_list is None:
            raise Unsupported("Slice with computed steps")
    src = n.value(0)
    if x is None:
        n.set(None)
        return
    if starts_v is None or ends_v is None:
        n.set((None,) * len(x))
        return
    axes = [int(a) for a in axes_list] if axes_list is not None else list(range(len(starts_v)))
    steps = steps_list if steps_list is not None else [1] * len(starts_v)
    out = list(x)
    value = None
    for start, end, a, step in zip(starts_v, ends_v, axes, steps):
        axis = n.rank_axis(a, len(x))
        if not isinstance(step, int) or step == 0:
            raise Unsupported("Slice with a computed or zero step")
        for e in (start, end):
            if isinstance(e, Expr):
                n.engine.guard("range", e)
        if isinstance(end, int):
            end = max(min(end, 2**62), -(2**62))
        if step < 0 and start != -1:
            # walking backwards from before the start, ONNX clamps to the first element where
            # Python's slice is empty: only a start inside the axis is modelled
            if not isinstance(start, int) or x[axis] is None:
                raise Unsupported("Slice backwards from a computed start")
            if start < 0:
                n.engine.guard("ge", n.apply("+", x[axis], start), 0)
        out[axis] = n.apply("slice_len", x[axis], start, end, step)
    if src is not None and all(isinstance(v, int) for v in [*starts_v, *ends_v, *steps]):
        index = [slice(None)] * src.ndim
        try:
            for start, end, a, step in zip(starts_v, ends_v, axes, steps):
                index[a] = slice(start, max(min(end, 2**62), -(2**62)), step)
            value = src[tuple(index)]
        except (IndexError, TypeError):
            value = None
    n.set(out, value=value)


def _gather(n: _Node) -> None:
    x, idx = n.shape(0), n.shape(1)
    axis = int(n.attrs.get("axis", 0))
    value = None
    src = n.value(0)
    indices = n.const(1)
    if src is not None and indices is not None and np.issubdtype(indices.dtype, np.integer):
        try:
            value = np.take(src, indices.astype(np.int64), axis=axis)
        except (IndexError, ValueError, np.exceptions.AxisError):
            value = None
    if x is None or idx is None:
        n.set(None, value=value)
        return
    a = n.rank_axis(axis, len(x))
    n.set((*x[:a], *idx, *x[a + 1:]), value=value)


def _unsqueeze(n: _Node) -> None:
    x = n.shape(0)
    axes = n.ints(1, "axes")
    if axes is None:
        raise Unsupported("Unsqueeze with computed axes")
    src = n.value(0)
    if x is None:
        n.set(None)
        return
    rank = len(x) + len(axes)
    out: list[Dim] = list(x)
    for a in sorted(ax + rank if ax < 0 else ax for ax in axes):
        out.insert(a, 1)
    value = None
    if src is not None:
        value = src
        for a in sorted(ax + rank if ax < 0 else ax for ax in axes):
            value = np.expand_dims(value, a)
    n.set(out, value=value)


def _squeeze(n: _Node) -> None:
    x = n.shape(0)
    axes = n.ints(1, "axes")
    src = n.value(0)
    if x is None:
        n.set(None)
        return
    if axes is None:
        if n.has(1):
            raise Unsupported("Squeeze with computed axes")
        if any(not isinstance(d, int) for d in x):
            raise Unsupported("Squeeze of every size-1 axis of a dynamic shape")
        axes = [i for i, d in enumerate(x) if d == 1]
    norm = {a + len(x) if a < 0 else a for a in axes}
    for a in norm:
        d = x[a]
        if d is None or isinstance(d, Expr):
            raise Unsupported("Squeeze of an axis of unknown size")
        if d != 1:
            raise Unsupported("Squeeze of an axis of size other than 1")
    out = [d for i, d in enumerate(x) if i not in norm]
    value = np.squeeze(src, axis=tuple(norm)) if src is not None else None
    n.set(out, value=value)


def _expand(n: _Node) -> None:
    x = n.shape(0)
    target = n.vector(1)
    if target is None:
        n.set(None)
        return
    for t in target:
        if isinstance(t, Expr):
            n.engine.guard("ge", t, 1)
    n.set(_broadcast(n, [x, tuple(target)]))


def _tile(n: _Node) -> None:
    x = n.shape(0)
    reps = n.vector(1)
    if x is None or reps is None or len(reps) != len(x):
        raise Unsupported("Tile with unknown repeats")
    n.set(tuple(n.apply("*", d, r) for d, r in zip(x, reps)))


def _pad(n: _Node) -> None:
    x = n.shape(0)
    if x is None:
        n.set(None)
        return
    if n.engine.opset < 11:
        pads: list[Dim] | None = [int(v) for v in n.attrs.get("pads", [])]
    else:
        pads = n.vector(1)
    if n.has(3):
        raise Unsupported("Pad with axes")
    if pads is None:
        n.set((None,) * len(x))
        return
    if len(pads) != 2 * len(x):
        raise Unsupported("Pad with pads of another rank")
    out = []
    for i, d in enumerate(x):
        for p in (pads[i], pads[i + len(x)]):
            if isinstance(p, Expr):
                n.engine.guard("range", p)
        out.append(n.apply("+", n.apply("+", d, pads[i]), pads[i + len(x)]))
    n.set(out)


def _resize(n: _Node) -> None:
    x = n.shape(0)
    if x is None:
        n.set(None)
        return
    if "axes" in n.attrs:
        raise Unsupported("Resize with axes")
    # where the scales are: Upsample's input 1 (opset 9) or attribute; Resize's input 1 or 2 (opset 11)
    upsample_at = 1 if n.engine.opset >= 9 else -1
    scales_at = upsample_at if n.op == "Upsample" else (1 if n.engine.opset < 11 else 2)
    sizes = n.vector(3) if n.op == "Resize" and n.engine.opset >= 11 and n.has(3) else None
    if sizes is not None:
        if len(sizes) != len(x):
            raise Unsupported("Resize sizes of another rank")
        for t in sizes:
            if isinstance(t, Expr):
                n.engine.guard("ge", t, 1)
        n.set(tuple(sizes))
        return
    if n.op == "Resize" and n.engine.opset >= 11 and n.has(3):
        n.set((None,) * len(x))
        return
    scales = n.const(scales_at) if scales_at >= 0 else np.asarray(n.attrs.get("scales", []), np.float32)
    if scales is None or scales.size == 0:
        if scales_at >= 0 and n.has(scales_at):
            n.set((None,) * len(x))
            return
        raise Unsupported("Resize without sizes or scales")
    if scales.size != len(x) or scales.dtype != np.float32:
        raise Unsupported("Resize scales of another rank or type")
    n.set(tuple(n.apply("scale", d, float(s)) if isinstance(d, Expr) else
                (None if d is None else _scale(d, float(s))) for d, s in zip(x, scales.reshape(-1))))


def _reduce(n: _Node) -> None:
    x = n.shape(0)
    keep = int(n.attrs.get("keepdims", 1))
    axes = n.ints(1, "axes")
    if axes is None and n.has(1):
        raise Unsupported(f"{n.op} with computed axes")
    if x is None:
        n.set(None)
        return
    if axes is None or not axes:
        if n.attrs.get("noop_with_empty_axes", 0):
            n.set(x)
            return
        axes = list(range(len(x)))
    norm = {a + len(x) if a < 0 else a for a in axes}
    out = [(1 if keep else None) if i in norm else d for i, d in enumerate(x)]
    src = n.value(0)
    value = None
    if n.op == "ReduceProd" and src is not None and norm == {0} and len(x) == 1:
        total = _product(n, _flat(src))
        value = _objects([total], (1,) if keep else ())
    n.set(out if keep else [d for i, d in enumerate(x) if i not in norm], value=value)


def _arg_reduce(n: _Node) -> None:
    x = n.shape(0)
    if x is None:
        n.set(None)
        return
    axis = n.rank_axis(int(n.attrs.get("axis", 0)), len(x))
    keep = int(n.attrs.get("keepdims", 1))
    n.set([1 if i == axis else d for i, d in enumerate(x)] if keep else [d for i, d in enumerate(x) if i != axis])


def _constant_of_shape(n: _Node) -> None:
    target = n.vector(0)
    if target is None:
        ts = n.shape(0)
        n.set((None,) * ts[0] if ts is not None and len(ts) == 1 and isinstance(ts[0], int) else None)
        return
    for t in target:
        if isinstance(t, Expr):
            n.engine.guard("ge", t, 1)
    value = None
    fill = n.attrs.get("value")
    fill_value = onnx.numpy_helper.to_array(fill) if fill is not None else np.zeros(1, np.float32)
    sizes = [t for t in target if isinstance(t, int)]
    if len(sizes) == len(target) and fill_value.size == 1 and math.prod(sizes) <= 4096 \
            and np.issubdtype(fill_value.dtype, np.integer):
        value = _objects([int(fill_value.reshape(-1)[0])] * math.prod(sizes), sizes)
    n.set(tuple(target), value=value)


def _float_scalar(n: _Node, i: int) -> Dim | float:
    """A float32 scalar input of Range: an integer size cast to float, or a constant; else None."""
    name = n.inputs[i] if n.has(i) else ""
    if name in n.engine._floats:
        return n.engine._floats[name]
    c = n.const(i)
    if c is not None and c.dtype == np.float32 and c.size == 1:
        return float(c.reshape(-1)[0])
    return None


def _range(n: _Node) -> None:
    if any(n.shape(i) != () for i in range(3)):
        raise Unsupported("Range of inputs that are not scalars")  # ONNX refuses them where it reads them
    floats = [_float_scalar(n, i) for i in range(3)]
    if all(f is not None for f in floats):
        if isinstance(floats[2], Expr):
            raise Unsupported("Range with a computed step")
        for e in floats[:2]:
            if isinstance(e, Expr):
                n.engine.guard("range", e)
        length = n.apply("frange", *floats)
        if isinstance(length, Expr):
            n.engine.guard("ge", length, 1)
        n.set((length,))
        return
    start, limit, delta = n.vector(0), n.vector(1), n.vector(2)
    if start is None or limit is None or delta is None or not (len(start) == len(limit) == len(delta) == 1):
        n.set((None,))
        return
    s, lim, d = start[0], limit[0], delta[0]
    if not isinstance(d, int) or d == 0:
        raise Unsupported("Range with a computed step")
    for e in (s, lim):
        if isinstance(e, Expr):
            n.engine.guard("range", e)
    length = n.apply("ceil//", n.apply("-", lim, s), d)
    if isinstance(length, Expr):
        n.engine.guard("ge", length, 1)
    elif length is not None and length < 0:
        length = 0
    value = None
    if isinstance(s, int) and isinstance(lim, int) and isinstance(length, int) and length <= 4096:
        value = _objects(list(range(s, lim, d)))
    n.set((length,), value=value)


def _constant(n: _Node) -> None:
    attrs = n.attrs
    value = n.engine.value(n.outputs[0])
    if "value" in attrs:
        n.set(tuple(int(d) for d in attrs["value"].dims), value=value)
    elif "value_ints" in attrs or "value_floats" in attrs:
        n.set((len(attrs["value_ints"] if "value_ints" in attrs else attrs["value_floats"]),), value=value)
    elif "value_int" in attrs or "value_float" in attrs:
        n.set((), value=value)
    else:
        raise Unsupported("a Constant of another form")


def _scatter(n: _Node) -> None:
    n.set(n.shape(0))


def _depth_space(n: _Node) -> None:
    x = n.shape(0)
    b = int(n.attrs.get("blocksize", 1))
    if x is None or len(x) != 4:
        raise Unsupported(f"{n.op} of rank other than 4")
    if n.op == "DepthToSpace":
        if x[1] is not None:
            n.engine.guard("divides", x[1], b * b)
        n.set((x[0], n.apply("//", x[1], b * b), n.apply("*", x[2], b), n.apply("*", x[3], b)))
    else:
        for d in x[2:]:
            if d is not None:
                n.engine.guard("divides", d, b)
        n.set((x[0], n.apply("*", x[1], b * b), n.apply("//", x[2], b), n.apply("//", x[3], b)))


def _layer_norm(n: _Node) -> None:
    x = n.shape(0)
    n.set(x)
    if x is not None and len(n.outputs) > 1:
        axis = n.rank_axis(int(n.attrs.get("axis", -1)), len(x))
        stats = (*x[:axis], *([1] * (len(x) - axis)))
        for k in (1, 2):
            n.set(stats, k)


def _dropout(n: _Node) -> None:
    x = n.shape(0)
    n.set(x)
    n.set(x, 1)


def _top_k(n: _Node) -> None:
    x = n.shape(0)
    if x is None:
        n.set(None)
        n.set(None, 1)
        return
    axis = n.rank_axis(int(n.attrs.get("axis", -1)), len(x))
    k = n.vector(1)
    size: Dim = None
    if k is not None and len(k) == 1:
        size = k[0]
        if x[axis] is not None and size is not None:
            n.engine.guard("ge", n.apply("-", x[axis], size), 0, fail=True)  # fewer elements than k
        if isinstance(size, Expr):
            n.engine.guard("ge", size, 1)
    out = (*x[:axis], size, *x[axis + 1:])
    n.set(out)
    n.set(out, 1)


def _indices_shape(n: _Node) -> None:
    """GatherElements: the output has the indices' shape (ranks must agree)."""
    x, idx = n.shape(0), n.shape(1)
    if x is not None and idx is not None and len(x) != len(idx):
        raise Unsupported(f"{n.op} of differing ranks")
    n.set(idx)


def _grid_sample(n: _Node) -> None:
    x, grid = n.shape(0), n.shape(1)
    if x is None or grid is None:
        n.set(None)
        return
    if len(x) != len(grid) or len(x) < 3:
        raise Unsupported("GridSample of unexpected ranks")
    if x[0] is not None and grid[0] is not None:
        n.engine.guard("eq", x[0], grid[0])
    n.set((x[0], x[1], *grid[1:-1]))


def _einsum(n: _Node) -> None:
    equation = n.attrs.get("equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    if "..." in equation or "->" not in equation:
        raise Unsupported("Einsum with an ellipsis or no output")
    lhs, rhs = equation.split("->")
    terms = lhs.split(",")
    shapes = [n.shape(i) for i in range(len(terms))]
    if any(s is None for s in shapes):
        n.set(None)
        return
    sizes: dict[str, Dim] = {}
    for term, shape in zip(terms, shapes):
        assert shape is not None
        if len(term) != len(shape):
            raise Unsupported("Einsum term and rank differ")
        for letter, d in zip(term, shape):
            known = sizes.get(letter)
            if letter not in sizes or known is None:
                sizes[letter] = d
            elif d is not None and d is not known and not (isinstance(d, int) and d == 1):
                n.engine.guard("eq", known, d)
    n.set(tuple(sizes[c] for c in rhs))


_SAME = ["Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Log", "Neg", "Abs", "Floor", "Ceil", "Round",
    "Reciprocal", "Softmax", "LogSoftmax", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Gelu",
    "Softplus", "Softsign", "Clip", "Not", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
    "Mish", "IsNaN", "IsInf", "Celu", "ThresholdedRelu", "Shrink", "CumSum", "Trilu", "PRelu",
    "BatchNormalization", "InstanceNormalization", "GroupNormalization", "LRN", "MeanVarianceNormalization",
    "Hardmax", "CastLike"]
_BROADCAST = ["Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min", "Sum", "Mean", "BitShift"]

_HANDLERS: dict[str, Callable[[_Node], None]] = {
    **{op: _same_shape for op in _SAME},
    **{op: _elementwise for op in _BROADCAST},
    "Identity": _identity, "Where": _where, "Shape": _shape, "Size": _size, "Cast": _cast,
    "Conv": _conv, "ConvTranspose": _conv_transpose, "MaxPool": _pool, "AveragePool": _pool, "LpPool": _pool,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool, "MatMul": _matmul, "Gemm": _gemm,
    "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Concat": _concat, "Split": _split,
    "Slice": _slice, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Expand": _expand,
    "Tile": _tile, "Pad": _pad, "Resize": _resize, "Upsample": _resize,
    **{op: _reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
                              "ReduceL1", "ReduceSumSquare", "ReduceLogSumExp")},
    "ArgMax": _arg_reduce, "ArgMin": _arg_reduce, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "Constant": _constant, "ScatterND": _scatter, "ScatterElements": _scatter,
    "DepthToSpace": _depth_space, "SpaceToDepth": _depth_space, "LayerNormalization": _layer_norm,
    "Dropout": _dropout, "GridSample": _grid_sample, "Einsum": _einsum, "TopK": _top_k,
    "GatherElements": _indices_shape,
}
