"""Recovering the export shape S0 from the graph alone.

Every baked constant is an export-time size of some tensor: a whole-axis pooling kernel equals
its input's size at S0, a frozen tensor (a constant, a resize to fixed sizes, a filled or ranged
grid) joined with a live one equals it on the axes they meet, a constant reshape target holds as
many elements as its input at S0, a weight matrix's rows equal the flattened features it is fed,
a Split's sizes add up to the axis they split. Each gives an equation ``F(S0) = c`` where ``F``
is a dim (or a product of dims) of a tensor around the constant.

Probing the graph at a base size and with each dynamic input axis doubled tells which input
axes each ``F`` depends on and how fast it grows (``F = a*H + b``, or bilinear in H and W for
flattened axes), so each equation gives a candidate size for its axes. Candidates are solved
together: the sizes most equations allow are probed, and the one where the original graph is
consistent and most constants match exactly is S0. When nothing pins it down, S0 is reported
as unknown (with a size where the graph is consistent, for the analyses that do not depend on
it), never silently defaulted.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from dynashape.analysis.context import JOINS, is_standard, traced_dims
from dynashape.analysis.probe import Probe, Prober
from dynashape.errors import DynashapeError
from dynashape.model import InputInfo, graph_inputs, read_export_shape
from dynashape.shapes import ShapeMap, format_shapes

log = logging.getLogger(__name__)

# base probe size of every dynamic spatial axis, each also probed at twice that: the same sizes
# as the fallback S0 (512) and the lattice scan's "does the output follow" probes around it
# (2 x S0 per axis), so where S0 stays unknown `check` reuses every probe made here
_P = 512
_FALLBACK_SIZES = (512, 256, 1024, 384, 640, 224, 320, 128, 64)
_MAX_CANDIDATES = 3  # sizes tried per axis
_MAX_TRIALS = 6  # full shapes probed to pick S0
_MAX_SIZE = 1 << 16

Key = tuple[str, int]  # (input name, axis)

SOURCES = ("given", "metadata", "estimated", "unknown")


@dataclass
class ExportShape:
    """S0 and how it was found. ``source``: ``given`` (--export-shape), ``metadata`` (recorded by
    `dynashape export`), ``estimated`` (solved from the baked constants) or ``unknown`` (nothing
    pins it down: ``shapes`` is only a size where the graph is consistent)."""

    shapes: ShapeMap
    source: str
    note: str
    constraints: int = 0  # equations the baked constants gave
    agree: int = 0  # of those, how many hold exactly at ``shapes``
    assumed: list[str] = field(default_factory=list)  # axes not pinned by a constant, and why

    @property
    def known(self) -> bool:
        return self.source != "unknown"

    @property
    def confidence(self) -> str:
        """``high``: given, recorded, or solved with every constraint agreeing and no axis
        assumed; ``medium``: solved, but an axis assumed or some constraint disagreeing; ``none``."""
        if not self.known:
            return "none"
        if self.source != "estimated" or (not self.assumed and self.agree == self.constraints):
            return "high"
        return "medium"


def resolve_export_shape(
    proto: onnx.ModelProto, given: ShapeMap | None = None, prober: Prober | None = None,
    ir_model: ir.Model | None = None,
) -> ExportShape:
    """``given`` wins, then the shape recorded in the metadata, then the solved estimate.
    ``ir_model``: ``proto`` already deserialized (only read)."""
    inputs = graph_inputs(proto)
    if given:
        return ExportShape(_complete(inputs, given), "given", "as given")
    meta = read_export_shape(proto)
    if meta:
        return ExportShape(_complete(inputs, meta), "metadata", "recorded by dynashape export")
    prober = prober or Prober(proto)
    return estimate_export_shape(proto, prober, inputs, ir_model)


def _complete(inputs: list[InputInfo], shapes: ShapeMap) -> ShapeMap:
    out: ShapeMap = {}
    for info in inputs:
        if info.name in shapes:
            s = shapes[info.name]
            if len(s) != info.rank:
                raise DynashapeError(
                    f"shape {format_shapes({info.name: s})} has rank {len(s)}; input {info.name!r} is "
                    f"{info.describe()} (rank {info.rank})"
                )
            for axis, d in enumerate(info.dims):
                if isinstance(d, int) and d != s[axis]:
                    raise DynashapeError(f"input {info.name!r} axis {axis} is fixed at {d} in the model, not {s[axis]}")
            out[info.name] = s
        elif not info.dynamic_axes:
            out[info.name] = tuple(d for d in info.dims if isinstance(d, int))
        else:
            raise DynashapeError(
                f"no shape given for input {info.name!r} ({info.describe()}); "
                f"the model's inputs: {', '.join(i.name for i in inputs)}"
            )
    return out


def _is_batch(info: InputInfo, axis: int) -> bool:
    return axis == 0 and info.rank >= 3


def _base(inputs: list[InputInfo], size: int) -> ShapeMap:
    shapes: ShapeMap = {}
    for info in inputs:
        dims = []
        for axis, d in enumerate(info.dims):
            if isinstance(d, int):
                dims.append(d)
            elif _is_batch(info, axis):
                dims.append(1)
            else:
                dims.append(size)
        shapes[info.name] = tuple(dims)
    return shapes


def _with(shapes: ShapeMap, values: dict[Key, int]) -> ShapeMap:
    out = {k: list(v) for k, v in shapes.items()}
    for (name, axis), v in values.items():
        out[name][axis] = v
    return {k: tuple(v) for k, v in out.items()}


# ---------------------------------------------------------------- equations from baked constants


@dataclass
class Constraint:
    """``F(S0) == target`` where F is the product of ``value``'s dims on ``axes`` (all of them
    when None), less, for a reshape, the element count of its (resolved) target."""

    kind: str
    node: str
    target: int
    value: ir.Value
    axes: tuple[int, ...] | None
    reshape_target: ir.Value | None = None

    def evaluate(self, probe: Probe) -> int | None:
        dims = traced_dims(self.value, probe)
        if dims is None or any(d is None for d in dims):
            return None
        if self.axes is not None:
            if any(not -len(dims) <= a < len(dims) for a in self.axes):
                return None
            n = math.prod(int(dims[a] or 0) for a in self.axes)
        else:
            n = math.prod(int(d or 0) for d in dims)
        if self.reshape_target is None:
            return n
        t = _int_value(self.reshape_target, probe)
        if t is None:
            return None
        resolved = [int(dims[i] or 0) if v == 0 and i < len(dims) else v for i, v in enumerate(t)]
        if any(v < 0 for v in resolved):
            return None
        return n - math.prod(resolved)

    def describe(self) -> str:
        return f"{self.kind} at {self.node or '?'}"


def _int_value(value: ir.Value, probe: Probe) -> list[int] | None:
    arr: np.ndarray | None = None
    if value.const_value is not None:
        arr = value.const_value.numpy()
    else:
        arr = probe.value(value.name or "")
        if arr is None:
            producer = value.producer()
            if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
                arr = producer.attributes["value"].as_tensor().numpy()
    if arr is None or arr.size > 16 or arr.ndim > 1 or not np.issubdtype(arr.dtype, np.number):
        return None  # shape values are a 1-D list of numbers; anything else is not read
    return [int(v) for v in np.atleast_1d(arr).astype(np.int64)]


def _constant_dims(value: ir.Value) -> tuple[int, ...] | None:
    """Dims of an initializer or ``Constant`` output (None for computed tensors)."""
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape.numpy())
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return tuple(int(d) for d in producer.attributes["value"].as_tensor().shape.numpy())
    return None


def _is_constant(value: ir.Value) -> bool:
    return _constant_dims(value) is not None


def _pool_constraints(model: ir.Model) -> list[Constraint]:
    """A pool whose window is its whole input axis (no pads, no ceil mode, kernel > 3: windows of
    2-3 are ordinary downsampling) was sized at S0."""
    found: list[Constraint] = []
    for node in model.graph:
        if node.op_type not in ("AveragePool", "MaxPool") or not node.inputs or node.inputs[0] is None \
                or not is_standard(node):
            continue
        kernel = node.attributes.get("kernel_shape")
        pads = node.attributes.get("pads")
        if kernel is None or (pads is not None and any(pads.as_ints())):
            continue
        if node.attributes.get_int("ceil_mode", 0):
            continue  # a window that may hang over the end: HF EfficientNet pools with AvgPool2d(1280, ceil_mode)
        if _pyramid_bins(node, node.inputs[0]):
            continue  # one of several bin counts of a pyramid (DS004): no kernel is the whole axis
        strides_attr = node.attributes.get("strides")
        ks = list(kernel.as_ints())
        strides = list(strides_attr.as_ints()) if strides_attr is not None else [1] * len(ks)
        if len(strides) != len(ks):
            continue  # not a pool ONNX would run: nothing to read from it
        for i, k in enumerate(ks):
            if k > 3 and strides[i] in (1, k):
                found.append(Constraint("pool kernel", node.name or "", k, node.inputs[0], (2 + i,)))
    return found


def _pyramid_bins(node: ir.Node, x: ir.Value) -> bool:
    """Is ``x`` pooled by another kernel == stride pool with another window > 1 on the same axis
    (a pyramid's bins; strip pools [h, 1] and [1, w] are not)?"""
    kernel = node.attributes.get("kernel_shape")
    mine = list(kernel.as_ints()) if kernel is not None else []
    for use in x.uses():
        other = use.node
        if other is node or other.op_type not in ("AveragePool", "MaxPool") or not is_standard(other):
            continue
        k_attr, s_attr = other.attributes.get("kernel_shape"), other.attributes.get("strides")
        k = list(k_attr.as_ints()) if k_attr is not None else []
        if (k and s_attr is not None and list(s_attr.as_ints()) == k and len(k) == len(mine)
                and any(a > 1 and b > 1 and a != b for a, b in zip(k, mine))):
            return True  # one axis pooled with two different windows: bins, not the whole axis
    return False


def _frozen_kind(value: ir.Value) -> str:
    producer = value.producer()
    if producer is None or producer.op_type == "Constant":
        return "constant"
    return {
        "Resize": "resize size", "Upsample": "resize size", "ConstantOfShape": "filled constant",
        "Range": "range", "Expand": "expanded constant", "Reshape": "reshape target",
    }.get(producer.op_type, f"frozen {producer.op_type}")


def _join_constraints(model: ir.Model, probes: list[Probe]) -> list[Constraint]:
    """A frozen operand of a join (its size on an axis is the same at every probe: a constant, a
    resize to fixed sizes, a grid made at the export size) meets a live one: on the axes they
    line up on, the live one's size at S0 is the frozen one's."""
    found: list[Constraint] = []
    for node in model.graph:
        if node.op_type not in JOINS or not is_standard(node):
            continue
        operands = [v for v in node.inputs if v is not None]
        if len(operands) < 2:
            continue
        per_probe: list[list[tuple[int | None, ...] | None]] = []
        for v in operands:
            const = _constant_dims(v)
            if const is not None:
                per_probe.append([const] * len(probes))
            else:
                per_probe.append([p.shape(v.name or "") for p in probes])
        cat = node.attributes.get_int("axis", 0) if node.op_type == "Concat" else None
        for i, all_dims in enumerate(per_probe):
            first = all_dims[0]
            # where a probe fails before the operand, its dims are unknown there: judge by the rest
            fdims = [d for d in all_dims if d is not None]
            if first is None or len(fdims) < 2 or any(len(d) != len(first) for d in fdims):
                continue
            frozen = [a for a in range(len(first)) if first[a] is not None and first[a] > 1  # type: ignore[operator]
                      and all(d[a] == first[a] for d in fdims)]
            if not frozen:
                continue
            for k, live in enumerate(operands):
                if k == i or _is_constant(live):
                    continue
                ldims = traced_dims(live, probes[0])
                if ldims is None:
                    continue
                rank, lrank = len(first), len(ldims)
                for a in frozen:
                    if cat is not None:
                        c = cat + rank if cat < 0 else cat
                        la = a if rank == lrank and a != c else None
                    else:
                        la = a + lrank - rank
                    if la is not None and 0 <= la < lrank:
                        found.append(Constraint(_frozen_kind(operands[i]), node.name or "", int(first[a] or 0),
                                                live, (la,)))
    return found


def _op_constraints(model: ir.Model, probes: list[Probe], spatial_probes: list[Probe]) -> list[Constraint]:
    """Weights fed flattened features, constant reshape targets, Split sizes, Expand shapes.
    ``probes``: at the base size and with each dynamic axis bumped; ``spatial_probes``: those
    that bump no batch axis."""
    found: list[Constraint] = []
    for node in model.graph:
        op, ins = node.op_type, node.inputs
        if not is_standard(node):
            continue
        if op == "MatMul" and len(ins) == 2 and ins[0] is not None and ins[1] is not None:
            w = _constant_dims(ins[1])
            if w is not None and len(w) == 2 and not _is_constant(ins[0]):
                found.append(Constraint("weight rows", node.name or "", w[0], ins[0], (-1,)))
        elif op == "Gemm" and len(ins) >= 2 and ins[0] is not None and ins[1] is not None:
            w = _constant_dims(ins[1])
            if w is not None and len(w) == 2 and not _is_constant(ins[0]):
                k = w[1] if node.attributes.get_int("transB", 0) else w[0]
                axis = 0 if node.attributes.get_int("transA", 0) else 1
                found.append(Constraint("weight rows", node.name or "", k, ins[0], (axis,)))
        elif op == "Reshape" and len(ins) >= 2 and ins[0] is not None and ins[1] is not None:
            # a target with no -1 whose spatial entries are baked (only a copied batch may vary):
            # its element count is the input's at S0; one computed from the input's size says nothing
            targets = [_int_value(ins[1], p) for p in spatial_probes]
            t = targets[0]
            if t is not None and -1 not in t and all(v == t for v in targets) and not _is_constant(ins[0]):
                found.append(Constraint("reshape target", node.name or "", 0, ins[0], None, ins[1]))
        elif op == "Split" and ins[0] is not None and not _is_constant(ins[0]):
            sizes = None
            if len(ins) >= 2 and ins[1] is not None:
                values = [_int_value(ins[1], p) for p in probes]
                if values[0] is not None and all(v == values[0] for v in values):
                    sizes = values[0]
            elif "split" in node.attributes:
                sizes = list(node.attributes["split"].as_ints())
            if sizes:
                found.append(Constraint("split sizes", node.name or "", sum(sizes), ins[0],
                                        (node.attributes.get_int("axis", 0),)))
        elif op == "Expand" and len(ins) == 2 and ins[0] is not None and ins[1] is not None:
            values = [_int_value(ins[1], p) for p in probes]
            if values[0] is None or any(v != values[0] for v in values) or _is_constant(ins[0]):
                continue
            shape = values[0]
            for j, c in enumerate(shape):
                if c > 1:
                    found.append(Constraint("expand shape", node.name or "", c, ins[0], (j - len(shape),)))
    return found


# ---------------------------------------------------------------- solving


@dataclass
class _Estimate:
    key: Key
    value: float
    tolerance: float  # sizes within this of ``value`` may satisfy the equation (strided floors)
    constraint: int


@dataclass
class _Pair:
    """An equation bilinear in two spatial axes (a flattened H x W): F = f00 + fu*u + fv*v + fuv*u*v
    with u = (H - base_H) / step_H, v = (W - base_W) / step_W."""

    keys: tuple[Key, Key]
    base: tuple[int, int]
    step: tuple[int, int]
    coeffs: tuple[float, float, float, float]
    target: int
    constraint: int

    def solve_other(self, known: int, which: int) -> float | None:
        f00, fu, fv, fuv = self.coeffs
        x = (known - self.base[which]) / self.step[which]
        if which == 0:  # known is keys[0]: solve v
            a, b = fv + fuv * x, f00 + fu * x
        else:
            a, b = fu + fuv * x, f00 + fv * x
        if abs(a) < 1e-9:
            return None
        other = 1 - which
        return self.base[other] + self.step[other] * (self.target - b) / a

    def solve_square(self) -> float | None:
        """H = W where the equation holds (only when both were probed from the same base)."""
        if self.base[0] != self.base[1] or self.step[0] != self.step[1]:
            return None
        f00, fu, fv, fuv = self.coeffs
        a, b, c = fuv, fu + fv, f00 - self.target
        b0, st = self.base[0], self.step[0]
        if abs(a) < 1e-12:
            return None if abs(b) < 1e-12 else b0 + st * (-c / b)
        disc = b * b - 4 * a * c
        if disc < 0:
            return None
        roots = [(-b + s * math.sqrt(disc)) / (2 * a) for s in (1, -1)]
        sizes = {round(b0 + st * r, 6) for r in roots if b0 + st * r >= 1}
        # two square sizes fit (an equation that holds along a curve, not at a point): none is S0
        return sizes.pop() if len(sizes) == 1 else None


@dataclass
class _Trial:
    ok: bool
    values: dict[Key, int]
    agree: list[int]


class _Solver:
    def __init__(self, model: ir.Model, prober: Prober, inputs: list[InputInfo]) -> None:
        self.prober = prober
        self.inputs = inputs
        self.keys: list[Key] = [(i.name, a) for i in inputs for a in i.dynamic_axes]
        self.batch = {(i.name, a) for i in inputs for a in i.dynamic_axes if _is_batch(i, a)}
        self.base = _base(inputs, _P)
        self.model = model
        self.constraints: list[Constraint] = []
        self.estimates: list[_Estimate] = []
        self.pairs: list[_Pair] = []
        self.relevant: list[int] = []
        self._seen: set[tuple[str, str, int, tuple[int, ...] | None]] = set()

    def probe(self, values: dict[Key, int]) -> Probe:
        return self.prober.at(_with(self.base, values))

    def _collect(self, around: dict[Key, int]) -> None:
        """Equations from the baked constants, linearized around ``around`` (each axis probed
        there and at twice that, +1 for a batch)."""
        step = {k: 1 if k in self.batch else around[k] for k in self.keys}
        p0 = self.probe(around)
        bumped = {k: self.probe({**around, k: around[k] + step[k]}) for k in self.keys if k not in self.batch}
        spatial_probes = [p0, *bumped.values()]
        found = _pool_constraints(self.model) + _join_constraints(self.model, spatial_probes) \
            + _op_constraints(self.model, spatial_probes, spatial_probes)
        # a batch probe (a probe costs a shape inference of the whole graph) only where a constant
        # meets a leading axis (where batches are) that no spatial axis explains
        if self.batch and any(
            c.axes == (0,) and (f0 := c.evaluate(p0)) is not None and f0 != c.target
            and all(c.evaluate(p) in (None, f0) for p in bumped.values()) for c in found
        ):
            for k in sorted(self.batch):
                bumped[k] = self.probe({**around, k: around[k] + step[k]})
            probes = [p0, *bumped.values()]
            found = _pool_constraints(self.model) + _join_constraints(self.model, probes) \
                + _op_constraints(self.model, probes, spatial_probes)
        for c in found:
            key = (c.kind, c.node, id(c.value), c.axes)
            if key in self._seen:
                continue
            f0 = c.evaluate(p0)
            if f0 is None:
                continue
            moved: dict[Key, int] = {}
            for k, p in bumped.items():
                fk = c.evaluate(p)
                if fk is not None and fk != f0:
                    moved[k] = fk
            spatial = [k for k in moved if k not in self.batch]
            ci = len(self.constraints)
            if len(moved) == 1:
                (k, fk), = moved.items()
                slope = (fk - f0) / step[k]
                est = around[k] + (c.target - f0) / slope
                if not 1 <= est <= _MAX_SIZE:
                    continue
                self.estimates.append(_Estimate(k, est, max(1.0, abs(1 / slope)), ci))
            elif len(spatial) == 2:
                k1, k2 = spatial
                f11 = c.evaluate(self.probe({**around, k1: around[k1] + step[k1], k2: around[k2] + step[k2]}))
                if f11 is None:
                    continue
                f10, f01 = moved[k1], moved[k2]
                self.pairs.append(_Pair((k1, k2), (around[k1], around[k2]), (step[k1], step[k2]),
                                        (f0, f10 - f0, f01 - f0, f11 - f10 - f01 + f0), c.target, ci))
            else:
                continue
            self._seen.add(key)
            self.constraints.append(c)
            self.relevant.append(ci)

    def _try(self) -> tuple[list[_Trial], dict[Key, str]]:
        candidates, how = self._candidates(self.estimates, self.pairs)
        if not candidates:
            return [], how
        trials = []
        for values in self._trials(candidates):
            probe = self.probe(values)
            agree = [ci for ci in self.relevant if self.constraints[ci].evaluate(probe) == self.constraints[ci].target]
            trials.append(_Trial(probe.ok, values, agree))
            if probe.ok and len(agree) == len(self.relevant):
                break
        trials.sort(key=lambda t: (not t.ok, -len(t.agree)))
        return trials, how

    def solve(self) -> ExportShape | None:
        if not self.keys:
            return None
        self._collect({k: self.base[k[0]][k[1]] for k in self.keys})
        if not self.relevant:
            log.info("no baked constant depends on the input size")
            return None
        trials, how = self._try()
        if trials and (not trials[0].ok or any(how.get(k) for k in trials[0].values)):
            # constants past the first join that fails at the probe sizes were not seen: look
            # again from the best size so far, where the graph holds up to them
            before = len(self.relevant)
            around = {k: trials[0].values.get(k, self.base[k[0]][k[1]]) for k in self.keys}
            self._collect(around)
            if len(self.relevant) > before:
                trials, how = self._try()
        return self._verdict(trials, how)

    def _verdict(self, trials: list[_Trial], how: dict[Key, str]) -> ExportShape:
        n = len(self.relevant)
        if not trials:
            return ExportShape(
                self._fallback(), "unknown",
                f"{n} baked constant(s) pin only products of input sizes (such as H x W), not each size", n, 0,
            )
        best = trials[0]
        if not best.ok or not best.agree:
            where = format_shapes(_with(self.base, best.values))
            why = "the graph is not consistent there" if not best.ok else "no constant matches there"
            log.info("export shape not found: %d constraint(s) point at %s but %s", n, where, why)
            return ExportShape(self._fallback(), "unknown", f"{n} baked constant(s) point at {where}, but {why}", n, 0)
        shapes = _with(self.base, best.values)
        rivals = [t for t in trials[1:] if t.ok and len(t.agree) == len(best.agree) and t.values != best.values]
        if rivals:
            other = format_shapes(_with(self.base, rivals[0].values))
            log.info("export shape ambiguous: %s and %s fit %d constraint(s) alike", format_shapes(shapes), other,
                     len(best.agree))
            return ExportShape(
                self._fallback(shapes), "unknown",
                f"the baked constants fit {format_shapes(shapes)} and {other} alike", n, len(best.agree),
            )
        assumed = [why for k, why in how.items() if why and k in best.values]
        kinds = sorted({self.constraints[ci].kind for ci in best.agree})
        note = f"solved from {n} baked constant(s), {len(best.agree)} agree ({', '.join(kinds)})"
        if assumed:
            note += "; " + "; ".join(assumed)
        disagree = [self.constraints[ci].describe() for ci in self.relevant if ci not in best.agree]
        if disagree:
            log.info("export shape %s: %d constraint(s) do not hold there: %s", format_shapes(shapes), len(disagree),
                     ", ".join(disagree[:8]))
        return ExportShape(shapes, "estimated", note, n, len(best.agree), assumed)

    def _candidates(
        self, estimates: list[_Estimate], pairs: list[_Pair]
    ) -> tuple[dict[Key, list[int]], dict[Key, str]]:
        """Sizes to try per axis, best first, and for axes not pinned by their own equation, why
        the size was taken."""
        candidates: dict[Key, list[int]] = {}
        how: dict[Key, str] = {}
        for key in self.keys:
            mine = [e for e in estimates if e.key == key]
            if not mine:
                continue
            values = sorted({round(e.value) for e in mine})
            support = {
                x: sum(1 for e in mine if abs(x - e.value) < e.tolerance) for x in values
            }
            ranked = sorted(values, key=lambda x: (-support[x], -_roundness(x), x))
            candidates[key] = ranked[:_MAX_CANDIDATES]
            how[key] = ""
        # an equation in H and W (a flattened count) gives the other axis for each size of one
        # (sizes tried after the axes' own), or, when neither has its own, the square size
        single = {k: list(v) for k, v in candidates.items()}
        for pair in pairs:
            a, b = pair.keys
            for which, known in enumerate(pair.keys):
                other = pair.keys[1 - which]
                for v in single.get(known, []):
                    size = pair.solve_other(v, which)
                    if size is not None and 1 <= size <= _MAX_SIZE and abs(size - round(size)) < 0.01:
                        _append(candidates, how, other, round(size), "")
            if a in single or b in single or a[0] != b[0]:
                continue
            root = pair.solve_square()
            if root is None or not 1 <= root <= _MAX_SIZE or abs(root - round(root)) > 0.01:
                continue  # no square size fits H*W: leave it unknown rather than guess
            text = (f"only {_key_text(a)} x {_key_text(b)} is pinned, {_key_text(a)} = {_key_text(b)} "
                    "assumed (give --export-shape if it was not square)")
            _append(candidates, how, a, round(root), text)
            _append(candidates, how, b, round(root), "")
        for key in self.keys:
            if key in candidates:
                continue
            if key in self.batch:
                continue  # no constant depends on the batch: it stays at 1
            siblings = [k for k in candidates if k[0] == key[0] and k not in self.batch]
            if siblings:
                candidates[key] = [candidates[siblings[0]][0]]
                how[key] = f"{_key_text(key)} = {_key_text(siblings[0])} (no baked constant depends on it)"
        return candidates, how

    def _trials(self, candidates: dict[Key, list[int]]) -> list[dict[Key, int]]:
        keys = list(candidates)
        combos = itertools.product(*(range(len(candidates[k])) for k in keys))
        ranked = sorted(combos, key=lambda ranks: (sum(ranks), ranks))[:_MAX_TRIALS]
        return [{k: candidates[k][r] for k, r in zip(keys, ranks)} for ranks in ranked]

    def _fallback(self, near: ShapeMap | None = None) -> ShapeMap:
        return _consistent_size(self.inputs, self.prober, near)


def _append(candidates: dict[Key, list[int]], how: dict[Key, str], key: Key, size: int, why: str) -> None:
    sizes = candidates.setdefault(key, [])
    if size not in sizes and len(sizes) < _MAX_CANDIDATES + 2:
        sizes.append(size)
    how.setdefault(key, why)


def _key_text(key: Key) -> str:
    name, axis = key
    return f"{name}[{axis}]"


def _roundness(x: int) -> int:
    """How many times 2 divides ``x`` (export sizes are usually multiples of the model's stride)."""
    return (x & -x).bit_length() if x > 0 else 0


def _consistent_size(inputs: list[InputInfo], prober: Prober, near: ShapeMap | None = None) -> ShapeMap:
    if near is not None and prober.at(near).ok:
        return near
    for size in _FALLBACK_SIZES:
        shapes = _base(inputs, size)
        if prober.at(shapes).ok:
            return shapes
    return _base(inputs, _FALLBACK_SIZES[0])


def estimate_export_shape(
    proto: onnx.ModelProto, prober: Prober, inputs: list[InputInfo] | None = None, ir_model: ir.Model | None = None
) -> ExportShape:
    """S0 solved from the baked constants, or ``unknown`` (see the module docstring)."""
    inputs = inputs if inputs is not None else graph_inputs(proto)
    if not any(i.dynamic_axes for i in inputs):
        return ExportShape(_complete(inputs, {}), "given", "every input axis is static")
    found = _Solver(ir_model or ir.serde.deserialize_model(proto), prober, inputs).solve()
    if found is not None:
        return found
    shapes = _consistent_size(inputs, prober)
    where = "" if prober.at(shapes).ok else " (and no size tried is consistent)"
    return ExportShape(shapes, "unknown", f"no baked constant pins it{where}")

