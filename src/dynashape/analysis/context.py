"""The state the rules look at: the working graph, the export shape S0, and probes at S0 and S1.

S0 is the shape the model was exported at; S1 differs from it in every dynamic axis and stays on
a power-of-two lattice (spatial dims doubled, batch + 1). A value whose shape follows the input
differs between the two probes; a value baked from the export shape does not.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import onnx
import onnx_ir as ir

from dynashape.analysis.probe import Dims, Probe, Prober
from dynashape.model import InputInfo, graph_inputs
from dynashape.shapes import Shape, ShapeMap

log = logging.getLogger(__name__)
T = TypeVar("T")

# ops whose output has the spatial size of (one of) their inputs: a join partner is found
# through them, and a tensor's size is traced up through them when a probe lost it
SAME_SIZE_UNARY = {
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Clip",
    "Identity", "Cast", "BatchNormalization", "InstanceNormalization", "Dropout", "Softmax",
    "Neg", "Abs", "Exp", "Log", "Sqrt", "Erf", "Gelu", "Mish", "Softplus", "PRelu", "Not",
}
JOINS = {"Add", "Sub", "Mul", "Div", "Concat", "Sum", "Max", "Min", "Mean", "Where", "Pow"}
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


def is_standard(node: ir.Node | onnx.NodeProto) -> bool:
    """Is this an ONNX operator (not a custom-domain op that only shares its op_type's name,
    as com.microsoft's Gelu or a mutated com.example::Reshape)?"""
    return node.domain in STANDARD_DOMAINS


def second_shape(s0: ShapeMap, inputs: list[InputInfo]) -> ShapeMap:
    """S1: every dynamic spatial dim doubled, a dynamic batch + 1; fixed dims kept."""
    s1: ShapeMap = {}
    for info in inputs:
        shape = list(s0[info.name])
        for axis in info.dynamic_axes:
            if axis == 0 and info.rank >= 3:
                shape[axis] = shape[axis] + 1
            else:
                shape[axis] = shape[axis] * 2
        s1[info.name] = tuple(shape)
    return s1


@dataclass
class Context:
    """One model under analysis. ``refresh()`` after every rewrite of ``model``."""

    model: ir.Model
    inputs: list[InputInfo]
    s0: ShapeMap
    s1: ShapeMap
    proto: onnx.ModelProto
    prober: Prober
    # p0 and p1 of the prober they were asked of (the rules ask for them thousands of times)
    _probes: dict[str, tuple[Prober, ShapeMap, Probe]] = field(default_factory=dict, init=False, repr=False,
                                                              compare=False)
    # what ``memo`` keeps, and the prober it was computed with (a refresh makes a new one)
    _memo: dict[tuple[str, int], tuple[ir.Node, Any]] = field(default_factory=dict, init=False, repr=False,
                                                              compare=False)
    _memo_prober: Prober | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def create(cls, proto: onnx.ModelProto, s0: ShapeMap) -> Context:
        model = ir.serde.deserialize_model(proto)
        inputs = graph_inputs(proto)
        return cls(model, inputs, s0, second_shape(s0, inputs), proto, Prober(proto))

    def refresh(self) -> None:
        if not _in_order(self.model.graph):  # rewrites insert before their node: usually still in order
            self.model.graph.sort()
        self.proto = ir.serde.serialize_model(self.model)
        # windows away from the rewrite recur; the nodes it left as they were are not read again
        self.prober = Prober(self.proto, self.prober.inference_cache, previous=self.prober)
        self._memo.clear()

    def memo(self, purpose: str, node: ir.Node, make: Callable[[], T]) -> T:
        """``make()``, computed once per node and ``purpose`` until the graph changes: the result of
        an analysis that several rules make of the same node alike (it must depend only on the
        graph and the probes, and callers must not change it). Forgotten at ``refresh`` (after
        every rewrite), as the probes are."""
        if self._memo_prober is not self.prober:
            self._memo.clear()
            self._memo_prober = self.prober
        key = (purpose, id(node))
        found = self._memo.get(key)
        if found is not None and found[0] is node:  # the node is kept, so its id is not reused
            return cast(T, found[1])
        value = make()
        self._memo[key] = (node, value)
        return value

    def _at(self, which: str, shapes: ShapeMap) -> Probe:
        found = self._probes.get(which)
        if found is None or found[0] is not self.prober or found[1] is not shapes:
            found = self._probes[which] = (self.prober, shapes, self.prober.at(shapes))
        return found[2]

    @property
    def p0(self) -> Probe:
        return self._at("p0", self.s0)

    @property
    def p1(self) -> Probe:
        return self._at("p1", self.s1)

    @property
    def opset(self) -> int:
        return int(self.model.opset_imports.get("", 17))

    def nodes(self, *op_types: str) -> Iterator[ir.Node]:
        for node in list(self.model.graph):
            if (not op_types or node.op_type in op_types) and is_standard(node):
                yield node

    def dims(self, value: ir.Value | None, probe: Probe) -> Dims | None:
        if value is None or not value.name:
            return None
        return traced_dims(value, probe)

    def value(self, value: ir.Value | None, probe: Probe) -> np.ndarray | None:
        if value is None or not value.name:
            return None
        if value.const_value is not None and value.name not in probe.values:
            try:
                return value.const_value.numpy()
            except Exception:  # external or odd tensors: unknown
                return None
        return probe.value(value.name)

    def dynamic_axes_of(self, value: ir.Value) -> list[int]:
        d0, d1 = self.dims(value, self.p0), self.dims(value, self.p1)
        if d0 is None or d1 is None or len(d0) != len(d1):
            return []
        return [i for i, (a, b) in enumerate(zip(d0, d1)) if a is not None and b is not None and a != b]


def _in_order(graph: ir.Graph) -> bool:
    """Does every node come after the producers of its inputs (and has none a subgraph, whose outer
    references only ``Graph.sort`` follows)? A linear pass, where sorting costs a tenth of a rewrite
    round on a 5,000-node graph."""
    seen: set[ir.Value] = set()
    for node in graph:
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return False
        for value in node.inputs:
            if value is not None and value.producer() is not None and value not in seen:
                return False
        seen.update(node.outputs)
    return True


def traced_dims(value: ir.Value, probe: Probe) -> Dims | None:
    """The value's dims in the probe; if lost past a failure, those of a same-size ancestor."""
    seen = 0
    current: ir.Value | None = value
    while current is not None and seen < 64:
        dims = probe.shape(current.name or "")
        if dims is not None and all(d is not None for d in dims):
            return dims
        producer = current.producer()
        if producer is None:
            return dims
        if is_standard(producer) and (producer.op_type in SAME_SIZE_UNARY or producer.op_type in JOINS - {"Concat"}):
            rank = len(dims) if dims else None
            # constants (initializers or Constant nodes) broadcast: only a tensor input has the
            # output's size; among those, the one of the output's rank, else the highest rank
            tensors = [
                inp for inp in producer.inputs
                if inp is not None and inp.const_value is None
                and not (inp.producer() is not None and inp.producer().op_type == "Constant")  # type: ignore[union-attr]
            ]
            ranked = [(inp, probe.shape(inp.name or "")) for inp in tensors]
            same = [inp for inp, cand in ranked if cand is not None and rank is not None and len(cand) == rank]
            known = sorted((c for c in ranked if c[1] is not None), key=lambda c: -len(c[1] or ()))
            if same:
                current = same[0]
            elif known:
                current = known[0][0]
            else:
                current = tensors[0] if tensors else None
        else:
            return dims
        seen += 1
    return None


def join_partners(
    value: ir.Value, *, through_slices: bool = False, keep_axes: Collection[int] | None = None
) -> list[ir.Value]:
    """Tensors this value is joined with (Add/Concat/Mul ...), following same-size unary ops
    (and, with ``through_slices``, further slices of it: ``x[:, :, :h]`` then ``[..., :w]``).
    ``keep_axes`` (with ``through_slices``): follow only slices whose constant ``axes`` leave
    these axes whole, as a channel slice ``up[:, :16]`` leaves the spatial axes."""
    partners: list[ir.Value] = []
    frontier = [value]
    visited: set[int] = set()
    while frontier:
        v = frontier.pop()
        if id(v) in visited:
            continue
        visited.add(id(v))
        for use in v.uses():
            node = use.node
            if not is_standard(node):
                continue
            if node.op_type in SAME_SIZE_UNARY or (
                    through_slices and node.op_type == "Slice" and use.idx == 0
                    and (keep_axes is None or _slices_only_other_axes(node, keep_axes))):
                frontier.extend(o for o in node.outputs[:1] if o is not None)
            elif node.op_type in JOINS:
                for i, other in enumerate(node.inputs):
                    if i != use.idx and other is not None and other.const_value is None:
                        partners.append(other)
    return partners


def _slices_only_other_axes(node: ir.Node, keep: Collection[int]) -> bool:
    """Does this ``Slice`` provably cut none of the ``keep`` axes (constant ``axes``, known rank)?"""
    data = node.inputs[0]
    rank = data.shape.rank() if data is not None and data.shape is not None else None
    if len(node.inputs) < 3:
        return False
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        axes = constant_ints(node.inputs[3])
    else:  # no axes input: the first len(starts) axes
        starts = constant_ints(node.inputs[1])
        axes = list(range(len(starts))) if starts is not None else None
    if axes is None or (rank is None and any(a < 0 for a in [*axes, *keep])):
        return False  # a negative axis needs the rank to say which it is
    return not {a % rank if rank else a for a in axes} & {a % rank if rank else a for a in keep}


def constant_ints(value: ir.Value | None) -> list[int] | None:
    """The integers of an initializer or ``Constant`` output; None if it is computed."""
    if value is None:
        return None
    tensor = value.const_value
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Constant":
        attr = producer.attributes.get("value")
        tensor = attr.as_tensor() if attr is not None else None
    if tensor is None:
        return None
    try:
        return [int(v) for v in np.atleast_1d(tensor.numpy()).reshape(-1)]
    except Exception:  # external or odd tensors: unknown
        return None


def is_descendant(value: ir.Value, of: ir.Node, limit: int = 100_000) -> bool:
    """Does ``value`` depend on any output of ``of``?"""
    stack = [value]
    seen: set[int] = set()
    while stack and len(seen) < limit:
        v = stack.pop()
        producer = v.producer()
        if producer is None or id(producer) in seen:
            continue
        if producer is of:
            return True
        seen.add(id(producer))
        stack.extend(i for i in producer.inputs if i is not None)
    return False


def const_i64(graph: ir.Graph, name: str, values: list[int] | np.ndarray) -> ir.Value:
    """Register a 1-D int64 initializer with a unique name."""
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    taken = set(graph.initializers)
    unique = name
    k = 1
    while unique in taken:
        unique = f"{name}_{k}"
        k += 1
    value = ir.Value(name=unique, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(arr, name=unique))
    graph.register_initializer(value)
    return value


def fmt(shape: Shape | Dims | None) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape)


# ops whose output is not a function of their inputs: never folded, never regenerated
NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}


@dataclass
class Origin:
    """How a value is computed: only from constants ("constant"), from some tensor's Shape
    ("shape"), or from data ("data")."""

    kind: str
    nodes: list[ir.Node]  # the nodes computing it (constant kind), nearest first
    why: str = ""


def origin_of(value: ir.Value, max_nodes: int = 256) -> Origin:
    """Walk up from ``value``: a graph input, a custom or random op, control flow or more than
    ``max_nodes`` nodes make it data; a ``Shape``/``Size`` of a real tensor makes it shape-derived."""
    nodes: list[ir.Node] = []
    seen: set[int] = set()
    queue: deque[ir.Value] = deque([value])
    kind, why = "constant", ""
    while queue:
        v = queue.popleft()
        if v.const_value is not None:
            continue
        producer = v.producer()
        if producer is None:
            return Origin("data", [], f"it depends on graph input {v.name!r}")
        if id(producer) in seen:
            continue
        seen.add(id(producer))
        if producer.op_type in ("Shape", "Size"):
            src = producer.inputs[0]
            if src is None or src.const_value is None:
                kind, why = "shape", f"it is computed from {producer.op_type}({src.name if src else '?'})"
                continue
        if producer.domain not in ("", "ai.onnx"):
            return Origin("data", [], f"it goes through custom op {producer.domain}::{producer.op_type}")
        if producer.op_type in NONDETERMINISTIC:
            return Origin("data", [], f"it goes through random op {producer.op_type}")
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in producer.attributes.values()):
            return Origin("data", [], f"it goes through control flow ({producer.op_type})")
        nodes.append(producer)
        if len(nodes) > max_nodes:
            return Origin("data", [], f"it is computed by more than {max_nodes} nodes")
        queue.extend(i for i in producer.inputs if i is not None)
    return Origin(kind, nodes if kind == "constant" else [], why)


# ------------------------------------------------------------------------------------- opaque ops


@dataclass(frozen=True)
class OpaqueOp:
    """A node ONNX shape inference knows nothing about (a custom-domain op, com.microsoft's
    contrib ops): the shapes of its outputs, and of everything computed from them, are unknown."""

    node: str
    op_type: str
    domain: str
    downstream: tuple[str, ...]  # the nodes computed from its outputs, in graph order
    outputs: tuple[str, ...]  # the graph outputs among them (or its own)

    @property
    def qualified(self) -> str:
        return f"{self.domain}::{self.op_type}"


@dataclass(frozen=True)
class UncheckedRegion:
    """The part of a graph no rule can see into: every node downstream of an opaque op."""

    roots: tuple[OpaqueOp, ...]  # opaque ops that are not themselves downstream of another one
    opaque: tuple[OpaqueOp, ...]  # all of them
    nodes: frozenset[str]  # names of the opaque ops and of every node after one
    outputs: tuple[str, ...]  # graph outputs inside the region

    def __bool__(self) -> bool:
        return bool(self.opaque)

    def describe(self) -> str:
        """One line for the lattice and the reports: why the analysis is partial."""
        ops = sorted({o.qualified for o in self.opaque})
        shown = ", ".join(ops[:4]) + (f" and {len(ops) - 4} more" if len(ops) > 4 else "")
        outs = f", graph output(s) {', '.join(self.outputs[:4])}" if self.outputs else ""
        return (f"partial: the graph from {shown} on ({len(self.nodes)} node(s){outs}) was not checked, "
                "ONNX shape inference does not know those ops")


def has_shape_inference(node: onnx.NodeProto, functions: Collection[tuple[str, str]] = ()) -> bool:
    """Does ONNX shape inference know this op (a standard schema or a model-local function)?"""
    domain = "" if node.domain == "ai.onnx" else node.domain
    if (node.domain, node.op_type) in functions:
        return True
    try:
        return bool(onnx.defs.has(node.op_type, domain))
    except Exception:  # an odd domain string: not a known schema
        return False


def unchecked_region(model: onnx.ModelProto) -> UncheckedRegion:
    """The opaque ops of the main graph and everything downstream of them."""
    functions = {(f.domain, f.name) for f in model.functions}
    nodes = list(model.graph.node)
    opaque_idx = [i for i, n in enumerate(nodes) if not has_shape_inference(n, functions)]
    if not opaque_idx:
        return UncheckedRegion((), (), frozenset(), ())
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in set(n.input):
            if name:
                consumers.setdefault(name, []).append(i)
    graph_outputs = [o.name for o in model.graph.output]

    def below(start: int) -> set[int]:
        seen = {start}
        stack = [start]
        while stack:
            for out in nodes[stack.pop()].output:
                for j in consumers.get(out, ()):
                    if j not in seen:
                        seen.add(j)
                        stack.append(j)
        return seen

    def label(i: int) -> str:
        return nodes[i].name or (nodes[i].output[0] if nodes[i].output else f"#{i}")

    opaque: list[OpaqueOp] = []
    region: set[int] = set()
    inside_other: set[int] = set()
    for i in opaque_idx:
        down = below(i)
        region |= down
        inside_other |= down - {i}
        produced = {o for j in down for o in nodes[j].output}
        opaque.append(OpaqueOp(
            node=label(i), op_type=nodes[i].op_type, domain=nodes[i].domain,
            downstream=tuple(label(j) for j in sorted(down - {i})),
            outputs=tuple(o for o in graph_outputs if o in produced),
        ))
    roots = tuple(op for i, op in zip(opaque_idx, opaque) if i not in inside_other)
    produced_all = {o for j in region for o in nodes[j].output}
    return UncheckedRegion(
        roots=roots, opaque=tuple(opaque), nodes=frozenset(label(j) for j in region),
        outputs=tuple(o for o in graph_outputs if o in produced_all),
    )
