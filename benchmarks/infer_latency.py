"""What `Engine.infer` costs next to what the engine costs: device inputs, NumPy inputs, the copy bound,
first calls after warm-up, and CUDA graphs against static engines given the same treatment.

    python benchmarks/infer_latency.py [--demo FIXED.onnx] [--real NAME=MODEL.onnx] [--json OUT.json]

Per model, one dynamic engine (one profile) is built and, at five shapes, `dynashape.bench` measures:

- engine: CUDA events around ``execute_async_v3`` (inputs already on the device, no copies);
- engine call: the same launch plus a synchronize, host wall time: what a caller waiting for the
  engine alone sees, the like-for-like denominator of device-input ``infer``;
- infer, device in/out: ``Engine.infer`` on device arrays with ``device_outputs=True``, host wall
  time per call (each call synchronized), and pipelined (calls queued, one synchronization per batch);
- infer, NumPy in/out: host wall time per call, one synchronization per call; with ordinary
  (pageable) inputs, staged through pinned memory on the host, and with page-locked inputs
  (``cudart.pinned_empty``), copied straight to the device;
- copy bound: input + output bytes over the pinned H2D/D2H bandwidth measured in the same run;
- np own: CUDA's own copy of the inputs from ordinary (pageable) memory, timed, plus the outputs'
  pinned bound: what ordinary NumPy inputs cannot go below on this machine;
- first call: the first ``infer`` at the shape after ``Engine.warmup()`` (no shape given to it);
  new: the slowest first call at five shapes nearby that nothing ran before; both over np new,
  steady calls that each get a newly made input array as a first call does; after switch: later
  calls at the shape, each right after a call at another shape; trt sw: the engine call alone
  (prepared buffers) right after one at another shape, TensorRT's own share of a change of shape.

With ``--static`` (default for the demo) each shape also gets a static engine (min = opt = max), and
the dynamic and static engines are timed plainly and as CUDA-graph replays: dyn/static per treatment.
Outputs are checked too: device-input and CUDA-graph runs must equal plain NumPy-input runs bit for
bit, shapes alternating. Needs TensorRT, cuda-python and a GPU; numbers are from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynashape.cli.engine import short_ms
from dynashape.model import load_model, save_model
from dynashape.shapes import Profile, ShapeMap, format_shape, format_shapes, parse_shapes
from dynashape.trt import cudart
from dynashape.trt.bench import BenchResult, LatencyStats, random_inputs, run_bench, time_engine
from dynashape.trt.engine import Engine, build_engine, profile_from_shapes

DEMO_PROFILE = ("input:1x3x256x256", "input:1x3x512x512", "input:4x3x1024x2048")
DEMO_SHAPES = ["input:1x3x256x256", "input:1x3x512x512", "input:1x3x1024x1024", "input:4x3x512x512",
               "input:1x3x1024x2048"]
REAL_PROFILE = ("input:1x3x256x256", "input:1x3x512x512", "input:2x3x1024x1024")
REAL_SHAPES = ["input:1x3x256x256", "input:1x3x384x640", "input:1x3x512x512", "input:2x3x512x512",
               "input:1x3x1024x1024"]

TARGETS = {"device infer / engine call": 1.1, "device infer pipelined / engine": 1.1,
           "pinned numpy infer / (copy bound + engine)": 1.3, "first call / steady": 2.0,
           "first call at a new shape / steady": 2.0}


@dataclass
class GraphRow:
    shape: str
    dyn_plain_ms: float
    dyn_graph_ms: float
    static_plain_ms: float | None
    static_graph_ms: float | None

    @property
    def ratio_plain(self) -> float | None:
        return self.dyn_plain_ms / self.static_plain_ms if self.static_plain_ms else None

    @property
    def ratio_graph(self) -> float | None:
        return self.dyn_graph_ms / self.static_graph_ms if self.static_graph_ms else None


def fixed_demo(out: Path) -> Path:
    from dynashape.demo import demo_onnx_path
    from dynashape.pipeline.fix import fix_model

    return save_model(fix_model(load_model(demo_onnx_path())).fixed, out)


def check_outputs(engine_path: Path, shapes: list[ShapeMap]) -> dict[str, float]:
    """Max |difference| against plain NumPy-input runs: device inputs/outputs, and CUDA graphs
    with the shapes alternating (each graph replayed after other shapes ran)."""
    diffs = {"device": 0.0, "cuda_graph": 0.0}
    with Engine.load(engine_path) as plain, Engine.load(engine_path, cuda_graph=True) as graphed:
        dtypes = {t.name: t.dtype for t in plain.inputs}
        feeds = [random_inputs(s, dtypes, seed=i) for i, s in enumerate(shapes)]
        want = [plain.infer(f) for f in feeds]
        for _round in range(3):
            for f, w in zip(feeds, want, strict=True):
                got = graphed.infer(f)
                diffs["cuda_graph"] = max(diffs["cuda_graph"], _diff(got, w))
        for f, w in zip(feeds, want, strict=True):
            dev = {n: cudart.DeviceArray.from_numpy(a) for n, a in f.items()}
            out = plain.infer(dev, device_outputs=True)
            diffs["device"] = max(diffs["device"], _diff({n: v.to_numpy() for n, v in out.items()}, w))
            for a in dev.values():
                a.free()
        if graphed.graphs.failed:
            print(f"  CUDA graph capture failed: {next(iter(graphed.graphs.failed.values()))}")
    return diffs


def _diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n]))) if a[n].size else 0.0 for n in b)


def graph_rows(engine_path: Path, model: Path, shapes: list[ShapeMap], cache: Path, static: bool,
               budget: float, iters: int) -> list[GraphRow]:
    rows = []
    with Engine.load(engine_path) as eng:
        dyn = [(time_engine(eng, s, iters=iters, budget_s=budget).median_ms,
                time_engine(eng, s, iters=iters, budget_s=budget, cuda_graph=True).median_ms) for s in shapes]
    for s, (plain, graph) in zip(shapes, dyn, strict=True):
        sp = sg = None
        if static:
            t0 = time.perf_counter()
            built = build_engine(model, [profile_from_shapes([s])], timing_cache=cache)
            print(f"  static engine at {format_shapes(s)} built in {time.perf_counter() - t0:.1f} s", flush=True)
            with Engine(built.data, built.info, where="static") as st:
                sp = time_engine(st, s, iters=iters, budget_s=budget).median_ms
                sg = time_engine(st, s, iters=iters, budget_s=budget, cuda_graph=True).median_ms
        rows.append(GraphRow(format_shapes(s), plain, graph, sp, sg))
    return rows


def _r(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"


def report(name: str, res: BenchResult, rows: list[GraphRow], diffs: dict[str, float], build_s: float,
           warm: list[ShapeMap], graphed: BenchResult | None) -> None:
    print(f"\n== {name}: {res.device}, TensorRT {res.tensorrt_version}, {res.precision}; engine built in "
          f"{build_s:.1f} s; warm-up {res.warmup_s:.2f} s; pinned copies {res.h2d_gbps:.1f} GB/s H2D, "
          f"{res.d2h_gbps:.1f} GB/s D2H")
    print("median ms. engine: CUDA events around the launch; call: launch + synchronize, host wall time, "
          "prepared buffers; device: Engine.infer(device arrays, device_outputs=True), each call synchronized; "
          "pipe: the same queued back to back; numpy: ordinary NumPy inputs (one array reused); np new: the same "
          "with a new input array per call (first calls are compared with this); pinned: page-locked NumPy inputs "
          "(cudart.pinned_empty); copy: the copy bound over pinned PCIe bandwidth; np own: CUDA's own copy of "
          "the inputs from ordinary memory + the outputs' pinned bound; first: the first call at the shape "
          "after warmup(); new: the slowest first call at 5 shapes nearby that nothing ran before; switch: a "
          "later call right after a call at another shape; trt sw: the engine call alone right after one at "
          "another shape (TensorRT redoes its per-shape set-up); * = a shape warmup() ran")
    infer_table(res, warm)
    if graphed is not None:
        print("-- the same with CUDA graphs (engine = graph replay; infer replays the graph captured per shape)")
        infer_table(graphed, warm)
    _graph_table(rows)
    print(f"outputs: device vs numpy max |diff| {diffs['device']:.3g}; CUDA graph (shapes alternating) vs plain "
          f"{diffs['cuda_graph']:.3g}")


def infer_table(res: BenchResult, warm: list[ShapeMap]) -> None:
    print(f"{'shape':<14}{'engine':>7}{'call':>7}{'device':>7}{'numpy':>7}{'np new':>7}{'pinned':>7}{'copy':>7}"
          f"{'np own':>7}{'first':>7}{'new':>7}{'switch':>7}{'trt sw':>7}")
    for row in res.rows:
        inf = row.infer
        assert inf is not None and row.dynamic is not None
        mark = "*" if row.shapes in warm else " "
        own = (inf.pageable_h2d_ms + inf.d2h_bound_ms) if inf.pageable_h2d_ms is not None and inf.d2h_bound_ms else None
        cells = [row.dynamic.median_ms, _med(inf.engine_call), inf.device.median_ms, inf.numpy.median_ms,
                 _med(inf.numpy_new), _med(inf.numpy_pinned), inf.copy_bound_ms, own, inf.first_call_ms,
                 inf.fresh.p99_ms if inf.fresh else None, _med(inf.switch), _med(inf.engine_switch)]
        shape = format_shape(next(iter(row.shapes.values()))) + mark
        print(f"{shape:<14}" + "".join(f"{short_ms(c):>7}" for c in cells))
    print(f"{'shape':<14}{'dev/call':>9}{'pipe/eng':>9}{'pin/bnd':>8}{'np/bnd':>7}{'np/own':>7}{'1st/std':>8}"
          f"{'new/std':>8}{'new/trt':>8}")
    for row in res.rows:
        mark = "*" if row.shapes in warm else " "
        print(f"{format_shape(next(iter(row.shapes.values()))) + mark:<14}{_r(row.device_vs_engine):>9}"
              f"{_r(row.pipelined_vs_engine):>9}{_r(row.numpy_vs_bound):>8}{_r(row.pageable_vs_bound):>7}"
              f"{_r(row.pageable_vs_own_bound):>7}{_r(row.first_vs_steady):>8}{_r(row.fresh_vs_steady):>8}"
              f"{_r(row.fresh_vs_trt):>8}")
    worst = {
        "device infer / engine call": max(r.device_vs_engine or 0 for r in res.rows),
        "device infer pipelined / engine": max(r.pipelined_vs_engine or 0 for r in res.rows),
        "pinned numpy infer / (copy bound + engine)": max(r.numpy_vs_bound or 0 for r in res.rows),
        "pageable numpy infer / (copy bound + engine)": max(r.pageable_vs_bound or 0 for r in res.rows),
        "pageable numpy infer / (CUDA's pageable copy + engine)": max(r.pageable_vs_own_bound or 0 for r in res.rows),
        "first call / steady": max(r.first_vs_steady or 0 for r in res.rows),
        "first call at a new shape / steady": max(r.fresh_vs_steady or 0 for r in res.rows),
        "first call at a new shape / (steady + TensorRT's switch)": max(r.fresh_vs_trt or 0 for r in res.rows),
        "first call / call after a switch": max(r.first_vs_switch or 0 for r in res.rows),
    }
    for what, value in worst.items():
        target = TARGETS.get(what)
        print(f"  worst {what}: {value:.2f}x" + (f" (target <= {target}x)" if target else ""))


def _med(stats: LatencyStats | None) -> float | None:
    return stats.median_ms if stats is not None else None


def _graph_table(rows: list[GraphRow]) -> None:
    if not rows:
        return
    print("CUDA graphs: engine time, plain launch vs graph replay; dyn/static per treatment")
    print(f"{'shape':<22} {'dyn':>8} {'dyn graph':>9} {'static':>8} {'st graph':>8} {'dyn/st':>7} {'graph dyn/st':>12}")
    for g in rows:
        st = f"{g.static_plain_ms:>8.3f}" if g.static_plain_ms else f"{'-':>8}"
        sg = f"{g.static_graph_ms:>8.3f}" if g.static_graph_ms else f"{'-':>8}"
        print(f"{g.shape:<22} {g.dyn_plain_ms:>8.3f} {g.dyn_graph_ms:>9.3f} {st} {sg} {_r(g.ratio_plain):>7} "
              f"{_r(g.ratio_graph):>12}")


def run_model(name: str, model: Path, profile: tuple[str, str, str], shape_specs: list[str], tmp: Path,
              cache: Path, static: bool, budget: float, iters: int, graph_infer: bool = True,
              graph_table: bool = True) -> dict[str, Any]:
    names = [i.name for i in load_model(model).graph.input]
    shapes = [parse_shapes(s, names) for s in shape_specs]
    lo, mid, hi = (parse_shapes(p, names) for p in profile)
    prof = Profile()
    for n in names:
        prof.add(n, lo[n], mid[n], hi[n])
    t0 = time.perf_counter()
    built = build_engine(model, [prof], timing_cache=cache)
    build_s = time.perf_counter() - t0
    print(f"{name}: dynamic engine {prof} built in {build_s:.1f} s", flush=True)
    engine_path = built.save(tmp / f"{name}.engine")
    res = run_bench(engine_path, shapes, budget_s=budget, iters=iters, warmup=10,
                    progress=lambda msg: print(f"  {msg}", flush=True))
    graphed = run_bench(engine_path, shapes, budget_s=budget, iters=iters, warmup=10, cuda_graph=True,
                        progress=lambda msg: print(f"  graphs: {msg}", flush=True)) if graph_infer else None
    diffs = check_outputs(engine_path, shapes)
    rows = graph_rows(engine_path, model, shapes, cache, static, budget, iters) if graph_table else []
    warm = [{n: getattr(p, pick) for n, p in prof} for pick in ("min", "opt", "max")]
    report(name, res, rows, diffs, build_s, warm, graphed)
    return {"bench": res.to_json(), "bench_cuda_graph": graphed.to_json() if graphed else None,
            "graphs": [dict(asdict(g), ratio_plain=g.ratio_plain, ratio_graph=g.ratio_graph) for g in rows],
            "diffs": diffs, "build_s": build_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", help="the fixed demo (default: fixed in memory); 'skip' to leave it out")
    ap.add_argument("--real", metavar="NAME=MODEL.onnx", help="a real model, e.g. lraspp=lraspp_fixed.onnx")
    ap.add_argument("--real-profile", nargs=3, default=list(REAL_PROFILE), metavar=("MIN", "OPT", "MAX"))
    ap.add_argument("--real-shapes", nargs="+", default=REAL_SHAPES)
    ap.add_argument("--real-static", action="store_true", help="static engines for the real model too")
    ap.add_argument("--no-static", action="store_true", help="no static engines for the demo either")
    ap.add_argument("--no-graph-table", action="store_true",
                    help="skip the plain-vs-graph engine table (and its static engines)")
    ap.add_argument("--timing-cache", help="timing cache file (default: a temporary one)")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per shape and measurement")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--json", help="also write all results here")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dynashape-infer-") as tmp_name:
        tmp = Path(tmp_name)
        cache = Path(args.timing_cache) if args.timing_cache else tmp / "timing.cache"
        if args.demo != "skip":
            demo = Path(args.demo) if args.demo else fixed_demo(tmp / "demo_fixed.onnx")
            results["demo"] = run_model("demo", demo, DEMO_PROFILE, DEMO_SHAPES, tmp, cache, not args.no_static,
                                        args.budget, args.iters, graph_table=not args.no_graph_table)
        if args.real:
            name, _, path = args.real.partition("=")
            results[name] = run_model(name, Path(path), tuple(args.real_profile), args.real_shapes,
                                      tmp, cache, args.real_static, args.budget, args.iters,
                                      graph_table=not args.no_graph_table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
