"""Small ONNX models written with onnx.helper: the graph patterns the rules must hold for.

Every builder names its nodes (tests assert on them) and returns a checked ``ModelProto`` whose
input ``x`` is ``[N, C, H, W]`` with N, H and W dynamic. ``opset`` picks the op signatures that
differ between versions (ReduceMean/ReduceMax ``axes`` attribute up to 17, an input from 18).
"Export-time" sizes are plain arguments: a builder bakes them the way an exporter would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

X = "x"
Y = "y"
C = 4  # channels of the input


class GraphBuilder:
    """Collects nodes and initializers; ``model()`` wraps them into a checked model."""

    def __init__(self, opset: int = 17, channels: int = C, seed: int = 0) -> None:
        self.opset = opset
        self.channels = channels
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)

    # -- values -------------------------------------------------------------------------------
    def i64(self, name: str, values: Sequence[int]) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64).reshape(-1), name))
        return name

    def f32(self, name: str, values: Sequence[float]) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.float32).reshape(-1), name))
        return name

    def constant_i64(self, name: str, values: Sequence[int]) -> str:
        """A ``Constant`` node, as the legacy exporter writes small shape constants."""
        arr = np.asarray(values, np.int64).reshape(-1)
        self.nodes.append(helper.make_node(
            "Constant", [], [name], name=name, value=numpy_helper.from_array(arr, name)
        ))
        return name

    # -- ops ----------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, name: str, k: int = 3, stride: int = 1,
             pad: int | None = None) -> str:
        pad = k // 2 if pad is None else pad
        w = (self.rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        self.inits.append(numpy_helper.from_array(b, f"{name}.bias"))
        return self.op("Conv", [x, f"{name}.weight", f"{name}.bias"], name, kernel_shape=[k, k],
                       strides=[stride, stride], pads=[pad] * 4)

    def reduce(self, op_type: str, x: str, axes: list[int], name: str) -> str:
        """ReduceMean/ReduceMax(keepdims=1) with the opset's signature for ``axes``."""
        if self.opset >= 18:
            return self.op(op_type, [x, self.i64(f"{name}.axes", axes)], name, keepdims=1)
        return self.op(op_type, [x], name, axes=axes, keepdims=1)

    def shape_slice(self, x: str, start: int, end: int, name: str) -> str:
        """``Slice(Shape(x), start, end)`` the way the legacy exporter writes it."""
        shape = self.op("Shape", [x], f"{name}_shape")
        return self.op("Slice", [shape, self.constant_i64(f"{name}_starts", [start]),
                                 self.constant_i64(f"{name}_ends", [end]),
                                 self.constant_i64(f"{name}_axes", [0])], name)

    def resize(self, x: str, name: str, *, sizes: str | None = None, scales: str | None = None,
               mode: str = "nearest") -> str:
        attrs: dict[str, object] = {"mode": mode}
        if mode == "nearest":
            attrs["nearest_mode"] = "floor"
            attrs["coordinate_transformation_mode"] = "asymmetric"
        if sizes is not None:
            return self.op("Resize", [x, "", "", sizes], name, **attrs)
        assert scales is not None
        return self.op("Resize", [x, "", scales], name, **attrs)

    def legacy_sizes(self, x: str, hw: Sequence[int], name: str) -> str:
        """``Concat(Slice(Shape(x))[0:2], [h, w])``: ``F.interpolate(x, size=(h, w))`` with ints."""
        nc = self.shape_slice(x, 0, 2, f"{name}_nc")
        return self.op("Concat", [nc, self.constant_i64(f"{name}_hw", list(hw))], name, axis=0)

    def shape_sizes(self, x: str, ref: str, name: str) -> str:
        """``Concat(Shape(x)[0:2], Shape(ref)[2:4])``: the size taken from a tensor (correct)."""
        nc = self.shape_slice(x, 0, 2, f"{name}_nc")
        hw = self.shape_slice(ref, 2, 4, f"{name}_hw")
        return self.op("Concat", [nc, hw], name, axis=0)

    def model(self, outputs: Sequence[str], name: str = "test", channels: int | None = None
              ) -> onnx.ModelProto:
        c = self.channels if channels is None else channels
        x = helper.make_tensor_value_info(X, TensorProto.FLOAT, ["N", c, "H", "W"])
        # outputs get their rank from shape inference and unknown dims (the checker wants a shape)
        bare = [helper.make_value_info(o, onnx.TypeProto()) for o in outputs]
        graph = helper.make_graph(self.nodes, name, [x], bare, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.output}
        del model.graph.output[:]
        for o in outputs:
            rank = len(inferred[o].type.tensor_type.shape.dim)
            model.graph.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * rank))
        onnx.checker.check_model(model)
        return model


# ------------------------------------------------------------------------------------------------
# DS001: pooling
# ------------------------------------------------------------------------------------------------

def strip_pool(h0: int, w0: int, *, op: str = "AveragePool", axes: str = "hw", reference: bool = False,
               opset: int = 17) -> onnx.ModelProto:
    """Strip pooling attention: ``x * sigmoid(pool_h(x) + pool_w(x))``.

    ``pool_h`` is ``avg_pool2d(x, [h, 1])`` with h frozen (node ``pool_h``, kernel ``[h0, 1]``),
    ``pool_w`` likewise ``[1, w0]``; ``axes`` picks which are present. With ``reference`` the
    pools are the correct ``ReduceMean``/``ReduceMax`` over the axis, written by hand.
    """
    g = GraphBuilder(opset)
    reduce_op = {"AveragePool": "ReduceMean", "MaxPool": "ReduceMax"}[op]
    pooled = []
    if "h" in axes:
        if reference:
            pooled.append(g.reduce(reduce_op, X, [2], "pool_h"))
        else:
            pooled.append(g.op(op, [X], "pool_h", kernel_shape=[h0, 1], strides=[h0, 1]))
    if "w" in axes:
        if reference:
            pooled.append(g.reduce(reduce_op, X, [3], "pool_w"))
        else:
            pooled.append(g.op(op, [X], "pool_w", kernel_shape=[1, w0], strides=[1, w0]))
    att = g.op("Add", pooled, "att_add") if len(pooled) == 2 else pooled[0]
    sig = g.op("Sigmoid", [att], "att_sigmoid")
    g.op("Mul", [X, sig], Y)
    return g.model([Y])


def whole_map_pool(h0: int, w0: int, *, op: str = "AveragePool", reference: bool = False,
                   opset: int = 17) -> onnx.ModelProto:
    """``avg_pool2d(f, [h, w])`` with both sizes frozen, then a classifier (``Flatten``)."""
    g = GraphBuilder(opset)
    f = g.conv(X, C, 8, "conv")
    r = g.op("Relu", [f], "relu")
    if reference:
        p = g.op({"AveragePool": "GlobalAveragePool", "MaxPool": "GlobalMaxPool"}[op], [r], "pool")
    else:
        p = g.op(op, [r], "pool", kernel_shape=[h0, w0], strides=[h0, w0])
    g.op("Flatten", [p], Y, axis=1)
    return g.model([Y])


def ordinary_pooling(opset: int = 17) -> onnx.ModelProto:
    """Windowed pooling only: MaxPool 2x2/2, AveragePool 3x3/1 pad 1, MaxPool 3x3/2 pad 1, GAP."""
    g = GraphBuilder(opset)
    a = g.op("MaxPool", [X], "maxpool2", kernel_shape=[2, 2], strides=[2, 2])
    b = g.op("AveragePool", [a], "avgpool3", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    c = g.op("MaxPool", [b], "maxpool3s2", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    g.op("GlobalAveragePool", [c], Y)
    return g.model([Y])


# ------------------------------------------------------------------------------------------------
# DS002: resize
# ------------------------------------------------------------------------------------------------

def _encoder(g: GraphBuilder) -> tuple[str, str]:
    """x -> conv -> maxpool/2 -> ``skip`` (8 ch, H/2) -> conv -> maxpool/2 -> ``deep`` (8 ch, H/4)."""
    e1 = g.op("Relu", [g.conv(X, C, 8, "enc1")], "enc1_relu")
    skip = g.op("MaxPool", [e1], "skip", kernel_shape=[2, 2], strides=[2, 2])
    e2 = g.op("Relu", [g.conv(skip, 8, 8, "enc2")], "enc2_relu")
    deep = g.op("MaxPool", [e2], "deep", kernel_shape=[2, 2], strides=[2, 2])
    return skip, deep


def resize_skip(h0: int, w0: int, *, sizes: str = "legacy", join: str = "Add", batch0: int = 1,
                mode: str = "linear", opset: int = 17) -> onnx.ModelProto:
    """An FPN/UNet step: ``up = Resize(deep, size=skip's export size)`` joined with ``skip``.

    ``sizes``: ``legacy`` = ``Concat(Slice(Shape(deep))[0:2], [h0/2, w0/2])`` (what the legacy
    exporter writes for ``F.interpolate(deep, size=(h, w))`` with ints), ``constant`` = one int64
    initializer ``[batch0, 8, h0/2, w0/2]``, ``shape`` = taken from ``Shape(skip)`` (correct: the
    hand-written reference). ``join``: ``Add`` or ``Concat`` (channels).
    """
    g = GraphBuilder(opset)
    skip, deep = _encoder(g)
    hw = [h0 // 2, w0 // 2]
    if sizes == "legacy":
        size = g.legacy_sizes(deep, hw, "up_sizes")
    elif sizes == "constant":
        size = g.i64("up_sizes", [batch0, 8, *hw])
    else:
        size = g.shape_sizes(deep, skip, "up_sizes")
    up = g.resize(deep, "up", sizes=size, mode=mode)
    if join == "Add":
        joined = g.op("Add", [skip, up], "join")
        cout_in = 8
    else:
        joined = g.op("Concat", [skip, up], "join", axis=1)
        cout_in = 16
    g.conv(joined, cout_in, 2, Y, k=1)
    return g.model([Y])


def resize_to_input(h0: int, w0: int, *, reference: bool = False, opset: int = 17) -> onnx.ModelProto:
    """A segmentation head: logits at H/4 resized to the input's export size (no join)."""
    g = GraphBuilder(opset)
    _, deep = _encoder(g)
    logits = g.conv(deep, 8, 3, "classifier", k=1)
    size = g.shape_sizes(logits, X, "out_sizes") if reference else g.legacy_sizes(logits, [h0, w0], "out_sizes")
    g.resize(logits, Y, sizes=size, mode="linear")
    return g.model([Y])


def resize_by_factor(h0: int, w0: int, factor: int = 2, *, sizes: str = "legacy", batch0: int = 1,
                     reference: bool = False, opset: int = 17) -> onnx.ModelProto:
    """Super-resolution tail: ``F.interpolate(f, size=(factor*h, factor*w))`` with ints. No other
    tensor has that size, so the exact fix is constant scales. ``sizes``: ``legacy`` (Concat of
    Shape and constants) or ``constant`` (``[batch0, 4, factor*h0, factor*w0]``)."""
    g = GraphBuilder(opset)
    f = g.op("Relu", [g.conv(X, C, 4, "body")], "body_relu")
    if reference:
        g.resize(f, Y, scales=g.f32("up_scales", [1, 1, factor, factor]))
    elif sizes == "constant":
        g.resize(f, Y, sizes=g.i64("up_sizes", [batch0, 4, factor * h0, factor * w0]))
    else:
        g.resize(f, Y, sizes=g.legacy_sizes(f, [factor * h0, factor * w0], "up_sizes"))
    return g.model([Y])


def resize_with_scales(opset: int = 17) -> onnx.ModelProto:
    """``F.interpolate(deep, scale_factor=2)`` joined with the skip: correct, dynamic."""
    g = GraphBuilder(opset)
    skip, deep = _encoder(g)
    up = g.resize(deep, "up", scales=g.f32("up_scales", [1, 1, 2, 2]))
    g.op("Add", [skip, up], Y)
    return g.model([Y])


# ------------------------------------------------------------------------------------------------
# DS003: lattice
# ------------------------------------------------------------------------------------------------

def unet(depth: int = 5, *, down: str = "maxpool", opset: int = 17) -> onnx.ModelProto:
    """Encoder of ``depth`` stride-2 stages, decoder of ``depth`` x2 upsamples (scales) each
    joined by ``Add`` with the encoder tensor of the same level, the last one with the
    full-resolution stem (node ``join0``). ``down``: ``maxpool`` (2x2/2, floor) or ``conv``
    (3x3/2 pad 1, ceil)."""
    g = GraphBuilder(opset)
    width = 4
    levels = [g.op("Relu", [g.conv(X, C, width, "stem")], "stem_relu")]
    for i in range(1, depth + 1):
        prev = levels[-1]
        if down == "maxpool":
            levels.append(g.op("MaxPool", [prev], f"down{i}", kernel_shape=[2, 2], strides=[2, 2]))
        else:
            levels.append(g.conv(prev, width, width, f"down{i}", k=3, stride=2, pad=1))
    scales = g.f32("x2", [1, 1, 2, 2])
    cur = levels[-1]
    for i in range(depth - 1, -1, -1):
        up = g.resize(cur, f"up{i}", scales=scales)
        cur = g.op("Add", [levels[i], up], f"join{i}")
    g.conv(cur, width, 2, Y, k=1)
    return g.model([Y])


def deepest_join(depth: int = 5, opset: int = 17) -> onnx.ModelProto:
    """``depth`` 3x3/2 pad-1 convs (they round up), then only the deepest level is upsampled x2 and
    joined (``Add``, node ``join``) with the level above it, as in YOLO-style necks."""
    g = GraphBuilder(opset)
    levels = [g.op("Relu", [g.conv(X, C, 4, "stem")], "stem_relu")]
    for i in range(1, depth + 1):
        levels.append(g.conv(levels[-1], 4, 4, f"down{i}", k=3, stride=2, pad=1))
    up = g.resize(levels[-1], "up", scales=g.f32("x2", [1, 1, 2, 2]))
    g.conv(g.op("Add", [levels[-2], up], "join"), 4, 2, Y, k=1)
    return g.model([Y])


def stride_then_upsample(stride_log2: int = 4, opset: int = 17) -> onnx.ModelProto:
    """``stride_log2`` MaxPool 2x2/2 stages then one ``x 2**stride_log2`` Resize to the output:
    no join, but the output should have the input's size."""
    g = GraphBuilder(opset)
    cur = X
    for i in range(1, stride_log2 + 1):
        cur = g.op("MaxPool", [cur], f"down{i}", kernel_shape=[2, 2], strides=[2, 2])
    f = 2 ** stride_log2
    g.resize(cur, Y, scales=g.f32("up_scales", [1, 1, f, f]))
    return g.model([Y])


def plain_conv(opset: int = 17) -> onnx.ModelProto:
    """Two 3x3 convs with padding 1: valid at every size."""
    g = GraphBuilder(opset)
    a = g.op("Relu", [g.conv(X, C, 4, "conv1")], "relu1")
    g.conv(a, 4, 2, Y)
    return g.model([Y])


# ------------------------------------------------------------------------------------------------
# DS005: reshape
# ------------------------------------------------------------------------------------------------

def reshape_baked(c: int, h0: int, w0: int, *, batch0: int = 1, opset: int = 17) -> onnx.ModelProto:
    """``x.view(b, c, h * w)`` with Python ints: target ``[batch0, c, h0*w0]`` (node ``flat``),
    then a softmax over the positions (attention-style)."""
    g = GraphBuilder(opset, channels=c)
    r = g.op("Reshape", [X, g.i64("flat_shape", [batch0, c, h0 * w0])], "flat")
    g.op("Softmax", [r], Y, axis=2)
    return g.model([Y], channels=c)


def reshape_bc_hw(c: int, h0: int, w0: int, *, opset: int = 17) -> onnx.ModelProto:
    """``x.view(b * c, h * w)`` with ints (batch 1 at export): both entries are products."""
    g = GraphBuilder(opset, channels=c)
    r = g.op("Reshape", [X, g.i64("flat_shape", [c, h0 * w0])], "flat")
    g.op("Softmax", [r], Y, axis=1)
    return g.model([Y], channels=c)


def reshape_silent(c: int = C, *, opset: int = 17) -> onnx.ModelProto:
    """``x.view(1, -1)``: valid at every size, but mixes the batch into the features."""
    g = GraphBuilder(opset, channels=c)
    g.op("Reshape", [X, g.i64("flat_shape", [1, -1])], Y)
    return g.model([Y], channels=c)


def reshape_reference(c: int = C, *, target: Sequence[int] = (0, 0, -1), softmax_axis: int | None = 2,
                      opset: int = 17) -> onnx.ModelProto:
    """A correct reshape with copy/infer entries (hand-written reference, also a negative)."""
    g = GraphBuilder(opset, channels=c)
    r = g.op("Reshape", [X, g.i64("flat_shape", list(target))], "flat" if softmax_axis is not None else Y)
    if softmax_axis is not None:
        g.op("Softmax", [r], Y, axis=softmax_axis)
    return g.model([Y], channels=c)


def reshape_from_shape(c: int = C, *, opset: int = 17) -> onnx.ModelProto:
    """``x.view(x.size(0), c, -1)`` as the legacy exporter writes it: Shape -> Gather ->
    Unsqueeze -> Concat with constants."""
    g = GraphBuilder(opset, channels=c)
    shape = g.op("Shape", [X], "shape")
    n = g.op("Gather", [shape, g.constant_i64("idx0", [0])], "n", axis=0)
    target = g.op("Concat", [n, g.constant_i64("c_rest", [c, -1])], "target", axis=0)
    g.op("Reshape", [X, target], Y)
    return g.model([Y], channels=c)


def flatten(c: int = C, *, opset: int = 17) -> onnx.ModelProto:
    g = GraphBuilder(opset, channels=c)
    g.op("Flatten", [X], Y, axis=1)
    return g.model([Y], channels=c)


def _dims(g: GraphBuilder, x: str, axes: Sequence[int], name: str) -> str:
    """``Shape(x)[axes]`` as a 1-D int64 tensor."""
    return g.op("Gather", [g.op("Shape", [x], f"{name}_shape"), g.i64(f"{name}_axes", list(axes))], name, axis=0)


def _nhwc(g: GraphBuilder) -> str:
    return g.op("Transpose", [X], "nhwc", perm=[0, 2, 3, 1])


def _back_to_input(g: GraphBuilder, nhwc: str) -> None:
    """``y`` with the input's shape (N, C, H, W) from an (N, H, W, C) tensor: a final reshape
    from Shape(x), so a tensor whose batch was mixed into its channels comes out with the right
    shape and wrong values (silent)."""
    nchw = g.op("Transpose", [nhwc], "nchw", perm=[0, 3, 1, 2])
    g.op("Reshape", [nchw, g.op("Shape", [X], "input_shape")], Y)


def reshape_batch_int_regroup(c: int = C, *, opset: int = 17) -> onnx.ModelProto:
    """Swin's window_reverse with ``B = int(windows.shape[0] / (H * W / ws / ws))``: the tokens
    ``(N*H*W, C)`` go back to ``[1, H, W, -1]`` (node ``back``) with H, W computed from Shape and
    the batch frozen as 1; at batch 2 the -1 takes 2C: the batch ends up in the channels."""
    g = GraphBuilder(opset, channels=c)
    tokens = g.op("Reshape", [_nhwc(g), g.i64("tokens_shape", [-1, c])], "tokens")
    hw = _dims(g, X, [2, 3], "hw")
    target = g.op("Concat", [g.i64("one", [1]), hw, g.i64("rest", [-1])], "back_shape", axis=0)
    _back_to_input(g, g.op("Reshape", [tokens, target], "back"))
    return g.model([Y], channels=c)


def reshape_batch_int_after_failing_join(c: int = C, *, opset: int = 17) -> onnx.ModelProto:
    """``reshape_batch_int_regroup`` with the tokens first added to a learned table ``[64, 1]``
    (node ``masked``), which fails at every other size: at the second probe shape the graph
    fails before ``back`` is reached."""
    g = GraphBuilder(opset, channels=c)
    tokens = g.op("Reshape", [_nhwc(g), g.i64("tokens_shape", [-1, c])], "tokens")
    table = np.random.default_rng(0).standard_normal((64, 1)).astype(np.float32)
    g.inits.append(numpy_helper.from_array(table, "table"))
    masked = g.op("Add", [tokens, "table"], "masked")
    hw = _dims(g, X, [2, 3], "hw")
    target = g.op("Concat", [g.i64("one", [1]), hw, g.i64("rest", [-1])], "back_shape", axis=0)
    _back_to_input(g, g.op("Reshape", [masked, target], "back"))
    return g.model([Y], channels=c)


def reshape_batch_int_chain(c: int = C, *, opset: int = 17) -> onnx.ModelProto:
    """Two reshapes with the batch frozen as 1: ``[1, H*W, -1]`` (``rows``) then ``[1, H, W, -1]``
    (``grid``). While ``rows`` mixes the batch into the channels, ``grid`` looks consistent; it
    is found once ``rows`` is fixed (check runs the rule again on the rewritten graph)."""
    g = GraphBuilder(opset, channels=c)
    tokens = g.op("Reshape", [_nhwc(g), g.i64("tokens_shape", [-1, c])], "tokens")
    hw = _dims(g, X, [2, 3], "hw")
    n_pos = g.op("ReduceProd", [hw], "n_pos", keepdims=1)
    rows = g.op("Reshape", [tokens, g.op("Concat", [g.i64("one", [1]), n_pos, g.i64("rest", [-1])],
                                         "rows_shape", axis=0)], "rows")
    grid = g.op("Reshape", [rows, g.op("Concat", [g.i64("one_", [1]), hw, g.i64("rest_", [-1])],
                                       "grid_shape", axis=0)], "grid")
    _back_to_input(g, grid)
    return g.model([Y], channels=c)


def window_partition(c: int = C, ws: int = 7, *, batch: str = "shape", opset: int = 17) -> onnx.ModelProto:
    """Swin's window partition ``x.view(B, H // ws, ws, W // ws, ws, C)`` (node ``part``, H and W
    divided in the graph), permuted and flattened to windows ``[-1, ws*ws, C]`` (node
    ``windows``), then a softmax over each window. ``batch="shape"`` takes B from Shape (correct);
    ``batch="int"`` freezes it as 1 (allowzero=1, as the dynamo exporter writes it)."""
    g = GraphBuilder(opset, channels=c)
    nhwc = _nhwc(g)
    n = _dims(g, X, [0], "n") if batch == "shape" else g.i64("one", [1])
    h_w = g.op("Div", [_dims(g, X, [2], "h"), g.i64("ws_h", [ws])], "n_h")
    w_w = g.op("Div", [_dims(g, X, [3], "w"), g.i64("ws_w", [ws])], "n_w")
    target = g.op("Concat", [n, h_w, g.i64("ws1", [ws]), w_w, g.i64("ws2", [ws]), g.i64("c", [c])],
                  "part_shape", axis=0)
    part = g.op("Reshape", [nhwc, target], "part", allowzero=1)
    perm = g.op("Transpose", [part], "perm", perm=[0, 1, 3, 2, 4, 5])
    windows = g.op("Reshape", [perm, g.i64("windows_shape", [-1, ws * ws, c])], "windows", allowzero=1)
    g.op("Softmax", [windows], Y, axis=1)
    return g.model([Y], channels=c)


def window_count_int(c: int = 6, group: int = 16, *, opset: int = 17) -> onnx.ModelProto:
    """Swin's ``attn.view(B_ // nW, nW, ...)`` with ``nW`` a Python int: the tokens are split in
    groups of ``group`` (``groups``: ``[-1, group, C]``, N·H·W/group of them), viewed as
    ``[-1, nW0, group, C]`` with nW0 the export-time groups per image (node ``per_image``) and
    added to a constant mask ``[1, nW0, group, 1]`` made at that size. At a larger image the -1
    takes the surplus groups and the mask lands on the wrong ones (silent)."""
    g = GraphBuilder(opset, channels=c)
    nhwc = _nhwc(g)
    groups = g.op("Reshape", [nhwc, g.i64("groups_shape", [-1, group, c])], "groups")
    n_w0 = 8 * 8 // group  # export shape 8x8
    per_image = g.op("Reshape", [groups, g.i64("per_image_shape", [-1, n_w0, group, c])], "per_image")
    mask = np.arange(n_w0 * group, dtype=np.float32).reshape(1, n_w0, group, 1) % 3
    g.inits.append(numpy_helper.from_array(mask, "mask"))
    masked = g.op("Add", [per_image, "mask"], "masked")
    g.op("Reshape", [masked, g.op("Shape", [nhwc], "nhwc_shape")], Y)
    return g.model([Y], channels=c)


def channel_groups(c: int = C, *, opset: int = 17) -> onnx.ModelProto:
    """``x.view(-1, H, W)`` then ``.view(-1, C, H, W)`` with C a constant: the (N·C) axis follows
    the batch only, so C is a model constant, not a size taken from the image (a negative)."""
    g = GraphBuilder(opset, channels=c)
    hw = _dims(g, X, [2, 3], "hw")
    planes = g.op("Reshape", [X, g.op("Concat", [g.i64("all", [-1]), hw], "planes_shape", axis=0)], "planes")
    g.op("Reshape", [planes, g.op("Concat", [g.i64("all_", [-1]), g.i64("c", [c]), hw], "back_shape", axis=0)], Y)
    return g.model([Y], channels=c)


def identity(c: int = C, *, opset: int = 17) -> onnx.ModelProto:
    g = GraphBuilder(opset, channels=c)
    g.op("Identity", [X], Y)
    return g.model([Y], channels=c)


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------

def run(model: onnx.ModelProto, shape: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime on deterministic random ``x`` of ``shape``."""
    from dynashape.backends.ort import run_model
    from dynashape.testing import random_feeds

    return run_model(model, random_feeds(model, {X: tuple(shape)}, seed))


def assert_same_outputs(model: onnx.ModelProto, reference: onnx.ModelProto, shape: Sequence[int],
                        expected_shape: Sequence[int] | None = None, atol: float = 1e-5) -> None:
    """``model`` runs at ``shape`` and matches the hand-written ``reference`` (shape and values)."""
    got, want = run(model, shape)[Y], run(reference, shape)[Y]
    if expected_shape is not None:
        assert want.shape == tuple(expected_shape), f"reference gives {want.shape}"
    assert got.shape == want.shape, f"at {tuple(shape)}: output {got.shape}, reference {want.shape}"
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
