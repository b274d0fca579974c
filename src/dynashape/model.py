"""Loading and saving ONNX models: clear errors for bad files, atomic writes, input facts.

The user's input file is only ever read. Every write goes to a temporary file in the target
directory and is renamed into place, so an interrupted run leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
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
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown reason"
        raise DynashapeError(f"{p}: the ONNX checker rejects the model: {first}") from None
    name_nodes(model)
    return model


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
    """Refuse an output path whose directory is missing or that would overwrite an input."""
    p = Path(out)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise DynashapeError(f"output directory {parent} does not exist; create it first")
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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
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
