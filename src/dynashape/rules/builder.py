"""The one way a rule changes the graph: :class:`RewriteBuilder`.

A rewrite gets the node its finding names, the finding's plan and a builder. The builder names new
nodes uniquely (a node ``N`` gives ``N_output``), makes constants (initializers with unique names),
queues new nodes and inserts them before a node, replaces a value's uses, removes what a rewrite
left dead, finds values and nodes by the names plans hold, and evaluates constant-only subgraphs.
The pass manager (``dynashape.pipeline.passes``) makes one per round and re-probes after the round.

Names: a node's name is unique among the graph's nodes and the nodes queued here; an initializer's
among the initializers. These are the names dynashape always gave, so a fixed model does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnx import helper


class RewriteBuilder:
    """Builds new nodes and constants in ``model``'s graph; ``insert_before`` puts the queued nodes
    in. ``proto`` is the model as it was when the round began (for evaluating constants)."""

    def __init__(self, model: ir.Model, proto: onnx.ModelProto) -> None:
        self.model = model
        self.proto = proto
        self._pending: list[ir.Node] = []

    @property
    def graph(self) -> ir.Graph:
        return self.model.graph

    @property
    def opset(self) -> int:
        return int(self.model.opset_imports.get("", 17))

    @property
    def pending(self) -> bool:
        """Are there nodes made but not inserted yet?"""
        return bool(self._pending)

    # ------------------------------------------------------------------------------ names

    def node_name(self, base: str, *, among_queued: bool = True) -> str:
        """``base``, or ``base_1``, ``base_2``... : the first no node of the graph (nor, with
        ``among_queued``, a node made here and not inserted yet) is called."""
        taken = {n.name for n in self.graph}
        if among_queued:
            taken.update(n.name for n in self._pending)
        name, k = base, 1
        while name in taken:
            name = f"{base}_{k}"
            k += 1
        return name

    def initializer_name(self, base: str, *, avoid_node_outputs: bool = False) -> str:
        """``base`` made unique among the initializers (and the nodes' outputs, if asked)."""
        taken: set[str | None] = set(self.graph.initializers)
        if avoid_node_outputs:
            taken.update(v.name for n in self.graph for v in n.outputs)
        name, k = base, 1
        while name in taken:
            name = f"{base}_{k}"
            k += 1
        return name

    # ------------------------------------------------------------------------------ making

    def node(self, op: str, inputs: Sequence[ir.Value | None], *, name: str, attributes: dict[str, Any] | None = None,
             exact_name: bool = False) -> ir.Node:
        """A new node (queued for ``insert_before``) named ``name`` made unique; its output ``<name>_output``."""
        node = ir.node(op, list(inputs), attributes=attributes or None,
                       name=name if exact_name else self.node_name(name))
        node.outputs[0].name = f"{node.name}_output"
        self._pending.append(node)
        return node

    def op(self, op: str, inputs: Sequence[ir.Value | None], *, name: str, **attributes: Any) -> ir.Value:
        """The output of a new single-output node."""
        return self.node(op, inputs, name=name, attributes=attributes).outputs[0]

    def const(self, name: str, values: Any, *, dtype: np.dtype | type = np.int64, scalar: bool = False,
              avoid_node_outputs: bool = False) -> ir.Value:
        """A new initializer holding ``values`` (a list of ints gives a 1-D int64 tensor; ``scalar``: 0-D)."""
        arr = np.asarray(values, dtype=dtype)
        arr = arr.reshape(()) if scalar else arr
        return self.initializer(name, arr, avoid_node_outputs=avoid_node_outputs)

    def initializer(self, name: str, arr: np.ndarray, *, avoid_node_outputs: bool = False) -> ir.Value:
        """A new initializer holding ``arr`` as it is (any rank)."""
        unique = self.initializer_name(name, avoid_node_outputs=avoid_node_outputs)
        value = ir.Value(name=unique, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                         const_value=ir.tensor(arr, name=unique))
        self.graph.register_initializer(value)
        return value

    def insert_before(self, anchor: ir.Node) -> None:
        """Put the nodes made since the last insertion into the graph, in order, before ``anchor``."""
        if self._pending:
            self.graph.insert_before(anchor, self._pending)
            self._pending = []

    # ------------------------------------------------------------------------------ changing

    def replace_uses(self, old: ir.Value, new: ir.Value, *, take_name: bool = True) -> None:
        """Make every consumer of ``old`` (and the graph outputs) use ``new``. With ``take_name``
        ``new`` takes ``old``'s name, so plans and the graph's outputs that name it still find it."""
        if not take_name:
            ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
            return
        name = old.name
        if new.type is None:
            new.type = old.type
        if new.shape is None and old.is_graph_output():
            new.shape = old.shape  # a graph output must declare its shape (its rank at least)
        # a graph output is replaced too (onnx_ir refuses to otherwise): a pool or resize can be the last node
        ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        old.name = f"{name}__replaced"
        new.name = name

    def remove(self, node: ir.Node) -> None:
        self.graph.remove(node, safe=True)

    def remove_dead(self, nodes: Iterable[ir.Node], values: Iterable[ir.Value] = ()) -> None:
        """Remove those of ``nodes`` (and initializers among ``values`` and the nodes' inputs) that
        nothing uses any more, repeatedly: what a rewrite left behind."""
        graph = self.graph
        outputs = {id(v) for v in graph.outputs}
        candidates = list(nodes)
        inits = list(values)
        changed = True
        while changed:
            changed = False
            for node in list(candidates):
                if node.graph is not graph:
                    candidates.remove(node)
                    continue
                if any(o is not None and (o.uses() or id(o) in outputs) for o in node.outputs):
                    continue
                inits.extend(i for i in node.inputs if i is not None)
                graph.remove(node, safe=True)
                candidates.remove(node)
                changed = True
        graph_inputs = {id(v) for v in graph.inputs}
        for v in inits:
            name = v.name or ""
            if (name in graph.initializers and graph.initializers[name] is v and not v.uses()
                    and id(v) not in outputs and id(v) not in graph_inputs):
                graph.initializers.pop(name)

    def remove_unused_nodes(self) -> None:
        """Drop every node nothing reads any more (what a fold left behind)."""
        ir_passes.RemoveUnusedNodesPass()(self.model)

    # ------------------------------------------------------------------------------ finding

    def find_node(self, name: str) -> ir.Node | None:
        return next((n for n in self.graph if n.name == name), None)

    def producer_of(self, output: str) -> ir.Node | None:
        """The node that makes the tensor ``output`` (tensor names are unique; node names may be
        empty or repeated in hand-made graphs)."""
        for node in self.graph:
            if any(o is not None and o.name == output for o in node.outputs):
                return node
        return None

    def find_value(self, name: str) -> ir.Value | None:
        """A graph input or node output by name (initializers are not looked at)."""
        for v in self.graph.inputs:
            if v.name == name:
                return v
        for node in self.graph:
            for out in node.outputs:
                if out is not None and out.name == name:
                    return out
        return None

    def fold(self, value_name: str, node_outputs: Iterable[str]) -> np.ndarray:
        """Evaluate one constant-only subgraph of the model (its nodes given by their outputs)."""
        return fold_value(self.proto, value_name, set(node_outputs))


def fold_value(proto: onnx.ModelProto, value_name: str, node_outputs: set[str]) -> np.ndarray:
    """Evaluate one constant-only subgraph of ``proto`` (its nodes given by their outputs)."""
    from onnx.reference import ReferenceEvaluator

    nodes = [n for n in proto.graph.node if set(n.output) & node_outputs]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in proto.graph.initializer if t.name in used]
    graph = helper.make_graph(nodes, "fold", [], [helper.make_empty_tensor_value_info(value_name)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    (out,) = ReferenceEvaluator(model).run([value_name], {})
    return np.asarray(out)
