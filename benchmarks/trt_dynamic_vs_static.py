"""One dynamic engine against static engines, fp32 and fp16, plus PyTorch eager, on the fixed demo.

    python benchmarks/trt_dynamic_vs_static.py [--model FIXED.onnx] [--torch-python python3]

The dynamic engine has one profile 1x3x256x256 / 1x3x512x512 / 4x3x1024x2048; each shape also
gets its own static engine (min = opt = max) built with the same options and a shared timing
cache. Prints median latencies and the dynamic/static ratio per shape and precision, and PyTorch
eager (``dynashape.demo.model:build``) on the same GPU. Without --model the demo is fixed in memory
with ``dynashape.pipeline.fix.fix_model``. With --cuda-graph, dynamic and static engines are both timed as
CUDA-graph replays (trtexec's --useCudaGraph). Needs TensorRT and a GPU; numbers are ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from dynashape.model import load_model, save_model
from dynashape.shapes import Profile, format_shape, parse_shapes
from dynashape.trt.bench import BenchResult, run_bench
from dynashape.trt.engine import build_engine

SHAPES = ["input:1x3x256x256", "input:1x3x512x512", "input:1x3x1024x1024", "input:4x3x512x512",
          "input:1x3x1024x2048"]
PROFILE = ((1, 3, 256, 256), (1, 3, 512, 512), (4, 3, 1024, 2048))


def fixed_demo(out: Path) -> Path:
    from dynashape.demo import demo_onnx_path
    from dynashape.pipeline.fix import fix_model

    return save_model(fix_model(load_model(demo_onnx_path())).fixed, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="the fixed model (default: the demo, fixed in memory)")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--shapes", nargs="+", default=SHAPES)
    ap.add_argument("--torch", default="dynashape.demo.model:build", help="'' to skip PyTorch eager")
    ap.add_argument("--torch-python", help="interpreter with torch+CUDA, when not this one")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timing per shape and runtime")
    ap.add_argument("--json", help="also write all results here")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="time CUDA-graph replays of the dynamic and of the static engines (the same treatment)")
    args = ap.parse_args(argv)

    shapes = [parse_shapes(s, ["input"]) for s in args.shapes]
    results: dict[str, BenchResult] = {}
    with tempfile.TemporaryDirectory(prefix="dynashape-bench-") as tmp:
        model = Path(args.model) if args.model else fixed_demo(Path(tmp) / "demo_fixed.onnx")
        cache = Path(tmp) / "timing.cache"
        for precision in args.precisions.split(","):
            fp16 = precision == "fp16"
            prof = Profile().add("input", *PROFILE)
            t0 = time.perf_counter()
            built = build_engine(model, [prof], fp16=fp16, timing_cache=cache)
            print(f"{precision}: dynamic engine {prof} built in {time.perf_counter() - t0:.1f} s", flush=True)
            engine = built.save(Path(tmp) / f"demo_{precision}.engine")
            results[precision] = run_bench(
                engine, shapes, static=True, source_model=model, torch_spec=args.torch or None,
                torch_python=args.torch_python, fp16=fp16, warmup=args.warmup, iters=args.iters,
                budget_s=args.budget, progress=lambda msg: print(f"  {msg}", flush=True),
                cuda_graph=args.cuda_graph, infer=False,
            )

    first = next(iter(results.values()))
    print(f"\n{first.device}, TensorRT {first.tensorrt_version}; median latency in ms "
          "(dyn/static = dynamic engine / static engine at that shape; torch/TRT = eager / dynamic)")
    header = f"{'shape':<14}"
    for p in results:
        header += f" | {p + ' dyn':>9} {p + ' static':>11} {'dyn/static':>10} {'torch':>8} {'torch/TRT':>9}"
    print(header)
    for i, s in enumerate(shapes):
        line = f"{format_shape(s['input']):<14}"
        for res in results.values():
            row = res.rows[i]
            def ms(st: object) -> str:
                return f"{st.median_ms:.3f}" if st is not None else "-"  # type: ignore[attr-defined]
            dvs = f"{row.dynamic_vs_static:.2f}x" if row.dynamic_vs_static else "-"
            tvd = f"{row.torch_vs_dynamic:.2f}x" if row.torch_vs_dynamic else "-"
            line += f" | {ms(row.dynamic):>9} {ms(row.static):>11} {dvs:>10} {ms(row.torch):>8} {tvd:>9}"
        print(line)
    for p, res in results.items():
        for row in res.rows:
            for err in row.errors:
                print(f"  {p} {format_shape(row.shapes['input'])}: {err}")
        print(f"  {p}: " + "; ".join(res.notes))
        builds = [r.static_build_s for r in res.rows if r.static_build_s]
        if builds:
            print(f"  {p}: static builds {min(builds):.1f}-{max(builds):.1f} s each")
    if args.json:
        Path(args.json).write_text(json.dumps({p: r.to_json() for p, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
