"""`fix`: rewrite every fixable hazard and prove the result before anything is written.

Proof, in ONNX Runtime: the original and the rewritten model agree at the export shape (the only
shape where the original is right), and the rewritten model runs at shapes on its lattice away
from the export shape with outputs of the expected size. ``--pad-to`` wraps the model so inputs
are padded up to a multiple and following outputs are cropped back (not bit-exact at borders).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from dynashape.analysis import const_i64
from dynashape.backends.ort import OrtRunner, RunError
from dynashape.check import CheckReport, check_model
from dynashape.errors import DynashapeError
from dynashape.findings import Finding, Lattice
from dynashape.lattice import LatticeScanner, snap_up
from dynashape.model import graph_inputs, save_model
from dynashape.shapes import RangeMap, ShapeMap, format_shapes
from dynashape.testing import max_abs_error, random_feeds

log = logging.getLogger(__name__)

EXPORT_ATOL = 1e-4
EXPORT_RTOL = 1e-4


@dataclass
class ProofRun:
    shapes: ShapeMap
    status: str  # "ok" | "error"
    max_abs_error: float | None = None
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": format_shapes(self.shapes), "status": self.status,
            "max_abs_error": self.max_abs_error, "output_shapes": self.output_shapes, "message": self.message,
        }


@dataclass
class FixResult:
    report: CheckReport
    fixed: onnx.ModelProto
    applied: list[str]
    unfixed: list[Finding]
    export_proof: ProofRun | None
    other_proofs: list[ProofRun]
    pad_to: int | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "applied": self.applied,
            "not_fixed": [
                {"rule": f.rule, "node": f.node, "reason": f.fix or f.message} for f in self.unfixed
            ],
            "pad_to": self.pad_to,
            "proof": {
                "export_shape": self.export_proof.to_json() if self.export_proof else None,
                "other_shapes": [p.to_json() for p in self.other_proofs],
            },
        }


def fix_model(
    model: onnx.ModelProto,
    *,
    export_shape: ShapeMap | None = None,
    ranges: RangeMap | None = None,
    pad_to: int | str | None = None,
    report: CheckReport | None = None,
    prove: bool = True,
) -> FixResult:
    """Rewrite the fixable hazards of ``model`` (untouched) and prove the result."""
    report = report or check_model(model, export_shape=export_shape, ranges=ranges)
    fixed = report.fixed_model
    multiple = _pad_multiple(pad_to, report.lattice)
    if multiple:
        fixed = pad_wrap(fixed, multiple, report.export_shape)
    unfixed = [f for f in report.findings if not f.fixable and f.rule != "DS003"]
    if multiple is None:
        unfixed += [f for f in report.findings if f.rule == "DS003" and f.severity == "error"]
    export_proof = None
    others: list[ProofRun] = []
    if prove and (report.applied or multiple):
        session = FixedSession(fixed)  # one session for every proof: making one costs more than a run
        try:
            export_proof = prove_at_export(model, fixed, report.export_shape, session)
            if export_proof.status != "ok":
                raise DynashapeError(
                    f"the rewritten model does not match the original at the export shape "
                    f"{format_shapes(report.export_shape)} ({export_proof.message}); nothing was written. "
                    "This is a dynashape bug: please report it with the model"
                )
            lattice = report.lattice if multiple is None else {}
            for shapes in proof_shapes(model, report.export_shape, lattice):
                others.append(run_fixed(fixed, model, shapes, session))
        finally:
            session.close()
    return FixResult(report, fixed, list(report.applied), unfixed, export_proof, others, multiple)


def _pad_multiple(pad_to: int | str | None, lattice: Lattice) -> int | None:
    if pad_to is None:
        return None
    if isinstance(pad_to, str):
        if pad_to != "auto":
            try:
                pad_to = int(pad_to)
            except ValueError:
                raise DynashapeError(f"--pad-to takes a positive integer or 'auto', not {pad_to!r}") from None
        else:
            multiples = [lat.multiple for axes in lattice.values() for a, lat in axes.items() if a >= 2]
            m = max(multiples, default=1)
            if m <= 1:
                log.info("--pad-to auto: every size is already valid, no padding needed")
                return None
            return m
    if pad_to < 1:
        raise DynashapeError(f"--pad-to takes a positive integer or 'auto', not {pad_to}")
    return pad_to if pad_to > 1 else None


class FixedSession:
    """An ONNX Runtime session of the fixed model, made at its first run and kept for the next."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._runner = OrtRunner(model)
        self._active = False

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._active:
            self._runner.activate()  # a RunError here is raised again by the next run, as a new session would
            self._active = True
        return self._runner.infer(feeds)

    def close(self) -> None:
        if self._active:
            self._runner.deactivate()
            self._active = False


def _run_fixed_model(
    fixed: onnx.ModelProto, feeds: dict[str, np.ndarray], session: FixedSession | None
) -> dict[str, np.ndarray]:
    if session is not None:
        return session.infer(feeds)
    with OrtRunner(fixed) as r:
        return r.infer(feeds)


def prove_at_export(
    original: onnx.ModelProto, fixed: onnx.ModelProto, s0: ShapeMap, session: FixedSession | None = None
) -> ProofRun:
    """``session``: of ``fixed``, shared with the other proofs (else one is made here)."""
    feeds = random_feeds(original, s0, seed=1)
    try:
        with OrtRunner(original) as r:
            ref = r.infer(feeds)
    except RunError as exc:
        return ProofRun(s0, "error", message=f"the original model fails at its export shape: {exc}")
    try:
        out = _run_fixed_model(fixed, feeds, session)
    except RunError as exc:
        return ProofRun(s0, "error", message=f"the rewritten model fails: {exc}")
    err = max_abs_error(ref, out)
    scale = max((float(np.max(np.abs(v))) for v in ref.values() if np.size(v)), default=1.0)
    ok = err <= EXPORT_ATOL + EXPORT_RTOL * scale
    return ProofRun(
        s0, "ok" if ok else "error", err, {k: list(v.shape) for k, v in out.items()},
        "" if ok else f"max abs error {err:.3g}",
    )


def proof_shapes(model: onnx.ModelProto, s0: ShapeMap, lattice: Lattice) -> list[ShapeMap]:
    """A few shapes away from S0, on the lattice: larger, smaller and non-square."""
    shapes: list[ShapeMap] = []
    for scale_h, scale_w in ((1.5, 1.5), (0.5, 0.5), (0.75, 1.25)):
        s: ShapeMap = {}
        for info in graph_inputs(model):
            shape = list(s0[info.name])
            spatial = [a for a in info.dynamic_axes if not (a == 0 and info.rank >= 3)]
            for k, axis in enumerate(spatial):
                factor = scale_h if k == 0 else scale_w
                lat = lattice.get(info.name, {}).get(axis)
                size = max(1, round(shape[axis] * factor))
                shape[axis] = snap_up(size, lat) if lat else size
            s[info.name] = tuple(shape)
        if s != s0 and s not in shapes:
            shapes.append(s)
    return shapes


def run_fixed(
    fixed: onnx.ModelProto, original: onnx.ModelProto, shapes: ShapeMap, session: FixedSession | None = None
) -> ProofRun:
    feeds = random_feeds(original, shapes, seed=2)
    try:
        out = _run_fixed_model(fixed, feeds, session)
    except RunError as exc:
        where = f" at node {exc.node}" if exc.node else ""
        return ProofRun(shapes, "error", message=f"{exc}{where}")
    return ProofRun(shapes, "ok", None, {k: list(v.shape) for k, v in out.items()})


def pad_wrap(model: onnx.ModelProto, multiple: int, s0: ShapeMap) -> onnx.ModelProto:
    """Pad every dynamic spatial axis of each input up to ``multiple`` (zeros at the end) and crop
    the outputs that follow the input size back to it. Exact away from the bottom/right border."""
    scanner = LatticeScanner(model, s0)
    follow: dict[str, list[tuple[str, int]]] = {}
    for info in scanner.inputs:
        for axis in info.dynamic_axes:
            if axis >= 2:
                for out_name, j in scanner._following_outputs(info.name, axis):
                    follow.setdefault(out_name, []).append((info.name, j))
    m = ir.serde.deserialize_model(model)
    graph = m.graph
    first = next(iter(graph))
    opset = int(m.opset_imports.get("", 17))
    if opset < 11:
        raise DynashapeError("--pad-to needs opset 11 or newer")
    shapes_of: dict[str, ir.Value] = {}
    for info in graph_inputs(model):
        spatial = [a for a in info.dynamic_axes if a >= 2]
        if not spatial:
            continue
        x = next(v for v in graph.inputs if v.name == info.name)
        shape = ir.node("Shape", [x], name=f"pad_{info.name}_shape")
        shapes_of[info.name] = shape.outputs[0]
        dims = ir.node("Gather", [shape.outputs[0], const_i64(graph, f"pad_{info.name}_axes", spatial)],
                       attributes={"axis": 0}, name=f"pad_{info.name}_dims")
        mval = const_i64(graph, f"pad_{info.name}_multiple", [multiple])
        rem = ir.node("Mod", [dims.outputs[0], mval], name=f"pad_{info.name}_rem")
        need = ir.node("Sub", [mval, rem.outputs[0]], name=f"pad_{info.name}_need")
        extra = ir.node("Mod", [need.outputs[0], mval], name=f"pad_{info.name}_extra")
        ends = []
        for axis in range(info.rank):
            if axis in spatial:
                k = spatial.index(axis)
                g = ir.node("Gather", [extra.outputs[0], const_i64(graph, f"pad_{info.name}_k{k}", [k])],
                            attributes={"axis": 0}, name=f"pad_{info.name}_end{axis}")
                ends.append(g)
        begin = const_i64(graph, f"pad_{info.name}_begin", [0] * info.rank)
        pieces: list[ir.Value] = [begin]
        gi = iter(ends)
        for axis in range(info.rank):
            pieces.append(next(gi).outputs[0] if axis in spatial else const_i64(graph, f"pad_{info.name}_z{axis}", [0]))
        pads = ir.node("Concat", pieces, attributes={"axis": 0}, name=f"pad_{info.name}_pads")
        pad = ir.node("Pad", [x, pads.outputs[0]], attributes={"mode": "constant"}, name=f"pad_{info.name}")
        new_nodes = [shape, dims, rem, need, extra, *ends, pads, pad]
        for n in new_nodes:
            n.outputs[0].name = f"{n.name}_output"
        graph.insert_before(first, new_nodes)
        for use in list(x.uses()):
            if use.node is not shape and use.node is not pad:
                use.node.replace_input_with(use.idx, pad.outputs[0])
    for out_name, axes in follow.items():
        out = next(v for v in graph.outputs if v.name == out_name)
        in_name = axes[0][0]
        axis_list = [j for _, j in axes]
        ends_v = ir.node("Gather", [shapes_of[in_name], const_i64(graph, f"crop_{out_name}_axes", axis_list)],
                         attributes={"axis": 0}, name=f"crop_{out_name}_ends")
        starts = const_i64(graph, f"crop_{out_name}_starts", [0] * len(axis_list))
        axes_v = const_i64(graph, f"crop_{out_name}_axisidx", axis_list)
        crop = ir.node("Slice", [out, starts, ends_v.outputs[0], axes_v], name=f"crop_{out_name}")
        ends_v.outputs[0].name = f"crop_{out_name}_ends_output"
        graph.append(ends_v)
        graph.append(crop)
        idx = list(graph.outputs).index(out)
        out.name = f"{out_name}_padded"
        crop.outputs[0].name = out_name
        crop.outputs[0].type = out.type
        graph.outputs[idx] = crop.outputs[0]
    graph.sort()
    return ir.serde.serialize_model(m)


def write_fixed(result: FixResult, out: str | Path) -> Path:
    path = save_model(result.fixed, out)
    result.path = str(path)
    return path
