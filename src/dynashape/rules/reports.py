"""Report-only rules: hazards with no exact graph rewrite, so the finding names the source change.

* DS009: Python ``if`` on a size. The branch not taken is simply absent, so the ONNX file alone
  shows only traces: an ``If`` whose condition is computed from ``Shape``, a ``Pad`` with
  constant pads that rounds a dynamic axis up to a multiple at the export size only (``if h % 2:
  x = F.pad(x, (0, 0, 0, 1))`` exported at an odd size), or a ``Pad`` to a multiple of a window
  computed with ``Mod`` (``(7 - W % 7) % 7``: Swin-style window partitioning, whose code branches
  on the same sizes; a warning that asks for the proof with ``--torch``). Differential export
  (``dynashape.pipeline.differential``) sees the rest: the node count differs between two exports.
  Split with DS013 (``rules/padding.py``): when a strided conv/pool after the pad says which
  multiple it rounds up to, the pad is "same" padding that DS013 rebuilds exactly from ``Shape``
  (padding when odd is ``(2 - H mod 2) mod 2``), so DS009 leaves it to DS013
  (:func:`~dynashape.rules.padding.owns_pad`); DS009 keeps the ``If`` nodes and the pads with no
  stride after them to tell the multiple (window partitioning, reshapes), which it only reports.
* DS010: ``int(x.shape[i])`` / ``.item()`` on a size feeding a shape input no DS001–DS008 rule
  owns (``TopK`` k, ``OneHot`` depth, ``Trilu`` k, ``CenterCropPad`` shape): the value is an
  export-time size and stays put when the input changes.
* DS011: a learned position embedding ``[1, L0, C]`` added to the tokens: L0 is fixed by the
  export size (H·W/p², plus class tokens). Not exact to fix: interpolating the embedding changes
  the numbers, so the report suggests a static axis or interpolation in the source.
* DS015: graph inputs with fixed dims on axes the user probably wanted dynamic (only the batch
  axis dynamic, a batch of 1, a size-1 spatial dim that the dynamo exporter specialised).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from dynashape.analysis.context import Context, fmt
from dynashape.findings import Finding, Refusal, Severity
from dynashape.rules.base import Rule
from dynashape.rules.padding import owns_pad

_MAX_PLUMBING = 64


def _shape_sources(value: ir.Value) -> list[str]:
    """Names of the tensors whose ``Shape``/``Size`` the value is computed from (empty: none)."""
    sources: list[str] = []
    stack: list[ir.Value] = [value]
    seen: set[int] = set()
    while stack and len(seen) < _MAX_PLUMBING:
        v = stack.pop()
        producer = v.producer()
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        if producer.op_type in ("Shape", "Size"):
            src = producer.inputs[0]
            if src is not None and src.const_value is None:
                sources.append(src.name or "?")
            continue
        stack.extend(i for i in producer.inputs if i is not None)
    return sources


def _constant_leaves(value: ir.Value) -> list[str]:
    """Constant nodes and initializers the value is computed from (when it has no Shape source)."""
    leaves: list[str] = []
    stack: list[ir.Value] = [value]
    seen: set[int] = set()
    while stack and len(seen) < _MAX_PLUMBING:
        v = stack.pop()
        if v.const_value is not None:
            leaves.append(v.name or "?")
            continue
        producer = v.producer()
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        if producer.op_type == "Constant":
            leaves.append(producer.name or v.name or "?")
            continue
        stack.extend(i for i in producer.inputs if i is not None)
    return leaves


def _ints(arr: np.ndarray | None) -> list[int] | None:
    if arr is None or not np.issubdtype(np.asarray(arr).dtype, np.integer):
        return None
    return [int(v) for v in np.atleast_1d(arr)]


# ---------------------------------------------------------------------------------------- DS009


class SizeControlFlow(Rule):
    id = "DS009"
    title = "Python `if` on a size: If on a Shape-derived condition, or a Pad that rounds up only the export size"
    ops = ("If", "Pad")

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        if node.op_type == "If":
            return self._check_if(ctx, node)
        return self._check_pad(ctx, node)

    def _check_if(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        cond = node.inputs[0]
        sources = _shape_sources(cond) if cond is not None else []
        if not sources:
            return self.refuse(node, "its condition does not depend on any tensor's size")
        c0, c1 = ctx.value(cond, ctx.p0), ctx.value(cond, ctx.p1)
        v0 = None if c0 is None or np.size(c0) != 1 else bool(np.asarray(c0).reshape(-1)[0])
        v1 = None if c1 is None or np.size(c1) != 1 else bool(np.asarray(c1).reshape(-1)[0])
        flips = v0 is not None and v1 is not None and v0 != v1
        taken = f"; it is {v0} at the export shape" if v0 is not None else ""
        if flips:
            taken += f" and {v1} at {fmt(next(iter(ctx.s1.values())))}: the other branch runs there"
        return self.finding(
            node, severity="warning",
            message=(f"If {node.name}: its condition is computed from the size of {', '.join(sorted(set(sources)))}"
                     f"{taken}; the two branches may produce different shapes (TensorRT requires their "
                     "output shapes to be broadcastable)"),
            fixable=False, baked_value=v0, breaks_at="sizes where the other branch is taken",
            fix=("not fixable in the graph: in the source, replace the `if` on a size with tensor ops that "
                 "work for every size (e.g. always pad to the multiple: F.pad(x, (0, (-w) % m, 0, (-h) % m)))"),
            details={"condition": cond.name if cond is not None else "", "s0": v0, "s1": v1,
                     "shape_sources": sorted(set(sources))},
        )

    def _check_pad(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        if owns_pad(ctx, node):
            return self.refuse(node, "a stride after it says which multiple it pads to: DS013 rebuilds it")
        x = node.inputs[0]
        pads_v = node.inputs[1] if len(node.inputs) > 1 else None
        if pads_v is None:
            attr = node.attributes.get_ints("pads", None)
            if attr is None:
                return self.refuse(node, "no pads")
            pads0: list[int] | None = list(attr)
            pads1 = pads0
        else:
            if _shape_sources(pads_v):
                windows = _mod_windows(ctx, pads_v)
                if windows:
                    return self._window_pad(ctx, node, windows)
                return self.refuse(node, "its pads are computed from the input size (they follow it)")
            pads0, pads1 = _ints(ctx.value(pads_v, ctx.p0)), _ints(ctx.value(pads_v, ctx.p1))
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            return self.refuse(node, "pads with an axes input: not the exporter's pad-when-odd pattern")
        x0, x1 = ctx.dims(x, ctx.p0), ctx.dims(x, ctx.p1)
        if pads0 is None or pads1 is None or x0 is None or x1 is None or len(pads0) != 2 * len(x0):
            return self.refuse(node, "pads or input shape unknown")
        if pads0 != pads1:
            return self.refuse(node, "its pads change with the input size")
        rank = len(x0)
        rounded: dict[str, dict[str, int]] = {}
        for axis in range(rank):
            a0, a1 = x0[axis], x1[axis]
            pad = pads0[axis] + pads0[axis + rank]
            if a0 is None or a1 is None or a0 == a1 or pad <= 0:
                continue
            multiple = _rounding_multiple(a0, pad)
            if multiple and (a1 + pad) % multiple:
                rounded[str(axis)] = {"size_s0": a0, "pad": pad, "multiple": multiple, "size_s1": a1}
        if not rounded:
            return self.refuse(
                node, f"pads {pads0} do not round a dynamic axis of its input ({fmt(x0)}) up to a multiple "
                "only at the export size")
        parts = [f"axis {a}: {r['size_s0']} + {r['pad']} = {r['size_s0'] + r['pad']}, a multiple of {r['multiple']}"
                 for a, r in rounded.items()]
        s1_parts = [f"{r['size_s1']} + {r['pad']} is not" for r in rounded.values()]
        return self.finding(
            node, severity="warning",
            message=(f"Pad {node.name} adds constant pads {pads0} that round its input up to a multiple only at "
                     f"the export size ({'; '.join(parts)}); at {fmt(x1)} {', '.join(s1_parts)}: the trace of a "
                     "Python `if h % m:` pad (or of padding computed in Python) taken at export"),
            fixable=False, baked_value={a: r["pad"] for a, r in rounded.items()},
            breaks_at="sizes that are already multiples (padded needlessly) or need another pad",
            fix=("in the source, compute the padding from the tensor for every size, e.g. "
                 "F.pad(x, (0, (-x.shape[-1]) % m, 0, (-x.shape[-2]) % m)), instead of `if` on a Python int"),
            details={"axes": rounded, "pads": pads0},
        )


    def _window_pad(self, ctx: Context, node: ir.Node, windows: list[int]) -> Finding:
        """Pads computed as ``(w - size % w) % w``: window partitioning, where size branches live."""
        x0 = ctx.dims(node.inputs[0], ctx.p0)
        w = ", ".join(map(str, windows))
        return self.finding(
            node, severity="warning",
            message=(f"Pad {node.name} pads its input ({fmt(x0)} at the export shape) up to a multiple of {w} "
                     f"computed from its size (`({windows[0]} - W % {windows[0]}) % {windows[0]}`): window "
                     "partitioning. The pad itself follows every size, but window-attention code usually also "
                     "branches in Python on the same sizes (crop only when it padded, no shift or a smaller window "
                     "when the window covers the feature map, an attention mask built for one size); the branch not "
                     "taken at the export shape is absent from this graph, so other sizes may be silently wrong"),
            fixable=False, baked_value=windows, breaks_at="sizes whose feature maps are (or are not) multiples of "
            f"the window {w}, unlike at the export shape",
            fix=("prove it: `dynashape check MODEL.onnx --torch FILE.py:FACTORY` exports at sizes in the other "
                 "classes and names the branches; or `verify --reference torch:FILE.py:FACTORY`"),
            details={"windows": windows, "pattern": "window-partition pad"},
        )


def _mod_windows(ctx: Context, value: ir.Value) -> list[int]:
    """Constant divisors ≥ 3 of the ``Mod`` nodes a value is computed from (``W % 7`` -> 7)."""
    out: set[int] = set()
    stack: list[ir.Value] = [value]
    seen: set[int] = set()
    while stack and len(seen) < _MAX_PLUMBING:
        producer = stack.pop().producer()
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        if producer.op_type == "Mod" and len(producer.inputs) > 1:
            divisor_v = producer.inputs[1]
            divisor = _ints(ctx.value(divisor_v, ctx.p0))
            if divisor is not None and len(divisor) == 1 and abs(divisor[0]) >= 3 and (
                    divisor_v is None or not _shape_sources(divisor_v)):
                out.add(abs(divisor[0]))
        stack.extend(i for i in producer.inputs if i is not None)
    return sorted(out)


def _rounding_multiple(size: int, pad: int) -> int:
    """The largest power of two (2..64) that ``size + pad`` is a multiple of and ``size`` is not."""
    best = 0
    m = 2
    while m <= 64:
        if (size + pad) % m == 0 and size % m and pad < m:
            best = m
        m *= 2
    return best


# ---------------------------------------------------------------------------------------- DS010

# op -> (slot, what, axis attribute or None): shape inputs no DS001–DS008 rule owns
_SIZE_SLOTS: dict[str, tuple[int, str]] = {
    "TopK": (1, "k"), "OneHot": (1, "depth"), "Trilu": (1, "k"), "CenterCropPad": (1, "shape"),
}


class ShapeConstantElsewhere(Rule):
    id = "DS010"
    title = "Export-time size (int(x.size(i)) / .item()) as a constant in TopK k, OneHot depth, Trilu k, CenterCropPad"
    ops = tuple(_SIZE_SLOTS)

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        slot, what = _SIZE_SLOTS[node.op_type]
        value = node.inputs[slot] if slot < len(node.inputs) else None
        if value is None:
            return self.refuse(node, f"no {what} input")
        if _shape_sources(value):
            return self.refuse(node, f"its {what} is computed from a tensor's size (it follows the input)")
        v0, v1 = _ints(ctx.value(value, ctx.p0)), _ints(ctx.value(value, ctx.p1))
        if v0 is None or v1 is None:
            return self.refuse(node, f"its {what} is not an integer computable from constants")
        if v0 != v1:
            return self.refuse(node, f"its {what} changes with the input size")
        matches = self._export_dims(ctx, node)
        hits = {i: v for i, v in enumerate(v0) if v > 1 and v in matches}
        if not hits:
            return self.refuse(node, f"its {what} {v0} equals no dynamic dim at the export shape")
        leaves = _constant_leaves(value)
        where = ", ".join(sorted({matches[v] for v in hits.values()}))
        x1 = ctx.dims(node.inputs[0], ctx.p1)
        return self.finding(
            node, severity="warning",
            message=(f"{node.op_type} {node.name}: {what} = {v0 if len(v0) > 1 else v0[0]} (from "
                     f"{', '.join(leaves) or value.name}) equals the export-time size {where}; it stays "
                     f"{v0 if len(v0) > 1 else v0[0]} when the input changes (input {fmt(x1)} at "
                     f"{fmt(next(iter(ctx.s1.values())))})"),
            fixable=False, detected_by="static", baked_value=v0 if len(v0) > 1 else v0[0],
            breaks_at="every input size other than the export size",
            fix=("not rewritten (no exact rewrite for this consumer): in the source keep the size a tensor "
                 f"(x.shape[i], not int(x.shape[i]) / .item() / math on it) so the exporter computes {what} "
                 "from Shape"),
            details={"constants": leaves, "matches": {str(v): matches[v] for v in hits.values()}},
        )

    @staticmethod
    def _export_dims(ctx: Context, node: ir.Node) -> dict[int, str]:
        """Dynamic dims at the export shape of the node's data input and of the graph inputs."""
        out: dict[int, str] = {}
        candidates = [node.inputs[0], *ctx.model.graph.inputs]
        for v in candidates:
            if v is None:
                continue
            d0 = ctx.dims(v, ctx.p0)
            if d0 is None:
                continue
            for axis in ctx.dynamic_axes_of(v):
                size = d0[axis]
                if size is not None:
                    out.setdefault(int(size), f"of axis {axis} of {v.name!r}")
        return out


# ---------------------------------------------------------------------------------------- DS011


class FixedTokenCount(Rule):
    id = "DS011"
    title = "Position embedding [1, L0, C] added to tokens whose count L follows the input size (ViT)"
    ops = ("Add",)

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        consts = [(i, v) for i, v in enumerate(node.inputs) if v is not None and v.const_value is not None]
        others = [v for v in node.inputs if v is not None and v.const_value is None]
        if len(consts) != 1 or len(others) != 1:
            return self.refuse(node, "not a tensor plus one initializer")
        emb, tokens = consts[0][1], others[0]
        shape = emb.const_value.shape if emb.const_value is not None else None
        dims = [d if isinstance(d, int) else -1 for d in shape] if shape is not None else []
        if len(dims) != 3 or dims[0] != 1 or dims[1] <= 1:
            return self.refuse(node, f"the initializer {emb.name} is {dims}, not a [1, L, C] embedding")
        t0, t1 = ctx.dims(tokens, ctx.p0), ctx.dims(tokens, ctx.p1)
        if t0 is None or t1 is None or len(t0) != 3:
            return self.refuse(node, "token shape unknown")
        if t0[1] != dims[1] or t0[2] != dims[2]:
            return self.refuse(node, f"tokens {fmt(t0)} do not match the embedding {dims} at the export shape")
        if t1[1] is None or t1[1] == t0[1]:
            return self.refuse(node, "the token count does not change with the input size")
        l0 = dims[1]
        patch = _patch_size(ctx, l0)
        how = ""
        if patch is not None:
            p, extra, hw = patch
            how = f" = {hw[0]}·{hw[1]}/{p}²" + (f" + {extra} class token{'s' if extra > 1 else ''}" if extra else "")
        return self.finding(
            node, severity="error",
            message=(f"Add {node.name}: the position embedding {emb.name} [1, {l0}, {dims[2]}] fixes the token "
                     f"count at L0 = {l0}{how}; at input {fmt(next(iter(ctx.s1.values())))} there are "
                     f"{t1[1]} tokens and the Add cannot broadcast"),
            fixable=False, baked_value=l0, breaks_at="every input size with another token count",
            fix=("not exact, so not rewritten: keep the spatial axes static at the export size, or in the source "
                 "interpolate the embedding to the token grid (F.interpolate(pos.reshape(1, h0, w0, C)"
                 ".permute(0, 3, 1, 2), size=(H // p, W // p), mode='bicubic')) as timm/DINO do"),
            details={"embedding": emb.name, "tokens_s0": l0, "tokens_s1": t1[1],
                     **({"patch": patch[0], "class_tokens": patch[1]} if patch else {})},
        )


def _patch_size(ctx: Context, tokens: int) -> tuple[int, int, tuple[int, int]] | None:
    """(p, class tokens, (H, W)) with tokens = H·W/p² + class tokens for a 4-D graph input at S0."""
    for info in ctx.inputs:
        shape = ctx.s0.get(info.name)
        if shape is None or len(shape) != 4:
            continue
        h, w = shape[2], shape[3]
        for extra in (0, 1, 2):
            for p in range(1, 65):
                if h % p == 0 and w % p == 0 and (h // p) * (w // p) + extra == tokens:
                    return p, extra, (h, w)
    return None


# ---------------------------------------------------------------------------------------- DS015


class StaticInputAxes(Rule):
    id = "DS015"
    title = "Graph input with fixed dims on axes probably meant dynamic (batch-only dynamic, batch 1, size-1 dims)"
    ops = ()  # every node: it reports at the first node that reads each graph input

    def check(self, ctx: Context, node: ir.Node) -> Finding | Refusal:
        inputs = {info.name: info for info in ctx.inputs}
        for value in node.inputs:
            if value is None or value.name not in inputs or value.const_value is not None:
                continue
            uses = list(value.uses())
            if not uses or uses[0].node is not node:
                continue
            info = inputs[value.name]
            if not info.dynamic_axes:
                return self.refuse(node, f"input {info.name!r} is fully static: a fixed-size input, not a hazard")
            suspects = _suspect_axes(info.dims)
            if not suspects:
                return self.refuse(
                    node, f"input {info.name!r} ({info.describe()}): its static axes look intended (channels)")
            spatial = {a: d for a, d in suspects.items() if a != 0}
            severity: Severity = "warning" if spatial else "info"
            wanted = sorted(set(info.dynamic_axes) | set(suspects))
            axes_txt = ", ".join(f"axis {a} = {d}" for a, d in suspects.items())
            names = {0: "N", 1: "C", 2: "H", 3: "W", 4: "D"}
            dyn = ", ".join(f"{a}: '{info.dims[a] if isinstance(info.dims[a], str) else names.get(a, f'd{a}')}'"
                            for a in wanted)
            why = []
            if 0 in suspects:
                why.append("the batch is fixed at 1 (exported with batch 1 without axis 0 in dynamic_axes)")
            if any(d == 1 for a, d in spatial.items()):
                why.append("a spatial dim is 1 (the dynamo exporter specialises sizes 0 and 1: export at ≥ 2)")
            if any(d != 1 for d in spatial.values()):
                why.append("only " + ", ".join(f"axis {a}" for a in info.dynamic_axes) + " dynamic")
            return self.finding(
                node, severity=severity,
                message=(f"input {info.name!r} is {info.describe()}: {axes_txt} fixed ({'; '.join(why)}); "
                         "ONNX Runtime and TensorRT reject every other size on those axes"),
                fixable=False, baked_value={str(a): d for a, d in suspects.items()},
                breaks_at=f"any size other than {axes_txt}",
                fix=(f"re-export with dynamic_axes={{'{info.name}': {{{dyn}}}}} (legacy exporter) or the same axes "
                     "in dynamic_shapes (dynamo, export sizes ≥ 2), or `dynashape export --dynamic "
                     f"{info.name}:{','.join(str(a) for a in wanted)}`; keep them static if that is intended"),
                details={"input": info.name, "static_axes": {str(a): d for a, d in suspects.items()},
                         "dynamic_axes": info.dynamic_axes},
            )
        return self.refuse(node, "reads no graph input first")


def _suspect_axes(dims: tuple[int | str | None, ...]) -> dict[int, int]:
    """Static axes of an input with some dynamic axes that look like an export accident."""
    rank = len(dims)
    if rank < 3:
        return {}
    out: dict[int, int] = {}
    if dims[0] == 1 and any(not isinstance(d, int) for d in dims[1:]):
        out[0] = 1
    if rank >= 4:
        for axis in range(2, rank):
            d = dims[axis]
            if not isinstance(d, int):
                continue
            if axis == rank - 1 and 1 < d <= 4:
                continue  # NHWC channels
            out[axis] = d
    return out


RULES: list[Rule] = [SizeControlFlow(), ShapeConstantElsewhere(), FixedTokenCount(), StaticInputAxes()]
