"""Third-party model zoo: transformers, ultralytics and smp models exported as their users export them.

    python benchmarks/zoo_thirdparty.py [--quick] [--models a,b] [--family F] [--json PATH] [--jobs N]
                                        [--save DIR] [--s0-given] [--list]

The models (``benchmarks/zoo_thirdparty_models.py``) are built offline from configs and yamls with
random weights. For each model, in its own subprocess with a timeout:

1. PyTorch eager at the export shape S0 = 1x3x256x256 and at six others (non-square, larger,
   smaller, two sizes that are not multiples of 32, batch 2), each on a fresh copy of the module
   (HF Swin changes its window size when a map is smaller than it); a (model, shape) pair counts
   only where eager works;
2. ``torch.onnx.export(dynamo=False, opset_version=17)`` at S0 with dynamic batch, height and width,
   as a user writes it: no dynashape metadata, so ``check`` must find S0 on its own;
3. the naive export in ONNX Runtime against eager at each shape: ok / wrong / error;
4. ``check_model`` without an export shape, as ``dynashape check model.onnx`` runs: S0 is
   *recovered* (the true S0, from the graph), *asked for* (check says it cannot tell and asks for
   --export-shape; the user then gives it), or *wrong* (another shape, or a fallback it does not
   call a guess);
5. ``fix_model`` on that report (the user's flow: check's S0, or the given one where check asked),
   and the fixed model in ONNX Runtime at each shape. Where S0 was not recovered, ``check`` and
   ``fix`` also run with S0 given (``fixed_given``: what the rules do once S0 is right);
6. the classification of ``zoo.py``: naive ok, fixed ok, explained by a finding, silently wrong
   after fix and unexplained (must be 0), and correct as exported but not after fix (must be 0).

``--save DIR`` writes, for each model run, ``naive.onnx``, ``fixed.onnx`` and per shape the input and
the eager outputs (``<shape>.npz``), so another machine (TensorRT on a GPU, no torch) can compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import zoo  # noqa: E402  (benchmarks/zoo.py: the comparison, ONNX Runtime runs and explanations)
import zoo_thirdparty_models  # noqa: E402

Shape = tuple[int, int, int, int]

S0: Shape = (1, 3, 256, 256)
# non-square, larger, smaller, not a multiple of 32 (240 = 16 * 15; 200 = 8 * 25), batch 2
OTHER_SHAPES: tuple[Shape, ...] = (
    (1, 3, 192, 320), (1, 3, 384, 384), (1, 3, 160, 160), (1, 3, 240, 240), (1, 3, 200, 200), (2, 3, 256, 256),
)
FAMILIES = ("transformers", "ultralytics", "smp")
DEFAULT_TIMEOUT = 600
QUICK = ["smp_unet_tu_mobilenetv3", "yolov8n", "hf_segformer"]
# small enough to carry to the GPU machine (--save): a few MB each
SAVE_DEFAULT = ["hf_segformer", "hf_convnext", "hf_depth_anything", "hf_mobilevit_seg", "yolov8n",
                "yolo11n_pose", "smp_unet_tu_mobilenetv3"]
# how check_model's report can say it asks for the export shape instead of guessing it
ASKED_SOURCES = {"unknown", "asked", "missing", "none", "needed"}


@dataclass(frozen=True)
class ThirdPartyModel:
    name: str
    family: str
    note: str

    @property
    def shapes(self) -> list[Shape]:
        return [S0, *OTHER_SHAPES]


def _catalog() -> dict[str, ThirdPartyModel]:
    return {name: ThirdPartyModel(name, family, note)
            for name, (family, _build, note) in zoo_thirdparty_models.all_builders().items()}


MODELS = _catalog()


# --------------------------------------------------------------------------- one model


def export_naive(module: Any, s0: Shape) -> Any:
    """``torch.onnx.export`` as a user writes it: legacy exporter, opset 17, dynamic N, H, W."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(module, (torch.zeros(s0),), path, dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}})
        return onnx.load(path)


def s0_status(report: Any, asked: bool, s0: Shape) -> dict[str, Any]:
    """recovered / asked / wrong, from a check run without an export shape."""
    if asked:
        return {"status": "asked", "source": "refused", "shape": None}
    source = str(report.export_shape_source)
    shape = report.export_shape.get("input")
    out = {"source": source, "shape": zoo.fmt_shape(shape) if shape else None,
           "note": str(getattr(report, "export_shape_note", ""))[:200]}
    if source in ASKED_SOURCES:
        return {"status": "asked", **out}
    if source != "default" and shape is not None and tuple(shape) == tuple(s0):
        return {"status": "recovered", **out}
    return {"status": "wrong", **out}  # another shape, or a fallback size not called a guess


def _asks_for_export_shape(exc: Exception) -> bool:
    text = str(exc).lower()
    return "export shape" in text or "export-shape" in text


def _check_and_fix(proto: Any, export_shape: dict[str, tuple[int, ...]] | None) -> tuple[Any, Any, dict[str, Any],
                                                                              dict[str, Any], list[str]]:
    """check then fix; returns (report, fixed proto or None, check json, fix json, bugs)."""
    from dynashape.errors import DynashapeError
    from dynashape.pipeline.check import check_model
    from dynashape.pipeline.fix import fix_model

    bugs: list[str] = []
    try:
        report = check_model(proto, export_shape=export_shape)
    except DynashapeError as exc:
        return None, None, {"status": "refused", "message": zoo._first_line(str(exc), 400)}, \
            {"status": "skipped"}, bugs
    except Exception as exc:
        bugs.append(traceback.format_exc()[-3000:])
        return None, None, {"status": "crash", "message": f"{type(exc).__name__}: {zoo._first_line(str(exc))}"}, \
            {"status": "skipped"}, bugs
    check_json = {
        "status": "ok", "seconds": report.seconds,
        "export_shape": {k: list(v) for k, v in report.export_shape.items()},
        "export_shape_source": report.export_shape_source,
        "findings": [zoo._finding_json(f) for f in report.findings],
        "lattice": {str(a): lat.to_json() for a, lat in report.lattice.get("input", {}).items()},
        "refusals": [{"rule": getattr(r, "rule", ""), "node": getattr(r, "node", ""),
                      "reason": zoo._first_line(str(getattr(r, "reason", r)), 200)} for r in report.refusals[:40]],
        "notes": [str(n)[:300] for n in report.notes],
    }
    fixed_proto = None
    try:
        fixed = fix_model(proto, export_shape=export_shape, report=report)
    except DynashapeError as exc:
        fix_json: dict[str, Any] = {"status": "refused", "message": zoo._first_line(str(exc), 400)}
        if "dynashape bug" in str(exc):
            bugs.append(str(exc)[:3000])
    except Exception as exc:
        fix_json = {"status": "crash", "message": f"{type(exc).__name__}: {zoo._first_line(str(exc))}"}
        bugs.append(traceback.format_exc()[-3000:])
    else:
        fix_json = {
            "status": "ok", "applied": [str(a)[:300] for a in fixed.applied],
            "unfixed": [f"{f.rule}:{f.node}" for f in fixed.unfixed],
            "proof": [p.status for p in fixed.other_proofs],
        }
        for extra in ("rolled_back", "rollbacks", "worse"):  # the monotone fix reports what it undid
            value = getattr(fixed, extra, None)
            if value:
                fix_json[extra] = [str(v)[:300] for v in value] if isinstance(value, list) else str(value)[:300]
        if fixed.applied:
            fixed_proto = fixed.fixed
    return report, fixed_proto, check_json, fix_json, bugs


def _explained(refs: dict[str, Any], fixed: dict[str, dict[str, Any]], report: Any,
               s0: tuple[int, ...]) -> dict[str, list[str]]:
    return {key: (zoo.explain(tuple(int(d) for d in key.split("x")), s0, report)  # type: ignore[arg-type]
                  if report is not None and fixed[key]["status"] != "ok" else [])
            for key in refs}


def run_one(name: str) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(zoo._threads())
    spec = MODELS[name]
    family, build, _note = zoo_thirdparty_models.all_builders()[name]
    keys = [zoo.fmt_shape(s) for s in spec.shapes]
    s0_key = zoo.fmt_shape(S0)
    result: dict[str, Any] = {"model": name, "family": family, "exporter": "legacy", "s0": s0_key,
                              "shapes": keys, "timings": {}, "bugs": []}
    timings = result["timings"]
    t_all = time.perf_counter()

    t = time.perf_counter()
    module = build()
    timings["build"] = time.perf_counter() - t
    result["parameters"] = int(sum(p.numel() for p in module.parameters()))

    rng = np.random.default_rng(0)
    inputs = {zoo.fmt_shape(s): rng.standard_normal(s).astype(np.float32) for s in spec.shapes}

    t = time.perf_counter()
    eager: dict[str, dict[str, Any]] = {}
    refs: dict[str, list[Any]] = {}
    for key in keys:  # a fresh copy per shape: some modules change state when they run
        try:
            refs[key] = zoo._eager(copy.deepcopy(module), inputs[key])
            eager[key] = {"status": "ok"}
        except Exception as exc:
            eager[key] = {"status": "error", "message": f"{type(exc).__name__}: {zoo._first_line(str(exc))}"}
    result["eager"] = eager
    timings["eager"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        proto = export_naive(module, S0)
    except Exception as exc:
        result["export"] = {"status": "error", "message": f"{type(exc).__name__}: {zoo._first_line(str(exc), 400)}"}
        failed = {k: {"status": "error", "message": "export failed"} for k in refs}
        result.update(naive=failed, fixed=failed, check={"status": "skipped"}, fix={"status": "skipped"},
                      s0_check={"status": "skipped"}, explained={k: [] for k in refs})
        timings["total"] = time.perf_counter() - t_all
        return result
    result["export"] = {"status": "ok", "opset": 17, "nodes": len(proto.graph.node)}
    timings["export"] = time.perf_counter() - t

    t = time.perf_counter()
    result["naive"] = zoo._run_ort(proto, inputs, refs)
    timings["naive"] = time.perf_counter() - t

    # check as the user runs it: no export shape
    t = time.perf_counter()
    given: dict[str, tuple[int, ...]] = {"input": S0}
    report, fixed_proto, check_json, fix_json, bugs = _check_and_fix(proto, None)
    asked = check_json["status"] == "refused" and _asks_for_export_shape(Exception(check_json.get("message", "")))
    result["s0_check"] = s0_status(report, asked, S0) if (report is not None or asked) else {
        "status": check_json["status"], "message": check_json.get("message", "")}
    if result["s0_check"]["status"] == "asked":  # the user answers the question
        report, fixed_proto, check_json, fix_json, more = _check_and_fix(proto, given)
        bugs += more
    result["check"], result["fix"] = check_json, fix_json
    result["bugs"] += [{"stage": "check/fix", "traceback": b} for b in bugs]
    timings["check_fix"] = time.perf_counter() - t

    t = time.perf_counter()
    result["fixed"] = (zoo._run_ort(fixed_proto, inputs, refs) if fixed_proto is not None
                       else copy.deepcopy(result["naive"]))
    timings["fixed"] = time.perf_counter() - t
    used_s0 = tuple(report.export_shape["input"]) if report is not None else S0
    result["explained"] = _explained(refs, result["fixed"], report, used_s0)

    # what the rules do once S0 is right, where check did not recover it
    fixed_given_proto = None
    if result["s0_check"]["status"] == "wrong" and os.environ.get("ZOO_S0_GIVEN", "1") != "0":
        t = time.perf_counter()
        report_g, fixed_given_proto, check_g, fix_g, bugs_g = _check_and_fix(proto, given)
        result["check_given"], result["fix_given"] = check_g, fix_g
        result["bugs"] += [{"stage": "check/fix (S0 given)", "traceback": b} for b in bugs_g]
        result["fixed_given"] = (zoo._run_ort(fixed_given_proto, inputs, refs) if fixed_given_proto is not None
                                 else copy.deepcopy(result["naive"]))
        result["explained_given"] = _explained(refs, result["fixed_given"], report_g, S0)
        timings["given"] = time.perf_counter() - t

    wanted = [k for k in refs if result["fixed"][k]["status"] == "wrong"
              or (result["fixed"][k]["status"] != "ok" and not result["explained"][k])]
    if wanted and os.environ.get("ZOO_DIFFERENTIAL", "1") != "0":
        t = time.perf_counter()
        try:
            result["differential"] = zoo.control_flow(module, proto, S0, "legacy")
        except Exception as exc:
            result["differential"] = {"status": "crash",
                                      "message": f"{type(exc).__name__}: {zoo._first_line(str(exc))}"}
        timings["differential"] = time.perf_counter() - t
        for key in wanted:
            result["explained"][key] = result["explained"][key] + list(result["differential"].get("reasons", []))

    save_dir = os.environ.get("ZOO_SAVE")
    if save_dir and name in os.environ.get("ZOO_SAVE_MODELS", name).split(","):
        save(Path(save_dir) / name, proto, fixed_proto, inputs, refs, result)
    timings["total"] = time.perf_counter() - t_all
    return result


def save(folder: Path, naive: Any, fixed: Any, inputs: dict[str, Any], refs: dict[str, list[Any]],
         result: dict[str, Any]) -> None:
    """naive.onnx, fixed.onnx (the naive one when fix rewrote nothing), and per shape where eager
    works ``<shape>.npz`` with ``input`` and the eager outputs ``output_0``, ``output_1``, ..."""
    import numpy as np
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(naive, str(folder / "naive.onnx"))
    onnx.save(fixed if fixed is not None else naive, str(folder / "fixed.onnx"))
    for key, outs in refs.items():
        np.savez_compressed(folder / f"{key}.npz", input=inputs[key], **{f"output_{i}": o for i, o in enumerate(outs)})
    summary = {k: result.get(k) for k in ("model", "family", "s0", "eager", "naive", "fixed", "s0_check")}
    summary["tolerance"] = {"atol": zoo.ATOL, "rtol": zoo.RTOL, "rtol_relative_to": "max |eager output|"}
    (folder / "zoo.json").write_text(json.dumps(summary, indent=1))


# --------------------------------------------------------------------------- totals and report


def classify(r: dict[str, Any]) -> dict[str, int]:
    """zoo.py's counts, plus S0 recovery and the counts once S0 is given."""
    c = zoo.classify(r)
    s0 = r.get("s0_check", {}).get("status", "")
    c.update(models=1, s0_recovered=0, s0_asked=0, s0_wrong=0, fixed_given_ok=0, explained_given=0)
    if r.get("status") != "done" or r.get("export", {}).get("status") != "ok":
        return c  # no verdict on S0 where the run or the export failed (reported apart)
    c.update(s0_recovered=int(s0 == "recovered"), s0_asked=int(s0 == "asked"),
             s0_wrong=int(s0 not in ("recovered", "asked")))
    given = r.get("fixed_given", r.get("fixed", {}))
    explained = r.get("explained_given", r.get("explained", {}))
    for key, e in r["eager"].items():
        if e["status"] == "ok":
            ok = given.get(key, {}).get("status") == "ok"
            c["fixed_given_ok"] += ok
            c["explained_given"] += (not ok) and bool(explained.get(key))
    return c


COLUMNS = [  # key, header (each <= 5 characters: the table fits 80 columns)
    ("models", "model"), ("eager_ok", "pairs"), ("naive_ok", "naive"), ("fixed_ok", "fixed"),
    ("broken_by_fix", "broke"), ("explained", "expl"), ("silent_unexplained", "silnt"),
    ("export_unfaithful", "unfth"), ("s0_recovered", "S0rec"), ("s0_asked", "S0ask"), ("s0_wrong", "S0bad"),
    ("fixed_given_ok", "fixS0"),
]


def totals(results: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for family in [*FAMILIES, "all"]:
        rows = [r for r in results if family in ("all", r.get("family"))]
        if not rows:
            continue
        acc: dict[str, int] = {}
        for r in rows:
            for k, v in classify(r).items():
                acc[k] = acc.get(k, 0) + v
        acc["runs_not_done"] = sum(r.get("status") != "done" for r in rows)
        out[family] = acc
    return out


def _cells(r: dict[str, Any], stage: str) -> str:
    if r.get("status") != "done" or stage not in r:
        return ""
    marks = {"ok": ".", "wrong": "W", "error": "E"}
    return "".join(marks[r[stage][k]["status"]] if e["status"] == "ok" else " " for k, e in r["eager"].items())


def format_report(results: list[dict[str, Any]], wall: float) -> str:
    lines = [f"shapes: {', '.join([zoo.fmt_shape(S0) + ' (S0)', *(zoo.fmt_shape(s) for s in OTHER_SHAPES)])}",
             "per shape: . ok  W wrong  E error  (blank: eager fails there)",
             f"{'model':30s} {'naive':8s} {'fixed':8s} {'fix|S0':8s} {'S0':9s} findings (*fixable)"]
    for r in sorted(results, key=lambda r: (FAMILIES.index(r["family"]), r["model"])):
        if r.get("status") != "done":
            lines.append(f"{r['model']:30s} {r.get('status', '?')}")
            continue
        if r["export"]["status"] != "ok":
            lines.append(f"{r['model']:30s} export failed: {r['export']['message'][:45]}")
            continue
        c = classify(r)
        flag = " !silent" if c["silent_unexplained"] else ""
        flag += " !broken" if c["broken_by_fix"] else ""
        s0 = r["s0_check"].get("status", "?")
        lines.append(f"{r['model']:30s} {_cells(r, 'naive'):8s} {_cells(r, 'fixed'):8s} "
                     f"{_cells(r, 'fixed_given'):8s} {s0:9s} {zoo._rules(r)[:40]}{flag}")
    tot = totals(results)
    lines += ["", f"{'family':12s}" + "".join(f"{h:>6s}" for _, h in COLUMNS)]
    for family, acc in tot.items():
        lines.append(f"{family:12s}" + "".join(f"{acc.get(k, 0):6d}" for k, _ in COLUMNS))
    lines += ["", "pairs: (model, shape) where eager works; broke: correct as exported, not after fix;",
              "expl: wrong/failing after fix, explained by a finding; silnt: wrong after fix, unexplained;",
              "unfth: pairs of exports wrong at their own export shape (the exporter's fault, apart);",
              "S0rec/ask/bad: check recovered S0, asked for it, or took a wrong one;",
              "fixS0: correct after fix with S0 given (differs from 'fixed' where S0 was not recovered)"]
    bugs = [r for r in results if r.get("bugs") or r.get("status") in ("crash", "timeout")]
    for r in bugs:
        for b in r.get("bugs") or [{"stage": r.get("status"), "traceback": r.get("stderr", "")}]:
            tail = b["traceback"].strip().splitlines()
            lines.append(f"BUG {r['model']} ({b['stage']}): {zoo._first_line(tail[-1] if tail else '', 120)}")
    lines.append(f"wall time {wall:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--models", help="comma-separated model names (default: all)")
    ap.add_argument("--family", choices=FAMILIES, help="only this family")
    ap.add_argument("--quick", action="store_true", help=f"CI set: {', '.join(QUICK)}")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--jobs", type=int, default=1, help="subprocesses at once (each uses 1 thread)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per model")
    ap.add_argument("--save", metavar="DIR",
                    help="write ONNX files and eager inputs/outputs per model "
                         f"(default models: {','.join(SAVE_DEFAULT)})")
    ap.add_argument("--no-s0-given", action="store_true",
                    help="do not run check and fix again with S0 given where check did not recover it")
    ap.add_argument("--no-differential", action="store_true",
                    help="do not run the second export (DS009) for pairs the static check leaves unexplained")
    ap.add_argument("--mem-gb", type=float, default=8.0, help="address-space limit of each model's subprocess")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    args = ap.parse_args(argv)
    os.environ.setdefault("ZOO_MEM_GB", str(args.mem_gb))

    if args.no_differential:
        os.environ["ZOO_DIFFERENTIAL"] = "0"
    if args.no_s0_given:
        os.environ["ZOO_S0_GIVEN"] = "0"
    if args.one:
        import logging
        import resource
        import warnings

        # a check that blows up (hf_efficientnet took 22 GB at HEAD) fails here, not in the OOM killer
        limit = int(float(os.environ.get("ZOO_MEM_GB", "8")) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        logging.disable(logging.WARNING)
        warnings.filterwarnings("ignore")
        result = run_one(args.one)
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        return 0
    if args.list:
        for m in MODELS.values():
            print(f"{m.name:32s} {m.family:13s} {m.note}")
        return 0

    names = QUICK if args.quick else list(MODELS)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    elif args.save and not args.quick:
        names = SAVE_DEFAULT
    if args.family:
        names = [n for n in names if n in MODELS and MODELS[n].family == args.family]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model: {', '.join(unknown)} (see --list)")
    if args.save:
        os.environ["ZOO_SAVE"] = str(Path(args.save).resolve())
        os.environ["ZOO_SAVE_MODELS"] = ",".join(names)

    start = time.perf_counter()
    done: dict[str, dict[str, Any]] = {}

    def work(name: str) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name]
        base = {"model": name, "exporter": "legacy", "family": MODELS[name].family}
        r = zoo.run_json_subprocess(cmd, base, args.timeout, threads=1)
        done[name] = r
        c = classify(r)
        print(f"[{time.perf_counter() - start:6.0f}s] {name:32s} {r.get('status'):8s} {r.get('wall', 0):5.0f}s "
              f"pairs {c['eager_ok']} naive {c['naive_ok']} fixed {c['fixed_ok']} broken {c['broken_by_fix']} "
              f"silent {c['silent_unexplained']} S0 {r.get('s0_check', {}).get('status', '-')}",
              file=sys.stderr, flush=True)
        if args.json:  # partial results as they come: a long run can be read while it runs
            _write_json(args.json, [done[n] for n in names if n in done], time.perf_counter() - start, args.jobs)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(work, names))
    wall = time.perf_counter() - start
    results = [done[n] for n in names]
    print(format_report(results, wall))
    if args.json:
        _write_json(args.json, results, wall, args.jobs)
    return 0


def _write_json(path: str, results: list[dict[str, Any]], wall: float, jobs: int) -> None:
    payload = {"wall_seconds": wall, "jobs": jobs, "s0": zoo.fmt_shape(S0),
               "shapes": [zoo.fmt_shape(s) for s in (S0, *OTHER_SHAPES)], "totals": totals(results),
               "results": results, "tolerance": {"atol": zoo.ATOL, "rtol": zoo.RTOL}}
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
