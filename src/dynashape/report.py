"""Presenting results: rich tables for people, JSON for machines, a heat map of valid shapes."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dynashape.findings import Finding, Lattice
from dynashape.model import atomic_path
from dynashape.probe import Prober
from dynashape.shapes import ShapeMap, format_shapes
from dynashape.verify import SweepResult

log = logging.getLogger(__name__)

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_STATUS_STYLE = {"ok": "green", "same": "yellow", "ran": "yellow", "wrong": "bold red", "error": "bold red"}


def findings_table(findings: list[Finding], title: str = "Findings") -> Table:
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("node")
    table.add_column("what is wrong", ratio=3)
    table.add_column("fix", ratio=2)
    table.add_column("found by", no_wrap=True)
    for f in findings:
        node = f"{f.node}\n({f.op})" if f.op else f.node
        if f.source:
            node += f"\n{f.source}"
        fix = ("[green]auto:[/] " if f.fixable else "[yellow]manual:[/] ") + _escape(f.fix)
        table.add_row(f.rule, f"[{_SEVERITY_STYLE.get(f.severity, '')}]{f.severity}[/]", _escape(node),
                      _escape(f.message), fix, f.detected_by)
    return table


def _escape(text: str) -> str:
    return escape(text)


def lattice_table(lattice: Lattice, export_shape: ShapeMap, export_known: bool = True) -> Table:
    """``export_known``: False when S0 is unknown and ``export_shape`` only the size analysed at."""
    table = Table(title="Valid sizes (lattice)")
    for col in ("input", "axis", "export size", "min", "multiple"):
        table.add_column(col)
    for name, axes in lattice.items():
        for axis, lat in sorted(axes.items()):
            export = str(export_shape[name][axis]) if export_known else f"? ({export_shape[name][axis]} analysed)"
            table.add_row(name, str(axis), export, str(lat.min),
                          str(lat.multiple) if not lat.irregular else "only the export size")
    return table


def sweep_table(sweep: SweepResult) -> Table:
    table = Table(title=f"Shape sweep ({sweep.backend} vs {sweep.reference})")
    for col in ("shape", "status", "max abs error", "output", "detail"):
        table.add_column(col)
    for r in sweep.results:
        err = "" if r.max_abs_error is None else f"{r.max_abs_error:.2e}"
        out = "; ".join("x".join(str(d) for d in v) for v in r.output_shapes.values())
        detail = r.message
        if r.node and r.node not in detail:
            detail = f"node {r.node}: {detail}"
        if r.divergent:
            detail += f"\nfirst divergent node: {r.divergent.get('node')} ({r.divergent.get('op')})"
        if r.on_lattice is False:
            detail = "(off the lattice) " + detail
        table.add_row(_escape(format_shapes(r.shapes)), f"[{_STATUS_STYLE.get(r.status, '')}]{r.status}[/]", err, out,
                      _escape(detail))
    return table


def print_findings(console: Console, findings: list[Finding]) -> None:
    if findings:
        console.print(findings_table(findings))
    else:
        console.print("no hazards found by the static rules")


# ---------------------------------------------------------------- heat map


@dataclass
class ValidityGrid:
    input: str
    axes: tuple[int, int]
    rows: list[int]  # sizes on the first axis
    cols: list[int]  # sizes on the second axis
    valid: np.ndarray  # bool [len(rows), len(cols)]
    label: str


def validity_grid(model: onnx.ModelProto, s0: ShapeMap, name: str, axes: tuple[int, int],
                  rows: list[int], cols: list[int], label: str = "") -> ValidityGrid:
    """Probe every (rows x cols) size pair: valid where the graph is consistent and the outputs
    that follow the input size at S0 follow it there too."""
    from dynashape.lattice import LatticeScanner

    scanner = LatticeScanner(model, s0, Prober(model))
    follow = [(out, j, axis) for axis in axes for out, j in scanner._following_outputs(name, axis)]
    grid = np.zeros((len(rows), len(cols)), dtype=bool)
    for i, h in enumerate(rows):
        for j, w in enumerate(cols):
            shapes = dict(s0)
            shape = list(shapes[name])
            shape[axes[0]], shape[axes[1]] = h, w
            shapes[name] = tuple(shape)
            probe = scanner.prober.at(shapes)
            ok = probe.ok
            for out, k, axis in follow:
                dims = probe.shape(out)
                if ok and dims is not None and dims[k] is not None and dims[k] != shape[axis]:
                    ok = False
            grid[i, j] = ok
    return ValidityGrid(name, axes, rows, cols, grid, label)


def write_heatmap(grids: list[ValidityGrid], path: str | Path) -> Path:
    """A PNG (matplotlib) or, without matplotlib or for .html paths, an HTML table."""
    target = Path(path)
    if target.suffix.lower() != ".html":
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            target = target.with_suffix(".html")
            log.warning("matplotlib is not installed; writing %s instead", target)
        else:
            fig, axs = plt.subplots(1, len(grids), figsize=(5.5 * len(grids), 5), squeeze=False)
            for ax, g in zip(axs[0], grids):
                ax.imshow(g.valid, origin="lower", cmap="RdYlGn", vmin=0, vmax=1, aspect="auto",
                          extent=(g.cols[0], g.cols[-1], g.rows[0], g.rows[-1]), interpolation="nearest")
                ax.set_title(f"{g.label}: {100 * g.valid.mean():.0f}% of sizes valid")
                ax.set_xlabel(f"{g.input} axis {g.axes[1]}")
                ax.set_ylabel(f"{g.input} axis {g.axes[0]}")
            fig.suptitle("Shape validity (green: runs with outputs of the right size; red: fails)")
            fig.tight_layout()
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format="png", dpi=90)
            plt.close(fig)
            return target
    parts = ["<html><body><h2>Shape validity</h2>"]
    for g in grids:
        parts.append(f"<h3>{html.escape(g.label)}</h3><table style='border-collapse:collapse;font-size:9px'>")
        parts.append("<tr><th></th>" + "".join(f"<th>{c}</th>" for c in g.cols) + "</tr>")
        for i, r in enumerate(g.rows):
            cells = "".join(
                f"<td style='background:{'#4c4' if v else '#d44'};width:8px;height:8px'></td>" for v in g.valid[i]
            )
            parts.append(f"<tr><th>{r}</th>{cells}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(parts))
    return target


def grid_sizes(lo: int, hi: int, max_points: int = 64) -> list[int]:
    """Sizes from lo to hi with a power-of-two step, so lattice patterns show as regular stripes."""
    step = 1
    while (hi - lo) // (step * 2) >= max_points - 1 or (hi - lo) // step > max_points:
        step *= 2
    start = max(step, lo - lo % step)
    return list(range(start, hi + 1, step))
