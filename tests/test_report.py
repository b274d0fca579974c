"""What people read: the findings, sweep and lattice output fits the console (COLUMNS=80 or 200),
long node names and source paths are shortened from the left, and no text is lost."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from dynashape import cli
from dynashape.demo import demo_onnx_path
from dynashape.findings import AxisLattice, Finding
from dynashape.pipeline.verify import ShapeResult, SweepResult
from dynashape.report import (
    FindingsView,
    SweepView,
    ValidityGrid,
    grid_sizes,
    lattice_table,
    shorten_left,
    write_heatmap,
)

WIDTHS = (80, 200)
LONG_NODE = "/features/features.5/features.5.17/attn/relative_position_bias_table/Gather_3"
LONG_SOURCE = ".venv/lib/python3.11/site-packages/torchvision/models/swin_transformer.py:123"


def render(renderable: object, width: int) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, highlight=False, soft_wrap=False, color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def assert_fits(text: str, width: int) -> None:
    assert "\x1b[" not in text
    long = [line for line in text.splitlines() if len(line) > width]
    assert not long, f"{len(long)} line(s) over {width} columns, e.g. {long[0]!r}"


def finding(rule: str = "DS005", **kwargs: object) -> Finding:
    base: dict[str, object] = {
        "rule": rule, "severity": "error", "node": LONG_NODE, "op": "Gather",
        "message": "reshape target [1, 49, 49, 3] is frozen from the export shape: at 1x3x256x256 the window "
                   "count differs and the join fails " * 2,
        "fixable": False, "detected_by": "differential-export", "fix": "pass the window count as a tensor",
        "source": LONG_SOURCE,
    }
    base.update(kwargs)
    return Finding(**base)  # type: ignore[arg-type]


def test_shorten_left_keeps_the_tail() -> None:
    assert shorten_left("abc", 10) == "abc"
    short = shorten_left(LONG_SOURCE, 30)
    assert len(short) == 30 and short.startswith("\u2026") and short.endswith("swin_transformer.py:123")


@pytest.mark.parametrize("width", WIDTHS)
def test_findings_fit_and_keep_node_tails(width: int) -> None:
    findings = [finding(), finding("DS003", node="", op="", source=None, severity="warning", fixable=True,
                                   detected_by="lattice")]
    out = render(FindingsView(findings), width)
    assert_fits(out, width)
    assert "DS005" in out and "DS003" in out and "error" in out and "warning" in out
    assert "swin_transformer.py:123" in out  # the informative tail of the source path
    assert "Gather_3" in out
    # the text may wrap, but nothing is cut: every word is there, and only paths are shortened
    words = set(re.split(r"[\s\u2502\u2503]+", out))
    for f in findings:
        assert set(f.message.split()) <= words and set(f.fix.split()) <= words
    cells = [cell.strip() for line in out.splitlines() for cell in re.split("[\u2502\u2503]", line)]
    assert all(cell.startswith("\u2026") for cell in cells if "\u2026" in cell)


def test_narrow_findings_put_node_and_source_on_their_own_lines() -> None:
    out = render(FindingsView([finding()]), 80)
    lines = out.splitlines()
    assert lines[1].startswith("DS005 error")
    assert any(line.strip().endswith("swin_transformer.py:123") for line in lines)
    wide = render(FindingsView([finding()]), 200)
    assert "\u2503 rule" in wide  # a table at 200 columns


@pytest.mark.parametrize("width", WIDTHS)
def test_sweep_fits_and_keeps_details(width: int) -> None:
    message = "node /features/features.7/features.7.1/attn/Reshape_5: Attempting to broadcast an axis by a " \
              "dimension other than 1. 7 by 8"
    rows = [ShapeResult({"input": (1, 3, 224, 224)}, "ok", 1e-6, {"logits": [1, 1000]}),
            ShapeResult({"input": (4, 3, 448, 448)}, "error", message=message, node="/x/Reshape_5",
                        on_lattice=False)]
    sweep = SweepResult(rows, "PyTorch eager (model.py:build)", "ort", 1e-4, 1e-3)
    out = render(SweepView(sweep), width)
    assert_fits(out, width)
    flat = re.sub(r"[\s\u2502\u2503]+", " ", out)
    assert "input:4x3x448x448" in flat and "error" in flat and "off the lattice" in flat
    assert "Reshape_5" in flat and "7 by 8" in flat


def test_lattice_table_fits_80() -> None:
    lattice = {"pixel_values": {2: AxisLattice(32, 32), 3: AxisLattice(32, 32)}}
    out = render(lattice_table(lattice, {"pixel_values": (1, 3, 224, 224)}), 80)
    assert_fits(out, 80)
    assert "pixel_values" in out and "224" in out


def test_grid_sizes_are_capped_and_say_what_was_sampled(tmp_path: Path) -> None:
    sizes = grid_sizes(112, 336)
    assert len(sizes) <= 24 and sizes[0] == 112 and sizes[-1] == 336
    assert len(grid_sizes(8, 100_000)) <= 24
    grid = ValidityGrid("input", (2, 3), sizes, sizes[:3], np.ones((len(sizes), 3), dtype=bool), "as exported")
    assert grid.sampled() == f"{len(sizes)}x3 sizes of input: axis 2 112..336 every 16, axis 3 112..144 every 16"
    html = write_heatmap([grid], tmp_path / "map.html").read_text()
    assert "sampled: 15x3 sizes of input" in html


# ---------------------------------------------------------------- the CLI, in-process, at 80 and 200 columns


def run_cli(argv: list[str], width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            ) -> tuple[int, str]:
    monkeypatch.setenv("COLUMNS", str(width))
    rc = cli.main(argv)
    out = capsys.readouterr().out
    assert_fits(out, width)
    return rc, re.sub(r"[\s\u2502\u2503]+", " ", out)


@pytest.mark.parametrize("width", WIDTHS)
def test_check_torch_output_fits(width: int, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    rc, flat = run_cli(["check", str(demo_onnx_path()), "--torch", "dynashape.demo.model:build",
                        "--input", "input:1x3x512x512"], width, monkeypatch, capsys)
    assert rc == 1
    for rule in ("DS001", "DS002", "DS003"):
        assert rule in flat
    assert re.search(r"demo/model\.py:\d+", flat)  # the source path's tail
    assert "/AveragePool_1" in flat and "differential-export" in flat


@pytest.mark.parametrize("width", WIDTHS)
def test_fix_and_verify_output_fits(width: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fixed = tmp_path / "fixed.onnx"
    rc, flat = run_cli(["fix", str(demo_onnx_path()), "-o", str(fixed)], width, monkeypatch, capsys)
    assert rc == 0 and "fixed /AveragePool_1" in flat and f"wrote{fixed}" in flat.replace(" ", "")
    rc, flat = run_cli(["verify", str(demo_onnx_path()), "--range", "input:1x3x[128..512:32]x[128..512:32]"],
                       width, monkeypatch, capsys)
    assert rc == 1
    assert "input:1x3x128x128" in flat and " error " in flat and "/Add" in flat
    assert "0 wrong" in flat and "NOT PROVEN" in flat


@pytest.mark.parametrize("width", WIDTHS)
def test_doctor_output_fits(width: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, flat = run_cli(["doctor", str(demo_onnx_path()), "--no-tensorrt", "--out-dir", str(tmp_path),
                        "--range", "input:1x3x[256..512:64]x[256..512:64]"], width, monkeypatch, capsys)
    assert rc == 0
    assert "DS001" in flat and "/AveragePool_1" in flat and "not proven" in flat
    assert "sizes of input: axis 2" in flat  # what the heat map sampled
