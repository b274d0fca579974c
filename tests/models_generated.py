"""Small models for DS007 (tensors generated at the export size), DS008 (feature-map buffers)
and DS012 (Expand/Tile with frozen sizes), written with ``models.GraphBuilder``: input ``x`` is
``[N, 4, H, W]`` with N, H and W dynamic.

Each hazard builder bakes its "export-time" sizes from plain arguments, so the same builder called
with another shape's sizes is a correct, re-specialized reference *at that shape*: the tests
compare the fixed model at shape S with the builder baked at S. ``reference=True`` variants build
the same tensor from ``Shape`` (what a correct export gives) and are the negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import models as M
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C = M.C


def _init(g: M.GraphBuilder, name: str, arr: np.ndarray) -> str:
    g.inits.append(numpy_helper.from_array(np.asarray(arr), name))
    return name


def _constant(g: M.GraphBuilder, name: str, arr: np.ndarray) -> str:
    """A ``Constant`` node, as the legacy exporter writes folded tensors."""
    g.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                    value=numpy_helper.from_array(np.asarray(arr), name)))
    return name


def _scalar_i64(g: M.GraphBuilder, name: str, v: int) -> str:
    return _init(g, name, np.array(v, np.int64))


def _output_rank(model: onnx.ModelProto, rank: int) -> onnx.ModelProto:
    """Declare ``y`` with ``rank`` unknown dims: ``GraphBuilder.model`` takes the rank from shape
    inference, which in older opsets does not see through a Reshape to a computed shape."""
    (out,) = [o for o in model.graph.output if o.name == M.Y]
    out.CopyFrom(helper.make_tensor_value_info(M.Y, TensorProto.FLOAT, [None] * rank))
    onnx.checker.check_model(model)
    return model


def _dim(g: M.GraphBuilder, x: str, axis: int, name: str) -> str:
    """0-D int64 ``Shape(x)[axis]``."""
    shape = g.op("Shape", [x], f"{name}_shape")
    return g.op("Gather", [shape, _scalar_i64(g, f"{name}_idx", axis)], name, axis=0)


# ------------------------------------------------------------------------------------------------
# DS007: zeros/ones/full
# ------------------------------------------------------------------------------------------------


def add_fill(h0: int, w0: int, *, value: float = 0.5, source: str = "initializer", batch0: int = 1,
             join: str = "Add", opset: int = 17) -> onnx.ModelProto:
    """``conv(x) <join> torch.full((b, 4, h, w), value)`` with ints. ``source``: how the exporter
    wrote the full tensor: ``initializer``, ``constant`` (a Constant node), ``cos``
    (``ConstantOfShape`` of a constant shape, node ``fill``), ``cos_partial`` (the batch from
    ``Shape``, H and W constants, node ``fill``), or ``reference`` (``ConstantOfShape(Shape(conv))``:
    correct)."""
    g = M.GraphBuilder(opset)
    f = g.conv(M.X, C, C, "conv")
    full = np.full((batch0, C, h0, w0), value, np.float32)
    fill_value = numpy_helper.from_array(np.array([value], np.float32), "value")
    if source == "initializer":
        t = _init(g, "full", full)
    elif source == "constant":
        t = _constant(g, "full", full)
    elif source == "cos":
        t = g.op("ConstantOfShape", [g.i64("fill_shape", [batch0, C, h0, w0])], "fill", value=fill_value)
    elif source == "cos_partial":
        n = g.shape_slice(f, 0, 1, "fill_n")
        shape = g.op("Concat", [n, g.constant_i64("fill_chw", [C, h0, w0])], "fill_shape", axis=0)
        t = g.op("ConstantOfShape", [shape], "fill", value=fill_value)
    elif source == "reference":
        t = g.op("ConstantOfShape", [g.op("Shape", [f], "fill_shape")], "fill", value=fill_value)
    else:
        raise ValueError(source)
    if join == "Concat":
        g.op("Concat", [f, t], M.Y, axis=1)
    else:
        g.op(join, [f, t], M.Y)
    return g.model([M.Y])


# ------------------------------------------------------------------------------------------------
# DS007: arange-like rows
# ------------------------------------------------------------------------------------------------


def _row_values(w0: int, form: str) -> np.ndarray:
    i = np.arange(w0, dtype=np.float32)
    if form == "index":
        return i
    if form == "stride":  # (i + 0.5) * 8: cell centres of a stride-8 map
        return (i + np.float32(0.5)) * np.float32(8)
    if form == "half":  # (i + 0.5) / W
        return (i + np.float32(0.5)) / np.float32(w0)
    if form == "linspace":  # torch.linspace(-1, 1, W)
        return np.linspace(-1, 1, w0).astype(np.float32)
    if form == "sin":  # a computed table: not a progression
        return np.sin(i * np.float32(0.37)).astype(np.float32)
    raise ValueError(form)


def add_row(w0: int, *, form: str = "index", source: str = "initializer", opset: int = 17) -> onnx.ModelProto:
    """``conv(x) + row`` where ``row`` is ``[w0]`` along W (``torch.arange(w)`` and friends with
    ``w`` an int). ``source``: ``initializer``, ``range`` (``Range(0, w0, 1)`` -> ``Cast`` -> the
    arithmetic, nodes ``arange``...), or ``reference`` (the same from ``Shape(conv)[3]``)."""
    g = M.GraphBuilder(opset)
    f = g.conv(M.X, C, C, "conv")
    if source == "initializer":
        row = _init(g, "row", _row_values(w0, form))
    else:
        if source == "range":
            limit = _scalar_i64(g, "arange_limit", w0)
            size = g.op("Cast", [limit], "arange_size", to=TensorProto.FLOAT)
        elif source == "reference":
            limit = _dim(g, f, 3, "arange_limit")
            size = g.op("Cast", [limit], "arange_size", to=TensorProto.FLOAT)
        else:
            raise ValueError(source)
        r = g.op("Range", [_scalar_i64(g, "arange_start", 0), limit, _scalar_i64(g, "arange_delta", 1)], "arange")
        i = g.op("Cast", [r], "arange_float", to=TensorProto.FLOAT)
        half = _init(g, "half", np.array(0.5, np.float32))
        if form == "index":
            row = i
        elif form == "stride":
            row = g.op("Mul", [g.op("Add", [i, half], "centre"), _init(g, "stride", np.array(8, np.float32))], "row")
        elif form == "half":
            row = g.op("Div", [g.op("Add", [i, half], "centre"), size], "row")
        else:
            raise ValueError(f"{form} from {source}")
    g.op("Add", [f, row], M.Y)
    return g.model([M.Y])


# ------------------------------------------------------------------------------------------------
# DS007 / DS008: grids
# ------------------------------------------------------------------------------------------------


def _linspace_grid(h0: int, w0: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.linspace(-1, 1, h0).astype(np.float32)
    xs = np.linspace(-1, 1, w0).astype(np.float32)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return xx, yy


def coord_concat(h0: int, w0: int, *, batch0: int = 1, opset: int = 17) -> onnx.ModelProto:
    """CoordConv: ``cat([f, xx, yy], 1)`` with the ``linspace(-1, 1)`` coordinate channels baked
    ``[batch0, 2, h0, w0]`` (an initializer ``coords``): meets N (concat), H and W."""
    g = M.GraphBuilder(opset)
    f = g.conv(M.X, C, C, "conv")
    xx, yy = _linspace_grid(h0, w0)
    coords = np.broadcast_to(np.stack([xx, yy])[None], (batch0, 2, h0, w0)).astype(np.float32)
    g.op("Concat", [f, _init(g, "coords", coords)], M.Y, axis=1)
    return g.model([M.Y])


def yolo_grid(ny0: int, nx0: int, *, batch0: int = 1, na: int = 3, stride: float = 8.0, source: str = "initializer",
              opset: int = 17) -> onnx.ModelProto:
    """A YOLOv5 ``Detect`` level with its cached buffers: ``p = sigmoid(view(conv(x), N, na, 4, ny,
    nx).permute(0, 1, 3, 4, 2))``, ``xy = (2·p[..., :2] + grid) · stride``, ``wh = (2·p[..., 2:])² ·
    anchor_grid``. ``grid`` = meshgrid − 0.5 ``[1, na, ny0, nx0, 2]``, ``anchor_grid`` = anchors
    repeated over ``[1, na, ny0, nx0, 2]``. ``source``: ``initializer`` or ``constant`` (Constant
    nodes, as the legacy exporter writes them)."""
    g = M.GraphBuilder(opset)
    no = 4
    f = g.conv(M.X, C, na * no, "m", k=1)
    n = g.shape_slice(f, 0, 1, "view_n")
    hw = g.shape_slice(f, 2, 4, "view_hw")
    target = g.op("Concat", [n, g.constant_i64("view_a", [na, no]), hw], "view_shape", axis=0)
    v = g.op("Reshape", [f, target], "view")
    p = g.op("Sigmoid", [g.op("Transpose", [v], "permute", perm=[0, 1, 3, 4, 2])], "sig")
    xy = g.op("Slice", [p, g.i64("xy_s", [0]), g.i64("xy_e", [2]), g.i64("xy_a", [4])], "xy")
    wh = g.op("Slice", [p, g.i64("wh_s", [2]), g.i64("wh_e", [4]), g.i64("wh_a", [4])], "wh")
    two = _init(g, "two", np.array(2, np.float32))
    yv, xv = np.meshgrid(np.arange(ny0), np.arange(nx0), indexing="ij")
    grid = np.broadcast_to(np.stack([xv, yv], -1)[None, None], (1, na, ny0, nx0, 2)).astype(np.float32) - 0.5
    anchors = np.array([[10, 13], [16, 30], [33, 23]], np.float32)[:na] * stride
    anchor_grid = np.broadcast_to(anchors.reshape(1, na, 1, 1, 2), (1, na, ny0, nx0, 2)).astype(np.float32)
    put = _init if source == "initializer" else _constant
    xy2 = g.op("Add", [g.op("Mul", [xy, two], "xy2"), put(g, "grid", grid)], "xy_grid")
    xy_out = g.op("Mul", [xy2, _init(g, "stride", np.array(stride, np.float32))], "xy_out")
    wh2 = g.op("Mul", [wh, two], "wh2")
    wh_out = g.op("Mul", [g.op("Mul", [wh2, wh2], "wh_sq"), put(g, "anchor_grid", anchor_grid)], "wh_out")
    g.op("Concat", [xy_out, wh_out], M.Y, axis=4)
    return g.model([M.Y])


def learned_pos(h0: int, w0: int, opset: int = 17) -> onnx.ModelProto:
    """``conv(x) + pos`` with a learned ``[1, 4, h0, w0]`` parameter (random values): size-tied,
    but not a generated tensor."""
    g = M.GraphBuilder(opset)
    f = g.conv(M.X, C, C, "conv")
    pos = np.random.default_rng(3).standard_normal((1, C, h0, w0)).astype(np.float32)
    g.op("Add", [f, _init(g, "pos", pos)], M.Y)
    return g.model([M.Y])


def channel_params(channels: int = 32, opset: int = 17) -> onnx.ModelProto:
    """Per-channel weights that happen to equal an export size (32 channels at H0 = W0 = 32):
    ``(conv(x) + b[32, 1, 1]) * s[1, 32, 1, 1]`` then ``+ t[32]`` on a channels-last view."""
    g = M.GraphBuilder(opset)
    rng = np.random.default_rng(4)
    f = g.conv(M.X, C, channels, "conv")
    a = g.op("Add", [f, _init(g, "bias", rng.standard_normal((channels, 1, 1)).astype(np.float32))], "bias_add")
    s = g.op("Mul", [a, _init(g, "scale", rng.standard_normal((1, channels, 1, 1)).astype(np.float32))], "scale_mul")
    t = g.op("Transpose", [s], "nhwc", perm=[0, 2, 3, 1])
    g.op("Add", [t, _init(g, "shift", rng.standard_normal(channels).astype(np.float32))], M.Y)
    return g.model([M.Y])


def causal_mask(h0: int, w0: int, opset: int = 17) -> onnx.ModelProto:
    """Self-attention scores over the H·W tokens with a triangular mask built in Python at
    ``L0 = h0·w0`` (bool ``[L0, L0]``): ``Where(mask, scores, -1e4)``."""
    g = M.GraphBuilder(opset)
    nc = g.shape_slice(M.X, 0, 2, "tok_nc")
    tokens = g.op("Reshape", [M.X, g.op("Concat", [nc, g.constant_i64("tok_l", [-1])], "tok_shape", axis=0)], "tok")
    scores = g.op("MatMul", [g.op("Transpose", [tokens], "tok_t", perm=[0, 2, 1]), tokens], "scores")
    L0 = h0 * w0
    mask = np.tril(np.ones((L0, L0), bool))
    g.op("Where", [_init(g, "mask", mask), scores, _init(g, "neg", np.array(-1e4, np.float32))], M.Y)
    return _output_rank(g.model([M.Y]), 3)


# ------------------------------------------------------------------------------------------------
# DS012: Expand / Tile
# ------------------------------------------------------------------------------------------------


def _tokens(g: M.GraphBuilder) -> str:
    """``conv(x).flatten(2).transpose(1, 2)``: ``[N, H·W, 4]``, sizes from Shape."""
    f = g.conv(M.X, C, C, "embed")
    nc = g.shape_slice(f, 0, 2, "flat_nc")
    flat = g.op("Reshape", [f, g.op("Concat", [nc, g.constant_i64("flat_l", [-1])], "flat_shape", axis=0)], "flat")
    return g.op("Transpose", [flat], "tokens", perm=[0, 2, 1])


def _legacy_expand_shape(g: M.GraphBuilder, sizes: Sequence[int], name: str) -> str:
    """What the legacy exporter writes for ``expand(b, -1, -1)`` with ``b`` an int: ``Where(shape
    == -1, 1, shape)`` over constants (no constant folding)."""
    rank = len(sizes)
    ones = g.op("ConstantOfShape", [g.constant_i64(f"{name}_rank", [rank])], f"{name}_ones",
                value=numpy_helper.from_array(np.array([1], np.int64), "one"))
    minus = g.op("Mul", [ones, g.constant_i64(f"{name}_m1", [-1])], f"{name}_minus")
    wanted = g.constant_i64(f"{name}_wanted", list(sizes))
    eq = g.op("Equal", [wanted, minus], f"{name}_eq")
    return g.op("Where", [eq, ones, wanted], name)


def cls_token(batch0: int, *, op: str = "Expand", shape: str = "constant", opset: int = 17) -> onnx.ModelProto:
    """ViT class token: ``cat([cls.expand(b, -1, -1), tokens], 1)`` with ``b`` an int (node
    ``cls_expand``; ``op="Tile"``: ``cls.repeat(b, 1, 1)``, node ``cls_tile``). ``shape``:
    ``constant`` (an initializer ``[b, 1, 1]``), ``legacy`` (the Where/Equal subgraph, Expand
    only), or ``reference`` (``b`` from ``Shape(tokens)``: correct)."""
    g = M.GraphBuilder(opset)
    tokens = _tokens(g)
    cls = _init(g, "cls", np.random.default_rng(5).standard_normal((1, 1, C)).astype(np.float32))
    if shape == "reference":
        n = g.shape_slice(tokens, 0, 1, "cls_n")
        size = g.op("Concat", [n, g.constant_i64("cls_rest", [1, 1] if op == "Tile" else [1, C])], "cls_size", axis=0)
    elif shape == "legacy":
        size = _legacy_expand_shape(g, [batch0, -1, -1], "cls_size")
    else:
        size = g.i64("cls_size", [batch0, 1, 1] if op == "Tile" else [batch0, 1, C])
    expanded = g.op(op, [cls, size], "cls_expand" if op == "Expand" else "cls_tile")
    g.op("Concat", [expanded, tokens], M.Y, axis=1)
    return _output_rank(g.model([M.Y]), 3)


def cls_token_add(batch0: int = 1, opset: int = 17) -> onnx.ModelProto:
    """``tokens + cls.expand(1, -1, -1)`` at batch 1: the 1 broadcasts, harmless at every size."""
    g = M.GraphBuilder(opset)
    tokens = _tokens(g)
    cls = _init(g, "cls", np.random.default_rng(5).standard_normal((1, 1, C)).astype(np.float32))
    e = g.op("Expand", [cls, g.i64("cls_size", [batch0, 1, C])], "cls_expand")
    g.op("Add", [tokens, e], M.Y)
    return _output_rank(g.model([M.Y]), 3)


def mask_concat(batch0: int, opset: int = 17) -> onnx.ModelProto:
    """``cat([x, mask.expand(b, -1, -1, -1)], 1)``: ``mask = (x[:1, :1] > 0)`` is ``[1, 1, H, W]``
    (follows H, W), expanded to the int batch ``b`` (node ``mask_expand``, legacy shape)."""
    g = M.GraphBuilder(opset)
    first = g.op("Slice", [M.X, g.i64("m_s", [0, 0]), g.i64("m_e", [1, 1]), g.i64("m_a", [0, 1])], "first")
    mask = g.op("Cast", [g.op("Greater", [first, _init(g, "zero", np.array(0, np.float32))], "positive")], "mask",
                to=TensorProto.FLOAT)
    e = g.op("Expand", [mask, _legacy_expand_shape(g, [batch0, -1, -1, -1], "mask_size")], "mask_expand")
    g.op("Concat", [M.X, e], M.Y, axis=1)
    return g.model([M.Y])


def expand_own(n0: int, h0: int, w0: int, *, reference: bool = False, opset: int = 17) -> onnx.ModelProto:
    """``m.expand(b, 8, h, w)`` of ``m = x.mean(1, keepdim=True)`` with every size an int: the
    entries b, h, w are m's own export-time sizes (node ``broadcast``). ``reference``: shape
    ``[1, 8, 1, 1]`` (1 keeps m's size)."""
    g = M.GraphBuilder(opset)
    m = g.reduce("ReduceMean", M.X, [1], "mean")
    shape = [1, 8, 1, 1] if reference else [n0, 8, h0, w0]
    g.op("Expand", [m, g.i64("broadcast_shape", shape)], M.Y)
    return g.model([M.Y])


def expand_batch_output(batch0: int, opset: int = 17) -> onnx.ModelProto:
    """Two outputs: ``y = x * 2`` and ``z = query.expand(b, 8)`` with ``b`` an int (node
    ``z``): nothing joins ``z``, but it should have the input's batch."""
    g = M.GraphBuilder(opset)
    g.op("Mul", [M.X, _init(g, "two", np.array(2, np.float32))], M.Y)
    query = _init(g, "query", np.arange(8, dtype=np.float32).reshape(1, 8))
    g.op("Expand", [query, g.i64("z_shape", [batch0, 8])], "z")
    model = g.model([M.Y])
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 8]))
    onnx.checker.check_model(model)
    return model


def harmless_expands(opset: int = 17) -> onnx.ModelProto:
    """Expands and tiles that are right at every size: ``x.expand(-1, -1, -1, -1)`` (shape of 1s),
    ``bias.expand(1, 4, 1, 1)`` added to x, ``x.repeat(1, 1, 2, 2)`` and an Expand to
    ``Shape(x)``."""
    g = M.GraphBuilder(opset)
    a = g.op("Expand", [M.X, g.i64("ones", [1, 1, 1, 1])], "expand_ones")
    bias = g.op("Expand", [_init(g, "bias", np.ones((1, C, 1, 1), np.float32)), g.i64("bias_shape", [1, C, 1, 1])],
                "bias_expand")
    b = g.op("Add", [a, bias], "biased")
    t = g.op("Tile", [b, g.i64("reps", [1, 1, 2, 2])], "tile2")
    half = g.op("MaxPool", [t], "half", kernel_shape=[2, 2], strides=[2, 2])
    e = g.op("Expand", [_init(g, "scalar", np.array(0.5, np.float32)), g.op("Shape", [M.X], "x_shape")], "like_x")
    g.op("Add", [half, e], M.Y)
    return g.model([M.Y])


def expanded_row(h0: int, w0: int, opset: int = 17) -> onnx.ModelProto:
    """``conv(x) + arange(w).view(1, 1, 1, w).expand(1, 1, h, w)`` with ints, not folded: ``Range``
    (node ``arange``) -> ``Cast`` -> ``Reshape`` -> ``Expand`` (node ``row_expand``) -> ``Add``. The
    row is made at W0 before the Expand sets H0: DS007 rebuilds the whole tensor."""
    g = M.GraphBuilder(opset)
    f = g.conv(M.X, C, C, "conv")
    r = g.op("Range", [_scalar_i64(g, "arange_start", 0), _scalar_i64(g, "arange_limit", w0),
                       _scalar_i64(g, "arange_delta", 1)], "arange")
    row = g.op("Reshape", [g.op("Cast", [r], "arange_float", to=TensorProto.FLOAT), g.i64("row_shape", [1, 1, 1, w0])],
               "row")
    e = g.op("Expand", [row, g.i64("row_expand_shape", [1, 1, h0, w0])], "row_expand")
    g.op("Add", [f, e], M.Y)
    return g.model([M.Y])


def expanded_scalar(h0: int, w0: int, opset: int = 17) -> onnx.ModelProto:
    """``conv(x) * torch.tensor(0.5).expand(1, 1, h, w)`` with ints (node ``half_expand``): only the
    Expand sets the export size, a DS012 hazard."""
    g = M.GraphBuilder(opset)
    f = g.conv(M.X, C, C, "conv")
    e = g.op("Expand", [_init(g, "half", np.full((1, 1, 1, 1), 0.5, np.float32)), g.i64("half_shape", [1, 1, h0, w0])],
             "half_expand")
    g.op("Mul", [f, e], M.Y)
    return g.model([M.Y])


def unnamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every node name cleared (as some exporters and hand-made graphs are)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        node.name = ""
    return out


def add_flat_index(h0: int, w0: int, opset: int = 17) -> onnx.ModelProto:
    """``conv(x) + (arange(h)[:, None] * w + arange(w))`` with ints: a flat position index
    ``[h0, w0]`` whose step along H is W0 itself."""
    g = M.GraphBuilder(opset)
    f = g.conv(M.X, C, C, "conv")
    index = (np.arange(h0)[:, None] * w0 + np.arange(w0)[None, :]).astype(np.float32)
    g.op("Add", [f, _init(g, "flat_index", index)], M.Y)
    return g.model([M.Y])
