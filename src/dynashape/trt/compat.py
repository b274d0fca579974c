"""Everything that differs between TensorRT versions (8.5 … 10.x) lives here, and only here.

The rest of dynashape uses the named-tensor API that 8.5 and 10.x share (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``, ``build_serialized_network``,
``set_memory_pool_limit``) and calls this module for the few places where they part ways:
the ``EXPLICIT_BATCH`` network flag (required below 10, deprecated in 10), profile-shape queries,
parser error details and the set of tactic sources. ``tensorrt`` is imported lazily, so importing
this module costs nothing on a machine without it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dynashape.errors import DynashapeError

log = logging.getLogger(__name__)

#: Tactic source names in trtexec's ``--tacticSources`` syntax.
KNOWN_TACTIC_SOURCES = ("CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS")
_TACTIC_ALIASES = {"CUBLASLT": "CUBLAS_LT", "CUBLAS-LT": "CUBLAS_LT"}

#: The default: TensorRT's own kernels only. cuBLAS/cuDNN tactics are deprecated in TensorRT 10,
#: pull in large libraries, and are absent from slim deployments (and from our GPU test bundle).
DEFAULT_TACTIC_SOURCES = "-CUBLAS,-CUBLAS_LT,-CUDNN"
#: TensorRT errors kept for errors_since()
RECENT_ERRORS = 32


def tensorrt_available() -> str | None:
    """None when ``import tensorrt`` works, else one line saying why it does not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"TensorRT is not installed ({exc}); install the extra: pip install 'dynashape[tensorrt]'"
    except Exception as exc:  # a broken install raises OSError / RuntimeError from its loader
        return f"TensorRT cannot be imported ({type(exc).__name__}: {exc})"
    return None


def import_trt() -> Any:
    """The ``tensorrt`` module, or a DynashapeError saying why it cannot be used."""
    reason = tensorrt_available()
    if reason is not None:
        raise DynashapeError(reason)
    import tensorrt

    return tensorrt


def trt_version() -> str:
    return str(import_trt().__version__)


def major_version(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


# --------------------------------------------------------------------------- logging


@dataclass
class CapturedLog:
    """TensorRT's messages during one phase (a build, a deserialization)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _LoggerHolder:
    """One process-wide TensorRT logger.

    TensorRT 8 keeps the logger of the first builder/runtime for the whole process and ignores
    later ones, so a fresh logger per build would miss the errors of every build but the first.
    One logger, forwarding to ``logging`` and to whatever ``capture_log()`` block is open.
    """

    def __init__(self) -> None:
        self.instance: Any = None
        self.lock = threading.Lock()
        self.captures: list[CapturedLog] = []
        self.seen_warnings: set[str] = set()
        self.errors_seen = 0  # errors TensorRT reported so far (see error_mark)
        self.recent_errors: deque[tuple[int, str]] = deque(maxlen=RECENT_ERRORS)


_HOLDER = _LoggerHolder()


def trt_logger() -> Any:
    """The shared ``trt.ILogger`` subclass instance (created on first use)."""
    trt = import_trt()
    with _HOLDER.lock:
        if _HOLDER.instance is None:

            class _ForwardingLogger(trt.ILogger):  # type: ignore[name-defined]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity: Any, msg: str) -> None:
                    _forward(trt, severity, msg)

            _HOLDER.instance = _ForwardingLogger()
        return _HOLDER.instance


def _forward(trt: Any, severity: Any, msg: str) -> None:
    sev = trt.ILogger.Severity
    text = str(msg).strip()
    if severity in (sev.INTERNAL_ERROR, sev.ERROR):
        _HOLDER.errors_seen += 1
        _HOLDER.recent_errors.append((_HOLDER.errors_seen, text))
        for cap in _HOLDER.captures:
            cap.errors.append(text)
        # the caller raises with these lines; logging them too would show them twice
        log.debug("TensorRT error: %s", text)
    elif severity == sev.WARNING:
        for cap in _HOLDER.captures:
            cap.warnings.append(text)
        if text not in _HOLDER.seen_warnings:  # TensorRT repeats some warnings per layer
            _HOLDER.seen_warnings.add(text)
            log.warning("TensorRT: %s", text)
    else:
        log.debug("TensorRT: %s", text)


def error_mark() -> int:
    """A mark for :func:`errors_since`: what ``capture_log`` gives, without a block to enter and
    leave, for the one call made per inference (``execute_async_v3``)."""
    return _HOLDER.errors_seen


def errors_since(mark: int) -> list[str]:
    """TensorRT's errors reported after ``mark`` (the last RECENT_ERRORS of them at most)."""
    return [text for seq, text in _HOLDER.recent_errors if seq > mark]


class capture_log:  # a class named as the function it replaced: ``with capture_log() as cap``
    """Collect TensorRT's errors and warnings emitted inside the block. A class rather than a
    generator context manager: it wraps every ``execute_async_v3``, so its cost counts."""

    def __enter__(self) -> CapturedLog:
        self._cap = CapturedLog()
        _HOLDER.captures.append(self._cap)
        return self._cap

    def __exit__(self, *exc: object) -> None:
        # by identity: two captures with the same messages compare equal (dataclass equality)
        caps = _HOLDER.captures
        for i in range(len(caps) - 1, -1, -1):
            if caps[i] is self._cap:
                del caps[i]
                break


# --------------------------------------------------------------------------- building


def create_network(builder: Any) -> Any:
    """An explicit-batch network: the flag is mandatory below 10 and deprecated from 10 on."""
    trt = import_trt()
    if major_version(trt.__version__) < 10:
        flag = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        return builder.create_network(flag)
    return builder.create_network(0)


def set_workspace(config: Any, nbytes: int) -> None:
    trt = import_trt()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(nbytes))


def parse_onnx(parser: Any, data: bytes, path: str | None) -> bool:
    """Parse a serialized model; ``path`` lets the parser find external weights beside it."""
    if path is None:
        return bool(parser.parse(data))
    return bool(parser.parse(data, path))


def parser_errors(parser: Any) -> list[str]:
    """The ONNX parser's errors, each with the node it names (10.x has node names, 8.5 indices)."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = ""
        node_name = getattr(err, "node_name", None)  # TensorRT >= 10
        if callable(node_name) and node_name():
            where = f" (node {node_name()})"
        elif err.node() >= 0:
            where = f" (node #{err.node()})"
        lines.append(f"{err.desc()}{where}")
    return lines


@dataclass(frozen=True)
class TacticSpec:
    """A parsed ``--tactic-sources`` value: names to add to / remove from TensorRT's default."""

    add: frozenset[str] = frozenset()
    remove: frozenset[str] = frozenset()
    text: str = ""

    @property
    def is_default(self) -> bool:
        return not self.add and not self.remove


def parse_tactic_sources(text: str | None) -> TacticSpec:
    """Parse trtexec syntax: ``-CUBLAS,-CUBLAS_LT,-CUDNN`` or ``+EDGE_MASK_CONVOLUTIONS``.

    ``default`` (or an empty string) keeps TensorRT's own default set.
    """
    if text is None or text.strip().lower() in ("", "default"):
        return TacticSpec(text="default")
    add: set[str] = set()
    remove: set[str] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        sign, name = item[0], item[1:].strip().upper()
        if sign not in "+-" or not name:
            raise DynashapeError(
                f"tactic source {item!r}: write +NAME or -NAME, e.g. -CUBLAS,-CUBLAS_LT,-CUDNN "
                f"(names: {', '.join(KNOWN_TACTIC_SOURCES)})"
            )
        name = _TACTIC_ALIASES.get(name, name)
        if name not in KNOWN_TACTIC_SOURCES:
            raise DynashapeError(
                f"unknown tactic source {name!r} in {text!r}; known: {', '.join(KNOWN_TACTIC_SOURCES)}"
            )
        if (sign == "+" and name in remove) or (sign == "-" and name in add):
            raise DynashapeError(f"tactic source {name} is both added and removed in {text!r}")
        (add if sign == "+" else remove).add(name)
    return TacticSpec(frozenset(add), frozenset(remove), text.strip())


def tactic_mask(spec: TacticSpec, default_mask: int, available: dict[str, int]) -> int:
    """Apply a spec to TensorRT's default bit mask; ``available`` maps names to bit positions."""
    mask = default_mask
    for name in sorted(spec.add):
        if name not in available:
            raise DynashapeError(
                f"tactic source {name} does not exist in this TensorRT; it has: {', '.join(available)}"
            )
        mask |= 1 << available[name]
    for name in sorted(spec.remove):
        if name in available:  # removing what this version lacks is already true
            mask &= ~(1 << available[name])
    return mask


def available_tactic_sources() -> dict[str, int]:
    trt = import_trt()
    return {
        name: int(getattr(trt.TacticSource, name))
        for name in KNOWN_TACTIC_SOURCES
        if hasattr(trt.TacticSource, name)
    }


def apply_tactic_sources(config: Any, spec: TacticSpec) -> None:
    if spec.is_default:
        return
    mask = tactic_mask(spec, int(config.get_tactic_sources()), available_tactic_sources())
    config.set_tactic_sources(mask)


# --------------------------------------------------------------------------- engines


def io_tensor_names(engine: Any) -> list[str]:
    return [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]


def is_input(engine: Any, name: str) -> bool:
    trt = import_trt()
    return bool(engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT)


# By DataType name: TensorRT 8.5's own ``trt.nptype`` builds a table with ``np.bool``, which NumPy
# 1.24-1.26 removed, so it raises for every type there.
_NUMPY_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
    "BOOL": "bool", "UINT8": "uint8", "DOUBLE": "float64",
}


def numpy_dtype_name(trt_dtype: Any) -> str:
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _NUMPY_DTYPES:  # BF16, FP8, INT4: no numpy type
        raise DynashapeError(f"I/O tensors of type {name} are not supported by dynashape yet")
    return _NUMPY_DTYPES[name]


def profile_shapes(engine: Any, name: str, index: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) of input ``name`` in profile ``index``."""
    if hasattr(engine, "get_tensor_profile_shape"):  # 8.5+ named API (10.x only has this one)
        shapes = engine.get_tensor_profile_shape(name, index)
    else:
        shapes = engine.get_profile_shape(index, name)
    return tuple(tuple(int(d) for d in s) for s in shapes)


def serialized_bytes(host_memory: Any) -> bytes:
    return bytes(memoryview(host_memory))


# --------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class RuntimeEnv:
    """What an engine is tied to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def _smi_id() -> str:
    """nvidia-smi's --id for the GPU this process uses: the first of CUDA_VISIBLE_DEVICES (an index
    or a UUID), which renumbers the GPUs for CUDA but not for nvidia-smi; else GPU 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible if visible and (visible.isdigit() or visible.startswith(("GPU-", "MIG-"))) else "0"


def _smi_query(fields: str) -> str:
    """nvidia-smi's answer (first line) for ``fields`` of the GPU in use; "" without an answer."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ""
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={fields}", "--format=csv,noheader", f"--id={_smi_id()}"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def gpu_identity() -> tuple[str, str]:
    """(name, compute capability) of the GPU in use, from torch when present, else nvidia-smi."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except Exception:  # no torch, or a CPU build of it
        pass
    name, _, cap = _smi_query("name,compute_cap").partition(",")
    if name.strip():
        return name.strip(), cap.strip() or "unknown"
    return "unknown", "unknown"


def gpu_uuid() -> str:
    """The UUID of the GPU in use (one physical card), or "" when it cannot be read. Latencies are only
    comparable on one card: two cards of one model can differ by several percent in clocks."""
    try:
        import torch

        if torch.cuda.is_available():
            uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
            if uuid is not None:
                return f"GPU-{uuid}"
    except Exception:  # no torch, or a CPU build of it
        pass
    return _smi_query("uuid").strip()


def runtime_env() -> RuntimeEnv:
    name, cap = gpu_identity()
    return RuntimeEnv(trt_version(), name, cap)
