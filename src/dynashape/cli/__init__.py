"""The `dynashape` command: parse arguments, call :mod:`dynashape.api`, print. Nothing else lives here.

Exit codes, the same for every command (``dispatch`` runs them all, inside
:func:`dynashape.errors.run_guarded`, the one wrapper; ``build``, ``run``, ``bench``, ``export``
and ``triton`` are declared in cli/engine.py, cli/torch.py and cli/triton.py):

* 0: success / clean;
* 1: findings (check), failed shapes (verify, doctor), a refused or failed build;
* 2: a usage or input error: one line on stderr saying what is wrong and what to do, no traceback;
* 3: an internal error, a bug in dynashape: the traceback, then one line with the versions;
* 130: interrupted (Ctrl-C), one line, no traceback; 141: the reader of stdout went away (``| head``).

As with Polygraphy and trtexec, 0 means nothing failed, not that the numbers were proven: `verify`
without --reference torch:/onnx: and `doctor` on an ONNX file alone print (and put in --json) that
the outputs were not compared with PyTorch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from rich.markup import escape as esc

from dynashape import api
from dynashape._version import __version__
from dynashape.cli import engine as cli_engine
from dynashape.cli import torch as cli_torch
from dynashape.cli import triton as cli_triton
from dynashape.cli.args import (
    RANGE_HELP,
    Parser,
    add_export_shape,
    add_json,
    add_range,
    add_reference,
    add_torch_check_arguments,
    add_torch_input,
    console,
    progress_bar,
)
from dynashape.cli.torch import describe_exports
from dynashape.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    DynashapeError,
    run_guarded,
)
from dynashape.report import lattice_table, print_findings, sweep_table
from dynashape.shapes import format_shapes

log = logging.getLogger("dynashape")

# the exit codes, also importable from here (they live in dynashape.errors, beside the wrapper)
__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERNAL_ERROR", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "build_parser",
           "dispatch", "main", "run_guarded"]


# ---------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    out = console(args)
    if args.list_rules:
        for rule in api.list_rules():
            out.print(f"{rule.id}  {esc(rule.title)}  [dim]{esc(rule.file)}[/]")
        return 0
    if not args.model:
        raise DynashapeError("check needs a MODEL.onnx (or --list-rules)")
    result = api.check(args.model, export_shape=args.export_shape, ranges=args.range, torch=args.torch,
                       torch_input=args.input, second_shape=args.second_shape, class_shapes=args.class_shapes,
                       exporter=args.exporter, heatmap=args.heatmap)
    report, diff, findings = result.report, result.differential, result.findings
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        out.print(f"[bold]{esc(args.model)}[/]: export shape {esc(report.export_shape_text)}")
        print_findings(out, findings)
        if diff is not None:
            for line in describe_exports(diff):
                out.print(esc(line))
        else:
            out.print(f"[yellow]not proven:[/] {esc(result.not_proven)}")
        if report.lattice:
            out.print(lattice_table(report.lattice, report.export_shape, report.export_shape_source != "unknown"))
        for name, axes in report.outputs_follow.items():
            broken = [a for a, ok in axes.items() if not ok]
            if broken:
                axes_text = esc(", ".join(broken))
                out.print(f"[yellow]output {esc(repr(name))} keeps one size on {axes_text} whatever the "
                          "input size (a size baked in, or an adaptive pool)[/]")
        if report.suggested_profile:
            out.print(f"suggested profile (on the lattice): {esc(report.suggested_profile.as_options())}")
        for note in report.notes:
            out.print(f"[yellow]note:[/] {esc(note)}")
    if result.heatmap is not None:
        out.print(f"heat map: {esc(str(result.heatmap))}")
    return 1 if findings else 0


# ---------------------------------------------------------------- fix


def cmd_fix(args: argparse.Namespace) -> int:
    console_ = console(args)
    if not args.dry_run and not args.output:
        raise DynashapeError("fix needs -o OUT.onnx (or --dry-run)")
    result = api.fix(args.model, None if args.dry_run else args.output, export_shape=args.export_shape,
                     ranges=args.range, pad_to=args.pad_to, reference=args.reference)
    errors_left = result.errors_left
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return 1 if errors_left else 0
    for line in result.applied:
        console_.print(f"[green]fixed[/]   {esc(line)}")
    if result.pad_to:
        console_.print(f"[green]padded[/]  inputs up to a multiple of {result.pad_to}, outputs cropped back "
                      "(not bit-exact near the bottom/right border)")
    for rb in result.rolled_back:
        console_.print(f"[red]rolled back[/] {rb.rule} {esc(rb.node)}: {esc(rb.reason)}")
    rolled = {(rb.rule, rb.node) for rb in result.rolled_back}
    for f in result.unfixed:
        if (f.rule, f.node) not in rolled:
            console_.print(f"[yellow]not fixed[/] {f.rule} {esc(f.node)}: {esc(f.fix or f.message)}")
    if result.export_proof:
        console_.print(f"proof: {esc(_export_proof_text(result.export_proof))}")
    against = f"the original and {args.reference}" if result.reference else "the original"
    for p in result.other_proofs:
        style = {"same": "green", "repaired": "green", "worse": "red", "both fail": "red",
                 "both wrong": "red"}.get(p.verdict, "yellow")
        outs = "; ".join("x".join(map(str, v)) for v in p.output_shapes.values())
        console_.print(f"proof: [{style}]{p.verdict}[/] at {esc(format_shapes(p.shapes))} (original {p.original}, "
                       f"fixed {p.status}) -> {esc(outs or p.message)}")
    if result.other_proofs:
        console_.print(f"proof: compared with {esc(against)} at {len(result.other_proofs) + 1} shapes")
        if not result.reference:
            console_.print("proof: values unproven off the export shape; use --reference torch:FILE.py:FACTORY")
    if not result.applied and not result.pad_to:
        console_.print("nothing to rewrite")
    if args.dry_run:
        console_.print("dry run: nothing written")
    else:
        console_.print(f"wrote {esc(args.output)}")
    if errors_left:
        rules = ", ".join(sorted({f.rule for f in errors_left}))
        console_.print(f"[red]the {'fixed model' if not args.dry_run else 'model'} still has {len(errors_left)} "
                      f"error finding(s) ({rules}): it is not correct at every shape; see 'not fixed' above[/]")
        return 1
    return 0


def _export_proof_text(p: Any) -> str:
    """What the proof at the export shape showed (a ProofRun)."""
    where = format_shapes(p.shapes)
    if p.verdict == "same":
        return f"the fixed model matches the original at the export shape {where} (max abs error {p.max_abs_error:.2e})"
    if p.verdict == "both fail":
        return (f"the original fails at {where} too ({p.message}): it is not the export shape; "
                "nothing was proven there (give --export-shape)")
    return f"at the export shape {where}: {p.verdict} ({p.message})"


# ---------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace) -> int:
    out = console(args)
    bar, update = progress_bar(out, "verifying")
    with bar:
        sweep = api.verify(args.model, ranges=args.range, export_shape=args.export_shape, reference=args.reference,
                           backend=args.backend, atol=args.atol, rtol=args.rtol, progress=update)
    if args.json:
        print(json.dumps(sweep.to_json(), indent=2, default=str))
    else:
        out.print(sweep_table(sweep))
        out.print(esc(sweep.summary()))
    return 0 if sweep.all_ok else 1


# ---------------------------------------------------------------- doctor


def cmd_doctor(args: argparse.Namespace) -> int:
    console_ = console(args)
    bar, update = progress_bar(console_, "verifying")
    with bar:
        result, exported = api.doctor_run(
            args.model, out_dir=args.out_dir, torch_input=args.input, export_shape=args.export_shape,
            ranges=args.range, reference=args.reference, tensorrt=not args.no_tensorrt,
            heatmap=not args.no_heatmap, differential=not args.no_differential, progress=update)
    if exported is not None:
        console_.print(f"exported {esc(exported.spec)} at {esc(args.input)} -> {esc(exported.path)}")
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return 0 if result.healthy else 1
    rep = result.check
    console_.rule(f"[bold]dynashape doctor: {esc(result.model)}")
    console_.print(f"export shape {esc(rep.export_shape_text)}")
    print_findings(console_, [*rep.findings, *result.extra_findings])
    if result.differential is not None:
        for line in describe_exports(result.differential):
            console_.print(esc(line))
    if rep.lattice:
        console_.print(lattice_table(rep.lattice, rep.export_shape, rep.export_shape_source != "unknown"))
    for line in result.fix.applied:
        console_.print(f"[green]fixed[/]   {esc(line)}")
    for f in result.fix.unfixed:
        console_.print(f"[yellow]not fixed[/] {f.rule} {esc(f.node)}: {esc(f.fix)}")
    if result.fix.export_proof:
        console_.print(f"proof: {esc(_export_proof_text(result.fix.export_proof))}")
    console_.print(f"fixed model: {esc(str(result.fix.path))}")
    console_.print(sweep_table(result.sweep))
    console_.print(f"verify ({esc(result.sweep.reference)}): {esc(result.sweep.summary())}")
    trt = result.tensorrt
    if trt.status == "built" and trt.sweep is not None:
        console_.print(sweep_table(trt.sweep))
    else:
        console_.print(f"TensorRT: {trt.status} ({esc(trt.reason)})")
    if result.heatmap:
        console_.print(f"shape-validity heat map: {esc(str(result.heatmap))} ({esc(result.heatmap_sampled)})")
    for note in result.notes:
        console_.print(f"[yellow]note:[/] {esc(note)}")
    if result.proven:
        console_.print("[green]proven:[/] every shape matched the reference and no hazard is left")
    elif result.healthy:
        console_.print(f"[yellow]not proven:[/] nothing failed, but {esc(result.not_proven_reason())}")
    return 0 if result.healthy else 1


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dynashape", description="Find, fix and prove the sizes an ONNX export baked in; "
                    "build TensorRT engines that are correct at every input shape in range.",
                    epilog="exit codes: 0 clean, 1 findings or failed shapes, 2 a usage or input error, "
                    "3 a bug in dynashape, 130 interrupted")
    parser.add_argument("--version", action="version", version=f"dynashape {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("check", help="find dynamic-shape hazards (exit 0 clean, 1 findings, 2 errors)")
    p.add_argument("model", nargs="?", metavar="MODEL.onnx")
    add_range(p)
    add_export_shape(p)
    add_json(p)
    p.add_argument("--list-rules", action="store_true",
                   help="list the rules: id, one-line description, and the file that holds it")
    p.add_argument("--heatmap", metavar="PATH", help="write a shape-validity heat map (.png or .html)")
    add_torch_check_arguments(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("fix", help="rewrite the fixable hazards, prove the result, write it")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", metavar="OUT.onnx")
    add_export_shape(p)
    p.add_argument("--pad-to", metavar="N|auto",
                   help="also pad inputs up to a multiple of N (auto: the lattice's) and crop outputs back; "
                        "padded borders are NOT bit-exact")
    add_range(p, RANGE_HELP + " (the proofs run at its ends too)")
    add_reference(p, "prove the rewrites against torch:FILE.py:FACTORY or onnx:PATH, not only the original")
    p.add_argument("--dry-run", action="store_true", help="report and prove, write nothing")
    add_json(p, None)
    p.set_defaults(func=cmd_fix)

    p = sub.add_parser("verify", help="run a sweep of shapes against a reference")
    p.add_argument("model", metavar="MODEL.onnx")
    add_range(p, RANGE_HELP + " (default: S0/4 .. 2*S0 on the lattice)")
    add_export_shape(p)
    add_reference(p, "torch:FILE.py:FACTORY | torch:package.module:FACTORY | onnx:PATH | none (default none: "
                     "only output sizes are checked)")
    p.add_argument("--backend", choices=("ort", "trt"), default="ort")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    add_json(p, None)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("doctor", help="check, fix, verify (and build with TensorRT when present) end to end")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="MODEL.onnx or FILE.py:FACTORY / package.module:FACTORY (default: the built-in demo)")
    add_torch_input(p, "export shape for a PyTorch model, e.g. input:1x3x512x512", metavar=None)
    add_range(p)
    add_export_shape(p)
    add_reference(p, "as for verify (default: PyTorch when available, else the re-specialized original graph)",
                  metavar=None)
    p.add_argument("--out-dir", default="dynashape-out", help="where the fixed model and reports go")
    p.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT build")
    p.add_argument("--no-heatmap", action="store_true")
    p.add_argument("--no-differential", action="store_true",
                   help="with a PyTorch model, skip exporting at second shapes to find Python branches on sizes")
    add_json(p, None)
    p.set_defaults(func=cmd_doctor)

    cli_engine.register(sub)
    cli_torch.register(sub)
    cli_triton.register(sub)
    return parser


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command in process (``argv`` without the program name): its exit code, as the
    ``dynashape`` console script would exit (see the module's docstring)."""
    return run_guarded(lambda: dispatch(argv))


def dispatch(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` (None: ``sys.argv[1:]``) and run the command; exceptions are the caller's
    (:func:`main` and the console script run this inside :func:`dynashape.errors.run_guarded`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USER_ERROR)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
