"""The `dynashape` command: parse arguments, call the library, print. Nothing else lives here.

Exit codes: 0 success / clean, 1 findings (check) or failed shapes (verify, doctor), 2 usage or
input errors (one line on stderr, no traceback). As with Polygraphy and trtexec, 0 means nothing
failed, not that the numbers were proven: `verify` without --reference torch:/onnx: and `doctor`
on an ONNX file alone print (and put in --json) that the outputs were not compared with PyTorch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
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
        self.print_usage(sys.stderr)
        print(f"dynashape: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _console(args: argparse.Namespace) -> Console:
    # with --json, human output goes to stderr so stdout stays machine-readable
    stderr = bool(getattr(args, "json", False))
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, soft_wrap=False, width=140)
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


def _export_shape(args: argparse.Namespace, model: Any) -> Any:
    from dynashape.model import input_names
    from dynashape.shapes import parse_shapes

    return parse_shapes(args.export_shape, input_names(model)) if args.export_shape else None


def _ranges(args: argparse.Namespace, model: Any) -> Any:
    from dynashape.model import input_names
    from dynashape.shapes import parse_ranges

    return parse_ranges(args.range, input_names(model)) if getattr(args, "range", None) else None


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
    report = check_model(model, export_shape=_export_shape(args, model), ranges=_ranges(args, model), path=args.model)
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


_STATIC_ONLY = ("static check of the ONNX graph only: a Python `if` on a size that the export did not take "
                "leaves no trace in it; run `check MODEL --torch FILE.py:FACTORY` to export at shapes chosen to "
                "take other branches, or `verify --reference torch:FILE.py:FACTORY`")


def _torch_differential(args: argparse.Namespace, model: Any) -> Any:
    try:
        from dynashape.cli_torch import torch_differential
    except ImportError as exc:
        raise DynashapeError(f"--torch needs the PyTorch extra: pip install 'dynashape[torch]' ({exc})") from None
    return torch_differential(args, model)


# ---------------------------------------------------------------- fix


def cmd_fix(args: argparse.Namespace) -> int:
    console = _console(args)
    from dynashape.fix import fix_model, write_fixed
    from dynashape.model import check_output_path

    if not args.dry_run:
        if not args.output:
            raise DynashapeError("fix needs -o OUT.onnx (or --dry-run)")
        check_output_path(args.output, [args.model])
    model = _load(args.model)
    reference = None
    if args.reference:
        from dynashape.verify import make_reference

        reference = make_reference(args.reference, model)
    try:
        result = fix_model(model, export_shape=_export_shape(args, model), ranges=_ranges(args, model),
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
    from dynashape.check import check_model
    from dynashape.report import sweep_table
    from dynashape.verify import default_ranges, make_reference, output_follow_check, sweep_shapes, verify

    model = _load(args.model)
    report = check_model(model, export_shape=_export_shape(args, model), ranges=_ranges(args, model))
    ranges = _ranges(args, model) or default_ranges(model, report.export_shape, report.lattice)
    shapes = sweep_shapes(model, report.export_shape, ranges, report.lattice)
    reference = make_reference(args.reference, model, model, report)
    runner_factory = None
    if args.backend == "trt":
        runner_factory = _trt_runner_factory(model, shapes)
    diagnose = _diagnoser(args, model)
    progress, update = _progress(console, "verifying")
    with progress:
        sweep = verify(model, shapes, reference, runner_factory, lattice=report.lattice,
                       follow=output_follow_check(model, report.export_shape), atol=args.atol, rtol=args.rtol,
                       backend=args.backend, progress=update, diagnose=diagnose)
    if args.json:
        print(json.dumps(sweep.to_json(), indent=2, default=str))
    else:
        console.print(sweep_table(sweep))
        console.print(esc(sweep.summary()))
    return 0 if sweep.all_ok else 1


def _trt_runner_factory(model: Any, shapes: Any) -> Callable[[], Any]:
    try:
        from dynashape.trt_compat import tensorrt_available
    except ImportError:
        raise DynashapeError("--backend trt: the TensorRT backend is not installed") from None
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
    if model_path and not model_path.endswith(".onnx") and ":" in model_path:
        model_path, torch_spec = _export_for_doctor(args, console)
    export_shape = None
    ranges = None
    if args.export_shape or args.range:
        model = _load(model_path) if model_path else None
        if model is not None:
            export_shape = _export_shape(args, model)
            ranges = _ranges(args, model)
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
        console.print(f"shape-validity heat map: {esc(str(result.heatmap))}")
    if result.proven:
        console.print("[green]proven:[/] every shape matched the reference and no hazard is left")
    elif result.healthy:
        console.print(f"[yellow]not proven:[/] nothing failed, but {esc(result.not_proven_reason())}")
    return 0 if result.healthy else 1


def _export_for_doctor(args: argparse.Namespace, console: Console) -> tuple[str, str]:
    try:
        from dynashape.export import export_module, load_module
    except ImportError as exc:
        raise DynashapeError(f"doctor FILE.py:FACTORY needs PyTorch: pip install 'dynashape[torch]' ({exc})") from None
    from dynashape.model import save_model
    from dynashape.shapes import parse_shapes

    if not args.input:
        raise DynashapeError("doctor FILE.py:FACTORY needs --input NAME:SHAPE, e.g. --input input:1x3x512x512")
    spec = args.model
    shapes = parse_shapes(args.input)
    module = load_module(spec)
    exported = export_module(module, shapes, None)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    save_model(exported.model, path)
    console.print(f"exported {esc(spec)} at {esc(args.input)} -> {esc(str(path))}")
    return str(path), spec


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dynashape", description=__doc__.splitlines()[0] if __doc__ else None)
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

    for module in ("dynashape.cli_engine", "dynashape.cli_torch"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        mod.register(sub)
    return parser


def _add_torch_check_arguments(p: argparse.ArgumentParser) -> None:
    try:
        from dynashape.cli_torch import add_torch_check_arguments
    except ImportError:
        return
    add_torch_check_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except DynashapeError as exc:
        print(f"dynashape: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dynashape: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
