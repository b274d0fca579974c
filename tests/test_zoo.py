"""The model zoo benchmark in its reduced CI form: a handful of real models, legacy exporter.

The full run (``python benchmarks/zoo.py``, every model, both exporters) is run by hand; this one
keeps its guarantee in CI: after ``fix``, no (model, shape) pair where eager PyTorch works is
silently wrong -- each is correct or explained by a finding of ``check`` -- and none that was
correct as exported is broken by ``fix``. The third-party zoo has its own: test_zoo_thirdparty.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ZOO = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo.py"


@pytest.mark.slow
def test_quick_zoo_has_no_silently_wrong_pair_after_fix(tmp_path: Path) -> None:
    out = tmp_path / "zoo.json"
    proc = subprocess.run([sys.executable, str(ZOO), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    totals = json.loads(out.read_text())["totals"]["all"]
    assert totals["runs"] >= 5 and totals["runs_not_done"] == 0, totals
    assert totals["eager_ok"] > 0 and totals["fixed_ok"] >= totals["naive_ok"], totals
    assert totals["silent_unexplained"] == 0, proc.stdout[-4000:]
    # fix is monotone: no pair correct as exported is wrong or failing after it
    assert totals["broken_by_fix"] == 0, proc.stdout[-4000:]
    # the demo is in the set: its three pitfalls break the naive export and the fix repairs them
    demo = next(r for r in json.loads(out.read_text())["results"] if r["model"] == "demo")
    assert demo["status"] == "done", demo
