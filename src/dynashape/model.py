"""Loading and saving ONNX models: clear errors for bad files, atomic writes, input facts.

The user's input file is only ever read. Every write goes to a temporary file in the target
directory and is renamed into place, so an interrupted run leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from dynashape.errors import DynashapeError
from dynashape.shapes import Shape, ShapeMap, format_shape, parse_shapes

log = logging.getLogger(__name__)

MIN_OPSET = 11
EXPORT_SHAPE_KEY = "dynashape.export_shape"

Dim = int | str | None  # int: fixed, str: a named symbol, None: unknown


@dataclass(frozen=True)
class InputInfo:
    """A graph input: its name, element type and dims as the graph declares them."""

    name: str
    elem_type: int
    dims: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> list[int]:
        return [i for i, d in enumerate(self.dims) if not isinstance(d, int)]

    @property
    def rank(self) -> int:
        return len(self.dims)

    def describe(self) -> str:
        return "x".join("?" if d is None else str(d) for d in self.dims)


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and validate an ONNX file, turning every way it can be bad into one clear error."""
    p = Path(path)
    if not p.exists():
        raise DynashapeError(f"{p}: no such file")
    if p.is_dir():
        raise DynashapeError(f"{p}: is a directory, expected an .onnx file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DynashapeError(f"{p}: cannot read ({exc.strerror})") from None
    if not data:
        raise DynashapeError(f"{p}: the file is empty; re-export the model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError or RuntimeError depending on the backend
        raise DynashapeError(
            f"{p}: not a valid ONNX file (truncated or not ONNX); re-export or re-download it"
        ) from None
    del data  # the file's bytes: a second copy of the weights beside the parsed model
    if not model.HasField("graph") or not model.graph.node:
        raise DynashapeError(
            f"{p}: not a valid ONNX model (no graph or no nodes); the file may be truncated "
            "or not ONNX at all"
        )
    _load_external_data(model, p)
    opset = default_opset(model)
    if opset is not None and opset < MIN_OPSET:
        raise DynashapeError(
            f"{p}: opset {opset} is older than {MIN_OPSET}; re-export with opset_version>={MIN_OPSET} "
            "or convert it with onnx.version_converter"
        )
    validate_model(model, str(p))
    name_nodes(model)
    release_memory()
    return model


def release_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    Parsing and checking a model frees megabytes of small protobuf allocations that the C
    allocator otherwise keeps: after loading ViT-B/16, 340 MB of them."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def validate_model(model: onnx.ModelProto, where: str = "model") -> None:
    """Refuse, with one line naming the tensor or node, anything the pipeline cannot analyse.

    ``onnx.checker`` accepts models that break later steps: tensors whose data disagree with
    their dims, element types onnx_ir cannot read, negative dims, node input types that do not
    match (the checker does not infer types). So after the checker: cheap consistency checks of
    every tensor and graph input, strict type and shape inference on a light copy (weights
    replaced by their types) and onnx_ir deserialization, the form every rule reads."""
    if model.ir_version < _MIN_IR_VERSION:
        raise DynashapeError(
            f"{where}: IR version {model.ir_version} is older than {_MIN_IR_VERSION}, which opset "
            f"{default_opset(model) or '?'} needs; re-export the model (or set model.ir_version)"
        )
    size = serialized_size(model)
    if size >= _PROTOBUF_LIMIT:
        raise DynashapeError(f"{where}: the model is {size / 1e9:.1f} GB in memory, over protobuf's 2 GB limit; "
                             "save its weights as external data (onnx.save(..., save_as_external_data=True))")
    # the checker and inference get a copy with the weights as typed inputs (their data is checked
    # below, by length): the checker serializes what it is given and parses it again, which would be
    # two more copies of a 330 MB model
    light = _weights_as_inputs(model)
    try:
        onnx.checker.check_model(light)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise DynashapeError(f"{where}: the ONNX checker rejects the model: {_first_line(exc)}") from None
    domains = [imp.domain for imp in model.opset_import]
    dup = next((d for d in domains if domains.count(d) > 1 or (d == "ai.onnx" and "" in domains)), None)
    if dup is not None:
        raise DynashapeError(f"{where}: domain {dup or 'ai.onnx'!r} is imported twice (opset_import); "
                             "keep one version of it and re-save the model")
    if default_opset(model) is None and any(_standard(n.domain) for n in model.graph.node):
        raise DynashapeError(f"{where}: the model has no opset import for the standard ONNX domain; "
                             "re-export it (or add one with onnx.helper.make_opsetid('', VERSION))")
    _check_inputs(model, where)
    for graph_name, graph in _graphs(model.graph):
        for tensor in graph.initializer:
            _check_tensor(tensor, f"initializer {tensor.name!r}", where)
        for sparse in graph.sparse_initializer:
            _check_tensor(sparse.values, f"sparse initializer {sparse.values.name!r}", where)
        for node in graph.node:
            for attr in node.attribute:
                for tensor in (*([attr.t] if attr.HasField("t") else []), *attr.tensors):
                    _check_tensor(tensor, f"attribute {attr.name!r} of {node.op_type} node "
                                  f"{node.name or node.output[0] if node.output else '?'!r}", where)
        for vi in (*graph.input, *graph.output, *graph.value_info):
            _check_value_info(vi, f"{graph_name}{vi.name!r}", where)
    _check_annotations(model, where)
    _strict_inference(light, where)
    try:
        import onnx_ir as ir

        ir.serde.deserialize_model(model)
    except Exception as exc:  # SerdeError, ValueError: anything onnx_ir cannot read, the rules cannot either
        cause = exc.__cause__ or exc
        raise DynashapeError(
            f"{where}: the model cannot be read into dynashape's graph form ({_first_line(cause)}); "
            "re-export it or run it through onnx.shape_inference / onnxsim first"
        ) from None


_PROTOBUF_LIMIT = 2**31  # bytes: a ModelProto cannot be serialized beyond it
_MIN_IR_VERSION = 4  # initializers need not be graph inputs from IR 4 on; every rewrite relies on it
_MAX_DIM = 2**31 - 1  # TensorRT's and ONNX Runtime's practical limit for one dim
_LIGHT_LIMIT = 1024  # initializers with more elements become typed inputs in the strict-inference copy


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _standard(domain: str) -> bool:
    return domain in ("", "ai.onnx")


def _graphs(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graph and every subgraph (If/Loop/Scan bodies), with a label for messages."""
    yield prefix, graph
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for sub in subs:
                yield from _graphs(sub, f"{prefix}subgraph {attr.name!r} of node {node.name!r}: ")


def _check_inputs(model: onnx.ModelProto, where: str) -> None:
    inits = {t.name for t in model.graph.initializer}
    seen: set[str] = set()
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if vi.name in seen:
            raise DynashapeError(f"{where}: graph input {vi.name!r} is declared twice; re-export the model")
        seen.add(vi.name)
        if not vi.type.HasField("tensor_type"):
            kind = vi.type.WhichOneof("value") or "no type"
            raise DynashapeError(f"{where}: graph input {vi.name!r} is not a tensor ({kind}); dynashape "
                                 "analyses models whose inputs are tensors")
        tt = vi.type.tensor_type
        if tt.elem_type == onnx.TensorProto.UNDEFINED:
            raise DynashapeError(f"{where}: graph input {vi.name!r} has no element type; re-export the model")
        if not tt.HasField("shape"):
            raise DynashapeError(f"{where}: graph input {vi.name!r} has no shape (not even a rank); re-export "
                                 "with the input's rank, its dynamic axes named (dynamic_axes)")
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > _MAX_DIM:
                raise DynashapeError(f"{where}: graph input {vi.name!r} declares axis {k} of size {d.dim_value}, "
                                     f"over {_MAX_DIM}; fix the export (or make that axis dynamic)")


def _check_annotations(model: onnx.ModelProto, where: str) -> None:
    """A tensor declared twice (a graph input also listed as an output, value_info of a graph
    input or output) must be declared alike: inference does not compare the two."""
    g = model.graph
    declared: dict[str, tuple[str, onnx.ValueInfoProto]] = {}
    for kind, infos in (("graph input", g.input), ("graph output", g.output), ("value_info", g.value_info)):
        for vi in infos:
            first = declared.setdefault(vi.name, (kind, vi))
            if first[1] is vi or not (vi.type.HasField("tensor_type") and first[1].type.HasField("tensor_type")):
                continue
            a, b = vi.type.tensor_type, first[1].type.tensor_type
            what = (f"element type {a.elem_type}", f"{b.elem_type}") if a.elem_type and b.elem_type \
                and a.elem_type != b.elem_type else None
            if what is None and a.HasField("shape") and b.HasField("shape") and len(a.shape.dim) != len(b.shape.dim):
                what = (f"rank {len(a.shape.dim)}", f"rank {len(b.shape.dim)}")
            if what is not None:
                raise DynashapeError(f"{where}: the {kind} {vi.name!r} has {what[0]}, the {first[0]} of that name "
                                     f"{what[1]}; re-export the model")


def _check_value_info(vi: onnx.ValueInfoProto, label: str, where: str) -> None:
    if not vi.type.HasField("tensor_type"):
        return
    tt = vi.type.tensor_type
    if tt.elem_type not in _ELEM_TYPES:
        raise DynashapeError(f"{where}: tensor {label} has element type {tt.elem_type}, which is not an ONNX "
                             "data type; re-export the model")
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value < 0:
            raise DynashapeError(f"{where}: tensor {label} declares axis {k} of size {d.dim_value} (negative); "
                                 "re-export the model")


_ELEM_TYPES = frozenset(onnx.TensorProto.DataType.values())
_TYPED_FIELD: dict[int, tuple[str, int]] = {  # data type -> (field holding it when not raw, values per element)
    onnx.TensorProto.FLOAT: ("float_data", 1), onnx.TensorProto.COMPLEX64: ("float_data", 2),
    onnx.TensorProto.DOUBLE: ("double_data", 1), onnx.TensorProto.COMPLEX128: ("double_data", 2),
    onnx.TensorProto.INT64: ("int64_data", 1), onnx.TensorProto.UINT32: ("uint64_data", 1),
    onnx.TensorProto.UINT64: ("uint64_data", 1), onnx.TensorProto.STRING: ("string_data", 1),
}


def _check_tensor(t: onnx.TensorProto, label: str, where: str) -> None:
    """The tensor's data type is real, its dims are not negative and its data hold exactly
    prod(dims) elements (by length: nothing is decoded)."""
    if t.data_type not in _ELEM_TYPES or t.data_type == onnx.TensorProto.UNDEFINED:
        raise DynashapeError(f"{where}: {label} has data type {t.data_type}, which is not an ONNX data type; "
                             "re-export the model")
    if any(d < 0 for d in t.dims):
        raise DynashapeError(f"{where}: {label} has negative dims {list(t.dims)}; re-export the model")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return  # loaded by _load_external_data, or left for the checker to refuse
    if t.HasField("segment"):
        raise DynashapeError(f"{where}: {label} is a segment of a larger tensor, which dynashape does not "
                             "read; re-save the model with onnx.save")
    count = math.prod(int(d) for d in t.dims)
    name = onnx.helper.tensor_dtype_to_string(t.data_type).removeprefix("TensorProto.")
    if t.raw_data:
        if t.data_type == onnx.TensorProto.STRING:
            raise DynashapeError(f"{where}: {label} is a STRING tensor stored as raw bytes; re-export the model")
        typed = next((f for f, _ in _TYPED_FIELD.values() if len(getattr(t, f))), None)
        if typed is not None:
            raise DynashapeError(f"{where}: {label} holds its data twice (raw_data and {typed}); "
                                 "the file is corrupt or was edited by hand, re-export it")
        bits = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * 8
        if t.data_type in _FOUR_BIT:
            bits = 4
        want = (count * bits + 7) // 8
        if len(t.raw_data) != want:
            raise DynashapeError(
                f"{where}: {label} declares dims {list(t.dims)} of {name} ({want} bytes) but holds "
                f"{len(t.raw_data)} bytes; the file is corrupt or was edited by hand, re-export it")
        return
    field, per = _TYPED_FIELD.get(t.data_type, ("int32_data", 1))
    have = len(getattr(t, field))
    want = (count + 1) // 2 if t.data_type in _FOUR_BIT else count * per
    if have != want:
        raise DynashapeError(
            f"{where}: {label} declares dims {list(t.dims)} of {name} ({count} element(s)) but holds "
            f"{have // per if per else have}; the file is corrupt or was edited by hand, re-export it")


_FOUR_BIT = frozenset(
    getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, n)
)


def _weights_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose initializers of over 1,024 elements (but int64 ones, which can be shape data)
    are typed graph inputs instead: what the checker and inference look at, without the weights."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.metadata_props.extend(model.metadata_props)
    g, src = light.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)  # annotations the rules read through onnx_ir: they must agree too
    declared = {vi.name for vi in src.input}
    for t in src.initializer:
        if math.prod(t.dims) <= _LIGHT_LIMIT or t.data_type == onnx.TensorProto.INT64:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    g.sparse_initializer.extend(src.sparse_initializer)
    return light


def _strict_inference(light: onnx.ModelProto, where: str) -> None:
    """ONNX type and shape inference in strict mode, on symbolic input shapes (of
    ``_weights_as_inputs(model)``): refuses input types a node cannot take (an int64 Add with a
    float constant) and shapes that cannot agree whatever the input size, and value_info that
    contradicts the graph."""
    try:
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=False)
    except Exception as exc:  # InferenceError, ValidationError, or a RuntimeError from an op's inference
        raise DynashapeError(
            f"{where}: ONNX type and shape inference rejects the model ({_inference_message(exc)}); it is not "
            "valid ONNX and would not run in ONNX Runtime either: re-export it"
        ) from None


def _inference_message(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if "node name" in line or "Error" in line:
            for noise in ("[ShapeInferenceError] ", "[TypeInferenceError] ", "Inference error(s): "):
                line = line.replace(noise, "")
            return line[:300]
    return _first_line(exc)


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not any(uses_external_data(t) for t in model.graph.initializer):
        return
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        # onnx reports a missing data file as a ValidationError, not an OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DynashapeError(
            f"{path}: its external data cannot be read ({first}); keep the data files beside the model"
        ) from None


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name so findings can point at it (in memory only)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = f"{node.op_type}_{i}"
            name = base
            k = 1
            while name in seen:
                name = f"{base}_{k}"
                k += 1
            node.name = name
        seen.add(node.name)


def graph_inputs(model: onnx.ModelProto) -> list[InputInfo]:
    """The real inputs (initializers listed as inputs, as old exporters do, are left out)."""
    inits = {t.name for t in model.graph.initializer}
    result = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        result.append(InputInfo(vi.name, tt.elem_type, tuple(dims)))
    return result


def input_names(model: onnx.ModelProto) -> list[str]:
    return [i.name for i in graph_inputs(model)]


def require_dynamic(model: onnx.ModelProto, path: str | os.PathLike[str] = "model") -> None:
    if not any(i.dynamic_axes for i in graph_inputs(model)):
        shapes = ", ".join(f"{i.name}:{i.describe()}" for i in graph_inputs(model))
        raise DynashapeError(
            f"{path}: no input has a dynamic axis ({shapes}), so there is nothing to check; "
            "re-export with dynamic_axes (or `dynashape export --dynamic`)"
        )


def read_export_shape(model: onnx.ModelProto) -> ShapeMap | None:
    """The export shape recorded by `dynashape export` (metadata), if any."""
    for prop in model.metadata_props:
        if prop.key == EXPORT_SHAPE_KEY:
            try:
                return parse_shapes(prop.value)
            except DynashapeError:
                log.warning("ignoring unparsable %s metadata %r", EXPORT_SHAPE_KEY, prop.value)
    return None


def write_export_shape(model: onnx.ModelProto, shapes: ShapeMap) -> None:
    value = ",".join(f"{n}:{format_shape(s)}" for n, s in shapes.items())
    for prop in model.metadata_props:
        if prop.key == EXPORT_SHAPE_KEY:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key = EXPORT_SHAPE_KEY
    entry.value = value


def concrete_shapes(model: onnx.ModelProto, export: ShapeMap) -> ShapeMap:
    """Fill every input's shape: the export shape where given, else its fixed dims."""
    out: ShapeMap = {}
    for info in graph_inputs(model):
        if info.name in export:
            out[info.name] = export[info.name]
        elif not info.dynamic_axes:
            out[info.name] = tuple(int(d) for d in info.dims if isinstance(d, int))
        else:
            raise DynashapeError(
                f"no shape for input {info.name!r} ({info.describe()}); give it with --input"
            )
    return out


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_path(
    out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Refuse an output path whose directory is missing or read-only, that is a directory, or that
    would overwrite an input."""
    p = Path(out)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise DynashapeError(f"output directory {parent} does not exist; create it first")
    if p.is_dir():
        raise DynashapeError(f"{p} is a directory; give a file name, e.g. {p / 'model.onnx'}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DynashapeError(f"cannot write in {parent}: permission denied; choose another -o path")
    for src in inputs:
        if Path(src).exists() and p.exists() and p.resolve() == Path(src).resolve():
            raise DynashapeError(f"{p}: refusing to overwrite the input model; choose another -o path")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; on success rename it onto ``out``, else remove it."""
    target = Path(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    except OSError as exc:  # a read-only or missing directory: the user's to fix, and nothing was written
        raise DynashapeError(f"cannot write {target}: {exc.strerror or exc}; choose another output path") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(tmp_path, 0o666 & ~_umask())
        try:
            os.replace(tmp_path, target)
        except OSError as exc:  # e.g. the target is a directory
            raise DynashapeError(f"cannot write {target}: {exc.strerror or exc}; choose another output path") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_model(model: onnx.ModelProto, out: str | os.PathLike[str]) -> Path:
    """Write a model atomically; large models keep their weights in one external data file."""
    target = Path(out)
    size = model.ByteSize()
    with atomic_path(target) as tmp:
        if size > 1_900_000_000:
            raise DynashapeError(
                f"{target}: the model is {size / 1e9:.1f} GB, over protobuf's 2 GB limit; "
                "saving with external data is not supported yet"
            )
        tmp.write_bytes(model.SerializeToString())
    return target


def write_text_atomic(out: str | os.PathLike[str], text: str) -> Path:
    target = Path(out)
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return target


def write_json_atomic(out: str | os.PathLike[str], data: object) -> Path:
    return write_text_atomic(out, json.dumps(data, indent=2, sort_keys=False) + "\n")


def describe_shape(shape: Shape) -> str:
    return format_shape(shape)


# an initializer whose data was replaced by its digest (see lighten): equal digests, equal data
DIGESTED = "dynashape:sha256 of the data"
# elements: more than any constant a probe reads as a value (dynashape.analysis.probe), so probing the copy
# gives what probing the model gives, and the rules' values stay readable
_DIGEST_OVER = 4096
# only floating-point weights: integer tensors can be shape data, which ONNX inference reads
_WEIGHT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                           onnx.TensorProto.DOUBLE})


def digested(t: onnx.TensorProto) -> onnx.TensorProto:
    if t.doc_string == DIGESTED or not t.raw_data:
        return t
    d = onnx.TensorProto()
    d.name, d.data_type, d.doc_string = t.name, t.data_type, DIGESTED
    d.dims.extend(t.dims)
    d.raw_data = hashlib.sha256(t.raw_data).digest()
    return d


def lighten(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose floating-point initializers of over 4,096 elements hold the SHA-256 digest of their data
    instead of it (dims and type kept): for what needs the graph, its shape constants and whether
    a weight changed, never the weights (comparing exports, probing shapes). ViT-B/16's 330 MB of
    weights become 6 KB. The copy cannot run. A new message, not an edit in place: protobuf frees
    a field's old bytes only with the whole message."""
    light = _without_initializers(model)
    for t in model.graph.initializer:
        big = (t.data_type in _WEIGHT_TYPES and t.data_location != onnx.TensorProto.EXTERNAL
               and math.prod(t.dims) > _DIGEST_OVER and t.HasField("raw_data"))
        light.graph.initializer.append(digested(t) if big else t)
    return light


_EXTERNAL_OVER = 1 << 20  # bytes: tensors this large go to the weights file
_ALIGN = 4096  # offsets in the weights file, so that a runtime may map the tensors in place


def save_with_external_weights(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` with its large weights in ``PATH.weights`` beside it (ONNX
    external data), one tensor at a time: ``onnx.save`` serializes the whole model into one
    bytes object first, a second copy of every weight at once (ViT-B/16: 335 MB). The model is
    not modified. For a runtime to read (ONNX Runtime resolves the file from the model's path)."""
    target = Path(path)
    weights = target.with_name(target.name + ".weights")
    light = _without_initializers(model)
    with open(weights, "wb") as f:
        for t in model.graph.initializer:
            data = t.raw_data if t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL else b""
            if len(data) < _EXTERNAL_OVER:  # (reading raw_data copies it: one tensor's bytes at a time)
                light.graph.initializer.append(t)
                continue
            f.write(b"\0" * (-f.tell() % _ALIGN))
            start = f.tell()
            f.write(data)
            ext = light.graph.initializer.add()
            ext.name, ext.data_type = t.name, t.data_type
            ext.dims.extend(t.dims)
            ext.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", weights.name), ("offset", str(start)), ("length", str(len(data)))):
                entry = ext.external_data.add()
                entry.key, entry.value = key, value
    with open(target, "wb") as f:
        f.write(light.SerializeToString())
    return target


def serialized_size(model: onnx.ModelProto) -> int:
    """About ``model.ByteSize()``, without what that costs: protobuf computes it by serializing
    the model (ViT-B/16: 0.7 s and 335 MB). A raw tensor over 4,096 elements counts by its dims and
    type (reading ``raw_data`` would copy it), with room for its name and dims; the rest exactly."""
    size = _without_initializers(model).ByteSize()
    for t in model.graph.initializer:
        count = math.prod(t.dims)
        if count > _DIGEST_OVER and t.HasField("raw_data") and t.data_type in _ELEM_TYPES:
            bits = 4 if t.data_type in _FOUR_BIT else onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * 8
            size += (count * bits + 7) // 8 + len(t.name) + 11 * len(t.dims) + 32
        else:
            size += t.ByteSize() + 8
    return size


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    shell = onnx.ModelProto()
    for field_name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(shell, field_name, getattr(model, field_name))
    shell.opset_import.extend(model.opset_import)
    shell.metadata_props.extend(model.metadata_props)
    shell.functions.extend(model.functions)
    g, src = shell.graph, model.graph
    g.name, g.doc_string = src.name, src.doc_string
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, part).extend(getattr(src, part))
    return shell
