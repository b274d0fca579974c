"""`verify`: run a model over a sweep of shapes chosen to catch shape faults, against a reference.

The sweep has the export shape, the range's min and max, non-square shapes, batch > 1, a shape in
the middle of the lattice and, when the range holds them, sizes off the lattice. Its size grows
with the number of faults to look for, not with the product of the axes.

References:
* ``torch:FILE.py:FACTORY`` or ``torch:package.module:FACTORY``: PyTorch eager at every shape;
* ``onnx:PATH``: another ONNX model run at every shape;
* ``respecialized``: the original graph with each baked constant recomputed for the shape (the
  numbers come from the original ops, the sizes from shape probing) — what re-exporting at that
  shape would give, without torch;
* ``none``: only checks that the model runs and that outputs that follow the input do.

What a sweep proves depends on the reference, and the result says so: a row is ``ok`` only
when its numbers matched an independent reference (PyTorch eager or another ONNX model);
``same`` when they matched the original graph re-specialized per shape (this proves a fix kept
what the graph computes, not that the graph is what the PyTorch model computes: a Python
branch on a size that the export did not take is absent from both); ``ran`` when no numbers
were compared (it ran, and outputs that follow the input size at S0 follow it). ``wrong`` and
``error`` are failures whatever the reference.

A reference that disagrees with the model at the export shape itself is not the exported model
(other weights: an unseeded random init; a seed; train instead of eval mode; preprocessing): the
sweep says so (:attr:`SweepResult.reference_mismatch`), and the numbers that differ at other shapes
are ``untrusted``, not ``wrong`` (a shape where the model fails to run is still an ``error``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from dynashape.analysis.lattice import LatticeScanner
from dynashape.analysis.probe import Prober
from dynashape.backends import Runner
from dynashape.backends.ort import OrtRunner, RunError
from dynashape.backends.torch import TorchRunner, load_module
from dynashape.errors import DynashapeError
from dynashape.feeds import random_feeds
from dynashape.findings import Lattice
from dynashape.model import graph_inputs, load_model
from dynashape.pipeline.check import CheckReport
from dynashape.ranges import default_ranges
from dynashape.shapes import AxisRange, RangeMap, ShapeMap, format_shapes

log = logging.getLogger(__name__)


@dataclass
class ShapeResult:
    shapes: ShapeMap
    status: str  # "ok" | "same" | "ran" | "wrong" | "error" | "untrusted" (see the module docstring)
    max_abs_error: float | None = None
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    message: str = ""
    node: str | None = None
    on_lattice: bool | None = None
    divergent: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": format_shapes(self.shapes),
            "status": self.status,
            "max_abs_error": self.max_abs_error,
            "message": self.message,
            "node": self.node,
            "output_shapes": self.output_shapes,
            "on_lattice": self.on_lattice,
            "first_divergent_node": self.divergent,
        }


# what matching each kind of reference proves, and the row status it gives
PROOF_INDEPENDENT = "independent"  # PyTorch eager or another ONNX model: the numbers are proven
PROOF_SELF = "self"  # the original graph re-specialized: the fix agrees with the graph it came from
PROOF_NONE = "none"  # no numbers compared: it runs and output sizes follow the input
_PASS_STATUS = {PROOF_INDEPENDENT: "ok", PROOF_SELF: "same", PROOF_NONE: "ran"}
UNTRUSTED = "untrusted"  # numbers differ, but the reference already differs at the export shape
NOT_THE_EXPORTED_MODEL = (
    "the reference is not the exported model: it has other weights (a factory that builds a randomly initialised "
    "module without torch.manual_seed, or another seed or checkpoint), runs in train mode (dropout, batch-norm "
    "statistics) instead of eval, or preprocesses its input differently; so the verdicts at the other shapes "
    "cannot be trusted. Build the reference with the exported weights (seed the factory as the export did, or "
    "load the checkpoint), call .eval(), and verify again")
HOW_TO_PROVE = ("prove the numbers with --reference torch:FILE.py:FACTORY (PyTorch eager at every shape), "
                "or `check --torch FILE.py:FACTORY` to export at other shapes and find Python branches on sizes")


@dataclass
class SweepResult:
    results: list[ShapeResult]
    reference: str
    backend: str
    atol: float
    rtol: float
    proof: str = PROOF_INDEPENDENT
    # what the reference did at the export shape when it disagreed there ("" when it agreed)
    reference_mismatch: str = ""

    @property
    def failed(self) -> bool:
        """A shape gave wrong outputs or failed to run (whatever the reference)."""
        return any(r.status in ("wrong", "error") for r in self.results)

    @property
    def all_ok(self) -> bool:
        """Nothing failed. Not a proof unless :attr:`proven`: rows may be ``same`` or ``ran``."""
        return not self.failed

    @property
    def proven(self) -> bool:
        """Every shape's numbers matched an independent reference (PyTorch or another ONNX model)."""
        return (self.proof == PROOF_INDEPENDENT and not self.reference_mismatch and bool(self.results)
                and all(r.status == "ok" for r in self.results))

    def counts(self) -> dict[str, int]:
        out = {_PASS_STATUS[self.proof]: 0, "wrong": 0, "error": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def compared_with(self) -> str:
        """What the sweep compared against, in words."""
        if self.proof == PROOF_NONE:
            return "outputs not compared with a reference (only that it runs and that output sizes follow the input)"
        if self.proof == PROOF_SELF:
            return ("outputs compared with the original ONNX graph re-specialized per shape, not with PyTorch: "
                    "this proves the fix kept what the graph computes, not that the graph is right")
        return f"outputs compared with {self.reference}"

    def summary(self) -> str:
        """One line: the counts, what they were compared with, and how to prove them if they were not."""
        c = self.counts()
        passed = _PASS_STATUS[self.proof]
        words = {"ok": "ok", "same": "same as the original graph", "ran": "ran"}
        untrusted = f", {c[UNTRUSTED]} untrusted" if c.get(UNTRUSTED) else ""
        line = f"{c[passed]} {words[passed]}, {c['wrong']} wrong{untrusted}, {c['error']} error; {self.compared_with()}"
        if self.reference_mismatch:
            line += f". {self.reference_mismatch[:1].upper()}{self.reference_mismatch[1:]}: {NOT_THE_EXPORTED_MODEL}"
        if self.proof != PROOF_INDEPENDENT:
            line += f". NOT PROVEN: {HOW_TO_PROVE}"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "backend": self.backend,
            "atol": self.atol,
            "rtol": self.rtol,
            "proof": self.proof,
            "proven": self.proven,
            "compared_with": self.compared_with(),
            "counts": self.counts(),
            "reference_mismatch": self.reference_mismatch or None,
            "results": [r.to_json() for r in self.results],
        }


# ---------------------------------------------------------------- references


class Reference:
    """Gives the expected outputs at a shape; ``None`` means it has no numbers, only checks sizes."""

    label = "reference"
    proof = PROOF_INDEPENDENT

    def outputs(self, shapes: ShapeMap, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NoReference(Reference):
    label = "none (output sizes only)"
    proof = PROOF_NONE

    def outputs(self, shapes: ShapeMap, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        return None


class OnnxReference(Reference):
    def __init__(self, model: onnx.ModelProto, label: str) -> None:
        self.model = model
        self.label = label

    def outputs(self, shapes: ShapeMap, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        with OrtRunner(self.model) as r:
            return r.infer(feeds)


class RespecializedReference(Reference):
    """The original graph with its baked constants set, per shape, to what that shape needs."""

    label = "original graph re-specialized per shape"
    proof = PROOF_SELF

    def __init__(self, original: onnx.ModelProto, report: CheckReport) -> None:
        self.original = original
        self.report = report
        self.prober = Prober(report.fixed_model)
        self.nodes = {f.node: f for f in report.findings if f.fixable and f.rule in ("DS001", "DS002", "DS005")}

    def model_at(self, shapes: ShapeMap) -> onnx.ModelProto:
        """A copy of the original with its baked values set for ``shapes``."""
        m = onnx.ModelProto()
        with self._respecialized(shapes) as patched:
            m.CopyFrom(patched)
        return m

    @contextmanager
    def _respecialized(self, shapes: ShapeMap) -> Iterator[onnx.ModelProto]:
        """The original, patched in place for ``shapes`` and restored on exit: no copy of its
        weights per shape (a copy of a ViT-B is 350 MB)."""
        probe = self.prober.at(shapes)
        fixed_nodes = {n.name: n for n in self.report.fixed_model.graph.node}
        graph = self.original.graph
        attrs: list[tuple[onnx.AttributeProto, list[int]]] = []  # what to put back on exit
        inputs: list[tuple[onnx.NodeProto, int, str]] = []
        added = 0
        try:
            for node in graph.node:
                finding = self.nodes.get(node.name)
                if finding is None:
                    continue
                if finding.rule == "DS001":
                    dims = probe.shape(node.input[0])
                    if dims is None:
                        raise DynashapeError(f"cannot re-specialize {node.name} at {format_shapes(shapes)}")
                    for attr in node.attribute:
                        if attr.name in ("kernel_shape", "strides"):
                            before = list(attr.ints)
                            values = list(before)
                            for axis in finding.details["pooled_axes"]:
                                values[axis - 2] = int(dims[axis] or 0)
                            attrs.append((attr, before))
                            _set_ints(attr, values)
                else:
                    target = fixed_nodes.get(node.name)
                    out_dims = probe.shape(target.output[0]) if target is not None else None
                    if out_dims is None or any(d is None for d in out_dims):
                        raise DynashapeError(f"cannot re-specialize {node.name} at {format_shapes(shapes)}")
                    name = f"{node.name}__respecialized"
                    graph.initializer.append(onnx.numpy_helper.from_array(np.array(out_dims, dtype=np.int64), name))
                    added += 1
                    index = 3 if finding.rule == "DS002" else 1
                    inputs.append((node, index, node.input[index]))
                    node.input[index] = name
            yield self.original
        finally:
            for attr, before in attrs:
                _set_ints(attr, before)
            for node, index, before_input in inputs:
                node.input[index] = before_input
            if added:
                del graph.initializer[len(graph.initializer) - added :]

    def outputs(self, shapes: ShapeMap, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        with self._respecialized(shapes) as patched:
            runner = OrtRunner(patched)  # serializes the patched model here
        with runner as r:
            return r.infer(feeds)


def _set_ints(attr: onnx.AttributeProto, values: list[int]) -> None:
    del attr.ints[:]
    attr.ints.extend(values)


class TorchReference(Reference):
    def __init__(self, spec: str, output_names: list[str]) -> None:
        self.label = f"PyTorch eager ({spec})"
        self.runner: Runner = TorchRunner(load_module(spec), output_names=output_names)
        self.runner.activate()

    def outputs(self, shapes: ShapeMap, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        try:
            return self.runner.infer(feeds)
        except DynashapeError:
            raise
        except Exception as exc:  # the user's module refusing a size (an assert, a shape error) is a result
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise RunError(f"the module raised {type(exc).__name__}" + (f": {first}" if first else "")) from None

    def close(self) -> None:
        self.runner.deactivate()


def make_reference(
    spec: str | None, model: onnx.ModelProto, original: onnx.ModelProto | None = None, report: CheckReport | None = None
) -> Reference:
    """Parse ``--reference``: torch:SPEC, onnx:PATH, respecialized, none."""
    if spec is None or spec == "none":
        return NoReference()
    if spec.startswith("torch:"):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise DynashapeError("--reference torch: needs PyTorch; pip install 'dynashape[torch]'") from None
        return TorchReference(spec[len("torch:") :], [o.name for o in model.graph.output])
    if spec.startswith("onnx:"):
        path = spec[len("onnx:") :]
        return OnnxReference(load_model(path), f"ONNX model {path}")
    if spec == "respecialized":
        if original is None or report is None:
            raise DynashapeError("the respecialized reference needs the original model and its check report")
        return RespecializedReference(original, report)
    raise DynashapeError(
        f"unknown reference {spec!r}: use torch:FILE.py:FACTORY, torch:package.module:FACTORY, onnx:PATH or none"
    )


# ---------------------------------------------------------------- the sweep


def sweep_shapes(model: onnx.ModelProto, s0: ShapeMap, ranges: RangeMap, lattice: Lattice) -> list[ShapeMap]:
    """Export shape, min, max, non-square, batch > 1, lattice middle, off-lattice (if in range)."""
    infos = {i.name: i for i in graph_inputs(model)}
    candidates: list[ShapeMap] = []

    def build(pick: Callable[[str, int, AxisRange, int], int]) -> ShapeMap:
        out: ShapeMap = {}
        for name, rng in ranges.items():
            base = s0.get(name, rng.min_shape)
            out[name] = tuple(pick(name, axis, ar, base[axis]) for axis, ar in enumerate(rng.axes))
        return out

    def is_batch(name: str, axis: int) -> bool:
        return axis == 0 and infos[name].rank >= 3

    def on_range(ar: AxisRange, v: int) -> int:
        v = min(max(v, ar.min), ar.max)
        return ar.min + ((v - ar.min) // ar.step) * ar.step

    candidates.append(build(lambda n, a, ar, b: on_range(ar, b)))  # export shape (clamped into range)
    candidates.append(build(lambda n, a, ar, b: b if is_batch(n, a) else ar.min))
    candidates.append(build(lambda n, a, ar, b: b if is_batch(n, a) else ar.max))
    spatial_first: dict[str, int] = {}
    for n, rng in ranges.items():
        dyn = [a for a in rng.dynamic_axes if not is_batch(n, a)]
        if dyn:
            spatial_first[n] = dyn[0]
    candidates.append(
        build(lambda n, a, ar, b: b if is_batch(n, a) else (ar.min if spatial_first.get(n) == a else ar.max))
    )
    candidates.append(
        build(
            lambda n, a, ar, b: (
                b
                if is_batch(n, a)
                else on_range(ar, (ar.min + ar.max) // 2 + (ar.step if spatial_first.get(n) == a else 0))
            )
        )
    )
    candidates.append(build(lambda n, a, ar, b: on_range(ar, max(2, b + 1)) if is_batch(n, a) else on_range(ar, b)))
    candidates.append(build(lambda n, a, ar, b: b if is_batch(n, a) else on_range(ar, (ar.min + 3 * ar.max) // 4)))
    # off the lattice, only where the requested range contains such sizes
    for n, rng in ranges.items():
        for a in rng.dynamic_axes:
            lat = lattice.get(n, {}).get(a)
            if lat is None or lat.multiple <= 1 or is_batch(n, a):
                continue
            off = [v for v in rng.axes[a].values()[:4096] if not lat.contains(v)]
            if off:
                export_size = s0[n][a]
                target = min(off, key=lambda v: abs(v - export_size))
                candidates.append(build(_only_axis(n, a, target, on_range)))
    unique: list[ShapeMap] = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


def _only_axis(
    name: str, axis: int, size: int, on_range: Callable[[AxisRange, int], int]
) -> Callable[[str, int, AxisRange, int], int]:
    """A picker that puts ``size`` on one axis and keeps every other axis at its base."""

    def pick(n: str, a: int, ar: AxisRange, base: int) -> int:
        return size if (n, a) == (name, axis) else on_range(ar, base)

    return pick


def on_lattice(shapes: ShapeMap, lattice: Lattice) -> bool:
    return all(
        lat.contains(shapes[name][axis])
        for name, axes in lattice.items()
        if name in shapes
        for axis, lat in axes.items()
    )


def compare(
    outputs: dict[str, np.ndarray], ref: dict[str, np.ndarray], atol: float, rtol: float
) -> tuple[str, float, str]:
    worst = 0.0
    for (name, got), want in zip(outputs.items(), ref.values()):
        if got.shape != want.shape:
            return (
                "wrong",
                float("inf"),
                f"output {name!r} has shape {list(got.shape)}, the reference {list(want.shape)}",
            )
        if got.size:
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            worst = max(worst, float(diff.max()))
            if not np.all(diff <= atol + rtol * np.abs(want.astype(np.float64))):
                return "wrong", float(diff.max()), f"output {name!r} differs by up to {float(diff.max()):.3g}"
    return "ok", worst, ""


def verify(
    model: onnx.ModelProto,
    shapes: list[ShapeMap],
    reference: Reference,
    runner_factory: Callable[[], Runner] | None = None,
    *,
    lattice: Lattice | None = None,
    follow: Callable[[ShapeMap, dict[str, np.ndarray]], str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    backend: str = "ort",
    progress: Callable[[int, int, ShapeMap], None] | None = None,
    diagnose: Callable[[ShapeMap, dict[str, np.ndarray]], dict[str, Any] | None] | None = None,
    export_shape: ShapeMap | None = None,
) -> SweepResult:
    """Run ``model`` at every shape and compare with ``reference``.

    ``export_shape``: the shape the model was exported at, when known. It runs first; if an
    independent reference disagrees there, the reference is not the exported model, and what
    differs at other shapes is ``untrusted`` (see the module docstring).
    """
    if export_shape is not None and export_shape in shapes:
        shapes = [export_shape, *(s for s in shapes if s != export_shape)]
    judge_reference = export_shape is not None and reference.proof == PROOF_INDEPENDENT
    mismatch = ""
    diagnosed: set[str] = set()
    pending: list[tuple[ShapeResult, dict[str, np.ndarray]]] = []

    def diagnose_once(res: ShapeResult, feeds: dict[str, np.ndarray]) -> None:
        # the first divergent node of the first wrong and the first failing shape: a search
        # re-exports and re-runs the model, and other shapes mostly name the same node again.
        # It runs after the sweep, once the sweep's session and reference are gone: with them,
        # a large model's weights would be held three and four times at once (ViT-B/16: 3.1 GB)
        if diagnose is not None and res.status not in diagnosed:
            diagnosed.add(res.status)
            pending.append((res, feeds))

    results: list[ShapeResult] = []
    runner = runner_factory() if runner_factory else OrtRunner(model)
    try:
        runner.activate()
    except RunError as exc:
        reference.close()
        raise DynashapeError(f"{backend} cannot load the model: {exc}") from None
    try:
        for i, s in enumerate(shapes):
            if progress:
                progress(i, len(shapes), s)
            feeds = random_feeds(model, s, seed=i)
            res = ShapeResult(s, _PASS_STATUS[reference.proof], on_lattice=on_lattice(s, lattice) if lattice else None)
            results.append(res)
            try:
                out = runner.infer(feeds)
                res.output_shapes = {k: list(v.shape) for k, v in out.items()}
            except RunError as exc:
                res.status, res.message, res.node = "error", str(exc), exc.node
                refused = _reference_refuses(reference, s, feeds) if diagnose is not None else ""
                if refused:  # nothing to compare the nodes with: the shape is outside the reference's too
                    res.message += f"; the reference fails at this shape too ({refused})"
                else:
                    diagnose_once(res, feeds)
                continue
            try:
                ref = reference.outputs(s, feeds)
            except (RunError, DynashapeError) as exc:
                res.status, res.message = "error", f"the reference failed: {exc}"
                continue
            if ref is None:
                problem = follow(s, out) if follow else ""
                if problem:
                    res.status, res.message = "wrong", problem
            else:
                status, err, res.message = compare(out, ref, atol, rtol)
                res.status = _PASS_STATUS[reference.proof] if status == "ok" else status
                res.max_abs_error = err if err != float("inf") else None
                if judge_reference and s == export_shape and status == "wrong":
                    mismatch = (f"at the export shape {format_shapes(s)} itself, "
                                + res.message.replace("differs by", "differs from the reference by"))
                    res.message = f"the reference differs at the export shape: {res.message}"
                elif mismatch and status == "wrong":
                    res.status = UNTRUSTED
                    continue  # no first divergent node: the reference, not a node, differs
            if res.status in ("wrong", "error"):
                diagnose_once(res, feeds)
    finally:
        runner.deactivate()
        reference.close()
    for res, feeds in pending:
        assert diagnose is not None
        res.divergent = diagnose(res.shapes, feeds)
    if progress:
        progress(len(shapes), len(shapes), {})
    return SweepResult(results, reference.label, backend, atol, rtol, reference.proof, mismatch)


def _reference_refuses(reference: Reference, shapes: ShapeMap, feeds: dict[str, np.ndarray]) -> str:
    """Why an independent reference cannot run at these shapes (ViT's fixed image size), or ""."""
    if reference.proof != PROOF_INDEPENDENT:
        return ""
    try:
        reference.outputs(shapes, feeds)
    except (RunError, DynashapeError) as exc:
        return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return ""


def known_export_shape(report: CheckReport) -> ShapeMap | None:
    """The export shape when the check knows it (given, recorded or solved), else None."""
    return None if report.export_shape_source == "unknown" else report.export_shape


def output_follow_check(model: onnx.ModelProto, s0: ShapeMap) -> Callable[[ShapeMap, dict[str, np.ndarray]], str]:
    """For reference-free sweeps: outputs whose spatial size equals the input's at S0 must follow it."""
    scanner = LatticeScanner(model, s0)
    follow: list[tuple[str, int, str, int]] = []
    for info in scanner.inputs:
        for axis in info.dynamic_axes:
            if axis >= 1:
                follow += [(out, j, info.name, axis) for out, j in scanner._following_outputs(info.name, axis)]

    def check(shapes: ShapeMap, outputs: dict[str, np.ndarray]) -> str:
        for out, j, name, axis in follow:
            if out in outputs and outputs[out].shape[j] != shapes[name][axis]:
                return f"output {out!r} axis {j} is {outputs[out].shape[j]}, the input's is {shapes[name][axis]}"
        return ""

    return check


__all__ = [
    "HOW_TO_PROVE",
    "RunError",
    "SweepResult",
    "default_ranges",
    "known_export_shape",
    "make_reference",
    "output_follow_check",
    "sweep_shapes",
    "verify",
]
