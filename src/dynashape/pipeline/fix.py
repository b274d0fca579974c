"""`fix`: rewrite every fixable hazard and prove the result before anything is written.

The rewrites are the rules' ``rewrite(builder, node, plan)`` (``dynashape/rules/``), run by the pass
manager in ``dynashape/pipeline/passes.py``; ``check`` runs those passes on a working copy (it must see the
graph as the fixes leave it) and hands the rewritten model over in its report. This module proves
that model against the original, rolls back a rewrite that makes it worse, and writes it.

Proof, in ONNX Runtime, side by side with the original: the two agree at the export shape (the
only shape where the original is right by construction), and at shapes away from it (larger,
smaller, non-square, a larger batch, the ends of the user's range) the rewritten model is never
worse: where the original ran, the rewritten model runs too; with a reference (PyTorch eager or
another ONNX model), where the original was right the rewritten model is right. A rewrite that
breaks that is rolled back and reported, never written. Without a reference, outputs that differ
from the original's at the same shapes are reported as unproven ("changed"), not as correct.
``--pad-to`` wraps the model so inputs are padded up to a multiple and following outputs are
cropped back (not bit-exact at borders).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnx_ir as ir

from dynashape.analysis.context import const_i64
from dynashape.analysis.lattice import LatticeScanner, snap_down, snap_up
from dynashape.backends.ort import OrtRunner, RunError
from dynashape.errors import DynashapeError
from dynashape.feeds import max_abs_error, random_feeds
from dynashape.findings import Finding, Lattice
from dynashape.model import graph_inputs, save_model
from dynashape.pipeline.check import CheckReport, check_model
from dynashape.rules.base import Rule
from dynashape.shapes import RangeMap, ShapeMap, format_shapes

log = logging.getLogger(__name__)

EXPORT_ATOL = 1e-4
EXPORT_RTOL = 1e-4


@dataclass
class ProofRun:
    """The fixed model at one shape, side by side with the original (and a reference when given).

    ``verdict``: "same" (both ran and agree), "repaired" (the original failed or was wrong there
    and the fixed model matches the reference), "runs" (the original failed, the fixed model runs,
    no reference to prove its values), "changed" (both ran and differ, with no reference to say
    which is right: the fix is unproven there), "worse" (the original ran,
    and was right where a reference says so; the fixed model fails or is wrong: never written),
    "both fail" (neither runs) or "both wrong" (neither matches the reference)."""

    shapes: ShapeMap
    status: str  # the fixed model: "ok" | "error"
    max_abs_error: float | None = None  # fixed against the original (or the reference)
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    message: str = ""
    original: str = ""  # the original model: "ok" | "error" | "wrong" (against the reference)
    verdict: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": format_shapes(self.shapes), "status": self.status,
            "max_abs_error": self.max_abs_error, "output_shapes": self.output_shapes, "message": self.message,
            "original": self.original, "verdict": self.verdict,
        }


@dataclass
class RollBack:
    """A rewrite taken back because it made the model worse at some shape."""

    rule: str
    node: str
    shapes: ShapeMap
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "node": self.node, "shape": format_shapes(self.shapes), "reason": self.reason}


class Reference(Protocol):
    """What ``fix`` needs of a reference (``dynashape.pipeline.verify.make_reference`` makes them)."""

    def outputs(self, shapes: ShapeMap, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None: ...


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
    rolled_back: list[RollBack] = field(default_factory=list)
    reference: str | None = None  # what the proofs were checked against besides the original

    @property
    def errors_left(self) -> list[Finding]:
        """Unfixed findings of error severity: the written model still fails somewhere."""
        return [f for f in self.unfixed if f.severity == "error"]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "applied": self.applied,
            "not_fixed": [
                {"rule": f.rule, "node": f.node, "severity": f.severity, "reason": f.fix or f.message}
                for f in self.unfixed
            ],
            "rolled_back": [r.to_json() for r in self.rolled_back],
            "pad_to": self.pad_to,
            "proof": {
                "reference": self.reference,
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
    reference: Reference | None = None,
    reference_label: str | None = None,
    rules: list[Rule] | None = None,
) -> FixResult:
    """Rewrite the fixable hazards of ``model`` (untouched) and prove the result.

    The fix is monotone: the original and the fixed model run side by side at the export shape
    and at shapes drawn from ``ranges`` or the lattice (a larger batch included). A rewrite that
    makes any of them worse than the original is found (bisecting the rewrites in the order they
    were applied), rolled back and reported, and the rest proven again."""
    report = report or check_model(model, export_shape=export_shape, ranges=ranges, rules=rules)
    if export_shape is None and report.export_shape_source in ("given", "metadata"):
        export_shape = report.export_shape  # a re-check must start from the same S0
    multiple = _pad_multiple(pad_to, report.lattice)
    rolled: list[RollBack] = []
    exclude: dict[tuple[str, str], str] = {}
    export_proof: ProofRun | None = None
    others: list[ProofRun] = []
    fixed = _wrapped(report, multiple)
    if prove and (report.applied or multiple):
        judge = _Judge(model, report.export_shape, reference)
        shapes = [report.export_shape, *proof_shapes(model, report.export_shape,
                                                       report.lattice if multiple is None else {}, ranges)]
        budget = 2 * len(_rewritten(report)) + 2  # each round takes one rewrite back
        while True:
            proofs = judge.prove(fixed, shapes)
            export_proof, others = proofs[0], proofs[1:]
            worse = [p for p in proofs if p.verdict == "worse"]
            if not worse:
                break
            budget -= 1
            if not _rewritten(report) or budget < 0:
                judge.close()
                raise DynashapeError(
                    f"the rewritten model is worse than the original at {format_shapes(worse[0].shapes)} "
                    f"({worse[0].message or 'wrong'}) and no rewrite left to take back explains it; nothing "
                    "was written. This is a dynashape bug: please report it with the model"
                    + (" (or try without --pad-to)" if multiple else "")
                )
            key = _culprit(model, report, exclude, judge, [p.shapes for p in worse],
                           export_shape=export_shape, ranges=ranges, rules=rules)
            first = worse[0]
            reason = (f"rolled back: it made the model worse at {format_shapes(first.shapes)} "
                      f"({first.message or 'wrong'}) where the original "
                      f"{'was right' if judge.has_reference(first.shapes) else 'ran'}")
            log.warning("%s %s: %s", key[0], key[1], reason)
            rolled.append(RollBack(key[0], key[1], first.shapes, reason))
            exclude[key] = reason
            report = check_model(model, export_shape=export_shape, ranges=ranges, rules=rules, exclude=exclude)
            multiple = _pad_multiple(pad_to, report.lattice)
            fixed = _wrapped(report, multiple)
        judge.close()
    unfixed = [f for f in report.findings if not f.fixable and f.rule != "DS003"]
    if multiple is None:
        unfixed += [f for f in report.findings if f.rule == "DS003" and f.severity == "error"]
    return FixResult(report, fixed, list(report.applied), unfixed, export_proof, others, multiple,
                     rolled_back=rolled, reference=reference_label if reference is not None else None)


def _wrapped(report: CheckReport, multiple: int | None) -> onnx.ModelProto:
    return pad_wrap(report.fixed_model, multiple, report.export_shape) if multiple else report.fixed_model


def _rewritten(report: CheckReport) -> list[tuple[str, str]]:
    """(rule, node) of every finding that was rewritten, in the order the rules ran."""
    return [(f.rule, f.node) for f in report.findings if f.fixable and f.rule != "DS003"]


def _culprit(
    model: onnx.ModelProto, report: CheckReport, exclude: dict[tuple[str, str], str], judge: _Judge,
    worse: list[ShapeMap], *, export_shape: ShapeMap | None, ranges: RangeMap | None, rules: list[Rule] | None,
) -> tuple[str, str]:
    """The first rewrite, in the order they were applied, after which ``worse`` shapes get worse.

    With nothing applied the model is the original, never worse than itself; with everything
    applied it is worse: bisect on how many of the rewrites to keep."""
    keys = _rewritten(report)
    lo, hi = 0, len(keys)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = dict(exclude)
        trial.update({k: "bisecting" for k in keys[mid:]})
        candidate = check_model(model, export_shape=export_shape, ranges=ranges, rules=rules, exclude=trial,
                                scan_lattice=False)
        if any(p.verdict == "worse" for p in judge.prove(candidate.fixed_model, worse)):
            hi = mid
        else:
            lo = mid
    return keys[hi - 1]


class _Judge:
    """Runs the original once per shape (and the reference, when there is one) and compares a fixed
    model with them.

    Without a reference, a shape that differs from S0 only in the batch still has one: the original
    run item by item at S0 (where it is right by construction), stacked. Rows of an inference
    model do not see each other, so that is what a larger batch must give."""

    def __init__(self, original: onnx.ModelProto, s0: ShapeMap, reference: Reference | None) -> None:
        self.original = original
        self.s0 = s0
        self.reference = reference
        self._original: dict[str, tuple[str, dict[str, np.ndarray] | None, str]] = {}
        self._reference: dict[str, dict[str, np.ndarray] | None] = {}
        self._runner: OrtRunner | None = None
        self._reference_trusted: bool | None = None

    def has_reference(self, shapes: ShapeMap) -> bool:
        return self._run_reference(shapes) is not None

    def close(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def _feeds(self, shapes: ShapeMap) -> dict[str, np.ndarray]:
        return random_feeds(self.original, shapes, seed=1)

    def _run_original(self, shapes: ShapeMap) -> tuple[str, dict[str, np.ndarray] | None, str]:
        key = format_shapes(shapes)
        if key not in self._original:
            if self._runner is None:
                self._runner = OrtRunner(self.original)
                try:
                    self._runner.activate()
                except RunError as exc:
                    raise DynashapeError(f"the input model does not load in ONNX Runtime: {exc}") from None
            try:
                self._original[key] = ("ok", self._runner.infer(self._feeds(shapes)), "")
            except RunError as exc:
                self._original[key] = ("error", None, str(exc))
        return self._original[key]

    def _run_reference(self, shapes: ShapeMap) -> dict[str, np.ndarray] | None:
        if self.reference is None:
            return self._batch_reference(shapes)
        if self._reference_trusted is None and shapes != self.s0:
            self._run_reference(self.s0)  # trust it only where it agrees with the original at S0
        key = format_shapes(shapes)
        if key not in self._reference:
            try:
                self._reference[key] = self.reference.outputs(shapes, self._feeds(shapes))
            except Exception as exc:  # a reference that cannot run a shape judges nothing there
                log.info("the reference fails at %s: %s", key, exc)
                self._reference[key] = None
        ref = self._reference[key]
        if shapes == self.s0 and self._reference_trusted is None:
            _, out, _ = self._run_original(shapes)
            self._reference_trusted = ref is not None and out is not None and _agree(out, ref, REFERENCE_RTOL)
            if not self._reference_trusted:
                log.warning("the reference disagrees with the original model at its export shape %s: it is not "
                            "the exported model (weights, seed, mode?); proofs compare with the original only", key)
        return ref if self._reference_trusted else self._batch_reference(shapes)

    def _batch_reference(self, shapes: ShapeMap) -> dict[str, np.ndarray] | None:
        """The original at S0 item by item, stacked, where ``shapes`` is S0 with a k-times batch."""
        key = "batch:" + format_shapes(shapes)
        if key in self._reference:
            return self._reference[key]
        self._reference[key] = None
        factor, batched = _batch_factor(self.original, self.s0, shapes)
        if factor is None:
            return None
        _, at_s0, _ = self._run_original(self.s0)
        b0 = self.s0[batched[0]][0]
        if at_s0 is None or any(v.ndim == 0 or v.shape[0] != b0 for v in at_s0.values()):
            return None  # an output without the batch in front: rows cannot be stacked
        feeds = self._feeds(shapes)
        assert self._runner is not None  # started by the run at S0
        parts: list[dict[str, np.ndarray]] = []
        try:
            for k in range(factor):
                chunk = {n: v[k * b0:(k + 1) * b0] if n in batched else v for n, v in feeds.items()}
                parts.append(self._runner.infer(chunk))
        except RunError:
            return None
        stacked = {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
        self._reference[key] = stacked
        return stacked

    def prove(self, fixed: onnx.ModelProto, shapes: list[ShapeMap]) -> list[ProofRun]:
        session = FixedSession(fixed)
        try:
            return [self._prove_one(session, s) for s in shapes]
        finally:
            session.close()

    def _prove_one(self, session: FixedSession, shapes: ShapeMap) -> ProofRun:
        o_status, o_out, _ = self._run_original(shapes)
        ref = self._run_reference(shapes)
        try:
            out = session.infer(self._feeds(shapes))
        except RunError as exc:
            where = f" at node {exc.node}" if exc.node and exc.node not in str(exc) else ""
            verdict = "both fail" if o_status == "error" else "worse"
            if verdict == "worse" and ref is not None and o_out is not None and not _agree(o_out, ref, REFERENCE_RTOL):
                verdict = "both wrong"
            return ProofRun(shapes, "error", message=f"{exc}{where}", original=o_status, verdict=verdict)
        out_shapes = {k: list(v.shape) for k, v in out.items()}
        if ref is not None:
            o_right = o_out is not None and _agree(o_out, ref, REFERENCE_RTOL)
            f_right = _agree(out, ref, REFERENCE_RTOL)
            original = o_status if o_out is None else ("ok" if o_right else "wrong")
            err = max_abs_error(ref, out)
            verdict = ("same" if o_right else "repaired") if f_right else ("worse" if o_right else "both wrong")
            against = ("the reference" if self.reference is not None and self._reference_trusted
                       else "the original run item by item at the export shape")
            msg = "" if f_right else (f"max abs error {err:.3g} against {against}" if np.isfinite(err)
                                      else f"output shapes differ from {against}'s")
            return ProofRun(shapes, "ok", err, out_shapes, msg, original, verdict)
        if o_out is None:
            return ProofRun(shapes, "ok", None, out_shapes, "runs where the original fails (values unproven without a "
                            "reference)", o_status, "runs")
        err = max_abs_error(o_out, out)
        if _agree(o_out, out, EXPORT_RTOL):
            return ProofRun(shapes, "ok", err, out_shapes, "", o_status, "same")
        if shapes == self.s0:  # at the export shape the original is right by construction
            return ProofRun(shapes, "ok", err, out_shapes, f"max abs error {err:.3g}", o_status, "worse")
        return ProofRun(shapes, "ok", err, out_shapes,
                        "outputs differ from the original's (unproven without a reference)", o_status, "changed")


def _batch_factor(model: onnx.ModelProto, s0: ShapeMap, shapes: ShapeMap) -> tuple[int | None, list[str]]:
    """k and the batched inputs, when ``shapes`` is S0 with k times the batch (k > 1) and nothing else."""
    factor: int | None = None
    batched: list[str] = []
    for info in graph_inputs(model):
        a, b = s0[info.name], shapes[info.name]
        if tuple(a[1:]) != tuple(b[1:]):
            return None, []
        if a[0] == b[0]:
            continue
        if info.rank < 3 or 0 not in info.dynamic_axes or a[0] < 1 or b[0] % a[0]:
            return None, []
        if factor not in (None, b[0] // a[0]):
            return None, []
        factor = b[0] // a[0]
        batched.append(info.name)
    return (factor, batched) if factor and factor > 1 else (None, [])


REFERENCE_RTOL = 1e-3  # relative to the reference's largest |value|: another runtime, another order of sums


def _agree(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float) -> bool:
    err = max_abs_error(a, b)
    scale = max((float(np.max(np.abs(v))) for v in b.values() if np.size(v)), default=1.0)
    return err <= EXPORT_ATOL + rtol * scale


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


def proof_shapes(
    model: onnx.ModelProto, s0: ShapeMap, lattice: Lattice, ranges: RangeMap | None = None
) -> list[ShapeMap]:
    """Shapes away from S0 where the fixed model must be no worse than the original: larger,
    smaller and non-square spatial sizes, a larger batch, and the ends of the user's range;
    on the lattice where one is known, inside the range where one is given."""
    infos = graph_inputs(model)
    shapes: list[ShapeMap] = []

    def add(s: ShapeMap) -> None:
        if s != s0 and s not in shapes:
            shapes.append(s)

    def place(name: str, axis: int, size: int) -> int:
        lat = lattice.get(name, {}).get(axis)
        size = snap_up(size, lat) if lat else size
        shape_range = ranges.get(name) if ranges else None
        if shape_range is not None and axis < len(shape_range.axes):
            ar = shape_range.axes[axis]
            size = min(max(size, ar.min), ar.max)
            if lat and not lat.contains(size):
                size = snap_down(size, lat) if snap_down(size, lat) >= ar.min else size
        return max(1, size)

    for scale_h, scale_w in ((1.5, 1.5), (0.5, 0.5), (0.75, 1.25)):
        s: ShapeMap = {}
        for info in infos:
            shape = list(s0[info.name])
            spatial = [a for a in info.dynamic_axes if not (a == 0 and info.rank >= 3)]
            for k, axis in enumerate(spatial):
                factor = scale_h if k == 0 else scale_w
                shape[axis] = place(info.name, axis, round(shape[axis] * factor))
            s[info.name] = tuple(shape)
        add(s)
    batched: ShapeMap = {}
    for info in infos:
        shape = list(s0[info.name])
        if 0 in info.dynamic_axes and info.rank >= 3:
            shape[0] = place(info.name, 0, shape[0] + 1)
        batched[info.name] = tuple(shape)
    add(batched)
    if ranges:
        for end in ("min", "max"):
            s = {}
            for info in infos:
                shape = list(s0[info.name])
                shape_range = ranges.get(info.name)
                for axis in info.dynamic_axes:
                    if shape_range is not None and axis < len(shape_range.axes):
                        shape[axis] = place(info.name, axis, getattr(shape_range.axes[axis], end))
                s[info.name] = tuple(shape)
            if _elements(s) <= _MAX_PROOF_ELEMENTS * max(1, _elements(s0)):
                add(s)
    return shapes


_MAX_PROOF_ELEMENTS = 8  # a proof shape holds at most this many times the export shape's elements


def _elements(shapes: ShapeMap) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


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
