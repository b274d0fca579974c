"""The check-speed benchmark runs (its quick form: a ~1,000-node synthetic graph). Its times are
printed, never asserted: see benchmarks/check_speed.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "check_speed.py"


def test_quick_benchmark_checks_and_fixes_the_synthetic_graph(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "synthetic" and row["nodes"] > 900
    # the frozen resize and the whole-map pool are found and rewritten, and the rewrite proved
    assert row["findings"] >= 2 and row["rewrites"] == 2 and row["proof_runs"] >= 1
