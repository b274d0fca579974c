"""Latency of an engine per shape, against static engines and PyTorch eager on the same GPU.

Engine time: CUDA events (cuda-python, :mod:`dynashape.trt.cudart`) around ``execute_async_v3``, or
around the replay of its CUDA graph with ``cuda_graph``; without events, the stream-synchronized
wall time of back-to-back launches. Inputs are copied to the device once per shape; only the
engine is timed. The method is recorded in the result.

End-to-end ``Engine.infer`` (``infer=True``): per shape, the first call after ``warmup()``, then
steady calls with NumPy inputs and outputs (host wall time per call, each call synchronized),
ordinary (pageable) and page-locked; with device inputs and outputs (likewise, and pipelined:
calls queued back to back with one synchronization per batch); the engine alone as a caller
waits for it (launch + synchronize, host wall time); calls that each follow a call at another
shape, and the engine call alone after a change of shape (TensorRT's own share of a switch);
first calls at shapes near each one that nothing ran before; and the copy bounds: the shape's
input and output bytes over the pinned host<->device bandwidth measured in the same run, and
CUDA's own copy of the inputs from ordinary memory. See :class:`InferTiming`.

PyTorch eager can run in another interpreter (``torch_python``), for machines where TensorRT
lives in one Python and torch in another: ``python -m dynashape.trt.bench --worker ...`` is that
worker; it writes its results as JSON to a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dynashape.backends.torch import load_module
from dynashape.errors import DynashapeError
from dynashape.model import sha256_file, write_json_atomic
from dynashape.shapes import Profile, Shape, ShapeMap, format_shapes, parse_shapes
from dynashape.trt import compat as trt_compat
from dynashape.trt import cudart
from dynashape.trt.engine import Engine, build_engine, profile_from_shapes
from dynashape.trt.planning import BuildRecord, profile_key, shape_key

log = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]
DEFAULT_WARMUP = 10
DEFAULT_ITERS = 200
DEFAULT_BUDGET_S = 3.0  # per shape and runtime; at least MIN_ITERS samples are always taken
MIN_ITERS = 20
#: first calls are timed at this many new shapes per shape, FRESH_STEP apart on the last dynamic axis
FRESH_SHAPES = 5
FRESH_STEP = 8


@dataclass
class LatencyStats:
    median_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    iters: int
    method: str  # "cuda-events" or "wall-sync"

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], method: str) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no samples")
        ordered = sorted(samples_ms)
        # nearest-rank percentile: with 100 samples, p99 is the 99th smallest
        rank = max(1, math.ceil(0.99 * len(ordered)))
        return cls(
            median_ms=statistics.median(ordered),
            p99_ms=ordered[rank - 1],
            mean_ms=statistics.fmean(ordered),
            min_ms=ordered[0],
            iters=len(ordered),
            method=method,
        )


@dataclass
class InferTiming:
    """End-to-end ``Engine.infer`` at one shape, next to the engine's own time.

    ``numpy``: pageable NumPy inputs (staged through pinned memory), NumPy outputs, one array
    reused by every call; ``numpy_new``: the same with a newly made input array per call, as a
    server gets one per request and as every first call at a new shape has (new memory is slower
    to copy from: 2.1 against 1.45 ms at 1x3x1024x1024 on the H200), the steady time first calls
    are compared with;
    ``numpy_pinned``: the same inputs in page-locked memory (``cudart.pinned_empty``), copied
    straight to the device; ``engine_call``: the engine alone as a caller waits for it, launch (or
    graph replay) plus synchronize in host wall time on prepared buffers, the like-for-like
    denominator of ``device``; ``switch``: NumPy-input calls each right after a call at another
    shape (TensorRT redoes per-shape set-up on a context whose shapes changed); ``fresh``: the
    first calls at FRESH_SHAPES shapes near this one that nothing ran before (each right after a
    call at this shape); ``engine_switch``: TensorRT's own share of a change of shape, the engine
    call (``set_input_shape``, launch, synchronize, host wall time) each right after one at another
    shape; ``pageable_h2d_ms``: copying the inputs from ordinary memory with CUDA's own staging
    (``cudaMemcpyAsync`` from pageable memory, CUDA events), the least such inputs can cost."""

    first_call_ms: float
    numpy: LatencyStats
    device: LatencyStats
    device_pipelined: LatencyStats
    copy_bound_ms: float
    h2d_bytes: int
    d2h_bytes: int
    numpy_pinned: LatencyStats | None = None
    engine_call: LatencyStats | None = None
    switch: LatencyStats | None = None
    fresh: LatencyStats | None = None
    numpy_new: LatencyStats | None = None
    engine_switch: LatencyStats | None = None
    pageable_h2d_ms: float | None = None
    d2h_bound_ms: float | None = None  # the outputs' share of copy_bound_ms

    def to_json(self) -> dict[str, Any]:
        def opt(stats: LatencyStats | None) -> dict[str, Any] | None:
            return asdict(stats) if stats is not None else None

        return {
            "first_call_ms": self.first_call_ms, "numpy": asdict(self.numpy), "device": asdict(self.device),
            "device_pipelined": asdict(self.device_pipelined), "copy_bound_ms": self.copy_bound_ms,
            "h2d_bytes": self.h2d_bytes, "d2h_bytes": self.d2h_bytes,
            "numpy_pinned": opt(self.numpy_pinned), "engine_call": opt(self.engine_call),
            "switch": opt(self.switch), "fresh": opt(self.fresh), "numpy_new": opt(self.numpy_new),
            "engine_switch": opt(self.engine_switch),
            "pageable_h2d_ms": self.pageable_h2d_ms, "d2h_bound_ms": self.d2h_bound_ms,
        }


@dataclass
class ShapeResult:
    """One row: a shape and its latency in each runtime that ran."""

    shapes: ShapeMap
    dynamic: LatencyStats | None = None
    static: LatencyStats | None = None
    static_build_s: float | None = None
    torch: LatencyStats | None = None
    infer: InferTiming | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def device_vs_engine(self) -> float | None:
        """Device-input ``infer`` over the engine alone, both as a caller waits for them (host wall
        time, each call synchronized); the CUDA-event time when the engine call was not timed."""
        if self.infer is None:
            return None
        base = self.infer.engine_call or self.dynamic
        if base is None or base.median_ms <= 0:
            return None
        return self.infer.device.median_ms / base.median_ms

    @property
    def pipelined_vs_engine(self) -> float | None:
        """Device-input ``infer`` queued back to back over the engine's (CUDA-event) time."""
        if self.infer is None or self.dynamic is None or self.dynamic.median_ms <= 0:
            return None
        return self.infer.device_pipelined.median_ms / self.dynamic.median_ms

    def _over_bound(self, stats: LatencyStats | None) -> float | None:
        if self.infer is None or self.dynamic is None or stats is None:
            return None
        bound = self.infer.copy_bound_ms + self.dynamic.median_ms
        return stats.median_ms / bound if bound > 0 else None

    @property
    def numpy_vs_bound(self) -> float | None:
        """NumPy-input ``infer`` with page-locked inputs over (copy bound + engine time)."""
        return self._over_bound(self.infer.numpy_pinned if self.infer else None)

    @property
    def pageable_vs_bound(self) -> float | None:
        """NumPy-input ``infer`` with ordinary (pageable) inputs over (copy bound + engine time):
        these must be staged on the host first, at host-memory speed, which the bound leaves out."""
        return self._over_bound(self.infer.numpy if self.infer else None)

    @property
    def pageable_vs_own_bound(self) -> float | None:
        """NumPy-input ``infer`` with ordinary inputs over (CUDA's own pageable input copy + the
        outputs' pinned copy bound + engine time): against what ordinary memory allows."""
        inf = self.infer
        if inf is None or self.dynamic is None or inf.pageable_h2d_ms is None or inf.d2h_bound_ms is None:
            return None
        return inf.numpy.median_ms / (inf.pageable_h2d_ms + inf.d2h_bound_ms + self.dynamic.median_ms)

    def _steady_new_ms(self) -> float | None:
        """The steady NumPy-input call with a new input array per call, as a first call has one
        (the reused-array call where that was not timed)."""
        if self.infer is None:
            return None
        stats = self.infer.numpy_new or self.infer.numpy
        return stats.median_ms if stats.median_ms > 0 else None

    @property
    def fresh_vs_steady(self) -> float | None:
        """The slowest first call at a shape nothing ran before over the steady call with a new
        input array per call."""
        steady = self._steady_new_ms()
        if self.infer is None or self.infer.fresh is None or steady is None:
            return None
        return self.infer.fresh.p99_ms / steady

    @property
    def fresh_vs_trt(self) -> float | None:
        """The slowest first call at a new shape over (the steady call with a new input array +
        what TensorRT itself adds to a call after a change of shape): the first call's cost beyond
        TensorRT's."""
        inf, steady = self.infer, self._steady_new_ms()
        if inf is None or inf.fresh is None or inf.engine_switch is None or inf.engine_call is None or steady is None:
            return None
        extra = max(0.0, inf.engine_switch.median_ms - inf.engine_call.median_ms)
        return inf.fresh.p99_ms / (steady + extra)

    @property
    def first_vs_steady(self) -> float | None:
        """The first call at this shape (after warm-up) over the steady call with a new input
        array per call."""
        steady = self._steady_new_ms()
        if self.infer is None or steady is None:
            return None
        return self.infer.first_call_ms / steady

    @property
    def first_vs_switch(self) -> float | None:
        """The first call at this shape over a later call that also follows another shape: what a
        first call costs beyond TensorRT's set-up at every change of shape."""
        if self.infer is None or self.infer.switch is None or self.infer.switch.median_ms <= 0:
            return None
        return self.infer.first_call_ms / self.infer.switch.median_ms

    @property
    def dynamic_vs_static(self) -> float | None:
        if self.dynamic is None or self.static is None or self.static.median_ms <= 0:
            return None
        return self.dynamic.median_ms / self.static.median_ms

    @property
    def torch_vs_dynamic(self) -> float | None:
        if self.dynamic is None or self.torch is None or self.dynamic.median_ms <= 0:
            return None
        return self.torch.median_ms / self.dynamic.median_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "shapes": format_shapes(self.shapes),
            "dynamic": asdict(self.dynamic) if self.dynamic else None,
            "static": asdict(self.static) if self.static else None,
            "static_build_s": self.static_build_s,
            "torch": asdict(self.torch) if self.torch else None,
            "dynamic_vs_static": self.dynamic_vs_static,
            "torch_vs_dynamic": self.torch_vs_dynamic,
            "infer": self.infer.to_json() if self.infer else None,
            "device_vs_engine": self.device_vs_engine,
            "pipelined_vs_engine": self.pipelined_vs_engine,
            "numpy_vs_bound": self.numpy_vs_bound,
            "pageable_vs_bound": self.pageable_vs_bound,
            "first_vs_steady": self.first_vs_steady,
            "first_vs_switch": self.first_vs_switch,
            "pageable_vs_own_bound": self.pageable_vs_own_bound,
            "fresh_vs_steady": self.fresh_vs_steady,
            "fresh_vs_trt": self.fresh_vs_trt,
            "errors": self.errors,
        }


@dataclass
class BenchResult:
    engine: str
    precision: str
    device: str
    tensorrt_version: str
    rows: list[ShapeResult]
    notes: list[str] = field(default_factory=list)
    cuda_graph: bool = False
    warmup_s: float | None = None
    h2d_gbps: float | None = None
    d2h_gbps: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "precision": self.precision,
            "device": self.device,
            "tensorrt_version": self.tensorrt_version,
            "cuda_graph": self.cuda_graph,
            "warmup_s": self.warmup_s,
            "h2d_gbps": self.h2d_gbps,
            "d2h_gbps": self.d2h_gbps,
            "rows": [r.to_json() for r in self.rows],
            "notes": self.notes,
        }


def to_json(result: BenchResult) -> str:
    return json.dumps(result.to_json(), indent=2)


# --------------------------------------------------------------------------- timing


def _torch_cuda() -> Any:
    """torch, when it is importable and sees a GPU; else None."""
    try:
        import torch
    except Exception:  # missing, or a broken install
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


def _cuda_events() -> Any:
    """:mod:`dynashape.trt.cudart` when cuda-python sees a GPU (for CUDA events), else None."""
    return cudart if cudart.cuda_available() is None else None


def _sample(
    launch: Callable[[], None],
    sync: Callable[[], None],
    *,
    warmup: int,
    iters: int,
    budget_s: float,
    stream_ptr: int | None = None,
    events: bool = True,
) -> LatencyStats:
    """Time ``launch`` per call: CUDA events on ``stream_ptr`` when cuda-python has a GPU (and
    ``events``), else synchronized wall time.

    Without events, one sample is the wall time of ``batch`` back-to-back launches and one
    synchronize, divided by ``batch``: launches queue on the stream, so this measures the
    device's time per run rather than the host's launch-and-wait round trip (tens of
    microseconds, which would pull every dynamic/static ratio of a small model towards 1).
    ``batch`` is chosen so that a sample lasts about ``BATCH_TARGET_MS``.
    """
    for _ in range(warmup):
        launch()
    sync()
    cuda = _cuda_events() if events and stream_ptr is not None else None
    torch = _torch_cuda() if events and cuda is None else None
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    if torch is not None:  # a Python with torch but without cuda-python: torch's events
        stream = torch.cuda.ExternalStream(stream_ptr) if stream_ptr else torch.cuda.current_stream()
        t_start, t_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        while len(samples) < iters and (len(samples) < MIN_ITERS or time.perf_counter() < deadline):
            t_start.record(stream)
            launch()
            t_end.record(stream)
            t_end.synchronize()
            samples.append(float(t_start.elapsed_time(t_end)))
        return LatencyStats.from_samples(samples, "cuda-events")
    if cuda is not None:
        start, end = cuda.Event(), cuda.Event()
        try:
            while len(samples) < iters and (len(samples) < MIN_ITERS or time.perf_counter() < deadline):
                start.record(stream_ptr)
                launch()
                end.record(stream_ptr)
                end.synchronize()
                samples.append(end.elapsed_ms(start))
        finally:
            start.free()
            end.free()
        return LatencyStats.from_samples(samples, "cuda-events")
    batch = _batch_size(launch, sync)
    while len(samples) < iters and (len(samples) < MIN_ITERS or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        for _ in range(batch):
            launch()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3 / batch)
    return LatencyStats.from_samples(samples, "wall-sync" if batch == 1 else f"wall-sync/{batch}")


BATCH_TARGET_MS = 2.0
MAX_BATCH = 64


def _batch_size(launch: Callable[[], None], sync: Callable[[], None]) -> int:
    """Launches per wall-clock sample: enough that one sample lasts about BATCH_TARGET_MS."""
    t0 = time.perf_counter()
    launch()
    sync()
    one_ms = (time.perf_counter() - t0) * 1e3
    if one_ms <= 0:
        return MAX_BATCH
    return max(1, min(MAX_BATCH, math.ceil(BATCH_TARGET_MS / one_ms)))


def random_inputs(shapes: ShapeMap, dtypes: dict[str, str], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        dtype = np.dtype(dtypes.get(name, "float32"))
        if np.issubdtype(dtype, np.floating):
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[name] = rng.integers(0, 4, shape).astype(dtype)
    return out


def _sample_calls(call: Callable[[], Any], *, warmup: int, iters: int, budget_s: float,
                  before: Callable[[], Any] | None = None) -> LatencyStats:
    """Host wall time per call of ``call``, which waits for its own work; ``before`` runs
    (untimed) ahead of every call."""
    for _ in range(warmup):
        if before is not None:
            before()
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < iters and (len(samples) < MIN_ITERS or time.perf_counter() < deadline):
        if before is not None:
            before()
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return LatencyStats.from_samples(samples, "wall")


def time_engine(
    engine: Any,
    shapes: ShapeMap,
    *,
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    budget_s: float = DEFAULT_BUDGET_S,
    profile: int | None = None,
    cuda_graph: bool = False,
) -> LatencyStats:
    """Latency of ``engine`` (a dynashape Engine) at one shape, inputs already on the device;
    ``profile`` forces one of its optimization profiles; ``cuda_graph`` times the replay of the
    CUDA graph captured at this shape (when capture fails: the plain launch)."""
    feeds = random_inputs(shapes, {t.name: t.dtype for t in engine.inputs})
    kwargs: dict[str, Any] = {"cuda_graph": True} if cuda_graph else {}
    if profile is not None:
        kwargs["profile"] = profile
    run = engine.prepare(feeds, **kwargs)
    return _sample(
        run.launch, run.synchronize, warmup=warmup, iters=iters, budget_s=budget_s,
        stream_ptr=run.stream.ptr,
    )


# --------------------------------------------------------------------------- static engines


def compare_static(
    model: str | os.PathLike[str],
    shape_list: Sequence[ShapeMap],
    *,
    fp16: bool = False,
    workspace: int | None = None,
    tactic_sources: str | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    budget_s: float = DEFAULT_BUDGET_S,
    progress: ProgressFn | None = None,
    cuda_graph: bool = False,
) -> list[tuple[LatencyStats | None, float | None, str | None]]:
    """Build one static engine per shape (min = opt = max) and time it there (with
    ``cuda_graph``: its CUDA graph's replay, the same treatment as the dynamic engine's).

    Returns ``(latency, build seconds, error)`` per shape; a failed build is reported in its row
    rather than ending the run. One timing cache is shared by all builds (a temporary one when
    ``timing_cache`` is None), so later builds reuse the tactics timed by earlier ones.
    """
    tactics = tactic_sources if tactic_sources is not None else trt_compat.DEFAULT_TACTIC_SOURCES
    results: list[tuple[LatencyStats | None, float | None, str | None]] = []
    with tempfile.TemporaryDirectory(prefix="dynashape-static-") as tmp:
        cache = Path(timing_cache) if timing_cache is not None else Path(tmp) / "timing.cache"
        for shapes in shape_list:
            label = format_shapes(shapes)
            if progress:
                progress(f"static engine at {label}")
            prof = profile_from_shapes([shapes])  # min = opt = max
            t0 = time.perf_counter()
            try:
                built = build_engine(
                    model, [prof], fp16=fp16, workspace=workspace, timing_cache=cache,
                    tactic_sources=tactics,
                )
            except DynashapeError as exc:
                log.warning("static engine at %s: %s", label, exc)
                results.append((None, None, f"static build failed: {exc}"))
                continue
            build_s = time.perf_counter() - t0
            with Engine(built.data, built.info, where=f"static engine {label}") as eng:
                stats = time_engine(eng, shapes, warmup=warmup, iters=iters, budget_s=budget_s,
                                    cuda_graph=cuda_graph)
            results.append((stats, build_s, None))
    return results


# --------------------------------------------------------------------------- PyTorch eager


def bench_torch(
    spec: str,
    shape_list: Sequence[ShapeMap],
    *,
    fp16: bool = False,
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    budget_s: float = DEFAULT_BUDGET_S,
) -> list[LatencyStats]:
    """PyTorch eager latency of the module built by ``spec`` (``FILE.py:FACTORY`` or
    ``package.module:FACTORY``) on this process's GPU, inputs passed positionally in the order
    the shape maps name them."""
    torch = _torch_cuda()
    if torch is None:
        raise DynashapeError("PyTorch with CUDA is not available in this Python; pass --torch-python")
    module = load_module(spec).cuda().eval()
    dtype = torch.float16 if fp16 else torch.float32
    if fp16:
        module = module.half()
    out = []
    with torch.inference_mode():
        for shapes in shape_list:
            gen = torch.Generator(device="cuda").manual_seed(0)
            args = [torch.randn(*s, generator=gen, device="cuda", dtype=dtype) for s in shapes.values()]

            def launch(args: list[Any] = args) -> None:
                module(*args)

            out.append(_sample(
                launch, torch.cuda.synchronize, warmup=warmup, iters=iters, budget_s=budget_s,
                stream_ptr=torch.cuda.current_stream().cuda_stream,
            ))
    return out


def bench_torch_subprocess(
    python: str,
    spec: str,
    shape_list: Sequence[ShapeMap],
    *,
    fp16: bool = False,
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    budget_s: float = DEFAULT_BUDGET_S,
    timeout_s: float = 900.0,
) -> list[LatencyStats]:
    """``bench_torch`` in another interpreter (one with torch), through the worker below."""
    package_root = str(Path(__file__).resolve().parents[2])  # src/, above dynashape/trt/
    env = dict(os.environ)
    # only dynashape itself: the caller's PYTHONPATH may hold another Python's compiled packages
    env["PYTHONPATH"] = package_root
    with tempfile.TemporaryDirectory(prefix="dynashape-torch-") as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [
            python, "-m", "dynashape.trt.bench", "--worker", "--spec", spec,
            "--shapes", json.dumps([format_shapes(s) for s in shape_list]),
            "--warmup", str(warmup), "--iters", str(iters), "--budget", str(budget_s),
            "--out", str(out),
        ] + (["--fp16"] if fp16 else [])
        log.info("PyTorch eager in %s", python)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DynashapeError(f"cannot run PyTorch eager with {python}: {exc}") from None
        if not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DynashapeError(f"PyTorch eager with {python} failed (exit {proc.returncode}): {tail[0]}")
        data = json.loads(out.read_text())
    if "error" in data:
        raise DynashapeError(f"PyTorch eager with {python}: {data['error']}")
    return [LatencyStats(**s) for s in data["stats"]]


def _worker_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m dynashape.trt.bench")
    ap.add_argument("--worker", action="store_true", required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--shapes", required=True, help="JSON list of shape specs")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    ap.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    result: dict[str, Any]
    try:
        shape_list = [parse_shapes(s) for s in json.loads(args.shapes)]
        stats = bench_torch(
            args.spec, shape_list, fp16=args.fp16, warmup=args.warmup, iters=args.iters,
            budget_s=args.budget,
        )
        result = {"stats": [asdict(s) for s in stats]}
    except DynashapeError as exc:
        result = {"error": str(exc)}
    Path(args.out).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- end-to-end infer


def copy_bytes(engine: Any, shapes: ShapeMap) -> tuple[int, int]:
    """(input bytes, output bytes) of one call of ``engine`` at ``shapes``."""
    out_shapes = engine.output_shapes(shapes)
    h2d = sum(math.prod(shapes[t.name]) * np.dtype(t.dtype).itemsize for t in engine.inputs)
    d2h = sum(math.prod(out_shapes[t.name]) * np.dtype(t.dtype).itemsize for t in engine.outputs)
    return h2d, d2h


def fresh_shapes(engine: Any, shapes: ShapeMap, avoid: set[tuple[Shape, ...]], count: int = FRESH_SHAPES,
                 step: int = FRESH_STEP) -> list[ShapeMap]:
    """Up to ``count`` shapes near ``shapes`` in the same profile and not in ``avoid`` (shapes
    already run, as tuples in input order), for timing first calls: the last dynamic axis of a
    single-input engine moved by multiples of ``step``, up first, then down. Engines with several
    inputs get none (their dynamic axes may have to move together)."""
    if len(engine.inputs) != 1:
        return []
    t = engine.inputs[0]
    axes = [i for i, d in enumerate(t.shape) if d < 0]
    if not axes:
        return []
    axis, base = axes[-1], tuple(shapes[t.name])
    index = engine.select_profile(shapes)
    prof = engine.profiles[index]
    out: list[ShapeMap] = []
    for sign in (1, -1):
        for k in range(1, 4 * count + 1):
            dims = list(base)
            dims[axis] = base[axis] + sign * step * k
            cand = {t.name: tuple(dims)}
            if dims[axis] < 1 or not prof.contains(cand):
                break
            if (cand[t.name],) in avoid:
                continue
            out.append(cand)
            if len(out) == count:
                return out
    return out


def _pageable_h2d_ms(engine: Any, feeds: Mapping[str, np.ndarray], repeats: int = MIN_ITERS) -> float | None:
    """CUDA's own copy of ``feeds`` from ordinary memory to the device, one copy per input as
    ``infer`` makes them (median of ``repeats``, CUDA events), or None without events."""
    if _cuda_events() is None:
        return None
    dev = cudart.DeviceBuffer(max(1, max((a.nbytes for a in feeds.values()), default=0)))
    stream = engine.stream

    def copies() -> None:
        for arr in feeds.values():
            if arr.nbytes:
                cudart.copy_htod(dev.ptr, arr, arr.nbytes, stream)

    try:
        return _sample(copies, stream.synchronize, warmup=2, iters=repeats, budget_s=0.0,
                       stream_ptr=stream.ptr).median_ms
    finally:
        dev.free()


def _engine_switch(engine: Any, feeds: Mapping[str, np.ndarray], other_feeds: Mapping[str, np.ndarray], *,
                   warmup: int, iters: int, budget_s: float) -> LatencyStats:
    """The engine call (prepared buffers, no copies) each right after one at ``other_feeds``'
    shapes: ``set_input_shape`` back, launch, synchronize. What TensorRT alone spends on a change
    of shape is this minus the steady engine call."""
    run, there = engine.prepare(feeds), engine.prepare(other_feeds)
    # both runs read the engine's own buffers, which fit both shapes now
    here_shapes = {n: a.shape for n, a in feeds.items()}
    there_shapes = {n: a.shape for n, a in other_feeds.items()}

    def before() -> None:
        engine.output_shapes(there_shapes)
        there.launch()
        there.synchronize()

    def call() -> None:
        engine.output_shapes(here_shapes)
        run.launch()
        run.synchronize()

    return _sample_calls(call, warmup=warmup, iters=iters, budget_s=budget_s, before=before)


def time_infer(
    engine: Any,
    shapes: ShapeMap,
    bandwidth: Any,
    *,
    other: ShapeMap | None = None,
    fresh: Sequence[ShapeMap] = (),
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    budget_s: float = DEFAULT_BUDGET_S,
) -> InferTiming:
    """``engine.infer`` at one shape: the first call (the engine should be warmed up already),
    then steady calls with pageable and with page-locked NumPy inputs, device-input calls
    (synchronized per call, and pipelined), the engine alone as a caller waits for it, calls
    alternating with ``other`` shapes (timing only these), the first call at each of the
    ``fresh`` shapes (nothing may have run at them), TensorRT's own cost of a change of shape,
    and the copy bounds: pinned from ``bandwidth`` (a :class:`dynashape.trt.cudart.CopyBandwidth`),
    and pageable inputs copied by CUDA.

    The first call comes right after an untimed call at ``other`` (a shape the engine has run),
    as in a server that is busy when a new shape arrives: after the seconds spent making the
    inputs, an idle GPU and CPU would make any call look slow, first or not."""
    dtypes = {t.name: t.dtype for t in engine.inputs}
    feeds = random_inputs(shapes, dtypes, seed=1)
    other_feeds = random_inputs(other, dtypes, seed=2) if other is not None else None
    if other_feeds is not None:
        engine.infer(other_feeds)
    t0 = time.perf_counter()
    engine.infer(feeds)
    first_ms = (time.perf_counter() - t0) * 1e3
    numpy_stats = _sample_calls(lambda: engine.infer(feeds), warmup=warmup, iters=iters, budget_s=budget_s)
    made: dict[str, dict[str, np.ndarray]] = {}

    def new_arrays() -> None:
        made["feeds"] = {n: a.copy() for n, a in feeds.items()}

    numpy_new = _sample_calls(lambda: engine.infer(made["feeds"]), warmup=warmup, iters=iters // 2,
                              budget_s=budget_s, before=new_arrays)
    pinned: dict[str, np.ndarray] = {}
    for name, arr in feeds.items():
        pinned[name] = cudart.pinned_empty(arr.shape, arr.dtype)
        pinned[name][...] = arr
    pinned_stats = _sample_calls(lambda: engine.infer(pinned), warmup=warmup, iters=iters, budget_s=budget_s)
    device = {name: cudart.DeviceArray.from_numpy(arr) for name, arr in feeds.items()}
    try:
        device_stats = _sample_calls(
            lambda: engine.infer(device, device_outputs=True), warmup=warmup, iters=iters, budget_s=budget_s,
        )
        pipelined = _sample(
            lambda: engine.infer(device, device_outputs=True, synchronize=False), engine.stream.synchronize,
            warmup=warmup, iters=iters, budget_s=budget_s, events=False,
        )
    finally:
        for dev in device.values():
            dev.free()
    run = engine.prepare(feeds, cuda_graph=bool(getattr(engine, "cuda_graph", False)))
    call_stats = _sample_calls(lambda: (run.launch(), run.synchronize()), warmup=warmup, iters=iters,
                               budget_s=budget_s)
    switch_stats = None
    if other_feeds is not None:

        def after_other() -> None:
            engine.infer(other_feeds)

        switch_stats = _sample_calls(lambda: engine.infer(feeds), warmup=warmup, iters=iters // 2,
                                     budget_s=budget_s, before=after_other)
    fresh_ms = []
    for cand in fresh:
        cand_feeds = random_inputs(cand, dtypes, seed=3)
        engine.infer(feeds)  # busy at this shape when the new one arrives
        t0 = time.perf_counter()
        try:
            engine.infer(cand_feeds)
        except DynashapeError as exc:  # a shape the model cannot take after all: not a first call
            log.info("no first call at %s: %s", format_shapes(cand), exc)
            continue
        fresh_ms.append((time.perf_counter() - t0) * 1e3)
    engine_switch = None
    if other_feeds is not None and not getattr(engine, "cuda_graph", False):
        engine_switch = _engine_switch(engine, feeds, other_feeds, warmup=warmup, iters=iters // 2,
                                       budget_s=budget_s)
    h2d, d2h = copy_bytes(engine, shapes)
    return InferTiming(
        first_call_ms=first_ms, numpy=numpy_stats, device=device_stats, device_pipelined=pipelined,
        copy_bound_ms=bandwidth.bound_ms(h2d, d2h), h2d_bytes=h2d, d2h_bytes=d2h,
        numpy_pinned=pinned_stats, engine_call=call_stats, switch=switch_stats,
        fresh=LatencyStats.from_samples(fresh_ms, "wall") if fresh_ms else None, numpy_new=numpy_new,
        engine_switch=engine_switch, pageable_h2d_ms=_pageable_h2d_ms(engine, feeds),
        d2h_bound_ms=bandwidth.bound_ms(0, d2h),
    )


def warmed_neighbour(engine: Any, shapes: ShapeMap) -> ShapeMap | None:
    """A shape ``warmup()`` ran that is not ``shapes``, in the profile ``shapes`` select: its opt,
    else its min, else its max (None for a profile with a single shape)."""
    prof = engine.profiles[engine.select_profile(shapes)]
    for pick in ("opt", "min", "max"):
        cand = {name: tuple(getattr(p, pick)) for name, p in prof}
        if any(cand[n] != tuple(shapes[n]) for n in shapes):
            return cand
    return None


# --------------------------------------------------------------------------- the whole bench


def run_bench(
    engine_path: str | os.PathLike[str],
    shape_list: Sequence[ShapeMap] | None = None,
    *,
    static: bool = False,
    source_model: str | os.PathLike[str] | None = None,
    torch_spec: str | None = None,
    torch_python: str | None = None,
    fp16: bool | None = None,
    warmup: int = DEFAULT_WARMUP,
    iters: int = DEFAULT_ITERS,
    budget_s: float = DEFAULT_BUDGET_S,
    progress: ProgressFn | None = None,
    cuda_graph: bool = False,
    infer: bool = True,
) -> BenchResult:
    """Time the engine at each shape (default: every profile's min/opt/max), optionally against
    static engines built from its source model and against PyTorch eager.

    ``fp16`` (default: as the engine was built) sets the precision of the static engines and of
    PyTorch eager, so all three columns compare like with like. ``cuda_graph`` times the engine
    (and the static engines) as CUDA-graph replays and runs ``infer`` with graphs. ``infer``
    (default) also times end-to-end ``Engine.infer`` after ``warmup()`` (see :func:`time_infer`).
    """
    report = progress or (lambda _msg: None)
    notes: list[str] = []
    warmup_s = bandwidth = None
    with Engine.load(engine_path, cuda_graph=cuda_graph) as eng:
        info = eng.info
        if fp16 is None:
            fp16 = bool(info and info.build_options.fp16)
        if not shape_list:
            shape_list = _profile_shapes(eng.profiles)
        for shapes in shape_list:
            eng.select_profile(shapes)  # refuse shapes outside the engine before any work
        rows = [ShapeResult(shapes=dict(s)) for s in shape_list]
        if infer:
            report("measuring pinned copy bandwidth")
            bandwidth = cudart.measure_copy_bandwidth()
            report("warming up")
            warmup_s = eng.warmup()
            ran = {tuple(tuple(s[t.name]) for t in eng.inputs) for s in [*shape_list, *_profile_shapes(eng.profiles)]}
            for row in rows:  # first calls before anything else runs at these shapes
                report(f"infer at {format_shapes(row.shapes)}")
                fresh = fresh_shapes(eng, row.shapes, ran)
                ran.update(tuple(tuple(s[t.name]) for t in eng.inputs) for s in fresh)
                row.infer = time_infer(eng, row.shapes, bandwidth, other=warmed_neighbour(eng, row.shapes),
                                       fresh=fresh, warmup=warmup, iters=iters, budget_s=budget_s)
        for row in rows:
            report(f"engine at {format_shapes(row.shapes)}")
            row.dynamic = time_engine(eng, row.shapes, warmup=warmup, iters=iters, budget_s=budget_s,
                                      cuda_graph=cuda_graph)
        timing = rows[0].dynamic.method if rows and rows[0].dynamic else "none"
        notes.append(f"timing: {timing}" + (" of CUDA-graph replays" if cuda_graph else ""))
        if cuda_graph and eng.graphs.failed:
            notes.append(f"CUDA graph capture failed at {len(eng.graphs.failed)} shape(s); those ran without")
    if static:
        model = _source_model(engine_path, info, source_model, sha256_file)
        results = compare_static(
            model, [r.shapes for r in rows], fp16=fp16,
            workspace=info.build_options.workspace_mib if info else None,
            tactic_sources=info.build_options.tactic_sources if info else None,
            warmup=warmup, iters=iters, budget_s=budget_s, progress=report, cuda_graph=cuda_graph,
        )
        for row, (stats, build_s, err) in zip(rows, results, strict=True):
            row.static, row.static_build_s = stats, build_s
            if err:
                row.errors.append(err)
    if torch_spec:
        report(f"PyTorch eager: {torch_spec}")
        try:
            if torch_python:
                stats_list = bench_torch_subprocess(
                    torch_python, torch_spec, [r.shapes for r in rows], fp16=fp16,
                    warmup=warmup, iters=iters, budget_s=budget_s,
                )
            else:
                stats_list = bench_torch(
                    torch_spec, [r.shapes for r in rows], fp16=fp16, warmup=warmup, iters=iters,
                    budget_s=budget_s,
                )
            for row, stats in zip(rows, stats_list, strict=True):
                row.torch = stats
            notes.append(f"PyTorch eager timing: {stats_list[0].method}" if stats_list else "")
        except DynashapeError as exc:
            notes.append(f"PyTorch eager skipped: {exc}")
            log.warning("PyTorch eager skipped: %s", exc)
    name, cap = trt_compat.gpu_identity()
    return BenchResult(
        engine=str(engine_path),
        precision="fp16" if fp16 else "fp32",
        device=f"{name} (sm {cap})",
        tensorrt_version=trt_compat.trt_version(),
        rows=rows,
        notes=[n for n in notes if n],
        cuda_graph=cuda_graph,
        warmup_s=warmup_s,
        h2d_gbps=bandwidth.h2d_gbps if bandwidth is not None else None,
        d2h_gbps=bandwidth.d2h_gbps if bandwidth is not None else None,
    )


def _profile_shapes(profiles: Sequence[Profile]) -> list[ShapeMap]:
    seen: list[ShapeMap] = []
    for prof in profiles:
        for pick in ("min", "opt", "max"):
            shapes = {name: getattr(p, pick) for name, p in prof}
            if shapes not in seen:
                seen.append(shapes)
    return seen


def _source_model(
    engine_path: str | os.PathLike[str],
    info: Any,
    given: str | os.PathLike[str] | None,
    sha256: Callable[[str | os.PathLike[str]], str],
) -> str | os.PathLike[str]:
    if given is not None:
        model: str | os.PathLike[str] = given
    elif info is not None and info.source_path:
        # recorded as given at build time: relative to where `build` ran, or beside the engine
        model = info.source_path
        beside = Path(engine_path).parent / Path(model).name
        if not Path(model).is_file() and beside.is_file():
            model = beside
    else:
        raise DynashapeError(
            "--compare-static needs the engine's source model: pass --model MODEL.onnx"
        )
    if not Path(model).is_file():
        raise DynashapeError(f"{model}: source model not found; pass --model MODEL.onnx")
    if info is not None and info.source_sha256 and sha256(model) != info.source_sha256:
        raise DynashapeError(
            f"{model} is not the model this engine was built from (SHA-256 differs); "
            "pass the right one with --model, or rebuild the engine"
        )
    return model


# --------------------------------------------------------------------------- profile planning


class TrtMeasurer:
    """Builds and times engines for the planner; one timing cache for every build.

    Measurements are kept by key (precision, tactic sources, workspace, TensorRT version, the
    GPU card, and the shape or profile) in memory and, with ``store``, in a JSON file, so a
    static probe engine or a candidate profile is never built twice, in this run or a later one
    on the same card. Another card, even of the same model, measures afresh: ratios are only
    made of latencies from one card (its builds are quick then, thanks to the timing cache).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | onnx.ModelProto,
        *,
        fp16: bool = False,
        workspace: int | None = None,
        tactic_sources: str | None = None,
        timing_cache: str | os.PathLike[str] | None = None,
        store: str | os.PathLike[str] | None = None,
        warmup: int = 10,
        iters: int = 100,
        budget_s: float = 1.0,
        progress: ProgressFn | None = None,
    ) -> None:
        self.model = model
        self.options: dict[str, Any] = {
            "fp16": fp16, "workspace": workspace, "timing_cache": timing_cache,
            "tactic_sources": tactic_sources if tactic_sources is not None else trt_compat.DEFAULT_TACTIC_SOURCES,
        }
        self.warmup, self.iters, self.budget_s = warmup, iters, budget_s
        self.progress = progress or (lambda _msg: None)
        env = trt_compat.runtime_env()
        self._tag = json.dumps({
            "fp16": fp16, "workspace": workspace, "tactics": self.options["tactic_sources"],
            "trt": env.tensorrt_version, "gpu": env.gpu_name, "card": trt_compat.gpu_uuid(),
        }, sort_keys=True)
        self.store = Path(store) if store is not None else None
        self._memo: dict[str, Any] = self._load_store()
        self.builds: list[BuildRecord] = []
        self.final_engine: Any = None  # the BuiltEngine of the last ``final`` call
        self._engines: dict[str, Any] = {}  # static and candidate BuiltEngines of this run, by key
        self._seen: set[str] = set()

    def _load_store(self) -> dict[str, Any]:
        if self.store is None or not self.store.is_file():
            return {}
        try:
            data = json.loads(self.store.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable measurement cache; measuring afresh", self.store)
            return {}
        return data if isinstance(data, dict) else {}

    def _remember(self, key: str, value: Any) -> None:
        self._memo[key] = value
        if self.store is not None:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.store, self._memo)

    def _build(self, profiles: Sequence[Profile], kind: str, label: str) -> tuple[Any, BuildRecord]:
        self.progress(f"building the {kind} engine {label}")
        start = time.perf_counter()
        built = build_engine(self.model, list(profiles), **self.options)
        record = BuildRecord(kind, label, time.perf_counter() - start, len(built.data))
        self.builds.append(record)
        log.info("%s engine %s built in %.1f s", kind, label, record.seconds)
        return built, record

    def _reused(self, kind: str, label: str, entry: Mapping[str, Any]) -> None:
        """An earlier build's record, marked as reused (its time was spent in that run)."""
        self.builds.append(BuildRecord(kind, label, float(entry.get("build_s", 0.0)),
                                       int(entry.get("size", 0)), cached=True))

    def _time(self, engine: Any, shapes: ShapeMap, profile: int | None = None) -> float:
        stats = time_engine(engine, shapes, warmup=self.warmup, iters=self.iters, budget_s=self.budget_s,
                            profile=profile)
        return stats.median_ms

    def static_ms(self, shapes: ShapeMap) -> float | None:
        label = shape_key(shapes)
        key = f"static|{self._tag}|{label}"
        entry = self._memo.get(key)
        if isinstance(entry, dict):
            self._reused("static", label, entry)
            return None if entry.get("ms") is None else float(entry["ms"])
        prof = profile_from_shapes([shapes])  # min = opt = max
        try:
            built, record = self._build([prof], "static", label)
        except DynashapeError as exc:
            log.warning("static engine at %s: %s", label, exc)
            self._remember(key, {"ms": None, "error": str(exc)})
            return None
        self._engines[key] = built
        with Engine(built.data, built.info, where=f"static engine {label}") as eng:
            ms = self._time(eng, shapes)
        self._remember(key, {"ms": ms, "build_s": record.seconds, "size": record.size})
        return ms

    def profile_ms(self, profile: Profile, probes: Sequence[ShapeMap]) -> dict[str, float]:
        """Times at ``probes``; the engine is built once per profile and kept while this measurer
        lives, so probes asked for later are timed without a rebuild."""
        label = str(profile)
        key = f"profile|{self._tag}|{profile_key(profile)}"
        entry = dict(self._memo.get(key) or {"ms": {}})
        times: dict[str, float] = {k: float(v) for k, v in entry["ms"].items()}
        missing = [p for p in probes if shape_key(p) not in times]
        if missing:
            built = self._engines.get(key)
            if built is None:
                built, record = self._build([profile], "candidate", label)
                self._engines[key] = built
                # the first build's time is the one to report: a rebuild (in a later run, to time
                # probes asked for afterwards) finds its tactics in the timing cache
                entry.setdefault("build_s", record.seconds)
                entry.setdefault("size", record.size)
            with Engine(built.data, built.info, where="candidate engine") as eng:
                for probe in missing:
                    times[shape_key(probe)] = self._time(eng, probe)
            entry["ms"] = times
            self._remember(key, entry)
        elif key not in self._seen:
            self._reused("candidate", label, entry)
        self._seen.add(key)
        return {shape_key(p): times[shape_key(p)] for p in probes}

    def static_engine(self, shapes: ShapeMap) -> Any:
        """The static BuiltEngine at ``shapes``: this run's, or rebuilt when its measurement came
        from an earlier run (quick: its tactics are in the timing cache). For timing engines side
        by side; a rebuild is recorded as kind "rebuild", not as part of the search."""
        key = f"static|{self._tag}|{shape_key(shapes)}"
        if key not in self._engines:
            self._engines[key], _ = self._build([profile_from_shapes([shapes])], "rebuild", shape_key(shapes))
        return self._engines[key]

    def profile_engine(self, profile: Profile) -> Any:
        """The one-profile BuiltEngine of a candidate, like ``static_engine``."""
        key = f"profile|{self._tag}|{profile_key(profile)}"
        if key not in self._engines:
            self._engines[key], _ = self._build([profile], "rebuild", str(profile))
        return self._engines[key]

    def final(self, profiles: Sequence[Profile], points: Sequence[ShapeMap]) -> list[dict[int, float]]:
        built, _ = self._build(profiles, "final", f"{len(profiles)} profile(s)")
        self.final_engine = built
        out: list[dict[int, float]] = []
        with Engine(built.data, built.info, where="planned engine") as eng:
            for point in points:
                out.append({
                    i: self._time(eng, point, profile=i)
                    for i, prof in enumerate(profiles) if prof.contains(point)
                })
        return out


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
