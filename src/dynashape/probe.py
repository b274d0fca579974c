"""Shapes and shape-values of every tensor at one concrete input shape, without running the model.

A probe fixes the graph inputs to concrete shapes, runs ONNX shape inference (strict, with data
propagation) and then evaluates the small integer "shape subgraphs" (``Shape -> Gather -> Concat
-> Resize.sizes`` and friends) with numpy. No tensor arithmetic on real data happens, so probing
a size costs milliseconds and can be repeated over a lattice of sizes.

A probe also says where the graph stops being consistent: the node whose inputs disagree
(``Add``/``Concat`` joins), a pool whose kernel is larger than its input, a ``Reshape`` whose
element counts differ.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from dynashape.shapes import ShapeMap

log = logging.getLogger(__name__)

Dims = tuple[int | None, ...]

_NODE_NAME = re.compile(r"\(op_type:(\w+), node name: ([^)]*)\): (.*)")
_SMALL = 64  # initializers up to this many elements may be shape constants; keep their values
_PASS_BUDGET = 24_000  # node-passes per probe: 16 passes up to 1,500 nodes, 3 for Swin-T's 6,285
_MAX_PATCH_PASSES = 16  # a pass only runs when the last one made new shape values known


@dataclass
class ProbeFailure:
    node: str | None
    op: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.op} node {self.node!r}: " if self.node else ""
        return f"{where}{self.message}"


class LazyDims:
    """Value name -> dims, decoded from the inferred ValueInfoProtos only when asked for."""

    def __init__(self, infos: dict[str, onnx.ValueInfoProto] | None = None,
                 fixed: dict[str, Dims] | None = None) -> None:
        self._infos = infos or {}
        self._decoded: dict[str, Dims | None] = dict(fixed or {})

    def get(self, name: str, default: Dims | None = None) -> Dims | None:
        if name not in self._decoded:
            vi = self._infos.get(name)
            self._decoded[name] = _dims_of(vi) if vi is not None else None
        found = self._decoded[name]
        return default if found is None else found

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> Dims:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found


@dataclass
class Probe:
    """Everything known about the graph at one input shape."""

    inputs: ShapeMap
    dims: LazyDims = field(default_factory=LazyDims)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    failure: ProbeFailure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def shape(self, name: str) -> Dims | None:
        return self.dims.get(name)

    def value(self, name: str) -> np.ndarray | None:
        return self.values.get(name)


def _dims_of(vi: onnx.ValueInfoProto) -> Dims | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)


class Prober:
    """Probes one model at many input shapes. Build once per model (it keeps a light skeleton)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.skeleton = _skeleton(model)
        self.input_names = [
            vi.name for vi in self.skeleton.graph.input if vi.name not in self._lifted
        ]
        self.constants = _constant_values(model)
        self.shape_nodes = _shape_subgraph(model, set(self.constants))
        # outputs of the shape subgraph (not of Constant nodes: ONNX inference reads those itself)
        self._computed = {o for n in self.shape_nodes if n.op_type != "Constant" for o in n.output}
        self.checked_nodes = [n for n in model.graph.node if n.op_type in _SIZE_CHANGING]
        self._inputs = {vi.name: vi for vi in self.skeleton.graph.input}
        self._initializer_dims: dict[str, Dims] = {
            t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer
        }
        self._cache: dict[tuple[tuple[str, tuple[int, ...]], ...], Probe] = {}
        # each feedback pass re-runs ONNX inference over the whole graph: deep chains of computed
        # sizes get every pass on small graphs, large graphs a bounded share of them
        nodes = max(1, len(model.graph.node))
        self.max_passes = max(2, min(_MAX_PATCH_PASSES, _PASS_BUDGET // nodes))

    @property
    def _lifted(self) -> set[str]:
        return {t.name for t in self.model.graph.initializer}

    def at(self, shapes: ShapeMap) -> Probe:
        key = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
        if key not in self._cache:
            self._cache[key] = self._probe(shapes)
        return self._cache[key]

    def _probe(self, shapes: ShapeMap) -> Probe:
        # the skeleton's input dims are set in place: infer_shapes returns a new model
        for name, shape in shapes.items():
            vi = self._inputs.get(name)
            if vi is None:
                continue
            dims = vi.type.tensor_type.shape.dim
            if len(dims) != len(shape):
                return Probe(
                    dict(shapes),
                    failure=ProbeFailure(None, None, f"input {name!r} has rank {len(dims)}, not {len(shape)}"),
                )
            for d, v in zip(dims, shape):
                d.Clear()
                d.dim_value = int(v)
        probe = Probe(dict(shapes))
        self._infer(self.skeleton, probe)
        # (node index, input index) -> computed value fed in place of that input; kept across
        # passes, since each pass starts again from the skeleton
        swaps: dict[tuple[int, int], np.ndarray] = {}
        for _ in range(self.max_passes):
            if probe.failure is not None:
                break  # known dims already disagree; knowing more cannot make them agree
            # ONNX data propagation stops at ops it does not evaluate (the legacy exporter's F.pad
            # turns its pads around with Reshape/Transpose): feed it the values computed here
            patched = self._patched(probe, swaps)
            if patched is None:
                break
            self._infer(patched, probe)
        if probe.failure is None:
            probe.failure = self._extra_checks(probe)
        return probe

    def _infer(self, skeleton: onnx.ModelProto, probe: Probe) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True, data_prop=True)
        except Exception as exc:  # onnx raises InferenceError (and others) for inconsistent graphs
            probe.failure = _parse_failure(str(exc))
            inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
        g = inferred.graph
        infos = {vi.name: vi for part in (g.input, g.value_info, g.output) for vi in part}
        probe.dims = LazyDims(infos, self._initializer_dims)
        self._evaluate_shape_values(probe)

    def _patched(self, probe: Probe, swaps: dict[tuple[int, int], np.ndarray]) -> onnx.ModelProto | None:
        """A copy of the skeleton where shape inputs known here but not to ONNX inference are
        initializers, or None when no node with unknown output dims has a new such input.

        ``swaps`` holds the inputs replaced by earlier passes; they stay replaced (a node whose
        output became known through a swap loses it again if the swap is dropped)."""
        produced = self._computed
        added = False
        for n_idx, node in enumerate(self.skeleton.graph.node):
            if node.op_type in ("Shape", "Size", "Constant") or not node.output:
                continue
            dims = probe.dims.get(node.output[0])
            if dims is not None and all(d is not None for d in dims):
                continue
            for i_idx, name in enumerate(node.input):
                if (n_idx, i_idx) in swaps:
                    continue
                value = probe.values.get(name) if name in produced else None
                if value is None or np.size(value) > _SMALL:
                    continue
                arr = np.asarray(value)
                if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
                    continue
                swaps[(n_idx, i_idx)] = arr
                added = True
        if not added:
            return None
        patched = onnx.ModelProto()
        patched.CopyFrom(self.skeleton)
        inits: dict[str, onnx.TensorProto] = {}
        for (n_idx, i_idx), arr in swaps.items():
            name = patched.graph.node[n_idx].input[i_idx]
            new = f"{name}__probe_value"
            patched.graph.node[n_idx].input[i_idx] = new
            if new not in inits:
                inits[new] = numpy_helper.from_array(arr, new)
        patched.graph.initializer.extend(inits.values())
        return patched

    def _evaluate_shape_values(self, probe: Probe) -> None:
        values = dict(self.constants)
        for node in self.shape_nodes:
            if node.op_type == "Shape" and node.input[0] in probe.dims:
                dims = probe.dims[node.input[0]]
                if any(d is None for d in dims):
                    continue
                start = _attr(node, "start", 0)
                end = _attr(node, "end", None)
                arr = np.array(dims, dtype=np.int64)
                values[node.output[0]] = arr[start:end]
                continue
            if node.op_type == "Size" and node.input[0] in probe.dims:
                dims = probe.dims[node.input[0]]
                if all(d is not None for d in dims):
                    values[node.output[0]] = np.array(math.prod(d for d in dims if d is not None), np.int64)
                continue
            ins = [values.get(i) if i else None for i in node.input]
            if any(i and v is None for i, v in zip(node.input, ins)):
                continue
            try:
                # a size of 0 at a tiny probe shape divides by zero: the value is then unknown
                with np.errstate(all="ignore"):
                    out = _eval_small(node, ins)
            except Exception:  # a shape op we cannot evaluate leaves its output unknown
                out = None
            if out is not None:
                for name, val in zip(node.output, out):
                    if val is not None and np.size(val) <= 4096:
                        values[name] = val
        probe.values = values

    def _extra_checks(self, probe: Probe) -> ProbeFailure | None:
        """Inconsistencies ONNX shape inference lets through."""
        for node in self.checked_nodes:
            # an empty result is legal for data movement (slicing a shape vector past its end
            # gives []), a kernel op with nothing to slide over is not; negative is never legal
            smallest = 0 if node.op_type in _EMPTY_OK else 1
            for out in node.output:
                dims = probe.dims.get(out)
                if dims and any(d is not None and d < smallest for d in dims):
                    in_dims = probe.dims.get(node.input[0]) if node.input else None
                    return ProbeFailure(
                        node.name, node.op_type,
                        f"output {out!r} would have shape {list(dims)} (input {list(in_dims or [])})",
                    )
            if node.op_type in ("AveragePool", "MaxPool", "LpPool"):
                kernel = _attr(node, "kernel_shape", None)
                dims = probe.dims.get(node.input[0])
                if kernel and dims and len(dims) == len(kernel) + 2:
                    pads = _attr(node, "pads", [0] * (2 * len(kernel)))
                    for i, k in enumerate(kernel):
                        size = dims[2 + i]
                        if size is not None and size + pads[i] + pads[i + len(kernel)] < k:
                            return ProbeFailure(
                                node.name, node.op_type,
                                f"kernel {list(kernel)} is larger than its input {list(dims[2:])}",
                            )
            if node.op_type == "Reshape":
                dims = probe.dims.get(node.input[0])
                target = probe.values.get(node.input[1])
                if dims and target is not None and all(d is not None for d in dims):
                    t = [int(v) for v in np.atleast_1d(target)]
                    allowzero = _attr(node, "allowzero", 0)
                    resolved: list[int] = [
                        (int(dims[i] or 0) if (v == 0 and not allowzero and i < len(dims)) else v)
                        for i, v in enumerate(t)
                    ]
                    total = math.prod(int(d) for d in dims if d is not None)
                    if -1 not in resolved and math.prod(resolved) != total:
                        return ProbeFailure(
                            node.name, node.op_type,
                            f"cannot reshape {list(dims)} ({total} elements) to {t}",
                        )
                    if -1 in resolved:
                        rest = math.prod(v for v in resolved if v != -1)
                        if rest == 0 or total % rest:
                            return ProbeFailure(
                                node.name, node.op_type, f"cannot reshape {list(dims)} to {t}"
                            )
        return None


# ops whose output may legally have a zero-sized axis
_EMPTY_OK = {"Slice", "Split", "Pad", "Reshape", "ConstantOfShape", "Expand", "Tile"}

# ops that can produce a non-positive size, or whose consistency inference does not check
_SIZE_CHANGING = {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "Resize", "Slice", "Pad", "Reshape",
    "Split", "Upsample", "ConstantOfShape", "Expand", "Tile",
}


def _shape_subgraph(model: onnx.ModelProto, constants: set[str]) -> list[onnx.NodeProto]:
    """Nodes whose outputs are computable from shapes and constants alone, in graph order."""
    known = set(constants)
    nodes = []
    for node in model.graph.node:
        if node.op_type in ("Shape", "Size") or (
            node.op_type != "Constant" and node.input and all((not i) or i in known for i in node.input)
        ):
            nodes.append(node)
            known.update(node.output)
    return nodes


def _parse_failure(message: str) -> ProbeFailure:
    for line in message.splitlines():
        m = _NODE_NAME.search(line)
        if m:
            detail = m.group(3).replace("[ShapeInferenceError]", "").replace("[TypeInferenceError]", "")
            return ProbeFailure(m.group(2), m.group(1), detail.strip())
    return ProbeFailure(None, None, message.strip().splitlines()[0] if message.strip() else "inference failed")


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without large weights (declared as inputs instead) and without stale shapes."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    existing_inputs = {vi.name for vi in model.graph.input}
    for vi in model.graph.input:
        g.input.append(vi)
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) <= _SMALL or init.data_type == onnx.TensorProto.INT64:
            g.initializer.append(init)
        elif init.name not in existing_inputs:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    for out in model.graph.output:
        vi = onnx.ValueInfoProto()
        vi.name = out.name
        vi.type.tensor_type.elem_type = out.type.tensor_type.elem_type
        g.output.append(vi)
    return m


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) <= 4096 and init.data_type in (
            onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.FLOAT,
            onnx.TensorProto.DOUBLE, onnx.TensorProto.BOOL,
        ):
            values[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant":
            arr = constant_node_value(node)
            if arr is not None and np.size(arr) <= 4096:
                values[node.output[0]] = arr
    return values


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
    return None


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _eval_small(node: onnx.NodeProto, ins: list[Any]) -> list[Any] | None:
    """numpy semantics of the ops that shape subgraphs are made of."""
    op = node.op_type
    a: Any = ins[0] if ins else None
    if op == "Constant":
        return None  # already in the constants table
    if op == "Identity":
        return [a]
    if op == "Cast":
        to = onnx.helper.tensor_dtype_to_np_dtype(int(_attr(node, "to", 7)))
        return [np.asarray(a).astype(to)]
    if op == "Gather":
        axis = int(_attr(node, "axis", 0))
        return [np.take(a, np.asarray(ins[1]).astype(np.int64), axis=axis)]
    if op == "Unsqueeze":
        axes = _attr(node, "axes", None)
        if axes is None:
            axes = [int(v) for v in np.atleast_1d(ins[1])]
        out = np.asarray(a)
        for ax in sorted(int(x) for x in axes):
            out = np.expand_dims(out, ax if ax >= 0 else ax + out.ndim + 1)
        return [out]
    if op == "Squeeze":
        axes = _attr(node, "axes", None)
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in np.atleast_1d(ins[1])]
        return [np.squeeze(a, axis=tuple(axes) if axes else None)]
    if op == "Concat":
        axis = int(_attr(node, "axis", 0))
        return [np.concatenate([np.atleast_1d(x) for x in ins if x is not None], axis=axis)]
    if op == "Slice":
        data = np.asarray(a)
        if len(ins) >= 3:
            starts, ends = np.atleast_1d(ins[1]), np.atleast_1d(ins[2])
            axes = np.atleast_1d(ins[3]) if len(ins) > 3 and ins[3] is not None else np.arange(len(starts))
            steps = np.atleast_1d(ins[4]) if len(ins) > 4 and ins[4] is not None else np.ones(len(starts), np.int64)
        else:
            starts = np.array(_attr(node, "starts", []))
            ends = np.array(_attr(node, "ends", []))
            axes = np.array(_attr(node, "axes", list(range(len(starts)))))
            steps = np.ones(len(starts), np.int64)
        index = [slice(None)] * data.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            e = int(min(max(int(e), -(2**62)), 2**62))
            index[int(ax)] = slice(int(s), e, int(st))
        return [data[tuple(index)]]
    binary: dict[str, Any] = {
        "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum,
        "Equal": np.equal, "Less": np.less, "Greater": np.greater, "Pow": np.power,
    }
    if op in binary and len(ins) == 2:
        return [np.asarray(binary[op](a, ins[1]))]
    if op == "Div":
        x, y = np.asarray(a), np.asarray(ins[1])
        if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
            return [np.asarray(np.trunc(x / y).astype(x.dtype))]
        return [np.asarray(x / y)]
    if op == "Mod":
        return [np.asarray(np.fmod(a, ins[1]) if _attr(node, "fmod", 0) else np.mod(a, ins[1]))]
    unary: dict[str, Any] = {"Floor": np.floor, "Ceil": np.ceil, "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt,
             "Not": np.logical_not, "Round": np.round}
    if op in unary:
        return [np.asarray(unary[op](a))]
    if op == "ReduceProd":
        keep = bool(_attr(node, "keepdims", 1))
        return [np.asarray(np.prod(a, keepdims=keep))]
    if op == "Where":
        return [np.where(np.asarray(a), ins[1], ins[2])]
    if op == "Range":
        return [np.arange(np.asarray(a).item(), np.asarray(ins[1]).item(), np.asarray(ins[2]).item())]
    if op == "ConstantOfShape":
        shape = [int(v) for v in np.atleast_1d(a)]
        if math.prod(shape) > 4096:
            return None
        val = _attr(node, "value", None)
        fill = numpy_helper.to_array(val) if val is not None else np.zeros(1, np.float32)
        return [np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)]
    if op == "Reshape":
        return [np.reshape(a, [int(v) for v in np.atleast_1d(ins[1])])]
    if op == "Transpose":  # the legacy exporter's F.pad turns its pads list around with one
        perm = _attr(node, "perm", None)
        return [np.transpose(a, perm)]
    if op == "Expand":
        return [np.asarray(a) * np.ones([int(v) for v in np.atleast_1d(ins[1])], dtype=np.asarray(a).dtype)]
    return None
