"""One wide profile against planned profiles, measured against static engines, fp16 and fp32.

    python benchmarks/profile_planning.py [--model NAME=PATH ...] [--precisions fp16,fp32]
        [--max-profiles N] [--target 1.05] [--state DIR] [--json OUT.json]

For each model and precision, with one timing cache shared by every build of that pair:

1. the one-profile engine over 1x3x256x256 ... 4x3x1024x2048 (opt 512x512) is built first (with
   a cold timing cache, unless --state holds one from an earlier run: the report says so) and timed;
2. ``dynashape.trt.planning.plan_profiles`` plans up to N profiles with the five benchmark shapes as
   probes (static engines at each, built once and reused by the search);
3. at the five shapes and at two shapes between the planned profiles' opt points (static
   engines are built there too), the static, one-profile and planned engines are timed side by
   side: interleaved rounds, the order rotating, medians (``--rounds``). Static and candidate
   engines measured in an earlier run on this card are rebuilt for this, from the timing cache.

It prints per shape the static latency, the one-profile ratio and the planned ratio (dynamic /
static), the build times (one-profile engine, the planned engine's final build, the whole
search) and the engine sizes. The search's own measurements, which chose the profiles, are in
the JSON (``plan``). Without --model it runs the fixed demo. Static and candidate
measurements are kept in --state, so an interrupted run continues where it stopped. Needs
TensorRT and a GPU; every number comes from this one run on one machine.

Cold TensorRT 8.5 builds are slow: on an H100, lraspp_mobilenet_v3_large's one-profile engine
took 238 s (fp16) and 102 s (fp32), a static engine 72-234 s (fp16) and 29-47 s (fp32), so a
cold fp16 run spends about 28 minutes building. Its timing cache (in --state) makes a second
run's builds 8-21 s each.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dynashape.model import load_model, save_model
from dynashape.shapes import Profile, ShapeMap, format_shape
from dynashape.trt.bench import TrtMeasurer, time_engine
from dynashape.trt.engine import Engine
from dynashape.trt.planning import plan_profiles

SHAPES = [(1, 3, 256, 256), (1, 3, 512, 512), (1, 3, 1024, 1024), (1, 3, 1024, 2048), (4, 3, 512, 512)]
RANGE = ((1, 3, 256, 256), (1, 3, 512, 512), (4, 3, 1024, 2048))
MULTIPLE = 32  # spatial sizes stay multiples of 32: on the lattice of the demo (16) and of lraspp (32)


def fixed_demo(out: Path) -> Path:
    from dynashape.demo import demo_onnx_path
    from dynashape.pipeline.fix import fix_model

    return save_model(fix_model(load_model(demo_onnx_path())).fixed, out)


def between(profiles: list[Profile], name: str, probes: list[ShapeMap]) -> list[ShapeMap]:
    """Two shapes between the planned profiles' opt points (geometric midpoints, sizes on the
    lattice), or between probe shapes when there are fewer than two opt points to go between."""
    opts = sorted({p.inputs[name].opt for p in profiles}, key=math.prod)
    pairs = list(itertools.pairwise(opts))
    if len(pairs) < 2:
        by_size = sorted({s[name] for s in probes}, key=math.prod)
        pairs += list(itertools.pairwise(by_size))
    out: list[ShapeMap] = []
    for a, b in pairs:
        mid = []
        for axis, (x, y) in enumerate(zip(a, b, strict=True)):
            m = MULTIPLE if axis >= 2 else 1
            mid.append(max(min(x, y), round(math.sqrt(x * y) / m) * m))
        shape = {name: tuple(mid)}
        if shape[name] not in (a, b) and shape not in out and shape not in probes:
            out.append(shape)
        if len(out) == 2:
            break
    return out


def side_by_side(engines: dict[str, Engine], shapes: ShapeMap, args: argparse.Namespace) -> dict[str, float]:
    """Median ms of each engine at ``shapes``, timed in ``args.rounds`` interleaved rounds (the
    order rotating each round) so that clock and temperature drift falls on all of them alike;
    the result is the median of the rounds' medians."""
    names = list(engines)
    per: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            per[n].append(time_engine(engines[n], shapes, warmup=args.warmup, iters=args.iters,
                                      budget_s=args.budget / args.rounds).median_ms)
    return {n: statistics.median(v) for n, v in per.items()}


def bench_one(label: str, model: Path, fp16: bool, args: argparse.Namespace, state: Path) -> dict[str, Any]:
    precision = "fp16" if fp16 else "fp32"
    tag = f"{label}-{precision}"
    done = state / f"{tag}.json"
    if done.is_file():
        print(f"{tag}: results from an earlier run ({done})", flush=True)
        return dict(json.loads(done.read_text()))
    name = load_model(model).graph.input[0].name
    rng = Profile().add(name, *RANGE)
    probes: list[ShapeMap] = [{name: s} for s in SHAPES]

    def progress(msg: str) -> None:
        print(f"  {tag}: {msg}", flush=True)

    cache = state / f"{tag}.timing.cache"
    warm = cache.is_file() and cache.stat().st_size > 0  # an earlier run's tactics: builds are faster
    measurer = TrtMeasurer(
        model, fp16=fp16, timing_cache=cache, store=state / f"{tag}.measurements.json",
        warmup=args.warmup, iters=args.iters, budget_s=args.budget, progress=progress,
    )
    start = time.perf_counter()
    progress(f"one-profile engine {rng}")
    measurer.profile_ms(rng, probes)  # built first, so that its build time is the uncached one
    one_build = next((b for b in measurer.builds if b.kind == "candidate" and b.label == str(rng)), None)
    plan = plan_profiles(rng, measurer, probes=probes, target=args.target, max_profiles=args.max_profiles,
                         progress=progress)
    planned = measurer.final_engine
    assert planned is not None
    planned.info.plan = plan
    extra = between(plan.profiles, name, probes)
    for shapes in extra:  # the two in-between shapes get static engines too
        measurer.static_ms(shapes)
    progress("timing the static, one-profile and planned engines side by side")
    one_built = measurer.profile_engine(rng)
    rows = []
    with Engine(planned.data, planned.info, where="planned engine") as eng, \
            Engine(one_built.data, one_built.info, where="one-profile engine") as one_eng:
        for shapes in probes + extra:
            engines = {"one": one_eng, "planned": eng}
            static_built = measurer.static_engine(shapes) if measurer.static_ms(shapes) is not None else None
            with contextlib.ExitStack() as stack:
                if static_built is not None:
                    engines["static"] = stack.enter_context(
                        Engine(static_built.data, static_built.info, where="static engine"))
                ms = side_by_side(engines, shapes, args)
            static, one, dyn = ms.get("static"), ms["one"], ms["planned"]
            rows.append({
                "shape": format_shape(shapes[name]), "probe": shapes in probes, "static_ms": static,
                "one_profile_ms": one, "planned_ms": dyn, "profile": eng.select_profile(shapes),
                "one_profile_ratio": one / static if static else None,
                "planned_ratio": dyn / static if static else None,
            })
    # every build of this (model, precision), earlier interrupted runs of the benchmark included
    builds = {k: sum(b.seconds for b in measurer.builds if b.kind == k)
              for k in ("static", "candidate", "final", "rebuild")}
    result = {
        "model": label, "precision": precision, "device": planned.info.gpu_name,
        "tensorrt": planned.info.tensorrt_version, "rows": rows,
        "profiles": [str(p) for p in plan.profiles], "stopped": plan.stopped,
        "one_profile_build_s": one_build.seconds if one_build else None,
        "one_profile_size": one_build.size if one_build else None, "timing_cache_warm_at_start": warm,
        "planned_final_build_s": builds["final"], "planned_size": len(planned.data),
        "search_build_s": builds["static"] + builds["candidate"] + builds["final"],
        "static_build_s": builds["static"], "rebuild_s": builds["rebuild"],
        "candidate_build_s": builds["candidate"], "wall_s": time.perf_counter() - start,
        "plan": plan.to_json(),
    }
    done.write_text(json.dumps(result, indent=2))
    return result


def _fmt(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None else "-"


def report(results: list[dict[str, Any]]) -> None:
    for res in results:
        print(f"\n{res['model']} {res['precision']} on {res['device']}, TensorRT {res['tensorrt']}: "
              f"{len(res['profiles'])} planned profile(s), {res['stopped']}")
        for i, p in enumerate(res["profiles"]):
            print(f"  profile {i}: {p}")
        print(f"  {'shape':<14} {'static ms':>10} {'one-profile':>12} {'planned':>9} {'profile':>8}")
        for r in res["rows"]:
            mark = "" if r["probe"] else "  (between opts)"
            print(f"  {r['shape']:<14} {_fmt(r['static_ms'], '.3f'):>10} "
                  f"{_fmt(r['one_profile_ratio'], '.2f') + 'x':>12} {_fmt(r['planned_ratio'], '.2f') + 'x':>9} "
                  f"{r['profile']:>8}{mark}")
        one_b, fin_b = res["one_profile_build_s"], res["planned_final_build_s"]
        print(f"  build: one-profile engine {_fmt(one_b, '.1f')} s ({_fmt(res['one_profile_size'], ',')} bytes); "
              f"planned engine {fin_b:.1f} s ({res['planned_size']:,} bytes)"
              + (f" = {fin_b / one_b:.2f}x the one-profile build" if one_b else "")
              + (" (timing cache warm from an earlier run)" if res.get("timing_cache_warm_at_start") else ""))
        print(f"  search: {res['search_build_s']:.1f} s of builds (static probes {res['static_build_s']:.1f} s, "
              f"candidates {res['candidate_build_s']:.1f} s), {res['wall_s']:.0f} s in all")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                    help="a model to plan (repeatable); default: the fixed demo")
    ap.add_argument("--precisions", default="fp16,fp32")
    ap.add_argument("--max-profiles", type=int, help="cap on the planned profiles (default: none but the search's own)")
    ap.add_argument("--target", type=float, default=1.05)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per shape and engine")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds when timing the engines side by side for the table")
    ap.add_argument("--state", default="profile-planning-state", help="folder for caches and partial results")
    ap.add_argument("--json", help="also write all results here")
    args = ap.parse_args(argv)

    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    models: list[tuple[str, Path]] = []
    for item in args.model:
        label, _, path = item.partition("=")
        models.append((label, Path(path)) if path else (Path(label).stem, Path(label)))
    if not models:
        models = [("demo-fixed", fixed_demo(state / "demo_fixed.onnx"))]
    results = []
    for label, path in models:
        for precision in args.precisions.split(","):
            results.append(bench_one(label, path, precision == "fp16", args, state))
            report(results[-1:])
    print("\n==== summary ====")
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
