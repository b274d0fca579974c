"""The `dynashape` command: parse arguments, call the library, print. Nothing else lives here.

Exit codes, the same for every command (``main`` is the only entry point; ``build``, ``run``,
``bench`` and ``export`` are registered from cli_engine.py and cli_torch.py and go through it too):

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
import dataclasses
import json
import logging
import os
import platform
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape as esc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dynashape import __version__
from dynashape.errors import DynashapeError

log = logging.getLogger("dynashape")

_RANGE_HELP = "shape range, e.g. input:1x3x[128..1024:32]x[128..2048:32] (min..max:step per axis)"
_EXPORT_HELP = "the shape the model was exported at, e.g. input:1x3x512x512 (default: recovered from the graph)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # one line, as for every user error; the usage is one --help away
        print(f"dynashape: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


_PIPE_WIDTH = 140  # no terminal and no COLUMNS: logs and files are read in wide viewers and grepped
_MIN_WIDTH = 40


def _console(args: argparse.Namespace) -> Console:
    """The width is COLUMNS when set (rich reads it), else the terminal's; piped or captured
    output with neither is laid out at 140 columns, so lines a user greps for are not wrapped
    for a terminal that is not there. Tables change layout below their readable width."""
    # with --json, human output goes to stderr so stdout stays machine-readable
    stderr = bool(getattr(args, "json", False))
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    columns = os.environ.get("COLUMNS", "")
    width = console.width if console.is_terminal or columns.isdigit() else _PIPE_WIDTH
    if width != console.width or width < _MIN_WIDTH:
        console = Console(stderr=stderr, highlight=False, soft_wrap=False, width=max(width, _MIN_WIDTH))
    return console


def _progress(console: Console, label: str) -> tuple[Progress, Callable[[int, int, Any], None]]:
    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task("", total=None)

    def update(done: int, total: int, shapes: Any) -> None:
        from dynashape.shapes import format_shapes

        progress.update(task, completed=done, total=total, description=format_shapes(shapes) if shapes else "")

    return progress, update


def _load(path: str) -> Any:
    from dynashape.model import load_model

    return load_model(path)


def _export_shape(args: argparse.Namespace, model: Any, runs: bool = True) -> Any:
    """--export-shape, parsed and checked against the model's inputs (``runs``: its memory too)."""
    from dynashape.inputs import validate_model_shapes
    from dynashape.model import input_names
    from dynashape.shapes import parse_shapes

    if not getattr(args, "export_shape", None):
        return None
    shapes = parse_shapes(args.export_shape, input_names(model))
    validate_model_shapes(model, shapes={"--export-shape": shapes}, runs=runs)
    return shapes


def _ranges(args: argparse.Namespace, model: Any, runs: bool = True) -> Any:
    """--range, parsed and checked against the model's inputs (``runs``: a sweep's memory too)."""
    from dynashape.inputs import validate_model_shapes
    from dynashape.model import input_names
    from dynashape.shapes import parse_ranges

    if not getattr(args, "range", None):
        return None
    ranges = parse_ranges(args.range, input_names(model))
    validate_model_shapes(model, ranges={"--range": ranges}, runs=runs)
    return ranges


# ---------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    console = _console(args)
    if args.list_rules:
        from dynashape.rules import rule_catalogue

        for rule_id, title in rule_catalogue():
            console.print(f"{rule_id}  {esc(title)}")
        return 0
    if not args.model:
        raise DynashapeError("check needs a MODEL.onnx (or --list-rules)")
    from dynashape.check import check_model
    from dynashape.report import lattice_table, print_findings

    model = _load(args.model)
    export_shape, ranges = _export_shape(args, model, runs=False), _ranges(args, model, runs=False)
    if args.heatmap:
        _check_heatmap_target(args.heatmap, args.model, model)
    report = check_model(model, export_shape=export_shape, ranges=ranges, path=args.model)
    findings = list(report.findings)
    # not the ONNX lattice: it is where the graph lacking the branch runs; the module's own valid
    # sizes are learned by exporting (a size it rejects is recorded and finer ones skipped)
    diff = _torch_differential(args, model) if getattr(args, "torch", None) else None
    if diff is not None:
        findings += diff.findings
    if args.json:
        data = report.to_json()
        data["findings"] = [f.to_json() for f in findings]
        if diff is not None:
            data["differential"] = diff.to_json()
        else:
            data["not_proven"] = _STATIC_ONLY
        print(json.dumps(data, indent=2, default=str))
    else:
        console.print(f"[bold]{esc(args.model)}[/]: export shape {esc(report.export_shape_text)}")
        print_findings(console, findings)
        if diff is not None:
            from dynashape.cli_torch import describe_exports

            for line in describe_exports(diff):
                console.print(esc(line))
        else:
            console.print(f"[yellow]not proven:[/] {esc(_STATIC_ONLY)}")
        if report.lattice:
            console.print(lattice_table(report.lattice, report.export_shape, report.export_shape_source != "unknown"))
        for out, axes in report.outputs_follow.items():
            broken = [a for a, ok in axes.items() if not ok]
            if broken:
                axes_text = esc(", ".join(broken))
                console.print(f"[yellow]output {esc(repr(out))} keeps one size on {axes_text} whatever the "
                              "input size (a size baked in, or an adaptive pool)[/]")
        if report.suggested_profile:
            console.print(f"suggested profile (on the lattice): {esc(report.suggested_profile.as_options())}")
        for note in report.notes:
            console.print(f"[yellow]note:[/] {esc(note)}")
    if args.heatmap:
        from dynashape.doctor import write_doctor_heatmap

        path = write_doctor_heatmap(model, report.fixed_model, report, Path(args.heatmap))
        console.print(f"heat map: {esc(str(path))}")
    return 1 if findings else 0


def _check_heatmap_target(target: str, model_path: str, model: Any) -> None:
    """Before the analysis: the heat map needs a writable path and two dynamic spatial axes."""
    from dynashape.model import check_output_path, graph_inputs

    check_output_path(target, [model_path])
    if not any(len([a for a in i.dynamic_axes if a >= 2]) >= 2 for i in graph_inputs(model)):
        raise DynashapeError("--heatmap maps the valid sizes over two dynamic spatial axes, and no input of "
                             f"{model_path} has two; leave out --heatmap")


_STATIC_ONLY = ("static check of the ONNX graph only: a Python `if` on a size that the export did not take "
                "leaves no trace in it; run `check MODEL --torch FILE.py:FACTORY` to export at shapes chosen to "
                "take other branches, or `verify --reference torch:FILE.py:FACTORY`")


def _torch_differential(args: argparse.Namespace, model: Any) -> Any:
    from dynashape.cli_torch import torch_differential

    return torch_differential(args, model)


# ---------------------------------------------------------------- fix


def cmd_fix(args: argparse.Namespace) -> int:
    console = _console(args)
    from dynashape.fix import fix_model, write_fixed
    from dynashape.inputs import require_ort_runnable
    from dynashape.model import check_output_path

    if not args.dry_run:
        if not args.output:
            raise DynashapeError("fix needs -o OUT.onnx (or --dry-run)")
        check_output_path(args.output, [args.model])
    model = _load(args.model)
    require_ort_runnable(model, "fix", args.model)  # its proofs run the original and the rewrite there
    export_shape, ranges = _export_shape(args, model), _ranges(args, model)
    reference = None
    if args.reference:
        from dynashape.verify import make_reference

        reference = make_reference(args.reference, model)
    try:
        result = fix_model(model, export_shape=export_shape, ranges=ranges,
                           pad_to=args.pad_to, reference=reference, reference_label=args.reference)
    finally:
        if reference is not None:
            reference.close()
    if not args.dry_run:
        write_fixed(result, args.output)
    errors_left = result.errors_left
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return 1 if errors_left else 0
    for line in result.applied:
        console.print(f"[green]fixed[/]   {esc(line)}")
    if result.pad_to:
        console.print(f"[green]padded[/]  inputs up to a multiple of {result.pad_to}, outputs cropped back "
                      "(not bit-exact near the bottom/right border)")
    for rb in result.rolled_back:
        console.print(f"[red]rolled back[/] {rb.rule} {esc(rb.node)}: {esc(rb.reason)}")
    rolled = {(rb.rule, rb.node) for rb in result.rolled_back}
    for f in result.unfixed:
        if (f.rule, f.node) not in rolled:
            console.print(f"[yellow]not fixed[/] {f.rule} {esc(f.node)}: {esc(f.fix or f.message)}")
    if result.export_proof:
        console.print(f"proof: {esc(_export_proof_text(result.export_proof))}")
    against = f"the original and {args.reference}" if result.reference else "the original"
    for p in result.other_proofs:
        style = {"same": "green", "repaired": "green", "worse": "red", "both fail": "red",
                 "both wrong": "red"}.get(p.verdict, "yellow")
        outs = "; ".join("x".join(map(str, v)) for v in p.output_shapes.values())
        console.print(f"proof: [{style}]{p.verdict}[/] at {esc(_fmt(p.shapes))} (original {p.original}, fixed "
                      f"{p.status}) -> {esc(outs or p.message)}")
    if result.other_proofs:
        console.print(f"proof: compared with {esc(against)} at {len(result.other_proofs) + 1} shapes")
        if not result.reference:
            console.print("proof: values unproven off the export shape; use --reference torch:FILE.py:FACTORY")
    if not result.applied and not result.pad_to:
        console.print("nothing to rewrite")
    if args.dry_run:
        console.print("dry run: nothing written")
    else:
        console.print(f"wrote {esc(args.output)}")
    if errors_left:
        rules = ", ".join(sorted({f.rule for f in errors_left}))
        console.print(f"[red]the {'fixed model' if not args.dry_run else 'model'} still has {len(errors_left)} "
                      f"error finding(s) ({rules}): it is not correct at every shape; see 'not fixed' above[/]")
        return 1
    return 0


def _export_proof_text(p: Any) -> str:
    """What the proof at the export shape showed (a ProofRun)."""
    from dynashape.shapes import format_shapes

    where = format_shapes(p.shapes)
    if p.verdict == "same":
        return f"the fixed model matches the original at the export shape {where} (max abs error {p.max_abs_error:.2e})"
    if p.verdict == "both fail":
        return (f"the original fails at {where} too ({p.message}): it is not the export shape; "
                "nothing was proven there (give --export-shape)")
    return f"at the export shape {where}: {p.verdict} ({p.message})"


def _fmt(shapes: Any) -> str:
    from dynashape.shapes import format_shapes

    return format_shapes(shapes)


# ---------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace) -> int:
    console = _console(args)
    from dynashape.backends.ort import RunError
    from dynashape.check import check_model
    from dynashape.inputs import require_ort_runnable, validate_model_shapes
    from dynashape.model import require_dynamic
    from dynashape.report import sweep_table
    from dynashape.verify import (
        OnnxReference,
        default_ranges,
        known_export_shape,
        make_reference,
        output_follow_check,
        sweep_shapes,
        verify,
    )

    _check_tolerances(args)
    model = _load(args.model)
    require_dynamic(model, args.model)
    if args.backend == "ort":
        require_ort_runnable(model, "verify", args.model)
    given_ranges = _ranges(args, model)
    report = check_model(model, export_shape=_export_shape(args, model), ranges=given_ranges)
    ranges = given_ranges or default_ranges(model, report.export_shape, report.lattice)
    shapes = sweep_shapes(model, report.export_shape, ranges, report.lattice)
    validate_model_shapes(model, shapes={"the sweep": shapes})
    reference = make_reference(args.reference, model, model, report)
    if isinstance(reference, OnnxReference):
        require_ort_runnable(reference.model, "verify --reference onnx:", args.reference[len("onnx:"):])
    runner_factory = None
    if args.backend == "trt":
        runner_factory = _trt_runner_factory(model, shapes)
    diagnose = _diagnoser(args, model)
    progress, update = _progress(console, "verifying")
    try:
        with progress:
            sweep = verify(model, shapes, reference, runner_factory, lattice=report.lattice,
                           follow=output_follow_check(model, report.export_shape), atol=args.atol, rtol=args.rtol,
                           backend=args.backend, progress=update, diagnose=diagnose,
                           export_shape=known_export_shape(report))
    except RunError as exc:  # a failure at one shape is a result; one that escapes is the session's own
        raise DynashapeError(f"{args.model} does not load in ONNX Runtime: {exc}") from None
    if args.json:
        print(json.dumps(sweep.to_json(), indent=2, default=str))
    else:
        console.print(sweep_table(sweep))
        console.print(esc(sweep.summary()))
    return 0 if sweep.all_ok else 1


def _check_tolerances(args: argparse.Namespace) -> None:
    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if not value >= 0:  # also refuses nan
            raise DynashapeError(f"{flag} {value}: a tolerance is a number >= 0, e.g. {flag} 1e-4")


def _check_out_dir(path: str) -> None:
    """--out-dir: a directory, or a path where one can be made (not a file, not read-only)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DynashapeError(f"--out-dir {out} is a file; give a directory (it is created if missing)")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise DynashapeError(f"--out-dir {out}: {existing} is a file, so the directory cannot be made there")
    if not os.access(existing if str(existing) else ".", os.W_OK | os.X_OK):
        raise DynashapeError(f"--out-dir {out}: cannot write in {existing}; choose another --out-dir")


def _trt_runner_factory(model: Any, shapes: Any) -> Callable[[], Any]:
    from dynashape.trt_compat import tensorrt_available

    reason = tensorrt_available()
    if reason:
        raise DynashapeError(f"--backend trt: {reason}")
    from dynashape.backends.trt import engine_runner_for_shapes

    return lambda: engine_runner_for_shapes(model, shapes)


def _diagnoser(args: argparse.Namespace, model: Any) -> Callable[..., Any] | None:
    """First divergent node at failing shapes, against a torch or ONNX reference."""
    ref = args.reference or ""
    if not (ref.startswith("torch:") or ref.startswith("onnx:")):
        return None
    try:
        from dynashape.differential import first_divergent_node
    except ImportError:
        return None
    reference: Any = ref[len("torch:"):] if ref.startswith("torch:") else _load(ref[len("onnx:"):])

    def diagnose(shapes: Any, feeds: Any) -> Any:
        try:
            found = first_divergent_node(model, feeds, reference, atol=args.atol, rtol=args.rtol)
        except Exception:  # diagnosis is best effort; the sweep result stands without it
            log.debug("first-divergent-node search failed", exc_info=True)
            return None
        return None if found is None else dataclasses.asdict(found)

    return diagnose


# ---------------------------------------------------------------- doctor


def cmd_doctor(args: argparse.Namespace) -> int:
    console = _console(args)
    from dynashape.doctor import run_doctor
    from dynashape.report import lattice_table, print_findings, sweep_table

    model_path = args.model
    torch_spec = None
    _check_out_dir(args.out_dir)
    if model_path and not model_path.endswith(".onnx") and ":" in model_path:
        model_path, torch_spec = _export_for_doctor(args, console)
    export_shape = None
    ranges = None
    if model_path:
        from dynashape.inputs import require_ort_runnable

        model = _load(model_path)
        export_shape = _export_shape(args, model)
        ranges = _ranges(args, model)
        require_ort_runnable(model, "doctor", model_path)
    progress, update = _progress(console, "verifying")
    with progress:
        result = run_doctor(model_path, out_dir=args.out_dir, export_shape=export_shape, ranges=ranges,
                            reference=args.reference, torch_spec=torch_spec, tensorrt=not args.no_tensorrt,
                            heatmap=not args.no_heatmap, differential=not args.no_differential, progress=update)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return 0 if result.healthy else 1
    rep = result.check
    console.rule(f"[bold]dynashape doctor: {esc(result.model)}")
    console.print(f"export shape {esc(rep.export_shape_text)}")
    print_findings(console, [*rep.findings, *result.extra_findings])
    if result.differential is not None:
        from dynashape.cli_torch import describe_exports

        for line in describe_exports(result.differential):
            console.print(esc(line))
    if rep.lattice:
        console.print(lattice_table(rep.lattice, rep.export_shape, rep.export_shape_source != "unknown"))
    for line in result.fix.applied:
        console.print(f"[green]fixed[/]   {esc(line)}")
    for f in result.fix.unfixed:
        console.print(f"[yellow]not fixed[/] {f.rule} {esc(f.node)}: {esc(f.fix)}")
    if result.fix.export_proof:
        console.print(f"proof: {esc(_export_proof_text(result.fix.export_proof))}")
    console.print(f"fixed model: {esc(str(result.fix.path))}")
    console.print(sweep_table(result.sweep))
    console.print(f"verify ({esc(result.sweep.reference)}): {esc(result.sweep.summary())}")
    trt = result.tensorrt
    if trt.status == "built" and trt.sweep is not None:
        console.print(sweep_table(trt.sweep))
    else:
        console.print(f"TensorRT: {trt.status} ({esc(trt.reason)})")
    if result.heatmap:
        console.print(f"shape-validity heat map: {esc(str(result.heatmap))} ({esc(result.heatmap_sampled)})")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {esc(note)}")
    if result.proven:
        console.print("[green]proven:[/] every shape matched the reference and no hazard is left")
    elif result.healthy:
        console.print(f"[yellow]not proven:[/] nothing failed, but {esc(result.not_proven_reason())}")
    return 0 if result.healthy else 1


def _export_for_doctor(args: argparse.Namespace, console: Console) -> tuple[str, str]:
    from dynashape.export import export_spec_in_child
    from dynashape.inputs import undeclared_inputs, validate_shapes
    from dynashape.shapes import parse_shapes

    if not args.input:
        raise DynashapeError("doctor FILE.py:FACTORY needs --input NAME:SHAPE, e.g. --input input:1x3x512x512")
    spec = args.model
    shapes = parse_shapes(args.input)
    validate_shapes(undeclared_inputs(shapes), shapes={"--input": shapes})
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    export_spec_in_child(spec, shapes, path)  # the exporter's memory peak stays in the child
    console.print(f"exported {esc(spec)} at {esc(args.input)} -> {esc(str(path))}")
    return str(path), spec


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dynashape", description="Find, fix and prove the sizes an ONNX export baked in; "
                     "build TensorRT engines that are correct at every input shape in range.",
                     epilog="exit codes: 0 clean, 1 findings or failed shapes, 2 a usage or input error, "
                     "3 a bug in dynashape, 130 interrupted")
    parser.add_argument("--version", action="version", version=f"dynashape {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("check", help="find dynamic-shape hazards (exit 0 clean, 1 findings, 2 errors)")
    p.add_argument("model", nargs="?", metavar="MODEL.onnx")
    p.add_argument("--range", help=_RANGE_HELP)
    p.add_argument("--export-shape", help=_EXPORT_HELP)
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--list-rules", action="store_true", help="list the rules with a one-line description")
    p.add_argument("--heatmap", metavar="PATH", help="write a shape-validity heat map (.png or .html)")
    _add_torch_check_arguments(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("fix", help="rewrite the fixable hazards, prove the result, write it")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", metavar="OUT.onnx")
    p.add_argument("--export-shape", help=_EXPORT_HELP)
    p.add_argument("--pad-to", metavar="N|auto",
                   help="also pad inputs up to a multiple of N (auto: the lattice's) and crop outputs back; "
                        "padded borders are NOT bit-exact")
    p.add_argument("--range", help=_RANGE_HELP + " (the proofs run at its ends too)")
    p.add_argument("--reference", metavar="REF",
                   help="prove the rewrites against torch:FILE.py:FACTORY or onnx:PATH, not only the original")
    p.add_argument("--dry-run", action="store_true", help="report and prove, write nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fix)

    p = sub.add_parser("verify", help="run a sweep of shapes against a reference")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--range", help=_RANGE_HELP + " (default: S0/4 .. 2*S0 on the lattice)")
    p.add_argument("--export-shape", help=_EXPORT_HELP)
    p.add_argument("--reference", metavar="REF",
                   help="torch:FILE.py:FACTORY | torch:package.module:FACTORY | onnx:PATH | none (default none: "
                        "only output sizes are checked)")
    p.add_argument("--backend", choices=("ort", "trt"), default="ort")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("doctor", help="check, fix, verify (and build with TensorRT when present) end to end")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="MODEL.onnx or FILE.py:FACTORY / package.module:FACTORY (default: the built-in demo)")
    p.add_argument("--input", help="export shape for a PyTorch model, e.g. input:1x3x512x512")
    p.add_argument("--range", help=_RANGE_HELP)
    p.add_argument("--export-shape", help=_EXPORT_HELP)
    p.add_argument("--reference", help="as for verify (default: PyTorch when available, else the re-specialized "
                                       "original graph)")
    p.add_argument("--out-dir", default="dynashape-out", help="where the fixed model and reports go")
    p.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT build")
    p.add_argument("--no-heatmap", action="store_true")
    p.add_argument("--no-differential", action="store_true",
                   help="with a PyTorch model, skip exporting at second shapes to find Python branches on sizes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    # unconditional: these modules import without torch or TensorRT (both are imported lazily), so
    # an ImportError here is a bug and must be loud, not a command silently missing from the list
    from dynashape import cli_engine, cli_torch, cli_triton

    cli_engine.register(sub)
    cli_torch.register(sub)
    cli_triton.register(sub)
    return parser


def _add_torch_check_arguments(p: argparse.ArgumentParser) -> None:
    from dynashape.cli_torch import add_torch_check_arguments

    add_torch_check_arguments(p)


# ---------------------------------------------------------------- entry point and exit codes

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE

# optional dependencies a command imports lazily -> the extra that installs them
_EXTRAS = {"torch": "torch", "onnxscript": "torch", "tensorrt": "tensorrt",
           "cuda": "tensorrt", "matplotlib": "plot"}


def main(argv: Sequence[str] | None = None) -> int:
    """The only entry point of every command: its exit code (see the module's docstring)."""
    return run_guarded(lambda: _dispatch(argv))


def _dispatch(argv: Sequence[str] | None) -> int:
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


def run_guarded(command: Callable[[], int]) -> int:
    """Run a command; turn what escapes it into an exit code and at most one line (bugs: a traceback)."""
    try:
        return command()
    except BaseException as exc:  # the one place where every exception ends
        if isinstance(exc, SystemExit):
            raise
        if _interrupted(exc):
            print("dynashape: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, BrokenPipeError):  # `dynashape check --json | head`: the reader left
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        if isinstance(exc, DynashapeError):
            print(f"dynashape: error: {exc}", file=sys.stderr)
            return exc.exit_code
        missing = _missing_extra(exc)
        if missing:
            print(f"dynashape: error: {missing}", file=sys.stderr)
            return EXIT_USER_ERROR
        if not isinstance(exc, Exception):
            raise  # GeneratorExit and the like are not ours to swallow
        traceback.print_exc()
        print(f"dynashape: internal error: this is a bug in dynashape {__version__} (Python "
              f"{platform.python_version()}, {platform.system()}); please report it to the dynashape "
              "maintainers with the command line and the traceback above", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass


def _interrupted(exc: BaseException) -> bool:
    """A KeyboardInterrupt, or an exception raised while one was handled (Ctrl-C during a lazy
    `import onnxruntime` can surface as an ImportError whose __context__ is the interrupt)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        todo += [cur.__cause__, cur.__context__]
    return False


def _missing_extra(exc: BaseException) -> str | None:
    """One line for an optional dependency that is not installed (torch, TensorRT, matplotlib)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    extra = _EXTRAS.get(top)
    if extra is None:
        return None
    return f"this needs {top}, which is not installed: pip install 'dynashape[{extra}]'"


if __name__ == "__main__":
    raise SystemExit(main())
