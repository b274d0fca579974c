"""DS002: ``Resize`` whose output size is frozen at the export-time size.

``F.interpolate(feat32, size=(H16, W16))`` with Python ints exports ``sizes`` whose spatial
entries are constants (often behind ``Concat(Shape(x)[0:2], [h0, w0])``). At any other input
size the output stays ``h0 x w0`` and the join with the skip connection fails.

Fixes, in order of preference:
1. the frozen entries equal the export-time size of the tensor the output is joined with (also
   through a channel slice, ``up[:, :16] + skip``): take them from ``Shape`` of that tensor;
2. a ViT patch embedding (a ``Conv`` with kernel = stride = p on the graph input) explains them
   as ``(H // p) * p`` (Depth Anything's head) where another tensor's size would also fit at the
   export shape: rebuild that arithmetic from ``Shape`` of the input;
3. they equal the export-time size of another tensor available before the resize (such as the
   graph input): take them from ``Shape`` of that tensor;
4. they equal the resize input's size times one factor: a constant ``scales`` input;
5. each frozen entry is ``floor(d / p) * m`` for a dim ``d`` of an earlier tensor (``int(f.shape[2])
   * 2`` of another tensor, ``(H // 14) * 14``): rebuild it from ``Shape``, ``Div`` and ``Mul``, but
   only when every such explanation gives the same sizes at other input shapes, or exactly one of
   them is corroborated by the graph (a tensor of size ``H // p`` beside the idiom ``(H // p) * p``).
   Explanations that differ and none corroborated: reported, not rewritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import SAME_SIZE_UNARY, Context, fmt, is_descendant, join_partners
from dynashape.analysis.probe import Probe
from dynashape.findings import Finding, Refusal, RewritePlan
from dynashape.rules.base import Rule
from dynashape.rules.builder import RewriteBuilder
from dynashape.shapes import ShapeMap

log = logging.getLogger(__name__)

_MAX_FACTOR = 64  # largest multiplier k in ``k * dim`` and divisor p in ``(dim // p) * p``
_MAX_REPEAT = 8  # ``(dim // p) * p * j``: the idiom times a small scale j
_MIN_PATCH = 8  # a patch embedding: kernel = stride >= this (ViT 8/14/16/32; not a 2x2 or 4x4 stem)
# offsets of the spatial axes (H, W, ...) from the export shape in the probes that tell
# explanations apart: different per axis (a square export shape must not let H explain W),
# covering residues mod small strides and patch sizes
_PROBE_OFFSETS = ((1, 3), (15, 29), (37, 53))


@dataclass(frozen=True)
class Explanation:
    """One frozen entry as ``floor(dim(ref, axis) / div) * mul``, at the export shape."""

    ref: ir.Value
    axis: int
    div: int
    mul: int
    source: str  # "input" (graph input), "own" (the resize's input), "earlier", "idiom" ((d // p) * p)

    def value(self, ctx: Context, probe: Probe) -> int | None:
        dims = ctx.dims(self.ref, probe)
        if dims is None or self.axis >= len(dims) or dims[self.axis] is None:
            return None
        return (int(dims[self.axis] or 0) // self.div) * self.mul

    def text(self) -> str:
        dim = f"{self.ref.name}.shape[{self.axis}]"
        if self.div > 1:
            dim = f"({dim} // {self.div})"
        return f"{dim} * {self.mul}" if self.mul > 1 else dim

    def term(self, entry: int) -> SizeTerm:
        return SizeTerm(entry, self.ref.name or "", self.axis, self.div, self.mul, self.text())


@dataclass(frozen=True)
class SizeTerm:
    """Entry ``entry`` of ``sizes`` as ``floor(Shape(ref)[axis] / div) * mul`` (``text`` says so)."""

    entry: int
    ref: str
    axis: int
    div: int
    mul: int
    text: str


@dataclass(frozen=True)
class ResizePlan(RewritePlan):
    """DS002: the frozen entries of ``sizes`` (``frozen_axes``; ``sizes_s0`` at the export shape)
    from ``Shape(ref)`` (``kind`` "shape"), as constant scales (``kind`` "scales": ``factor`` on
    ``scaled_axes``), or from ``terms`` (``kind`` "arith"; ``alternative``: the plain match it was
    preferred to)."""

    kind: str  # "shape" | "scales" | "arith"
    frozen_axes: tuple[int, ...]
    sizes_s0: tuple[int, ...]
    ref: str = ""
    factor: float = 0.0
    scaled_axes: tuple[int, ...] = ()
    terms: tuple[SizeTerm, ...] = ()
    alternative: str = ""


class FrozenResizeSize(Rule[ResizePlan]):
    id = "DS002"
    title = "Resize output size is a constant frozen at the export shape (interpolate(size=...) with ints)"
    ops = ("Resize",)
    needs_export_shape = True

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        if len(node.inputs) < 4 or node.inputs[3] is None:
            return self.refuse(node, "resizes by scales, not to a fixed size")
        x, sizes = node.inputs[0], node.inputs[3]
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        v0, v1 = ctx.value(sizes, ctx.p0), ctx.value(sizes, ctx.p1)
        if x0 is None or x1 is None:
            return self.refuse(node, "input shape unknown")
        if v0 is None or v1 is None:
            return self.refuse(node, "sizes cannot be computed from shapes alone")
        s0 = [int(v) for v in np.atleast_1d(v0)]
        s1 = [int(v) for v in np.atleast_1d(v1)]
        if len(s0) != len(x0):
            return self.refuse(node, f"sizes has {len(s0)} entries for a rank-{len(x0)} input")
        frozen = [i for i in range(len(s0)) if x0[i] != x1[i] and s0[i] == s1[i]]
        if not frozen:
            return self.refuse(node, "its output size follows the input size")
        partners = _partners(node, frozen)
        plan, why_not = self._plan(ctx, node, s0, frozen, partners)
        out_dims = ctx.dims(node.outputs[0], ctx.p1)
        partner_txt = ""
        if plan is not None and plan.kind == "shape":
            partner_txt = f", the export-time size of {plan.ref!r}"
        elif plan is not None and plan.kind == "arith":
            texts = {t.entry: t.text for t in plan.terms}
            partner_txt = ", computed at export as " + ", ".join(texts[i] for i in frozen)
        frozen_txt = "x".join(str(s0[i]) for i in frozen)
        x_txt = "x".join(str(x1[i]) for i in frozen)
        message = (
            f"Resize output size {frozen_txt} (axes {frozen}) is a constant{partner_txt}: at input "
            f"{fmt(next(iter(ctx.s1.values())))} its input is {x_txt} and it still produces {frozen_txt}"
        )
        if partners:
            message += f", so the join with {partners[0].name!r} fails"
        return self.finding(
            node,
            severity="error",
            message=message,
            fixable=bool(plan),
            baked_value={str(i): s0[i] for i in frozen},
            breaks_at="every input size other than the export size",
            fix=self._describe(plan) if plan else (
                f"not rewritten: {why_not}; in the source use F.interpolate(x, size=ref.shape[-2:]) "
                "or scale_factor"
            ),
            details={"frozen_axes": frozen, "sizes_s0": s0, "out_s1": list(out_dims or [])},
            plan=plan,
        )

    def _plan(self, ctx: Context, node: ir.Node, s0: list[int], frozen: list[int],
              partners: list[ir.Value]) -> tuple[ResizePlan | None, str]:
        """The fix (None: none), and why there is none."""
        joined = [p for p in partners if not is_descendant(p, node)]
        for ref in joined:
            if _same_size(ctx, ref, s0, frozen):
                return ResizePlan("shape", tuple(frozen), tuple(s0), ref=ref.name or ""), ""
        same = next((ref for ref in self._reference_candidates(ctx, node) if _same_size(ctx, ref, s0, frozen)), None)
        if same is not None:
            patch = _patch_idiom(ctx, node, s0, frozen, same)
            if patch:
                return patch, ""
            return ResizePlan("shape", tuple(frozen), tuple(s0), ref=same.name or ""), ""
        x0 = ctx.dims(node.inputs[0], ctx.p0)
        assert x0 is not None
        per_axis = {i: Fraction(s0[i], x0[i]) for i in frozen if x0[i]}
        # a frozen axis kept at its input size (the batch of a constant ``sizes``) scales by 1
        scaled = {i: f for i, f in per_axis.items() if f != 1}
        factors = set(scaled.values())
        if len(factors) == 1 and len(per_axis) == len(frozen):
            f = factors.pop()
            if f.denominator == 1 or f.numerator == 1:
                return ResizePlan("scales", tuple(frozen), tuple(s0), factor=float(f),
                                  scaled_axes=tuple(sorted(scaled))), ""
        return _arithmetic_plan(ctx, node, s0, frozen)

    def _reference_candidates(self, ctx: Context, node: ir.Node) -> list[ir.Value]:
        """Graph inputs, then earlier tensors (nearest first)."""
        cands: list[ir.Value] = list(ctx.model.graph.inputs)
        order = list(ctx.model.graph)
        idx = order.index(node)
        for earlier in reversed(order[:idx]):
            cands.extend(o for o in earlier.outputs if o is not None)
        return cands

    @staticmethod
    def _describe(plan: ResizePlan) -> str:
        if plan.kind == "shape":
            return f"take the frozen entries of sizes from Shape({plan.ref})"
        if plan.kind == "arith":
            return "compute the frozen entries of sizes from Shape: " + ", ".join(
                f"axis {t.entry}: {t.text}" for t in plan.terms)
        return f"use constant scales (factor {plan.factor:g}) instead of sizes"

    def rewrite(self, builder: RewriteBuilder, node: ir.Node, plan: ResizePlan) -> str:
        frozen = list(plan.frozen_axes)
        s0 = plan.sizes_s0
        x = node.inputs[0]
        assert x is not None
        if plan.kind == "scales":
            rank = len(s0)
            scales = np.array([plan.factor if i in plan.scaled_axes else 1.0 for i in range(rank)], np.float32)
            scales_v = builder.initializer(f"{node.name}_scales", scales)
            roi = node.inputs[1]
            if roi is None and builder.opset < 13:
                roi = builder.initializer(f"{node.name}_roi", np.zeros(0, np.float32))
            node.resize_inputs(3)
            node.replace_input_with(1, roi)
            node.replace_input_with(2, scales_v)
            return f"{node.name}: sizes {fmt(s0)} -> scales {scales.tolist()}"
        if plan.kind == "arith":
            return self._rewrite_arith(builder, node, plan)
        ref = builder.find_value(plan.ref)
        assert ref is not None
        shape_x = builder.node("Shape", [x], name=f"{node.name}_shape_in")
        shape_r = builder.node("Shape", [ref], name=f"{node.name}_shape_ref")
        pieces: list[ir.Value] = []
        for from_ref, axes in _runs(len(s0), frozen):
            src = shape_r if from_ref else shape_x
            idx = builder.const(f"{node.name}_axes_{axes[0]}", axes)
            pieces.append(builder.op("Gather", [src.outputs[0], idx], name=f"{node.name}_gather_{axes[0]}", axis=0))
        _finish_sizes(builder, node, pieces)
        return f"{node.name}: sizes {fmt(s0)} -> Shape({plan.ref}) on axes {frozen}"

    @staticmethod
    def _rewrite_arith(builder: RewriteBuilder, node: ir.Node, plan: ResizePlan) -> str:
        """sizes = Concat(old sizes on the other axes, floor(Shape(ref)[axis] / div) * mul per frozen axis)."""
        sizes = node.inputs[3]
        assert sizes is not None
        terms = {t.entry: t for t in plan.terms}
        shapes: dict[str, ir.Value] = {}
        pieces: list[ir.Value] = []
        for computed, axes in _runs(len(plan.sizes_s0), list(plan.frozen_axes)):
            if not computed:
                idx = builder.const(f"{node.name}_axes_{axes[0]}", axes)
                pieces.append(builder.op("Gather", [sizes, idx], name=f"{node.name}_kept_{axes[0]}", axis=0))
                continue
            for a in axes:
                term = terms[a]
                if term.ref not in shapes:
                    ref = builder.find_value(term.ref)
                    assert ref is not None
                    shapes[term.ref] = builder.op("Shape", [ref], name=f"{node.name}_shape_{a}")
                idx = builder.const(f"{node.name}_axis_{a}", [term.axis])
                piece = builder.op("Gather", [shapes[term.ref], idx], name=f"{node.name}_dim_{a}", axis=0)
                # int64 Div truncates: floor for the non-negative sizes here
                for op, k in (("Div", term.div), ("Mul", term.mul)):
                    if k == 1:
                        continue
                    piece = builder.op(op, [piece, builder.const(f"{node.name}_{op.lower()}_{a}", [k])],
                                       name=f"{node.name}_{op.lower()}_{a}")
                pieces.append(piece)
        _finish_sizes(builder, node, pieces)
        return f"{node.name}: sizes {fmt(plan.sizes_s0)} -> " + ", ".join(terms[a].text for a in plan.frozen_axes)


def _runs(rank: int, chosen: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive axes with the same membership in ``chosen``: one Gather per run."""
    runs: list[tuple[bool, list[int]]] = []
    for i in range(rank):
        inside = i in chosen
        if runs and runs[-1][0] == inside:
            runs[-1][1].append(i)
        else:
            runs.append((inside, [i]))
    return runs


def _finish_sizes(builder: RewriteBuilder, node: ir.Node, pieces: list[ir.Value]) -> None:
    sizes = pieces[0] if len(pieces) == 1 else builder.op("Concat", pieces, name=f"{node.name}_sizes", axis=0)
    builder.insert_before(node)
    node.replace_input_with(3, sizes)


def _partners(node: ir.Node, frozen: list[int]) -> list[ir.Value]:
    """Tensors the output is joined with, also through slices that leave the frozen axes whole
    (``up[:, :16] + skip``, ``torch.cat([up[:, :c], skip])``)."""
    return join_partners(node.outputs[0], through_slices=True, keep_axes=frozen)


def _same_size(ctx: Context, ref: ir.Value, s0: list[int], frozen: list[int]) -> bool:
    r0 = ctx.dims(ref, ctx.p0)
    if r0 is None or len(r0) != len(s0):
        return False
    dyn = set(ctx.dynamic_axes_of(ref))
    return all(r0[i] == s0[i] and i in dyn for i in frozen)


def _probe_shapes(ctx: Context) -> list[ShapeMap]:
    """Input shapes off the export shape by different amounts per spatial axis (batch + 1)."""
    out: list[ShapeMap] = []
    for offsets in _PROBE_OFFSETS:
        shapes: ShapeMap = {}
        for info in ctx.inputs:
            shape = list(ctx.s0[info.name])
            spatial = 0
            for axis in info.dynamic_axes:
                if axis == 0 and info.rank >= 3:
                    shape[axis] += 1
                else:
                    shape[axis] += offsets[spatial % len(offsets)] + 64 * (spatial // len(offsets))
                    spatial += 1
            shapes[info.name] = tuple(shape)
        out.append(shapes)
    return out


def _probes(ctx: Context) -> list[Probe]:
    return [ctx.p1, *(ctx.prober.at(s) for s in _probe_shapes(ctx))]


def _graph_inputs(ctx: Context, rank: int) -> list[ir.Value]:
    return [v for v in ctx.model.graph.inputs if v.const_value is None and v.shape is not None
            and v.shape.rank() == rank]


def _idioms(ctx: Context, axis: int, v0: int, rank: int) -> list[Explanation]:
    """``(d // p) * p * j == v0`` for a dynamic dim d of a graph input at the export shape."""
    found: list[Explanation] = []
    for g in _graph_inputs(ctx, rank):
        d0 = ctx.dims(g, ctx.p0)
        if d0 is None or d0[axis] is None or axis not in ctx.dynamic_axes_of(g):
            continue
        d = int(d0[axis] or 0)
        for p in range(2, _MAX_FACTOR + 1):
            q = (d // p) * p
            if q and v0 % q == 0 and q != d and 1 <= v0 // q <= _MAX_REPEAT:
                found.append(Explanation(g, axis, p, p * (v0 // q), "idiom"))
    return found


def _multiples(ctx: Context, node: ir.Node, axis: int, v0: int, rank: int) -> list[Explanation]:
    """``k * d == v0`` for a dynamic dim d of the resize's input, a graph input or an earlier tensor."""
    x = node.inputs[0]
    assert x is not None
    order = list(ctx.model.graph)
    earlier = [o for n in reversed(order[:order.index(node)]) for o in n.outputs if o is not None and o is not x]
    found: list[Explanation] = []
    seen: set[int] = set()
    for source, values in (("own", [x]), ("input", _graph_inputs(ctx, rank)), ("earlier", earlier)):
        for ref in values:
            if id(ref) in seen:
                continue
            seen.add(id(ref))
            r0, r1 = ctx.dims(ref, ctx.p0), ctx.dims(ref, ctx.p1)
            if r0 is None or r1 is None or len(r0) != rank or len(r1) != rank:
                continue
            d0, d1 = r0[axis], r1[axis]
            if not d0 or d1 is None or d0 == d1 or v0 % d0:
                continue
            k = v0 // d0
            if 1 <= k <= _MAX_FACTOR:
                found.append(Explanation(ref, axis, 1, k, source))
    return found


def _classes(ctx: Context, cands: list[Explanation], probes: list[Probe]) -> list[list[Explanation]]:
    """Group explanations that give the same size at every probe where all of them are known."""
    table = [[c.value(ctx, p) for p in probes] for c in cands]
    usable = [j for j in range(len(probes)) if all(row[j] is not None for row in table)]
    groups: dict[tuple[int | None, ...], list[Explanation]] = {}
    for c, row in zip(cands, table):
        groups.setdefault(tuple(row[j] for j in usable), []).append(c)
    return list(groups.values())


def _patch_sizes(ctx: Context, g: ir.Value, axis: int) -> set[int]:
    """Patch sizes p of ViT patch embeddings on graph input ``g``: ``Conv`` with kernel = stride = p
    >= _MIN_PATCH and no padding on this spatial axis, fed by ``g`` (through same-size ops)."""
    found: set[int] = set()
    frontier, seen = [g], set()
    while frontier:
        v = frontier.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        for use in v.uses():
            n = use.node
            if n.op_type in SAME_SIZE_UNARY or (n.op_type in ("Sub", "Div", "Mul", "Add") and all(
                    i is v or (i is not None and i.const_value is not None) for i in n.inputs)):
                frontier.extend(o for o in n.outputs[:1] if o is not None)
            elif n.op_type == "Conv" and use.idx == 0 and axis >= 2:
                k = n.attributes.get_ints("kernel_shape", None)
                s = n.attributes.get_ints("strides", None)
                pads = n.attributes.get_ints("pads", None) or []
                a = axis - 2
                if (k and s and a < len(k) and a < len(s) and k[a] == s[a] >= _MIN_PATCH
                        and not any(pads) and n.attributes.get_string("auto_pad", "NOTSET") in ("NOTSET", "VALID")):
                    found.add(int(k[a]))
    return found


def _corroborated(ctx: Context, cls: list[Explanation]) -> bool:
    """An idiom ``(d // p) * p`` whose class holds a tensor of size ``k * (d // p)`` too: the graph
    computes ``d // p`` (a patch grid), so the idiom is not a coincidence of the export shape."""
    return any(c.source == "idiom" for c in cls) and any(c.source != "idiom" for c in cls)


def _representative(cls: list[Explanation]) -> Explanation:
    """The idiom on the graph input (closest to the source), else the first in preference order."""
    idioms = sorted((c for c in cls if c.source == "idiom"), key=lambda c: (c.div, c.mul))
    return idioms[0] if idioms else cls[0]


def _arith_plan(choice: dict[int, Explanation], s0: list[int], frozen: list[int], alternative: str = "") -> ResizePlan:
    return ResizePlan("arith", tuple(frozen), tuple(s0), terms=tuple(e.term(a) for a, e in choice.items()),
                      alternative=alternative)


def _patch_idiom(ctx: Context, node: ir.Node, s0: list[int], frozen: list[int], same: ir.Value
                 ) -> ResizePlan | None:
    """Depth Anything exported at a multiple of its patch size: ``sizes`` equals the input's size
    there, but the source computes ``(H // 14) * 14``. With a ViT patch embedding on the graph input
    that idiom explains every frozen spatial axis and differs from ``Shape(same)`` off the export
    shape: the idiom (the patch embedding corroborates it; a plain size match does not)."""
    x0 = ctx.dims(node.inputs[0], ctx.p0)
    if x0 is None:
        return None
    rank = len(x0)
    choice: dict[int, Explanation] = {}
    plain: dict[int, Explanation] = {}
    for axis in frozen:
        if axis < 2:
            return None
        for g in _graph_inputs(ctx, rank):
            d0 = ctx.dims(g, ctx.p0)
            if d0 is None or d0[axis] is None or axis not in ctx.dynamic_axes_of(g):
                continue
            for p in sorted(_patch_sizes(ctx, g, axis)):
                d = int(d0[axis] or 0)
                if (d // p) * p == s0[axis]:
                    choice[axis] = Explanation(g, axis, p, p, "idiom")
                    break
            if axis in choice:
                break
        if axis not in choice:
            return None
        plain[axis] = Explanation(same, axis, 1, 1, "earlier")
    probes = _probes(ctx)
    differs = any(choice[a].value(ctx, p) != plain[a].value(ctx, p) for a in frozen for p in probes
                  if choice[a].value(ctx, p) is not None and plain[a].value(ctx, p) is not None)
    if not differs:
        return None
    log.info("%s: sizes match Shape(%s) at the export shape; the patch embedding says (H // p) * p",
             node.name, same.name)
    return _arith_plan(choice, s0, frozen, alternative=f"Shape({same.name})")


def _arithmetic_plan(ctx: Context, node: ir.Node, s0: list[int], frozen: list[int]
                     ) -> tuple[ResizePlan | None, str]:
    x0 = ctx.dims(node.inputs[0], ctx.p0)
    assert x0 is not None
    rank = len(x0)
    probes: list[Probe] | None = None
    choice: dict[int, Explanation] = {}
    for axis in frozen:
        v0 = s0[axis]
        cands = _multiples(ctx, node, axis, v0, rank) + _idioms(ctx, axis, v0, rank)
        if not cands:
            return None, (
                f"the frozen size {v0} on axis {axis} matches no tensor's export-time size, no integer "
                "multiple of one and no (d // p) * p of an input dim"
            )
        if probes is None:
            probes = _probes(ctx)
        classes = _classes(ctx, cands, probes)
        if len(classes) > 1:
            backed = [c for c in classes if _corroborated(ctx, c)]
            if len(backed) != 1:
                shown = ", ".join(_representative(c).text() for c in (backed or classes)[:3])
                return None, (
                    f"ambiguous: on axis {axis} the frozen {v0} is {shown} (and {len(classes)} explanations "
                    "in all) at the export shape, which differ at other sizes and none of which the graph "
                    "singles out"
                )
            classes = backed
        choice[axis] = _representative(classes[0])
    return _arith_plan(choice, s0, frozen), ""


RULES: list[Rule] = [FrozenResizeSize()]
