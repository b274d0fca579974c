"""PyTorch → ONNX with dynamic axes: load the user's module, export it, keep what the exporter said.

``load_module("path/to/file.py:FACTORY")`` or ``load_module("package.module:FACTORY")`` builds the
module (in eval mode); ``export_module`` exports it with either exporter of ``torch.onnx.export``
and returns the model together with the warnings the exporter raised (TracerWarnings of the
legacy exporter, guards and specializations of the dynamo exporter), each with its file:line.

The legacy exporter is run with ``verbose=True`` because only then does it keep each node's
Python stack in ``doc_string``; differential export uses it to name the source line of a baked
value. Its verbose graph dump goes to the C++ stdout and is discarded.

Torch is imported lazily: importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import onnx

from dynashape.backends.torch import display_path, flatten_outputs
from dynashape.backends.torch import load_module as load_module  # loading is the backend's; re-exported
from dynashape.errors import DynashapeError
from dynashape.model import save_model, write_export_shape
from dynashape.shapes import ShapeMap, format_shape

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Exporter = Literal["legacy", "dynamo"]
EXPORTERS: tuple[str, ...] = ("legacy", "dynamo")
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}

# Guard/specialization lines of torch's symbolic shape engine, e.g.
# "eval Eq(s53, 64) [guard added] (mp/t7.py:15 in forward), for more info ..."
_GUARD_LOCATION = re.compile(r"\(([^()\s]+):(\d+) in ([^)]+)\)")
_GUARD_LOCATION_COMMENT = re.compile(r"#\s*([^\s:]+):(\d+) in (\S+)")


@dataclass(frozen=True)
class ExportWarning:
    """One warning the exporter raised, with the user's source line when known."""

    category: str
    message: str
    filename: str | None = None
    lineno: int | None = None

    @property
    def location(self) -> str:
        if self.filename is None:
            return "<unknown>"
        return f"{display_path(self.filename)}:{self.lineno}" if self.lineno else self.filename

    def __str__(self) -> str:
        return f"{self.location}: {self.category}: {self.message}"


@dataclass
class ExportResult:
    """An exported model, the shape it was exported at, and what the exporter warned about."""

    model: onnx.ModelProto
    input_shapes: ShapeMap
    dynamic: dict[str, list[int]]
    exporter: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    warnings: list[ExportWarning] = field(default_factory=list)
    path: Path | None = None
    # axes that were asked to be dynamic but came out fixed (the exporter specialized them)
    specialized: dict[str, list[int]] = field(default_factory=dict)


# --------------------------------------------------------------------------- exporting


def default_dynamic(input_shapes: ShapeMap) -> dict[str, list[int]]:
    """Every axis except the channels (axis 1) of 4-D inputs."""
    return {
        name: [a for a in range(len(shape)) if not (len(shape) == 4 and a == 1)]
        for name, shape in input_shapes.items()
    }


def axis_names(input_shapes: ShapeMap, dynamic: dict[str, list[int]]) -> dict[str, dict[int, str]]:
    """Symbolic dim names: ``batch``, ``height``, ``width`` (prefixed by the input for later inputs)."""
    names: dict[str, dict[int, str]] = {}
    for k, (name, shape) in enumerate(input_shapes.items()):
        prefix = "" if k == 0 else f"{name}_"
        per: dict[int, str] = {}
        for axis in dynamic.get(name, []):
            if axis == 0:
                per[axis] = "batch"
            elif len(shape) == 4 and axis == 2:
                per[axis] = f"{prefix}height"
            elif len(shape) == 4 and axis == 3:
                per[axis] = f"{prefix}width"
            else:
                per[axis] = f"{name}_dim{axis}"
        names[name] = per
    return names


def _check_dynamic(input_shapes: ShapeMap, dynamic: dict[str, list[int]]) -> None:
    for name, axes in dynamic.items():
        if name not in input_shapes:
            raise DynashapeError(
                f"--dynamic names {name!r}, which is not an input (inputs: {', '.join(input_shapes)})"
            )
        rank = len(input_shapes[name])
        for axis in axes:
            if not 0 <= axis < rank:
                raise DynashapeError(
                    f"--dynamic {name}: axis {axis} is out of range for the {rank}-D input "
                    f"{name}:{format_shape(input_shapes[name])}"
                )


def example_inputs(input_shapes: ShapeMap, seed: int = 0) -> list[torch.Tensor]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for shape in input_shapes.values()]


def run_module(module: torch.nn.Module, input_shapes: ShapeMap, args: Sequence[torch.Tensor]) -> Any:
    """Run the module once; a module that rejects the shapes raises one clear DynashapeError."""
    import torch

    try:
        # no_grad, not inference_mode: a module that caches tensors in forward (YOLO grids) keeps
        # them, and inference tensors cannot be traced by the exporter afterwards
        with torch.no_grad():
            return module(*args)
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        given = ", ".join(f"{n}:{format_shape(s)}" for n, s in input_shapes.items())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DynashapeError(
            f"the module does not accept --input {given}: {first[:300]}; check the number of "
            "inputs, the channels and the minimum size the model needs"
        ) from None


def export_module(
    module: torch.nn.Module,
    input_shapes: ShapeMap,
    dynamic: dict[str, list[int]] | None = None,
    exporter: str = "legacy",
    path: str | os.PathLike[str] | None = None,
    opset: int | None = None,
    output_names: Sequence[str] | None = None,
) -> ExportResult:
    """Export ``module`` at ``input_shapes`` with ``dynamic`` axes (default: all but channels).

    ``exporter`` is ``legacy`` (TorchScript tracing, ``dynamo=False``) or ``dynamo``
    (``torch.export``). ``opset`` defaults to 17 for legacy and 18 for dynamo (its lowest
    native opset). The export shape is written into the model's metadata; with ``path`` the
    model is also saved there atomically.
    """
    if exporter not in EXPORTERS:
        raise DynashapeError(f"unknown exporter {exporter!r}; choose legacy or dynamo")
    if not input_shapes:
        raise DynashapeError("no input shapes given; write e.g. --input input:1x3x224x224")
    dynamic = default_dynamic(input_shapes) if dynamic is None else dynamic
    _check_dynamic(input_shapes, dynamic)
    opset = opset or DEFAULT_OPSET[exporter]
    module = module.eval()
    input_names = list(input_shapes)
    args = example_inputs(input_shapes)

    eager = run_module(module, input_shapes, args)
    outs = flatten_outputs(eager)
    if not outs:
        raise DynashapeError("the module returned no tensor; there is nothing to export")
    if output_names:
        names = list(output_names)
        _check_output_names(names, input_names)
    else:
        names = valid_output_names([n for n, _ in outs], reserved=input_names)

    dims = axis_names(input_shapes, dynamic)
    log.info("exporting with the %s exporter at %s", exporter,
             ", ".join(f"{n}:{format_shape(s)}" for n, s in input_shapes.items()))
    if exporter == "legacy":
        model, caught = _export_legacy(module, args, input_names, names, dims, opset)
    else:
        model, caught = _export_dynamo(module, args, input_names, names, dims, opset)
        _rename_dims(model, dims)

    specialized = _specialized_axes(model, dims)
    for name, axes in specialized.items():
        caught.append(ExportWarning(
            "Specialization",
            f"input {name!r} axes {axes} were asked to be dynamic but the exporter fixed them "
            f"to {[input_shapes[name][a] for a in axes]}",
        ))
    write_export_shape(model, input_shapes)
    result = ExportResult(
        model=model, input_shapes=dict(input_shapes), dynamic={k: list(v) for k, v in dynamic.items()},
        exporter=exporter, opset=opset, input_names=input_names, output_names=names,
        warnings=_dedupe(caught), specialized=specialized,
    )
    if path is not None:
        result.path = save_model(model, path)
        log.info("wrote %s", result.path)
    return result


_NAME_CHARS = re.compile(r"[^0-9A-Za-z_.]")


def export_spec_in_child(spec: str, input_shapes: ShapeMap, path: str | os.PathLike[str]) -> None:
    """Export ``spec`` to ``path`` as ``dynashape export`` does, in a child process.

    ``torch.onnx.export`` holds several copies of the weights at its peak (ViT-B/16: 1.8 GB for
    330 MB of weights). In a child, that peak ends with the child and is not added to what a long
    command such as ``doctor`` holds afterwards. The child is a fresh interpreter running the CLI
    (not a fork: the parent may run threads; not multiprocessing's spawn, which re-imports the
    caller's main script). Its one-line error comes back as a ``DynashapeError``."""
    shapes = ",".join(f"{name}:{format_shape(shape)}" for name, shape in input_shapes.items())
    log.info("exporting %s in a child process", spec)
    run_child([sys.executable, "-m", "dynashape", "export", spec, "--input", shapes, "-o", str(path)], "export")


def run_child(cmd: Sequence[str], what: str, on_line: Callable[[str], None] | None = None) -> None:
    """Run a dynashape child process (a fresh interpreter) to its end, as its caller would run the
    step itself: the child finds what the caller finds (a dotted FACTORY spec resolves on the same
    ``sys.path``); each non-blank line it writes to stderr goes to ``on_line`` as it comes; its
    one-line user error (exit 2) comes back as a ``DynashapeError``, an interrupt (130) as
    ``KeyboardInterrupt``, anything else as a ``RuntimeError`` with the end of its output."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    lines: list[str] = []
    with subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                lines.append(line)
                if on_line is not None:
                    on_line(line)
    if proc.returncode == 0:
        return
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode == 2 and lines:
        raise DynashapeError(lines[-1].removeprefix("dynashape: error: "))
    tail = "\n".join(lines[-20:])
    raise RuntimeError(f"the {what} child process ended with status {proc.returncode}:\n{tail}")


def valid_output_name(name: str) -> str:
    """``name`` as an ONNX output name both exporters accept.

    The legacy exporter rejects names made only of digits ("Invalid name: '0'"), which is what a
    dict output keyed ``'0'``, ``'1'``, ... (torchvision's FPN backbones) flattens to. Characters
    other than letters, digits, ``_`` and ``.`` become ``_``; a name that does not start with a
    letter or ``_`` is prefixed with ``output_`` (``'0'`` -> ``output_0``, as tuple items are named).
    """
    cleaned = _NAME_CHARS.sub("_", name)
    if not cleaned or not (cleaned[0].isalpha() or cleaned[0] == "_"):
        cleaned = f"output_{cleaned}"
    return cleaned


def valid_output_names(names: Sequence[str], reserved: Sequence[str] = ()) -> list[str]:
    """Each name made valid (:func:`valid_output_name`) and unique among the outputs and ``reserved``
    (the input names): a repeat gets ``_1``, ``_2``, ... appended."""
    taken = set(reserved)
    out: list[str] = []
    for name in names:
        base = valid_output_name(name)
        candidate, k = base, 1
        while candidate in taken:
            candidate = f"{base}_{k}"
            k += 1
        taken.add(candidate)
        out.append(candidate)
    return out


def _check_output_names(names: Sequence[str], input_names: Sequence[str]) -> None:
    """Output names the caller chose must be valid and distinct: say which one and what to use."""
    suggested = valid_output_names(names, reserved=input_names)
    for given, fixed in zip(names, suggested, strict=True):
        if given != fixed:
            raise DynashapeError(
                f"output name {given!r} cannot be used (names must be distinct, differ from the "
                f"inputs and not be made only of digits); use e.g. {fixed!r}"
            )


def _dedupe(items: list[ExportWarning]) -> list[ExportWarning]:
    seen: set[tuple[str, str, str | None, int | None]] = set()
    out = []
    for w in items:
        key = (w.category, w.message, w.filename, w.lineno)
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out


def _torch_dir() -> str:
    import torch

    return os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def is_library_frame(filename: str) -> bool:
    """True for frames inside torch itself or the standard library (not the user's model code)."""
    path = os.path.abspath(filename)
    if path.startswith(_torch_dir()):
        return True
    stdlib = os.path.dirname(os.path.abspath(contextlib.__file__)) + os.sep
    return bool(path.startswith(stdlib) and "site-packages" not in path)


def _keep_warning(w: warnings.WarningMessage) -> bool:
    if w.category.__name__ == "TracerWarning":
        return True
    if issubclass(w.category, DeprecationWarning | FutureWarning):
        return False
    return not is_library_frame(str(w.filename))


@contextlib.contextmanager
def _discard_native_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (the legacy exporter's verbose dump is C++ output)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded interpreters): nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)  # flush C stdio before fd 1 points back
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _export_legacy(
    module: torch.nn.Module,
    args: list[torch.Tensor],
    input_names: list[str],
    output_names: list[str],
    dims: dict[str, dict[int, str]],
    opset: int,
) -> tuple[onnx.ModelProto, list[ExportWarning]]:
    import torch

    buf = io.BytesIO()
    dynamic_axes: dict[str, dict[int, str]] = {n: d for n, d in dims.items() if d}

    def export() -> None:
        torch.onnx.export(
            module, tuple(args), buf,  # type: ignore[arg-type]  # file objects work (legacy)
            input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes or None, opset_version=opset, dynamo=False, verbose=True,
        )

    with warnings.catch_warnings(record=True) as caught, _discard_native_stdout():
        warnings.simplefilter("always")
        try:
            try:
                # with autograd on, as torch.onnx.export is usually called: under no_grad,
                # nn.MultiheadAttention takes its fused fast path, which the legacy exporter lacks
                export()
            except RuntimeError as exc:
                if "Inference tensors cannot be saved for backward" not in str(exc):
                    raise
                # the module cached tensors while it ran under inference_mode: trace without autograd
                buf.seek(0)
                buf.truncate()
                with torch.no_grad():
                    export()
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            raise DynashapeError(f"the legacy exporter cannot export this module: {exc}") from None
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DynashapeError(
                f"the legacy exporter failed: {first[:400]}; try --exporter dynamo"
            ) from None
    # parsed from the buffer itself, which is then freed: getvalue() would be a third copy of the
    # weights beside the buffer and the parsed model at the exporter's memory peak
    model = onnx.ModelProto()
    with buf.getbuffer() as view:
        model.ParseFromString(view)
    buf.close()
    found = [
        ExportWarning(w.category.__name__, str(w.message).strip().splitlines()[0], str(w.filename), w.lineno)
        for w in caught if _keep_warning(w)
    ]
    return model, found


class _GuardLogs(logging.Handler):
    """Collects the symbolic-shape engine's guard and specialization records during export."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "[guard added]" in msg or "specializ" in msg.lower() or record.levelno >= logging.WARNING:
            self.records.append(record)


_GUARD_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export")


@contextlib.contextmanager
def _capture_guard_logs() -> Iterator[_GuardLogs]:
    handler = _GuardLogs()
    saved = []
    for name in _GUARD_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate, list(lg.handlers)))
        # torch attaches its own stderr handlers to these loggers; swap them out while we listen
        lg.handlers = [handler]
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
        lg.propagate = False  # keep torch's INFO chatter out of the user's terminal
    try:
        yield handler
    finally:
        for lg, level, propagate, handlers in saved:
            lg.handlers = handlers
            lg.setLevel(level)
            lg.propagate = propagate


def _guard_warning(record: logging.LogRecord, user_files: Sequence[str]) -> ExportWarning | None:
    msg = record.getMessage()
    if "runtime_assert" in msg.split("[guard added]")[0]:
        return None  # the same guard is logged as "eval" first
    text = msg.split(", for more info")[0].strip()
    m = _GUARD_LOCATION_COMMENT.search(text) or _GUARD_LOCATION.search(text)
    filename: str | None = None
    lineno: int | None = None
    if m:
        filename = _resolve_truncated(m.group(1), user_files)
        lineno = int(m.group(2))
        if filename is not None and is_library_frame(filename):
            return None  # torch's own guards (e.g. inside F.interpolate) carry no user line
    expr = text.split("[guard added]")[0].strip()
    return ExportWarning("Guard" if "[guard added]" in msg else "Specialization", expr, filename, lineno)


def _resolve_truncated(name: str, user_files: Sequence[str]) -> str:
    """torch shortens paths in guard logs ("mp/t7.py"); find the real file by its suffix."""
    if os.path.isabs(name) and os.path.exists(name):
        return name
    for f in user_files:
        if f.endswith(name):
            return f
    return name


def _user_files(module: torch.nn.Module) -> list[str]:
    import inspect

    files: set[str] = set()
    for m in module.modules():
        with contextlib.suppress(TypeError, OSError):
            f = inspect.getsourcefile(type(m))
            if f:
                files.add(os.path.abspath(f))
    return sorted(files)


def _export_dynamo(
    module: torch.nn.Module,
    args: list[torch.Tensor],
    input_names: list[str],
    output_names: list[str],
    dims: dict[str, dict[int, str]],
    opset: int,
) -> tuple[onnx.ModelProto, list[ExportWarning]]:
    import torch

    dynamic_shapes = tuple(
        {axis: torch.export.Dim.DYNAMIC for axis in dims.get(name, {})} or None for name in input_names
    )
    chatter = io.StringIO()  # torch prints the traced graph on some failures; keep it for the log
    with warnings.catch_warnings(record=True) as caught, _capture_guard_logs() as guards, \
            _quiet_loggers(("torch.onnx", "onnxscript", "onnx_ir")), \
            contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        warnings.simplefilter("always")
        try:
            program = torch.onnx.export(
                module, tuple(args), input_names=input_names, output_names=output_names,
                dynamic_shapes=dynamic_shapes if any(d is not None for d in dynamic_shapes) else None,
                opset_version=opset, dynamo=True, verbose=False,
            )
        except Exception as exc:  # torch.onnx raises TorchExportError / ConversionError and friends
            log.debug("dynamo exporter output:\n%s", chatter.getvalue())
            raise DynashapeError(_dynamo_failure(exc)) from None
    if program is None:  # pragma: no cover - only when torch.onnx.export is given a file name
        raise DynashapeError("the dynamo exporter returned no program")
    model = program.model_proto
    found = [
        ExportWarning(w.category.__name__, str(w.message).strip().splitlines()[0], str(w.filename), w.lineno)
        for w in caught if _keep_warning(w)
    ]
    files = _user_files(module)
    for rec in guards.records:
        g = _guard_warning(rec, files)
        if g is not None:
            found.append(g)
    return model, found


@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str]) -> Iterator[None]:
    saved = []
    for name in names:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level))
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _dynamo_failure(exc: BaseException) -> str:
    """The useful part of a dynamo export failure: the summary and the user's line that raised it."""
    text = str(exc)
    cause = exc.__cause__
    summary = ""
    for candidate in (str(cause) if cause else "", text):
        for line in candidate.splitlines():
            line = line.strip()
            if line and not line.startswith(("Failed to export", "- ", "#")):
                summary = line
                break
        if summary:
            break
    m = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+)', text)
    if not m and cause is not None:
        m = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+)', str(cause))
    where = f" at {display_path(m.group(1))}:{m.group(2)}" if m else ""
    summary = re.sub(r"\x1b\[[0-9;]*m", "", summary)[:300]
    return (
        f"the dynamo exporter cannot export this module{where}: {summary}; "
        "try --exporter legacy, or change that line so it does not turn a size into data"
    )


def _rename_dims(model: onnx.ModelProto, dims: dict[str, dict[int, str]]) -> None:
    """Give the dynamo exporter's symbols (s77, s53, ...) the names batch/height/width everywhere."""
    rename: dict[str, str] = {}
    for vi in model.graph.input:
        per = dims.get(vi.name, {})
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if axis in per and d.HasField("dim_param") and d.dim_param not in rename:
                rename[d.dim_param] = per[axis]
    if not rename:
        return
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def _specialized_axes(model: onnx.ModelProto, dims: dict[str, dict[int, str]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for vi in model.graph.input:
        per = dims.get(vi.name, {})
        fixed = [
            axis for axis, d in enumerate(vi.type.tensor_type.shape.dim)
            if axis in per and d.HasField("dim_value")
        ]
        if fixed:
            out[vi.name] = fixed
    return out
