"""Differential detection: what only the PyTorch module knows about other shapes.

* :func:`differential_export` exports the module at the export shape S0, at a second shape S1
  (every dynamic axis grown) and at a few shapes chosen to fall in other divisibility classes
  (:mod:`dynashape.analysis.second_shapes`), aligns each graph with the S0 one, and reports every
  constant, initializer or attribute whose value changed: each one is a value the exporter
  baked from the input shape. Nodes present in one graph and not the other are Python control
  flow on a size (DS009): one finding per branch (source line), with the shapes where it flips.
* :func:`first_divergent_node` takes a model that fails or is wrong at some shape and names
  the first node whose output stops agreeing with the reference (PyTorch, or a reference ONNX
  graph with the same structure), or the node ONNX Runtime failed on.
"""

from __future__ import annotations

import difflib
import logging
import os
import pickle
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from dynashape.analysis.second_shapes import PlannedShape, plan_class_shapes, pow2_part, shape_classes
from dynashape.backends.ort import OrtRunner, RunError
from dynashape.errors import DynashapeError
from dynashape.export import default_dynamic, display_path, export_module, is_library_frame, load_module, run_child
from dynashape.findings import Finding, Lattice, Severity
from dynashape.model import DIGESTED, digested, graph_inputs, lighten
from dynashape.shapes import Shape, ShapeMap, format_shape, format_shapes, parse_shapes

if TYPE_CHECKING:
    import torch

    from dynashape.export import ExportResult

log = logging.getLogger(__name__)

# -------------------------------------------------------------------- rules by consumer

# (op, input slot) -> rule for a constant input; op -> rule for a changed attribute.
_INPUT_RULES: dict[tuple[str, int], str] = {
    ("Resize", 1): "DS002", ("Resize", 2): "DS002", ("Resize", 3): "DS002",
    ("Upsample", 1): "DS002",
    ("Reshape", 1): "DS005",
    ("Split", 1): "DS006",
    ("ConstantOfShape", 0): "DS007",
    ("Range", 0): "DS007", ("Range", 1): "DS007", ("Range", 2): "DS007",
    ("Expand", 1): "DS012", ("Tile", 1): "DS012",
    ("Pad", 1): "DS013",
    ("Slice", 1): "DS014", ("Slice", 2): "DS014",
}
_ATTR_RULES: dict[str, str] = {
    "AveragePool": "DS001", "MaxPool": "DS001", "LpPool": "DS001",
    "Split": "DS006", "Pad": "DS013", "Slice": "DS014", "Resize": "DS002", "Upsample": "DS002",
}
# ops that only carry a shape tensor along (Concat of sizes, Cast, Unsqueeze, ...); a changed
# integer constant is followed through them to the op that uses the shape.
_SHAPE_PLUMBING = {
    "Concat", "Cast", "Unsqueeze", "Squeeze", "Gather", "Mul", "Add", "Sub", "Div", "Identity",
    "Floor", "Ceil", "Max", "Min", "Abs", "Neg", "Slice", "Reshape",
    # the legacy exporter turns expand(b, -1, -1) into Where(shape == -1, 1, shape) before Expand
    "Equal", "Where",
}
_PLUMBING_DEPTH = 8

_WHY = {
    "DS001": "pooling kernel taken from the input size",
    "DS002": "resize target size frozen from the export shape",
    "DS005": "reshape target with sizes frozen from the export shape",
    "DS006": "split sizes frozen from the export shape",
    "DS007": "tensor sized from the input shape at export",
    "DS010": "a value computed from the input size in Python",
    "DS012": "expand/tile sizes frozen from the export shape",
    "DS013": "padding computed in Python from the export shape",
    "DS014": "slice bounds frozen from the export shape",
}
_SOURCE_FIX = {
    "DS001": "pool over the whole axis with a reduction (x.mean(dim, keepdim=True)) or "
    "adaptive_avg_pool2d instead of a kernel read from x.shape",
    "DS002": "pass size=skip.shape[-2:] (tensors, not Python ints) or scale_factor",
    "DS005": "use -1 or x.flatten(start_dim) instead of Python-int sizes in view/reshape",
    "DS006": "split with sizes computed from tensors, or use chunk/narrow along the axis",
    "DS007": "build the tensor with torch.zeros_like / new_zeros(x.shape) or arange(x.shape[i])",
    "DS010": "keep the size a tensor (x.shape[i] without int()/.item()/math on it)",
    "DS012": "expand with -1 for the axes that follow the input",
    "DS013": "compute the padding with tensor ops on x.shape, or pad to a fixed multiple",
    "DS014": "slice with open ends (x[:, :, :]) or bounds taken from another tensor's shape",
}


# -------------------------------------------------------------------- results


@dataclass
class ExportRun:
    """One export of the differential run: the shape, why it was chosen, and what it cost."""

    shapes: ShapeMap
    reason: str
    status: str  # "exported" | "failed" | "skipped"
    seconds: float = 0.0
    nodes: int | None = None
    message: str = ""
    branches: list[str] = field(default_factory=list)  # branches (labels) that differ from S0 here

    def to_json(self) -> dict[str, Any]:
        return {"shape": format_shapes(self.shapes), "reason": self.reason, "status": self.status,
                "seconds": round(self.seconds, 2), "nodes": self.nodes, "message": self.message,
                "branches": self.branches}


@dataclass
class Branch:
    """Nodes present in the graph at some shapes and absent at others: one Python `if` on a size."""

    label: str  # the source line of the nodes (or their module) that come and go
    sources: list[str]
    module: str
    node: str
    op: str
    in_s0: bool  # the nodes are in the S0 graph (the other shapes lack them)
    flips_at: list[str] = field(default_factory=list)
    nodes_s0: list[str] = field(default_factory=list)
    nodes_other: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)


@dataclass
class DifferentialResult:
    """Exports of one module at S0 and at second shapes, and what differed from S0."""

    s0: ShapeMap
    s1: ShapeMap
    findings: list[Finding]
    export_s0: ExportResult
    export_s1: ExportResult
    nodes_s0: int
    nodes_s1: int
    aligned: int
    runs: list[ExportRun] = field(default_factory=list)
    branches: list[Branch] = field(default_factory=list)
    classes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def same_structure(self) -> bool:
        """Every second export has the S0 graph's structure (no size branch seen)."""
        return not self.branches and self.nodes_s0 == self.nodes_s1 and self.aligned == self.nodes_s0

    @property
    def exports(self) -> int:
        return sum(1 for r in self.runs if r.status != "skipped")

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    def to_json(self) -> dict[str, Any]:
        return {
            "exports": self.exports, "seconds": round(self.seconds, 2), "classes": self.classes,
            "runs": [r.to_json() for r in self.runs],
            "branches": [
                {"source": b.label, "sources": b.sources, "module": b.module, "node": b.node, "op": b.op,
                 "in_export_shape_graph": b.in_s0, "flips_at": b.flips_at, "ops": b.ops}
                for b in self.branches
            ],
        }


@dataclass
class DivergentNode:
    """The first node whose output disagrees with the reference (or that failed to run)."""

    node: str
    op: str
    module_path: str
    kind: str  # "error" (the runtime failed there), "shape" or "value"
    message: str
    output: str = ""
    max_error: float | None = None
    shape: Shape | None = None
    expected_shape: Shape | None = None
    source: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = f" (module {self.module_path})" if self.module_path else ""
        src = f" at {self.source}" if self.source else ""
        return f"{self.node} [{self.op}]{where}{src}: {self.message}"


# -------------------------------------------------------------------- S1


def largest_pow2_divisor(n: int, cap: int = 64) -> int:
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def choose_s1(s0: ShapeMap, dynamic: dict[str, list[int]]) -> ShapeMap:
    """A second shape on the lattice that differs in every dynamic axis.

    Batch (axis 0) grows by one; any other dynamic axis grows by twice the largest power of
    two (≤ 64) that divides it, so a model needing multiples of its stride still accepts it.
    """
    s1: ShapeMap = {}
    for name, shape in s0.items():
        dims = list(shape)
        for axis in dynamic.get(name, []):
            dims[axis] = dims[axis] + 1 if axis == 0 else dims[axis] + 2 * largest_pow2_divisor(dims[axis])
        s1[name] = tuple(dims)
    return s1


# -------------------------------------------------------------------- graph helpers


class _Graph:
    """Index of one exported graph: constants, producers and consumers by tensor name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.const_nodes: dict[str, onnx.NodeProto] = {}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for i, node in enumerate(self.nodes):
            for out in node.output:
                self.producer[out] = i
            if node.op_type == "Constant" and node.output:
                self.const_nodes[node.output[0]] = node
            for k, inp in enumerate(node.input):
                if inp:
                    self.consumers.setdefault(inp, []).append((i, k))

    def constant(self, name: str) -> onnx.TensorProto | None:
        if name in self.inits:
            return self.inits[name]
        node = self.const_nodes.get(name)
        if node is None:
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return attr.t
            value = onnx.helper.get_attribute_value(attr)
            arr = np.asarray(value, dtype=np.float32 if "float" in attr.name else np.int64)
            return numpy_helper.from_array(arr, name)
        return None


def _key(node: onnx.NodeProto) -> str:
    """Alignment key: op type plus the name without the exporter's running numbers."""
    name = re.sub(r"(_\d+)+$", "", node.name)
    name = re.sub(r"\d+", "#", name)
    return f"{node.op_type}|{name}"


Opcode = tuple[str, int, int, int, int]


def align(nodes0: Sequence[onnx.NodeProto], nodes1: Sequence[onnx.NodeProto]) -> list[Opcode]:
    """difflib opcodes over the two node sequences (robust to renumbered names)."""
    keys0 = [_key(n) for n in nodes0]
    keys1 = [_key(n) for n in nodes1]
    matcher = difflib.SequenceMatcher(a=keys0, b=keys1, autojunk=False)
    return [(str(t), i1, i2, j1, j2) for t, i1, i2, j1, j2 in matcher.get_opcodes()]


def _pairs(opcodes: Iterable[tuple[str, int, int, int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            out.extend(zip(range(i1, i2), range(j1, j2), strict=False))
    return out


def _tensor_equal(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    if list(a.dims) != list(b.dims) or a.data_type != b.data_type:
        return False
    if (a.doc_string == DIGESTED) != (b.doc_string == DIGESTED):  # one export kept, one lightened
        a, b = (digested(t) for t in (a, b))
    if a.raw_data and b.raw_data:
        return a.raw_data == b.raw_data
    return bool(np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)))


def _show(value: Any, limit: int = 16) -> Any:
    """A JSON-friendly value: the list itself when small, else a summary with the shape."""
    if isinstance(value, onnx.TensorProto) and value.doc_string == DIGESTED:
        return f"tensor of shape {list(value.dims)}"
    if isinstance(value, onnx.TensorProto):
        value = numpy_helper.to_array(value)
    if isinstance(value, np.ndarray):
        if value.size <= limit:
            return value.tolist()
        return f"tensor of shape {list(value.shape)}"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list | tuple):
        return [_show(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attr_value(attr: onnx.AttributeProto) -> Any:
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return None  # subgraphs are compared through their own nodes, not here
    return onnx.helper.get_attribute_value(attr)


def _attr_equal(a: Any, b: Any) -> bool:
    if isinstance(a, onnx.TensorProto) and isinstance(b, onnx.TensorProto):
        return _tensor_equal(a, b)
    return bool(a == b)


# -------------------------------------------------------------------- source lines

_LEGACY_FRAME = re.compile(r"^(.*)\((\d+)\): (\S+)$")
_DYNAMO_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def node_source(node: onnx.NodeProto) -> str | None:
    """``file.py:LINE`` of the user's code that produced the node, when the exporter kept it.

    The legacy exporter (run verbose) keeps the Python stack in ``doc_string``, innermost
    frame first; the dynamo exporter keeps it in the ``pkg.torch.onnx.stack_trace`` metadata,
    innermost frame last. The innermost frame outside torch is the user's line.
    """

    def user(path: str) -> bool:
        return os.path.isabs(path) and not is_library_frame(path)

    for line in node.doc_string.splitlines():
        m = _LEGACY_FRAME.match(line.strip())
        if m and user(m.group(1)):
            return f"{display_path(m.group(1))}:{m.group(2)}"
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.stack_trace":
            frames = [m for m in _DYNAMO_FRAME.finditer(prop.value) if user(m.group(1))]
            if frames:
                return f"{display_path(frames[-1].group(1))}:{frames[-1].group(2)}"
    return None


def module_path(node: onnx.NodeProto) -> str:
    """The PyTorch module that produced the node: ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``."""
    scopes = module_scopes(node)
    return scopes[-1] if scopes else ""


def module_scopes(node: onnx.NodeProto) -> list[str]:
    """Every enclosing module path of a node, outermost first (``named_modules`` names).

    The legacy exporter names each scope by its attribute, and children of containers by
    ``parent.index`` (``/layer1/layer1.0/conv1/Conv``); the dynamo exporter lists the scopes
    in the ``pkg.torch.onnx.name_scopes`` metadata.
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            parts = [s for s in re.findall(r"'([^']*)'", prop.value)[1:-1] if s]
            return [".".join(parts[: i + 1]) for i in range(len(parts))]
    if not node.name.startswith("/"):
        return []
    parts = [p for p in node.name.split("/") if p][:-1]
    out: list[str] = []
    prev = ""
    for part in parts:
        if prev and part.startswith(prev + "."):
            path = f"{out[-1]}{part[len(prev):]}"  # container child: "layer1.0" under "layer1"
        else:
            path = f"{out[-1]}.{part}" if out else part
        out.append(path)
        prev = part
    return out


# -------------------------------------------------------------------- differential export


@dataclass
class _Change:
    consumer: int  # node index in the S0 graph
    slot: int | None  # input slot, or None for an attribute
    attr: str | None
    v0: Any
    v1: Any
    constant: str | None  # tensor name of the changed constant in the S0 graph
    dims_changed: bool
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)


def _rule_for(op: str, slot: int | None, attr: str | None) -> str | None:
    if attr is not None:
        return _ATTR_RULES.get(op)
    if slot is not None:
        return _INPUT_RULES.get((op, slot))
    return None


def _final_consumers(g: _Graph, start: int, depth: int = _PLUMBING_DEPTH) -> list[tuple[int, int]]:
    """Follow a shape tensor from node ``start`` through plumbing ops to the ops that use it."""
    found: list[tuple[int, int]] = []
    frontier = [start]
    seen = {start}
    for _ in range(depth):
        nxt: list[int] = []
        for idx in frontier:
            for out in g.nodes[idx].output:
                for ci, slot in g.consumers.get(out, []):
                    op = g.nodes[ci].op_type
                    if _rule_for(op, slot, None):
                        found.append((ci, slot))
                    elif op in _SHAPE_PLUMBING and ci not in seen:
                        seen.add(ci)
                        nxt.append(ci)
        frontier = nxt
        if not frontier:
            break
    return found


def differential_export(
    module_or_spec: torch.nn.Module | str,
    input_shapes: ShapeMap,
    *,
    dynamic: dict[str, list[int]] | None = None,
    exporter: str = "legacy",
    s1: ShapeMap | None = None,
    opset: int | None = None,
    lattice: Lattice | None = None,
    class_shapes: int = 3,
    keep_weights: bool = True,
    e0: ExportResult | None = None,
) -> DifferentialResult:
    """Export at S0, S1 and up to ``class_shapes`` shapes in other divisibility classes; report
    every value that changed and every branch (nodes present at some shapes only).

    S1 (default :func:`choose_s1`) grows every dynamic axis and finds the baked values; the
    class shapes (:func:`dynashape.analysis.second_shapes.plan_class_shapes`) are chosen from the S0
    graph's strides and ``Mod`` windows so that ``if h % window`` / ``if x.shape != skip.shape``
    take the other branch somewhere. ``lattice`` keeps them on the sizes the model accepts; a
    shape the module cannot run at is recorded as failed and finer ones are skipped.

    ``e0``: the module's export at ``input_shapes`` when the caller already made it (with the same
    exporter and opset). ``keep_weights=False``: the exports kept in the result are lightened
    (:func:`lighten`: weights replaced by digests), so that a large model's run holds one export's
    weights at a time; their models then cannot run.
    """

    module = load_module(module_or_spec) if isinstance(module_or_spec, str) else module_or_spec
    dynamic = default_dynamic(input_shapes) if dynamic is None else dynamic
    s0 = dict(input_shapes)
    given = s1 is not None
    if s1 is None:
        s1 = choose_s1(s0, dynamic)
    _check_s1(s0, s1, dynamic)
    seconds = 0.0
    if e0 is None:
        e0, seconds = _timed_export(module, s0, dynamic, exporter, opset)
    if not keep_weights:
        e0.model = lighten(e0.model)
    runs = [ExportRun(s0, "the export shape S0", "exported", seconds, len(e0.model.graph.node))]
    classes = shape_classes(e0.model)
    s1_reason = ("given as the second shape" if given else
                 "S1: every dynamic axis grown, on the power-of-two grid (finds values baked from S0)")
    plan = [PlannedShape(dict(s1), s1_reason, 0)]
    plan += plan_class_shapes(s0, dynamic, classes, already=[s1], lattice=lattice, budget=class_shapes)
    log.info("differential export: %d exports (S0 %s%s); levels %s, windows %s", len(plan) + 1,
             format_shapes(s0), "".join(f", {format_shapes(p.shapes)}" for p in plan), classes.levels,
             classes.windows or "none")
    findings: list[Finding] = []
    branches: dict[str, Branch] = {}
    first: tuple[ExportResult, ShapeMap, int] | None = None
    failed_at: int | None = None
    for k, p in enumerate(plan):
        if k and failed_at is not None and _coarseness(p.shapes, s0) <= failed_at:
            runs.append(ExportRun(p.shapes, p.reason, "skipped", message=(
                f"the module failed at a size that is a multiple of {failed_at}; this one is no coarser")))
            continue
        try:
            e, seconds = _timed_export(module, p.shapes, dynamic, exporter, opset)
            if not keep_weights:
                e.model = lighten(e.model)
        except DynashapeError as exc:
            log.info("export at %s failed: %s", format_shapes(p.shapes), exc)
            runs.append(ExportRun(p.shapes, p.reason, "failed", message=str(exc)))
            if k:
                failed_at = max(failed_at or 0, _coarseness(p.shapes, s0))
            continue
        got, aligned = diff_exports(e0.model, e.model, s0, p.shapes, with_control_flow=False)
        run = ExportRun(p.shapes, p.reason, "exported", seconds, len(e.model.graph.node))
        for b in _branches(_Graph(e0.model), _Graph(e.model), align(e0.model.graph.node, e.model.graph.node)):
            known = branches.setdefault(b.label, b)
            known.flips_at.append(format_shapes(p.shapes))
            run.branches.append(b.label)
        runs.append(run)
        findings += got
        if first is None:
            first = (e, p.shapes, aligned)
    if first is None:
        raise DynashapeError("the module could not be exported at any second shape: " + "; ".join(
            f"{format_shapes(r.shapes)}: {r.message}" for r in runs[1:]))
    e1, s1_done, aligned = first
    exported = [format_shapes(r.shapes) for r in runs if r.status == "exported"]
    findings = _dedupe_findings(findings)
    for f in findings:
        f.details["exports_compared"] = exported
    branch_list = list(branches.values())
    findings += [_branch_finding(b, s0, exported, len(e0.model.graph.node)) for b in branch_list]
    for r in runs:
        log.info("  %s %s (%.1f s, %s nodes): %s", r.status, format_shapes(r.shapes), r.seconds, r.nodes, r.reason)
    return DifferentialResult(
        s0=s0, s1=dict(s1_done), findings=findings, export_s0=e0, export_s1=e1,
        nodes_s0=len(e0.model.graph.node), nodes_s1=len(e1.model.graph.node), aligned=aligned,
        runs=runs, branches=branch_list, classes=classes.to_json(),
    )


def _coarseness(shapes: ShapeMap, s0: ShapeMap) -> int:
    """The smallest power-of-two part among the sizes that differ from S0 (lower: finer, riskier)."""
    parts = [pow2_part(d) for name, shape in shapes.items() for a, d in enumerate(shape) if d != s0[name][a]]
    return min(parts) if parts else 1


def _timed_export(
    module: torch.nn.Module, shapes: ShapeMap, dynamic: dict[str, list[int]], exporter: str, opset: int | None
) -> tuple[ExportResult, float]:

    start = time.perf_counter()
    result = export_module(module, shapes, dynamic, exporter=exporter, opset=opset)
    seconds = time.perf_counter() - start
    log.info("exported at %s in %.1f s (%d nodes)", format_shapes(shapes), seconds, len(result.model.graph.node))
    return result, seconds


def _dedupe_findings(findings: list[Finding]) -> list[Finding]:
    """One finding per (rule, node, what): the first export that showed it (S1 comes first)."""
    kept: dict[tuple[str, str, str], Finding] = {}
    for f in findings:
        key = (f.rule, f.node, str(f.details.get("what", "")))
        if key in kept:
            kept[key].details.setdefault("also_at", []).append(f.details.get("shape_s1"))
            continue
        kept[key] = f
    return list(kept.values())


def _check_s1(s0: ShapeMap, s1: ShapeMap, dynamic: dict[str, list[int]]) -> None:
    for name, shape in s0.items():
        other = s1.get(name)
        if other is None:
            raise DynashapeError(f"the second shape has no input {name!r}")
        if len(other) != len(shape):
            raise DynashapeError(
                f"the second shape {name}:{format_shape(other)} has another rank than {format_shape(shape)}"
            )
        fixed = [a for a in range(len(shape)) if a not in dynamic.get(name, []) and shape[a] != other[a]]
        if fixed:
            raise DynashapeError(f"the second shape changes static axes {fixed} of input {name!r}")


def diff_exports(
    model0: onnx.ModelProto, model1: onnx.ModelProto, s0: ShapeMap, s1: ShapeMap, *, with_control_flow: bool = True
) -> tuple[list[Finding], int]:
    """Findings for every baked value (and, unless told not to, each branch) between two exports."""
    g0, g1 = _Graph(model0), _Graph(model1)
    opcodes = align(g0.nodes, g1.nodes)
    pairs = _pairs(opcodes)
    changes: list[_Change] = []
    for i, j in pairs:
        n0, n1 = g0.nodes[i], g1.nodes[j]
        if n0.op_type == "Constant":
            continue  # reported at its consumers
        attrs1 = {a.name: a for a in n1.attribute}
        changed: dict[str, tuple[Any, Any]] = {}
        for a0 in n0.attribute:
            a1 = attrs1.get(a0.name)
            if a1 is None:
                continue
            v0, v1 = _attr_value(a0), _attr_value(a1)
            if v0 is not None and not _attr_equal(v0, v1):
                changed[a0.name] = (v0, v1)
        if changed:
            # one finding per node: the kernel when it changed (strides follow it), else the first
            primary = "kernel_shape" if "kernel_shape" in changed else next(iter(changed))
            v0, v1 = changed[primary]
            changes.append(_Change(i, None, primary, v0, v1, None, False, {
                k: {"s0": _show(a), "s1": _show(b)} for k, (a, b) in changed.items()
            }))
        for k, (in0, in1) in enumerate(zip(n0.input, n1.input, strict=False)):
            c0, c1 = g0.constant(in0), g1.constant(in1)
            if c0 is None or c1 is None or _tensor_equal(c0, c1):
                continue
            changes.append(_Change(i, k, None, c0, c1, in0, list(c0.dims) != list(c1.dims)))
    findings = _collapse_repeats(_changes_to_findings(g0, changes, s0, s1))
    if with_control_flow:
        exported = [format_shapes(s0), format_shapes(s1)]
        for b in _branches(g0, g1, opcodes):
            b.flips_at.append(format_shapes(s1))
            findings.append(_branch_finding(b, s0, exported, len(g0.nodes)))
    return findings, len(pairs)


def _changes_to_findings(g0: _Graph, changes: list[_Change], s0: ShapeMap, s1: ShapeMap) -> list[Finding]:
    findings: list[Finding] = []
    seen: set[tuple[str, str, str]] = set()
    shapes = f"{format_shapes(s0)} and {format_shapes(s1)}"
    for ch in changes:
        direct = g0.nodes[ch.consumer]
        targets: list[tuple[onnx.NodeProto, str, str]] = []  # (node, rule, what)
        rule = _rule_for(direct.op_type, ch.slot, ch.attr)
        what = f"attribute {ch.attr}" if ch.attr else f"input {ch.slot}"
        if len(ch.attributes) > 1:
            what = "attributes " + ", ".join(ch.attributes)
        via: list[str] = []
        if rule is not None:
            targets.append((direct, rule, what))
        elif ch.attr is None and _is_integer(ch.v0) and direct.op_type in _SHAPE_PLUMBING:
            for ci, slot in _final_consumers(g0, ch.consumer):
                node = g0.nodes[ci]
                targets.append((node, _INPUT_RULES[(node.op_type, slot)], f"input {slot}"))
            via = [direct.name]
        if not targets:
            fallback = "DS007" if ch.dims_changed else "DS010"
            targets.append((direct, fallback, what))
        for node, rule_id, slot_text in targets:
            # constants routed through plumbing to one input are one hazard there
            key = (rule_id, node.name, slot_text if via else f"{slot_text}|{ch.constant}")
            if key in seen:
                continue
            seen.add(key)
            source = None
            if ch.constant and ch.constant in g0.const_nodes:
                source = node_source(g0.const_nodes[ch.constant])
            source = source or node_source(node) or node_source(direct)
            v0, v1 = _show(ch.v0), _show(ch.v1)
            name = f"{ch.constant} " if ch.constant else ""
            verb = "are" if len(ch.attributes) > 1 else "is"
            via_text = f" (through {', '.join(via)})" if via else ""
            message = (
                f"{_WHY.get(rule_id, 'a value baked from the input shape')}: {node.op_type} {node.name} "
                f"{slot_text} {name}{verb} {v0} when exported at {format_shapes(s0)} and {v1} at "
                f"{format_shapes(s1)}{via_text}"
            )
            severity: Severity = "warning" if rule_id == "DS010" else "error"
            findings.append(Finding(
                rule=rule_id, severity=severity, node=node.name, op=node.op_type, message=message,
                fixable=False, detected_by="differential-export", inputs=list(node.input),
                baked_value=v0, breaks_at=f"any shape other than {format_shapes(s0)}",
                fix=f"in the source{f' ({source})' if source else ''}: {_SOURCE_FIX.get(rule_id, '')}",
                source=source,
                details={
                    "s0": v0, "s1": v1, "shape_s0": format_shapes(s0), "shape_s1": format_shapes(s1),
                    "what": slot_text, "constant": ch.constant, "via": via,
                    "module": module_path(node), "exports_compared": shapes,
                    **({"attributes": ch.attributes} if ch.attributes else {}),
                },
            ))
    return findings


def _collapse_repeats(findings: list[Finding]) -> list[Finding]:
    """One DS010 finding per changed constant, naming its other consumers in the details."""
    kept: list[Finding] = []
    first: dict[str, Finding] = {}
    for f in findings:
        const = f.details.get("constant")
        if f.rule != "DS010" or not const:
            kept.append(f)
            continue
        if const in first:
            first[const].details.setdefault("also_used_by", []).append(f.node)
            continue
        first[const] = f
        kept.append(f)
    return kept


def _is_integer(value: Any) -> bool:
    if isinstance(value, onnx.TensorProto):
        return value.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    return False


def _branches(g0: _Graph, g1: _Graph, opcodes: Sequence[Opcode]) -> list[Branch]:
    """The runs of nodes only one graph has, grouped by the source line (or module) they come from.

    One Python `if` in a block that repeats (each Swin block pads) gives one run per block; they
    share the source line, so they are one branch.
    """
    out: dict[str, Branch] = {}
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            continue
        only0, only1 = g0.nodes[i1:i2], g1.nodes[j1:j2]
        nodes = [n for n in (*only0, *only1) if n.op_type != "Constant"] or [*only0, *only1]
        sources = Counter(src for n in (*only0, *only1) if (src := node_source(n)))
        first = nodes[0]
        module = module_path(first)
        label = sources.most_common(1)[0][0] if sources else (module or f"{first.op_type} {first.name}")
        branch = out.get(label)
        if branch is None:
            branch = out[label] = Branch(label, [], module, first.name, first.op_type, in_s0=bool(only0))
        branch.sources = list(dict.fromkeys([*branch.sources, *(src for src, _ in sources.most_common(4))]))
        branch.nodes_s0 += [n.name for n in only0]
        branch.nodes_other += [n.name for n in only1]
        branch.ops = list(dict.fromkeys([*branch.ops, *(n.op_type for n in nodes)]))[:12]
    return list(out.values())


def _branch_finding(branch: Branch, s0: ShapeMap, exported: list[str], nodes_s0: int) -> Finding:
    """DS009 for one branch: its source line, and the shapes where it flips and where it does not."""
    same = [s for s in exported if s != format_shapes(s0) and s not in branch.flips_at]
    where = f" (module {branch.module})" if branch.module else ""
    n_other = len(branch.nodes_other)
    n0 = len(branch.nodes_s0)
    what = (f"{n0} node(s) only in the graph exported at {format_shapes(s0)}" if n0 else "") + (
        (" and " if n0 and n_other else "") + (f"{n_other} node(s) only at the other shape(s)" if n_other else ""))
    message = (
        f"Python control flow on a size: the code at {branch.label}{where} takes another branch at "
        f"{', '.join(branch.flips_at)} than at the export shape {format_shapes(s0)}: {what} "
        f"({', '.join(branch.ops[:6])}); the exported graph is wrong wherever the other branch would run"
    )
    if same:
        message += f"; same branch as the export shape at {', '.join(same)}"
    return Finding(
        rule="DS009", severity="error", node=branch.node, op=branch.op, message=message,
        fixable=False, detected_by="differential-export", inputs=[], baked_value=nodes_s0,
        breaks_at=f"shapes like {branch.flips_at[0]} (the other branch)" if branch.flips_at else "",
        fix=f"in the source ({branch.label}): replace the Python `if` on a size with tensor ops that work "
        "for every size (e.g. always pad: F.pad(x, (0, (-w) % m, 0, (-h) % m)); always interpolate to "
        "skip.shape[-2:])",
        source=branch.label if branch.sources else None,
        details={
            "s0": nodes_s0, "s1": nodes_s0 - n0 + n_other, "flips_at": branch.flips_at, "same_as_s0_at": same,
            "sources": branch.sources, "module": branch.module, "ops": branch.ops,
            "only_in_s0": branch.nodes_s0[:20], "only_in_other": branch.nodes_other[:20],
            "shape_s0": format_shapes(s0), "exports_compared": exported,
        },
    )


# -------------------------------------------------------------------- first divergent node


def with_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph outputs include every node output, so ORT returns all intermediates."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for out in node.output:
            if out and out not in existing:
                vi = m.graph.output.add()
                vi.name = out
                existing.add(out)
    return m


def run_intermediates(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor the model computes at these feeds (raises ``RunError`` if ORT fails)."""

    with OrtRunner(with_all_outputs(model)) as runner:
        return runner.infer(feeds)


INTERMEDIATES_BUDGET = 256 * 2**20  # bytes of intermediate tensors held at once by the search


class Intermediates(Mapping[str, np.ndarray]):
    """Every tensor a model computes at ``feeds``, computed on demand a window of node outputs
    at a time (in graph order), so that about ``budget`` bytes of them are held at once: all of
    a Swin-T's at 4x3x448x448 are gigabytes. Read in graph order, the model runs about (total
    bytes / budget) times."""

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], budget: int | None = None,
                 window: int = 32, names: Sequence[str] | None = None, nodes: Sequence[int] | None = None) -> None:
        """``names``: only these node outputs (default: all), in graph order; ``nodes``: the
        indices of the only nodes to run (default: all), when the others would fail."""
        self.model = model
        self.nodes = nodes
        self.feeds = feeds
        self.budget = INTERMEDIATES_BUDGET if budget is None else budget
        every = (o for n in model.graph.node for o in n.output if o)
        self.order = list(dict.fromkeys(every if names is None else names))
        self._index = {name: i for i, name in enumerate(self.order)}
        self.window = window  # node outputs per run, adapted to the budget
        self.runs = 0
        self._values: dict[str, np.ndarray] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            start = self._index[name]
            self._values = {}  # drop the last window before computing the next
            self._values = _run_outputs(self.model, self.order[start : start + self.window], self.feeds, self.nodes)
            self.runs += 1
            held = sum(v.nbytes for v in self._values.values())
            if held > self.budget:
                self.window = max(1, self.window // 2)
            elif held < self.budget // 4:
                self.window = min(2 * self.window, 4096)
        return self._values[name]


def _run_outputs(model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray],
                 nodes: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """``names`` computed at ``feeds``, by ``nodes`` only (indices; default: every node; ONNX
    Runtime runs every node it is given). The model's outputs and nodes are swapped in place for
    the session and put back (no copy of its weights)."""

    outputs = [onnx.ValueInfoProto() for _ in model.graph.output]
    for saved, out in zip(outputs, model.graph.output, strict=True):
        saved.CopyFrom(out)
    all_nodes: list[onnx.NodeProto] | None = None
    if nodes is not None:
        all_nodes = [onnx.NodeProto() for _ in model.graph.node]
        for saved_node, node in zip(all_nodes, model.graph.node, strict=True):
            saved_node.CopyFrom(node)
    try:
        del model.graph.output[:]
        for name in names:
            model.graph.output.add().name = name  # untyped: ONNX Runtime fills the type in
        if all_nodes is not None and nodes is not None:
            del model.graph.node[:]
            model.graph.node.extend(all_nodes[i] for i in nodes)
        runner = OrtRunner(model)  # serializes the model here
    finally:
        del model.graph.output[:]
        model.graph.output.extend(outputs)
        if all_nodes is not None:
            del model.graph.node[:]
            model.graph.node.extend(all_nodes)
    with runner:
        return runner.infer(feeds)


def _runs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """Raise ``RunError`` where ONNX Runtime fails on the model at ``feeds`` (outputs dropped)."""

    with OrtRunner(model) as runner:
        runner.infer(feeds)


def _compare(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> tuple[str, float] | None:
    """None when they agree; else ("shape"|"value", max abs error)."""
    if got.shape != ref.shape:
        return "shape", float("inf")
    if got.size == 0:
        return None
    if got.dtype == np.bool_ or ref.dtype == np.bool_:
        err = float(np.count_nonzero(got != ref))
        return ("value", err) if err else None
    a = got.astype(np.float64)
    b = ref.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return "value", float("inf")
    diff = np.abs(a[finite] - b[finite])
    err = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(b[finite]).max()) if diff.size else 0.0
    return ("value", err) if err > atol + rtol * scale else None


def _node_by_name(model: onnx.ModelProto, name: str | None) -> onnx.NodeProto | None:
    if not name:
        return None
    for node in model.graph.node:
        if node.name == name:
            return node
    return None


def _shapes_of(feeds: dict[str, np.ndarray]) -> ShapeMap:
    return {n: tuple(int(d) for d in a.shape) for n, a in feeds.items()}


def first_divergent_node(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    reference: torch.nn.Module | str | onnx.ModelProto,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    exporter: str = "legacy",
    dynamic: dict[str, list[int]] | None = None,
) -> DivergentNode | None:
    """The first node of ``model`` whose output disagrees with the reference at ``feeds``.

    ``reference`` is a PyTorch module (or ``FILE.py:FACTORY`` spec) or an ONNX model with the
    same structure. For a module, its outputs are captured with forward hooks and compared
    where the node names carry the module path, and the module is re-exported at this shape
    (same dynamic axes, so the same structure with this shape's values baked in); node
    outputs are then compared one by one in graph order. Returns None when all agree. If ONNX
    Runtime cannot run the model at this shape, the node it failed on is returned.
    """

    failure: DivergentNode | None = None
    got: Mapping[str, np.ndarray]
    try:
        _runs(model, feeds)
        got = Intermediates(model, feeds)
    except RunError as exc:
        node = _node_by_name(model, exc.node)
        failure = DivergentNode(
            node=exc.node or "", op=node.op_type if node is not None else "",
            module_path=module_path(node) if node is not None else "", kind="error",
            message=f"ONNX Runtime fails at {format_shapes(_shapes_of(feeds))}: {exc}",
            source=node_source(node) if node is not None else None,
        )
        # the node that fails is rarely the one that went wrong (a join fails on the frozen size
        # of a resize before it): compare what ran before the failure with the reference
        partial = _intermediates_before(model, feeds, node)
        if partial is None:
            return failure
        got = partial
    found = _first_divergent(model, got, feeds, reference, atol, rtol, exporter, dynamic)
    if failure is None:
        return found
    if found is None or found.node == failure.node:
        return failure
    found.details["fails_at"] = failure.node
    found.message += f"; ONNX Runtime then fails at {failure.node} ({failure.op})"
    return found


def _intermediates_before(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], failing: onnx.NodeProto | None
) -> Mapping[str, np.ndarray] | None:
    """Every tensor computed up to the inputs of ``failing``, or None if that cannot run either."""

    if failing is None:
        return None
    inits = {t.name for t in model.graph.initializer}
    wanted = [i for i in failing.input if i and i not in inits]
    inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
    if not wanted or all(w in inputs for w in wanted):
        return None  # nothing ran before it
    producer = {out: n for n in model.graph.node for out in n.output if out}
    keep: set[int] = set()
    stack = list(wanted)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(i for i in node.input if i)
    # the model itself, cut down in place to the nodes before the failing one while a session is
    # made, not a copy of it: a copy would hold every weight once more
    kept = [i for i, n in enumerate(model.graph.node) if id(n) in keep]
    order = [o for i in kept for o in model.graph.node[i].output if o]
    try:
        _run_outputs(model, wanted, feeds, kept)
    except RunError as exc:
        log.debug("cannot run the graph up to %s either: %s", failing.name, exc)
        return None
    return Intermediates(model, feeds, names=order, nodes=kept)


def _first_divergent(
    model: onnx.ModelProto,
    got: Mapping[str, np.ndarray],
    feeds: dict[str, np.ndarray],
    reference: torch.nn.Module | str | onnx.ModelProto,
    atol: float,
    rtol: float,
    exporter: str,
    dynamic: dict[str, list[int]] | None,
) -> DivergentNode | None:
    module_hint: DivergentNode | None = None
    if isinstance(reference, onnx.ModelProto):
        ref_model = reference
    else:

        module = load_module(reference) if isinstance(reference, str) else reference
        module_hint = _compare_module_outputs(model, got, module, feeds, atol, rtol)
        if dynamic is None:

            dynamic = {i.name: i.dynamic_axes for i in graph_inputs(model)}
        try:
            ref_model = export_module(module, _shapes_of(feeds), dynamic, exporter=exporter).model
        except DynashapeError as exc:
            log.warning("cannot re-export the reference at this shape (%s); using module outputs only", exc)
            return module_hint
    found = _compare_with_reference(model, got, ref_model, feeds, atol, rtol)
    # Node-by-node against the re-export is exact; module outputs are only a hint, since the
    # exporter fuses ops across module boundaries (Conv+BatchNorm), so they never override it.
    if found is not None and module_hint is not None:
        found.details["first_divergent_module"] = module_hint.module_path
        found.details["module_node"] = module_hint.node
    return found


def _compare_with_reference(
    model: onnx.ModelProto,
    got: Mapping[str, np.ndarray],
    ref_model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    atol: float,
    rtol: float,
) -> DivergentNode | None:

    try:
        _runs(ref_model, feeds)
    except RunError as exc:
        raise DynashapeError(f"the reference model itself fails at this shape: {exc}") from None
    ref = Intermediates(ref_model, feeds)
    nodes, ref_nodes = list(model.graph.node), list(ref_model.graph.node)
    for i, j in _pairs(align(nodes, ref_nodes)):
        node, rnode = nodes[i], ref_nodes[j]
        if node.op_type == "Constant":
            continue
        for out, rout in zip(node.output, rnode.output, strict=False):
            if not out or out not in got or rout not in ref:
                continue
            bad = _compare(np.asarray(got[out]), np.asarray(ref[rout]), atol, rtol)
            if bad is None:
                continue
            kind, err = bad
            a, b = np.asarray(got[out]), np.asarray(ref[rout])
            msg = (
                f"output {out} has shape {format_shape(a.shape)}, the reference {format_shape(b.shape)}"
                if kind == "shape" else f"output {out} differs from the reference by {err:.3g}"
            )
            users = [f"{n.name} ({n.op_type})" for n in nodes if out in n.input]
            if users and a.dtype.kind in "iu" and a.ndim <= 1:  # a size or shape value: say who takes it
                msg += f" (got {a.tolist()}, the reference {b.tolist()}); it feeds {', '.join(users[:3])}"
            return DivergentNode(
                node=node.name, op=node.op_type, module_path=module_path(node), kind=kind, message=msg,
                output=out, max_error=err, shape=tuple(a.shape), expected_shape=tuple(b.shape),
                source=node_source(node), details={"reference_node": rnode.name},
            )
    return None


def _compare_module_outputs(
    model: onnx.ModelProto,
    got: Mapping[str, np.ndarray],
    module: torch.nn.Module,
    feeds: dict[str, np.ndarray],
    atol: float,
    rtol: float,
) -> DivergentNode | None:
    """Compare each submodule's output (forward hooks) with the last node of its scope."""
    import torch

    nodes = list(model.graph.node)
    last: dict[str, int] = {}
    for idx, node in enumerate(nodes):
        for scope in module_scopes(node):
            last[scope] = idx
    if not last:
        return None
    named = dict(module.named_modules())
    captured: dict[str, np.ndarray] = {}

    def hook_for(path: str) -> Callable[..., None]:
        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(t, torch.Tensor) and path not in captured:
                captured[path] = t.detach().cpu().numpy()
        return hook

    handles = [named[p].register_forward_hook(hook_for(p)) for p in last if p in named]
    try:
        args = [torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values()]
        with torch.no_grad():  # not inference_mode: the module is exported right after
            module.eval()(*args)
    except RuntimeError as exc:
        raise DynashapeError(f"the PyTorch reference fails at this shape too: {exc}") from None
    finally:
        for h in handles:
            h.remove()
    for path, idx in sorted(last.items(), key=lambda kv: kv[1]):
        if path not in captured:
            continue
        node = nodes[idx]
        out = node.output[0] if node.output else ""
        if out not in got:
            continue
        a, b = np.asarray(got[out]), captured[path]
        if a.ndim != b.ndim or not np.issubdtype(a.dtype, np.floating):
            continue  # the scope's last node is not what the module returned
        bad = _compare(a, b, atol, rtol)
        if bad is None:
            continue
        kind, err = bad
        return DivergentNode(
            node=node.name, op=node.op_type, module_path=path, kind=kind,
            message=f"module {path} returns {format_shape(b.shape)} in PyTorch; ONNX gives "
            f"{format_shape(a.shape)}" + ("" if kind == "shape" else f", max error {err:.3g}"),
            output=out, max_error=err, shape=tuple(a.shape), expected_shape=tuple(b.shape),
            source=node_source(node), details={"compared": "module output"},
        )
    return None


# -------------------------------------------------------------------- export and compare in a child


def export_and_compare_in_child(
    spec: str, input_shapes: ShapeMap, path: str | os.PathLike[str]
) -> tuple[DifferentialResult | None, str]:
    """Export ``spec`` to ``path`` as ``dynashape export`` does and run the differential export
    from that export, in one child process: (the result, "") or (None, why there is none).

    The exporter holds several copies of the weights at its peak (ViT-B/16: about 1.8 GB for 330 MB
    of weights); in a child, that peak is over before the caller loads the model, and the module
    is built and traced once for both. The child is a fresh interpreter (not a fork: the caller
    may run threads). A failed export raises ``DynashapeError`` with the child's one line."""
    shapes = ",".join(f"{name}:{format_shape(shape)}" for name, shape in input_shapes.items())
    with tempfile.TemporaryDirectory(prefix="dynashape-diff-") as tmp:
        out = os.path.join(tmp, "result.pickle")
        code = "import sys; from dynashape.pipeline.differential import child_main; sys.exit(child_main(sys.argv[1:]))"
        level = logging.getLogger("dynashape").getEffectiveLevel()
        cmd = [sys.executable, "-c", code, spec, shapes, os.fspath(path), out, str(level)]
        log.info("exporting %s and comparing exports in a child process", spec)
        run_child(cmd, "export", on_line=_relog)  # the child's log goes on in ours (exports take minutes)
        with open(out, "rb") as f:
            result, why = pickle.load(f)  # written by child_main below, in this same installation
    return result, why


_CHILD_LOG = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")


def _relog(line: str) -> None:
    """A log line of the child, logged here by the same logger at the same level."""
    m = _CHILD_LOG.match(line)
    if m is None or not m.group(2).startswith("dynashape"):
        log.debug("export child: %s", line)
        return
    logging.getLogger(m.group(2)).log(getattr(logging, m.group(1)), "%s", m.group(3))


def child_main(argv: list[str]) -> int:
    """The child of :func:`export_and_compare_in_child`: SPEC SHAPES ONNX_PATH RESULT_PATH LOG_LEVEL."""

    spec, shapes_text, path, out, level = argv
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dynashape").setLevel(int(level))
    try:
        shapes = parse_shapes(shapes_text)
        module = load_module(spec)
        e0 = export_module(module, shapes, path=path)
        dynamic: dict[str, list[int]] | None = {i.name: i.dynamic_axes for i in graph_inputs(e0.model)}
        if dynamic is not None and not any(dynamic.values()):
            dynamic = None
        try:
            payload: tuple[DifferentialResult | None, str] = (
                differential_export(module, shapes, dynamic=dynamic, keep_weights=False, e0=e0), "")
        except DynashapeError as exc:
            # a module that runs at its export size only (ViT's fixed position embeddings) has no
            # second export to compare: the doctor goes on with what the ONNX graph shows
            payload = (None, str(exc))
    except DynashapeError as exc:
        print(f"dynashape: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    with open(out, "wb") as f:
        pickle.dump(payload, f)
    return 0
