"""check and fix every model of an exported zoo corpus: time, peak memory and the JSON of the results.

    python benchmarks/check_zoo.py DIR --json OUT.json [--models a,b] [--timeout S] [--resume]
    python benchmarks/check_zoo.py --compare BEFORE.json AFTER.json [--ignore KEY ...]

``DIR`` is a corpus written by ``benchmarks/zoo_corpus.py`` (``<family>/<model>.onnx`` with a
``<model>.json`` beside it; any folder of ONNX files works, each then checked as
``dynashape check model.onnx`` checks it). For each ONNX file, in its own subprocess:

1. load it as the CLI does (``dynashape.model.load_model``);
2. ``check_model`` with the export shape the zoo used: ``zoo.py``'s models always get S0;
   ``zoo_thirdparty.py``'s run without one, and get S0 only where check asks for it (refuses, or
   reports the export shape unknown: ``zoo_thirdparty.ASKED_SOURCES``), then check runs again with it;
3. ``fix_model`` on that report (its rewrites and its proofs in ONNX Runtime).

Recorded per model: the check JSON (``CheckReport.to_json``), the fix JSON (``FixResult.to_json``:
applied rewrites, what was not fixed, rolled back, the proofs), both without timing fields; check and
fix wall seconds; and the peak resident memory (``ru_maxrss``) of the subprocess after check and after
fix (its own, or its children's where larger). The table (80 columns) ends with the issue's targets:
check under 5 s and under 2 GB per model. The machine's load average is recorded with each model:
timings on a shared machine are only comparable at a similar load.

``--compare BEFORE AFTER`` prints, per model, what differs between two runs' results, timings and
memory left out (``--ignore KEY`` leaves out more keys, wherever they occur).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

CHECK_SECONDS = 5.0  # the targets, per model
PEAK_MIB = 2048.0
DEFAULT_TIMEOUT = 1200
# measurements, not results: never compared
TIMING_KEYS = {"seconds", "check_s", "check_asked_s", "fix_s", "check_peak_mib", "peak_mib", "load", "wall", "time",
               "elapsed", "timings", "duration"}
WIDTH = 80


# --------------------------------------------------------------------------- one model (in a subprocess)


def _peak_mib() -> float:
    """The peak resident memory of this process (or of its waited-for children, where larger), MiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0  # Linux: KiB


def strip_timings(data: Any, ignore: set[str] = TIMING_KEYS) -> Any:
    """``data`` without the keys in ``ignore`` (and ``*_seconds``), wherever they occur."""
    if isinstance(data, dict):
        return {k: strip_timings(v, ignore) for k, v in data.items()
                if k not in ignore and not str(k).endswith("_seconds")}
    if isinstance(data, list | tuple):
        return [strip_timings(v, ignore) for v in data]
    return data


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def _meta(path: Path) -> dict[str, Any]:
    meta_path = path.with_suffix(".json")
    if meta_path.exists():
        return dict(json.loads(meta_path.read_text()))
    return {"export_shape": "if_asked", "s0": None}


def check_one(path: Path, label: str) -> dict[str, Any]:
    """Load, check and fix one model as the zoo does; the result record (JSON-able)."""
    import zoo_thirdparty  # how that zoo tells that check asks for the export shape

    from dynashape.errors import DynashapeError
    from dynashape.model import load_model
    from dynashape.pipeline.check import check_model
    from dynashape.pipeline.fix import fix_model

    meta = _meta(path)
    s0 = {k: tuple(v) for k, v in meta["s0"].items()} if meta.get("s0") else None
    export_shape = s0 if meta.get("export_shape") == "given" else None
    out: dict[str, Any] = {"model": label, "zoo": meta.get("zoo", ""), "family": meta.get("family", ""),
                           "load": os.getloadavg()[0]}
    model = load_model(path)
    out["nodes"] = len(model.graph.node)

    start = time.perf_counter()
    report = None
    try:
        report = check_model(model, export_shape=export_shape, path=label)
        asked = export_shape is None and str(report.export_shape_source) in zoo_thirdparty.ASKED_SOURCES
    except DynashapeError as exc:
        out["check"] = {"status": "refused", "message": str(exc).splitlines()[0][:300]}
        asked = export_shape is None and zoo_thirdparty._asks_for_export_shape(exc)
    if asked and s0 is not None:
        # check cannot tell the export shape and says so: the user gives it, as zoo_thirdparty.py does
        # (check_s: the check with it, whose results are recorded; check_asked_s: the one that asked)
        out["export_shape_asked"] = report.export_shape_source if report is not None else "refused"
        out["check_asked_s"] = time.perf_counter() - start
        export_shape, report = s0, None
        start = time.perf_counter()
        try:
            report = check_model(model, export_shape=export_shape, path=label)
        except DynashapeError as exc:
            out["check"] = {"status": "refused", "message": str(exc).splitlines()[0][:300]}
    out["check_s"] = time.perf_counter() - start
    out["check_peak_mib"] = _peak_mib()
    if report is None:
        out["fix"] = {"status": "skipped"}
        out["fix_s"], out["peak_mib"] = 0.0, out["check_peak_mib"]
        return out
    out["check"] = {"status": "ok", **strip_timings(_jsonable(report.to_json()))}

    start = time.perf_counter()
    try:
        fixed = fix_model(model, export_shape=export_shape, report=report)
    except DynashapeError as exc:
        out["fix"] = {"status": "refused", "message": str(exc).splitlines()[0][:300]}
    else:
        fix_json = strip_timings(_jsonable(fixed.to_json()))
        fix_json.pop("path", None)
        out["fix"] = {"status": "ok", **fix_json, "fixed_nodes": len(fixed.fixed.graph.node)}
    out["fix_s"] = time.perf_counter() - start
    out["peak_mib"] = _peak_mib()
    return out


# --------------------------------------------------------------------------- the driver


def models_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.onnx") if not p.name.startswith("."))


def run_child(path: Path, label: str, timeout: float) -> dict[str, Any]:
    """``check_one`` in a subprocess: a crash or a timeout becomes the record's status."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(path), label]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": label, "status": "timeout", "wall": time.perf_counter() - start,
                "message": f"more than {timeout:.0f} s"}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"model": label, "status": "crash", "wall": wall, "returncode": proc.returncode,
                "message": tail[-1][:300] if tail else ""}
    return {**json.loads(lines[-1]), "status": "done", "wall": wall}


def _fmt_s(value: Any) -> str:
    return f"{value:7.1f}" if isinstance(value, int | float) else f"{'-':>7s}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _row(r: dict[str, Any]) -> str:
    check = r.get("check", {})
    if r.get("status") != "done":
        verdict = r.get("status", "?")
    elif check.get("status") != "ok":
        verdict = f"check {check.get('status')}"
    else:
        rules = sorted({f.get("rule", "?") for f in check.get("findings", [])})
        fix = r.get("fix", {})
        fixed = len(fix.get("applied", [])) if fix.get("status") == "ok" else fix.get("status", "-")
        verdict = f"{len(check.get('findings', []))}/{fixed} {','.join(r.removeprefix('DS') for r in rules)}"
    over = r.get("check_s", 0) >= CHECK_SECONDS or r.get("check_peak_mib", 0) >= PEAK_MIB
    flag = "!" if over else " "
    peak = r.get("peak_mib")
    peak_text = f"{peak:6.0f}" if isinstance(peak, int | float) else f"{'-':>6s}"
    line = (f"{flag}{_cut(r['model'], 30):30s} {r.get('nodes', 0):5d} {_fmt_s(r.get('check_s'))} "
            f"{_fmt_s(r.get('fix_s'))} {peak_text} ")
    room = WIDTH - len(line)
    return line + (verdict if len(verdict) <= room else verdict[:room - 1] + "…")


def header() -> str:
    return f" {'model':30s} {'nodes':>5s} {'check s':>7s} {'fix s':>7s} {'MiB':>6s} findings/applied DS..."


def summary(results: list[dict[str, Any]]) -> list[str]:
    done = [r for r in results if r.get("status") == "done"]
    slow = [r["model"] for r in done if r.get("check_s", 0) >= CHECK_SECONDS]
    big = [r["model"] for r in done if r.get("check_peak_mib", 0) >= PEAK_MIB]
    big_fix = [r["model"] for r in done if r.get("peak_mib", 0) >= PEAK_MIB]
    failed = [f"{r['model']} ({r.get('status')})" for r in results if r.get("status") != "done"]
    check_total = sum(r.get("check_s", 0) for r in done)
    fix_total = sum(r.get("fix_s", 0) for r in done)
    lines = [
        f"{len(results)} models, {len(done)} done: check {check_total:.0f} s, fix {fix_total:.0f} s in all; "
        f"slowest check {max((r.get('check_s', 0) for r in done), default=0):.1f} s, "
        f"largest peak {max((r.get('peak_mib', 0) for r in done), default=0):.0f} MiB",
        f"targets: check < {CHECK_SECONDS:.0f} s: {len(done) - len(slow)}/{len(done)}; "
        f"check peak < {PEAK_MIB / 1024:.0f} GB: {len(done) - len(big)}/{len(done)}; "
        f"check+fix peak < {PEAK_MIB / 1024:.0f} GB: {len(done) - len(big_fix)}/{len(done)}",
    ]
    for label, names in (("check >= 5 s", slow), ("check peak >= 2 GB", big), ("check+fix peak >= 2 GB", big_fix),
                         ("not done", failed)):
        if names:
            lines.append(f"{label}: {', '.join(names)}")
    return lines


def _write(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def run_all(root: Path, out: Path | None, names: set[str] | None, timeout: float, resume: bool) -> int:
    import dynashape

    paths = models_in(root)
    if names:
        paths = [p for p in paths if p.stem in names]
    if not paths:
        print(f"no ONNX files in {root}", file=sys.stderr)
        return 2
    previous: dict[str, Any] = {}
    if resume and out is not None and out.exists():
        previous = {r["model"]: r for r in json.loads(out.read_text()).get("results", [])
                    if r.get("status") == "done"}
    payload: dict[str, Any] = {"corpus": str(root), "dynashape": str(Path(dynashape.__file__).parent),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "cpus": os.cpu_count(), "results": []}
    print(f"{len(paths)} models from {root}, dynashape from {payload['dynashape']}", flush=True)
    print(header(), flush=True)
    start = time.perf_counter()
    for path in paths:
        label = str(path.relative_to(root).with_suffix(""))
        r = previous.get(label) or run_child(path, label, timeout)
        payload["results"].append(r)
        print(_row(r), flush=True)
        if out is not None:
            _write(out, payload)
    payload["wall_seconds"] = time.perf_counter() - start
    for line in summary(payload["results"]):
        print(line)
    if out is not None:
        _write(out, payload)
    return 0


# --------------------------------------------------------------------------- compare


def diff(before: Any, after: Any, where: str = "", float_tol: float = 1e-5) -> Iterator[str]:
    """The differences between two JSON values, one line each (``where``: the path to them)."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            here = f"{where}.{key}" if where else str(key)
            if key not in after:
                yield f"{here}: removed (was {_short(before[key])})"
            elif key not in before:
                yield f"{here}: added {_short(after[key])}"
            else:
                yield from diff(before[key], after[key], here, float_tol)
    elif isinstance(before, list) and isinstance(after, list):
        for i, (a, b) in enumerate(zip(before, after)):
            yield from diff(a, b, f"{where}[{i}]", float_tol)
        for i in range(len(after), len(before)):
            yield f"{where}[{i}]: removed (was {_short(before[i])})"
        for i in range(len(before), len(after)):
            yield f"{where}[{i}]: added {_short(after[i])}"
    elif isinstance(before, float) and isinstance(after, float) and not isinstance(before, bool):
        if not math.isclose(before, after, rel_tol=float_tol, abs_tol=float_tol):
            yield f"{where}: {before!r} -> {after!r}"
    elif before != after:
        yield f"{where}: {_short(before)} -> {_short(after)}"


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def compare(before_path: Path, after_path: Path, ignore: set[str], float_tol: float) -> int:
    def results(path: Path) -> dict[str, Any]:
        return {r["model"]: r for r in json.loads(path.read_text()).get("results", [])}

    before, after = results(before_path), results(after_path)
    ignored = TIMING_KEYS | ignore
    changed = 0
    for name in sorted(set(before) | set(after)):
        if name not in after:
            print(f"{name}: only in {before_path.name}")
            changed += 1
            continue
        if name not in before:
            print(f"{name}: only in {after_path.name}")
            changed += 1
            continue
        lines = list(diff(strip_timings(before[name], ignored), strip_timings(after[name], ignored),
                          float_tol=float_tol))
        if lines:
            changed += 1
            print(f"{name}: {len(lines)} difference(s)")
            for line in lines:
                print(f"  {line}")
    common = [n for n in before if n in after]
    slow = [n for n in common if max(before[n].get("check_s") or 0, after[n].get("check_s") or 0) >= 1.0]
    if slow:
        print("check >= 1 s before or after (check s, fix s, peak MiB: before -> after):")
        for n in sorted(slow, key=lambda n: -(before[n].get("check_s") or 0)):
            b, a = before[n], after[n]
            print(f"  {_cut(n, 34):34s} {b.get('check_s') or 0:5.1f} -> {a.get('check_s') or 0:5.1f}  "
                  f"{b.get('fix_s') or 0:4.1f} -> {a.get('fix_s') or 0:4.1f}  "
                  f"{b.get('peak_mib') or 0:5.0f} -> {a.get('peak_mib') or 0:5.0f}")
    for label, key in (("check s", "check_s"), ("fix s", "fix_s"), ("peak MiB", "peak_mib")):
        b = sum(before[n].get(key, 0) or 0 for n in common)
        a = sum(after[n].get(key, 0) or 0 for n in common)
        if key == "peak_mib":
            b = max((before[n].get(key, 0) or 0 for n in common), default=0)
            a = max((after[n].get(key, 0) or 0 for n in common), default=0)
            print(f"{label} (largest over {len(common)} models): {b:.0f} -> {a:.0f}")
        else:
            ratio = f" (before/after {b / a:.2f}x)" if a > 0 and b > 0 else ""
            print(f"{label} (sum over {len(common)} models): {b:.1f} -> {a:.1f}{ratio}")
    print(f"{changed} of {len(set(before) | set(after))} models differ (timings and memory not compared"
          + (f"; also ignored: {', '.join(sorted(ignore))}" if ignore else "") + ")")
    return 1 if changed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", help="corpus folder (benchmarks/zoo_corpus.py)")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "LABEL"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the results here (after every model: an interrupted run keeps them)")
    ap.add_argument("--models", help="comma-separated model names (file stems)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per model, check and fix")
    ap.add_argument("--resume", action="store_true", help="keep the models --json already holds")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="diff two --json results")
    ap.add_argument("--ignore", action="append", default=[], help="with --compare: a key not to compare")
    ap.add_argument("--float-tol", type=float, default=1e-5, help="with --compare: tolerance on floats")
    args = ap.parse_args(argv)

    if args.one:
        import logging

        logging.disable(logging.WARNING)
        result = check_one(Path(args.one[0]), args.one[1])
        sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
        return 0
    if args.compare:
        return compare(Path(args.compare[0]), Path(args.compare[1]), set(args.ignore), args.float_tol)
    if not args.dir:
        ap.error("give a corpus folder (or --compare BEFORE AFTER)")
    names = {n.strip() for n in args.models.split(",") if n.strip()} if args.models else None
    return run_all(Path(args.dir), Path(args.json) if args.json else None, names, args.timeout, args.resume)


if __name__ == "__main__":
    sys.exit(main())
