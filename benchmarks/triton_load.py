"""Bounded load test of a Triton model repository written by `dynashape triton`.

    python benchmarks/triton_load.py REPO [--model NAME] [--clients K] [--requests N]
        [--protocol http|grpc] [--shapes SPEC ...] [--url HOST:PORT] [--runtime auto|tensorrt|onnxruntime]
        [--bench-engine MODEL.engine] [--json]

Starts ``tritonserver`` (the binary of the nvidia-pytriton wheel, see dynashape.serving.server)
on REPO, unless --url names a running one. K client threads (one client each) send N requests in
all, spread over a few shapes: --shapes, or taken from the config's ``dynashape.profiles``
(each profile's min, opt, max and the points between them, snapped onto ``dynashape.analysis.lattice``)
or ``dynashape.export_shape``. Each shape is sent once per client first (warm-up, not counted).

Every answer is checked: against ONNX Runtime on CPU running REPO/NAME/1/model.onnx when the
repository has it (the relative error max|a-b|/max|b| must stay within --tol), else against the
first answer for the same shape. Reported: throughput (answered requests per second of wall
time), p50/p99 latency overall and per shape (a request's time through the client library,
queueing included), errors, wrong answers. --bench-engine also runs `dynashape bench` on the
engine at the same shapes (one request at a time, no server) and prints it beside the Triton
numbers. Imports: numpy, tritonclient and the standard library (onnxruntime only with a
model.onnx to check against; dynashape only to start the server and for --bench-engine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

Shape = tuple[int, ...]
Shapes = dict[str, Shape]

TRITON_TO_NUMPY = {
    "TYPE_BOOL": "bool", "TYPE_UINT8": "uint8", "TYPE_INT8": "int8", "TYPE_INT16": "int16", "TYPE_INT32": "int32",
    "TYPE_INT64": "int64", "TYPE_FP16": "float16", "TYPE_FP32": "float32", "TYPE_FP64": "float64",
}
MAX_SHAPES = 10


@dataclass
class ShapeStats:
    shapes: Shapes
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    wrong: int = 0
    max_rel_error: float = 0.0


@dataclass
class LoadResult:
    model: str
    protocol: str
    clients: int
    requests: int
    wall_s: float
    checked_against: str
    per_shape: list[ShapeStats]
    error_messages: list[str]

    @property
    def latencies(self) -> list[float]:
        return [v for s in self.per_shape for v in s.latencies_ms]

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.per_shape)

    @property
    def wrong(self) -> int:
        return sum(s.wrong for s in self.per_shape)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (as `dynashape bench` reports p99)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def format_shapes(shapes: Shapes) -> str:
    return ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in shapes.items())


def parse_shapes(text: str) -> Shapes:
    out: Shapes = {}
    for item in text.split(","):
        name, _, dims = item.rpartition(":")
        if not name or not dims:
            raise SystemExit(f"triton_load: error: shape {item!r}: write NAME:1x3x256x256")
        out[name] = tuple(int(d) for d in dims.split("x"))
    return out


# --------------------------------------------------------------------------- shapes from the config


def _snap(size: int, lo: int, hi: int, lattice: dict[str, Any] | None) -> int:
    """``size`` moved down onto the lattice (``min + k * multiple``), kept inside [lo, hi]."""
    if lattice:
        base, step = int(lattice["min"]), int(lattice["multiple"])
        if size >= base:
            size = base + (size - base) // step * step
        while size < lo:
            size += step
        if size > hi:
            size -= step
    return max(lo, min(hi, size))


def shapes_from_config(config: dict[str, Any]) -> list[Shapes]:
    params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    lattice = json.loads(params.get("dynashape.lattice") or "{}")
    profiles = json.loads(params.get("dynashape.profiles") or "[]")
    points: list[Shapes] = []
    max_batch = int(config.get("max_batch_size", 0))
    if profiles:
        for prof in profiles:
            names = list(prof)
            for t in (0.0, 0.25, 0.5, 0.75, 1.0):  # min .. opt .. max, geometric in between
                shapes: Shapes = {}
                for name in names:
                    lo, opt, hi = prof[name]["min"], prof[name]["opt"], prof[name]["max"]
                    dims = []
                    for axis, (a, o, b) in enumerate(zip(lo, opt, hi)):
                        start, end, frac = (a, o, t * 2) if t <= 0.5 else (o, b, t * 2 - 1)
                        size = round(start * (end / start) ** frac) if start > 0 else end
                        if axis == 0 and max_batch > 0:  # Triton refuses batches over max_batch_size
                            b = min(b, max_batch)
                        dims.append(_snap(size, a, b, lattice.get(name, {}).get(str(axis))))
                    shapes[name] = tuple(dims)
                points.append(shapes)
    elif params.get("dynashape.export_shape"):
        export = {n: tuple(s) for n, s in json.loads(params["dynashape.export_shape"]).items()}
        batch = 1 if max_batch > 0 else 0
        dynamic = {t["name"]: {i + batch for i, d in enumerate(t["dims"]) if int(d) == -1} for t in config["input"]}
        for scale in (0.5, 0.75, 1.0):
            shapes = {}
            for name, s0 in export.items():
                dims = [  # the batch stays at the export's; the other dynamic axes scale
                    _snap(max(1, round(d * scale)), 1, d, lattice.get(name, {}).get(str(axis)))
                    if axis in dynamic.get(name, ()) and axis >= batch else d
                    for axis, d in enumerate(s0)
                ]
                shapes[name] = tuple(dims)
            points.append(shapes)
    else:
        raise SystemExit("triton_load: error: the config has no dynashape.profiles or dynashape.export_shape; "
                         "give --shapes")
    unique = list({format_shapes(s): s for s in points}.values())
    return unique[:MAX_SHAPES]


# --------------------------------------------------------------------------- the load


def _client_module(protocol: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def make_inputs(config: dict[str, Any], shapes: list[Shapes], seed: int) -> list[dict[str, np.ndarray]]:
    dtypes = {t["name"]: np.dtype(TRITON_TO_NUMPY[t["data_type"]]) for t in config["input"]}
    rng = np.random.default_rng(seed)
    feeds = []
    for s in shapes:
        feed = {}
        for name, shape in s.items():
            dt = dtypes[name]
            if dt.kind == "f":
                feed[name] = rng.standard_normal(shape).astype(dt)
            elif dt.kind == "b":
                feed[name] = rng.integers(0, 2, shape).astype(dt)
            else:
                feed[name] = rng.integers(0, 100, shape).astype(dt)
        feeds.append(feed)
    return feeds


def references(
    repo: Path, model: str, feeds: list[dict[str, np.ndarray]]
) -> tuple[list[dict[str, np.ndarray]] | None, str]:
    onnx_file = repo / model / "1" / "model.onnx"
    if not onnx_file.is_file():
        return None, "the first answer for the same shape (no model.onnx in the repository)"
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, f))) for f in feeds], f"ONNX Runtime {ort.__version__} on CPU"


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        return float("inf")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def run_load(url: str, protocol: str, model: str, config: dict[str, Any], shapes: list[Shapes],
             feeds: list[dict[str, np.ndarray]], refs: list[dict[str, np.ndarray]] | None, checked_against: str,
             clients: int, requests: int, tol: float, seed: int) -> LoadResult:
    mod = _client_module(protocol)
    outputs = [t["name"] for t in config["output"]]
    dtypes = {t["name"]: t["data_type"].removeprefix("TYPE_") for t in config["input"]}  # TYPE_FP32 -> FP32
    order = random.Random(seed).choices(range(len(shapes)), k=requests)
    stats = [ShapeStats(s) for s in shapes]
    first_answer: list[dict[str, np.ndarray] | None] = [None] * len(shapes)
    messages: list[str] = []
    lock = threading.Lock()
    next_index = [0]
    started: list[float] = []
    warmed_up = threading.Barrier(clients, action=lambda: started.append(time.perf_counter()))

    def infer(client: Any, k: int) -> dict[str, np.ndarray]:
        inputs = []
        for name, arr in feeds[k].items():
            inp = mod.InferInput(name, list(arr.shape), dtypes[name])
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        result = client.infer(model, inputs, outputs=[mod.InferRequestedOutput(n) for n in outputs])
        return {n: result.as_numpy(n) for n in outputs}

    def check(k: int, answer: dict[str, np.ndarray]) -> float:
        want = refs[k] if refs is not None else first_answer[k]
        if want is None:
            return 0.0
        return max(rel_error(answer[n], want[n]) for n in outputs)

    def worker() -> None:
        client = mod.InferenceServerClient(url)
        for k in range(len(shapes)):  # warm-up: every shape once (contexts, allocations)
            try:
                answer = infer(client, k)
                with lock:
                    if first_answer[k] is None:
                        first_answer[k] = answer
            except Exception:  # counted in the timed loop
                pass
        warmed_up.wait()  # the clock starts when every client has warmed up
        while True:
            with lock:
                if next_index[0] >= requests:
                    break
                i = next_index[0]
                next_index[0] += 1
            k = order[i]
            start = time.perf_counter()
            try:
                answer = infer(client, k)
            except Exception as exc:
                with lock:
                    stats[k].errors += 1
                    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                    if text not in messages:
                        messages.append(text)
                continue
            ms = (time.perf_counter() - start) * 1e3
            err = check(k, answer)
            with lock:
                stats[k].latencies_ms.append(ms)
                stats[k].max_rel_error = max(stats[k].max_rel_error, err)
                if err > tol:
                    stats[k].wrong += 1
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started[0]
    return LoadResult(model, protocol, clients, requests, wall, checked_against, stats, messages)


# --------------------------------------------------------------------------- dynashape bench


def bench_engine(engine: str, shapes: list[Shapes], python: str) -> dict[str, dict[str, float]]:
    """`dynashape bench ENGINE --shapes ...`: shape spec -> median/p99 ms of the engine alone."""
    command = [python, "-m", "dynashape.cli", "bench", engine, "--json", "--shapes", *map(format_shapes, shapes)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"triton_load: dynashape bench failed ({done.returncode}): {done.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    rows = json.loads(done.stdout)["rows"]
    return {
        r["shapes"].replace(" ", ""): {"median_ms": r["dynamic"]["median_ms"], "p99_ms": r["dynamic"]["p99_ms"]}
        for r in rows if r.get("dynamic")
    }


# --------------------------------------------------------------------------- report


def to_json(result: LoadResult, bench: dict[str, dict[str, float]]) -> dict[str, Any]:
    lat = result.latencies
    return {
        "model": result.model, "protocol": result.protocol, "clients": result.clients, "requests": result.requests,
        "wall_s": round(result.wall_s, 3), "throughput_rps": round(result.throughput, 2),
        "p50_ms": round(percentile(lat, 50), 3), "p99_ms": round(percentile(lat, 99), 3),
        "errors": result.errors, "wrong": result.wrong, "checked_against": result.checked_against,
        "error_messages": result.error_messages,
        "shapes": [
            {
                "shapes": format_shapes(s.shapes), "answered": len(s.latencies_ms), "errors": s.errors,
                "wrong": s.wrong, "max_rel_error": s.max_rel_error,
                "p50_ms": round(percentile(s.latencies_ms, 50), 3), "p99_ms": round(percentile(s.latencies_ms, 99), 3),
                "bench": bench.get(format_shapes(s.shapes)),
            }
            for s in result.per_shape
        ],
    }


def print_table(data: dict[str, Any]) -> None:
    print(f"model {data['model']} over {data['protocol']}: {data['clients']} clients, {data['requests']} requests "
          f"in {data['wall_s']:.2f} s")
    print(f"throughput {data['throughput_rps']:.1f} req/s   p50 {data['p50_ms']:.2f} ms   "
          f"p99 {data['p99_ms']:.2f} ms   errors {data['errors']}   wrong {data['wrong']} "
          f"(checked against {data['checked_against']})")
    with_bench = any(row["bench"] for row in data["shapes"])
    head = f"{'shape':<36} {'n':>5} {'err':>4} {'wrong':>5} {'max rel err':>11} {'p50 ms':>9} {'p99 ms':>9}"
    if with_bench:
        head += f" {'bench med':>9} {'bench p99':>9}"
    print(head)
    for row in data["shapes"]:
        line = (f"{row['shapes']:<36} {row['answered']:>5} {row['errors']:>4} {row['wrong']:>5} "
                f"{row['max_rel_error']:>11.2e} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f}")
        if with_bench:
            b = row["bench"] or {}
            line += f" {b.get('median_ms', float('nan')):>9.3f} {b.get('p99_ms', float('nan')):>9.3f}"
        print(line)
    for message in data["error_messages"][:5]:
        print(f"error: {message}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("repo", help="the model repository (REPO, with REPO/NAME/config.pbtxt)")
    ap.add_argument("--model", help="the model's name (default: the only model in REPO)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    ap.add_argument("--requests", type=int, default=200, help="timed requests in all (default 200)")
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--shapes", nargs="+", default=[], metavar="SPEC", help="e.g. input:1x3x256x256 input:2x3x512x384")
    ap.add_argument("--url", help="a running server (HOST:PORT of --protocol); default: start one on REPO")
    ap.add_argument("--python", default=sys.executable, help="the Python whose packages the Python backend uses")
    ap.add_argument("--runtime", choices=("auto", "tensorrt", "onnxruntime"), default="auto",
                    help="the Python backend's runtime (DYNASHAPE_TRITON_RUNTIME)")
    ap.add_argument("--bench-engine", metavar="ENGINE", help="also run `dynashape bench` on this engine at the shapes")
    ap.add_argument("--tol", type=float, default=1e-2, help="largest relative error of a right answer (default 1e-2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--json", metavar="PATH", nargs="?", const="-", help="write JSON (to stdout with no PATH)")
    args = ap.parse_args(argv)

    repo = Path(args.repo)
    names = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()) if repo.is_dir() else []
    if not names:
        raise SystemExit(f"triton_load: error: {repo}: no model repository (no NAME/config.pbtxt in it)")
    model = args.model or names[0]
    if args.model is None and len(names) > 1:
        raise SystemExit(f"triton_load: error: {repo} holds {', '.join(names)}: choose one with --model")

    server = None
    url = args.url
    if url is None:
        from dynashape.serving.server import TritonServer

        # the Python backend imports dynashape (for an engine) from this checkout too
        src = str(HERE.parent / "src")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
        server = TritonServer(repo, python=args.python, ready_timeout=args.ready_timeout,
                              env={"DYNASHAPE_TRITON_RUNTIME": args.runtime})
        server.start()
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
    try:
        mod = _client_module(args.protocol)
        client = mod.InferenceServerClient(url)
        config = client.get_model_config(model)
        if args.protocol == "grpc":
            from google.protobuf import json_format

            config = json_format.MessageToDict(config.config, preserving_proto_field_name=True)
        client.close()
        shapes = [parse_shapes(s) for s in args.shapes] if args.shapes else shapes_from_config(config)
        feeds = make_inputs(config, shapes, args.seed)
        refs, against = references(repo, model, feeds)
        result = run_load(url, args.protocol, model, config, shapes, feeds, refs, against, args.clients,
                          args.requests, args.tol, args.seed)
    finally:
        if server is not None:
            log = server.log_text()
            server.stop()
            runtime_lines = [ln for ln in log.splitlines() if "dynashape:" in ln]
            for ln in runtime_lines[:4]:
                print(ln.split('] "', 1)[-1].rstrip('"'), file=sys.stderr)
    bench = bench_engine(args.bench_engine, shapes, args.python) if args.bench_engine else {}
    data = to_json(result, bench)
    if args.json == "-":
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0 if result.errors == 0 and result.wrong == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
