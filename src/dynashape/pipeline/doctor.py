"""`doctor`: check -> fix -> verify -> (TensorRT build + verify) end to end, on one model.

With no model it runs the built-in demo. The reference for the sweep is PyTorch eager when the
model came from a module (or is the demo) and torch is installed; otherwise the original graph
re-specialized at each shape. With a module, the module is also exported at second shapes
chosen to flip Python branches on sizes (:func:`dynashape.pipeline.differential.differential_export`):
its findings join the check's, and the shapes where a branch flips join the sweep.

What the result claims: :attr:`DoctorResult.healthy` means nothing failed (no wrong or failing
shape, no hazard left unfixed); :attr:`DoctorResult.proven` means, in addition, that every
shape's numbers matched an independent reference (PyTorch eager or another ONNX model). With
only an ONNX file the sweep compares the fixed graph with the original graph, which proves the
fix, not the model: the result says "not proven" and how to prove it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from dynashape.backends.trt import engine_runner_for_shapes
from dynashape.demo import demo_onnx_path, demo_torch_spec
from dynashape.errors import DynashapeError
from dynashape.export import export_spec_in_child
from dynashape.model import graph_inputs, lighten, load_model
from dynashape.pipeline.check import CheckReport, check_model
from dynashape.pipeline.differential import DifferentialResult, differential_export, export_and_compare_in_child
from dynashape.pipeline.fix import FixResult, fix_model, write_fixed
from dynashape.pipeline.verify import (
    SweepResult,
    default_ranges,
    known_export_shape,
    make_reference,
    sweep_shapes,
    verify,
)
from dynashape.report import grid_sizes, validity_grid, write_heatmap
from dynashape.shapes import RangeMap, ShapeMap, format_shapes, parse_shapes
from dynashape.trt.compat import tensorrt_available

log = logging.getLogger(__name__)


@dataclass
class TensorRTStep:
    status: str  # "built" | "skipped" | "failed"
    reason: str = ""
    sweep: SweepResult | None = None
    engine_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "reason": self.reason, "engine": self.engine_path}
        if self.sweep is not None:
            out["verify"] = self.sweep.to_json()
        return out


@dataclass
class DoctorResult:
    model: str
    check: CheckReport
    fix: FixResult
    sweep: SweepResult
    tensorrt: TensorRTStep
    heatmap: str | None = None
    extra_findings: list[Any] = field(default_factory=list)  # from the differential export
    differential: Any = None  # DifferentialResult when the model came from a module
    heatmap_sampled: str = ""  # what the heat map probed: "15x15 sizes of input: axis 2 112..336 every 16, ..."
    notes: list[str] = field(default_factory=list)  # steps that could not run, and why

    @property
    def healthy(self) -> bool:
        """Nothing failed: no wrong or failing shape, no hazard left unfixed (a proof only if :attr:`proven`)."""
        return self.sweep.all_ok and not self.fix.unfixed and not self.extra_findings

    @property
    def proven(self) -> bool:
        """Healthy, and every shape's numbers matched an independent reference (PyTorch or ONNX)."""
        return self.healthy and self.sweep.proven

    def not_proven_reason(self) -> str:
        """Why the result is no proof that the model is right ("" when it is one)."""
        if self.proven:
            return ""
        if not self.healthy:
            return "some shapes failed or hazards are left"
        return self.sweep.compared_with()

    def to_json(self) -> dict[str, Any]:
        data = self.check.to_json()
        data["findings"] = [f.to_json() for f in [*self.check.findings, *self.extra_findings]]
        data["healthy"] = self.healthy
        data["proven"] = self.proven
        if not self.proven:
            data["not_proven"] = self.not_proven_reason()
        if self.differential is not None:
            data["differential"] = self.differential.to_json()
        data["fixed"] = {"path": self.fix.path, "applied": self.fix.applied,
                         "not_fixed": self.fix.to_json()["not_fixed"], "proof": self.fix.to_json()["proof"]}
        data["verify"] = self.sweep.to_json()
        data["tensorrt"] = self.tensorrt.to_json()
        data["heatmap"] = self.heatmap
        data["heatmap_sampled"] = self.heatmap_sampled or None
        data["notes"] = self.notes
        return data


def tensorrt_step(fixed: onnx.ModelProto, shapes: list[ShapeMap], reference_factory: Callable[[], Any],
                  lattice: Any, progress: Callable[[int, int, ShapeMap], None] | None = None,
                  export_shape: ShapeMap | None = None) -> TensorRTStep:
    """Build an engine over the sweep's shapes and verify it, when TensorRT and a GPU are here."""
    reason = tensorrt_available()
    if reason:
        return TensorRTStep("skipped", reason)

    try:
        sweep = verify(fixed, shapes, reference_factory(), lambda: engine_runner_for_shapes(fixed, shapes),
                       lattice=lattice, backend="tensorrt", atol=1e-3, rtol=1e-3, progress=progress,
                       export_shape=export_shape)
    except Exception as exc:  # a TensorRT build failure is a result of the doctor, not a crash
        log.debug("TensorRT step failed", exc_info=True)
        return TensorRTStep("failed", str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
    return TensorRTStep("built", "", sweep)


@dataclass(frozen=True)
class ExportedModule:
    """A module exported for the doctor (:func:`export_module_for_doctor`)."""

    path: str
    spec: str
    differential: DifferentialResult | None = None  # its exports lightened; None: not run or none possible
    differential_note: str = ""  # why there is no differential result, when it was asked for


def export_module_for_doctor(spec: str, input_shapes: ShapeMap, out_dir: str | Path,
                             differential: bool = True) -> ExportedModule:
    """Export ``spec`` to ``OUT_DIR/model.onnx`` in a child process, with the differential export
    there too when asked for: the exporter's memory peak (several copies of the weights) ends
    before the doctor loads the model, and the module is built and traced once for both."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    if not differential:
        export_spec_in_child(spec, input_shapes, path)
        return ExportedModule(str(path), spec)
    result, why = export_and_compare_in_child(spec, input_shapes, path)
    return ExportedModule(str(path), spec, result, why)


def run_doctor(
    model_path: str | None,
    *,
    out_dir: str | Path,
    export_shape: ShapeMap | None = None,
    ranges: RangeMap | None = None,
    reference: str | None = None,
    torch_spec: str | None = None,
    heatmap: bool = True,
    tensorrt: bool = True,
    differential: bool = True,
    progress: Callable[[int, int, ShapeMap], None] | None = None,
    model: onnx.ModelProto | None = None,
    exported: ExportedModule | None = None,
) -> DoctorResult:
    """``model``: the file at ``model_path``, when the caller has loaded it already.
    ``exported``: the module export (and differential export) that made ``model_path``
    (:func:`export_module_for_doctor`); without it, a ``torch_spec``'s differential export runs
    here, in this process."""

    if exported is not None:
        model_path, torch_spec = exported.path, exported.spec
    if model_path is None:
        path = demo_onnx_path()
        if torch_spec is None and _torch_available():
            torch_spec = demo_torch_spec()
    else:
        path = Path(model_path)
    original = model if model is not None else load_model(path)  # a bad model is refused before anything is written
    del model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = check_model(original, export_shape=export_shape, ranges=ranges, path=str(path))
    result = fix_model(original, report=report)
    fixed_path = out / f"{path.stem}.fixed.onnx"
    write_fixed(result, fixed_path)
    if reference is None:
        reference = f"torch:{torch_spec}" if torch_spec else "respecialized"
    if reference != "respecialized":
        # from here on the original graph is only looked at, never run: its weights would be a
        # second copy beside the fixed model's for the rest of the doctor
        original = lighten(original)
    lattice = report.lattice
    rng = ranges or default_ranges(original, report.export_shape, lattice)
    shapes = sweep_shapes(original, report.export_shape, rng, lattice)
    diff: DifferentialResult | None = None
    notes: list[str] = []
    if exported is not None and differential:
        diff = exported.differential
        if diff is None and exported.differential_note:
            notes.append(f"no differential export: {exported.differential_note}")
            log.warning("no differential export: %s", exported.differential_note)
    elif torch_spec and differential:
        try:
            diff = _differential(torch_spec, original, report)
        except DynashapeError as exc:
            # a module that runs at its export size only (ViT's fixed position embeddings) has no
            # second export to compare: the doctor goes on with what the ONNX graph shows
            notes.append(f"no differential export: {exc}")
            log.warning("no differential export: %s", exc)
    if diff is not None:
        # where a branch flips the exported graph is wrong: verify there against PyTorch too
        for b in diff.branches:
            for shape in b.flips_at:
                flip = parse_shapes(shape)
                if flip not in shapes:
                    shapes.append(flip)

    def make_ref() -> Any:
        return make_reference(reference, result.fixed, original, report)

    log.info("verifying %d shapes against %s", len(shapes), reference)
    s0 = known_export_shape(report)
    sweep = verify(result.fixed, shapes, make_ref(), lattice=lattice, progress=progress, export_shape=s0)
    trt = tensorrt_step(result.fixed, shapes, make_ref, lattice, progress, s0) if tensorrt else TensorRTStep(
        "skipped", "disabled with --no-tensorrt")
    heat = None
    if heatmap and _heatmap_input(original) is not None:
        heat = write_doctor_heatmap(original, result.fixed, report, out / f"{path.stem}.validity.png")
    # a value the check found too is fixed (or reported) there; what only the export shows stays
    known = {f.node for f in report.findings}
    extra = [f for f in diff.findings if f.rule == "DS009" or f.node not in known] if diff is not None else []
    return DoctorResult(str(path), report, result, sweep, trt, str(heat.path) if heat else None, extra, diff,
                        heat.sampled if heat else "", notes)


def _differential(torch_spec: str, original: onnx.ModelProto, report: CheckReport) -> DifferentialResult:
    """Export the module at S0 and at second shapes chosen to flip size branches."""
    dynamic: dict[str, list[int]] | None = {i.name: i.dynamic_axes for i in graph_inputs(original)}
    if dynamic is not None and not any(dynamic.values()):
        dynamic = None
    log.info("differential export of %s to find Python branches on sizes", torch_spec)
    # not report.lattice: that is where the graph lacking the branch runs, which is the question
    return differential_export(torch_spec, report.export_shape, dynamic=dynamic)


def _heatmap_input(model: onnx.ModelProto) -> Any:

    return next((i for i in graph_inputs(model) if len([a for a in i.dynamic_axes if a >= 2]) >= 2), None)


@dataclass(frozen=True)
class HeatMap:
    """A written heat map and what it sampled (the grid is capped, see ``report.grid_sizes``)."""

    path: Path
    sampled: str

    def __str__(self) -> str:
        return f"{self.path} ({self.sampled})"


def write_doctor_heatmap(original: onnx.ModelProto, fixed: onnx.ModelProto, report: CheckReport,
                         target: Path) -> HeatMap:
    """The validity of the original and the fixed graph over the input's two spatial axes,
    from S0/2 to 3*S0/2, at most ``HEATMAP_MAX_POINTS`` sizes per axis, probed one at a time."""

    info = _heatmap_input(original)
    if info is None:
        raise DynashapeError("a heat map needs an input with two dynamic spatial axes (N, C, H, W); "
                             "this model has none")
    axes = tuple(a for a in info.dynamic_axes if a >= 2)[:2]
    s0 = report.export_shape[info.name]
    rows = grid_sizes(max(8, s0[axes[0]] // 2), s0[axes[0]] * 3 // 2)
    cols = grid_sizes(max(8, s0[axes[1]] // 2), s0[axes[1]] * 3 // 2)
    grids = [
        validity_grid(original, report.export_shape, info.name, (axes[0], axes[1]), rows, cols, "as exported"),
        validity_grid(fixed, report.export_shape, info.name, (axes[0], axes[1]), rows, cols, "after dynashape fix"),
    ]
    sampled = f"{grids[0].sampled()}; as exported and after the fix"
    log.info("heat map: %s", sampled)
    return HeatMap(write_heatmap(grids, target), sampled)


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["DoctorResult", "ExportedModule", "export_module_for_doctor", "format_shapes", "run_doctor"]
