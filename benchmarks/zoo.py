"""Model zoo: real models exported with dynamic axes, run off their export shape, fixed and checked.

    python benchmarks/zoo.py [--quick] [--models a,b] [--exporters legacy,dynamo] [--json PATH] [--jobs N]

For every (model, exporter) pair, in its own subprocess with a timeout:

1. PyTorch eager at the export shape S0 and at 4 others (non-square, larger, smaller, batch 2);
   a (model, shape) pair counts only where eager works;
2. ``export_module`` at S0 with dynamic batch, height and width;
3. the naive export in ONNX Runtime against eager at each shape: ok / wrong / error;
4. ``check_model`` (static findings and the lattice) and ``fix_model`` on the naive export;
5. the fixed export in ONNX Runtime against eager at each shape;
6. for each pair still wrong or failing after the fix: is it explained by a finding of the check?
   Explained means a DS003 lattice that excludes that shape, or an unfixed finding (warning or
   error) of a rule that can break ONNX Runtime at that shape (DS016 is about TensorRT only and
   never explains; DS015 explains only shapes that differ on an axis it reports static);
7. for pairs still unexplained, and pairs silently wrong, what ``check --torch`` adds: a second
   export at S1 and its DS009 finding (Python control flow on a size picked another branch: the
   graph at S0 does not hold the branch other sizes take, so no static rule can see it).
   ``--no-differential`` skips it.

Totals: pairs where eager works, naive ok, ok after fix, explained among the rest, and the ones
that are wrong after the fix with no finding that explains them ("silently wrong after fix and
unexplained": must be 0). Failures to export (and runtime errors) are loud and are reported apart.

Models are torchvision's (weights=None) and the hand-written ones in ``benchmarks/zoo_models.py``
(published architectures' shape handling) plus the demo net. Numbers are from one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Shape = tuple[int, int, int, int]

S0: Shape = (1, 3, 224, 224)
# non-square, larger, smaller (and not a multiple of 4), batch 2
OTHER_SHAPES: list[Shape] = [(1, 3, 192, 288), (1, 3, 320, 320), (1, 3, 150, 150), (2, 3, 224, 224)]
PSP_S0: Shape = (1, 3, 192, 192)  # feature map 24x24: every PSP bin (1, 2, 3, 6) divides it
PSP_OTHERS: list[Shape] = [(1, 3, 144, 240), (1, 3, 240, 240), (1, 3, 160, 160), (2, 3, 192, 192)]

ATOL = 1e-4
RTOL = 1e-3  # relative to the largest |value| of the eager output
DEFAULT_TIMEOUT = 420
EXPORTERS = ("legacy", "dynamo")
# rules whose unfixed findings cannot explain a wrong or failing ONNX Runtime run
NOT_ORT_RULES = {"DS016"}


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str  # classification | segmentation | detection-backbone | hand-written
    build: Callable[[], Any]
    s0: Shape = S0
    others: tuple[Shape, ...] = tuple(OTHER_SHAPES)
    note: str = ""
    cost: int = 1  # rough relative run time, to start the slow ones first

    @property
    def shapes(self) -> list[Shape]:
        return [self.s0, *self.others]


# --------------------------------------------------------------------------- builders


def _tv() -> Any:
    from dynashape.testing import import_torchvision

    return import_torchvision()


def _seeded(fn: Callable[[], Any]) -> Callable[[], Any]:
    def build() -> Any:
        import torch

        torch.manual_seed(0)
        return fn().eval()

    return build


def tv_classifier(name: str, **kwargs: Any) -> Callable[[], Any]:
    return _seeded(lambda: getattr(_tv().models, name)(weights=None, **kwargs))


def tv_segmentation(name: str) -> Callable[[], Any]:
    return _seeded(lambda: getattr(_tv().models.segmentation, name)(weights=None, weights_backbone=None))


def _fpn_resnet18() -> Any:
    _tv()
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)


def _fpn_mobilenet_v3_large() -> Any:
    _tv()
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    return mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6)


def _retinanet_backbone() -> Any:
    tv = _tv()
    return tv.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None).backbone


def _fcos_backbone() -> Any:
    tv = _tv()
    return tv.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None).backbone


def _ssdlite_backbone() -> Any:
    tv = _tv()
    return tv.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).backbone


def _hand(name: str) -> Callable[[], Any]:
    def build() -> Any:
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        import zoo_models

        return getattr(zoo_models, name)()

    return build


def _demo() -> Any:
    from dynashape.demo.model import build

    return build()


MODELS: list[ZooModel] = [
    # classification
    ZooModel("resnet18", "classification", tv_classifier("resnet18")),
    ZooModel("resnet50", "classification", tv_classifier("resnet50"), cost=3),
    ZooModel("mobilenet_v2", "classification", tv_classifier("mobilenet_v2")),
    ZooModel("mobilenet_v3_small", "classification", tv_classifier("mobilenet_v3_small")),
    ZooModel("mobilenet_v3_large", "classification", tv_classifier("mobilenet_v3_large")),
    ZooModel("efficientnet_b0", "classification", tv_classifier("efficientnet_b0"), cost=2),
    ZooModel("regnet_y_400mf", "classification", tv_classifier("regnet_y_400mf"), cost=2),
    ZooModel("shufflenet_v2_x0_5", "classification", tv_classifier("shufflenet_v2_x0_5")),
    ZooModel("squeezenet1_1", "classification", tv_classifier("squeezenet1_1")),
    ZooModel("densenet121", "classification", tv_classifier("densenet121"), cost=4),
    ZooModel("mnasnet0_5", "classification", tv_classifier("mnasnet0_5")),
    ZooModel("convnext_tiny", "classification", tv_classifier("convnext_tiny"), cost=3),
    ZooModel("googlenet", "classification", tv_classifier("googlenet", aux_logits=False, init_weights=True), cost=2),
    ZooModel("alexnet", "classification", tv_classifier("alexnet"), cost=2,
             note="AdaptiveAvgPool2d((6, 6)) before the classifier"),
    ZooModel("vit_b_16", "classification", tv_classifier("vit_b_16"), cost=4,
             note="position embeddings fixed to 14x14 patches: eager rejects other sizes"),
    ZooModel("swin_t", "classification", tv_classifier("swin_t"), cost=4, note="window padding"),
    # segmentation
    ZooModel("fcn_resnet50", "segmentation", tv_segmentation("fcn_resnet50"), cost=5),
    ZooModel("deeplabv3_resnet50", "segmentation", tv_segmentation("deeplabv3_resnet50"), cost=5),
    ZooModel("deeplabv3_mobilenet_v3_large", "segmentation", tv_segmentation("deeplabv3_mobilenet_v3_large"), cost=2),
    ZooModel("lraspp_mobilenet_v3_large", "segmentation", tv_segmentation("lraspp_mobilenet_v3_large")),
    # detection backbones (FPN)
    ZooModel("fpn_resnet18", "detection-backbone", _seeded(_fpn_resnet18)),
    ZooModel("fpn_mobilenet_v3_large", "detection-backbone", _seeded(_fpn_mobilenet_v3_large)),
    ZooModel("retinanet_resnet50_fpn_backbone", "detection-backbone", _seeded(_retinanet_backbone), cost=3,
             note="FPN with LastLevelP6P7"),
    ZooModel("fcos_resnet50_fpn_backbone", "detection-backbone", _seeded(_fcos_backbone), cost=3),
    ZooModel("ssdlite_mobilenet_v3_backbone", "detection-backbone", _seeded(_ssdlite_backbone),
             note="SSDLite extra blocks"),
    # hand-written reproductions of published shape handling
    ZooModel("demo", "hand-written", _demo, note="dynashape.demo.model:build (DS001, DS002, DS003)"),
    ZooModel("bisenet_v1", "hand-written", _hand("bisenet_v1"), note="ARM: F.avg_pool2d(x, x.size()[2:])"),
    ZooModel("ddrnet_slim", "hand-written", _hand("ddrnet_slim"), note="size=[x.shape[-2] // 8, x.shape[-1] // 8]"),
    ZooModel("coordatt_net", "hand-written", _hand("coordatt_net"),
             note="AdaptiveAvgPool2d((None, 1)), torch.split(y, [h, w])"),
    ZooModel("yolo_detect", "hand-written", _hand("yolo_detect"), note="YOLOv5 Detect: grids cached at warm-up"),
    ZooModel("swin_pad", "hand-written", _hand("swin_pad"),
             note="window padding, np.ceil mask, crop under `if pad_r > 0`"),
    ZooModel("pspnet", "hand-written", _hand("pspnet"), s0=PSP_S0, others=tuple(PSP_OTHERS),
             note="adaptive_avg_pool2d(x, k), k = 1, 2, 3, 6"),
    ZooModel("unet", "hand-written", _hand("unet"), note="skip concat: stride-16 lattice", cost=2),
]
BY_NAME = {m.name: m for m in MODELS}
QUICK = ["demo", "resnet18", "lraspp_mobilenet_v3_large", "bisenet_v1", "coordatt_net", "yolo_detect"]


def fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


# --------------------------------------------------------------------------- one (model, exporter)


def _threads() -> int:
    return int(os.environ.get("ZOO_THREADS", "1"))


def _first_line(text: str, limit: int = 300) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def _eager(module: Any, x: Any) -> list[Any]:
    import torch

    from dynashape.backends.torch import flatten_outputs

    with torch.inference_mode():
        out = module(torch.from_numpy(x))
    return [t.detach().numpy() for _, t in flatten_outputs(out)]


def _compare(ref: list[Any], got: list[Any]) -> dict[str, Any]:
    import numpy as np

    if len(ref) != len(got):
        return {"status": "wrong", "message": f"{len(got)} outputs, eager has {len(ref)}"}
    for k, (a, b) in enumerate(zip(ref, got)):
        if tuple(a.shape) != tuple(b.shape):
            return {"status": "wrong",
                    "message": f"output {k} has shape {list(b.shape)}, eager {list(a.shape)}"}
    err = 0.0
    scale = 0.0
    for a, b in zip(ref, got):
        if a.size:
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if not np.all(np.isfinite(b64) == np.isfinite(a64)):
                return {"status": "wrong", "message": "non-finite values where eager has finite ones"}
            fin = np.isfinite(a64)
            err = max(err, float(np.max(np.abs(a64[fin] - b64[fin]), initial=0.0)))
            scale = max(scale, float(np.max(np.abs(a64[fin]), initial=0.0)))
    tol = ATOL + RTOL * scale
    status = "ok" if err <= tol else "wrong"
    return {"status": status, "max_abs_error": err, "scale": scale,
            "message": "" if status == "ok" else f"max abs error {err:.3g} (tolerance {tol:.3g})"}


def _run_ort(proto: Any, inputs: dict[str, Any], refs: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """The model in ONNX Runtime at every shape with an eager reference: ok / wrong / error."""
    from dynashape.backends.ort import OrtRunner, RunError

    results: dict[str, dict[str, Any]] = {}
    runner = OrtRunner(proto, threads=_threads())
    try:
        runner.activate()
    except RunError as exc:
        return {k: {"status": "error", "message": f"session: {exc}"} for k in refs}
    try:
        name = runner._session.get_inputs()[0].name
        for key, ref in refs.items():
            try:
                out = runner.infer({name: inputs[key]})
            except RunError as exc:
                results[key] = {"status": "error", "message": _first_line(str(exc))}
                continue
            results[key] = _compare(ref, list(out.values()))
    finally:
        runner.deactivate()
    return results


def _finding_json(f: Any) -> dict[str, Any]:
    return {
        "rule": f.rule, "severity": f.severity, "node": f.node, "op": f.op, "fixable": bool(f.fixable),
        "detected_by": f.detected_by, "message": _first_line(f.message, 240),
        "details": {k: v for k, v in (f.details or {}).items() if isinstance(v, int | str | float | list)},
    }


def _static_axes(f: Any) -> list[int] | None:
    """The axes a DS015 finding says are static, when it says."""
    for source in (f.details or {}, f.baked_value if isinstance(f.baked_value, dict) else {}):
        for key in ("axes", "static_axes", "axis"):
            value = source.get(key)
            if isinstance(value, int):
                return [value]
            if isinstance(value, list) and all(isinstance(v, int) for v in value):
                return list(value)
            if isinstance(value, dict):  # {input: [axes]}
                axes = [a for v in value.values() if isinstance(v, list) for a in v if isinstance(a, int)]
                if axes:
                    return axes
    return None


def explain(shape: Shape, s0: Shape, report: Any) -> list[str]:
    """The reasons the check gives for a failure at ``shape`` (empty: unexplained)."""
    reasons: list[str] = []
    for axis, lat in report.lattice.get("input", {}).items():
        size = shape[axis]
        off = size != s0[axis] if lat.irregular else not lat.contains(size)
        if off:
            what = f"only {s0[axis]}" if lat.irregular else f"multiple of {lat.multiple}, >= {lat.min}"
            reasons.append(f"DS003 lattice: axis {axis} = {size} is off it ({what})")
    for f in report.findings:
        if f.rule == "DS003":
            if f.severity == "error":
                reasons.append(f"DS003: {_first_line(f.message, 120)}")
            continue
        if f.fixable or f.severity == "info" or f.rule in NOT_ORT_RULES:
            continue
        if f.rule == "DS015":
            axes = _static_axes(f)
            if axes is not None and all(shape[a] == s0[a] for a in axes if a < len(shape)):
                continue
        reasons.append(f"{f.rule} ({f.severity}) at {f.node or f.op or '?'}")
    return reasons


def run_one(name: str, exporter: str) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(_threads())
    spec = BY_NAME[name]
    s0 = spec.s0
    keys = [fmt_shape(s) for s in spec.shapes]
    result: dict[str, Any] = {"model": name, "family": spec.family, "exporter": exporter,
                              "s0": fmt_shape(s0), "shapes": keys, "timings": {}, "bugs": []}
    timings = result["timings"]
    t_all = time.perf_counter()

    t = time.perf_counter()
    module = spec.build()
    timings["build"] = time.perf_counter() - t

    rng = np.random.default_rng(0)
    inputs = {fmt_shape(s): rng.standard_normal(s).astype(np.float32) for s in spec.shapes}

    # eager, on a copy: the export's warm-up run must see the module as freshly built
    t = time.perf_counter()
    eager_module = copy.deepcopy(module)
    eager: dict[str, dict[str, Any]] = {}
    refs: dict[str, list[Any]] = {}
    for key in keys:
        try:
            refs[key] = _eager(eager_module, inputs[key])
            eager[key] = {"status": "ok"}
        except Exception as exc:
            eager[key] = {"status": "error", "message": f"{type(exc).__name__}: {_first_line(str(exc))}"}
    del eager_module
    result["eager"] = eager
    timings["eager"] = time.perf_counter() - t

    # export
    from dynashape.errors import DynashapeError
    from dynashape.export import export_module

    t = time.perf_counter()
    try:
        exported = export_module(module, {"input": s0}, dynamic={"input": [0, 2, 3]}, exporter=exporter)
    except DynashapeError as exc:
        result["export"] = {"status": "error", "message": _first_line(str(exc), 400)}
    except Exception as exc:  # a crash inside dynashape's export wrapper
        result["export"] = {"status": "error", "message": f"{type(exc).__name__}: {_first_line(str(exc))}"}
        result["bugs"].append({"stage": "export", "traceback": traceback.format_exc()[-3000:]})
    else:
        result["export"] = {
            "status": "ok", "opset": exported.opset, "nodes": len(exported.model.graph.node),
            "specialized": exported.specialized,
            "warnings": [str(w)[:200] for w in exported.warnings[:10]],
        }
    timings["export"] = time.perf_counter() - t
    if result["export"]["status"] != "ok":
        failed = {k: {"status": "error", "message": "export failed"} for k in refs}
        result.update(naive=failed, fixed=failed, check={"status": "skipped"}, fix={"status": "skipped"})
        result["explained"] = {k: [] for k in refs}
        timings["total"] = time.perf_counter() - t_all
        return result
    proto = exported.model

    t = time.perf_counter()
    result["naive"] = _run_ort(proto, inputs, refs)
    timings["naive"] = time.perf_counter() - t

    # check and fix
    from dynashape.pipeline.check import check_model
    from dynashape.pipeline.fix import fix_model

    t = time.perf_counter()
    report = None
    try:
        report = check_model(proto, export_shape={"input": s0})
    except DynashapeError as exc:
        result["check"] = {"status": "refused", "message": _first_line(str(exc), 400)}
    except Exception as exc:
        result["check"] = {"status": "crash", "message": f"{type(exc).__name__}: {_first_line(str(exc))}"}
        result["bugs"].append({"stage": "check", "traceback": traceback.format_exc()[-3000:]})
    else:
        result["check"] = {
            "status": "ok", "seconds": report.seconds,
            "findings": [_finding_json(f) for f in report.findings],
            "lattice": {str(a): lat.to_json() for a, lat in report.lattice.get("input", {}).items()},
            "refusals": len(report.refusals), "notes": report.notes,
        }
    timings["check"] = time.perf_counter() - t

    t = time.perf_counter()
    fixed_proto = None
    if report is not None:
        try:
            fixed = fix_model(proto, export_shape={"input": s0}, report=report)
        except DynashapeError as exc:
            result["fix"] = {"status": "refused", "message": _first_line(str(exc), 400)}
            if "dynashape bug" in str(exc):
                result["bugs"].append({"stage": "fix", "traceback": str(exc)[:3000]})
        except Exception as exc:
            result["fix"] = {"status": "crash", "message": f"{type(exc).__name__}: {_first_line(str(exc))}"}
            result["bugs"].append({"stage": "fix", "traceback": traceback.format_exc()[-3000:]})
        else:
            result["fix"] = {
                "status": "ok", "applied": fixed.applied,
                "unfixed": [f"{f.rule}:{f.node}" for f in fixed.unfixed],
                "proof": [p.status for p in fixed.other_proofs],
            }
            if fixed.applied:
                fixed_proto = fixed.fixed
    else:
        result["fix"] = {"status": "skipped", "message": "no check report"}
    timings["fix"] = time.perf_counter() - t

    t = time.perf_counter()
    if fixed_proto is not None:
        result["fixed"] = _run_ort(fixed_proto, inputs, refs)
    else:  # nothing rewritten (or no fix at all): the user keeps the naive export
        result["fixed"] = copy.deepcopy(result["naive"])
    timings["fixed"] = time.perf_counter() - t

    result["explained"] = {
        key: (explain(tuple(int(d) for d in key.split("x")), s0, report)  # type: ignore[arg-type]
              if report is not None and result["fixed"][key]["status"] != "ok" else [])
        for key in refs
    }
    # unexplained pairs, and silently wrong ones (whose static explanation may be a finding
    # about something else: an unfixed finding counts for every shape)
    wanted = [k for k in refs if result["fixed"][k]["status"] == "wrong"
              or (result["fixed"][k]["status"] != "ok" and not result["explained"][k])]
    if wanted and os.environ.get("ZOO_DIFFERENTIAL", "1") != "0":
        t = time.perf_counter()
        result["differential"] = control_flow(module, proto, s0, exporter)
        timings["differential"] = time.perf_counter() - t
        for key in wanted:
            result["explained"][key] = result["explained"][key] + list(result["differential"].get("reasons", []))
    timings["total"] = time.perf_counter() - t_all
    return result


def control_flow(module: Any, proto: Any, s0: Shape, exporter: str) -> dict[str, Any]:
    """What `check --torch` adds for a pair the static check cannot explain: exports at S1 and at
    shapes chosen to flip size branches (``differential_export``), and their DS009 findings, Python
    control flow on a size, which no single graph shows (the branch not taken is not in it). Only
    DS009 counts: the value diffs of two large exports are aligned node by node and are not
    reliable enough to explain a pair."""
    from dynashape.errors import DynashapeError
    from dynashape.pipeline.differential import differential_export

    try:
        diff = differential_export(module, {"input": s0}, dynamic={"input": [0, 2, 3]}, exporter=exporter)
    except DynashapeError as exc:
        return {"status": "error", "message": _first_line(str(exc), 300)}
    flow = [f for f in diff.findings if f.rule == "DS009"]
    shapes = ", ".join(fmt_shape(next(iter(r.shapes.values()))) for r in diff.runs[1:] if r.status == "exported")
    return {
        "status": "ok", "exports": shapes, "findings": [_finding_json(f) for f in flow],
        "reasons": [f"DS009 (differential export at {shapes}): {_first_line(f.message, 160)}" for f in flow],
    }


# --------------------------------------------------------------------------- the driver


def run_in_subprocess(name: str, exporter: str, timeout: float, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, exporter]
    base = {"model": name, "exporter": exporter, "family": BY_NAME[name].family}
    return run_json_subprocess(cmd, base, timeout, threads)


def run_json_subprocess(cmd: list[str], base: dict[str, Any], timeout: float, threads: int) -> dict[str, Any]:
    """Run ``cmd`` (which prints its result as the last JSON line of stdout) with a timeout; a
    timeout or a crash is reported as ``base`` with ``status`` timeout / crash."""
    env = dict(os.environ, ZOO_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               PYTHONWARNINGS="ignore", TORCH_CPP_LOG_LEVEL="ERROR")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "wall": time.perf_counter() - start}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**base, "status": "crash", "wall": wall, "returncode": proc.returncode,
                "stderr": proc.stderr[-3000:]}
    result = json.loads(lines[-1])
    result.update(status="done", wall=wall)
    return result


def classify(r: dict[str, Any]) -> dict[str, int]:
    """Counts over the (model, shape) pairs where eager works."""
    c = {"eager_ok": 0, "naive_ok": 0, "fixed_ok": 0, "remaining": 0, "explained": 0,
         "unexplained_error": 0, "silent_unexplained": 0, "export_failed": 0, "export_unfaithful": 0,
         "broken_by_fix": 0}
    if r.get("status") != "done":
        return c
    # an export that is wrong at its own export shape (RT-DETR's traced query selection) is the
    # exporter's fault, not a shape hazard: its pairs are counted apart, loudly
    s0_key = r.get("s0")
    unfaithful = r.get("export", {}).get("status") == "ok" and s0_key in r.get("naive", {}) and \
        r["naive"][s0_key]["status"] != "ok" and r["eager"].get(s0_key, {}).get("status") == "ok"
    for key, e in r["eager"].items():
        if e["status"] != "ok":
            continue
        c["eager_ok"] += 1
        if unfaithful:
            c["export_unfaithful"] += 1
            continue
        c["naive_ok"] += r["naive"][key]["status"] == "ok"
        fixed = r["fixed"][key]["status"]
        c["broken_by_fix"] += r["naive"][key]["status"] == "ok" and fixed != "ok"
        if fixed == "ok":
            c["fixed_ok"] += 1
            continue
        c["remaining"] += 1
        if r["export"]["status"] != "ok":
            c["export_failed"] += 1
        elif r["explained"].get(key):
            c["explained"] += 1
        elif fixed == "wrong":
            c["silent_unexplained"] += 1
        else:
            c["unexplained_error"] += 1
    return c


TOTAL_LABELS = [
    ("eager_ok", "(model, shape) pairs where eager works"),
    ("naive_ok", "naive export correct in ONNX Runtime"),
    ("fixed_ok", "correct after fix"),
    ("remaining", "wrong or failing after fix"),
    ("explained", "  of which explained by a check finding"),
    ("export_failed", "  of which the export itself failed (loud)"),
    ("unexplained_error", "  of which runtime errors, unexplained (loud)"),
    ("export_unfaithful", "pairs of exports wrong at their own export shape (loud, apart)"),
    ("silent_unexplained", "silently wrong after fix and unexplained (must be 0)"),
    ("broken_by_fix", "correct as exported, not after fix (must be 0)"),
]


def totals(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for exporter in [*EXPORTERS, "all"]:
        rows = [r for r in results if exporter in ("all", r["exporter"])]
        if not rows:
            continue
        acc = {k: 0 for k, _ in TOTAL_LABELS}
        for r in rows:
            for k, v in classify(r).items():
                acc[k] += v
        acc["runs"] = len(rows)
        acc["runs_not_done"] = sum(r.get("status") != "done" for r in rows)
        out[exporter] = acc
    return out


def _cell(r: dict[str, Any], stage: str) -> str:
    if r.get("status") != "done":
        return ""
    keys = [k for k, e in r["eager"].items() if e["status"] == "ok"]
    marks = {"ok": ".", "wrong": "W", "error": "E"}
    return "".join(marks[r[stage][k]["status"]] for k in keys)


def _rules(r: dict[str, Any]) -> str:
    chk = r.get("check", {})
    if chk.get("status") != "ok":
        return chk.get("status", "")
    seen: dict[str, str] = {}
    for f in chk["findings"]:
        tag = f["rule"] + ("*" if f["fixable"] else "")
        seen.setdefault(tag, f["severity"][0])
    return " ".join(sorted(seen))


def print_report(results: list[dict[str, Any]], wall: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    table = Table(title="dynashape model zoo (per pair: . ok, W wrong, E error; shapes where eager works)")
    for col in ("model", "exp", "eager", "naive", "fixed", "explained", "findings (*fixed)", "notes", "s"):
        table.add_column(col, overflow="fold")
    for r in results:
        c = classify(r)
        notes = ""
        if r.get("status") != "done":
            notes = r.get("status", "")
        elif r["export"]["status"] != "ok":
            notes = "export: " + r["export"]["message"][:90]
        elif r.get("check", {}).get("status") != "ok":
            notes = f"check {r['check']['status']}: " + r["check"].get("message", "")[:80]
        elif r.get("fix", {}).get("status") != "ok":
            notes = f"fix {r['fix']['status']}: " + r["fix"].get("message", "")[:80]
        if r.get("bugs"):
            notes = ("BUG " + notes).strip()
        flag = " !" if c["silent_unexplained"] else ""
        n_eager = c["eager_ok"]
        table.add_row(
            r["model"], r["exporter"],
            f"{n_eager}/{len(r.get('eager', {})) or '?'}",
            _cell(r, "naive"), _cell(r, "fixed"),
            f"{c['explained']}/{c['remaining']}{flag}", _rules(r), notes,
            f"{r.get('wall', 0):.0f}",
        )
    console.print(table)
    tot = totals(results)
    summary = Table(title="totals")
    summary.add_column("")
    for exporter in tot:
        summary.add_column(exporter, justify="right")
    for key, label in TOTAL_LABELS:
        summary.add_row(label, *(str(tot[e][key]) for e in tot))
    runs = (f"{tot[e]['runs']} / {tot[e]['runs_not_done']}" for e in tot)
    summary.add_row("runs (model, exporter) / not finished", *runs)
    console.print(summary)
    bugs = [r for r in results if r.get("bugs") or r.get("status") == "crash"]
    if bugs:
        console.print("[bold]dynashape crashes / bugs:[/bold]")
        for r in bugs:
            for b in r.get("bugs", [{"stage": "subprocess", "traceback": r.get("stderr", "")}]):
                last = _first_line(b["traceback"].strip().splitlines()[-1] if b["traceback"].strip() else "")
                console.print(f"  {r['model']} / {r['exporter']} ({b['stage']}): {last}")
    console.print(f"wall time {wall:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "EXPORTER"), help=argparse.SUPPRESS)
    ap.add_argument("--models", help="comma-separated model names (default: all)")
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--quick", action="store_true", help=f"CI set: {', '.join(QUICK)}")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--jobs", type=int, default=2, help="subprocesses at once (each uses 1 thread)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per (model, exporter)")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    ap.add_argument("--no-differential", action="store_true",
                    help="do not run the second export (DS009) for pairs the static check leaves unexplained")
    args = ap.parse_args(argv)

    if args.no_differential:
        os.environ["ZOO_DIFFERENTIAL"] = "0"  # the subprocesses inherit it
    if args.one:
        import logging

        logging.disable(logging.WARNING)
        result = run_one(*args.one)
        sys.stdout.write("\n" + json.dumps(result) + "\n")
        return 0
    if args.list:
        for m in MODELS:
            print(f"{m.name:34s} {m.family:20s} {m.note}")
        return 0

    names = QUICK if args.quick else [m.name for m in MODELS]
    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME] + [e for e in exporters if e not in EXPORTERS]
    if unknown:
        ap.error(f"unknown model or exporter: {', '.join(unknown)} (see --list)")
    jobs = [(n, e) for n in names for e in exporters]
    order = sorted(jobs, key=lambda j: -(BY_NAME[j[0]].cost * (2 if j[1] == "dynamo" else 1)))

    start = time.perf_counter()
    done: dict[tuple[str, str], dict[str, Any]] = {}

    def work(job: tuple[str, str]) -> None:
        r = run_in_subprocess(job[0], job[1], args.timeout, threads=1 if args.jobs > 1 else 2)
        done[job] = r
        c = classify(r)
        print(f"[{time.perf_counter() - start:6.0f}s] {job[0]:32s} {job[1]:7s} {r.get('status'):8s} "
              f"{r.get('wall', 0):5.0f}s eager {c['eager_ok']} naive {c['naive_ok']} fixed {c['fixed_ok']} "
              f"explained {c['explained']} silent {c['silent_unexplained']}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(work, order))
    wall = time.perf_counter() - start
    results = [done[j] for j in jobs]
    print_report(results, wall)
    if args.json:
        payload = {"wall_seconds": wall, "jobs": args.jobs, "totals": totals(results), "results": results,
                   "tolerance": {"atol": ATOL, "rtol": RTOL}}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
