"""What the commands of the CLI share: the parser class, the options declared once, the console.

Each option that more than one command takes (``--range``, ``--export-shape``, ``--json``,
``--reference``, ``--fp16``, ``--cuda-graph``, ``--exporter``, the ``--torch`` group of ``check``)
is declared here, once; a command's module adds it with the function below and, where its
meaning differs a little, its own help text.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dynashape.shapes import ShapeMap, format_shapes

RANGE_HELP = "shape range, e.g. input:1x3x[128..1024:32]x[128..2048:32] (min..max:step per axis)"
EXPORT_HELP = "the shape the model was exported at, e.g. input:1x3x512x512 (default: recovered from the graph)"
EXPORTERS = ("legacy", "dynamo")


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line, like every user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # one line, as for every user error; the usage is one --help away
        print(f"dynashape: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def add_range(p: Any, help: str = RANGE_HELP) -> None:
    p.add_argument("--range", help=help)


def add_export_shape(p: Any) -> None:
    p.add_argument("--export-shape", help=EXPORT_HELP)


def add_json(p: Any, help: str | None = "print JSON on stdout") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_reference(p: Any, help: str, metavar: str | None = "REF") -> None:
    p.add_argument("--reference", metavar=metavar, help=help)


def add_fp16(p: Any, help: str, default: bool | None = False) -> None:
    p.add_argument("--fp16", action="store_true", default=default, help=help)


def add_cuda_graph(p: Any, help: str) -> None:
    p.add_argument("--cuda-graph", action="store_true", help=help)


def add_torch_input(p: Any, help: str, required: bool = False, metavar: str | None = "SHAPES") -> None:
    """``--input``: the shape a PyTorch module is exported at (export, doctor, check --torch)."""
    p.add_argument("--input", required=required, metavar=metavar, default=None, help=help)


def add_exporter(p: Any, help: str | None = None) -> None:
    p.add_argument("--exporter", choices=list(EXPORTERS), default="legacy", help=help)


def add_torch_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The differential-export options of `check` (``--input`` only if check has none yet)."""
    group = parser.add_argument_group("differential export (needs PyTorch)")
    taken = parser._option_string_actions  # check may already define one of them

    if "--torch" not in taken:
        group.add_argument("--torch", metavar="MODEL", default=None,
                           help="the PyTorch module the ONNX came from: FILE.py:FACTORY or package.module:FACTORY; "
                           "export it at two shapes and report every value that changed")
    if "--input" not in taken:
        add_torch_input(group, "export shape S0, e.g. input:1x3x512x512 (default: the shape recorded by "
                        "`dynashape export`)")
    if "--second-shape" not in taken:
        group.add_argument("--second-shape", metavar="SHAPES", default=None,
                           help="the second export shape S1 (default: S0 grown on every dynamic axis)")
    if "--class-shapes" not in taken:
        group.add_argument("--class-shapes", metavar="N", type=int, default=3,
                           help="also export at up to N shapes chosen to fall in other divisibility classes of the "
                           "model's strides and windows, where Python `if` on a size takes the other branch "
                           "(default 3; 0: none)")
    if "--exporter" not in taken:
        add_exporter(group, help="exporter for the differential export (use the one the model came from)")


_PIPE_WIDTH = 140  # no terminal and no COLUMNS: logs and files are read in wide viewers and grepped
_MIN_WIDTH = 40


def console(args: argparse.Namespace | None = None, *, stderr: bool | None = None) -> Console:
    """The width is COLUMNS when set (rich reads it), else the terminal's; piped or captured
    output with neither is laid out at 140 columns, so lines a user greps for are not wrapped
    for a terminal that is not there. Tables change layout below their readable width."""
    # with --json, human output goes to stderr so stdout stays machine-readable
    to_stderr = bool(getattr(args, "json", False)) if stderr is None else stderr
    out = Console(stderr=to_stderr, highlight=False, soft_wrap=False)
    columns = os.environ.get("COLUMNS", "")
    width = out.width if out.is_terminal or columns.isdigit() else _PIPE_WIDTH
    if width != out.width or width < _MIN_WIDTH:
        out = Console(stderr=to_stderr, highlight=False, soft_wrap=False, width=max(width, _MIN_WIDTH))
    return out


def progress_bar(out: Console, label: str) -> tuple[Progress, Callable[[int, int, ShapeMap], None]]:
    """A transient progress bar and the callback (done, total, shapes) that moves it."""
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), console=out, transient=True)
    task = bar.add_task("", total=None)

    def update(done: int, total: int, shapes: ShapeMap) -> None:
        bar.update(task, completed=done, total=total, description=format_shapes(shapes) if shapes else "")

    return bar, update
