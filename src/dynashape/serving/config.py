"""Triton's ``config.pbtxt`` from what dynashape knows about a model: I/O, profiles, lattice.

Two variants share one description of the model (:class:`ServedModel`):

- ``tensorrt_plan``: Triton's TensorRT backend runs the engine itself. Dims come from the
  engine's sidecar (``-1`` for a dynamic axis). Batching follows Triton's rule: when axis 0 of
  every input and output is dynamic and every profile starts at batch 1, ``max_batch_size`` is
  the largest batch every profile accepts and the dims leave the batch axis out; otherwise
  ``max_batch_size: 0`` and the dims are the full shapes.
- ``python``: dynashape's ``model.py`` runs the engine (or ONNX Runtime on CPU) in Triton's
  Python backend, with the same I/O and batching.

Instance groups (Triton does not route requests by shape; each instance picks, per request,
the profile among *its own* whose opt is nearest): when the profiles cover different ranges,
one group lists them all, so every instance can take every valid shape and each profile is
used where it fits; when they all cover the same range (profiles for concurrency), one group
per profile with ``profile: ["i"]``, so every profile is used. The profile ranges and the
valid-size lattice go into comments and into ``parameters`` (``dynashape.profiles``,
``dynashape.analysis.lattice``, ``dynashape.export_shape``, JSON), which clients read back with Triton's
model-config API.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from dynashape import __version__
from dynashape.errors import DynashapeError
from dynashape.findings import Lattice, lattice_to_json
from dynashape.model import graph_inputs
from dynashape.shapes import Profile, format_shape

log = logging.getLogger(__name__)

# numpy dtype name -> Triton data type (model_config.proto's DataType)
TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}
DEFAULT_ONNX_MAX_BATCH = 8  # an ONNX model has no profile to bound the batch
QUEUE_DELAY_US = 100  # dynamic batching: wait this long for more requests of the same shape


def triton_dtype(dtype: str) -> str:
    try:
        return TRITON_DTYPES[dtype]
    except KeyError:
        raise DynashapeError(
            f"Triton has no data type for numpy's {dtype!r} (known: {', '.join(TRITON_DTYPES)})"
        ) from None


@dataclass(frozen=True)
class IOTensor:
    """An input or output: numpy dtype name and full shape, ``-1`` for a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ServedModel:
    """What a Triton config is written from: an engine's sidecar or an ONNX model's graph."""

    source: str
    inputs: tuple[IOTensor, ...]
    outputs: tuple[IOTensor, ...]
    profiles: tuple[Profile, ...] = ()  # empty for an ONNX model
    lattice: Lattice | None = None
    export_shape: dict[str, tuple[int, ...]] | None = None  # when the check recovered it
    tensorrt_version: str | None = None  # None for an ONNX model
    gpu_name: str | None = None
    compute_capability: str | None = None


@dataclass(frozen=True)
class Batching:
    """Triton's ``max_batch_size`` (0: no batching, dims are full shapes) and why."""

    max_batch_size: int
    reason: str


@dataclass(frozen=True)
class InstanceGroup:
    count: int
    kind: str  # KIND_GPU, KIND_CPU or KIND_MODEL
    profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    """One ``config.pbtxt``; ``to_pbtxt`` writes it in protobuf text format."""

    name: str
    inputs: tuple[IOTensor, ...]
    outputs: tuple[IOTensor, ...]
    max_batch_size: int
    instance_groups: tuple[InstanceGroup, ...]
    platform: str | None = None
    backend: str | None = None
    dynamic_batching: bool = False
    parameters: tuple[tuple[str, str], ...] = ()
    comments: tuple[str, ...] = field(default=(), compare=False)

    def dims(self, t: IOTensor) -> tuple[int, ...]:
        """The dims Triton wants: without the batch axis when Triton batches."""
        return t.shape[1:] if self.max_batch_size > 0 else t.shape

    def to_pbtxt(self) -> str:
        lines = [f"# {c}" if c else "#" for c in self.comments]
        lines.append(f"name: {_quote(self.name)}")
        if self.platform:
            lines.append(f"platform: {_quote(self.platform)}")
        if self.backend:
            lines.append(f"backend: {_quote(self.backend)}")
        lines.append(f"max_batch_size: {self.max_batch_size}")
        for key, tensors in (("input", self.inputs), ("output", self.outputs)):
            lines.append(f"{key} [")
            for i, t in enumerate(tensors):
                lines += [
                    "  {",
                    f"    name: {_quote(t.name)}",
                    f"    data_type: {triton_dtype(t.dtype)}",
                    f"    dims: [ {', '.join(str(d) for d in self.dims(t))} ]",
                    "  }" + ("," if i < len(tensors) - 1 else ""),
                ]
            lines.append("]")
        lines.append("instance_group [")
        for i, g in enumerate(self.instance_groups):
            lines += ["  {", f"    count: {g.count}", f"    kind: {g.kind}"]
            if g.profiles:
                lines.append(f"    profile: [ {', '.join(_quote(p) for p in g.profiles)} ]")
            lines.append("  }" + ("," if i < len(self.instance_groups) - 1 else ""))
        lines.append("]")
        if self.dynamic_batching:
            lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}", "}"]
        for key, value in self.parameters:
            lines += ["parameters {", f"  key: {_quote(key)}", f"  value: {{ string_value: {_quote(value)} }}", "}"]
        return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A protobuf text-format string literal (JSON's escapes are a subset it reads)."""
    return json.dumps(text, ensure_ascii=True)


# --------------------------------------------------------------------------- the model


def served_from_engine(info: Any, source: str) -> ServedModel:
    """From an engine's sidecar (:class:`dynashape.trt.engine.EngineInfo`)."""
    return ServedModel(
        source=source,
        inputs=tuple(IOTensor(t.name, t.dtype, tuple(t.shape)) for t in info.inputs),
        outputs=tuple(IOTensor(t.name, t.dtype, tuple(t.shape)) for t in info.outputs),
        profiles=tuple(info.profiles),
        tensorrt_version=info.tensorrt_version,
        gpu_name=info.gpu_name,
        compute_capability=info.compute_capability,
    )


def served_from_onnx(model: Any, source: str) -> ServedModel:
    """From an ONNX model's graph inputs and outputs (symbolic or unknown dims -> -1)."""
    def tensor(name: str, elem_type: int, dims: Sequence[Any]) -> IOTensor:
        if not elem_type:
            raise DynashapeError(f"{source}: {name!r} has no element type in the graph; re-export the model")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
        return IOTensor(name, dtype, tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims))

    inputs = tuple(tensor(i.name, i.elem_type, i.dims) for i in graph_inputs(model))
    outputs = []
    for vi in model.graph.output:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            raise DynashapeError(
                f"{source}: output {vi.name!r} has no rank in the graph; Triton needs one (re-export, or run "
                "onnx shape inference on the model)"
            )
        dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        outputs.append(tensor(vi.name, tt.elem_type, dims))
    return ServedModel(source=source, inputs=inputs, outputs=tuple(outputs))


# --------------------------------------------------------------------------- decisions


def check_triton_versions(model: ServedModel, tensorrt: str | None, compute_capability: str | None) -> None:
    """Refuse an engine built for another TensorRT (compared on the parts of ``tensorrt`` given:
    ``10.3`` matches 10.3.0.26) or another GPU architecture than the Triton it is meant for."""
    if model.tensorrt_version is None:
        return
    if tensorrt:
        want = [p for p in tensorrt.strip().split(".") if p]
        have = model.tensorrt_version.split(".")
        if not want or not all(p.isdigit() for p in want):
            raise DynashapeError(f"--triton-trt {tensorrt!r}: give a TensorRT version such as 10.3.0")
        if have[: len(want)] != want:
            raise DynashapeError(
                f"{model.source}: built with TensorRT {model.tensorrt_version}, but the Triton it is for has "
                f"TensorRT {tensorrt}; Triton's TensorRT backend only loads engines of its own release: rebuild "
                "the engine with that TensorRT (e.g. inside the same container), or use --backend python"
            )
    if compute_capability and model.compute_capability not in (None, "unknown", compute_capability):
        raise DynashapeError(
            f"{model.source}: built for {model.gpu_name} (compute capability {model.compute_capability}), but the "
            f"Triton GPUs have compute capability {compute_capability}; rebuild the engine on such a GPU"
        )


def plan_batching(model: ServedModel, requested: int | None) -> Batching:
    """Triton's ``max_batch_size``: the batch axis is axis 0 when it is dynamic in every input and
    output and no input is rank 1; profiles must all start at batch 1 (Triton sends any batch
    from 1 up) and bound it. Give ``requested=0`` for a model whose axis 0 is not a batch."""
    if requested is not None and requested < 0:
        raise DynashapeError(f"--max-batch {requested}: give 0 (no batching) or a positive batch size")
    tensors = [*model.inputs, *model.outputs]
    fixed = [t.name for t in tensors if not t.shape or t.shape[0] != -1]
    flat = [t.name for t in model.inputs if len(t.shape) < 2]
    if flat and not fixed:
        # a dynamic axis 0 of a rank-1 input is a length (tokens, points), not a batch
        if requested:
            raise DynashapeError(
                f"--max-batch {requested}: input {flat[0]!r} has rank 1, so its axis 0 "
                "is not a batch Triton could split; leave --max-batch out or give 0"
            )
        return Batching(0, f"input {flat[0]!r} has rank 1: its axis 0 is not taken for a batch; dims are full shapes")
    if fixed:
        if requested:
            raise DynashapeError(
                f"--max-batch {requested}: axis 0 of {fixed[0]!r} is not dynamic, so Triton cannot batch this model; "
                "leave --max-batch out or give 0"
            )
        return Batching(0, f"axis 0 of {fixed[0]!r} is not dynamic: no Triton batching, dims are full shapes")
    if requested == 0:
        return Batching(0, "--max-batch 0: no Triton batching, dims are full shapes")
    if not model.profiles:
        size = requested or DEFAULT_ONNX_MAX_BATCH
        how = "--max-batch" if requested else "the default for an ONNX model (--max-batch to change)"
        return Batching(size, f"axis 0 is the batch; max_batch_size {size} is {how}")
    for i, prof in enumerate(model.profiles):
        starts = {p.min[0] for _, p in prof if p.min}
        if starts != {1}:
            if requested:
                raise DynashapeError(
                    f"--max-batch {requested}: profile {i} starts at batch {min(starts)}, but Triton sends batches "
                    "from 1 up; rebuild with profiles whose batch starts at 1, or give --max-batch 0"
                )
            return Batching(
                0, f"profile {i} starts at batch {min(starts)}, not 1: no Triton batching, dims are full shapes"
            )
    limit = min(p.max[0] for prof in model.profiles for _, p in prof if p.max)
    if requested is not None and requested > limit:
        raise DynashapeError(
            f"--max-batch {requested}: the engine's profiles only all accept batches up to {limit}; "
            f"give at most {limit}, or rebuild with a larger batch range"
        )
    size = requested or limit
    if size == 1:
        return Batching(1, "every profile's batch is 1: max_batch_size 1 (requests carry the batch axis)")
    return Batching(size, f"axis 0 is the batch; max_batch_size {size}: every profile takes batches 1..{limit}")


def instance_groups(model: ServedModel, count: int, kind: str) -> tuple[tuple[InstanceGroup, ...], str]:
    """Instance groups using every profile (see the module's docstring) and why."""
    if count < 1:
        raise DynashapeError(f"--instances {count}: give at least 1")
    n = len(model.profiles)
    if n <= 1:
        return (InstanceGroup(count, kind, ("0",) if n else ()),), "one profile"
    ranges = {tuple((name, p.min, p.max) for name, p in prof) for prof in model.profiles}
    if len(ranges) == 1:
        groups = tuple(InstanceGroup(count, kind, (str(i),)) for i in range(n))
        return groups, (f"the {n} profiles cover the same range: one group per profile, so each is used by "
                        f"{count} instance(s)")
    groups = (InstanceGroup(count, kind, tuple(str(i) for i in range(n))),)
    return groups, (f"the {n} profiles cover different ranges and Triton does not route by shape: each instance "
                    "holds them all and picks, per request, the one containing the shape whose opt is nearest")


# --------------------------------------------------------------------------- text for people and clients


def describe_lattice(lattice: Lattice) -> list[str]:
    out = []
    for name, axes in lattice.items():
        for axis, lat in sorted(axes.items()):
            if lat.multiple == 1 and lat.min <= 1:
                continue
            sizes = ", ".join(str(lat.min + k * lat.multiple) for k in range(3))
            out.append(f"{name} axis {axis}: {sizes}, ... (from {lat.min} in steps of {lat.multiple})")
    return out


def _profiles_json(profiles: Sequence[Profile]) -> str:
    return json.dumps([p.to_json() for p in profiles], separators=(",", ":"))


def _common(model: ServedModel, batching: Batching, groups_reason: str) -> tuple[list[str], list[tuple[str, str]]]:
    comments = [f"written by dynashape {__version__} from {model.source}"]
    if model.tensorrt_version:
        comments.append(
            f"engine: TensorRT {model.tensorrt_version}, {model.gpu_name} (compute capability "
            f"{model.compute_capability}); Triton's TensorRT backend must be this TensorRT release"
        )
    comments.append(f"batching: {batching.reason}")
    if model.profiles:
        comments.append("optimization profiles, full shapes (min / opt / max):")
        for i, prof in enumerate(model.profiles):
            text = ", ".join(
                f"{name}: {format_shape(p.min)} / {format_shape(p.opt)} / {format_shape(p.max)}" for name, p in prof
            )
            comments.append(f"  profile {i}: {text}")
        comments.append(f"instance groups: {groups_reason}")
    if model.lattice:
        lines = describe_lattice(model.lattice)
        if lines:
            comments.append("valid sizes (other sizes fail or give wrong results):")
            comments += [f"  {line}" for line in lines]
    params = [("dynashape.version", __version__)]
    if model.profiles:
        params.append(("dynashape.profiles", _profiles_json(model.profiles)))
    if model.lattice:
        params.append(("dynashape.lattice", json.dumps(lattice_to_json(model.lattice), separators=(",", ":"))))
    if model.export_shape:
        shapes = {name: list(shape) for name, shape in model.export_shape.items()}
        params.append(("dynashape.export_shape", json.dumps(shapes, separators=(",", ":"))))
    return comments, params


def tensorrt_config(model: ServedModel, name: str, max_batch: int | None, instances: int) -> ModelConfig:
    """``platform: "tensorrt_plan"`` for Triton's TensorRT backend."""
    if model.tensorrt_version is None:
        raise DynashapeError(
            f"{model.source}: Triton's TensorRT backend needs an engine, not an ONNX model: build one with "
            "`dynashape build MODEL.onnx -o MODEL.engine` on the GPU and TensorRT of the Triton that will serve it, "
            "then run `dynashape triton MODEL.engine`; or serve the ONNX model with --backend python"
        )
    batching = plan_batching(model, max_batch)
    groups, why = instance_groups(model, instances, "KIND_GPU")
    comments, params = _common(model, batching, why)
    return ModelConfig(
        name=name, inputs=model.inputs, outputs=model.outputs, max_batch_size=batching.max_batch_size,
        instance_groups=groups, platform="tensorrt_plan", dynamic_batching=batching.max_batch_size > 1,
        parameters=tuple(params), comments=tuple(comments),
    )


def python_config(
    model: ServedModel, name: str, max_batch: int | None, instances: int, files: Mapping[str, str]
) -> ModelConfig:
    """``backend: "python"`` running dynashape's ``model.py``; ``files``: role -> file name in the
    version directory (``engine``, ``onnx``)."""
    batching = plan_batching(model, max_batch)
    # the Python backend has no profile field: each instance (a process) loads the whole engine,
    # whose runtime picks the profile per request
    kind = "KIND_MODEL" if "engine" in files else "KIND_CPU"
    group = InstanceGroup(instances, kind)
    if instances < 1:
        raise DynashapeError(f"--instances {instances}: give at least 1")
    why = "each instance loads the whole engine; dynashape's runtime picks the profile per request (measured plan)"
    comments, params = _common(model, batching, why)
    runtime = "the TensorRT engine where tensorrt imports, else ONNX Runtime on CPU" if "engine" in files else (
        "ONNX Runtime on CPU")
    comments.insert(1, f"Python backend: dynashape's model.py runs {runtime}")
    params += [(f"dynashape.{role}", file) for role, file in sorted(files.items())]
    return ModelConfig(
        name=name, inputs=model.inputs, outputs=model.outputs, max_batch_size=batching.max_batch_size,
        instance_groups=(group,), backend="python", dynamic_batching=batching.max_batch_size > 1,
        parameters=tuple(params), comments=tuple(comments),
    )


def validate_pbtxt(text: str) -> bool:
    """Parse ``text`` with Triton's own ``ModelConfig`` message (from ``tritonclient``): unknown
    fields and wrong types raise. False when tritonclient is not installed (nothing checked)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        log.debug("tritonclient[grpc] is not installed: config.pbtxt not checked against Triton's schema")
        return False
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise DynashapeError(f"the generated config.pbtxt does not parse as Triton's ModelConfig: {exc}") from None
    return True
