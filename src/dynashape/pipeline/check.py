"""`check`: find the hazards of an ONNX model, and the lattice of sizes it runs at once fixed.

The rules look at the graph as the fixes leave it (a frozen resize hides the true shapes of
everything after its join), so check runs the rewrite passes (``dynashape.pipeline.passes``: the rules'
``rewrite``, which ``fix`` proves and writes) on a working copy, and scans the lattice (DS003) of
that rewritten copy: it is the lattice the fixed model will have.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_ir as ir

from dynashape.analysis.context import Context, UncheckedRegion, second_shape, unchecked_region
from dynashape.analysis.exportshape import ExportShape, resolve_export_shape
from dynashape.analysis.lattice import LatticeScanner, check_ranges, suggest_profile
from dynashape.analysis.probe import Prober
from dynashape.errors import DynashapeError
from dynashape.findings import Finding, Lattice, Refusal, lattice_to_json
from dynashape.model import InputInfo, graph_inputs, require_dynamic
from dynashape.pipeline.passes import UNREADABLE, PassManager, RewritePolicy, shape_example
from dynashape.ranges import default_ranges
from dynashape.rules import DEFAULT_RULES
from dynashape.rules.base import Rule
from dynashape.shapes import Profile, RangeMap, ShapeMap, format_shapes

log = logging.getLogger(__name__)

_CONTROL_FLOW = {"If", "Loop", "Scan"}
__all__ = ["UNREADABLE", "CheckReport", "check_model", "unchecked_findings"]


@dataclass
class CheckReport:
    findings: list[Finding]
    lattice: Lattice
    export_shape: ShapeMap
    export_shape_source: str
    export_shape_note: str
    fixed_model: onnx.ModelProto
    applied: list[str] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outputs_follow: dict[str, dict[str, bool]] = field(default_factory=dict)
    suggested_profile: Profile | None = None
    path: str | None = None
    seconds: float = 0.0
    export_shape_confidence: str = ""  # see ExportShape.confidence
    # why the analysis (and so the lattice) covers only part of the graph: ops without shape
    # inference hide everything after them (DS017); empty when the whole graph was checked
    partial: str = ""

    @property
    def export_shape_text(self) -> str:
        """The export shape for the user: the shape and how it was found, or that it is unknown."""
        if self.export_shape_source == "unknown":
            return f"unknown ({self.export_shape_note}; analysed at {format_shapes(self.export_shape)})"
        return f"{format_shapes(self.export_shape)} ({self.export_shape_note})"

    @property
    def unfixed(self) -> list[Finding]:
        return [f for f in self.findings if not f.fixable]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.path,
            "export_shape": {k: list(v) for k, v in self.export_shape.items()},
            "export_shape_source": self.export_shape_source,
            "export_shape_note": self.export_shape_note,
            "export_shape_confidence": self.export_shape_confidence,
            "findings": [f.to_json() for f in self.findings],
            "lattice": lattice_to_json(self.lattice),
            "lattice_partial": self.partial or None,
            "outputs_follow_input": self.outputs_follow,
            "suggested_profile": self.suggested_profile.to_json() if self.suggested_profile else None,
            "notes": self.notes,
        }


def check_model(
    model: onnx.ModelProto,
    *,
    export_shape: ShapeMap | None = None,
    ranges: RangeMap | None = None,
    rules: list[Rule] | None = None,
    path: str | None = None,
    scan_lattice: bool = True,
    exclude: Mapping[tuple[str, str], str] | None = None,
) -> CheckReport:
    """Run every rule and the lattice scan; never modifies ``model``.

    ``exclude``: (rule id, node name) -> why that finding must not be rewritten (``fix`` rolls
    back a rewrite that made some shape worse this way); the finding stays, not fixable."""
    # check makes and drops millions of small protos, tuples and dicts, all freed by reference
    # counting; the cycle collector ran hundreds of times over them (a tenth of check's time on a
    # 5,000-node graph) for little. The few cycles made here (onnx_ir graphs) wait until it is on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _check_model(
            model, export_shape=export_shape, ranges=ranges, rules=rules, path=path, scan_lattice=scan_lattice,
            exclude=exclude or {},
        )
    finally:
        if collecting:
            gc.enable()


def _check_model(
    model: onnx.ModelProto,
    *,
    export_shape: ShapeMap | None,
    ranges: RangeMap | None,
    rules: list[Rule] | None,
    path: str | None,
    scan_lattice: bool,
    exclude: Mapping[tuple[str, str], str],
) -> CheckReport:
    start = time.perf_counter()
    require_dynamic(model, path or "model")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    notes = _unsupported_notes(work)
    region = unchecked_region(work)
    prober = Prober(work)
    work_ir = ir.serde.deserialize_model(work)
    es = resolve_export_shape(work, export_shape, prober, work_ir)
    log.info("export shape %s (%s)", format_shapes(es.shapes), es.note)
    inputs = graph_inputs(work)
    ctx = Context(
        model=work_ir, inputs=inputs, s0=es.shapes,
        s1=second_shape(es.shapes, inputs), proto=work, prober=prober,
    )
    # the rules report; the passes (dynashape.pipeline.passes) apply their rewrites to this working copy, so
    # that each rule and the lattice see the graph as fix will write it
    policy = RewritePolicy(export_shape_guessed=not es.known, exclude=exclude, shape_example=shape_example(inputs))
    rewritten = PassManager(rules if rules is not None else DEFAULT_RULES, policy).run(ctx)
    findings: list[Finding] = rewritten.findings
    refusals: list[Refusal] = rewritten.refusals
    applied: list[str] = rewritten.applied
    notes.extend(f"{r.rule} {r.reason} (node {r.node!r}); a malformed node, or a dynashape bug: please report it"
                 for r in refusals if r.reason.startswith(UNREADABLE))
    unanalysable = _unknown_and_inconsistent(es, prober, graph_inputs(work))
    if unanalysable is not None:
        findings.append(unanalysable)
        scan_lattice = False  # a lattice around a size the graph fails at says nothing
        es.note += "; needed: the graph fails at every size tried, so the rules could not look at it"
    else:
        es.note = _export_shape_verdict(es, findings, rules if rules is not None else DEFAULT_RULES, prober)
    findings.extend(unchecked_findings(region))
    fixed = rewritten.model
    if applied:  # unrewritten, it is the input (and the checker costs ~0.2 s on a 100 MB model)
        onnx.checker.check_model(fixed)
    lattice: Lattice = {}
    follows: dict[str, dict[str, bool]] = {}
    profile = None
    if scan_lattice:
        scanner = LatticeScanner(fixed, es.shapes, ctx.prober, ir_model=ctx.model)
        lattice, lattice_findings = scanner.scan()
        if region:
            for axes in lattice.values():
                for lat in axes.values():
                    lat.partial = region.describe()
        findings.extend(lattice_findings)
        notes.extend(scanner.problems)
        follows = scanner.following()
        if ranges:
            findings.extend(check_ranges(lattice, ranges))
        try:
            profile = suggest_profile(ranges or _default_ranges(fixed, es.shapes, lattice), lattice, es.shapes)
        except DynashapeError as exc:
            log.info("no profile suggestion: %s", exc)
    return CheckReport(
        findings=findings, lattice=lattice, export_shape=es.shapes, export_shape_source=es.source,
        export_shape_note=es.note, fixed_model=fixed, applied=applied, refusals=refusals,
        notes=notes, outputs_follow=follows, suggested_profile=profile, path=path,
        seconds=time.perf_counter() - start, export_shape_confidence=es.confidence,
        partial=region.describe() if region else "",
    )


_MAX_UNCHECKED_FINDINGS = 8


def unchecked_findings(region: UncheckedRegion) -> list[Finding]:
    """DS017: one finding per op without shape inference that starts an unchecked region (the
    opaque ops after it are named in its message). Never a silent clean bill: no rule can see a
    hazard past such an op, and the lattice cannot see the joins and outputs there."""
    findings = []
    roots = list(region.roots)
    shown, rest = roots[:_MAX_UNCHECKED_FINDINGS], roots[_MAX_UNCHECKED_FINDINGS:]
    for k, root in enumerate(shown):
        covered = set(root.downstream)
        inner = sorted({o.qualified for o in region.opaque if o.node in covered})
        if k == len(shown) - 1 and rest:
            inner = sorted({*inner, *(r.qualified for r in rest)})
        few = ", ".join(root.downstream[:5]) + (f" and {len(root.downstream) - 5} more" if len(root.downstream) > 5
                                                 else "")
        after = f"the {len(root.downstream)} node(s) after it ({few})" if root.downstream else "no node after it"
        outs = (f"graph output(s) {', '.join(repr(o) for o in root.outputs[:6])}" if root.outputs
                else "no graph output")
        also = f"; inside it also: {', '.join(inner[:6])}" if inner else ""
        last = k == len(shown) - 1
        more = f"; {len(rest)} more op(s) like it start unchecked regions of their own" if last and rest else ""
        microsoft = root.domain == "com.microsoft"
        findings.append(Finding(
            rule="DS017", severity="warning", node=root.node, op=root.qualified, detected_by="static",
            message=(f"{root.qualified} has no ONNX shape inference: its outputs' shapes are unknown, so {after} and "
                     f"{outs} were NOT checked (a hazard there is not reported, the lattice is partial){also}{more}"),
            fixable=False, breaks_at="unknown (not analysed)",
            fix=("check the model as exported, before ONNX Runtime's optimizations fused standard ops into "
                 "com.microsoft ones" if microsoft else
                 "check the model before the custom op is inserted, or express the op in standard ONNX ops"),
            details={"domain": root.domain, "op_type": root.op_type, "unchecked_nodes": list(root.downstream),
                     "unchecked_outputs": list(root.outputs), "opaque_inside": inner},
        ))
    return findings


def _export_shape_verdict(es: ExportShape, findings: list[Finding], rules: list[Rule], prober: Prober) -> str:
    """The export shape's note, saying what its being unknown (or not consistent) cost."""
    note = es.note
    if es.known and not prober.at(es.shapes).ok:
        note += (f"; the model is not consistent there ({prober.at(es.shapes).failure}): "
                 "check --export-shape, every analysis depends on it")
    if es.known:
        return note
    needing = {r.id for r in rules if r.needs_export_shape}
    blocked = [f for f in findings if f.rule in needing and "the export shape is unknown" in f.fix]
    if not blocked:
        return f"{note}; not needed: no finding's fix depends on it"
    ids = ", ".join(sorted({f.rule for f in blocked}))
    return (f"{note}; {len(blocked)} finding(s) of {ids} could not be rewritten without it: give it with "
            f"--export-shape {shape_example(graph_inputs(prober.model))} (the sizes it was exported at) "
            "or the PyTorch module with --torch")


def _unknown_and_inconsistent(es: ExportShape, prober: Prober, inputs: list[InputInfo]) -> Finding | None:
    """With S0 unknown the rules look at a placeholder size; when the graph fails there (and at
    every size tried) they see nothing, and 'no hazards' would be a clean bill for a model that
    runs at one size only. That is an error finding of its own."""
    if es.known:
        return None
    failure = prober.at(es.shapes).failure
    if failure is None:
        return None
    return Finding(
        rule="DS003", severity="error", node=failure.node or "", op=failure.op or "", detected_by="lattice",
        message=(f"the graph fails at {format_shapes(es.shapes)} ({failure}) and at every other size tried, "
                 "and no baked constant pins the size it was exported at: it may hold at that size only, "
                 "and the rules could not look at it"),
        fixable=False, breaks_at=f"{format_shapes(es.shapes)} and the other sizes tried",
        fix=(f"give the export shape with --export-shape {shape_example(inputs)} (or the PyTorch module with "
             "--torch) and check again"),
    )


def _default_ranges(model: onnx.ModelProto, s0: ShapeMap, lattice: Lattice) -> RangeMap:
    return default_ranges(model, s0, lattice)


def _unsupported_notes(model: onnx.ModelProto) -> list[str]:
    notes = []
    ops = {n.op_type for n in model.graph.node}
    flow = sorted(ops & _CONTROL_FLOW)
    if flow:
        notes.append(f"the graph has control flow ({', '.join(flow)}): nodes inside their subgraphs are not checked")
    return notes
