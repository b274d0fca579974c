"""The export shape S0, recovered from the graph's baked constants (dynashape.analysis.exportshape).

Each kind of baked constant gives an equation in the input sizes; S0 is solved from them together
and checked (the graph is consistent there, the constants match). Where they do not pin it down
S0 is reported unknown and `check` asks for it, never guessing: a wrong S0 makes rewrites that
depend on it wrong.
"""

from __future__ import annotations

import io
from typing import Any

import models as M
import models_generated as G
import models_slicing as MS
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dynashape.analysis.exportshape import resolve_export_shape
from dynashape.analysis.probe import Probe, Prober
from dynashape.model import write_export_shape
from dynashape.pipeline.check import check_model
from dynashape.shapes import ShapeMap


class CountingProber(Prober):
    """A prober that remembers the distinct shapes it was asked about."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__(model)
        self.asked: set[tuple[tuple[str, tuple[int, ...]], ...]] = set()

    def at(self, shapes: ShapeMap) -> Probe:
        self.asked.add(tuple(sorted((k, tuple(v)) for k, v in shapes.items())))
        return super().at(shapes)


def _solved(model: onnx.ModelProto) -> Any:
    es = resolve_export_shape(model)
    assert es.source == "estimated", es.note
    return es


def _unknown(model: onnx.ModelProto) -> Any:
    es = resolve_export_shape(model)
    assert es.source == "unknown" and not es.known, (es.shapes, es.note)
    return es


# -- one kind of baked constant each (ONNX graphs) -------------------------------------------------

def test_whole_axis_pool_kernels_pin_each_axis() -> None:
    es = _solved(M.whole_map_pool(24, 40))
    assert es.shapes == {"x": (1, 4, 24, 40)}
    assert es.note == "solved from 2 baked constant(s), 2 agree (pool kernel)" and es.assumed == []
    assert es.confidence == "high"
    report = check_model(M.whole_map_pool(24, 40))
    assert (report.export_shape_source, report.export_shape_confidence) == ("estimated", "high")
    assert report.export_shape_text == "x:1x4x24x40 (solved from 2 baked constant(s), 2 agree (pool kernel))"


def test_resize_to_a_skip_size_pins_each_axis() -> None:
    es = _solved(M.resize_skip(64, 96))
    assert es.shapes == {"x": (1, 4, 64, 96)} and "resize size" in es.note


def test_a_constant_joined_with_a_live_tensor_pins_each_axis() -> None:
    assert _solved(G.add_fill(32, 48)).shapes == {"x": (1, 4, 32, 48)}


def test_a_constant_batch_joined_with_the_batch_pins_it() -> None:
    assert _solved(G.add_fill(32, 48, batch0=2)).shapes == {"x": (2, 4, 32, 48)}


def _split_rows(h0: int) -> onnx.ModelProto:
    # x.split([h0 - 8, 8], dim=2) with ints, then joined back: only holds where H == h0
    g = M.GraphBuilder()
    f = g.conv(M.X, M.C, M.C, "conv")
    g.nodes.append(onnx.helper.make_node("Split", [f, g.i64("rows", [h0 - 8, 8])], ["top", "bottom"],
                                         name="split", axis=2))
    g.op("Concat", ["bottom", "top"], M.Y, axis=2)
    return g.model([M.Y])


def test_split_sizes_pin_their_axis() -> None:
    es = _solved(_split_rows(40))
    assert es.shapes["x"][2] == 40 and "split sizes" in es.note
    # nothing depends on W: said, and taken equal to H
    assert es.assumed == ["x[3] = x[2] (no baked constant depends on it)"]


def _expand_to(h0: int, w0: int) -> onnx.ModelProto:
    # x.mean(dim=2, keepdim=True).expand(1, 4, h0, w0) with ints: W must be w0 (H broadcasts)
    g = M.GraphBuilder()
    m = g.reduce("ReduceMean", M.X, [2], "mean")
    e = g.op("Expand", [m, g.i64("to", [1, M.C, h0, w0])], "expand")
    g.op("Add", [e, M.X], M.Y)
    return g.model([M.Y])


def test_expand_shapes_and_the_join_after_them_pin_both_axes() -> None:
    es = _solved(_expand_to(24, 40))
    assert es.shapes == {"x": (1, 4, 24, 40)}
    assert "expand shape" in es.note


def test_a_weight_fed_flattened_features_with_a_strip_pool() -> None:
    # Gemm rows = 4 * (H / 8) * (W / 8): only H x W, but the pool kernel pins H, so W follows
    g = M.GraphBuilder()
    f = g.conv(M.X, M.C, M.C, "conv", k=8, stride=8, pad=0)
    strip = g.op("AveragePool", [f], "strip", kernel_shape=[4, 1], strides=[4, 1])  # H/8 = 4: H = 32
    flat = g.op("Flatten", [g.op("Add", [f, strip], "join")], "flat", axis=1)
    weight = g.rng.standard_normal((5, M.C * 4 * 6)).astype(np.float32)
    g.inits.append(numpy_helper.from_array(weight, "fc.weight"))
    g.op("Gemm", [flat, "fc.weight"], M.Y, transB=1)
    es = _solved(g.model([M.Y]))
    assert es.shapes == {"x": (1, 4, 32, 48)}
    assert "weight rows" in es.note and "pool kernel" in es.note and es.assumed == []


# -- never wrong: unknown, and said so ---------------------------------------------------------------

def test_a_model_with_no_baked_constant_needs_no_export_shape() -> None:
    es = _unknown(M.plain_conv())
    assert es.note == "no baked constant pins it"
    report = check_model(M.plain_conv())
    assert report.export_shape_source == "unknown"
    assert report.export_shape_note == "no baked constant pins it; not needed: no finding's fix depends on it"
    assert report.export_shape_text.startswith("unknown (no baked constant pins it")


def test_a_lone_resize_is_not_guessed_and_check_asks() -> None:
    # F.interpolate(f, size=(128, 128)) with ints: a 2x upsampling from 64 or a resize to a fixed
    # 128 from any size; nothing in the graph tells, so the rewrite waits for the export shape
    model = M.resize_by_factor(64, 64)
    _unknown(model)
    report = check_model(model)
    (f,) = [f for f in report.findings if f.rule == "DS002"]
    assert not f.fixable and "--export-shape" in f.fix and "--torch" in f.fix
    assert report.applied == []
    assert "1 finding(s) of DS002 could not be rewritten without it: give it with --export-shape" in (
        report.export_shape_note)
    assert report.to_json()["export_shape_source"] == "unknown"


def test_a_flattened_count_alone_is_not_split_into_rows_and_columns() -> None:
    # view(1, 4, 16 * 24) with ints: H x W = 384 has many factorizations and no square one
    es = _unknown(M.reshape_baked(4, 16, 24))
    assert "pin only products of input sizes" in es.note


def test_constants_that_disagree_leave_it_unknown() -> None:
    # the 2x2 bin pool of a 64x64 map reads as a whole-axis pool of 32; the classifier's 16
    # features then fit 32x128 as well as 128x32 (the true 64x64 fits fewer): ask, do not pick
    es = _unknown(MS.spp_classifier(64, 64, k=2))
    assert "alike" in es.note


def test_the_metadata_wins_over_the_estimate_and_the_given_shape_over_both() -> None:
    model = M.whole_map_pool(24, 40)  # the estimate says 24x40
    write_export_shape(model, {"x": (1, 4, 48, 80)})
    es = resolve_export_shape(model)
    assert (es.source, es.shapes) == ("metadata", {"x": (1, 4, 48, 80)})
    es = resolve_export_shape(model, {"x": (2, 4, 24, 40)})
    assert (es.source, es.shapes) == ("given", {"x": (2, 4, 24, 40)})


def test_the_estimate_probes_few_shapes() -> None:
    # probes are the cost (shape inference of the whole graph): base + one per dynamic axis +
    # the H x W corner + the candidates tried, whatever the number of constants
    model = M.resize_skip(64, 96)
    prober = CountingProber(model)
    resolve_export_shape(model, prober=prober)
    assert len(prober.asked) <= 6


# -- PyTorch modules, exported as users do (no dynashape metadata) -----------------------------------

torch_only = pytest.mark.torch


def _export(net: Any, shape: tuple[int, ...]) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net.eval(), (torch.randn(shape),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}})
    return onnx.load_from_string(buf.getvalue())


def _torch_nets() -> Any:
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class PatchTokens(nn.Module):
        """ViT-style: patches + a learned position table of the export size (no interpolation)."""

        def __init__(self, tokens: int) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 8, stride=8)
            self.pos = nn.Parameter(torch.randn(1, tokens, 8))

        def forward(self, x: Any) -> Any:
            return self.patch(x).flatten(2).transpose(1, 2) + self.pos

    class StripPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: Any) -> Any:
            f = self.conv(x)
            h, w = int(f.shape[2]), int(f.shape[3])
            return f * torch.sigmoid(F.avg_pool2d(f, (h, 1)) + F.avg_pool2d(f, (1, w)))

    class ResizeToSkip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.skip = nn.Conv2d(3, 4, 3, padding=1)
            self.deep = nn.Conv2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x: Any) -> Any:
            s = self.skip(x)
            d = self.deep(s)
            return s + F.interpolate(d, size=(int(s.shape[2]), int(s.shape[3])), mode="bilinear")

    class Unflatten(nn.Module):
        """``view(b, c, h * w)`` ... ``view(b, c, h, w)`` with ints, then a residual join."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x: Any) -> Any:
            f = self.conv(x)
            b, c, h, w = (int(d) for d in f.shape)
            t = torch.softmax(f.view(b, c, h * w), dim=-1)
            return f + t.view(b, c, h, w)

    return PatchTokens, StripPool, ResizeToSkip, Unflatten


@torch_only
@pytest.mark.parametrize("shape", [(1, 3, 24, 40), (1, 3, 40, 24)])
@pytest.mark.parametrize("net", ["StripPool", "ResizeToSkip", "Unflatten"])
def test_torch_modules_exported_off_square(net: str, shape: tuple[int, int, int, int]) -> None:
    _, strip, resize, unflatten = _torch_nets()
    module = {"StripPool": strip, "ResizeToSkip": resize, "Unflatten": unflatten}[net]()
    es = _solved(_export(module, shape))
    assert es.shapes == {"input": shape} and es.assumed == []


@torch_only
def test_torch_position_table_pins_the_token_count_only() -> None:
    patch_tokens, *_ = _torch_nets()
    # 32x32: 16 tokens; H x W is pinned, H = W is assumed and said
    es = _solved(_export(patch_tokens(16), (1, 3, 32, 32)))
    assert es.shapes == {"input": (1, 3, 32, 32)}
    assert es.assumed == [
        "only input[2] x input[3] is pinned, input[2] = input[3] assumed (give --export-shape if it was not square)"]
    assert es.confidence == "medium"
    # 32x48: 24 tokens, no square fits: asked for, not guessed
    es = _unknown(_export(patch_tokens(24), (1, 3, 32, 48)))
    assert "pin only products" in es.note


@torch_only
def test_torch_yolov8_pose_findings_do_not_need_the_export_shape() -> None:
    # issue 11: DS008 on a YOLOv8 pose head was found only with --export-shape; with S0 solved
    # from the anchors' length it is found, and fixed, without it
    torch = pytest.importorskip("torch")
    import models_generated_torch as T

    s0 = (1, 3, 64, 64)
    net = T.Yolo8Levels("pose").eval()
    with torch.no_grad():
        net(torch.zeros(s0))
    model = _export(net, s0)
    found = check_model(model)
    given = check_model(model, export_shape={"input": s0})
    assert found.export_shape == {"input": s0} and found.export_shape_source == "estimated"
    ds008 = [(f.rule, f.node, f.fixable) for f in found.findings if f.rule == "DS008"]
    assert ds008 and ds008 == [(f.rule, f.node, f.fixable) for f in given.findings if f.rule == "DS008"]
    assert found.applied == given.applied


def _ceil_mode_global_pool() -> onnx.ModelProto:
    """HF EfficientNet's pooler: ``AvgPool2d(hidden_dim, ceil_mode=True)`` on a map far smaller
    than the window, a global pool at every size (ONNX and ONNX Runtime give one output)."""
    g = M.GraphBuilder()
    y = g.conv(M.X, M.C, 8, "stem", stride=2)
    g.op("AveragePool", [y], M.Y, kernel_shape=[40, 40], strides=[40, 40], ceil_mode=1)
    return g.model([M.Y])


def test_a_ceil_mode_pool_larger_than_its_input_pins_nothing_and_is_no_finding() -> None:
    # the kernel once voted for an export size of 80 (40 x the stride 2); on EfficientNet, 10240,
    # which then sent the sweeps to 10240 x 10240 and past 22 GB
    model = _ceil_mode_global_pool()
    report = check_model(model)
    assert report.export_shape_source == "unknown"
    assert report.findings == []
    given = check_model(model, export_shape={"x": (1, M.C, 32, 32)})
    assert given.findings == [] and given.lattice  # consistent at S0: a lattice is reported
    assert not any("not consistent" in n for n in given.notes)
    M.run(model, (1, M.C, 32, 32))  # and ONNX Runtime agrees it is valid there
