"""ONNX builders for the DS002 forms third-party code writes (see HAZARDS.md, "As third-party code
writes them"): a ViT patch grid resized to ``(H // 14) * 14``, and a resize joined with its skip
through a channel or a spatial slice. Input ``x``: ``[N, 4, H, W]``; output ``y``."""

from __future__ import annotations

import numpy as np
import onnx
from models import C, GraphBuilder, X, Y


def patch_head(h0: int, w0: int, patch: int = 14, *, reference: bool = False) -> onnx.ModelProto:
    """Depth Anything's head: a patch embedding (Conv kernel = stride = ``patch``), a 4x upsample,
    then ``F.interpolate(f, (int(ph * patch), int(pw * patch)))`` with ``ph = H // patch``: the legacy
    exporter folds the ints to ``[(h0 // patch) * patch, ...]``. ``reference``: that size computed
    from ``Shape(x)`` with ``Div``/``Mul`` (the correct graph, written by hand)."""
    g = GraphBuilder()
    grid = g.conv(X, C, 8, "patch_embed", k=patch, stride=patch, pad=0)
    f = g.resize(grid, "up4", scales=g.f32("up4_scales", [1, 1, 4, 4]), mode="linear")
    if reference:
        hw = g.shape_slice(X, 2, 4, "out_hw")
        p = g.i64("patch", [patch])
        hw = g.op("Mul", [g.op("Div", [hw, p], "out_div"), p], "out_mul")
        nc = g.shape_slice(f, 0, 2, "out_nc")
        size = g.op("Concat", [nc, hw], "out_sizes", axis=0)
    else:
        size = g.legacy_sizes(f, [(h0 // patch) * patch, (w0 // patch) * patch], "out_sizes")
    g.resize(f, Y, sizes=size, mode="linear")
    return g.model([Y])


def sliced_join(h0: int, w0: int, *, slice_axis: int = 1) -> onnx.ModelProto:
    """``up = Resize(deep, size=skip's export size)``, then ``up[:, :4] + skip`` (``slice_axis`` 1,
    a channel slice) or ``up[:, :, :h] + skip`` (``slice_axis`` 2, a crop of a spatial axis)."""
    g = GraphBuilder()
    skip = g.op("MaxPool", [g.op("Relu", [g.conv(X, C, 4, "enc1")], "enc1_relu")], "skip",
                kernel_shape=[2, 2], strides=[2, 2])
    deep = g.op("MaxPool", [g.conv(skip, 4, 8, "enc2")], "deep", kernel_shape=[2, 2], strides=[2, 2])
    up = g.resize(deep, "up", sizes=g.legacy_sizes(deep, [h0 // 2, w0 // 2], "up_sizes"), mode="linear")
    end = 4 if slice_axis == 1 else int(np.iinfo(np.int64).max)
    cut = g.op("Slice", [up, g.i64("cut_starts", [0]), g.i64("cut_ends", [end]), g.i64("cut_axes", [slice_axis])],
               "cut")
    g.op("Add", [cut, skip], Y)
    return g.model([Y])
