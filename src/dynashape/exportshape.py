"""Recovering the export shape S0 from the graph alone.

Baked constants are the export-time sizes of some tensor: a whole-axis pooling kernel equals its
input's size at S0, a frozen resize size equals its join partner's size at S0, and so does a
constant joined with a live tensor (a zeros/arange/grid made at the export size). Probing the graph
at two large sizes gives each tensor's stride relative to the input, so each constant votes for
an input size; the value with most votes that makes the original graph consistent is S0.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from dynashape.analysis import JOINS, join_partners, traced_dims
from dynashape.model import InputInfo, graph_inputs, read_export_shape
from dynashape.probe import Probe, Prober
from dynashape.shapes import ShapeMap, format_shapes

log = logging.getLogger(__name__)

_P = 1024  # base probe size of every dynamic spatial axis
_FALLBACK_SIZES = (512, 256, 1024, 384, 640, 224, 320, 128, 64)


@dataclass
class ExportShape:
    shapes: ShapeMap
    source: str  # "given", "metadata", "estimated", "default"
    note: str


def resolve_export_shape(
    proto: onnx.ModelProto, given: ShapeMap | None = None, prober: Prober | None = None
) -> ExportShape:
    inputs = graph_inputs(proto)
    if given:
        return ExportShape(_complete(inputs, given), "given", "as given")
    meta = read_export_shape(proto)
    if meta:
        return ExportShape(_complete(inputs, meta), "metadata", "recorded by dynashape export")
    prober = prober or Prober(proto)
    est = _estimate(proto, inputs, prober)
    if est is not None:
        return est
    return _default(inputs, prober)


def _complete(inputs: list[InputInfo], shapes: ShapeMap) -> ShapeMap:
    from dynashape.errors import DynashapeError

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


def _base(inputs: list[InputInfo], size: int) -> ShapeMap:
    shapes: ShapeMap = {}
    for info in inputs:
        dims = []
        for axis, d in enumerate(info.dims):
            if isinstance(d, int):
                dims.append(d)
            elif axis == 0 and info.rank >= 3:
                dims.append(1)
            else:
                dims.append(size)
        shapes[info.name] = tuple(dims)
    return shapes


def _spatial_axes(inputs: list[InputInfo]) -> list[tuple[str, int]]:
    return [(i.name, a) for i in inputs for a in i.dynamic_axes if not (a == 0 and i.rank >= 3)]


def _anchors(model: ir.Model) -> list[tuple[ir.Value, int, int]]:
    """(tensor, axis, export-time size) triples that baked constants imply."""
    anchors: list[tuple[ir.Value, int, int]] = []
    for node in model.graph:
        if node.op_type in ("AveragePool", "MaxPool"):
            kernel = node.attributes.get("kernel_shape")
            pads = node.attributes.get("pads")
            if kernel is None or (pads is not None and any(pads.as_ints())) or node.inputs[0] is None:
                continue
            if _pyramid_bins(node, node.inputs[0]):
                continue  # one of several bin counts of a pyramid (DS004): no kernel is the whole axis
            strides_attr = node.attributes.get("strides")
            ks = list(kernel.as_ints())
            strides = list(strides_attr.as_ints()) if strides_attr is not None else [1] * len(ks)
            for i, k in enumerate(ks):
                # windows of 2-3 are ordinary downsampling, not a whole-axis pool
                if k > 3 and strides[i] in (1, k):
                    anchors.append((node.inputs[0], 2 + i, k))
    return anchors


def _pyramid_bins(node: ir.Node, x: ir.Value) -> bool:
    """Is ``x`` pooled by another kernel == stride pool with another window > 1 on the same axis
    (a pyramid's bins; strip pools [h, 1] and [1, w] are not)?"""
    kernel = node.attributes.get("kernel_shape")
    mine = list(kernel.as_ints()) if kernel is not None else []
    for use in x.uses():
        other = use.node
        if other is node or other.op_type not in ("AveragePool", "MaxPool"):
            continue
        k_attr, s_attr = other.attributes.get("kernel_shape"), other.attributes.get("strides")
        k = list(k_attr.as_ints()) if k_attr is not None else []
        if (k and s_attr is not None and list(s_attr.as_ints()) == k and len(k) == len(mine)
                and any(a > 1 and b > 1 and a != b for a, b in zip(k, mine))):
            return True  # one axis pooled with two different windows: bins, not the whole axis
    return False


def _resize_anchors(model: ir.Model, probes: list[Probe]) -> list[tuple[ir.Value, int, int]]:
    anchors: list[tuple[ir.Value, int, int]] = []
    for node in model.graph:
        if node.op_type != "Resize" or len(node.inputs) < 4 or node.inputs[3] is None:
            continue
        name = node.inputs[3].name or ""
        vals = [p.value(name) for p in probes]
        if any(v is None for v in vals):
            continue
        arrays = [np.atleast_1d(v).astype(np.int64) for v in vals]  # type: ignore[arg-type]
        frozen = [i for i in range(2, len(arrays[0])) if all(int(a[i]) == int(arrays[0][i]) for a in arrays)]
        if not frozen:
            continue
        for partner in join_partners(node.outputs[0]):
            for i in frozen:
                anchors.append((partner, i, int(arrays[0][i])))
    return anchors


def _constant_dims(value: ir.Value) -> tuple[int, ...] | None:
    """Dims of an initializer or ``Constant`` output (None for computed tensors)."""
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape.numpy())
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return tuple(int(d) for d in producer.attributes["value"].as_tensor().shape.numpy())
    return None


def _join_anchors(model: ir.Model, probe: Probe) -> list[tuple[ir.Value, int, int]]:
    """A constant joined with a live tensor (DS007/DS008: ``x + zeros(1, c, h, w)``, a cached grid):
    its dims > 1 are the export-time sizes of the partner axes they line up with. Only partner
    axes that follow a spatial input axis vote, so per-channel weights never do."""
    anchors: list[tuple[ir.Value, int, int]] = []
    for node in model.graph:
        if node.op_type not in JOINS:
            continue
        dims = [_constant_dims(v) if v is not None else None for v in node.inputs]
        if all(d is None for d in dims):
            continue
        for i, const in enumerate(dims):
            if const is None:
                continue
            for k, partner in enumerate(node.inputs):
                if k == i or partner is None or dims[k] is not None:
                    continue
                p_dims = traced_dims(partner, probe)
                if p_dims is None:
                    continue
                rank, p_rank = len(const), len(p_dims)
                for axis, size in enumerate(const):
                    if size <= 1:
                        continue
                    if node.op_type == "Concat":
                        cat = node.attributes.get_int("axis", 0)
                        pa = axis if rank == p_rank and axis != (cat + rank if cat < 0 else cat) else None
                    else:
                        pa = axis + p_rank - rank
                    if pa is not None and 0 <= pa < p_rank:
                        anchors.append((partner, pa, size))
    return anchors


def _estimate(proto: onnx.ModelProto, inputs: list[InputInfo], prober: Prober) -> ExportShape | None:
    spatial = _spatial_axes(inputs)
    if not spatial:
        return None
    model = ir.serde.deserialize_model(proto)
    base = _base(inputs, _P)
    p_base = prober.at(base)
    doubled: dict[tuple[str, int], Probe] = {}
    for name, axis in spatial:
        s = {k: tuple(v) for k, v in base.items()}
        shape = list(s[name])
        shape[axis] = 2 * _P
        s[name] = tuple(shape)
        doubled[(name, axis)] = prober.at(s)
    anchors = _anchors(model) + _resize_anchors(model, [p_base, *doubled.values()]) + _join_anchors(model, p_base)
    votes: dict[tuple[str, int], Counter[int]] = {key: Counter() for key in spatial}
    for value, axis, size in anchors:
        d_base = traced_dims(value, p_base)
        if d_base is None or axis >= len(d_base) or d_base[axis] is None:
            continue
        for key, probe in doubled.items():
            d2 = traced_dims(value, probe)
            if d2 is None or axis >= len(d2) or d2[axis] is None or d2[axis] == d_base[axis]:
                continue
            stride = _P / (d2[axis] - d_base[axis])  # type: ignore[operator]
            estimate = round(_P + (size - d_base[axis]) * stride)  # type: ignore[operator]
            if estimate > 0:
                votes[key][estimate] += 1
    if not any(votes.values()):
        return None
    shapes = {k: list(v) for k, v in _base(inputs, 0).items()}
    voted = {key: c.most_common(1)[0][0] for key, c in votes.items() if c}
    for name, axis in spatial:
        if (name, axis) in voted:
            shapes[name][axis] = voted[(name, axis)]
        else:  # an axis no constant speaks for: take its sibling's size (square), else 512
            siblings = [v for (n, _), v in voted.items() if n == name]
            shapes[name][axis] = siblings[0] if siblings else 512
    result: ShapeMap = {k: tuple(v) for k, v in shapes.items()}
    count = sum(sum(c.values()) for c in votes.values())
    if not prober.at(result).ok:
        log.info("estimated export shape %s is not consistent: %s", format_shapes(result), prober.at(result).failure)
        return ExportShape(
            result, "estimated", f"estimated from {count} baked constants (the graph is not consistent there)"
        )
    return ExportShape(result, "estimated", f"estimated from {count} baked constant(s)")


def _default(inputs: list[InputInfo], prober: Prober) -> ExportShape:
    for size in _FALLBACK_SIZES:
        shapes = _base(inputs, size)
        if prober.at(shapes).ok:
            return ExportShape(
                shapes, "default", "no baked constants point at an export shape; a size where the graph is consistent"
            )
    return ExportShape(_base(inputs, _FALLBACK_SIZES[0]), "default", "no size found where the graph is consistent")
