"""Small models for DS004 (bin pooling), DS006 (split), DS013 (same padding) and DS014 (slice).

onnx.helper graphs use ``models.GraphBuilder`` (input ``x`` = ``[N, 4, H, W]``, N/H/W dynamic).
Each hazard builder bakes export-time sizes the way an exporter does; ``reference=True`` gives the
same model written correctly by hand (sizes read from ``Shape``), built differently from the
rewrite it is compared with. ``torch_modules()`` holds the real source patterns as tiny modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import models as M
import numpy as np
import onnx
from onnx import TensorProto, helper

INT64_MAX = 2**63 - 1


# ------------------------------------------------------------------------------------- helpers


def dim(g: M.GraphBuilder, x: str, axis: int, name: str) -> str:
    """``Shape(x)[axis]`` as a ``[1]`` tensor."""
    shape = g.op("Shape", [x], f"{name}_shape")
    return g.op("Gather", [shape, g.i64(f"{name}_axis", [axis])], name, axis=0)


def arith(g: M.GraphBuilder, op: str, a: str, b: str | int, name: str) -> str:
    rhs = g.i64(f"{name}_c", [b]) if isinstance(b, int) else b
    return g.op(op, [a, rhs], name)


def bins_reference(g: M.GraphBuilder, x: str, axes_bins: dict[int, int], name: str, *,
                   reduce: str = "ReduceMean") -> str:
    """PyTorch's adaptive pooling written out: bin i of an axis of size D spans
    ``[floor(i*D/k), ceil((i+1)*D/k))``, each reduced with keepdims and concatenated. Exact at
    every size (uneven bins included); an axis with 1 bin is reduced whole."""
    cur = x
    for axis, k in axes_bins.items():
        d = dim(g, cur, axis, f"{name}_d{axis}")
        pieces = []
        for i in range(k):
            start = arith(g, "Div", arith(g, "Mul", d, i, f"{name}_a{axis}_{i}_si"), k, f"{name}_a{axis}_{i}_s")
            hi = arith(g, "Add", arith(g, "Mul", d, i + 1, f"{name}_a{axis}_{i}_ei"), k - 1, f"{name}_a{axis}_{i}_ej")
            end = arith(g, "Div", hi, k, f"{name}_a{axis}_{i}_e")
            sl = g.op("Slice", [cur, start, end, g.i64(f"{name}_a{axis}_{i}_ax", [axis])], f"{name}_a{axis}_{i}")
            pieces.append(g.reduce(reduce, sl, [axis], f"{name}_a{axis}_{i}_r"))
        cur = g.op("Concat", pieces, f"{name}_a{axis}", axis=axis) if k > 1 else pieces[0]
    return cur


def model_rank3(g: M.GraphBuilder, outputs: Sequence[str], channels: int = M.C) -> onnx.ModelProto:
    """Like ``GraphBuilder.model`` but the input ``x`` is ``[N, C, L]`` (N and L dynamic)."""
    x = helper.make_tensor_value_info(M.X, TensorProto.FLOAT, ["N", channels, "L"])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 3) for o in outputs]
    graph = helper.make_graph(g.nodes, "test", [x], outs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------------------------------- DS004


def ppm(h0: int, w0: int, bins: Sequence[int] = (1, 2, 4), *, op: str = "AveragePool", reference: bool = False,
        opset: int = 17) -> onnx.ModelProto:
    """Pyramid pooling (PSPNet): ``f = relu(conv(x))``; per bin k the map is pooled into k x k
    (node ``pool{k}``: kernel = stride = (h0/k, w0/k); bin 1 is a GlobalAveragePool), resized back
    to f's size (sizes from ``Shape(f)``) and concatenated with f; a 1x1 conv gives ``y``."""
    g = M.GraphBuilder(opset)
    f = g.op("Relu", [g.conv(M.X, M.C, 4, "conv")], "f")
    reduce = {"AveragePool": "ReduceMean", "MaxPool": "ReduceMax"}[op]
    branches = [f]
    for k in bins:
        if k == 1:
            p = g.op("GlobalAveragePool" if op == "AveragePool" else "GlobalMaxPool", [f], f"pool{k}")
        elif reference:
            p = bins_reference(g, f, {2: k, 3: k}, f"pool{k}", reduce=reduce)
        else:
            p = g.op(op, [f], f"pool{k}", kernel_shape=[h0 // k, w0 // k], strides=[h0 // k, w0 // k])
        c = g.op("Relu", [g.conv(p, 4, 4, f"bin{k}_conv", k=1)], f"bin{k}_relu")
        branches.append(g.resize(c, f"up{k}", sizes=g.shape_sizes(c, f, f"up{k}_sizes"), mode="linear"))
    cat = g.op("Concat", branches, "cat", axis=1)
    g.conv(cat, 4 * (len(bins) + 1), 2, M.Y, k=1)
    return g.model([M.Y])


def spp_classifier(h0: int, w0: int, k: int = 2, *, reference: bool = False, flatten: str = "op",
                   opset: int = 17) -> onnx.ModelProto:
    """Spatial pyramid pooling into a classifier: pool into k x k, flatten, Gemm to 5 classes.
    ``flatten``: ``op`` (Flatten, as the legacy exporter writes it) or ``computed`` (a Reshape to
    ``[N, 4 * (H // kh) * (W // kw)]`` from ``Shape(x)``, as the dynamo exporter writes
    ``torch.flatten`` after a pool it believes grows with the input)."""
    g = M.GraphBuilder(opset)
    f = g.op("Relu", [g.conv(M.X, M.C, 4, "conv")], "f")
    if reference:
        p = bins_reference(g, f, {2: k, 3: k}, "pool")
    else:
        p = g.op("AveragePool", [f], "pool", kernel_shape=[h0 // k, w0 // k], strides=[h0 // k, w0 // k])
    if flatten == "computed":
        rows = arith(g, "Div", dim(g, M.X, 2, "fh"), h0 // k, "rows")
        cols = arith(g, "Div", dim(g, M.X, 3, "fw"), w0 // k, "cols")
        size = arith(g, "Mul", arith(g, "Mul", rows, cols, "cells"), 4, "features")
        target = g.op("Concat", [dim(g, M.X, 0, "fn"), size], "flat_shape", axis=0)
        flat = g.op("Reshape", [p, target], "flat", allowzero=1)
    else:
        flat = g.op("Flatten", [p], "flat", axis=1)
    w = g.rng.standard_normal((5, 4 * k * k)).astype(np.float32)
    g.inits.append(onnx.numpy_helper.from_array(w, "fc.weight"))
    g.op("Gemm", [flat, "fc.weight"], M.Y, transB=1)
    return g.model([M.Y])


def strip_bins(h0: int, w0: int, k: int, *, width: str = "keep", reference: bool = False,
               opset: int = 17) -> onnx.ModelProto:
    """One axis in bins: ``adaptive_avg_pool2d(f, (k, None))`` (``width="keep"``: kernel
    ``[h0/k, 1]``) or ``(k, 1)`` (``width="whole"``: kernel ``[h0/k, w0]``), resized back to f's
    size and multiplied with it (``pool`` is the pool node)."""
    g = M.GraphBuilder(opset)
    f = g.op("Relu", [g.conv(M.X, M.C, 4, "conv")], "f")
    if reference:
        p = bins_reference(g, f, {2: k} if width == "keep" else {2: k, 3: 1}, "pool")
    else:
        kw = 1 if width == "keep" else w0
        p = g.op("AveragePool", [f], "pool", kernel_shape=[h0 // k, kw], strides=[h0 // k, kw])
    up = g.resize(p, "up", sizes=g.shape_sizes(p, f, "up_sizes"), mode="nearest")
    g.op("Mul", [f, up], M.Y)
    return g.model([M.Y])


def seq_bins(l0: int, k: int, *, reference: bool = False, opset: int = 17) -> onnx.ModelProto:
    """1-D: ``adaptive_avg_pool1d(x, k)`` on ``[N, C, L]`` (kernel = stride = l0/k), resized
    back to L (sizes from ``Shape(x)``) and added to x."""
    g = M.GraphBuilder(opset)
    if reference:
        p = bins_reference(g, M.X, {2: k}, "pool")
    else:
        p = g.op("AveragePool", [M.X], "pool", kernel_shape=[l0 // k], strides=[l0 // k])
    nc = g.shape_slice(p, 0, 2, "up_nc")
    length = g.shape_slice(M.X, 2, 3, "up_l")
    sizes = g.op("Concat", [nc, length], "up_sizes", axis=0)
    up = g.resize(p, "up", sizes=sizes, mode="nearest")
    g.op("Add", [M.X, up], M.Y)
    return model_rank3(g, [M.Y])


def fixed_window_pool(kernel: int = 8, *, resize: str = "scales", opset: int = 17) -> onnx.ModelProto:
    """``nn.AvgPool2d(kernel)`` (a fixed window, not a bin count) then upsampling by the same
    factor (``resize="scales"``) or to f's size (``"sizes"``) and a residual add: correct."""
    g = M.GraphBuilder(opset)
    f = g.op("Relu", [g.conv(M.X, M.C, 4, "conv")], "f")
    p = g.op("AveragePool", [f], "pool", kernel_shape=[kernel, kernel], strides=[kernel, kernel])
    if resize == "scales":
        up = g.resize(p, "up", scales=g.f32("up_scales", [1, 1, kernel, kernel]))
    else:
        up = g.resize(p, "up", sizes=g.shape_sizes(p, f, "up_sizes"))
    g.op("Add", [f, up], M.Y)
    return g.model([M.Y])


# ------------------------------------------------------------------------------------- DS013


def _pads_from_shape(g: M.GraphBuilder, x: str, axes: Sequence[int], *, kind: str, s: int, k: int,
                     style: str, rank: int = 4) -> str:
    """Pads computed from ``Shape(x)`` (the correct model): per axis ``(s - H mod s) mod s``,
    plus ``k - s`` for TF "SAME"; ``style`` "end" puts it all after, "floor" half before."""
    begins, ends = [], []
    for axis in range(rank):
        if axis not in axes:
            begins.append(g.i64(f"pad_z{axis}b", [0]))
            ends.append(g.i64(f"pad_z{axis}e", [0]))
            continue
        h = dim(g, x, axis, f"pad_h{axis}")
        rem = arith(g, "Mod", arith(g, "Sub", g.i64(f"pad_s{axis}", [s]),
                                    arith(g, "Mod", h, s, f"pad_m{axis}"), f"pad_r{axis}"), s, f"pad_rem{axis}")
        total = arith(g, "Add", rem, k - s, f"pad_t{axis}") if kind == "same" else rem
        begin = g.i64(f"pad_b{axis}", [0]) if style == "end" else arith(g, "Div", total, 2, f"pad_b{axis}")
        begins.append(begin)
        ends.append(arith(g, "Sub", total, begin, f"pad_e{axis}"))
    return g.op("Concat", begins + ends, "pads", axis=0)


def python_pads(size: int, *, kind: str, s: int, k: int, style: str) -> tuple[int, int]:
    """What the Python source computes at one size: (before, after)."""
    rem = (s - size % s) % s
    total = max(k - s + rem, 0) if kind == "same" else rem
    begin = 0 if style == "end" else total // 2
    return begin, total - begin


def same_pad(h0: int, w0: int, *, k: int = 3, s: int = 2, kind: str = "same", style: str = "floor",
             reference: bool = False, pads_as: str = "initializer", opset: int = 17) -> onnx.ModelProto:
    """``F.pad`` with pads computed in Python at (h0, w0), then ``Conv(k, stride s, padding 0)``
    (node ``pad``, conv ``down``), a ReLU and a 1x1 conv. ``kind="same"``: TF "SAME" padding
    (timm ``pad_same``: halves, fewer before); ``kind="multiple"``: pad up to a multiple of s
    (the conv then has k == s, a patch embedding). ``pads_as``: ``initializer``, ``constant``
    (a Constant node) or ``axes`` (opset 18: pads for axes [2, 3] only)."""
    g = M.GraphBuilder(opset)
    if reference:
        pads = _pads_from_shape(g, M.X, [2, 3], kind=kind, s=s, k=k, style=style)
    else:
        (hb, he), (wb, we) = (python_pads(v, kind=kind, s=s, k=k, style=style) for v in (h0, w0))
        if pads_as == "axes":
            pads = g.i64("pads", [hb, wb, he, we])
        elif pads_as == "constant":
            pads = g.constant_i64("pads", [0, 0, hb, wb, 0, 0, he, we])
        else:
            pads = g.i64("pads", [0, 0, hb, wb, 0, 0, he, we])
    inputs = [M.X, pads, "", g.i64("pad_axes", [2, 3])] if pads_as == "axes" and not reference else [M.X, pads]
    padded = g.op("Pad", inputs, "pad", mode="constant")
    down = g.conv(padded, M.C, 4, "down", k=k, stride=s, pad=0)
    g.conv(g.op("Relu", [down], "relu"), 4, 2, M.Y, k=1)
    return g.model([M.Y])


def pad_then_stages(h0: int, w0: int, multiple: int = 8, *, reference: bool = False,
                    opset: int = 17) -> onnx.ModelProto:
    """Pad up to a multiple of 8 (all after), a 3x3 conv, then three MaxPool 2x2/2 stages: the
    multiple is the total stride after the pad, no single op says it."""
    g = M.GraphBuilder(opset)
    if reference:
        pads = _pads_from_shape(g, M.X, [2, 3], kind="multiple", s=multiple, k=multiple, style="end")
    else:
        ph, pw = (multiple - h0 % multiple) % multiple, (multiple - w0 % multiple) % multiple
        pads = g.i64("pads", [0, 0, 0, 0, 0, 0, ph, pw])
    cur = g.op("Relu", [g.conv(g.op("Pad", [M.X, pads], "pad"), M.C, 4, "conv")], "relu")
    stages = 0
    while 2 ** stages < multiple:
        stages += 1
        cur = g.op("MaxPool", [cur], f"down{stages}" if 2 ** stages < multiple else M.Y, kernel_shape=[2, 2],
                   strides=[2, 2])
    return g.model([M.Y])


def fixed_pad(pads: Sequence[int], *, k: int = 3, s: int = 2, mode: str = "constant",
              opset: int = 17) -> onnx.ModelProto:
    """A Pad with fixed pads (``nn.ZeroPad2d`` / ``nn.ReflectionPad2d``) then Conv(k, s, pad 0):
    correct at every size."""
    g = M.GraphBuilder(opset)
    padded = g.op("Pad", [M.X, g.i64("pads", list(pads))], "pad", mode=mode)
    g.conv(padded, M.C, 2, M.Y, k=k, stride=s, pad=0)
    return g.model([M.Y])


def tf_pads_everywhere(h0: int, w0: int, *, witness: bool = True, reference: bool = False,
                       opset: int = 17) -> onnx.ModelProto:
    """HF MobileNetV2 with ``tf_padding``: TF "SAME" computed in Python before every conv. With
    ``witness``, a Pad of zeros (node ``pad1``, what ``apply_tf_padding`` gives a 1x1 conv) before
    a 1x1 conv ``expand``; then the pads of a 3x3/2 conv at (h0, w0) (node ``pad``, conv ``down``).
    At even sizes those are (0, 1), which ``nn.ZeroPad2d((0, 1, 0, 1))`` exports too."""
    g = M.GraphBuilder(opset)
    cur = M.X
    if witness:
        cur = g.conv(g.op("Pad", [M.X, g.i64("pads1", [0] * 8)], "pad1"), M.C, M.C, "expand", k=1, pad=0)
    if reference:
        pads = _pads_from_shape(g, cur, [2, 3], kind="same", s=2, k=3, style="floor")
    else:
        (hb, he), (wb, we) = (python_pads(v, kind="same", s=2, k=3, style="floor") for v in (h0, w0))
        pads = g.i64("pads", [0, 0, hb, wb, 0, 0, he, we])
    g.conv(g.op("Pad", [cur, pads], "pad"), M.C, 2, M.Y, k=3, stride=2, pad=0)
    return g.model([M.Y])


def pad_without_stride(h0: int, opset: int = 17) -> onnx.ModelProto:
    """``if h % 2: x = F.pad(x, (0, 0, 0, 1))`` exported at an odd h0, then a stride-1 conv: no
    stride after the pad says which multiple it rounds up to (DS009's case)."""
    g = M.GraphBuilder(opset)
    padded = g.op("Pad", [M.X, g.i64("pads", [0, 0, 0, 0, 0, 0, h0 % 2, 0])], "pad")
    g.conv(padded, M.C, 2, M.Y)
    return g.model([M.Y])


# ------------------------------------------------------------------------------------- DS006


def coord_split(h0: int, w0: int, *, reference: bool = False, opset: int = 17) -> onnx.ModelProto:
    """CoordAttention: the H strip (mean over W) and the W strip (mean over H, transposed) are
    concatenated along axis 2, go through a 1x1 conv + ReLU, and are split back (node ``split``:
    sizes [h0, w0], an input from opset 13, an attribute before); each strip gates x."""
    g = M.GraphBuilder(opset)
    x_h = g.reduce("ReduceMean", M.X, [3], "x_h")
    x_w = g.op("Transpose", [g.reduce("ReduceMean", M.X, [2], "x_w_mean")], "x_w", perm=[0, 1, 3, 2])
    cat = g.op("Concat", [x_h, x_w], "cat", axis=2)
    y = g.op("Relu", [g.conv(cat, M.C, 4, "mix", k=1)], "mix_relu")
    if reference:  # the pieces taken at the size of the H strip, read from Shape(x)
        h = dim(g, M.X, 2, "h")
        a = g.op("Slice", [y, g.i64("a_s", [0]), h, g.i64("a_ax", [2])], "a")
        b = g.op("Slice", [y, h, g.i64("b_e", [INT64_MAX]), g.i64("b_ax", [2])], "b")
    else:
        a, b = "a", "b"
        if opset >= 13:
            g.nodes.append(helper.make_node("Split", [y, g.i64("split_sizes", [h0, w0])], [a, b], name="split",
                                            axis=2))
        else:
            g.nodes.append(helper.make_node("Split", [y], [a, b], name="split", axis=2, split=[h0, w0]))
    gate_h = g.op("Sigmoid", [g.conv(a, 4, M.C, "conv_h", k=1)], "gate_h")
    gate_w = g.op("Sigmoid", [g.op("Transpose", [g.conv(b, 4, M.C, "conv_w", k=1)], "conv_w_t",
                                   perm=[0, 1, 3, 2])], "gate_w")
    g.op("Mul", [g.op("Mul", [M.X, gate_h], "gated_h"), gate_w], M.Y)
    return g.model([M.Y])


def split_parts(h0: int, sizes: Sequence[int] | None = None, *, axis: int = 2, reference: bool = False,
                opset: int = 17) -> onnx.ModelProto:
    """``a, b = torch.split(x, sizes, dim=axis)`` then ``a - b`` (node ``split``); ``sizes``
    default to two halves of h0. ``reference``: Split without sizes (equal parts, opset >= 13)."""
    g = M.GraphBuilder(opset)
    sizes = list(sizes) if sizes is not None else [h0 // 2, h0 - h0 // 2]
    inputs = [M.X] if reference else [M.X, g.i64("split_sizes", sizes)]
    g.nodes.append(helper.make_node("Split", inputs, ["a", "b"], name="split", axis=axis))
    g.op("Sub", ["a", "b"], M.Y)
    return g.model([M.Y])


def split_from_shape(opset: int = 17) -> onnx.ModelProto:
    """``torch.split(x, [x.shape[2] // 2, x.shape[2] - x.shape[2] // 2], dim=2)`` with tensors:
    the sizes come from ``Shape`` (correct)."""
    g = M.GraphBuilder(opset)
    h = dim(g, M.X, 2, "h")
    half = arith(g, "Div", h, 2, "half")
    sizes = g.op("Concat", [half, arith(g, "Sub", h, half, "rest")], "sizes", axis=0)
    g.nodes.append(helper.make_node("Split", [M.X, sizes], ["a", "b"], name="split", axis=2))
    g.op("Concat", ["b", "a"], M.Y, axis=2)
    return g.model([M.Y])


# ------------------------------------------------------------------------------------- DS014


def pad_crop(h0: int, w0: int, m: int = 8, *, reference: bool = False, opset: int = 17) -> onnx.ModelProto:
    """Pad up to a multiple of m (pads from ``Shape``: correct), a 3x3 conv, ``AvgPool(m)`` and
    ``x m`` nearest upsampling, then ``y[:, :, :h, :w]`` cropped back with Python ints (node
    ``crop``: ends [h0, w0] on axes [2, 3]). ``reference``: ends from ``Shape(x)``."""
    g = M.GraphBuilder(opset)
    pads = _pads_from_shape(g, M.X, [2, 3], kind="multiple", s=m, k=m, style="end")
    f = g.conv(g.op("Pad", [M.X, pads], "pad"), M.C, 4, "conv")
    p = g.op("AveragePool", [f], "pool", kernel_shape=[m, m], strides=[m, m])
    up = g.resize(p, "up", scales=g.f32("up_scales", [1, 1, m, m]))
    full = g.op("Add", [f, up], "full")
    if reference:
        shape = g.op("Shape", [M.X], "x_shape")
        ends = g.op("Slice", [shape, g.i64("hw_s", [2]), g.i64("hw_e", [4])], "hw")
    else:
        ends = g.i64("crop_ends", [h0, w0])
    g.op("Slice", [full, g.i64("crop_starts", [0, 0]), ends, g.i64("crop_axes", [2, 3])], M.Y)
    return g.model([M.Y])


def skip_crop(h0: int, w0: int, *, reference: bool = False, opset: int = 17) -> onnx.ModelProto:
    """A UNet join: ``up = 2x(maxpool(conv(skip)))`` has 2 * floor(H / 2) rows; the skip is cropped
    to it with Python ints (node ``crop``: ends = up's export size) and concatenated with it.
    ``reference``: ends from ``Shape(up)``."""
    g = M.GraphBuilder(opset)
    skip = g.op("Relu", [g.conv(M.X, M.C, 4, "enc")], "skip")
    down = g.op("MaxPool", [g.conv(skip, 4, 4, "mid")], "down", kernel_shape=[2, 2], strides=[2, 2])
    up = g.resize(down, "up", scales=g.f32("up_scales", [1, 1, 2, 2]))
    if reference:
        shape = g.op("Shape", [up], "up_shape")
        ends = g.op("Slice", [shape, g.i64("hw_s", [2]), g.i64("hw_e", [4])], "up_hw")
    else:
        ends = g.i64("crop_ends", [2 * (h0 // 2), 2 * (w0 // 2)])
    crop = g.op("Slice", [skip, g.i64("crop_starts", [0, 0]), ends, g.i64("crop_axes", [2, 3])], "crop")
    g.conv(g.op("Concat", [crop, up], "cat", axis=1), 8, 2, M.Y, k=1)
    return g.model([M.Y])


def slice_rows(h0: int, start: int = 1, end: int | None = None, *, axis: int = 2, reference: bool = False,
               opset: int = 17) -> onnx.ModelProto:
    """``2 * x[:, :, start:end]`` (node ``rows``); ``end`` defaults to h0 (``x[:, :, 1:h]`` with h a
    Python int); ``reference``: ``INT64_MAX`` (``x[:, :, 1:]``)."""
    g = M.GraphBuilder(opset)
    stop = INT64_MAX if reference else (h0 if end is None else end)
    s = g.op("Slice", [M.X, g.i64("rows_s", [start]), g.i64("rows_e", [stop]), g.i64("rows_ax", [axis])], "rows")
    g.op("Mul", [s, g.f32("two", [2.0])], M.Y)
    return g.model([M.Y])


def coord_slices(h0: int, w0: int, *, reference: bool = False, opset: int = 17) -> onnx.ModelProto:
    """CoordAttention written with slices: ``y[:, :, :h]`` (node ``take_h``) and ``y[:, :, h:]``
    with h a Python int (node ``take_w``: start h0, end h0 + w0)."""
    g = M.GraphBuilder(opset)
    x_h = g.reduce("ReduceMean", M.X, [3], "x_h")
    x_w = g.op("Transpose", [g.reduce("ReduceMean", M.X, [2], "x_w_mean")], "x_w", perm=[0, 1, 3, 2])
    y = g.op("Relu", [g.conv(g.op("Concat", [x_h, x_w], "cat", axis=2), M.C, 4, "mix", k=1)], "mix_relu")
    if reference:
        h = dim(g, M.X, 2, "h")
        a = g.op("Slice", [y, g.i64("a_s", [0]), h, g.i64("a_ax", [2])], "take_h")
        b = g.op("Slice", [y, h, g.i64("b_e", [INT64_MAX]), g.i64("b_ax", [2])], "take_w")
    else:
        a = g.op("Slice", [y, g.i64("a_s", [0]), g.i64("a_e", [h0]), g.i64("a_ax", [2])], "take_h")
        b = g.op("Slice", [y, g.i64("b_s", [h0]), g.i64("b_e", [h0 + w0]), g.i64("b_ax", [2])], "take_w")
    gate_h = g.op("Sigmoid", [g.conv(a, 4, M.C, "conv_h", k=1)], "gate_h")
    gate_w = g.op("Sigmoid", [g.op("Transpose", [g.conv(b, 4, M.C, "conv_w", k=1)], "conv_w_t",
                                   perm=[0, 1, 3, 2])], "gate_w")
    g.op("Mul", [g.op("Mul", [M.X, gate_h], "gated_h"), gate_w], M.Y)
    return g.model([M.Y])


def slice_from_shape(opset: int = 17) -> onnx.ModelProto:
    """``x[:, :, : x.shape[2] // 2]`` with tensors: ends from ``Shape`` (correct)."""
    g = M.GraphBuilder(opset)
    half = arith(g, "Div", dim(g, M.X, 2, "h"), 2, "half")
    g.op("Slice", [M.X, g.i64("s", [0]), half, g.i64("ax", [2])], M.Y)
    return g.model([M.Y])


# ------------------------------------------------------------------------------------- torch


def torch_modules() -> dict[str, type]:
    """The source patterns as tiny torch modules (torch imported lazily)."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    class PPM(nn.Module):
        """PSPNet's pyramid pooling with ``F.adaptive_avg_pool2d`` (the dynamo exporter bakes the
        window) or, with ``int_kernels``, the export workaround ``F.avg_pool2d(x, h // k)``."""

        def __init__(self, bins: Sequence[int] = (1, 2, 4), int_kernels: bool = False) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.bins, self.int_kernels = tuple(bins), int_kernels
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.stages = nn.ModuleList(nn.Conv2d(4, 2, 1) for _ in self.bins)
            self.head = nn.Conv2d(4 + 2 * len(self.bins), 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.relu(self.conv(x))
            outs = [f]
            for k, stage in zip(self.bins, self.stages):
                if self.int_kernels:
                    h, w = int(f.shape[2]), int(f.shape[3])
                    p = F.avg_pool2d(f, kernel_size=(h // k, w // k), stride=(h // k, w // k))
                else:
                    p = F.adaptive_avg_pool2d(f, k)
                outs.append(F.interpolate(stage(p), size=f.shape[2:], mode="bilinear", align_corners=False))
            return self.head(torch.cat(outs, 1))

    class SPP(nn.Module):
        """Pool into a 4x4 grid, flatten, classify (needs the grid fixed: the Linear is)."""

        def __init__(self, k: int = 4) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.k = k
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * k * k, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), self.k), 1))

    class SamePadConv(nn.Conv2d):
        """EfficientNet-PyTorch's ``Conv2dDynamicSamePadding``: TF "SAME" padding computed in
        forward with ``math.ceil`` on the size (the legacy exporter freezes ``ceil(h / s)``)."""

        def __init__(self) -> None:
            torch.manual_seed(0)
            super().__init__(3, 4, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ih, iw = x.size()[-2:]
            kh, kw = self.weight.size()[-2:]
            sh, sw = self.stride
            oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
            pad_h = max((oh - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
            pad_w = max((ow - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
            if pad_h > 0 or pad_w > 0:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    class PatchEmbed(nn.Module):
        """Swin-style patch embedding: pad up to a multiple of the patch with Python ints."""

        def __init__(self, patch: int = 4) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.patch = patch
            self.proj = nn.Conv2d(3, 4, patch, stride=patch)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = int(x.shape[2]), int(x.shape[3])
            p = self.patch
            x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
            return self.proj(x)

    class CoordAtt(nn.Module):
        """Coordinate attention (Hou et al. 2021) with ``h, w`` as Python ints."""

        def __init__(self, c: int = 3) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(c, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.conv_h = nn.Conv2d(4, c, 1)
            self.conv_w = nn.Conv2d(4, c, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = int(x.shape[2]), int(x.shape[3])
            x_h = x.mean(3, keepdim=True)
            x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)
            y = torch.relu(self.bn(self.conv1(torch.cat([x_h, x_w], dim=2))))
            a_h, a_w = torch.split(y, [h, w], dim=2)
            return x * torch.sigmoid(self.conv_h(a_h)) * torch.sigmoid(self.conv_w(a_w.permute(0, 1, 3, 2)))

    class HalfSplit(nn.Module):
        """``torch.split(x, h // 2, dim=2)`` with h a Python int."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = int(x.shape[2])
            top, bottom = torch.split(x, h // 2, dim=2)
            return top - bottom.flip(2)

    class PadCrop(nn.Module):
        """Pad up to a multiple of 8 with tensor sizes, a stride-8 context branch, and the crop
        back ``y[:, :, :h, :w]`` with Python ints."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[2], x.shape[3]
            y = F.pad(x, (0, (8 - w % 8) % 8, 0, (8 - h % 8) % 8))
            f = self.conv(y)
            f = f + F.interpolate(F.avg_pool2d(f, 8), scale_factor=8.0)
            return f[:, :, : int(h), : int(w)]

    class UNetSkipCrop(nn.Module):
        """A UNet join where the skip is cropped to the upsampled map with Python ints."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.enc = nn.Conv2d(3, 4, 3, padding=1)
            self.mid = nn.Conv2d(4, 4, 3, padding=1)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skip = torch.relu(self.enc(x))
            up = F.interpolate(F.max_pool2d(self.mid(skip), 2), scale_factor=2.0)
            h, w = int(up.shape[2]), int(up.shape[3])
            return self.out(torch.cat([skip[:, :, :h, :w], up], 1))

    return {"ppm": PPM, "spp": SPP, "unet_skip_crop": UNetSkipCrop, "same_pad_conv": SamePadConv,
            "patch_embed": PatchEmbed, "coord_att": CoordAtt,
            "half_split": HalfSplit, "pad_crop": PadCrop}
