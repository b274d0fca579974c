"""`dynashape build`, `run` and `bench`: the TensorRT subcommands (parse, call the library, print).

``cli.py`` calls ``register(subparsers)``; each subcommand stores its handler as ``func`` and the
handler returns the exit code: 0 done, 1 refused or failed (hazards found, TensorRT's build
failed); a usage or environment error is a ``DynashapeError``, which the one wrapper
(:func:`dynashape.errors.run_guarded`) prints as one line with exit 2. The build's policy (the
hazard gate, the default profile, the timing cache, the planner) is :mod:`dynashape.api`'s.
TensorRT is imported by the library, only when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from dynashape import api
from dynashape.cli.args import add_cuda_graph, add_fp16, add_json
from dynashape.errors import DynashapeError
from dynashape.findings import Finding
from dynashape.inputs import engine_inputs, validate_shapes
from dynashape.model import atomic_path, check_output_path
from dynashape.shapes import ShapeMap, format_shape, format_shapes, parse_shapes
from dynashape.trt import bench, planning
from dynashape.trt import compat as trt_compat
from dynashape.trt.engine import BuildError, Engine, read_sidecar
from dynashape.trt.planning import ProfilePlan

log = logging.getLogger(__name__)

_PROFILE_HELP = (
    "one optimization profile as three shape specs, MIN OPT MAX, each like --min "
    "(e.g. --profile input:1x3x128x128 input:1x3x256x256 input:1x3x512x512); repeat for "
    "several profiles; several inputs are comma-separated inside each spec"
)
_TACTIC_HELP = (
    "tactic sources in trtexec syntax, added to (+) or removed from (-) TensorRT's default: "
    "CUBLAS, CUBLAS_LT, CUDNN, EDGE_MASK_CONVOLUTIONS, JIT_CONVOLUTIONS; 'default' keeps "
    f"TensorRT's set (default: {trt_compat.DEFAULT_TACTIC_SOURCES}, i.e. TensorRT's own "
    "kernels only, no cuBLAS/cuDNN); write it with '=' as the value starts with '-': "
    "--tactic-sources=-CUBLAS,-CUDNN"
)


def register(subparsers: Any) -> None:
    """Add `build`, `run` and `bench` to an argparse subparsers object."""
    b = subparsers.add_parser(
        "build",
        help="build a TensorRT engine (+ MODEL.engine.json sidecar) with optimization profiles",
        description=(
            "Build a TensorRT engine. Shapes use trtexec syntax, name:1x3x128x128, or name:[1,3,128,128]; "
            "several inputs are comma-separated. With no shapes, the profile is derived from the "
            "model's export shape and its valid-size lattice (batch 1..export, other axes "
            "export/4..export*2). `check` runs first: hazards of severity error stop the build "
            "unless --force. --profiles auto[:N] plans up to N profiles over the range by measurement: "
            "static engines at probe shapes set the speed to meet; starting from one profile over "
            "the range, a profile is added around the slowest probe until every probe is within "
            "--target of static. Where profiles overlap, each shape runs in the one measured fastest."
        ),
    )
    b.add_argument("model", help="the ONNX model")
    b.add_argument("-o", "--output", required=True, help="the engine file to write (sidecar: OUTPUT.json)")
    b.add_argument("--min", dest="min_shapes", metavar="SHAPES", help="min shapes, e.g. input:1x3x128x128")
    b.add_argument("--opt", dest="opt_shapes", metavar="SHAPES",
                   help="opt shapes (default: between min and max)")
    b.add_argument("--max", dest="max_shapes", metavar="SHAPES", help="max shapes, e.g. input:1x3x1024x1024")
    b.add_argument("--profile", action="append", nargs=3, metavar=("MIN", "OPT", "MAX"), help=_PROFILE_HELP)
    add_fp16(b, "allow fp16 kernels")
    b.add_argument("--workspace", type=int, metavar="MIB", help="workspace memory limit in MiB")
    b.add_argument("--profiles", metavar="auto[:N]",
                   help="plan the profiles by measurement over the --min/--max range (or the one derived "
                        "from the lattice): at most N, or by default one per slow probe beyond the range's")
    b.add_argument("--target", type=float, default=planning.DEFAULT_TARGET,
                   help="with --profiles auto: slowest allowed dynamic/static ratio "
                        f"(default {planning.DEFAULT_TARGET})")
    b.add_argument("--probes", action="extend", nargs="+", default=[], metavar="SHAPES",
                   help="with --profiles auto: the shapes to measure (default: min, opt, max of the range "
                        "and the midpoints between them), e.g. --probes input:1x3x256x256 input:4x3x512x512")
    b.add_argument("--timing-cache", metavar="PATH",
                   help="timing cache file: loaded if present, saved after (default: one per model, TensorRT "
                        "version and GPU type in ~/.cache/dynashape, or $DYNASHAPE_CACHE_DIR)")
    b.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache")
    b.add_argument("--tactic-sources", default=trt_compat.DEFAULT_TACTIC_SOURCES, metavar="LIST",
                   help=_TACTIC_HELP)
    b.add_argument("--force", action="store_true", help="build even when `check` finds hazards")
    b.set_defaults(func=cmd_build)

    r = subparsers.add_parser(
        "run",
        help="run an engine at any shape in its profiles",
        description=(
            "Load an engine, pick the profile containing the shape (the nearest opt when several "
            "do), run, and print or save the outputs. Inputs without --input get seeded random "
            "data at --shape (default: profile 0's opt shape)."
        ),
    )
    r.add_argument("engine", help="the engine file (its sidecar ENGINE.json is checked when present)")
    r.add_argument("--shape", action="append", default=[], metavar="SHAPES",
                   help="input shapes, e.g. input:1x3x480x640 (repeatable, or comma-separated)")
    r.add_argument("--input", action="append", default=[], metavar="NAME:FILE.npy",
                   help="an input's value from a .npy file (repeatable)")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="save the outputs here")
    r.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    add_cuda_graph(r, "capture each shape's run into a CUDA graph once and replay it (as trtexec's "
                      "--useCudaGraph); a shape whose capture fails runs without")
    r.add_argument("--repeat", type=int, default=10, metavar="N",
                   help="after the first call, N more calls timed as the steady latency (default 10)")
    r.add_argument("--no-warmup", action="store_true",
                   help="skip the warm-up (contexts and largest buffers made up front), to see a cold first call")
    r.set_defaults(func=cmd_run)

    n = subparsers.add_parser(
        "bench",
        help="latency per shape (median, p99), against static engines and PyTorch eager",
        description=(
            "Time the engine at each shape (default: each profile's min/opt/max). "
            "--compare-static builds one static engine per shape from the source model and "
            "prints dynamic/static ratios; --torch times PyTorch eager on the same GPU."
        ),
    )
    n.add_argument("engine", help="the engine file")
    n.add_argument("--shapes", action="extend", nargs="+", default=[], metavar="SHAPES",
                   help="one shape spec per benchmarked shape, e.g. "
                        "--shapes input:1x3x256x256 input:4x3x512x512")
    n.add_argument("--compare-static", action="store_true",
                   help="also build and time one static engine per shape")
    n.add_argument("--model", metavar="MODEL.onnx", help="the source model (default: the one in the sidecar)")
    n.add_argument("--torch", metavar="FILE.py:FACTORY", help="also time PyTorch eager on this module")
    n.add_argument("--torch-python", metavar="PYTHON",
                   help="run PyTorch in this interpreter (when TensorRT and torch live in different Pythons)")
    add_fp16(n, "fp16 static engines and PyTorch (default: as the engine was built)", default=None)
    n.add_argument("--warmup", type=int, default=10, help="warm-up runs per shape (default 10)")
    n.add_argument("--iters", type=int, default=200, help="timed runs per shape, at most (default 200)")
    add_json(n, "print the results as JSON")
    add_cuda_graph(n, "time CUDA-graph replays of the engine (and of the static engines), as trtexec's "
                      "--useCudaGraph, and run infer with graphs")
    n.add_argument("--no-infer", action="store_true",
                   help="time only the engine, not end-to-end infer (device and NumPy inputs, copy bound, "
                        "first call)")
    n.set_defaults(func=cmd_bench)


def _console() -> Console:
    return Console(stderr=True)


# --------------------------------------------------------------------------- build


def _profiles_from_args(args: argparse.Namespace) -> list[tuple[str, str | None, str]]:
    """--min/--opt/--max or --profile groups, as (min, opt, max) shape specs."""
    profiles: list[tuple[str, str | None, str]] = []
    given = [args.min_shapes, args.opt_shapes, args.max_shapes]
    if any(given):
        if args.profile:
            raise DynashapeError("give either --min/--opt/--max or --profile groups, not both")
        if not (args.min_shapes and args.max_shapes):
            raise DynashapeError("--min and --max go together (--opt is optional)")
        profiles.append((args.min_shapes, args.opt_shapes, args.max_shapes))
    for lo, mid, hi in args.profile or []:
        profiles.append((lo, mid, hi))
    return profiles


def _finding_lines(findings: Sequence[Finding]) -> list[str]:
    lines = []
    for f in findings:
        where = f"{f.node} ({f.op})" if f.node else "(model)"
        lines.append(f"  {f.rule} {f.severity:<7} {where}: {f.message}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    return lines


def _auto_profiles(text: str) -> int | None:
    """``auto`` -> None (no cap but the search's own), ``auto:N`` -> N."""
    head, _, count = text.partition(":")
    if head != "auto" or (count and not count.isdigit()) or (count and int(count) < 1):
        raise DynashapeError(f"--profiles {text!r}: write auto or auto:N with N >= 1 (e.g. auto:3)")
    return int(count) if count else None


def _timing_cache(args: argparse.Namespace) -> str | bool:
    """--timing-cache PATH, --no-timing-cache (False), or neither (True: the library's default file)."""
    if args.no_timing_cache:
        if args.timing_cache:
            raise DynashapeError("--timing-cache and --no-timing-cache contradict each other")
        return False
    return str(args.timing_cache) if args.timing_cache else True


def cmd_build(args: argparse.Namespace) -> int:
    planned = args.profiles is not None
    max_profiles = _auto_profiles(args.profiles) if planned else None
    if planned and args.profile:
        raise DynashapeError(
            "--profiles auto plans the profiles itself: give the range with --min/--max, not --profile"
        )
    if args.probes and not planned:
        raise DynashapeError("--probes goes with --profiles auto")
    profiles = _profiles_from_args(args)
    cache = _timing_cache(args)
    try:
        setup = api.prepare_build(
            args.model, args.output, profiles=profiles, fp16=args.fp16, workspace=args.workspace,
            tactic_sources=args.tactic_sources, timing_cache=cache, force=args.force, plan=planned,
            max_profiles=max_profiles, target=args.target, probes=args.probes,
        )
    except api.BuildRefused as refused:
        print(
            f"dynashape build: refusing to build {args.model}: `check` found {len(refused.hazards)} hazard(s) "
            "that break it at other input shapes:",
            file=sys.stderr,
        )
        print("\n".join(_finding_lines(refused.hazards)), file=sys.stderr)
        print(
            f"fix them first (`dynashape fix {args.model} -o FIXED.onnx`), or pass --force to build anyway",
            file=sys.stderr,
        )
        return 1
    findings = setup.findings
    for f in findings:
        if f.severity != "error":
            print(f"dynashape build: {f.rule} {f.severity}: {f.message}", file=sys.stderr)
    if setup.forced:
        print(f"dynashape build: --force: building despite {len(setup.forced)} hazard(s)", file=sys.stderr)
    if setup.profile_source == "lattice":
        print(f"dynashape build: profile from the export shape and lattice: {setup.profiles[0]}", file=sys.stderr)

    out = setup.output
    assert out is not None  # -o is required
    console = _console()
    start = time.perf_counter()
    try:
        with console.status(f"building {out.name} ...") as status:

            def progress(msg: str) -> None:
                status.update(f"{out.name}: {msg} ({time.perf_counter() - start:.0f} s)")

            result = api.run_build(setup, progress)
    except BuildError as exc:
        print(f"dynashape build: error: {exc}", file=sys.stderr)
        if len(exc.trt_errors) > 1:
            print("TensorRT said:", file=sys.stderr)
            for line in exc.trt_errors[:20]:
                print(f"  {line}", file=sys.stderr)
        involved = [f for f in findings if f.node and f.node in exc.nodes]
        if involved:
            print(f"what `check` says about the nodes involved ({', '.join(exc.nodes)}):", file=sys.stderr)
            print("\n".join(_finding_lines(involved)), file=sys.stderr)
        elif findings:
            print("TensorRT's message names no node that `check` flagged; `check` found:", file=sys.stderr)
            print("\n".join(_finding_lines(findings)), file=sys.stderr)
        else:
            print("`check` found no hazard in this model; the failure is TensorRT's own.", file=sys.stderr)
        return 1
    info = result.built.info
    if setup.timing_cache is not None:
        print(f"timing cache: {setup.timing_cache}", file=sys.stderr)
    if result.plan is not None:
        _print_plan(result.plan)
    print(
        f"built {out} in {info.build_seconds:.1f} s ({len(info.profiles)} profile(s)"
        f"{', fp16' if args.fp16 else ''}; TensorRT {info.tensorrt_version} on {info.gpu_name}); "
        f"sidecar {out.name}.json"
    )
    for i, prof in enumerate(info.profiles):
        print(f"  profile {i}: {prof}")
    return 0


def _print_plan(plan: ProfilePlan) -> None:
    table = Table(title=f"planned profiles: {plan.stopped}; latency in ms")
    for col in ("shape", "static", "planned", "ratio", "profile", "per profile"):
        table.add_column(col, justify="left" if col in ("shape", "per profile") else "right")
    for point in plan.points:
        per = ", ".join(f"{i}: {ms:.3f}" for i, ms in sorted(point.profile_ms.items()))
        table.add_row(
            format_shapes(point.shapes) + ("" if point.is_probe else " (overlap)"),
            f"{point.static_ms:.3f}" if point.static_ms is not None else "-",
            f"{point.best_ms:.3f}" if point.best_ms is not None else "-",
            _ratio(point.ratio), str(point.best_profile), per,
        )
    Console().print(table)
    for i, prof in enumerate(plan.profiles):
        built = [b for b in plan.builds if b.kind == "candidate" and b.label == str(prof)]
        took = (f"built alone in {built[0].seconds:.1f} s" + (" (an earlier run)" if built[0].cached else "")
                if built else "not built alone")
        print(f"profile {i}: {prof}; {took}")
    secs = {k: plan.build_seconds(k) for k in ("static", "candidate", "final")}
    reused = sum(1 for b in plan.builds if b.cached)
    print(
        f"build time: static probes {secs['static']:.1f} s, candidates {secs['candidate']:.1f} s, "
        f"final engine {secs['final']:.1f} s; total {sum(secs.values()):.1f} s"
        + (f" ({reused} measurement(s) reused from an earlier run)" if reused else "")
    )

# --------------------------------------------------------------------------- run


def _split_known_name(item: str, names: Sequence[str]) -> tuple[str, str]:
    """``NAME:VALUE`` where NAME is one of ``names`` (names and paths may contain ':')."""
    for name in sorted(names, key=len, reverse=True):
        if item.startswith(name + ":"):
            return name, item[len(name) + 1 :]
    if len(names) == 1:
        return names[0], item
    raise DynashapeError(f"{item!r}: write NAME:FILE.npy (the engine's inputs: {', '.join(names)})")


def _load_npy(path: str, name: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DynashapeError(f"--input {name}: {p}: no such file")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DynashapeError(f"--input {name}: {p} is not a readable .npy file ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise DynashapeError(f"--input {name}: {p} holds several arrays; save one array with np.save")
    return arr


def _shapes_of(feeds: dict[str, np.ndarray]) -> ShapeMap:
    return {name: tuple(int(d) for d in arr.shape) for name, arr in feeds.items()}


def _feeds_from_args(args: argparse.Namespace, engine: Any) -> dict[str, np.ndarray]:
    names = engine.input_names
    feeds: dict[str, np.ndarray] = {}
    for item in args.input:
        name, path = _split_known_name(item, names)
        if name in feeds:
            raise DynashapeError(f"--input {name} is given twice")
        feeds[name] = _load_npy(path, name)
    shapes: ShapeMap = {}
    for text in args.shape:
        for name, shape in parse_shapes(text, names).items():
            if name in feeds:
                if tuple(feeds[name].shape) != shape:
                    raise DynashapeError(
                        f"--shape {name}:{format_shape(shape)} disagrees with its --input "
                        f"({format_shape(feeds[name].shape)})"
                    )
                continue
            shapes[name] = shape
    validate_shapes(engine_inputs(engine.inputs), shapes={"--shape": shapes, "--input": _shapes_of(feeds)})
    missing = [n for n in names if n not in feeds and n not in shapes]
    for name in missing:
        shapes[name] = engine.profiles[0].inputs[name].opt
    if missing:
        print(f"dynashape run: using profile 0's opt shape for {', '.join(missing)}", file=sys.stderr)
    dtypes = {t.name: t.dtype for t in engine.inputs}
    feeds.update(bench.random_inputs(shapes, dtypes, seed=args.seed))
    return feeds


def cmd_run(args: argparse.Namespace) -> int:
    if args.repeat < 0:
        raise DynashapeError(f"--repeat {args.repeat}: give 0 or more calls")
    out = check_output_path(args.output, [args.engine]) if args.output else None
    with Engine.load(args.engine, cuda_graph=args.cuda_graph) as engine:
        feeds = _feeds_from_args(args, engine)
        shapes = {n: tuple(a.shape) for n, a in feeds.items()}
        index = engine.select_profile(shapes)
        warm_s = None if args.no_warmup else engine.warmup()
        start = time.perf_counter()
        outputs = engine.infer(feeds)
        first_ms = (time.perf_counter() - start) * 1e3
        steady = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            engine.infer(feeds)
            steady.append((time.perf_counter() - t0) * 1e3)
        graph_failures = list(engine.graphs.failed.values())
    table = Table(title=f"{Path(args.engine).name} at {format_shapes(shapes)} (profile {index})")
    for col in ("output", "shape", "dtype", "min", "max", "mean"):
        table.add_column(col, justify="left" if col in ("output", "dtype") else "right")
    for name, arr in outputs.items():
        if arr.size and np.issubdtype(arr.dtype, np.number):
            stats = [f"{float(arr.min()):.4g}", f"{float(arr.max()):.4g}", f"{float(arr.mean()):.4g}"]
        else:
            stats = ["-", "-", "-"]
        table.add_row(name, format_shape(arr.shape), str(arr.dtype), *stats)
    Console().print(table)
    timing = [f"warm-up {warm_s:.2f} s" if warm_s is not None else "no warm-up",
              f"first call {first_ms:.2f} ms"]
    if steady:
        timing.append(f"steady {float(np.median(steady)):.3f} ms (median of {len(steady)})")
    if args.cuda_graph:
        timing.append("CUDA graph" if not graph_failures else f"no CUDA graph ({graph_failures[0]})")
    print("; ".join(timing))
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            arrays: dict[str, Any] = dict(outputs)
            np.savez(fh, **arrays)  # a file object: np.savez would append .npz to a path
        print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- bench


def _ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"


def short_ms(ms: float | None) -> str:
    """Milliseconds in at most five characters (three significant digits from 0.1 ms on)."""
    if ms is None:
        return "-"
    for limit, digits in ((1.0, 3), (10.0, 2), (100.0, 1)):
        if ms < limit - 0.5 * 10.0 ** -digits:
            return f"{ms:.{digits}f}"
    return f"{ms:.0f}"


def _ms(stats: Any) -> str:
    return f"{stats.median_ms:.3f}" if stats is not None else "-"


def cmd_bench(args: argparse.Namespace) -> int:
    info = read_sidecar(args.engine) if Path(args.engine).is_file() else None
    names = [t.name for t in info.inputs] if info is not None else None
    shape_list = [parse_shapes(text, names) for text in args.shapes]
    if info is not None:
        validate_shapes(engine_inputs(info.inputs), shapes={"--shapes": shape_list})
    console = _console()
    with console.status("benchmarking ...") as status:
        result = bench.run_bench(
            args.engine, shape_list, static=args.compare_static, source_model=args.model,
            torch_spec=args.torch, torch_python=args.torch_python, fp16=args.fp16,
            warmup=args.warmup, iters=args.iters, progress=lambda msg: status.update(msg),
            cuda_graph=args.cuda_graph, infer=not args.no_infer,
        )
    if args.json:
        print(bench.to_json(result))
        return 0
    table = Table(title=f"{Path(args.engine).name}: {result.precision}, {result.device}, "
                        f"TensorRT {result.tensorrt_version}, latency in ms"
                        + (", CUDA graphs" if result.cuda_graph else ""))
    cols = ["shape", "TRT p50", "TRT p99"]
    if args.compare_static:
        cols += ["static p50", "dyn/static"]
    if args.torch:
        cols += ["torch p50", "torch/TRT"]
    for col in cols:
        table.add_column(col, justify="left" if col == "shape" else "right")
    for row in result.rows:
        cells = [format_shapes(row.shapes), _ms(row.dynamic),
                 f"{row.dynamic.p99_ms:.3f}" if row.dynamic else "-"]
        if args.compare_static:
            cells += [_ms(row.static), _ratio(row.dynamic_vs_static)]
        if args.torch:
            cells += [_ms(row.torch), _ratio(row.torch_vs_dynamic)]
        table.add_row(*cells)
    Console().print(table)
    if any(row.infer for row in result.rows):
        for table in _infer_table(result):
            Console().print(table)
    for row in result.rows:
        for err in row.errors:
            print(f"  {format_shapes(row.shapes)}: {err}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def _infer_table(result: Any) -> list[Table]:
    """End-to-end ``Engine.infer`` next to the engine's time, per shape: the times, then the ratios
    (short headers, explained in the captions, so both fit 80 columns)."""
    bw = (f"; pinned copies {result.h2d_gbps:.1f} GB/s in, {result.d2h_gbps:.1f} GB/s out"
          if result.h2d_gbps else "")
    warm = f"; warm-up {result.warmup_s:.2f} s" if result.warmup_s is not None else ""
    times = Table(title=f"end-to-end infer, median ms{bw}{warm}", box=box.SIMPLE_HEAD, pad_edge=False, caption=(
        "eng: engine (CUDA events); call: engine launch + synchronize (host wall); dev/numpy/pin: "
        "infer with device, NumPy, page-locked NumPy inputs; np new: NumPy with a new array per call; "
        "copy: copy bound; 1st: the first call after warm-up; new: the slowest first call at new "
        "shapes nearby"))
    ratios = Table(title="end-to-end infer, ratios", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1),
                   caption=(
        "dev: device infer / engine call; pipe: pipelined / engine; pin, numpy: that infer / (copy "
        "bound + engine); np/own: NumPy infer / (CUDA's own pageable copy + engine); 1st, new: that "
        "call / np new; new/trt: new / (np new + TensorRT's own cost of a change of shape)"))
    single = len(result.rows[0].shapes) == 1 if result.rows else False
    for col in ("shape", "eng", "call", "dev", "numpy", "np new", "pin", "copy", "1st", "new"):
        times.add_column(col, justify="left" if col == "shape" else "right", no_wrap=col == "shape")
    for col in ("shape", "dev", "pipe", "pin", "numpy", "np/own", "1st", "new", "new/trt"):
        ratios.add_column(col, justify="left" if col == "shape" else "right", no_wrap=col == "shape")
    for row in result.rows:
        inf = row.infer
        if inf is None:
            continue
        shape = format_shape(next(iter(row.shapes.values()))) if single else format_shapes(row.shapes)
        med = [None if st is None else st.median_ms for st in
               (row.dynamic, inf.engine_call, inf.device, inf.numpy, inf.numpy_new, inf.numpy_pinned)]
        times.add_row(shape, *(short_ms(v) for v in (
            *med, inf.copy_bound_ms, inf.first_call_ms, inf.fresh.p99_ms if inf.fresh else None)))
        ratios.add_row(
            shape, _ratio(row.device_vs_engine), _ratio(row.pipelined_vs_engine), _ratio(row.numpy_vs_bound),
            _ratio(row.pageable_vs_bound), _ratio(row.pageable_vs_own_bound), _ratio(row.first_vs_steady),
            _ratio(row.fresh_vs_steady), _ratio(row.fresh_vs_trt),
        )
    return [times, ratios]
