"""The third-party model zoo in its quick form: one model of each family, exported as users export them.

``python benchmarks/zoo_thirdparty.py`` runs every model (about 40, by hand); this runs three (an smp
U-Net with a timm encoder, ultralytics YOLOv8n warmed up and exported with cached anchors, a
transformers SegFormer) and holds the guarantees the full zoo must meet: ``fix`` never breaks a pair
that was correct as exported, no pair is wrong after ``fix`` without a finding that names its cause,
and ``check`` either recovers the export shape or asks for it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
# present, not imported: the zoo's subprocesses import them (after torchvision's op schemas are declared)
_LIBS = ("transformers", "ultralytics", "segmentation_models_pytorch")
_MISSING = [m for m in _LIBS if importlib.util.find_spec(m) is None]
if _MISSING:
    pytest.skip(f"the third-party zoo needs {', '.join(_MISSING)} (make test installs them)", allow_module_level=True)

ZOO = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo_thirdparty.py"

pytestmark = [pytest.mark.torch, pytest.mark.slow]


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("zoo") / "zoo.json"
    proc = subprocess.run([sys.executable, str(ZOO), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload: dict[str, Any] = json.loads(out.read_text())
    payload["stdout"] = proc.stdout
    return payload


def _by_model(zoo: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in zoo["results"]}


def test_quick_zoo_runs_every_model(quick_zoo: dict[str, Any]) -> None:
    results = quick_zoo["results"]
    assert {r["family"] for r in results} == {"transformers", "ultralytics", "smp"}
    for r in results:
        assert r["status"] == "done", r
        assert r["export"]["status"] == "ok", r["export"]
        assert r["check"]["status"] == "ok", r["check"]
        assert not r["bugs"], r["bugs"]
    totals = quick_zoo["totals"]["all"]
    # eager works at S0 and at most other shapes of every model: the pairs are there to judge
    assert totals["eager_ok"] >= 15, totals
    # the naive YOLO export is broken off its export shape (anchors cached at warm-up): the zoo
    # would prove nothing if every pair were already correct
    assert totals["naive_ok"] < totals["eager_ok"], quick_zoo["stdout"]


def test_fix_breaks_no_pair_that_was_correct(quick_zoo: dict[str, Any]) -> None:
    for r in quick_zoo["results"]:
        broken = [k for k, e in r["eager"].items()
                  if e["status"] == "ok" and r["naive"][k]["status"] == "ok" and r["fixed"][k]["status"] != "ok"]
        assert not broken, (r["model"], broken, {k: r["fixed"][k] for k in broken})


def test_no_pair_is_silently_wrong_after_fix(quick_zoo: dict[str, Any]) -> None:
    assert quick_zoo["totals"]["all"]["silent_unexplained"] == 0, quick_zoo["stdout"]


def test_export_shape_is_recovered_or_asked_for(quick_zoo: dict[str, Any]) -> None:
    for r in quick_zoo["results"]:
        s0 = r["s0_check"]
        assert s0["status"] in ("recovered", "asked"), (r["model"], s0)


def test_fix_repairs_the_cached_yolo_anchors(quick_zoo: dict[str, Any]) -> None:
    """YOLOv8n exported after its warm-up: DS008 on the concatenated per-level grids, repaired by fix."""
    r = _by_model(quick_zoo)["yolov8n"]
    pairs = [k for k, e in r["eager"].items() if e["status"] == "ok"]
    assert any(r["naive"][k]["status"] != "ok" for k in pairs), r["naive"]
    assert all(r["fixed"][k]["status"] == "ok" for k in pairs), {k: r["fixed"][k] for k in pairs}
    assert any(f["rule"] == "DS008" and f["fixable"] for f in r["check"]["findings"]), r["check"]["findings"]
