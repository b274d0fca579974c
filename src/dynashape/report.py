"""Presenting results: rich tables for people, JSON for machines, a heat map of valid shapes."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console, ConsoleOptions, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from dynashape.analysis.lattice import LatticeScanner
from dynashape.analysis.probe import Prober
from dynashape.findings import Finding, Lattice
from dynashape.model import atomic_path
from dynashape.pipeline.verify import ShapeResult, SweepResult
from dynashape.shapes import ShapeMap, format_shapes

log = logging.getLogger(__name__)

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_STATUS_STYLE = {"ok": "green", "same": "yellow", "ran": "yellow", "wrong": "bold red", "error": "bold red"}

# Below these widths a table would squeeze its text columns to a few characters: findings are
# printed one block each, and the sweep's details go under its table.
FINDINGS_TABLE_MIN_WIDTH = 140
SWEEP_DETAIL_MIN_WIDTH = 110
_NODE_MIN = 24  # the node column of the wide findings table: at least, and ...
_NODE_SHARE = 5  # ... at most 1/5 of the width


def shorten_left(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut from the LEFT behind an ellipsis: node names
    and source paths keep their informative tail (``.../swin_transformer.py:123``)."""
    width = max(width, 2)
    if len(text) <= width:
        return text
    return "\u2026" + text[len(text) - width + 1 :]


def _node_lines(f: Finding, width: int) -> list[str]:
    """The node (with its op on the same line when both fit, else on the next) and the source,
    each shortened from the left to ``width``."""
    op = f"({f.op})" if f.op else ""
    if f.node and op and len(f.node) + 1 + len(op) <= width:
        lines = [f"{f.node} {op}"]
    else:
        lines = [shorten_left(t, width) for t in (f.node, op) if t]
    if f.source:
        lines.append(shorten_left(f.source, width))
    return lines


def _fix_text(f: Finding, label: str = "") -> Text:
    text = Text(label)
    text.append("auto: " if f.fixable else "manual: ", style="green" if f.fixable else "yellow")
    text.append(f.fix)
    return text


class FindingsView:
    """The findings, laid out for the console's width: a table when it is wide, else one block
    per finding (rule, severity, node and source each on their own line, the text wrapped)."""

    def __init__(self, findings: list[Finding], title: str = "Findings") -> None:
        self.findings = findings
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        if width >= FINDINGS_TABLE_MIN_WIDTH:
            yield self.table(width)
            return
        yield Text(f"{self.title} ({len(self.findings)})", style="bold")
        for f in self.findings:
            head = Text(f.rule, style="bold")
            head.append(" ")
            head.append(f.severity, style=_SEVERITY_STYLE.get(f.severity, ""))
            head.append(f" (found by {f.detected_by})", style="dim")
            head.overflow = "fold"
            yield head
            where = Text()
            for i, line in enumerate(_node_lines(f, width - 4)):
                where.append(("\n" if i else "") + line)
            parts: list[Text] = [where] if where else []
            parts += [Text(f.message), _fix_text(f, "fix ")]
            for part in parts:
                part.overflow = "fold"
                yield Padding(part, (0, 0, 0, 2), expand=False)

    def table(self, width: int) -> Table:
        node_width = max(_NODE_MIN, width // _NODE_SHARE)
        longest = max((len(line) for f in self.findings for line in _node_lines(f, node_width)), default=4)
        node_width = min(node_width, max(longest, 4))
        table = Table(title=Text(self.title), show_lines=True, expand=True)
        table.add_column("rule", no_wrap=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("node", width=node_width, overflow="fold")
        table.add_column("what is wrong", ratio=3, overflow="fold")
        table.add_column("fix", ratio=2, overflow="fold")
        table.add_column("found by", overflow="fold")
        for f in self.findings:
            table.add_row(f.rule, Text(f.severity, style=_SEVERITY_STYLE.get(f.severity, "")),
                          Text("\n".join(_node_lines(f, node_width))), Text(f.message), _fix_text(f),
                          f.detected_by)
        return table


def findings_table(findings: list[Finding], title: str = "Findings") -> FindingsView:
    return FindingsView(findings, title)


def lattice_table(lattice: Lattice, export_shape: ShapeMap, export_known: bool = True) -> Table:
    """``export_known``: False when S0 is unknown and ``export_shape`` only the size analysed at."""
    partial = next((lat.partial for axes in lattice.values() for lat in axes.values() if lat.partial), "")
    # a lattice that saw only part of the graph (DS017) may allow sizes the rest rejects: say so
    table = Table(title="Valid sizes (lattice, PARTIAL: see DS017)" if partial
                  else "Valid sizes (lattice)")
    table.add_column("input", overflow="fold")
    for col in ("axis", "export size", "min", "multiple"):
        table.add_column(col, overflow="fold")
    for name, axes in lattice.items():
        for axis, lat in sorted(axes.items()):
            export = str(export_shape[name][axis]) if export_known else f"? ({export_shape[name][axis]} analysed)"
            table.add_row(Text(name), str(axis), export, str(lat.min),
                          str(lat.multiple) if not lat.irregular else "only the export size")
    return table


def _sweep_detail(r: ShapeResult) -> str:
    detail = r.message
    if r.node and r.node not in detail:
        detail = f"node {r.node}: {detail}"
    if r.divergent:
        detail += f"\nfirst divergent node: {r.divergent.get('node')} ({r.divergent.get('op')})"
    if r.on_lattice is False:
        detail = "(off the lattice) " + detail
    return detail


class SweepView:
    """The sweep's rows; on a narrow console the detail column moves under the table, one
    wrapped paragraph per shape that has one."""

    def __init__(self, sweep: SweepResult) -> None:
        self.sweep = sweep

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = options.max_width >= SWEEP_DETAIL_MIN_WIDTH
        sweep = self.sweep
        table = Table(title=Text(f"Shape sweep ({sweep.backend} vs {sweep.reference})"))
        for col in ("shape", "status", "max abs error", "output", *(("detail",) if wide else ())):
            table.add_column(col, overflow="fold")
        below: list[Text] = []
        for r in sweep.results:
            err = "" if r.max_abs_error is None else f"{r.max_abs_error:.2e}"
            out = "; ".join("x".join(str(d) for d in v) for v in r.output_shapes.values())
            shape = format_shapes(r.shapes)
            status = Text(r.status, style=_STATUS_STYLE.get(r.status, ""))
            detail = _sweep_detail(r)
            if wide:
                table.add_row(Text(shape), status, err, Text(out), Text(detail))
                continue
            table.add_row(Text(shape), status, err, Text(out))
            if detail.strip():
                line = Text(f"{shape}: ", style="bold")
                line.append(detail)
                line.overflow = "fold"
                below.append(line)
        yield table
        for line in below:
            yield line


def sweep_table(sweep: SweepResult) -> SweepView:
    return SweepView(sweep)


def print_findings(console: Console, findings: list[Finding]) -> None:
    if findings:
        console.print(findings_table(findings))
    else:
        console.print("no hazards found by the static rules")


# ---------------------------------------------------------------- heat map


HEATMAP_MAX_POINTS = 24  # sizes per axis: a heat map probes at most 24 x 24 shapes per model


@dataclass(frozen=True)
class ValidityGrid:
    input: str
    axes: tuple[int, int]
    rows: list[int]  # sizes on the first axis
    cols: list[int]  # sizes on the second axis
    valid: np.ndarray  # bool [len(rows), len(cols)]
    label: str

    def sampled(self) -> str:
        """What was probed, in words: '15x15 sizes of input: axis 2 112..336 every 16, ...'."""
        return f"{len(self.rows)}x{len(self.cols)} sizes of {self.input}: " + ", ".join(
            f"axis {axis} {_span(sizes)}" for axis, sizes in zip(self.axes, (self.rows, self.cols)))


def _span(sizes: list[int]) -> str:
    if len(sizes) < 2:
        return str(sizes[0]) if sizes else "none"
    return f"{sizes[0]}..{sizes[-1]} every {sizes[1] - sizes[0]}"


def validity_grid(model: onnx.ModelProto, s0: ShapeMap, name: str, axes: tuple[int, int],
                  rows: list[int], cols: list[int], label: str = "") -> ValidityGrid:
    """Probe every (rows x cols) size pair: valid where the graph is consistent and the outputs
    that follow the input size at S0 follow it there too.

    The grid is streamed: each probe is dropped once its cell is known (a probe of a large
    graph holds megabytes; ``rows`` and ``cols`` come from :func:`grid_sizes`, which caps them)."""
    scanner = LatticeScanner(model, s0, Prober(model))
    follow = [(out, j, axis) for axis in axes for out, j in scanner._following_outputs(name, axis)]
    grid = np.zeros((len(rows), len(cols)), dtype=bool)
    for i, h in enumerate(rows):
        for j, w in enumerate(cols):
            shapes = dict(s0)
            shape = list(shapes[name])
            shape[axes[0]], shape[axes[1]] = h, w
            shapes[name] = tuple(shape)
            scanner.prober.forget()
            probe = scanner.prober.at(shapes)
            ok = probe.ok
            for out, k, axis in follow:
                dims = probe.shape(out)
                if ok and dims is not None and dims[k] is not None and dims[k] != shape[axis]:
                    ok = False
            grid[i, j] = ok
    scanner.prober.forget()
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
                ax.set_title(f"{g.label}: {100 * g.valid.mean():.0f}% of {g.valid.size} sizes valid")
                ax.set_xlabel(f"{g.input} axis {g.axes[1]}")
                ax.set_ylabel(f"{g.input} axis {g.axes[0]}")
            fig.suptitle("Shape validity (green: runs with outputs of the right size; red: fails)\n"
                         f"sampled: {grids[0].sampled()}" if grids else "Shape validity")
            fig.tight_layout()
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format="png", dpi=90)
            plt.close(fig)
            return target
    parts = ["<html><body><h2>Shape validity</h2>"]
    for g in grids:
        parts.append(f"<h3>{html.escape(g.label)}</h3><p>sampled: {html.escape(g.sampled())}</p>"
                     "<table style='border-collapse:collapse;font-size:9px'>")
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


def grid_sizes(lo: int, hi: int, max_points: int = HEATMAP_MAX_POINTS) -> list[int]:
    """At most ``max_points`` sizes from about lo to hi, with a power-of-two step, so lattice
    patterns show as regular stripes."""
    step = 1
    while True:
        sizes = range(max(step, lo - lo % step), hi + 1, step)
        if len(sizes) <= max(max_points, 1):
            return list(sizes)
        step *= 2
