"""The Python API: what each ``dynashape`` command does, as a function that returns what it prints.

``import dynashape`` exposes :func:`check`, :func:`fix`, :func:`verify`, :func:`build`, ``Engine``,
``Profile``, ``Finding`` and ``DynashapeError`` (this module is loaded on first use, so that the
package imports in milliseconds and never imports torch, onnxruntime or TensorRT).

Each function takes what a Python caller has: a path or an ``onnx.ModelProto`` (never modified),
shapes as the CLI writes them (``"input:1x3x512x512"``, ranges ``"input:1x3x[128..1024:32]x[128..2048:32]"``)
or as dicts (``{"input": (1, 3, 512, 512)}``; ranges ``{"input": "1x3x[128..1024:32]x[128..2048:32]"}``).
Bad input raises :class:`~dynashape.errors.DynashapeError` with one line saying what to do.

The policy the CLI applies lives here, so a caller gets the same behaviour: the shapes checked
against the model's inputs (and this machine's memory) before anything runs; `verify`'s default
range and reference; `build`'s hazard gate (:class:`BuildRefused` unless ``force``), its default
profile (from the export shape and the lattice), where its timing cache lives, and the set-up of
the profile planner.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from dynashape.backends import Runner
from dynashape.backends.ort import RunError
from dynashape.backends.trt import engine_runner_for_shapes
from dynashape.errors import EXIT_FINDINGS, DynashapeError
from dynashape.export import ExportResult, export_module, load_module
from dynashape.findings import Finding
from dynashape.inputs import (
    model_inputs,
    require_ort_runnable,
    undeclared_inputs,
    validate_model_shapes,
    validate_shapes,
)
from dynashape.model import check_output_path, graph_inputs, load_model, read_export_shape, require_dynamic, sha256_file
from dynashape.pipeline import doctor
from dynashape.pipeline.check import CheckReport, check_model
from dynashape.pipeline.differential import DifferentialResult, differential_export, first_divergent_node
from dynashape.pipeline.fix import FixResult, fix_model, write_fixed
from dynashape.pipeline.verify import (
    OnnxReference,
    SweepResult,
    default_ranges,
    known_export_shape,
    make_reference,
    output_follow_check,
    sweep_shapes,
)
from dynashape.pipeline.verify import verify as run_sweep
from dynashape.rules import DEFAULT_RULES, OTHER_RULES
from dynashape.shapes import (
    Profile,
    RangeMap,
    ShapeMap,
    ShapeRange,
    format_shape,
    make_profile,
    parse_ranges,
    parse_shapes,
)
from dynashape.trt import bench, engine, planning
from dynashape.trt import compat as trt_compat
from dynashape.trt.engine import BuildError, BuiltEngine, Engine, profile_from_lattice
from dynashape.trt.planning import ProfilePlan

log = logging.getLogger(__name__)

ModelArg = str | os.PathLike[str] | onnx.ModelProto
ShapesArg = str | Mapping[str, Sequence[int]]
RangesArg = str | Mapping[str, "ShapeRange | str"]
ProfileArg = Profile | tuple[ShapesArg, ShapesArg | None, ShapesArg]
ProgressFn = Callable[[int, int, ShapeMap], None]

STATIC_ONLY = ("static check of the ONNX graph only: a Python `if` on a size that the export did not take "
               "leaves no trace in it; run `check MODEL --torch FILE.py:FACTORY` to export at shapes chosen to "
               "take other branches, or `verify --reference torch:FILE.py:FACTORY`")


# ---------------------------------------------------------------- arguments a caller has


def _load(model: ModelArg) -> tuple[onnx.ModelProto, str | None]:
    """The model and its path (None when the caller handed a ModelProto)."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    return load_model(model), os.fspath(model)


def _label(path: str | None) -> str:
    return path if path is not None else "the model"


def _names(model: onnx.ModelProto) -> list[str]:
    return [i.name for i in graph_inputs(model)]


def _shapes(value: ShapesArg, names: Sequence[str] | None) -> ShapeMap:
    if isinstance(value, str):
        return parse_shapes(value, names)
    return parse_shapes(",".join(f"{name}:{format_shape(shape)}" for name, shape in value.items()), names)


def _ranges(value: RangesArg, names: Sequence[str]) -> RangeMap:
    if isinstance(value, str):
        return parse_ranges(value, names)
    out: RangeMap = {}
    for name, rng in value.items():
        if isinstance(rng, ShapeRange):
            out[name] = rng
        else:
            out.update(parse_ranges(f"{name}:{rng}", names))
    return out


def _model_shapes(model: onnx.ModelProto, export_shape: ShapesArg | None, ranges: RangesArg | None,
                  runs: bool) -> tuple[ShapeMap | None, RangeMap | None]:
    """``export_shape`` and ``ranges`` parsed and checked against the model's inputs (``runs``:
    against this machine's memory too, for a command that runs the model at them)."""
    names = _names(model)
    s0 = None if export_shape is None else _shapes(export_shape, names)
    if s0 is not None:
        validate_model_shapes(model, shapes={"--export-shape": s0}, runs=runs)
    rng = None if ranges is None else _ranges(ranges, names)
    if rng is not None:
        validate_model_shapes(model, ranges={"--range": rng}, runs=runs)
    return s0, rng


# ---------------------------------------------------------------- check


@dataclass(frozen=True)
class RuleInfo:
    """One rule of ``check --list-rules``: its id, what it finds, the file that holds it."""

    id: str
    title: str
    file: str


def list_rules() -> list[RuleInfo]:
    """Every rule, sorted by id, with the source file (relative to the package) that defines it."""
    package = Path(__file__).parent
    rows = []
    for rule in DEFAULT_RULES:
        module = __import__(type(rule).__module__, fromlist=["_"])
        rows.append(RuleInfo(rule.id, rule.title, Path(module.__file__ or "").relative_to(package).as_posix()))
    for rule_id, title in OTHER_RULES.items():
        rows.append(RuleInfo(rule_id, title, _OTHER_RULE_FILES.get(rule_id, "")))
    return sorted(rows, key=lambda r: (r.id, r.file, r.title))


# rules that are not graph-node rules: where their findings are made
_OTHER_RULE_FILES = {"DS003": "analysis/lattice.py", "DS017": "pipeline/check.py"}


@dataclass(frozen=True)
class CheckResult:
    """What `check` found: the static report and, with ``torch=``, the differential export."""

    report: CheckReport
    differential: DifferentialResult | None = None
    heatmap: Path | None = None

    @property
    def findings(self) -> list[Finding]:
        """The static findings, then those of the differential export."""
        extra = self.differential.findings if self.differential is not None else []
        return [*self.report.findings, *extra]

    @property
    def not_proven(self) -> str:
        """Why a clean result is not a proof ("" when the PyTorch module was exported at other shapes)."""
        return "" if self.differential is not None else STATIC_ONLY

    def to_json(self) -> dict[str, Any]:
        """The JSON `check --json` prints."""
        data = self.report.to_json()
        data["findings"] = [f.to_json() for f in self.findings]
        if self.differential is not None:
            data["differential"] = self.differential.to_json()
        else:
            data["not_proven"] = STATIC_ONLY
        return data


def check(
    model: ModelArg,
    *,
    export_shape: ShapesArg | None = None,
    ranges: RangesArg | None = None,
    torch: str | None = None,
    torch_input: ShapesArg | None = None,
    second_shape: ShapesArg | None = None,
    class_shapes: int = 3,
    exporter: str = "legacy",
    heatmap: str | os.PathLike[str] | None = None,
) -> CheckResult:
    """Find the dynamic-shape hazards of ``model`` (``check``); the model is not modified.

    ``export_shape``: the shape it was exported at (default: recovered from the graph);
    ``ranges``: the sizes to judge the lattice over. ``torch`` (``FILE.py:FACTORY``, needs
    PyTorch): also export that module at ``torch_input`` (default: the shape the model records),
    ``second_shape`` and up to ``class_shapes`` shapes that take other Python branches, and report
    every value that changed. ``heatmap`` (.png or .html): write a shape-validity heat map there.
    """
    onnx_model, path = _load(model)
    s0, rng = _model_shapes(onnx_model, export_shape, ranges, runs=False)
    if heatmap is not None:
        _check_heatmap_target(heatmap, path, onnx_model)
    report = check_model(onnx_model, export_shape=s0, ranges=rng, path=path)
    # not the ONNX lattice: it is where the graph lacking the branch runs; the module's own valid
    # sizes are learned by exporting (a size it rejects is recorded and finer ones skipped)
    diff = None
    if torch:
        diff = torch_differential(onnx_model, torch, torch_input=torch_input, second_shape=second_shape,
                                  class_shapes=class_shapes, exporter=exporter)
    written = None
    if heatmap is not None:
        written = doctor.write_doctor_heatmap(onnx_model, report.fixed_model, report, Path(heatmap)).path
    return CheckResult(report, diff, written)


def _check_heatmap_target(target: str | os.PathLike[str], path: str | None, model: onnx.ModelProto) -> None:
    """Before the analysis: the heat map needs a writable path and two dynamic spatial axes."""
    check_output_path(target, [path] if path is not None else [])
    label = _label(path)
    if not any(len([a for a in i.dynamic_axes if a >= 2]) >= 2 for i in graph_inputs(model)):
        raise DynashapeError("--heatmap maps the valid sizes over two dynamic spatial axes, and no input of "
                             f"{label} has two; leave out --heatmap")


def torch_differential(
    model: onnx.ModelProto,
    spec: str,
    *,
    torch_input: ShapesArg | None = None,
    second_shape: ShapesArg | None = None,
    class_shapes: int | None = 3,
    exporter: str = "legacy",
) -> DifferentialResult:
    """Export the PyTorch module ``spec`` at S0, S1 and the class shapes; what changed with the shape."""
    names = _names(model)
    s0 = _shapes(torch_input, names) if torch_input is not None else read_export_shape(model)
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
    s1 = _shapes(second_shape, names) if second_shape is not None else None
    validate_model_shapes(model, shapes={"--input": s0 if torch_input is not None else None, "--second-shape": s1})
    result = differential_export(
        spec, s0, dynamic=dynamic, exporter=exporter or "legacy", s1=s1,
        class_shapes=3 if class_shapes is None else max(0, class_shapes),
    )
    onnx_names = {n.name for n in model.graph.node}
    for f in result.findings:
        f.details["in_model"] = f.node in onnx_names
    return result


# ---------------------------------------------------------------- fix


def fix(
    model: ModelArg,
    output: str | os.PathLike[str] | None = None,
    *,
    export_shape: ShapesArg | None = None,
    ranges: RangesArg | None = None,
    pad_to: int | str | None = None,
    reference: str | None = None,
) -> FixResult:
    """Rewrite the fixable hazards, prove the result, and write it to ``output`` (None: a dry run).

    The proofs run the original and the rewrite in ONNX Runtime at the export shape and at the
    ends of ``ranges``; ``reference`` (``torch:FILE.py:FACTORY`` or ``onnx:PATH``) also proves the
    values. ``pad_to``: also pad inputs up to a multiple of N (``"auto"``: the lattice's) and crop
    the outputs back (not bit-exact near the border). ``result.errors_left`` lists what still fails.
    """
    path = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
    if output is not None:
        check_output_path(output, [path] if path is not None else [])
    onnx_model, path = _load(model)
    require_ort_runnable(onnx_model, "fix", _label(path))  # its proofs run the original and the rewrite there
    s0, rng = _model_shapes(onnx_model, export_shape, ranges, runs=True)
    ref = make_reference(reference, onnx_model) if reference else None
    try:
        result = fix_model(onnx_model, export_shape=s0, ranges=rng, pad_to=pad_to, reference=ref,
                           reference_label=reference)
    finally:
        if ref is not None:
            ref.close()
    if output is not None:
        write_fixed(result, Path(output))
    return result


# ---------------------------------------------------------------- verify


def verify(
    model: ModelArg,
    *,
    ranges: RangesArg | None = None,
    export_shape: ShapesArg | None = None,
    reference: str | None = None,
    backend: Literal["ort", "trt"] = "ort",
    atol: float = 1e-4,
    rtol: float = 1e-3,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Run ``model`` over a sweep of shapes chosen to catch shape faults, against ``reference``.

    ``ranges`` default to S0/4 .. 2*S0 on the lattice (batch 1..4). ``reference``:
    ``torch:FILE.py:FACTORY``, ``onnx:PATH`` or None (only output sizes are checked). ``backend``
    ``trt`` builds one TensorRT engine over the sweep. At failing shapes with a torch or ONNX
    reference, the first divergent node is searched (best effort). ``result.proven`` says whether
    the numbers were compared with an independent reference.
    """
    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if not value >= 0:  # also refuses nan
            raise DynashapeError(f"{flag} {value}: a tolerance is a number >= 0, e.g. {flag} 1e-4")
    onnx_model, path = _load(model)
    label = _label(path)
    require_dynamic(onnx_model, label)
    if backend == "ort":
        require_ort_runnable(onnx_model, "verify", label)
    s0, given_ranges = _model_shapes(onnx_model, export_shape, ranges, runs=True)
    report = check_model(onnx_model, export_shape=s0, ranges=given_ranges)
    sweep_ranges = given_ranges or default_ranges(onnx_model, report.export_shape, report.lattice)
    shapes = sweep_shapes(onnx_model, report.export_shape, sweep_ranges, report.lattice)
    validate_model_shapes(onnx_model, shapes={"the sweep": shapes})
    ref = make_reference(reference, onnx_model, onnx_model, report)
    if isinstance(ref, OnnxReference) and reference is not None:
        require_ort_runnable(ref.model, "verify --reference onnx:", reference[len("onnx:"):])
    runner_factory = _trt_runner_factory(onnx_model, shapes) if backend == "trt" else None
    try:
        return run_sweep(onnx_model, shapes, ref, runner_factory, lattice=report.lattice,
                         follow=output_follow_check(onnx_model, report.export_shape), atol=atol, rtol=rtol,
                         backend=backend, progress=progress, diagnose=_diagnoser(onnx_model, reference, atol, rtol),
                         export_shape=known_export_shape(report))
    except RunError as exc:  # a failure at one shape is a result; one that escapes is the session's own
        raise DynashapeError(f"{label} does not load in ONNX Runtime: {exc}") from None


def _trt_runner_factory(model: onnx.ModelProto, shapes: list[ShapeMap]) -> Callable[[], Runner]:
    reason = trt_compat.tensorrt_available()
    if reason:
        raise DynashapeError(f"--backend trt: {reason}")
    return lambda: engine_runner_for_shapes(model, shapes)


def _diagnoser(model: onnx.ModelProto, reference: str | None, atol: float,
               rtol: float) -> Callable[[ShapeMap, dict[str, Any]], dict[str, Any] | None] | None:
    """First divergent node at failing shapes, against a torch or ONNX reference."""
    ref = reference or ""
    if not (ref.startswith("torch:") or ref.startswith("onnx:")):
        return None
    against: Any = ref[len("torch:"):] if ref.startswith("torch:") else load_model(ref[len("onnx:"):])

    def diagnose(shapes: ShapeMap, feeds: dict[str, Any]) -> dict[str, Any] | None:
        try:
            found = first_divergent_node(model, feeds, against, atol=atol, rtol=rtol)
        except Exception:  # diagnosis is best effort; the sweep result stands without it
            log.debug("first-divergent-node search failed", exc_info=True)
            return None
        return None if found is None else asdict(found)

    return diagnose


# ---------------------------------------------------------------- doctor and export


def doctor_run(
    model: str | None = None,
    *,
    out_dir: str | os.PathLike[str] = "dynashape-out",
    torch_input: ShapesArg | None = None,
    export_shape: ShapesArg | None = None,
    ranges: RangesArg | None = None,
    reference: str | None = None,
    tensorrt: bool = True,
    heatmap: bool = True,
    differential: bool = True,
    progress: ProgressFn | None = None,
) -> tuple[doctor.DoctorResult, doctor.ExportedModule | None]:
    """check, fix, verify (and build with TensorRT when present) end to end, into ``out_dir``.

    ``model``: a path to an ONNX model, a ``FILE.py:FACTORY`` spec (exported at ``torch_input``
    first, in a child process), or None for the built-in demo. Returns the result and, for a
    PyTorch module, its export."""
    check_out_dir(out_dir)
    exported = None
    model_path = model
    if model_path and not model_path.endswith(".onnx") and ":" in model_path:
        if torch_input is None:
            raise DynashapeError("doctor FILE.py:FACTORY needs --input NAME:SHAPE, e.g. --input input:1x3x512x512")
        shapes = _shapes(torch_input, None)
        validate_shapes(undeclared_inputs(shapes), shapes={"--input": shapes})
        # the exporter's memory peak stays in a child process, with the differential export's
        exported = doctor.export_module_for_doctor(model_path, shapes, Path(out_dir), differential=differential)
        model_path = exported.path
    s0 = rng = None
    onnx_model = None
    if model_path:
        onnx_model = load_model(model_path)
        s0, rng = _model_shapes(onnx_model, export_shape, ranges, runs=True)
        require_ort_runnable(onnx_model, "doctor", model_path)
    handed = [onnx_model]  # handed over, not kept here: run_doctor drops its weights once it only reads the graph
    del onnx_model
    result = doctor.run_doctor(model_path, out_dir=Path(out_dir), export_shape=s0, ranges=rng, reference=reference,
                               tensorrt=tensorrt, heatmap=heatmap, differential=differential, progress=progress,
                               model=handed.pop(), exported=exported)
    return result, exported


def check_out_dir(path: str | os.PathLike[str]) -> None:
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


def export(
    module: str,
    input_shapes: ShapesArg,
    output: str | os.PathLike[str],
    *,
    dynamic: Sequence[str] | Mapping[str, Sequence[int]] | None = None,
    exporter: str = "legacy",
    opset: int | None = None,
) -> ExportResult:
    """Export the PyTorch module ``module`` (``FILE.py:FACTORY`` or ``package.module:FACTORY``) to
    ONNX at ``input_shapes`` with ``dynamic`` axes (``["input:0,2,3"]`` or ``{"input": [0, 2, 3]}``;
    default: every axis but the channels of 4-D inputs), written to ``output``; with the
    exporter's warnings, each a value possibly frozen at the export shape."""
    shapes = _shapes(input_shapes, None)
    validate_shapes(undeclared_inputs(shapes), shapes={"--input": shapes})
    if dynamic is None or isinstance(dynamic, Mapping):
        axes = None if dynamic is None else {k: list(v) for k, v in dynamic.items()}
    else:
        axes = parse_dynamic(list(dynamic), shapes)
    out = check_output_path(output, [])
    return export_module(load_module(module), shapes, axes, exporter=exporter, path=out, opset=opset)


# ---------------------------------------------------------------- build


class BuildRefused(DynashapeError):
    """`check` found hazards of severity error and ``force`` was not given: nothing was built."""

    exit_code = EXIT_FINDINGS

    def __init__(self, model: str, hazards: Sequence[Finding]) -> None:
        super().__init__(f"refusing to build {model}: `check` found {len(hazards)} hazard(s) that break it at "
                         "other input shapes")
        self.model = model
        self.hazards = list(hazards)


@dataclass(frozen=True)
class BuildSetup:
    """Everything decided before TensorRT runs (:func:`prepare_build`); :func:`run_build` builds it."""

    model: onnx.ModelProto
    source: str | None  # the model's path, recorded in the sidecar
    output: Path | None
    profiles: list[Profile]
    profile_source: Literal["given", "lattice", "static"]
    report: CheckReport | None  # None: no dynamic input, nothing to check
    findings: list[Finding]
    forced: list[Finding]  # hazards of severity error built anyway (``force``)
    timing_cache: Path | None
    fp16: bool = False
    workspace: int | None = None
    tactic_sources: str = trt_compat.DEFAULT_TACTIC_SOURCES
    plan: bool = False
    max_profiles: int | None = None
    target: float = planning.DEFAULT_TARGET
    probes: list[ShapeMap] = field(default_factory=list)


@dataclass(frozen=True)
class BuildResult:
    built: BuiltEngine
    path: Path | None  # where the engine was written (its sidecar beside it, PATH.json)
    plan: ProfilePlan | None
    setup: BuildSetup


def prepare_build(
    model: ModelArg,
    output: str | os.PathLike[str] | None = None,
    *,
    profiles: Sequence[ProfileArg] | None = None,
    fp16: bool = False,
    workspace: int | None = None,
    tactic_sources: str | None = trt_compat.DEFAULT_TACTIC_SOURCES,
    timing_cache: str | os.PathLike[str] | bool = True,
    force: bool = False,
    plan: bool = False,
    max_profiles: int | None = None,
    target: float = planning.DEFAULT_TARGET,
    probes: Sequence[ShapesArg] = (),
) -> BuildSetup:
    """Validate a build and decide what it builds; raises :class:`BuildRefused` at the hazard gate.

    ``profiles``: ``Profile`` objects or ``(min, opt, max)`` shapes (``opt`` may be None); none:
    one profile from the export shape and the lattice (batch 1..export, other axes export/4 ..
    export*2), or no shapes for a static model. ``plan``: plan the profiles by measurement over
    the first profile's range (at most ``max_profiles``; ``probes``: the shapes to measure).
    ``timing_cache``: True for the default file (one per model, TensorRT version and GPU type in
    ``$DYNASHAPE_CACHE_DIR`` or ``~/.cache/dynashape``), False for none, or a path.
    """
    onnx_model, path = _load(model)
    label = _label(path)
    out = None
    if output is not None:
        out = check_output_path(output, [path] if path is not None else [])
        if out.suffix.lower() == ".onnx":
            raise DynashapeError(
                f"{out}: an engine is not an ONNX model; name it e.g. {out.with_suffix('.engine')}"
            )
    tactics = trt_compat.parse_tactic_sources(tactic_sources)  # a typo fails before the slow parts
    inputs = graph_inputs(onnx_model)
    names = [i.name for i in inputs]
    given = [_profile(p, names) for p in profiles or []]
    probe_shapes = [_shapes(p, names) for p in probes]
    declared = model_inputs(onnx_model)
    bounds = {f"--{key}": [{name: getattr(p, key) for name, p in prof} for prof in given]
              for key in ("min", "opt", "max")}
    validate_shapes(declared, shapes=bounds, runs=False)  # the engine is built, not run, at these
    validate_shapes(declared, shapes={"--probes": probe_shapes})
    # before the hazard gate: a user without TensorRT learns that first, not after a list of hazards
    reason = trt_compat.tensorrt_available()
    if reason is not None:
        raise DynashapeError(reason)

    report = None
    if any(i.dynamic_axes for i in inputs):
        report = check_model(onnx_model, export_shape=None, ranges=None, path=path)
    findings = list(report.findings) if report is not None else []
    errors = [f for f in findings if f.severity == "error"]
    if errors and not force:
        raise BuildRefused(label, errors)
    if plan and report is None:
        raise DynashapeError("--profiles auto: the model has no dynamic input, so there is nothing to plan")
    source: Literal["given", "lattice", "static"] = "given"
    if not given:
        if report is None:
            given, source = [Profile()], "static"  # static model: TensorRT needs no shapes
        else:
            given, source = [profile_from_lattice(inputs, report.export_shape, report.lattice)], "lattice"
    return BuildSetup(
        model=onnx_model, source=path, output=out, profiles=given, profile_source=source, report=report,
        findings=findings, forced=errors, timing_cache=_timing_cache(timing_cache, onnx_model, path),
        fp16=fp16, workspace=workspace, tactic_sources=tactics.text, plan=plan, max_profiles=max_profiles,
        target=target, probes=probe_shapes,
    )


def _profile(value: ProfileArg, names: Sequence[str]) -> Profile:
    if isinstance(value, Profile):
        return value
    lo, mid, hi = value
    return make_profile(_shapes(lo, names), _shapes(mid, names) if mid is not None else None, _shapes(hi, names))


def _model_sha256(model: onnx.ModelProto, path: str | None) -> str:
    return sha256_file(path) if path is not None else hashlib.sha256(model.SerializeToString()).hexdigest()


def _timing_cache(value: str | os.PathLike[str] | bool, model: onnx.ModelProto, path: str | None) -> Path | None:
    if value is False:
        return None
    if value is not True:
        return Path(value)
    env = trt_compat.runtime_env()
    cache = planning.default_timing_cache(_model_sha256(model, path), env.tensorrt_version, env.compute_capability)
    cache.parent.mkdir(parents=True, exist_ok=True)
    return cache


def run_build(setup: BuildSetup, progress: Callable[[str], None] | None = None) -> BuildResult:
    """Build the engine ``setup`` describes (planning its profiles first when asked) and write it
    with its sidecar to ``setup.output``. Raises ``BuildError`` with TensorRT's lines on failure."""
    cache = str(setup.timing_cache) if setup.timing_cache is not None else None
    profile_plan = None
    # the path when there is one: TensorRT's parser finds external weights beside it
    model: str | onnx.ModelProto = setup.source if setup.source is not None else setup.model
    if not setup.plan:
        built = engine.build_engine(model, setup.profiles, fp16=setup.fp16, workspace=setup.workspace,
                                    timing_cache=cache, tactic_sources=setup.tactic_sources, progress=progress)
    else:
        built, profile_plan = _plan(setup, model, cache, progress)
    built.info.source_path = setup.source
    built.info.plan = profile_plan
    if setup.output is not None:
        built.save(setup.output)
    return BuildResult(built, setup.output, profile_plan, setup)


def _plan(setup: BuildSetup, model: str | onnx.ModelProto, cache: str | None,
          progress: Callable[[str], None] | None) -> tuple[BuiltEngine, ProfilePlan]:
    """Plan the profiles by measurement over the first profile's range; the final engine and the plan."""
    multiples: dict[tuple[str, int], int] = {}
    if setup.report is not None:
        for name, axes in setup.report.lattice.items():
            for axis, lat in axes.items():
                multiples[(name, int(axis))] = int(lat.multiple)
    sha = _model_sha256(setup.model, setup.source)
    store = planning.default_cache_dir(sha) / "measurements.json"
    measurer = bench.TrtMeasurer(
        model,
        fp16=setup.fp16, workspace=setup.workspace, tactic_sources=setup.tactic_sources,
        timing_cache=cache, store=store, progress=progress,
    )
    profile_plan = planning.plan_profiles(
        setup.profiles[0], measurer, probes=setup.probes or None, target=setup.target,
        max_profiles=setup.max_profiles, multiples=multiples, progress=progress,
    )
    return measurer.final_engine, profile_plan


def build(
    model: ModelArg,
    output: str | os.PathLike[str] | None = None,
    *,
    profiles: Sequence[ProfileArg] | None = None,
    fp16: bool = False,
    workspace: int | None = None,
    tactic_sources: str | None = trt_compat.DEFAULT_TACTIC_SOURCES,
    timing_cache: str | os.PathLike[str] | bool = True,
    force: bool = False,
    plan: bool = False,
    max_profiles: int | None = None,
    target: float = planning.DEFAULT_TARGET,
    probes: Sequence[ShapesArg] = (),
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build a TensorRT engine (``build``; needs TensorRT and a GPU): :func:`prepare_build` (the
    hazard gate: :class:`BuildRefused` unless ``force``; default profile; timing cache), then
    :func:`run_build`. Load the result with ``Engine.load(output)`` or ``result.built.load()``."""
    setup = prepare_build(model, output, profiles=profiles, fp16=fp16, workspace=workspace,
                          tactic_sources=tactic_sources, timing_cache=timing_cache, force=force, plan=plan,
                          max_profiles=max_profiles, target=target, probes=probes)
    return run_build(setup, progress)


__all__ = [
    "STATIC_ONLY",
    "BuildError",
    "BuildRefused",
    "BuildResult",
    "BuildSetup",
    "CheckResult",
    "Engine",
    "RuleInfo",
    "build",
    "check",
    "check_out_dir",
    "doctor_run",
    "export",
    "fix",
    "list_rules",
    "parse_dynamic",
    "prepare_build",
    "run_build",
    "torch_differential",
    "verify",
]
