"""Export both model zoos once, to a folder of ONNX files that ``check_zoo.py`` checks and fixes.

    python benchmarks/zoo_corpus.py DIR [--exporters legacy[,dynamo]] [--models a,b] [--timeout S]
                                        [--threads N] [--retry-failed] [--list]

Writes ``DIR/<family>/<model>.onnx`` (``<model>__dynamo.onnx`` for the dynamo exporter) and beside it
``<model>.json``: the zoo, the exporter, the export shape S0 and how the zoo passes it to ``check``
(``given``: ``zoo.py`` always passes S0; ``if_asked``: ``zoo_thirdparty.py`` runs ``check`` as
``dynashape check model.onnx`` does and gives S0 only where check asks for it).

- ``benchmarks/zoo_models.py`` and torchvision (the models of ``zoo.py``): ``zoo.py``'s builders,
  exported by ``dynashape.export.export_module`` at S0 with dynamic batch, height and width, as
  ``zoo.py`` exports them;
- ``benchmarks/zoo_thirdparty_models.py`` (transformers, ultralytics, smp): the builders of
  ``zoo_thirdparty.py``, exported by its ``export_naive`` (``torch.onnx.export(dynamo=False,
  opset_version=17)`` with dynamic N, H, W).

Each export runs in its own subprocess with a timeout; a model whose ``.onnx`` (or a recorded
failure, unless ``--retry-failed``) exists is skipped, so an interrupted run resumes. Files are
written atomically. The exports are deterministic (seeded random weights): the corpus does not depend
on the dynashape tree it was made with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

DEFAULT_TIMEOUT = 900


@dataclass(frozen=True)
class Entry:
    """One model of one zoo and how it is exported."""

    zoo: str  # "zoo" | "thirdparty"
    name: str
    family: str
    exporter: str  # "legacy" | "dynamo"
    s0: tuple[int, ...]
    export_shape: str  # "given" | "if_asked": how the zoo passes S0 to check

    @property
    def stem(self) -> str:
        return self.name if self.exporter == "legacy" else f"{self.name}__{self.exporter}"

    def onnx_path(self, root: Path) -> Path:
        return root / self.family / f"{self.stem}.onnx"

    def meta_path(self, root: Path) -> Path:
        return root / self.family / f"{self.stem}.json"


def entries(exporters: list[str]) -> list[Entry]:
    """Every model of both zoos, in the zoos' own order (cheap catalogues: nothing is built)."""
    import zoo
    import zoo_thirdparty

    out = [Entry("zoo", m.name, m.family, exporter, tuple(m.s0), "given")
           for exporter in exporters for m in zoo.MODELS]
    out += [Entry("thirdparty", m.name, m.family, "legacy", tuple(zoo_thirdparty.S0), "if_asked")
            for m in zoo_thirdparty.MODELS.values()]
    return out


def _atomic_save(model: Any, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_meta(entry: Entry, root: Path, **extra: Any) -> None:
    path = entry.meta_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"zoo": entry.zoo, "model": entry.name, "family": entry.family, "exporter": entry.exporter,
            "s0": {"input": list(entry.s0)}, "export_shape": entry.export_shape, **extra}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def export_one(entry: Entry, root: Path) -> dict[str, Any]:
    """Build and export one model as its zoo does; write the ONNX file and its metadata."""
    import torch
    import zoo
    import zoo_thirdparty

    torch.set_num_threads(int(os.environ.get("ZOO_THREADS", "1")))
    start = time.perf_counter()
    if entry.zoo == "zoo":
        from dynashape.export import export_module

        module = zoo.BY_NAME[entry.name].build()
        proto = export_module(module, {"input": entry.s0}, dynamic={"input": [0, 2, 3]},
                              exporter=entry.exporter).model
    else:
        _family, build, _note = zoo_thirdparty.zoo_thirdparty_models.all_builders()[entry.name]
        proto = zoo_thirdparty.export_naive(build(), zoo_thirdparty.S0)  # the S0 of every model there
    _atomic_save(proto, entry.onnx_path(root))
    seconds = time.perf_counter() - start
    _write_meta(entry, root, status="ok", nodes=len(proto.graph.node), export_seconds=round(seconds, 2))
    return {"status": "ok", "nodes": len(proto.graph.node), "seconds": seconds}


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def run_export(entry: Entry, root: Path, timeout: float, threads: int) -> dict[str, Any]:
    """``export_one`` in a subprocess; a timeout or a crash is recorded in the metadata file."""
    cmd = [sys.executable, str(Path(__file__).resolve()), str(root), "--one", entry.zoo, entry.name, entry.exporter]
    env = dict(os.environ, ZOO_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               PYTHONWARNINGS="ignore", TORCH_CPP_LOG_LEVEL="ERROR")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        _write_meta(entry, root, status="timeout", message=f"export took more than {timeout:.0f} s")
        return {"status": "timeout", "seconds": time.perf_counter() - start}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        message = _first_line(proc.stderr) or f"exit code {proc.returncode}"
        _write_meta(entry, root, status="failed", message=message)
        return {"status": "failed", "seconds": wall, "message": message}
    return {**json.loads(lines[-1]), "seconds": wall}


def _done(entry: Entry, root: Path, retry_failed: bool) -> str | None:
    """Why ``entry`` needs no export now (None: it does)."""
    if entry.onnx_path(root).exists():
        return "exists"
    meta = entry.meta_path(root)
    if not retry_failed and meta.exists():
        status = json.loads(meta.read_text()).get("status", "")
        if status in ("failed", "timeout"):
            return f"{status} before (--retry-failed to try again)"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="the corpus folder (created)")
    ap.add_argument("--one", nargs=3, metavar=("ZOO", "MODEL", "EXPORTER"), help=argparse.SUPPRESS)
    ap.add_argument("--exporters", default="legacy", help="for zoo.py's models: legacy, dynamo or both")
    ap.add_argument("--models", help="comma-separated model names (default: all of both zoos)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per export")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per export")
    ap.add_argument("--retry-failed", action="store_true", help="export again what failed or timed out before")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    if bad := [e for e in exporters if e not in ("legacy", "dynamo")]:
        ap.error(f"unknown exporter {', '.join(bad)}: choose legacy, dynamo")

    if args.one:
        import logging

        logging.disable(logging.WARNING)
        zoo_name, name, exporter = args.one
        entry = next(e for e in entries([exporter]) if e.zoo == zoo_name and e.name == name)
        sys.stdout.write("\n" + json.dumps(export_one(entry, root)) + "\n")
        return 0

    todo = entries(exporters)
    if args.models:
        wanted = {n.strip() for n in args.models.split(",") if n.strip()}
        if unknown := wanted - {e.name for e in todo}:
            ap.error(f"unknown model(s): {', '.join(sorted(unknown))} (see --list)")
        todo = [e for e in todo if e.name in wanted]
    if args.list:
        for e in todo:
            print(f"{e.zoo:10s} {e.family:20s} {e.stem:36s} S0 {'x'.join(map(str, e.s0))} ({e.export_shape})")
        return 0

    start = time.perf_counter()
    counts: dict[str, int] = {}
    for i, entry in enumerate(todo, 1):
        head = f"[{i:3d}/{len(todo)} {time.perf_counter() - start:6.0f}s] {entry.family}/{entry.stem}"
        skip = _done(entry, root, args.retry_failed)
        if skip:
            status = "skipped"
            print(f"{head}: skipped, {skip}", flush=True)
        else:
            r = run_export(entry, root, args.timeout, args.threads)
            status = r["status"]
            what = f"{r.get('nodes', '?')} nodes" if status == "ok" else r.get("message", "")
            print(f"{head}: {status} in {r['seconds']:.0f} s, {what}", flush=True)
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"{len(todo)} models in {time.perf_counter() - start:.0f} s: {summary}; corpus in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
