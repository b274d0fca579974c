"""Second export shapes chosen to make Python branches on sizes flip.

A Python ``if`` on a size (``if H % window: pad``, ``if x.shape != skip.shape: interpolate``,
``if h % 2: pad`` before a stride-2 merge) is decided once, at the export shape S0; the branch
not taken is absent from the graph. Exporting again at a second shape shows it only if that
shape falls in the other divisibility class, so the shapes are picked from what the S0 graph
says about the model:

* its **levels**: the downsampling factors of its feature maps, the products of Conv / pool
  strides and Slice steps along each path (divided by ConvTranspose strides and Resize scales);
  every power of two up to the largest is a level, since a stride-2 stage may pad when its input
  is odd;
* its **windows**: integer divisors of ``Mod`` nodes in the shape arithmetic (``W % 7`` of a
  window partition), and of ``Div`` nodes whose divisor is also a reshape dim (``view(B, H // 7,
  7, W // 7, 7, C)``), so a window is seen whether or not the model padded at S0.

A condition is "the feature size at level d, size / d, is a multiple of m" for m = 2 and each
window; it says something only for sizes that are multiples of d (otherwise the feature size is
the floor or the ceiling of size / d, depending on the model's padding). Shapes are picked
greedily so that each condition is seen both true and false among S0 and the chosen shapes,
staying on the lattice when one is known and near S0 (export cost grows with the size). The
plan is short (a few exports) and every shape says why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import onnx
from onnx import numpy_helper

from dynashape.findings import AxisLattice, Lattice
from dynashape.shapes import ShapeMap, format_shapes

log = logging.getLogger(__name__)

_MAX_LEVEL = 1024
_MIN_WINDOW, _MAX_WINDOW = 3, 64
_STRIDED = ("Conv", "MaxPool", "AveragePool", "LpPool")
_AXIS_NAMES = {2: "H", 3: "W", 4: "D"}


@dataclass(frozen=True)
class Condition:
    """``ceil(size / level) % modulus == 0`` on one axis."""

    level: int
    modulus: int

    def holds(self, size: int) -> bool | None:
        """None when the size is not a multiple of the level (the feature size is then floor or
        ceil of size/level, depending on the model's padding: the class is not known)."""
        if size % self.level:
            return None
        return (size // self.level) % self.modulus == 0

    def describe(self, size: int, axis: str) -> str:
        f = size // self.level
        where = axis if self.level == 1 else f"{axis}/{self.level}"
        if self.modulus == 2:
            return f"{where} = {f} is {'even' if f % 2 == 0 else 'odd'}"
        return f"{where} = {f} is {'' if f % self.modulus == 0 else 'not '}a multiple of {self.modulus}"


@dataclass
class PlannedShape:
    """One second export shape and why it was chosen."""

    shapes: ShapeMap
    reason: str
    safety: int = 0  # the smallest power of two dividing its sizes (lower: more likely invalid)
    covers: list[str] = field(default_factory=list)


@dataclass
class ShapeClasses:
    """What the S0 graph says about the sizes at which a branch may flip."""

    levels: list[int]
    windows: list[int]

    def conditions(self) -> list[Condition]:
        out = [Condition(d, 2) for d in self.levels]
        for w in self.windows:
            out += [Condition(d, w) for d in self.levels if w % 2 or d * w <= _MAX_LEVEL * 8]
        return list(dict.fromkeys(out))

    def to_json(self) -> dict[str, list[int]]:
        return {"levels": self.levels, "windows": self.windows}


# ------------------------------------------------------------------------------ reading the graph


def shape_classes(model: onnx.ModelProto) -> ShapeClasses:
    """Levels (downsampling factors up to the largest) and windows (Mod divisors) of a graph."""
    factors = _downsampling_factors(model)
    largest = max([f for f in factors if f <= _MAX_LEVEL], default=1)
    levels = {1 << k for k in range(int(math.log2(largest)) + 1)} | {f for f in factors if f <= largest}
    return ShapeClasses(sorted(levels), _mod_divisors(model))


def _downsampling_factors(model: onnx.ModelProto) -> set[int]:
    """Integer factors by which some feature map is smaller than the graph input."""
    consts = _int_constants(model)
    graph_inputs = {vi.name for vi in model.graph.input} - {t.name for t in model.graph.initializer}
    factor: dict[str, Fraction] = {name: Fraction(1) for name in graph_inputs}
    seen: set[int] = set()
    strided_slices: set[str] = set()
    for node in model.graph.node:
        ins = [factor[i] for i in node.input if i in factor]
        if not ins or node.op_type in ("Shape", "Size"):
            continue  # a shape tensor is not a feature map
        f = max(ins)
        op = node.op_type
        if op in _STRIDED:
            f *= max(_ints_attr(node, "strides") or [1])
        elif op == "ConvTranspose":
            f /= max(_ints_attr(node, "strides") or [1])
        elif op == "Slice" and len(node.input) > 4:
            steps = consts.get(node.input[4])
            if steps is not None and steps.size and int(np.abs(steps).max()) > 1:
                # x[:, 0::2, 0::2] is two Slices, one per axis: the second does not shrink it again
                if node.input[0] not in strided_slices:
                    f *= int(np.abs(steps).max())
                strided_slices.update(o for o in node.output if o)
        elif op in ("Resize", "Upsample"):
            scales = _float_constant(model, node.input[2] if op == "Resize" and len(node.input) > 2 else
                                     node.input[1] if op == "Upsample" and len(node.input) > 1 else "")
            if scales is not None and scales.size >= 3 and float(scales[2:].max()) > 0:
                f /= Fraction(float(scales[2:].max())).limit_denominator(64)
        elif op == "SpaceToDepth":
            f *= _int_attr(node, "blocksize", 1)
        elif op == "DepthToSpace":
            f /= _int_attr(node, "blocksize", 1)
        for out in node.output:
            if out:
                factor[out] = f
        if f.denominator == 1 and f > 1:
            seen.add(int(f))
    return seen


def _mod_divisors(model: onnx.ModelProto) -> list[int]:
    """Window sizes: constant divisors of integer ``Mod`` nodes (``W % 7``), and constant divisors
    of integer ``Div`` nodes (``W // 7``) that are also a dim of a reshape target (``view(B, H // 7,
    7, ...)``): the window partition, whether or not it padded at S0."""
    consts = _int_constants(model)
    mods: set[int] = set()
    divs: set[int] = set()
    reshaped: set[int] = set()
    producer = {o: n for n in model.graph.node for o in n.output if o}
    for node in model.graph.node:
        if node.op_type in ("Mod", "Div") and len(node.input) >= 2:
            divisor = consts.get(node.input[1])
            if divisor is not None and divisor.size == 1 and node.input[0] not in consts:
                w = abs(int(divisor.reshape(-1)[0]))
                if _MIN_WINDOW <= w <= _MAX_WINDOW:
                    (mods if node.op_type == "Mod" else divs).add(w)
        elif node.op_type == "Reshape" and len(node.input) > 1:
            target = node.input[1]
            pieces = [target]
            concat = producer.get(target)
            if concat is not None and concat.op_type == "Concat":
                pieces = [_unsqueezed(i, producer) for i in concat.input]
            for piece in pieces:
                values = consts.get(piece)
                if values is not None:
                    reshaped.update(int(v) for v in values.reshape(-1))
    # a Mod is the window's own trace; Div ∩ reshape also catches attention heads (C // heads), so
    # it is only the fallback for a graph that did not pad at S0 (no Mod left in it)
    return sorted(mods or (divs & reshaped))


def _unsqueezed(name: str, producer: dict[str, onnx.NodeProto]) -> str:
    """The tensor under an ``Unsqueeze`` (the legacy exporter wraps each shape piece in one)."""
    node = producer.get(name)
    return node.input[0] if node is not None and node.op_type == "Unsqueeze" else name


def _int_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    tensors: list[tuple[str, onnx.TensorProto]] = [(t.name, t) for t in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    tensors.append((node.output[0], attr.t))
                elif attr.name in ("value_int", "value_ints"):
                    out[node.output[0]] = np.atleast_1d(np.asarray(onnx.helper.get_attribute_value(attr)))
    for name, t in tensors:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and np.prod(t.dims) <= 16:
            out[name] = np.atleast_1d(numpy_helper.to_array(t))
    return out


def _float_constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    if not name:
        return None
    for t in model.graph.initializer:
        if t.name == name:
            return np.atleast_1d(numpy_helper.to_array(t)).astype(np.float64)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return np.atleast_1d(numpy_helper.to_array(attr.t)).astype(np.float64)
    return None


def _ints_attr(node: onnx.NodeProto, name: str) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return []


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


# ------------------------------------------------------------------------------ choosing shapes


def pow2_part(n: int, cap: int = 1 << 20) -> int:
    """The largest power of two (≤ cap) that divides ``n``."""
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def plan_class_shapes(
    s0: ShapeMap,
    dynamic: dict[str, list[int]],
    classes: ShapeClasses,
    *,
    already: Sequence[ShapeMap] = (),
    lattice: Lattice | None = None,
    budget: int = 3,
) -> list[PlannedShape]:
    """Up to ``budget`` shapes that put the spatial axes in the divisibility classes not yet seen.

    ``already`` holds shapes that will be exported anyway (S1); S0 counts too. The first shape
    puts every spatial axis of an input in the same class (square): a branch taken when either
    axis needs it flips back only when all do. After it, the axes of one input share what they
    have covered (models treat H and W alike), so H and W get different classes (non-square).
    Batch axes keep their S0 size. Shapes are returned safest first (largest power-of-two
    part), so a failure at a coarse size can skip the finer ones.
    """
    axes = [(name, a) for name, shape in s0.items() for a in dynamic.get(name, [])
            if not (a == 0 and len(shape) >= 3)]
    if not axes or budget <= 0:
        return []
    conditions = classes.conditions()
    seen: dict[str, set[tuple[Condition, bool]]] = {name: set() for name, _ in axes}
    for name, a in axes:
        for known in (s0, *already):
            if name in known:
                seen[name] |= _truths(conditions, known[name][a])
    candidates = {
        key: _candidate_sizes(s0[key[0]][key[1]], lattice.get(key[0], {}).get(key[1]) if lattice else None,
                              max(classes.levels))
        for key in axes
    }
    chosen: list[PlannedShape] = []
    for _ in range(budget):
        picks: dict[tuple[str, int], int] = {}
        covers: list[str] = []
        for key in axes:
            name, a = key
            taken = {p.shapes[name][a] for p in chosen}
            first = next((v for k, v in picks.items() if k[0] == name), None)
            if first is not None and not chosen and first in candidates[key]:
                # the first shape is square: `if h % 7 or w % 7: pad` flips back only when both
                # axes are in the other class; the later shapes split H and W between classes
                picks[key] = first
                continue
            if first is not None:
                taken |= {v for k, v in picks.items() if k[0] == name}
            best = _best_size(candidates[key], conditions, seen[name], taken, s0[name][a])
            if best is None:
                continue
            size, new = best
            if not new:
                continue
            picks[key] = size
            seen[name] |= _truths(conditions, size)
            axis_name = _AXIS_NAMES.get(a, f"axis {a}")
            covers += [c.describe(size, axis_name) for c in new[:3]]
        if not picks:
            break
        shapes: ShapeMap = {}
        for name, shape in s0.items():
            dims = list(shape)
            for a in dynamic.get(name, []):
                dims[a] = picks.get((name, a), dims[a])
            shapes[name] = tuple(dims)
        if shapes == s0 or shapes in already:
            break
        safety = min(pow2_part(v) for v in picks.values())
        chosen.append(PlannedShape(shapes, "; ".join(covers), safety, covers))
    chosen.sort(key=lambda p: -p.safety)
    for p in chosen:
        log.debug("planned %s: %s", format_shapes(p.shapes), p.reason)
    return chosen


def _truths(conditions: Iterable[Condition], size: int) -> set[tuple[Condition, bool]]:
    out: set[tuple[Condition, bool]] = set()
    for c in conditions:
        t = c.holds(size)
        if t is not None:
            out.add((c, t))
    return out


def _candidate_sizes(size: int, lat: AxisLattice | None, largest_level: int) -> list[int]:
    """Sizes from S0/2 to 3·S0/2 (at least the largest level), on the lattice when known."""
    lo = max(2, largest_level, (size + 1) // 2)
    hi = max(lo, size * 3 // 2)
    if isinstance(lat, AxisLattice) and not lat.irregular and lat.multiple > 1:
        # a lattice that allows only the export size is what is being checked: not a constraint
        return [v for v in range(lo, hi + 1) if lat.contains(v) and v != size]
    return [v for v in range(lo, hi + 1) if v != size]


def _best_size(
    sizes: list[int],
    conditions: list[Condition],
    seen: set[tuple[Condition, bool]],
    taken: set[int],
    s0: int,
) -> tuple[int, list[Condition]] | None:
    """The size covering most unseen (condition, truth) pairs; ties: coarser, then nearer S0."""
    best: tuple[tuple[int, int, int], int, list[Condition]] | None = None
    for v in sizes:
        if v in taken:
            continue
        new = [c for c in conditions if (t := c.holds(v)) is not None and (c, t) not in seen]
        score = (len(new), pow2_part(v, 1024), -abs(v - s0))
        if best is None or score > best[0]:
            best = (score, v, new)
    if best is None:
        return None
    return best[1], best[2]


__all__ = ["Condition", "PlannedShape", "ShapeClasses", "plan_class_shapes", "pow2_part", "shape_classes"]
