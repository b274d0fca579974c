"""TensorRT engines: build with optimization profiles, save with a metadata sidecar, load, run.

An engine is two files: ``MODEL.engine`` (TensorRT's serialized plan) and ``MODEL.engine.json``
(the sidecar: TensorRT version, GPU, profiles, I/O, SHA-256 of the source model and of the plan,
build options and build time). Loading checks the plan against the sidecar before TensorRT sees
it, so a truncated file or an engine from another TensorRT/GPU is refused with a sentence rather
than a deserialization crash.

Version-specific TensorRT calls go through :mod:`dynashape.trt.compat`; streams, device and pinned
memory, events and CUDA graphs through :mod:`dynashape.trt.cudart` (cuda-python). ``tensorrt`` and
``cuda`` are imported lazily.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
import onnx

from dynashape import __version__
from dynashape.errors import DynashapeError
from dynashape.model import atomic_path, sha256_file, write_json_atomic
from dynashape.shapes import Profile, Shape, ShapeMap, format_shape, format_shapes
from dynashape.trt import compat as trt_compat
from dynashape.trt import cudart
from dynashape.trt.planning import ProfilePlan

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "dynashape.engine/1"
ProgressFn = Callable[[str], None]


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``MODEL.engine`` -> ``MODEL.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


# --------------------------------------------------------------------------- metadata


@dataclass
class TensorInfo:
    """One I/O tensor of an engine; ``-1`` marks a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    is_input: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], is_input: bool) -> TensorInfo:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]), is_input)


@dataclass
class BuildOptions:
    fp16: bool = False
    workspace_mib: int | None = None
    timing_cache: str | None = None
    tactic_sources: str = trt_compat.DEFAULT_TACTIC_SOURCES


@dataclass
class EngineInfo:
    """What the sidecar records about an engine."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profiles: list[Profile]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    source_sha256: str
    source_path: str | None = None
    build_options: BuildOptions = field(default_factory=BuildOptions)
    build_seconds: float = 0.0
    built_at: str = ""
    engine_sha256: str = ""
    engine_size: int = 0
    dynashape_version: str = __version__
    plan: ProfilePlan | None = None  # `build --profiles auto`: the measured plan

    def input_ranges(self) -> dict[str, list[dict[str, list[int]]]]:
        """Per input, its min/max in each profile (the sidecar's 'shape ranges')."""
        out: dict[str, list[dict[str, list[int]]]] = {}
        for t in self.inputs:
            out[t.name] = [
                {"min": list(p.inputs[t.name].min), "max": list(p.inputs[t.name].max)}
                for p in self.profiles
                if t.name in p.inputs
            ]
        return out

    def to_json(self) -> dict[str, Any]:
        ranges = self.input_ranges()
        return {
            "format": SIDECAR_FORMAT,
            "dynashape_version": self.dynashape_version,
            "tensorrt_version": self.tensorrt_version,
            "gpu": {"name": self.gpu_name, "compute_capability": self.compute_capability},
            "profiles": [p.to_json() for p in self.profiles],
            "inputs": [{**t.to_json(), "ranges": ranges.get(t.name, [])} for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "source_model": {"path": self.source_path, "sha256": self.source_sha256},
            "engine": {"size": self.engine_size, "sha256": self.engine_sha256},
            "build_options": asdict(self.build_options),
            "build_seconds": round(self.build_seconds, 3),
            "built_at": self.built_at,
            "plan": self.plan.to_json() if self.plan is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineInfo:
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {SIDECAR_FORMAT!r}")
        opts = data.get("build_options") or {}
        known = set(BuildOptions.__dataclass_fields__)
        return cls(
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu"]["name"]),
            compute_capability=str(data["gpu"]["compute_capability"]),
            profiles=[Profile.from_json(p) for p in data["profiles"]],
            inputs=[TensorInfo.from_json(t, True) for t in data["inputs"]],
            outputs=[TensorInfo.from_json(t, False) for t in data["outputs"]],
            source_sha256=str(data["source_model"]["sha256"]),
            source_path=data["source_model"].get("path"),
            build_options=BuildOptions(**{k: v for k, v in opts.items() if k in known}),
            build_seconds=float(data.get("build_seconds", 0.0)),
            built_at=str(data.get("built_at", "")),
            engine_sha256=str(data["engine"]["sha256"]),
            engine_size=int(data["engine"]["size"]),
            dynashape_version=str(data.get("dynashape_version", "")),
            plan=ProfilePlan.from_json(data["plan"]) if data.get("plan") else None,
        )


def read_sidecar(engine_path: str | os.PathLike[str]) -> EngineInfo | None:
    """The engine's sidecar, None when there is none; a broken one is refused."""
    sp = sidecar_path(engine_path)
    if not sp.exists():
        return None
    try:
        return EngineInfo.from_json(json.loads(sp.read_text()))
    except (OSError, ValueError, KeyError, TypeError, DynashapeError) as exc:
        raise DynashapeError(
            f"{sp}: unreadable engine sidecar ({type(exc).__name__}: {exc}); rebuild the engine, "
            "or delete the sidecar to load the engine without its checks"
        ) from None


def check_sidecar(
    info: EngineInfo,
    data: bytes,
    env: trt_compat.RuntimeEnv | None,
    where: str = "engine",
) -> list[str]:
    """Refuse a plan that does not match its sidecar or this machine; return mere warnings."""
    if info.engine_size and len(data) != info.engine_size:
        what = "truncated" if len(data) < info.engine_size else "longer than when it was built"
        raise DynashapeError(
            f"{where}: the engine file is {what} ({len(data)} bytes, the sidecar says "
            f"{info.engine_size}); rebuild it with `dynashape build` or copy it again"
        )
    if info.engine_sha256 and hashlib.sha256(data).hexdigest() != info.engine_sha256:
        raise DynashapeError(
            f"{where}: the engine file is corrupt or was modified (its SHA-256 differs from the "
            "sidecar's); rebuild it with `dynashape build`"
        )
    if env is None:
        return []
    if info.tensorrt_version != env.tensorrt_version:
        raise DynashapeError(
            f"{where}: built with TensorRT {info.tensorrt_version}, but this is TensorRT "
            f"{env.tensorrt_version}; engines only load on the release that built them, so rebuild "
            "it here with `dynashape build`"
        )
    known = "unknown" not in (info.compute_capability, env.compute_capability)
    if known and info.compute_capability != env.compute_capability:
        raise DynashapeError(
            f"{where}: built for {info.gpu_name} (compute capability {info.compute_capability}), "
            f"but this GPU is {env.gpu_name} (compute capability {env.compute_capability}); "
            "rebuild it on this GPU with `dynashape build`"
        )
    warnings = []
    if "unknown" not in (info.gpu_name, env.gpu_name) and info.gpu_name != env.gpu_name:
        # same architecture: TensorRT runs it, but tactics were timed on another model of GPU
        warnings.append(
            f"{where}: built on {info.gpu_name}, running on {env.gpu_name} (same compute capability "
            f"{env.compute_capability}); it runs, but rebuild here for the best speed"
        )
    return warnings


# --------------------------------------------------------------------------- profiles


def select_profile(profiles: Sequence[Profile], shapes: ShapeMap, plan: ProfilePlan | None = None) -> int:
    """Index of the profile containing ``shapes``; among several, the one a planned engine
    measured fastest near this shape (``plan``), else the one whose opt is nearest.

    Distance is the sum over dimensions of ``|log(size / opt)|``, so a 2x miss weighs the same on
    a small and a large axis. A shape outside every profile is a DynashapeError listing them.
    """
    containing = [
        i for i, prof in enumerate(profiles) if not set(prof.inputs) - set(shapes) and prof.contains(shapes)
    ]
    if len(containing) == 1:  # nothing to choose (a first call at a new shape waits for this)
        return containing[0]
    if plan is not None and len(containing) > 1:
        measured = plan.choose(containing, shapes)
        if measured is not None:
            return measured
    best: tuple[float, int] | None = None
    for i in containing:
        prof = profiles[i]
        dist = sum(
            abs(math.log(s / o))
            for name, shape in shapes.items()
            for s, o in zip(shape, prof.inputs[name].opt, strict=True)
            if s > 0 and o > 0
        )
        if best is None or dist < best[0] - 1e-12:
            best = (dist, i)
    if best is None:
        listed = "; ".join(f"profile {i}: {p}" for i, p in enumerate(profiles))
        raise DynashapeError(
            f"shape {format_shapes(shapes)} is outside every optimization profile of the engine "
            f"({listed}); rebuild with a profile that covers it"
        )
    return best[1]


def profile_from_shapes(shapes: Sequence[ShapeMap]) -> Profile:
    """One profile covering all ``shapes``: elementwise min/max; opt is the most common shape,
    or, when all are distinct, the middle one by volume."""
    if not shapes:
        raise DynashapeError("no shapes given to build a profile from")
    names = list(shapes[0])
    for s in shapes:
        if list(s) != names:
            raise DynashapeError(
                f"all shapes must name the same inputs: {format_shapes(shapes[0])} vs {format_shapes(s)}"
            )
    keys = [tuple(s[n] for n in names) for s in shapes]
    counts: dict[tuple[Shape, ...], int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    top = max(counts.values())
    if top > 1:
        opt_key = next(k for k in keys if counts[k] == top)
    else:
        by_volume = sorted(keys, key=lambda k: sum(math.prod(s) for s in k))
        opt_key = by_volume[len(by_volume) // 2]
    prof = Profile()
    for j, name in enumerate(names):
        ranks = {len(k[j]) for k in keys}
        if len(ranks) != 1:
            raise DynashapeError(f"input {name!r} is given with different ranks")
        lo = tuple(min(k[j][a] for k in keys) for a in range(len(keys[0][j])))
        hi = tuple(max(k[j][a] for k in keys) for a in range(len(keys[0][j])))
        prof.add(name, lo, opt_key[j], hi)
    return prof


# --------------------------------------------------------------------------- building


class BuildError(DynashapeError):
    """TensorRT refused the model; carries TensorRT's own lines and the ONNX nodes they name."""

    def __init__(self, summary: str, trt_errors: list[str], nodes: list[str]) -> None:
        super().__init__(summary)
        self.trt_errors = trt_errors
        self.nodes = nodes


_NAME_CHARS = r"A-Za-z0-9_.\-/"


def nodes_in_messages(lines: Iterable[str], node_names: Iterable[str]) -> list[str]:
    """The ONNX node names that TensorRT's messages mention (layer names are node names,
    fused ones joined by ' + '), longest names first so ``/Add`` does not match ``/Add_1``."""
    text = "\n".join(lines)
    found: list[str] = []
    for name in sorted(set(node_names), key=len, reverse=True):
        if not name:
            continue
        pat = rf"(?<![{_NAME_CHARS}]){re.escape(name)}(?![{_NAME_CHARS}])"
        if re.search(pat, text):
            found.append(name)
    return found


@dataclass
class BuiltEngine:
    """A serialized plan and its metadata, not yet written anywhere."""

    data: bytes
    info: EngineInfo

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` and ``path.json`` atomically (plan first, then the sidecar)."""
        target = Path(path)
        with atomic_path(target) as tmp:
            tmp.write_bytes(self.data)
        write_json_atomic(sidecar_path(target), self.info.to_json())
        log.info("wrote %s (%.1f MB) and %s", target, len(self.data) / 1e6, sidecar_path(target).name)
        return target

    def load(self) -> Engine:
        return Engine(self.data, self.info, where="engine")


def _model_bytes(model: str | os.PathLike[str] | onnx.ModelProto) -> tuple[bytes, str, str | None]:
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        return data, hashlib.sha256(data).hexdigest(), None
    p = Path(model)
    if not p.is_file():
        raise DynashapeError(f"{p}: no such file")
    return p.read_bytes(), sha256_file(p), str(p)


def _network_io(trt: Any, network: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    def info(t: Any, is_input: bool) -> TensorInfo:
        dtype = trt_compat.numpy_dtype_name(t.dtype)
        return TensorInfo(t.name, dtype, tuple(int(d) for d in t.shape), is_input)

    inputs = [info(network.get_input(i), True) for i in range(network.num_inputs)]
    outputs = [info(network.get_output(i), False) for i in range(network.num_outputs)]
    return inputs, outputs


def _check_profiles(profiles: Sequence[Profile], inputs: Sequence[TensorInfo]) -> list[Profile]:
    """Every dynamic input needs min/opt/max in every profile; fixed dims must agree."""
    if not profiles:
        raise DynashapeError("no optimization profile given: pass --min/--opt/--max or --profile")
    valid = [t.name for t in inputs]
    out = []
    for i, prof in enumerate(profiles):
        unknown = [n for n in prof.inputs if n not in valid]
        if unknown:
            raise DynashapeError(
                f"profile {i} names unknown input {unknown[0]!r} (the model's inputs: {', '.join(valid)})"
            )
        full = Profile()
        for t in inputs:
            if t.name not in prof.inputs:
                if any(d < 0 for d in t.shape):
                    raise DynashapeError(
                        f"profile {i} has no shape for dynamic input {t.name!r} "
                        f"({format_shape(t.shape).replace('-1', '?')}); give min, opt and max for it"
                    )
                full.add(t.name, t.shape, t.shape, t.shape)
                continue
            p = prof.inputs[t.name]
            if len(p.min) != len(t.shape):
                raise DynashapeError(
                    f"profile {i}: input {t.name!r} has rank {len(t.shape)}, the profile gives "
                    f"{format_shape(p.min)}"
                )
            for axis, d in enumerate(t.shape):
                if d >= 0 and not p.min[axis] == p.opt[axis] == p.max[axis] == d:
                    raise DynashapeError(
                        f"profile {i}: axis {axis} of input {t.name!r} is fixed at {d} in the model, "
                        f"but the profile gives {p.min[axis]}/{p.opt[axis]}/{p.max[axis]}"
                    )
            full.add(t.name, p.min, p.opt, p.max)
        out.append(full)
    return out


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    blob = b""
    if path is not None and path.is_file():
        blob = path.read_bytes()
        log.info("timing cache: loaded %s (%d bytes)", path, len(blob))
    cache = config.create_timing_cache(blob)
    if cache is None and blob:
        log.warning("timing cache %s is unusable (corrupt or another TensorRT); starting afresh", path)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    blob = trt_compat.serialized_bytes(cache.serialize())
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    log.info("timing cache: saved %s (%d bytes)", path, len(blob))


def build_engine(
    model: str | os.PathLike[str] | onnx.ModelProto,
    profiles: Sequence[Profile],
    *,
    fp16: bool = False,
    workspace: int | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    tactic_sources: str | None = trt_compat.DEFAULT_TACTIC_SOURCES,
    progress: ProgressFn | None = None,
) -> BuiltEngine:
    """Build a TensorRT engine with one optimization profile per entry of ``profiles``.

    ``workspace`` is in MiB (None: TensorRT's default, all free memory). ``timing_cache`` is
    loaded when the file exists and saved after the build. ``tactic_sources`` is trtexec syntax
    (``-CUBLAS,-CUBLAS_LT,-CUDNN``; ``default`` keeps TensorRT's set). Raises BuildError with
    TensorRT's own error lines when parsing or building fails.
    """
    report = progress or (lambda _msg: None)
    tactics = trt_compat.parse_tactic_sources(tactic_sources)
    data, source_sha, source_path = _model_bytes(model)
    trt = trt_compat.import_trt()
    logger = trt_compat.trt_logger()
    builder = trt.Builder(logger)
    network = trt_compat.create_network(builder)
    parser = trt.OnnxParser(network, logger)
    report("parsing the ONNX model")
    with trt_compat.capture_log() as cap:
        parsed = trt_compat.parse_onnx(parser, data, source_path)
    if not parsed:
        lines = trt_compat.parser_errors(parser) + cap.errors
        raise BuildError(
            f"TensorRT's ONNX parser rejects the model: {lines[0] if lines else 'no reason given'}",
            lines, _nodes_named(data, lines),
        )
    inputs, outputs = _network_io(trt, network)
    full_profiles = _check_profiles(profiles, inputs)

    config = builder.create_builder_config()
    if workspace is not None:
        trt_compat.set_workspace(config, int(workspace) << 20)
    if fp16:
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast fp16; building with --fp16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    trt_compat.apply_tactic_sources(config, tactics)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    _load_timing_cache(config, cache_path)
    for i, prof in enumerate(full_profiles):
        trt_prof = builder.create_optimization_profile()
        for name, p in prof:
            trt_prof.set_shape(name, p.min, p.opt, p.max)
        if config.add_optimization_profile(trt_prof) < 0:
            raise DynashapeError(f"TensorRT rejects optimization profile {i}: {prof}")

    desc = "; ".join(f"profile {i}: {p}" for i, p in enumerate(full_profiles))
    log.info("building TensorRT engine (%s%s) ...", desc, ", fp16" if fp16 else "")
    report(f"building ({len(full_profiles)} profile(s){', fp16' if fp16 else ''})")
    start = time.perf_counter()
    with trt_compat.capture_log() as cap:
        serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        lines = cap.errors or ["TensorRT gave no reason (run with -v for its log)"]
        log.info("engine build failed after %.1f s", seconds)
        raise BuildError(
            f"TensorRT failed to build the engine after {seconds:.1f} s: {lines[0]}",
            lines, _nodes_named(data, lines),
        )
    log.info("built the engine in %.1f s", seconds)
    report(f"built in {seconds:.1f} s")
    if cache_path is not None:
        _save_timing_cache(config, cache_path)
    plan = trt_compat.serialized_bytes(serialized)
    env = trt_compat.runtime_env()
    info = EngineInfo(
        tensorrt_version=env.tensorrt_version,
        gpu_name=env.gpu_name,
        compute_capability=env.compute_capability,
        profiles=full_profiles,
        inputs=inputs,
        outputs=outputs,
        source_sha256=source_sha,
        source_path=source_path,
        build_options=BuildOptions(
            fp16=fp16,
            workspace_mib=workspace,
            timing_cache=str(cache_path) if cache_path else None,
            tactic_sources=tactics.text,
        ),
        build_seconds=seconds,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        engine_sha256=hashlib.sha256(plan).hexdigest(),
        engine_size=len(plan),
    )
    return BuiltEngine(plan, info)


def _nodes_named(model_bytes: bytes, lines: Sequence[str]) -> list[str]:
    """ONNX nodes TensorRT's lines point at, by name or (8.5's parser) by index."""
    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception:  # the parser already said what is wrong with the file
        return []
    names = [n.name for n in model.graph.node]
    found = nodes_in_messages(lines, names)
    for m in re.finditer(r"\(node #(\d+)\)", "\n".join(lines)):
        idx = int(m.group(1))
        if 0 <= idx < len(names) and names[idx] and names[idx] not in found:
            found.append(names[idx])
    return found


# --------------------------------------------------------------------------- running

#: CUDA graphs kept per engine (one per (profile, shape)); the least recently used is dropped.
DEFAULT_GRAPH_CACHE = 16
#: How a pageable (ordinary) host array goes to the device, from side-by-side measurements on the
#: H200 machine (host memory copies run at 11-12 GB/s per thread there, PCIe at 55 GB/s), for a
#: newly made array (what a server gets per request) and one reused call after call:
#: below DIRECT_PAGEABLE_BYTES, one cudaMemcpyAsync straight from it (the driver stages it; 6 MB
#: 0.66 / 0.60 ms new / reused, against 0.74-0.80 through our pinned buffer); from there on, into
#: the input's pinned buffer by up to STAGING_THREADS threads of at least STAGING_PART_BYTES each,
#: then one copy (12.6 MB: 1.15 / 1.14 ms by four threads against 1.48 / 1.12 direct; 25 MB:
#: 2.57 / 1.65 against 4.28 / 2.10 direct; overlapping the staging chunk by chunk with the copies
#: was slower, 2.01 ms reused at 25 MB: staging and DMA share the host's memory bandwidth).
DIRECT_PAGEABLE_BYTES = 10 << 20
STAGING_THREADS = 4
STAGING_PART_BYTES = 3 << 20
#: pinned blocks per output that host outputs may occupy at once (see _PinnedOutputs)
PINNED_OUTPUT_BLOCKS = 4


class _Lent:
    """The owner NumPy sees behind one host output living in a pinned block: every view of the
    output keeps it alive, so the block goes back to its pool (``__del__``) only when the caller
    has dropped them all."""

    __slots__ = ("__array_interface__", "block", "pool")

    def __init__(self, pool: _PinnedOutputs, block: cudart.PinnedBuffer, shape: Shape, dtype: np.dtype[Any]) -> None:
        self.pool, self.block = pool, block
        self.__array_interface__ = {
            "shape": shape, "typestr": dtype.str, "data": (block.ptr, False), "version": 3,
        }

    def __del__(self) -> None:
        self.pool.give_back(self.block)


class _PinnedOutputs:
    """Pinned blocks that one output's host arrays are returned in: the copy from the device lands
    in the very array the caller gets (no second host copy, no page faults), and a block is reused
    once the caller has dropped every array on it. At most ``limit`` blocks are made; when all are
    held by the caller, the output is copied out of the staging buffer instead."""

    def __init__(self, limit: int = PINNED_OUTPUT_BLOCKS) -> None:
        self.limit = limit
        self.free: list[cudart.PinnedBuffer] = []
        self.made = 0
        self.block_bytes = 0  # the largest this output can be (from warmup), so blocks fit any shape
        self.closed = False

    def take(self, nbytes: int) -> cudart.PinnedBuffer | None:
        free = self.free
        if free and free[-1].nbytes >= nbytes:  # the block given back last (the usual case)
            return free.pop()
        fits = [b for b in free if b.nbytes >= nbytes]
        if fits:
            block = min(fits, key=lambda b: b.nbytes)
            free.remove(block)
            return block
        if free and self.made >= self.limit:  # only smaller blocks are free: replace one
            small = min(free, key=lambda b: b.nbytes)
            free.remove(small)
            small.free()
            self.made -= 1
        if self.made >= self.limit:
            return None
        self.made += 1
        return cudart.PinnedBuffer(max(nbytes, self.block_bytes))

    def give_back(self, block: cudart.PinnedBuffer) -> None:
        if self.closed:
            block.free()
            self.made -= 1
        else:
            self.free.append(block)

    def lend(self, block: cudart.PinnedBuffer, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        return np.asarray(_Lent(self, block, shape, dtype))

    def close(self) -> None:
        self.closed = True
        for block in self.free:
            block.free()
        self.made -= len(self.free)
        self.free.clear()

ShapeKey = tuple[int, tuple[Shape, ...]]


def shape_key(profile: int, input_names: Sequence[str], shapes: ShapeMap) -> ShapeKey:
    """The key of one (profile, input shapes) pair, in the engine's input order: what a CUDA graph
    and the context's bound shapes are cached by."""
    return profile, tuple(tuple(int(d) for d in shapes[n]) for n in input_names)


class HostFeed(NamedTuple):
    """An input that is a host array (NumPy or anything ``np.asarray`` takes), cast and contiguous.
    A named tuple, as DeviceFeed is: one is made per input per call."""

    array: np.ndarray
    shape: Shape


Feed = HostFeed | cudart.DeviceFeed


@functools.lru_cache(maxsize=32)
def _np_dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


_MISSING = object()


def _wrong_names(inputs: Sequence[TensorInfo], feeds: Mapping[str, Any]) -> NoReturn:
    valid = [t.name for t in inputs]
    unknown = [n for n in feeds if n not in valid]
    if unknown:
        raise DynashapeError(f"unknown input {unknown[0]!r} (the engine's inputs: {', '.join(valid)})")
    missing = [n for n in valid if n not in feeds]
    raise DynashapeError(f"no value for input {missing[0]!r} (the engine's inputs: {', '.join(valid)})")


def classify_feeds(inputs: Sequence[TensorInfo], feeds: Mapping[str, Any]) -> dict[str, Feed]:
    """Each input as a HostFeed or a DeviceFeed (CUDA memory through ``__cuda_array_interface__`` or
    DLPack), checked against the engine's names, ranks and types. Host arrays are cast when NumPy
    can do so safely; device arrays must already have the engine's type (no hidden device copy)."""
    if len(feeds) != len(inputs):
        _wrong_names(inputs, feeds)
    out: dict[str, Feed] = {}
    for t in inputs:
        value = feeds.get(t.name, _MISSING)
        if value is _MISSING:
            _wrong_names(inputs, feeds)
        want = _np_dtype(t.dtype)
        shape: tuple[int, ...]
        feed: Feed
        if type(value) is np.ndarray and value.dtype == want and value.flags.c_contiguous:
            # the common host case, checked without conversions (this runs on every call)
            shape = value.shape
            if len(shape) != len(t.shape):
                raise DynashapeError(
                    f"input {t.name!r} has shape {format_shape(shape)}, the engine expects rank "
                    f"{len(t.shape)} ({format_shape(t.shape).replace('-1', '?')})"
                )
            out[t.name] = HostFeed(value, shape)
            continue
        dev = None if isinstance(value, np.ndarray) else cudart.device_feed(value, f"input {t.name!r}")
        if dev is not None:
            if dev.dtype != want:
                raise DynashapeError(
                    f"input {t.name!r} is a {dev.dtype} device array, the engine expects {want}; "
                    "convert it on the device first"
                )
            shape, feed = dev.shape, dev
        else:
            arr = np.asarray(value)
            if arr.dtype != want:
                if not np.can_cast(arr.dtype, want, casting="same_kind"):
                    raise DynashapeError(f"input {t.name!r} is {arr.dtype}, the engine expects {want}")
                arr = arr.astype(want)
            arr = np.ascontiguousarray(arr)
            shape = arr.shape
            feed = HostFeed(arr, shape)
        if len(shape) != len(t.shape):
            raise DynashapeError(
                f"input {t.name!r} has shape {format_shape(shape)}, the engine expects rank "
                f"{len(t.shape)} ({format_shape(t.shape).replace('-1', '?')})"
            )
        out[t.name] = feed
    return out


@dataclass
class PreparedRun:
    """An execution context bound to device buffers holding one set of inputs (for timing).
    With ``graph``, ``launch()`` replays the CUDA graph captured for this shape."""

    context: Any
    stream: Any
    output_shapes: dict[str, Shape]
    graph: Any = None

    def launch(self) -> None:
        if self.graph is not None:
            self.graph.launch(self.stream)
        elif not self.context.execute_async_v3(self.stream.ptr):
            raise DynashapeError("TensorRT's execute_async_v3 failed; see the log above")

    def synchronize(self) -> None:
        self.stream.synchronize()


@dataclass
class _ContextState:
    """What one profile's execution context is set to now."""

    context: Any
    key: ShapeKey | None = None  # the input shapes set
    out_shapes: dict[str, Shape] = field(default_factory=dict)
    out_nbytes: dict[str, int] = field(default_factory=dict)
    addresses: dict[str, int] = field(default_factory=dict)
    enqueued: ShapeKey | None = None  # the shapes of its last plain (uncaptured) enqueue


class Engine:
    """A deserialized engine that infers at any shape inside its profiles.

    ``with Engine.load("model.engine") as eng: outs = eng.infer({"input": x})``. One execution
    context per profile; device buffers grow when a tensor does and are otherwise kept, and
    ``warmup()`` creates all of it up front. Inputs may be NumPy arrays (staged through reused
    pinned buffers, copied asynchronously, one synchronization per call) or CUDA arrays (PyTorch,
    CuPy, :class:`dynashape.trt.cudart.DeviceArray`: bound in place, no copy). With
    ``cuda_graph=True`` each (profile, shape) is captured once into a CUDA graph and replayed,
    at most ``graph_cache`` graphs kept; a shape whose capture fails runs uncaptured.
    """

    def __init__(self, data: bytes, info: EngineInfo | None = None, where: str = "engine", *,
                 cuda_graph: bool = False, graph_cache: int = DEFAULT_GRAPH_CACHE) -> None:
        trt = trt_compat.import_trt()
        self.where = where
        self._runtime = trt.Runtime(trt_compat.trt_logger())
        with trt_compat.capture_log() as cap:
            engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            reason = cap.errors[0] if cap.errors else "no reason given"
            raise DynashapeError(
                f"{where}: TensorRT cannot load the engine (truncated, corrupt, or built by another "
                f"TensorRT or GPU): {reason}"
            )
        self._engine = engine
        names = trt_compat.io_tensor_names(engine)
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        for name in names:
            t = TensorInfo(
                name,
                trt_compat.numpy_dtype_name(engine.get_tensor_dtype(name)),
                tuple(int(d) for d in engine.get_tensor_shape(name)),
                trt_compat.is_input(engine, name),
            )
            (self.inputs if t.is_input else self.outputs).append(t)
        self.profiles: list[Profile] = []
        for idx in range(engine.num_optimization_profiles):
            prof = Profile()
            for t in self.inputs:
                prof.add(t.name, *trt_compat.profile_shapes(engine, t.name, idx))
            self.profiles.append(prof)
        self.info = info
        self._init_runtime_state(cuda_graph, graph_cache)

    def _init_runtime_state(self, cuda_graph: bool, graph_cache: int) -> None:
        """What running creates and keeps (``inputs``, ``outputs`` and ``profiles`` must be set)."""
        self.cuda_graph = cuda_graph
        self.graphs = cudart.GraphCache(graph_cache)
        self._contexts: dict[int, _ContextState] = {}
        self._buffers: dict[str, cudart.DeviceBuffer] = {}
        self._pinned: dict[str, cudart.PinnedBuffer] = {}
        self._lent = {t.name: _PinnedOutputs() for t in self.outputs}
        self._stream: cudart.Stream | None = None
        self._pool: Any = None
        self._profile_of: dict[tuple[Shape, ...], int] = {}
        self._in_flight = False  # a call returned without waiting (synchronize=False)
        self.allocations = 0  # device (re)allocations so far, for tests and curiosity
        # bumped whenever a context's shapes change or a buffer grows (by a call, output_shapes()
        # or warm-up): a call whose shapes, device pointers and options match the last bind's,
        # at the same epoch, finds everything set as it left it (see _bind)
        self._epoch = 0
        self._last_bind: tuple[Any, _ContextState, int] | None = None

    # ----- construction

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, cuda_graph: bool = False,
             graph_cache: int = DEFAULT_GRAPH_CACHE) -> Engine:
        """Load ``path`` after checking it against its sidecar (a missing sidecar is a warning)."""
        p = Path(path)
        if not p.exists():
            raise DynashapeError(f"{p}: no such file")
        if p.is_dir():
            raise DynashapeError(f"{p}: is a directory, expected an engine file")
        data = p.read_bytes()
        if not data:
            raise DynashapeError(f"{p}: the engine file is empty; rebuild it with `dynashape build`")
        info = read_sidecar(p)
        if info is not None:
            check_sidecar(info, data, None, where=str(p))  # integrity first: needs no TensorRT
        trt_compat.import_trt()
        if info is None:
            log.warning(
                "%s: no sidecar %s; loading without the TensorRT-version and GPU checks",
                p, sidecar_path(p).name,
            )
        else:
            for warning in check_sidecar(info, data, trt_compat.runtime_env(), where=str(p)):
                log.warning("%s", warning)
        return cls(data, info, where=str(p), cuda_graph=cuda_graph, graph_cache=graph_cache)

    # ----- facts

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def contexts(self) -> list[int]:
        """The profiles whose execution context exists."""
        return sorted(self._contexts)

    @property
    def stream(self) -> cudart.Stream:
        """The engine's CUDA stream (non-blocking; every copy and run of this engine goes on it)."""
        if self._stream is None:
            reason = cudart.cuda_available()
            if reason is not None:
                raise DynashapeError(reason)
            self._stream = cudart.Stream()
        return self._stream

    def select_profile(self, shapes: ShapeMap) -> int:
        return select_profile(self.profiles, shapes, self.info.plan if self.info is not None else None)

    def _profile_for(self, shapes: ShapeMap, profile: int | None, dims: tuple[Shape, ...] | None = None) -> int:
        if profile is not None:
            if 0 <= profile < len(self.profiles) and self.profiles[profile].contains(shapes):
                return profile
            raise DynashapeError(f"shape {format_shapes(shapes)} is not inside profile {profile} of the engine")
        key = dims if dims is not None else tuple(tuple(shapes[n]) for n in self.input_names)
        index = self._profile_of.get(key)
        if index is None:
            index = self.select_profile(shapes)
            if len(self._profile_of) >= 4096:
                self._profile_of.clear()
            self._profile_of[key] = index
        return index

    # ----- state on the device

    def _context(self, index: int) -> _ContextState:
        state = self._contexts.get(index)
        if state is None:
            stream = self.stream
            ctx = self._engine.create_execution_context()
            if ctx is None:
                raise DynashapeError(
                    f"{self.where}: TensorRT could not create an execution context (out of memory?)"
                )
            ctx.set_optimization_profile_async(index, stream.ptr)
            stream.synchronize()
            state = _ContextState(ctx)
            self._contexts[index] = state
            log.debug("created the execution context for profile %d", index)
        return state

    def _device_buffer(self, name: str, nbytes: int) -> int:
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = cudart.DeviceBuffer()
        if buf.ensure(nbytes):
            self.allocations += 1
            self._epoch += 1
            if len(self.graphs):
                log.debug("buffer %r grew: dropping %d CUDA graph(s)", name, len(self.graphs))
                self.graphs.clear()  # graphs have the old addresses baked in
        return buf.ptr

    def _pinned_buffer(self, name: str, nbytes: int) -> cudart.PinnedBuffer:
        buf = self._pinned.get(name)
        if buf is None:
            buf = self._pinned[name] = cudart.PinnedBuffer()
        buf.ensure(nbytes)
        return buf

    def _set_shapes(self, index: int, shapes: ShapeMap, dims: tuple[Shape, ...] | None = None) -> _ContextState:
        state = self._contexts.get(index) or self._context(index)
        key = (index, dims) if dims is not None else shape_key(index, self.input_names, shapes)
        if state.key == key:
            return state
        self._epoch += 1
        ctx = state.context
        with trt_compat.capture_log() as cap:
            for name in self.input_names:
                if not ctx.set_input_shape(name, tuple(shapes[name])):
                    raise DynashapeError(
                        f"TensorRT refuses shape {format_shape(shapes[name])} for input {name!r}: "
                        f"{cap.errors[0] if cap.errors else 'no reason given'}"
                    )
        out_shapes: dict[str, Shape] = {}
        for t in self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                state.key = None
                raise DynashapeError(
                    f"output {t.name!r} has a data-dependent shape ({format_shape(shape)}); "
                    "engines with such outputs are not supported yet"
                )
            out_shapes[t.name] = shape
        state.key, state.out_shapes = key, out_shapes
        state.out_nbytes = {t.name: self._nbytes(out_shapes[t.name], t.dtype) for t in self.outputs}
        return state

    def output_shapes(self, shapes: ShapeMap, profile: int | None = None) -> dict[str, Shape]:
        """The output shapes at input ``shapes`` (sets them on the profile's context)."""
        return dict(self._set_shapes(self._profile_for(shapes, profile), shapes).out_shapes)

    def _set_address(self, state: _ContextState, name: str, ptr: int) -> None:
        if state.addresses.get(name) != ptr:
            state.context.set_tensor_address(name, ptr)
            state.addresses[name] = ptr

    def _nbytes(self, shape: Shape, dtype: str) -> int:
        return math.prod(shape) * _np_dtype(dtype).itemsize

    # ----- warm-up

    def warmup(self, shapes: Iterable[ShapeMap] | None = None) -> float:
        """Make up front what a first call at a new shape would otherwise wait for: every
        profile's execution context; device buffers and pinned input staging at the largest size
        any profile allows; two pinned output blocks per output; then one run per profile at its
        min, opt and max shapes (which also starts the staging threads), and one at each of
        ``shapes`` (twice with ``cuda_graph``: the second run captures the graph). The profiles
        come from the engine, which the sidecar's plan describes. Returns the seconds spent."""
        start = time.perf_counter()
        need: dict[str, int] = {}
        for index, prof in enumerate(self.profiles):
            biggest = {name: p.max for name, p in prof}
            state = self._set_shapes(index, biggest)
            for t in self.inputs:
                need[t.name] = max(need.get(t.name, 0), self._nbytes(biggest[t.name], t.dtype))
            for t in self.outputs:
                need[t.name] = max(need.get(t.name, 0), state.out_nbytes[t.name])
        for name, nbytes in need.items():
            self._device_buffer(name, nbytes)
        for t in self.inputs:
            if need[t.name] >= DIRECT_PAGEABLE_BYTES:  # smaller inputs are never staged by us
                self._pinned_buffer(t.name, need[t.name])
        for t in self.outputs:
            pool = self._lent[t.name]
            pool.block_bytes = max(pool.block_bytes, need[t.name])
            blocks = [pool.take(need[t.name]) for _ in range(min(2, pool.limit))]
            for block in blocks:
                if block is not None:
                    pool.give_back(block)
        runs: list[tuple[ShapeMap, int | None]] = []
        for index, prof in enumerate(self.profiles):
            for pick in ("min", "opt", "max"):
                picked: ShapeMap = {name: getattr(p, pick) for name, p in prof}
                if (picked, index) not in runs:
                    runs.append((picked, index))
        runs += [(dict(s), None) for s in shapes or []]
        dtypes = {t.name: np.dtype(t.dtype) for t in self.inputs}
        for run_shapes, run_profile in runs:
            feeds = {n: np.zeros(run_shapes[n], dtypes[n]) for n in self.input_names}
            if run_profile is not None and self.select_profile(run_shapes) == run_profile:
                run_profile = None  # the profile a call at these shapes picks: remember the pick
            for _ in range(2 if self.cuda_graph else 1):  # with graphs, the second run captures
                self.infer(feeds, profile=run_profile)
        seconds = time.perf_counter() - start
        log.info("warm-up: %d context(s), %.1f MB of buffers, %d run(s) in %.2f s",
                 len(self._contexts), sum(need.values()) / 1e6, len(runs), seconds)
        return seconds

    # ----- running

    def _bind(self, feeds: Mapping[str, Feed], profile: int | None, graph: bool) -> tuple[_ContextState, int]:
        """Set shapes and addresses for one run and queue the input copies; returns the context
        and its profile. Device feeds are bound in place, except under a CUDA graph, whose
        addresses are fixed: there they are copied into the engine's buffers on the device.

        A call like the last one (same shapes, same device pointers, same options, nothing
        changed since) skips straight to the copies: the per-call path of a serving loop."""
        ordered = [feeds[t.name] for t in self.inputs]
        signature = (
            tuple([f.shape for f in ordered]),
            tuple([f.ptr if type(f) is cudart.DeviceFeed else 0 for f in ordered]),
            profile, graph, self._epoch,
        )
        last = self._last_bind
        stream = self._stream or self.stream
        if last is not None and last[0] == signature:
            state, index = last[1], last[2]
            for t, feed in zip(self.inputs, ordered, strict=True):
                if type(feed) is HostFeed:
                    self._stage_in(t.name, feed.array, state.addresses[t.name])
                else:
                    self._device_in(t.name, feed, state, graph, stream)
            return state, index
        shapes = {t.name: f.shape for t, f in zip(self.inputs, ordered, strict=True)}
        dims = signature[0]
        index = self._profile_for(shapes, profile, dims)
        state = self._set_shapes(index, shapes, dims)
        for t, feed in zip(self.inputs, ordered, strict=True):
            if type(feed) is HostFeed:
                ptr = self._device_buffer(t.name, feed.array.nbytes)
                self._set_address(state, t.name, ptr)
                self._stage_in(t.name, feed.array, ptr)
            else:
                self._device_in(t.name, feed, state, graph, stream)
        for t in self.outputs:
            self._set_address(state, t.name, self._device_buffer(t.name, state.out_nbytes[t.name]))
        self._last_bind = ((*signature[:-1], self._epoch), state, index)
        return state, index

    def _device_in(self, name: str, feed: Feed, state: _ContextState, graph: bool, stream: cudart.Stream) -> None:
        """Bind a device feed in place (order the engine's stream after its producer first); under
        a CUDA graph, copy it into the engine's buffer instead."""
        assert type(feed) is cudart.DeviceFeed
        if feed.stream is not None and feed.stream != stream.ptr:
            stream.wait_for_stream(feed.stream)
        if not graph:
            self._set_address(state, name, feed.ptr)
            return
        nbytes = feed.nbytes
        ptr = self._device_buffer(name, nbytes)
        self._set_address(state, name, ptr)
        if nbytes:
            cudart.copy_dtod(ptr, feed.ptr, nbytes, stream)

    def _stage_in(self, name: str, arr: np.ndarray, dst: int) -> None:
        """Queue the copy of a host array to the device. Page-locked arrays (``pinned_empty``,
        torch's ``pin_memory()``) and small pageable ones are copied straight from (CUDA stages a
        pageable source itself, and returns once it has read it); large pageable ones are copied
        into the input's reused pinned buffer by several threads, then in one copy (see
        DIRECT_PAGEABLE_BYTES for the measurements behind this)."""
        nbytes = arr.nbytes
        if not nbytes:
            return
        stream = self._stream or self.stream
        if nbytes < DIRECT_PAGEABLE_BYTES or cudart.is_pinned(arr):
            cudart.copy_htod(dst, arr, nbytes, stream)
            return
        if self._in_flight:  # the last call may still be copying out of this pinned buffer
            stream.synchronize()
            self._in_flight = False
        pinned = self._pinned_buffer(name, nbytes)
        self._host_copy(pinned.array[:nbytes], arr.reshape(-1).view(np.uint8))
        cudart.copy_htod(dst, pinned.ptr, nbytes, stream)

    def _host_copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        """``dst[...] = src`` for two contiguous byte arrays of one length, by up to
        STAGING_THREADS threads of at least STAGING_PART_BYTES each."""
        nbytes = src.nbytes
        parts = min(STAGING_THREADS, nbytes // STAGING_PART_BYTES)
        if parts < 2:
            np.copyto(dst, src)
            return
        step = -(-nbytes // parts)
        pool = self._threads()
        for fut in [pool.submit(np.copyto, dst[lo:lo + step], src[lo:lo + step]) for lo in range(0, nbytes, step)]:
            fut.result()

    def _threads(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=STAGING_THREADS, thread_name_prefix="dynashape-staging")
        return self._pool

    def _execute(self, state: _ContextState, index: int, graph: bool, feeds: Mapping[str, Feed]) -> None:
        stream = self._stream or self.stream
        if graph and state.key is not None:
            key = state.key
            g = self.graphs.get(key)
            if g is not None:
                g.launch(stream)
                return
            if key not in self.graphs.failed and state.enqueued == key:
                # TensorRT has run once at this shape outside a capture: capture now, then replay
                try:
                    g = cudart.capture_graph(stream, lambda: bool(state.context.execute_async_v3(stream.ptr)))
                except cudart.CaptureError as exc:
                    self.graphs.fail(key, str(exc))
                    log.warning("%s: no CUDA graph at %s, running without one: %s",
                                self.where, format_shapes({n: f.shape for n, f in feeds.items()}), exc)
                else:
                    self.graphs.put(key, g)
                    g.launch(stream)
                    return
        mark = trt_compat.error_mark()
        if not state.context.execute_async_v3(stream.ptr):
            errors = trt_compat.errors_since(mark)
            raise DynashapeError(
                f"{self.where}: TensorRT failed to run at {format_shapes({n: f.shape for n, f in feeds.items()})}: "
                f"{errors[0] if errors else 'no reason given'}"
            )
        state.enqueued = state.key

    def prepare(self, feeds: Mapping[str, Any], profile: int | None = None, *,
                cuda_graph: bool = False) -> PreparedRun:
        """Bind buffers and copy ``feeds`` in once; ``launch()`` then runs only the engine (with
        ``cuda_graph``, replays the graph captured at this shape). ``profile`` forces an
        optimization profile (default: the one ``select_profile`` picks)."""
        checked = classify_feeds(self.inputs, feeds)
        state, index = self._bind(checked, profile, cuda_graph)
        self._execute(state, index, False, checked)  # TensorRT wants one run after a shape change
        graph = None
        if cuda_graph and state.key is not None:
            graph = self.graphs.get(state.key)
            if graph is None and state.key not in self.graphs.failed:
                self._execute(state, index, True, checked)
                graph = self.graphs.get(state.key)
        self.stream.synchronize()
        return PreparedRun(state.context, self.stream, dict(state.out_shapes), graph)

    def infer(
        self,
        feeds: Mapping[str, Any],
        profile: int | None = None,
        *,
        device_outputs: bool = False,
        cuda_graph: bool | None = None,
        synchronize: bool = True,
    ) -> dict[str, Any]:
        """Run once at the feeds' shapes; returns the outputs by name.

        ``feeds`` map input names to NumPy arrays or CUDA arrays (``__cuda_array_interface__`` or
        DLPack: PyTorch, CuPy, :class:`~dynashape.trt.cudart.DeviceArray`). Outputs are fresh NumPy
        arrays, or with ``device_outputs`` DeviceArray views of the engine's output buffers (no
        copy; valid until the next call: copy them to keep them). ``synchronize=False`` (device
        outputs only) returns without waiting: the views carry the engine's stream, which
        consumers of ``__cuda_array_interface__`` order themselves after; a page-locked host
        input (``cudart.pinned_empty``) may then still be being read: do not change it until the
        stream is done. ``profile`` forces an optimization profile; ``cuda_graph`` overrides the
        engine's setting for this call.
        """
        if not synchronize and not device_outputs:
            raise DynashapeError("synchronize=False needs device_outputs=True (host outputs must be waited for)")
        if self._engine is None:
            raise DynashapeError(f"{self.where}: the engine is closed; load it again to run it")
        checked = classify_feeds(self.inputs, feeds)
        graph = self.cuda_graph if cuda_graph is None else cuda_graph
        state, index = self._bind(checked, profile, graph)
        self._execute(state, index, graph, checked)
        stream = self._stream or self.stream
        if device_outputs:
            outs: dict[str, Any] = {
                t.name: cudart.DeviceArray.view(self._buffers[t.name].ptr, state.out_shapes[t.name],
                                                _np_dtype(t.dtype), stream.ptr, self)
                for t in self.outputs
            }
            if synchronize:
                stream.synchronize()
            self._in_flight = not synchronize
            return outs
        # each output is copied straight into a pinned block lent to the caller (or, when the
        # caller holds them all, into the staging buffer and then into a fresh array)
        lent: dict[str, tuple[cudart.PinnedBuffer, bool]] = {}
        try:
            for t in self.outputs:
                nbytes = state.out_nbytes[t.name]
                block = self._lent[t.name].take(nbytes)
                staged = block is None
                if block is None:
                    block = self._pinned_buffer(t.name, nbytes)
                lent[t.name] = (block, staged)
                if nbytes:
                    cudart.copy_dtoh(block.ptr, self._buffers[t.name].ptr, nbytes, stream)
            stream.synchronize()
        except BaseException:
            for name, (block, staged) in lent.items():
                if not staged:
                    self._lent[name].give_back(block)
            raise
        self._in_flight = False
        outputs: dict[str, np.ndarray] = {}
        for t in self.outputs:
            block, staged = lent[t.name]
            shape, dtype = state.out_shapes[t.name], _np_dtype(t.dtype)
            if staged:
                outputs[t.name] = self._copy_out(block.view(shape, dtype))
            else:
                outputs[t.name] = self._lent[t.name].lend(block, shape, dtype)
        return outputs

    def _copy_out(self, view: np.ndarray) -> np.ndarray:
        """A fresh array with the pinned buffer's contents (several threads for large ones)."""
        out = np.empty_like(view)
        self._host_copy(out.reshape(-1).view(np.uint8), view.reshape(-1).view(np.uint8))
        return out

    def close(self) -> None:
        """Free graphs, device and pinned memory and TensorRT objects (contexts before the engine
        before the runtime)."""
        if self._stream is not None:
            self._stream.synchronize()
        self._last_bind = None  # its context and addresses are about to go
        self.graphs.clear()
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        for pinned in self._pinned.values():
            pinned.free()
        self._pinned.clear()
        for pool in self._lent.values():
            pool.close()  # blocks the caller still holds are freed when the caller drops them
        self._contexts.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._stream is not None:
            self._stream.free()
            self._stream = None
        self._engine = None
        self._runtime = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- default profile


def profile_from_lattice(
    inputs: Sequence[Any], export_shape: ShapeMap, lattice: Mapping[str, Mapping[int, Any]]
) -> Profile:
    """The profile `build` uses when no shapes are given.

    opt is the export shape. A batch axis (axis 0 of a rank >= 3 input) spans 1..export; every
    other dynamic axis spans export/4..export*2, both snapped onto the axis's valid-size lattice
    (its minimum and multiple, DS003), so the demo exported at 512 gets 128..1024.
    ``inputs`` are ``dynashape.model.InputInfo``; ``lattice`` maps input -> axis -> AxisLattice.
    """
    prof = Profile()
    for info in inputs:
        if info.name not in export_shape:
            raise DynashapeError(
                f"no export shape for input {info.name!r}; give --min/--opt/--max for it"
            )
        opt = tuple(export_shape[info.name])
        lo, hi = list(opt), list(opt)
        for axis in info.dynamic_axes:
            lat = lattice.get(info.name, {}).get(axis)
            multiple = int(lat.multiple) if lat is not None else 1
            floor = int(lat.min) if lat is not None else 1
            size = opt[axis]
            if axis == 0 and info.rank >= 3:
                want_lo, want_hi = 1, size
            else:
                want_lo, want_hi = max(1, size // 4), size * 2
            lo[axis] = min(size, max(floor, -(-want_lo // multiple) * multiple))
            hi[axis] = max(size, (want_hi // multiple) * multiple)
        prof.add(info.name, lo, opt, hi)
    return prof
