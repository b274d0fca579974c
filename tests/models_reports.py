"""Small models for the report-only rules (DS009–DS011, DS015), DS016 and the bad-input tests.

onnx.helper graphs use ``models.GraphBuilder`` (input ``x`` = ``[N, 4, H, W]``, N/H/W dynamic);
the torch modules reproduce the real source patterns and are exported with the legacy exporter.
"""

from __future__ import annotations

from collections.abc import Sequence

import models as M
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ------------------------------------------------------------------------------------- DS016


def topk(k: str = "folded", *, w0: int = 32, opset: int = 17) -> onnx.ModelProto:
    """TopK over W. ``k``: "folded" (Add of two Constants), "initializer", "shape" (Shape(x)[3]),
    "baked" (Unsqueeze(Constant w0): ``int(x.shape[-1])`` exported at W=w0)."""
    g = M.GraphBuilder(opset)
    if k == "folded":
        kk = g.op("Add", [g.constant_i64("k_a", [2]), g.constant_i64("k_b", [3])], "k_sum")
    elif k == "initializer":
        kk = g.i64("k_init", [5])
    elif k == "shape":
        kk = g.shape_slice(M.X, 3, 4, "k_from_shape")
    elif k == "baked":
        g.nodes.append(helper.make_node("Constant", [], ["k_scalar"], name="k_scalar",
                                        value=numpy_helper.from_array(np.array(w0, np.int64), "k_scalar")))
        kk = g.op("Unsqueeze", ["k_scalar", g.constant_i64("k_axes", [0])], "k_unsq")
    else:
        raise ValueError(k)
    g.nodes.append(helper.make_node("TopK", [M.X, kk], ["values", "indices"], name="topk", axis=-1))
    return g.model(["values"])


def slice_axes(computed: bool = True, opset: int = 17) -> onnx.ModelProto:
    """x[:, :, 1:] with the axes [2] computed as Add(Constant 1, Constant 1) (or a Constant)."""
    g = M.GraphBuilder(opset)
    starts = g.constant_i64("starts", [1])
    ends = g.constant_i64("ends", [2**62])
    axes = g.op("Add", [g.constant_i64("ax_a", [1]), g.constant_i64("ax_b", [1])], "axes_sum") if computed \
        else g.constant_i64("axes_c", [2])
    g.op("Slice", [M.X, starts, ends, axes], "crop")
    return g.model(["crop"])


def reduce_axes_from_shape(opset: int = 18) -> onnx.ModelProto:
    """ReduceMean whose axes input is Sub(Size(Shape(x)), 1): the last axis, computed from the rank."""
    g = M.GraphBuilder(opset)
    shape = g.op("Shape", [M.X], "rank_shape")
    rank = g.op("Size", [shape], "rank")
    last = g.op("Sub", [rank, g.constant_i64("one", [1])], "last_axis")
    g.op("ReduceMean", [M.X, last], "mean", keepdims=1)
    return g.model(["mean"])


def resize_mode(mode: str = "cubic", *, antialias: int = 0, opset: int = 18) -> onnx.ModelProto:
    g = M.GraphBuilder(opset)
    scales = g.f32("scales", [1, 1, 2, 2])
    attrs: dict[str, object] = {"mode": mode}
    if antialias:
        attrs["antialias"] = antialias
    g.op("Resize", [M.X, "", scales], "up", **attrs)
    return g.model(["up"])


# ------------------------------------------------------------------------------------- DS009


def if_on_width(w0: int = 32, opset: int = 17) -> onnx.ModelProto:
    """``y = x if W > w0 - 1 else -x`` as an If whose condition comes from Shape(x)."""
    g = M.GraphBuilder(opset)
    w = g.shape_slice(M.X, 3, 4, "w")
    cond_v = g.op("Greater", [w, g.constant_i64("limit", [w0 - 1])], "w_gt")
    cond = g.op("Squeeze", [cond_v, g.constant_i64("sq_axes", [0])], "cond")
    out_t = helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)
    out_e = helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)
    then_g = helper.make_graph([helper.make_node("Identity", [M.X], ["then_out"], name="then_id")],
                               "then", [], [out_t])
    else_g = helper.make_graph([helper.make_node("Neg", [M.X], ["else_out"], name="else_neg")], "else", [], [out_e])
    g.nodes.append(helper.make_node("If", [cond], ["branch"], name="if_w", then_branch=then_g, else_branch=else_g))
    g.op("Relu", ["branch"], "y")
    return g.model(["y"])


def if_on_data(opset: int = 17) -> onnx.ModelProto:
    """An If whose condition is ReduceMax(x) > 0: data, not a size."""
    g = M.GraphBuilder(opset)
    mx = g.op("ReduceMax", [M.X], "mx", keepdims=0)
    cond = g.op("Greater", [mx, g.f32("zero", [0.0])], "cond_raw")
    cond1 = g.op("Squeeze", [cond], "cond")
    out_t = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)
    out_e = helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)
    then_g = helper.make_graph([helper.make_node("Identity", [M.X], ["t_out"], name="t_id")], "then", [], [out_t])
    else_g = helper.make_graph([helper.make_node("Neg", [M.X], ["e_out"], name="e_neg")], "else", [], [out_e])
    g.nodes.append(helper.make_node("If", [cond1], ["y"], name="if_data", then_branch=then_g, else_branch=else_g))
    return g.model(["y"])


def loop_sum(opset: int = 17) -> onnx.ModelProto:
    """y = x + 3 * 1 accumulated in a Loop of 3 iterations, then a whole-axis AveragePool [32, 1]."""
    g = M.GraphBuilder(opset)
    trip = g.i64("trip", [3])
    cond = "loop_cond"
    g.inits.append(numpy_helper.from_array(np.array(True), cond))
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         helper.make_node("Add", ["acc_in", "one_f"], ["acc_out"], name="body_add")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "one_f")],
    )
    g.nodes.append(helper.make_node("Loop", [trip, cond, M.X], ["looped"], name="loop", body=body))
    g.op("AveragePool", ["looped"], "pool", kernel_shape=[32, 1], strides=[1, 1])
    return g.model(["pool"])


def custom_domain(opset: int = 17) -> onnx.ModelProto:
    """Conv -> com.example::Mystery -> AveragePool [32, 1]: shapes after the custom op are unknown."""
    g = M.GraphBuilder(opset)
    c = g.conv(M.X, M.C, M.C, "conv")
    g.nodes.append(helper.make_node("Mystery", [c], ["mystery"], name="mystery", domain="com.example"))
    g.op("AveragePool", ["mystery"], "pool", kernel_shape=[32, 1], strides=[1, 1])
    x = helper.make_tensor_value_info(M.X, TensorProto.FLOAT, ["N", M.C, "H", "W"])
    out = helper.make_tensor_value_info("pool", TensorProto.FLOAT, [None] * 4)
    graph = helper.make_graph(g.nodes, "custom", [x], [out], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------------------------------- DS015


def conv_input(dims: Sequence[int | str], opset: int = 17) -> onnx.ModelProto:
    """One Conv on an input declared with the given dims (ints fixed, strings dynamic)."""
    g = M.GraphBuilder(opset, channels=int(dims[1]) if isinstance(dims[1], int) else M.C)
    c = g.conv(M.X, g.channels, 2, "conv")
    x = helper.make_tensor_value_info(M.X, TensorProto.FLOAT, list(dims))
    out = helper.make_tensor_value_info(c, TensorProto.FLOAT, [None] * len(dims))
    graph = helper.make_graph(g.nodes, "conv", [x], [out], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------------------------------- torch


def torch_modules() -> dict[str, object]:
    """The real source patterns as tiny torch modules (imported lazily)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PadWhenOdd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] % 2:  # the Python `if` on a size
                x = F.pad(x, (0, 1))
            return self.conv(x)

    class TinyViT(nn.Module):
        def __init__(self, img: int = 32, patch: int = 8, dim: int = 8) -> None:
            super().__init__()
            self.proj = nn.Conv2d(3, dim, patch, stride=patch)
            self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2, dim) * 0.02)
            self.head = nn.Linear(dim, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.proj(x).flatten(2).transpose(1, 2)
            t = t + self.pos_embed
            return self.head(t.mean(1))

    class TinyViTFixed(TinyViT):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # mean over tokens, embedding broadcast
            t = self.proj(x).flatten(2).transpose(1, 2)
            return self.head(t.mean(1) + self.pos_embed.mean(1))

    return {"pad_when_odd": PadWhenOdd, "vit": TinyViT, "vit_no_pos": TinyViTFixed}


def export_torch(module: object, shape: Sequence[int], dynamic: dict[int, str]) -> onnx.ModelProto:
    import io
    import warnings

    import torch

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.randn(*shape),), buf, input_names=["x"], output_names=["y"],  # type: ignore[attr-defined]
            dynamic_axes={"x": dynamic}, opset_version=17, dynamo=False,
        )
    return onnx.load_from_string(buf.getvalue())


# ------------------------------------------------------------------- DS009: Python `if` on sizes

# Source of two modules with a Python `if` on a size, written to a file so that `--torch FILE.py:NAME`
# and `doctor FILE.py:NAME` load them as a user's module (the differential tests and the doctor's).
SIZE_BRANCH_SOURCE = '''
import torch
import torch.nn.functional as F
from torch import nn

WINDOW = 7


class SwinStyle(nn.Module):
    """Patch conv /4, then windows of 7: pad to a multiple of 7 and crop back, only when needed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Linear(8, 8)

    def forward(self, x):
        x = self.patch(x)
        h, w = x.shape[2], x.shape[3]
        pad_b = (WINDOW - h % WINDOW) % WINDOW
        pad_r = (WINDOW - w % WINDOW) % WINDOW
        if pad_b > 0 or pad_r > 0:
            x = F.pad(x, (0, pad_r, 0, pad_b))  # swin-pad-line
        b, c, hp, wp = x.shape
        win = x.view(b, c, hp // WINDOW, WINDOW, wp // WINDOW, WINDOW).permute(0, 2, 4, 3, 5, 1)
        win = self.mix(win - win.mean(dim=(3, 4), keepdim=True))
        x = win.permute(0, 5, 1, 3, 2, 4).reshape(b, c, hp, wp)
        if pad_b > 0 or pad_r > 0:
            x = x[:, :, :h, :w]  # swin-crop-line
        return x


class DPTStyle(nn.Module):
    """Two stride-2 convs, upsample x2, and interpolate to the skip only when the sizes differ."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.down1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        skip = self.down1(x)
        up = F.interpolate(self.down2(skip), scale_factor=2.0, mode="bilinear", align_corners=False)
        if up.shape != skip.shape:
            up = F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)  # dpt-interp-line
        return up + skip


class NeedsMultipleOf32(nn.Module):
    """Rejects sizes that are not multiples of 32 (as smp models do): finer class shapes fail."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, stride=2, padding=1) for i in range(5)])

    def forward(self, x):
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise RuntimeError("the size must be a multiple of 32")
        return self.convs(x)
'''


def write_size_branch_modules(directory: object) -> str:
    """Write :data:`SIZE_BRANCH_SOURCE` to ``directory/size_branches.py``; return its path."""
    from pathlib import Path

    path = Path(str(directory)) / "size_branches.py"
    path.write_text(SIZE_BRANCH_SOURCE)
    return str(path)


def source_line(marker: str) -> int:
    """The line of :data:`SIZE_BRANCH_SOURCE` (as written to the file) holding ``marker``."""
    for i, line in enumerate(SIZE_BRANCH_SOURCE.splitlines(), 1):
        if marker in line:
            return i
    raise AssertionError(marker)


def window_pad(window: int = 7, *, mod: bool = True, opset: int = 17) -> onnx.ModelProto:
    """Pad x on H and W by ``(window - size % window) % window`` computed from Shape(x), as a traced
    Swin window partition does (``mod=False``: by ``size // window`` instead, which is no window pad)."""
    g = M.GraphBuilder(opset)
    w = g.constant_i64("win", [window])
    pads_hw = []
    for axis in (2, 3):
        size = g.shape_slice(M.X, axis, axis + 1, f"size{axis}")
        if mod:
            rem = g.op("Mod", [size, w], f"rem{axis}")
            pads_hw.append(g.op("Mod", [g.op("Sub", [w, rem], f"left{axis}"), w], f"pad{axis}"))
        else:
            pads_hw.append(g.op("Div", [size, w], f"pad{axis}"))
    zeros = g.constant_i64("zeros6", [0, 0, 0, 0, 0, 0])
    pads = g.op("Concat", [zeros, *pads_hw], "pads", axis=0)
    g.op("Pad", [M.X, pads], "padded")
    return g.model(["padded"])
