"""Symbolic shapes (dynashape.analysis.shape_engine) and the prober's use of them: the same answers as a
probe by ONNX inference, at every size, or no answer at all."""

from __future__ import annotations

from collections.abc import Iterable

import models as M
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dynashape.analysis.probe import Probe, Prober
from dynashape.analysis.shape_engine import Expr, Exprs, ShapeEngine


def _plain(model: onnx.ModelProto) -> Prober:
    """A prober that never asks the engine: ONNX inference and feedback passes only."""
    prober = Prober(model)
    prober._engine_state = "off"
    return prober


def _engine(model: onnx.ModelProto) -> ShapeEngine:
    prober = Prober(model)
    engine = ShapeEngine.build(prober.model, prober._engine_constants(), prober._carriers)
    assert engine is not None
    return engine


def _agrees_everywhere(model: onnx.ModelProto, sizes: Iterable[tuple[int, ...]]) -> tuple[int, int, int]:
    """Compare the engine with plain probes at each input shape; return (agreed ok, agreed failing,
    left to the prober). Fails the test on any disagreement."""
    engine = _engine(model)
    plain = _plain(model)
    names = plain._value_names
    counts = [0, 0, 0]
    for shape in sizes:
        probe = plain.at({M.X: shape})
        dims = engine.at({M.X: shape})
        if dims is None:
            counts[2] += 1
        elif dims.fails:
            assert probe.failure is not None, f"engine fails at {shape}, the probe does not"
            counts[1] += 1
        else:
            assert probe.failure is None, f"engine ok at {shape}, the probe fails: {probe.failure}"
            for name in names:
                assert dims.get(name) == probe.shape(name), (shape, name)
            counts[0] += 1
    return counts[0], counts[1], counts[2]


# ------------------------------------------------------------------------------------ expressions


def test_sums_that_are_equal_are_one_expression() -> None:
    x = Exprs()
    h = x.leaf(("x", 2))
    back = x.apply("+", x.apply("-", h, 1), 1)
    assert back is h
    a = x.apply("+", x.apply("*", h, 2), 3)
    b = x.apply("+", 3, x.apply("+", h, h))
    assert a is b and isinstance(a, Expr)
    assert x.apply("*", h, 1) is h
    assert x.apply("+", 2, 3) == 5  # numbers stay numbers
    assert x.apply("+", h, None) is None  # unknown stays unknown
    values = x.evaluate({("x", 2): 10})
    assert values[a.index] == 23


def test_division_semantics() -> None:
    x = Exprs()
    h = x.leaf("h")
    floor, ceil, trunc = x.apply("//", h, 4), x.apply("ceil//", h, 4), x.apply("trunc/", h, 4)
    for v in (-7, -4, 0, 5, 8):
        values = x.evaluate({"h": v})
        assert values[floor.index] == v // 4  # type: ignore[union-attr]
        assert values[ceil.index] == -(-v // 4)  # type: ignore[union-attr]
        assert values[trunc.index] == int(v / 4)  # type: ignore[union-attr]


def test_float_operations_stay_float() -> None:
    x = Exprs()
    assert x.apply("f/", 5, 3.0) == pytest.approx(5 / 3)
    assert x.apply("fceil", x.apply("f/", 5, 3.0)) == 2.0
    assert x.apply("f2i", -2.5) == -2  # toward zero, as numpy casts float32 to int64


# ------------------------------------------------------------------------ the same as ONNX inference


SPATIAL = [(1, M.C, h, w) for h in range(1, 42, 3) for w in (1, 7, 32, 33)]


def test_unet_agrees_with_probes_at_every_size() -> None:
    ok, failing, _ = _agrees_everywhere(M.unet(depth=3), SPATIAL)
    assert ok and failing  # both kinds of answers are given, and they were all right


def test_strided_convolutions_and_pools_agree() -> None:
    g = M.GraphBuilder()
    a = g.conv(M.X, M.C, 4, "a", k=3, stride=2, pad=1)
    b = g.op("MaxPool", [a], "b", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0])
    c = g.op("AveragePool", [b], "c", kernel_shape=[2, 3], strides=[1, 2])
    g.op("Relu", [c], M.Y)
    ok, failing, unsure = _agrees_everywhere(g.model([M.Y]), SPATIAL)
    # a pool window that does not fit its input is a failure the engine reports itself: the
    # prober fails there too (it checks the window), whatever size ONNX's rounding gives it
    assert ok and failing and not unsure


def test_a_convolution_window_that_does_not_fit_is_left_to_the_prober() -> None:
    g = M.GraphBuilder()
    a = g.conv(M.X, M.C, 4, "a", k=5, stride=2, pad=0)
    g.op("Relu", [a], M.Y)
    ok, failing, unsure = _agrees_everywhere(g.model([M.Y]), SPATIAL)
    # the output size ONNX's rounding gives a convolution whose window does not fit its input is
    # not the engine's to guess, nor is it a failure of the prober's
    assert ok and unsure and not failing


def test_a_pool_window_that_does_not_fit_after_an_unsure_convolution_is_left_to_the_prober() -> None:
    g = M.GraphBuilder()
    a = g.conv(M.X, M.C, 4, "a", k=5, stride=1, pad=0)
    g.op("MaxPool", [a], M.Y, kernel_shape=[3, 3], strides=[2, 2])
    # below 5 the convolution decides (unsure); from 5 to 6 the pool's window does not fit (a failure)
    ok, failing, unsure = _agrees_everywhere(g.model([M.Y]), [(1, M.C, h, h) for h in range(1, 12)])
    assert (ok, failing, unsure) == (5, 2, 4)


def test_pools_in_ceil_mode_agree() -> None:
    g = M.GraphBuilder()
    a = g.op("AveragePool", [M.X], "a", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, count_include_pad=0)
    b = g.op("MaxPool", [a], "b", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    g.op("AveragePool", [b], M.Y, kernel_shape=[3, 1], strides=[3, 1], pads=[0, 0, 2, 0], ceil_mode=1)
    ok, _, _ = _agrees_everywhere(g.model([M.Y]), [(1, M.C, h, w) for h in range(4, 80) for w in (4, 9)])
    assert ok


def test_shape_arithmetic_reshape_and_pad_agree() -> None:
    # pads up to a multiple of 7 computed from the size (Swin's window partition), then
    # a reshape to (n, c, h/7, 7, w/7, 7) and back
    g = M.GraphBuilder()
    shape = g.op("Shape", [M.X], "shape")
    h = g.op("Gather", [shape, g.i64("i2", [2])], "h", axis=0)
    w = g.op("Gather", [shape, g.i64("i3", [3])], "w", axis=0)
    seven = g.i64("seven", [7])
    pad_h = g.op("Mod", [g.op("Sub", [seven, g.op("Mod", [h, seven], "hm")], "hs"), seven], "pad_h")
    pad_w = g.op("Mod", [g.op("Sub", [seven, g.op("Mod", [w, seven], "wm")], "ws"), seven], "pad_w")
    zeros = g.i64("zeros", [0, 0, 0, 0, 0, 0])
    pads = g.op("Concat", [zeros, pad_h, pad_w], "pads", axis=0)
    padded = g.op("Pad", [M.X, pads], "padded")
    pshape = g.op("Shape", [padded], "pshape")
    n_c = g.op("Slice", [pshape, g.i64("s0", [0]), g.i64("s2", [2])], "n_c")
    ph = g.op("Div", [g.op("Gather", [pshape, g.i64("j2", [2])], "ph", axis=0), seven], "ph7")
    pw = g.op("Div", [g.op("Gather", [pshape, g.i64("j3", [3])], "pw", axis=0), seven], "pw7")
    target = g.op("Concat", [n_c, ph, seven, pw, seven], "target", axis=0)
    windows = g.op("Reshape", [padded, target], "windows")
    g.op("Reshape", [windows, pshape], M.Y)
    ok, _, _ = _agrees_everywhere(g.model([M.Y]), SPATIAL)
    assert ok
    engine = _engine(g.model([M.Y]))
    dims = engine.at({M.X: (1, M.C, 30, 14)})
    assert dims is not None and dims.get("windows") == (1, M.C, 5, 7, 2, 7)


def test_resize_by_scales_and_float_range_agree() -> None:
    g = M.GraphBuilder()
    up = g.op("Resize", [M.X, "", g.f32("scales", [1, 1, 2, 0.5])], "up", mode="nearest")
    shape = g.op("Shape", [up], "shape")
    h = g.op("Cast", [g.op("Gather", [shape, g.i64("i2", [2])], "h", axis=0)], "hf", to=TensorProto.FLOAT)
    for name, v in (("start", 0.5), ("step", 1.5)):
        g.inits.append(numpy_helper.from_array(np.array(v, np.float32), name))
    g.op("Range", ["start", g.op("Squeeze", [h, g.i64("ax", [0])], "hs"), "step"], "positions")
    g.op("Relu", [up], M.Y)
    model = g.model([M.Y])
    ok, _, _ = _agrees_everywhere(model, SPATIAL)
    assert ok
    dims = _engine(model).at({M.X: (1, M.C, 9, 9)})
    assert dims is not None and dims.get("positions") == (12,)  # ceil((18 - 0.5) / 1.5)


def test_resize_by_scales_that_are_not_exact_agrees() -> None:
    g = M.GraphBuilder()
    up = g.op("Resize", [M.X, "", g.f32("scales", [1, 1, 1 / 3, 1.7])], "up", mode="nearest")
    g.op("Relu", [up], M.Y)
    ok, _, _ = _agrees_everywhere(g.model([M.Y]), [(1, M.C, h, w) for h in range(3, 200, 7) for w in (3, 10, 97)])
    assert ok


def test_slices_backwards_agree() -> None:
    g = M.GraphBuilder()
    starts, ends = g.i64("starts", [-1, 5]), g.i64("ends", [-(2**63), -100])
    g.op("Slice", [M.X, starts, ends, g.i64("axes", [2, 3]), g.i64("steps", [-1, -2])], M.Y)
    ok, _, _ = _agrees_everywhere(g.model([M.Y]), SPATIAL)
    assert ok


def test_sizes_rounded_in_float_agree() -> None:
    # MobileViT: new_h = int(math.ceil(h / 3) * 3), exported as Cast(float) / 3 -> Ceil -> * 3 -> Cast
    g = M.GraphBuilder()
    shape = g.op("Shape", [M.X], "shape")
    h = g.op("Cast", [g.op("Gather", [shape, g.i64("i2", [2])], "h", axis=0)], "hf", to=TensorProto.FLOAT)
    g.inits.append(numpy_helper.from_array(np.array(3.0, np.float32), "three"))
    up = g.op("Mul", [g.op("Ceil", [g.op("Div", [h, "three"], "third")], "ceil"), "three"], "up")
    new_h = g.op("Cast", [up], "new_h", to=TensorProto.INT64)
    pads = g.op("Concat", [g.i64("z6", [0, 0, 0, 0, 0, 0]), g.op("Sub", [new_h, g.op("Gather", [shape, g.i64(
        "j2", [2])], "h_int", axis=0)], "extra"), g.i64("z1", [0])], "pads", axis=0)
    g.op("Pad", [M.X, pads], M.Y)
    model = g.model([M.Y])
    ok, _, _ = _agrees_everywhere(model, SPATIAL)
    assert ok
    dims = _engine(model).at({M.X: (1, M.C, 10, 4)})
    assert dims is not None and dims.get(M.Y) == (1, M.C, 12, 4)


def test_top_k_agrees_and_fails_as_the_probe_does() -> None:
    g = M.GraphBuilder()
    flat = g.op("Reshape", [M.X, g.i64("target", [0, 0, -1])], "flat")
    g.nodes.append(helper.make_node("TopK", [flat, g.i64("k", [12])], [M.Y, "indices"], name="top", axis=-1))
    model = g.model([M.Y])
    ok, failing, _ = _agrees_everywhere(model, [(1, M.C, h, w) for h in range(1, 6) for w in range(1, 6)])
    assert ok and failing  # fewer than 12 elements: ONNX fails, and so does the engine


def test_join_of_differing_sizes_is_a_failure_the_probe_has_too() -> None:
    model = M.resize_skip(64, 96, join="Concat")
    engine = _engine(model)
    dims = engine.at({M.X: (1, M.C, 128, 40)})
    assert dims is not None and dims.fails
    assert _plain(model).at({M.X: (1, M.C, 128, 40)}).failure is not None


# ----------------------------------------------------------------------------- what it refuses


def test_custom_op_is_not_modelled() -> None:
    g = M.GraphBuilder()
    g.nodes.append(helper.make_node("Frobnicate", [M.X], [M.Y], name="custom", domain="com.example"))
    graph = helper.make_graph(
        g.nodes, "g", [helper.make_tensor_value_info(M.X, TensorProto.FLOAT, ["N", M.C, "H", "W"])],
        [helper.make_tensor_value_info(M.Y, TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    assert ShapeEngine.build(model, {}) is None


def test_missing_input_or_other_rank_gives_no_answer() -> None:
    engine = _engine(M.unet(depth=1))
    assert engine.at({}) is None
    assert engine.at({M.X: (1, M.C, 32)}) is None


# ------------------------------------------------------------------------------- the prober's use


def _all_dims(prober: Prober, probe: Probe) -> dict[str, object]:
    return {name: probe.shape(name) for name in prober._value_names}


def test_prober_answers_from_the_engine_after_two_agreeing_probes() -> None:
    model = M.unet(depth=3)
    prober, plain = Prober(model), _plain(model)
    shapes = [(1, M.C, 64, 64), (2, M.C, 128, 128), (1, M.C, 96, 64), (1, M.C, 33, 64)]
    probes = [prober.at({M.X: s}) for s in shapes]
    assert prober._engine_state == "trusted"
    assert prober._engine is not None
    for shape, probe in zip(shapes, probes):
        reference = plain.at({M.X: shape})
        assert probe.ok == reference.ok
        assert str(probe.failure) == str(reference.failure)
        assert _all_dims(prober, probe) == _all_dims(plain, reference)
        for name, value in reference.values.items():
            np.testing.assert_array_equal(probe.values[name], value)


def test_a_failure_found_by_the_engine_reads_as_the_probe_says_it() -> None:
    model = M.unet(depth=3)
    prober = Prober(model)
    prober.at({M.X: (1, M.C, 64, 64)})
    prober.at({M.X: (2, M.C, 128, 128)})
    failed = prober.at({M.X: (1, M.C, 33, 64)})
    assert not failed.ok
    assert failed._settle is not None  # nothing made yet: a scan reads only ok
    reference = _plain(model).at({M.X: (1, M.C, 33, 64)})
    assert failed.failure is not None and reference.failure is not None
    assert (failed.failure.node, failed.failure.message) == (reference.failure.node, reference.failure.message)
    assert failed._settle is None
    assert failed.shape("join0") == reference.shape("join0")


def test_an_engine_that_disagrees_is_never_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    model = M.unet(depth=2)
    prober = Prober(model)
    real_extend = Exprs.extend

    def wrong(self: Exprs, values: list[int], shapes: dict[str, tuple[int, ...]]) -> None:
        start = len(values)
        real_extend(self, values, shapes)
        values[start:] = [v + 1 for v in values[start:]]  # every symbolic size off by one

    monkeypatch.setattr(Exprs, "extend", wrong)
    prober.at({M.X: (1, M.C, 64, 64)})
    prober.at({M.X: (2, M.C, 128, 128)})
    probe = prober.at({M.X: (1, M.C, 96, 96)})
    assert prober._engine_state == "off" and prober._engine is None
    assert probe.shape(M.Y) == _plain(model).at({M.X: (1, M.C, 96, 96)}).shape(M.Y)


def test_build_stops_at_a_value_a_witness_does_not_know() -> None:
    model = M.unet(depth=2)
    plain = _plain(model)
    shapes = {M.X: (1, M.C, 64, 64)}
    probe = plain.at(shapes)
    prober = Prober(model)
    args = (prober.model, prober._engine_constants(), prober._carriers)
    assert ShapeEngine.build(*args, witnesses=[(shapes, probe.dims.get)]) is not None

    def forgetful(name: str) -> tuple[int | None, ...] | None:
        dims = probe.dims.get(name)
        return None if name == "join0" else dims

    assert ShapeEngine.build(*args, witnesses=[(shapes, forgetful)]) is None


def test_constant_node_values_come_from_the_skeleton() -> None:
    # Constant nodes become initializers of the skeleton: the engine reads their values too
    g = M.GraphBuilder()
    target = g.constant_i64("target", [0, 0, -1])
    g.op("Reshape", [M.X, target], M.Y)
    model = g.model([M.Y])
    dims = _engine(model).at({M.X: (2, M.C, 3, 5)})
    assert dims is not None and dims.get(M.Y) == (2, M.C, 15)
    assert numpy_helper.to_array(model.graph.node[0].attribute[0].t).tolist() == [0, 0, -1]


def _folds(count: int) -> onnx.ModelProto:
    """``count`` reshapes, each to a target computed with Div from the last one's Shape: ONNX
    data propagation stops at Div, so each needs one more feedback pass of the prober."""
    g = M.GraphBuilder()
    x = M.X
    for k in range(count):
        shape = g.op("Shape", [x], f"shape{k}")
        dims = [g.op("Gather", [shape, g.i64(f"i{k}_{i}", [i])], f"d{k}_{i}", axis=0) for i in range(4)]
        half = g.op("Div", [dims[2], g.i64(f"two{k}", [2])], f"half{k}")
        double = g.op("Mul", [dims[3], g.i64(f"twice{k}", [2])], f"double{k}")
        target = g.op("Concat", [dims[0], dims[1], half, double], f"target{k}", axis=0)
        x = g.op("Reshape", [x, target], f"fold{k}")
    g.op("Relu", [x], M.Y)
    return g.model([M.Y])


def test_validity_from_an_engine_that_knows_more_than_the_probes() -> None:
    model = _folds(3)
    prober = Prober(model)
    prober.max_passes = 1  # the third fold stays unknown to the probes: the engine knows it
    plain = _plain(model)
    plain.max_passes = 1
    for shape in [(1, M.C, 64, 64), (2, M.C, 128, 128)]:
        assert (prober.at({M.X: shape}).shape("fold2") or ())[2:3] == (None,)
    valid = prober.outcome({M.X: (1, M.C, 32, 16)})
    assert prober._engine_state == "verdicts" and prober._engine is not None
    assert "fold2" in prober._engine.knows_more
    assert valid.ok and plain.at({M.X: (1, M.C, 32, 16)}).ok
    # its probes are still the prober's own, and a failure is too
    assert (prober.at({M.X: (1, M.C, 32, 16)}).shape("fold2") or ())[2:3] == (None,)
    # 36 -> 18 -> 9 -> 4: the engine sees the last fold fail; the probes, knowing less, do not,
    # and theirs is the answer
    engine_dims = prober._engine.at({M.X: (1, M.C, 36, 16)})
    assert engine_dims is not None and engine_dims.fails
    bad = prober.outcome({M.X: (1, M.C, 36, 16)})
    reference = plain.at({M.X: (1, M.C, 36, 16)})
    assert bad.ok == reference.ok and str(bad.failure) == str(reference.failure)
    # a caller that reads dims gets the prober's probe
    assert prober.outcome({M.X: (1, M.C, 40, 16)}, reads=[M.Y]) is prober.at({M.X: (1, M.C, 40, 16)})
