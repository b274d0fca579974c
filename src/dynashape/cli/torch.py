"""The PyTorch side of the CLI: `dynashape export`, and the `--torch` options of `check`.

``register(subparsers)`` adds the ``export`` subcommand (its handler is ``args.func``, which
returns the exit code: 0 done; a usage error is a ``DynashapeError``, exit 2 through the one
wrapper, :func:`dynashape.errors.run_guarded`). The ``--torch`` group of ``check`` is declared in
:mod:`dynashape.cli.args` (``add_torch_check_arguments``, re-exported here); ``torch_differential``
runs it for parsed arguments; ``describe_exports`` says what that cost. Torch is never imported
here: the library imports it when a command needs it.
"""

from __future__ import annotations

import argparse
from typing import Any

import onnx

from dynashape import api
from dynashape.cli.args import add_exporter, add_torch_check_arguments, add_torch_input
from dynashape.findings import Finding
from dynashape.pipeline.differential import DifferentialResult
from dynashape.shapes import format_shapes

__all__ = ["add_torch_check_arguments", "describe_exports", "register", "run_export", "torch_differential",
           "torch_findings"]


# ------------------------------------------------------------------------ export


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `export` to the main parser's subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "export",
        help="PyTorch module -> ONNX with dynamic axes",
        description="Export a PyTorch module to ONNX with dynamic axes, reporting the exporter's "
        "warnings (TracerWarnings, guards, specializations) with file:line.",
    )
    p.add_argument("model", metavar="MODEL", help="path/to/file.py:FACTORY or package.module:FACTORY")
    add_torch_input(p, "export shape(s), e.g. input:1x3x512x512 (several: a:...,b:...)", required=True)
    p.add_argument("--dynamic", action="append", metavar="NAME:AXES",
                   help="dynamic axes of one input, e.g. input:0,2,3 (repeatable; default: every axis "
                   "but the channels of 4-D inputs)")
    add_exporter(p)
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17 legacy, 18 dynamo)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    result = api.export(args.model, args.input, args.output, dynamic=args.dynamic, exporter=args.exporter,
                        opset=args.opset)
    out = result.path
    shapes = result.input_shapes
    dims = ", ".join(
        f"{vi.name}:" + "x".join(d.dim_param or str(d.dim_value) for d in vi.type.tensor_type.shape.dim)
        for vi in result.model.graph.input
    )
    print(f"exported {args.model} with the {result.exporter} exporter (opset {result.opset}) "
          f"at {format_shapes(shapes)} -> {out}")
    print(f"  inputs: {dims}")
    print(f"  outputs: {', '.join(result.output_names)}")
    if result.warnings:
        print(f"  {len(result.warnings)} exporter warning(s) -- each may be a value frozen at "
              "the export shape:")
        for w in result.warnings:
            print(f"    {w.location}: {w.category}: {w.message}")
        print(f"  run `dynashape check {out} --torch {args.model} --input {args.input}` to see which "
              "values changed with the shape")
    else:
        print("  no exporter warnings")
    return 0


# ------------------------------------------------------------------------ check --torch


def torch_differential(args: argparse.Namespace, model: onnx.ModelProto) -> DifferentialResult | None:
    """Export the --torch module at S0, S1 and the class shapes (None when --torch is not given)."""
    spec = getattr(args, "torch", None)
    if not spec:
        return None
    return api.torch_differential(model, spec, torch_input=getattr(args, "input", None),
                                  second_shape=getattr(args, "second_shape", None),
                                  class_shapes=getattr(args, "class_shapes", 3),
                                  exporter=getattr(args, "exporter", "legacy") or "legacy")


def torch_findings(args: argparse.Namespace, model: onnx.ModelProto) -> list[Finding]:
    """Differential-export findings for `check MODEL --torch ...` ([] when --torch is not given)."""
    result = torch_differential(args, model)
    return [] if result is None else result.findings


def describe_exports(result: DifferentialResult) -> list[str]:
    """What the differential export cost and why each shape: one line each, for the CLI."""
    classes = result.classes
    windows = ", ".join(map(str, classes.get("windows", []))) or "none"
    lines = [f"differential export: {result.exports} exports in {result.seconds:.1f} s (strides up to "
             f"{max(classes.get('levels', [1]))}, windows {windows})"]
    for r in result.runs:
        took = f"{r.seconds:.1f} s, {r.nodes} nodes" if r.status == "exported" else r.status
        flips = f" -> other branch at {', '.join(r.branches)}" if r.branches else ""
        extra = f": {r.message}" if r.message and r.status != "exported" else ""
        lines.append(f"  {format_shapes(r.shapes)} ({took}): {r.reason}{flips}{extra}")
    if not result.branches:
        lines.append("  no Python branch on a size seen: every exported graph has the structure of the S0 one")
    return lines
