"""Third-party models on TensorRT: the naive export and the `dynashape fix` of it, against PyTorch eager.

Two halves, because the GPU machine's TensorRT Python has no PyTorch and this machine has no GPU:

    python benchmarks/trt_cases.py save DIR --models yolov8n,smp_unet_resnet18 [--s0 1x3x256x256]
        (here, with torch) for each model: DIR/NAME/naive.onnx and one DIR/NAME/io_K.npz per shape
        with the eager outputs (``out.NAME``) and the input's shape and seed (it is made again there);
        models come from benchmarks/zoo_thirdparty_models.py (``all_builders``); the export shape
        must be the one the builder warms up at (256x256)
    python benchmarks/trt_cases.py run DIR [--json PATH]
        (on the GPU machine, TensorRT) `dynashape fix` of each naive export (made there: the files
        that travel stay half as large), then for the naive and the fixed model one engine whose
        single profile spans every saved shape (opt = the export shape), run at each shape and
        compared with eager

A pair is ok when TensorRT is within 1e-3 of the output's scale (TF32 convolutions and matmuls,
TensorRT's fp32 default on Ampere and later, differ from eager by about 1e-4 of it; a wrong
rewrite is off by the output's size), wrong past that, error when the engine does not build or
does not run there. Numbers are from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RTOL = 1e-3


def _input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split("x"))


# ------------------------------------------------------------------------------ save (torch, CPU)


def save(out: Path, names: list[str], s0: tuple[int, ...], others: list[tuple[int, ...]]) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    import zoo_thirdparty_models as Z

    from dynashape.export import export_module
    from dynashape.model import save_model

    table = Z.all_builders()
    for name in names:
        if name not in table:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(sorted(table))}")
        module = table[name][1]()
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        proto = export_module(module, {"input": s0}, dynamic={"input": [0, 2, 3]}).model
        save_model(proto, target / "naive.onnx")
        outputs = [o.name for o in proto.graph.output]
        for k, shape in enumerate([s0, *others]):
            x = _input(shape, k)
            with torch.no_grad():
                got = module(torch.from_numpy(x))
            tensors = list(got) if isinstance(got, (list, tuple)) else [got]
            if len(tensors) != len(outputs):
                raise SystemExit(f"{name}: eager gave {len(tensors)} outputs, the export {len(outputs)}")
            # the input is made again from its seed where it is used: random floats do not compress
            arrays = {"shape.input": np.array(shape), "seed.input": np.array(k)}
            arrays.update({f"out.{o}": t.detach().numpy() for o, t in zip(outputs, tensors)})
            np.savez_compressed(target / f"io_{k}.npz", **arrays)  # type: ignore[arg-type]
        print(f"{name}: saved {len(others) + 1} shapes under {target}", flush=True)


# ------------------------------------------------------------------------------ run (TensorRT, GPU)


def _load_cases(model_dir: Path) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    cases = []
    for path in sorted(model_dir.glob("io_*.npz"), key=lambda p: int(p.stem.split("_")[1])):
        data = np.load(path)
        feeds = {k[6:]: _input(tuple(int(d) for d in data[k]), int(data[f"seed.{k[6:]}"]))
                 for k in data.files if k.startswith("shape.")}
        want = {k[4:]: data[k] for k in data.files if k.startswith("out.")}
        cases.append((feeds, want))
    return cases


def _compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[str, float]:
    worst = 0.0
    for name, ref in want.items():
        out = got.get(name)
        if out is None or out.shape != ref.shape:
            return "wrong", float("inf")
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        if ref.size:
            worst = max(worst, float(np.abs(out.astype(np.float64) - ref).max()) / scale)
    return ("ok" if worst <= RTOL else "wrong"), worst


def run_model_dir(model_dir: Path, cache: Path) -> dict[str, Any]:
    from dynashape.model import load_model
    from dynashape.pipeline.fix import fix_model, write_fixed
    from dynashape.shapes import Profile
    from dynashape.trt.engine import build_engine

    cases = _load_cases(model_dir)
    result: dict[str, Any] = {"model": model_dir.name, "shapes": [], "variants": {}}
    if not cases:
        return result
    if not (model_dir / "fixed.onnx").exists():
        t0 = time.perf_counter()
        fixed = fix_model(load_model(model_dir / "naive.onnx"))
        write_fixed(fixed, model_dir / "fixed.onnx")
        result["fix"] = {"seconds": round(time.perf_counter() - t0, 1), "applied": len(fixed.applied),
                         "rolled_back": len(fixed.rolled_back),
                         "errors_left": sorted({f.rule for f in fixed.errors_left})}
    shapes = [{k: tuple(v.shape) for k, v in feeds.items()} for feeds, _ in cases]
    result["shapes"] = ["x".join(map(str, next(iter(s.values())))) for s in shapes]
    profile = Profile()
    for name in shapes[0]:
        dims = np.array([s[name] for s in shapes])
        profile.add(name, tuple(dims.min(0).tolist()), shapes[0][name], tuple(dims.max(0).tolist()))
    for variant in ("naive", "fixed"):
        cells: list[dict[str, Any]] = []
        entry: dict[str, Any] = {"cells": cells}
        result["variants"][variant] = entry
        t0 = time.perf_counter()
        try:
            built = build_engine(model_dir / f"{variant}.onnx", [profile], timing_cache=cache)
        except Exception as exc:  # a build failure is a result here
            entry["build"] = f"error: {str(exc).splitlines()[0][:200]}"
            cells.extend({"status": "error", "message": "no engine"} for _ in cases)
            continue
        entry["build"] = f"{time.perf_counter() - t0:.1f} s"
        with built.load() as engine:
            for feeds, want in cases:
                try:
                    got = engine.infer(feeds)
                except Exception as exc:
                    cells.append({"status": "error", "message": str(exc).splitlines()[0][:200]})
                    continue
                status, err = _compare(got, want)
                cells.append({"status": status, "max_rel_error": err})
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"\n{'model':<28} {'variant':<6} {'build':>9}  per shape (ok / wrong / error)")
    totals = {"naive": [0, 0], "fixed": [0, 0]}
    for r in results:
        for variant, entry in r["variants"].items():
            marks = " ".join({"ok": "ok", "wrong": "WR", "error": "ER"}[c["status"]] for c in entry["cells"])
            build = entry.get("build", "")
            print(f"{r['model'][:28]:<28} {variant:<6} {build[:9]:>9}  {marks}")
            totals[variant][0] += sum(c["status"] == "ok" for c in entry["cells"])
            totals[variant][1] += len(entry["cells"])
        print(f"{'':<28} shapes: {', '.join(r['shapes'])}; fix: {r.get('fix', 'given')}")
    for variant, (ok, n) in totals.items():
        print(f"{variant}: {ok}/{n} (model, shape) pairs match PyTorch eager on TensorRT")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("save")
    p.add_argument("dir")
    p.add_argument("--models", required=True)
    p.add_argument("--s0", default="1x3x256x256")
    p.add_argument("--others", default="1x3x320x320,1x3x224x352,1x3x384x256,2x3x256x256")
    p = sub.add_parser("run")
    p.add_argument("dir")
    p.add_argument("--models", help="comma-separated subset of DIR's models (default: all)")
    p.add_argument("--json")
    args = ap.parse_args(argv)
    if args.cmd == "save":
        save(Path(args.dir), args.models.split(","), _parse_shape(args.s0),
             [_parse_shape(s) for s in args.others.split(",")])
        return 0
    results = []
    cache = Path(args.dir) / "timing.cache"
    wanted = set(args.models.split(",")) if args.models else None
    for model_dir in sorted(p for p in Path(args.dir).iterdir() if p.is_dir()):
        if wanted is not None and model_dir.name not in wanted:
            continue
        print(f"{model_dir.name} ...", flush=True)
        try:
            results.append(run_model_dir(model_dir, cache))
        except Exception:
            traceback.print_exc()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
