"""The PyTorch side of the CLI: `dynashape export`, and the `--torch` options of `check`.

``register(subparsers)`` adds the ``export`` subcommand (its handler is ``args.func``, which
returns the exit code: 0 done; a usage error is a ``DynashapeError``, exit 2 through
``dynashape.cli.main``, the one entry point). ``add_torch_check_arguments`` and
``torch_differential`` (or ``torch_findings``) are what the ``check`` command calls for ``check
MODEL.onnx --torch FILE.py:FACTORY --input ...``; ``describe_exports`` says what that cost.
This is the only module of the PyTorch side that prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import onnx

from dynashape.errors import DynashapeError
from dynashape.findings import Finding, Lattice
from dynashape.shapes import ShapeMap, format_shapes, parse_shapes

if TYPE_CHECKING:
    from dynashape.differential import DifferentialResult

log = logging.getLogger(__name__)


def parse_dynamic(items: Sequence[str] | None, input_shapes: ShapeMap) -> dict[str, list[int]] | None:
    """``--dynamic input:0,2,3`` (repeatable; ``input:`` or ``input:none`` for a static input)."""
    if not items:
        return None
    out: dict[str, list[int]] = {}
    for item in items:
        name, sep, axes = item.rpartition(":")
        if not sep:
            if len(input_shapes) != 1:
                raise DynashapeError(
                    f"--dynamic {item!r}: name the input, e.g. --dynamic {next(iter(input_shapes))}:0,2,3"
                )
            name, axes = next(iter(input_shapes)), item
        if name not in input_shapes:
            raise DynashapeError(
                f"--dynamic names {name!r}, which is not an input (inputs: {', '.join(input_shapes)})"
            )
        text = axes.strip().lower()
        if text in ("", "none"):
            out[name] = []
            continue
        try:
            out[name] = sorted({int(a) for a in text.split(",") if a.strip()})
        except ValueError:
            raise DynashapeError(
                f"--dynamic {item!r}: axes are integers separated by commas, e.g. {name}:0,2,3"
            ) from None
    for name in input_shapes:
        out.setdefault(name, [])
    return out


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
    p.add_argument("--input", required=True, metavar="SHAPES",
                   help="export shape(s), e.g. input:1x3x512x512 (several: a:...,b:...)")
    p.add_argument("--dynamic", action="append", metavar="NAME:AXES",
                   help="dynamic axes of one input, e.g. input:0,2,3 (repeatable; default: every axis "
                   "but the channels of 4-D inputs)")
    p.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17 legacy, 18 dynamo)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    from dynashape.export import export_module, load_module
    from dynashape.inputs import undeclared_inputs, validate_shapes
    from dynashape.model import check_output_path

    shapes = parse_shapes(args.input)
    validate_shapes(undeclared_inputs(shapes), shapes={"--input": shapes})
    dynamic = parse_dynamic(args.dynamic, shapes)
    out = check_output_path(args.output, [])
    module = load_module(args.model)
    result = export_module(module, shapes, dynamic, exporter=args.exporter, path=out, opset=args.opset)
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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dynashape.cli_torch export ...`: the same as `dynashape export` (one entry point)."""
    from dynashape.cli import main as cli_main

    return cli_main(argv)


# ------------------------------------------------------------------------ check --torch


def add_torch_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The differential-export options of `check` (``--input`` only if check has none yet)."""
    group = parser.add_argument_group("differential export (needs PyTorch)")

    def add(flag: str, **kwargs: Any) -> None:
        if flag not in parser._option_string_actions:  # check may already define it
            group.add_argument(flag, **kwargs)

    add("--torch", metavar="MODEL", default=None,
        help="the PyTorch module the ONNX came from: FILE.py:FACTORY or package.module:FACTORY; "
        "export it at two shapes and report every value that changed")
    add("--input", metavar="SHAPES", default=None,
        help="export shape S0, e.g. input:1x3x512x512 (default: the shape recorded by `dynashape export`)")
    add("--second-shape", metavar="SHAPES", default=None,
        help="the second export shape S1 (default: S0 grown on every dynamic axis)")
    add("--class-shapes", metavar="N", type=int, default=3,
        help="also export at up to N shapes chosen to fall in other divisibility classes of the model's "
        "strides and windows, where Python `if` on a size takes the other branch (default 3; 0: none)")
    add("--exporter", choices=["legacy", "dynamo"], default="legacy",
        help="exporter for the differential export (use the one the model came from)")


def torch_findings(args: argparse.Namespace, model: onnx.ModelProto, lattice: Lattice | None = None) -> list[Finding]:
    """Differential-export findings for `check MODEL --torch ...` ([] when --torch is not given)."""
    result = torch_differential(args, model, lattice)
    return [] if result is None else result.findings


def torch_differential(
    args: argparse.Namespace, model: onnx.ModelProto, lattice: Lattice | None = None
) -> DifferentialResult | None:
    """Export the --torch module at S0, S1 and the class shapes (None when --torch is not given)."""
    spec = getattr(args, "torch", None)
    if not spec:
        return None
    from dynashape.differential import differential_export
    from dynashape.model import graph_inputs, read_export_shape

    names = [i.name for i in graph_inputs(model)]
    shape_text = getattr(args, "input", None)
    s0 = parse_shapes(shape_text, names) if shape_text else read_export_shape(model)
    if not s0:
        raise DynashapeError(
            "--torch needs the export shape: give --input NAME:1x3x512x512 (the model records none)"
        )
    s0 = {n: s0[n] for n in names if n in s0}
    missing = [n for n in names if n not in s0]
    if missing:
        raise DynashapeError(f"--input gives no shape for {', '.join(missing)}")
    dynamic: dict[str, list[int]] | None = {i.name: i.dynamic_axes for i in graph_inputs(model)}
    if dynamic is not None and not any(dynamic.values()):
        dynamic = None  # a static model: compare as if every non-channel axis were dynamic
    s1_text = getattr(args, "second_shape", None)
    s1 = parse_shapes(s1_text, names) if s1_text else None
    from dynashape.inputs import validate_model_shapes

    validate_model_shapes(model, shapes={"--input": s0 if shape_text else None, "--second-shape": s1})
    class_shapes = getattr(args, "class_shapes", 3)
    result = differential_export(
        spec, s0, dynamic=dynamic, exporter=getattr(args, "exporter", "legacy") or "legacy", s1=s1,
        lattice=lattice, class_shapes=3 if class_shapes is None else max(0, class_shapes),
    )
    onnx_names = {n.name for n in model.graph.node}
    for f in result.findings:
        f.details["in_model"] = f.node in onnx_names
    return result


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
