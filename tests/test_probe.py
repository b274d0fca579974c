"""Probing a graph at concrete input shapes (dynashape.analysis.probe): shapes, shape values, failures."""

from __future__ import annotations

import models as M
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dynashape.analysis.probe import Prober, _dims_of


def test_join_mismatch_names_the_add_node() -> None:
    # x (33 rows) -> MaxPool /2 -> 16 -> x2 -> 32 rows, added to the 33-row stem: join0 fails
    prober = Prober(M.unet(depth=1))
    bad = prober.at({"x": (1, 4, 33, 32)})
    assert not bad.ok
    assert bad.failure is not None
    assert (bad.failure.node, bad.failure.op) == ("join0", "Add")
    assert str(bad.failure).startswith("Add node 'join0': ")
    good = prober.at({"x": (1, 4, 34, 32)})
    assert good.ok and good.shape("y") == (1, 2, 34, 32)


def test_concat_mismatch_names_the_concat_node() -> None:
    # frozen resize to 32x48 (skip's size at 64x96) concatenated with skip at 128x40 -> 64x20
    probe = Prober(M.resize_skip(64, 96, join="Concat")).at({"x": (1, 4, 128, 40)})
    assert probe.failure is not None
    assert (probe.failure.node, probe.failure.op) == ("join", "Concat")


def test_pool_kernel_larger_than_its_input() -> None:
    prober = Prober(M.strip_pool(32, 32, axes="h"))
    probe = prober.at({"x": (1, 4, 16, 32)})
    assert probe.failure is not None
    assert (probe.failure.node, probe.failure.op) == ("pool_h", "AveragePool")
    assert "kernel [32, 1] is larger than its input [16, 32]" in probe.failure.message
    # larger than the kernel: the pool runs, and returns 64 - 32 + 1 ... with stride 32: 2 rows
    assert prober.at({"x": (1, 4, 64, 32)}).shape("pool_h") == (1, 4, 2, 32)


def test_reshape_element_count_mismatch() -> None:
    prober = Prober(M.reshape_baked(8, 16, 16))
    assert prober.at({"x": (1, 8, 16, 16)}).ok
    for shape in [(2, 8, 16, 16), (1, 8, 16, 32)]:
        probe = prober.at({"x": shape})
        assert probe.failure is not None
        assert (probe.failure.node, probe.failure.op) == ("flat", "Reshape")
        assert f"cannot reshape {list(shape)} (4096 elements) to [1, 8, 256]" in probe.failure.message


def test_reshape_with_minus_one_that_cannot_divide() -> None:
    g = M.GraphBuilder()
    g.op("Reshape", [M.X, g.i64("t", [0, 3, -1])], M.Y)
    prober = Prober(g.model([M.Y]))
    assert prober.at({"x": (1, 4, 3, 5)}).ok
    probe = prober.at({"x": (1, 4, 2, 5)})  # 40 elements, 3 does not divide them
    assert probe.failure is not None and probe.failure.node == M.Y


def test_shape_subgraph_values_shape_gather_concat() -> None:
    # target = Concat(Gather(Shape(x), 0), [4, -1])
    prober = Prober(M.reshape_from_shape())
    probe = prober.at({"x": (3, 4, 10, 12)})
    assert probe.ok
    np.testing.assert_array_equal(probe.value("shape"), [3, 4, 10, 12])
    np.testing.assert_array_equal(probe.value("n"), [3])
    np.testing.assert_array_equal(probe.value("target"), [3, 4, -1])
    assert probe.shape("y") == (3, 4, 120)
    np.testing.assert_array_equal(prober.at({"x": (5, 4, 2, 2)}).value("target"), [5, 4, -1])


def test_shape_subgraph_values_slice_and_constants() -> None:
    prober = Prober(M.resize_skip(64, 96))
    probe = prober.at({"x": (2, 4, 128, 40)})
    # Slice(Shape(deep))[0:2] follows the input; the constant part stays at the export size
    np.testing.assert_array_equal(probe.value("up_sizes_nc"), [2, 8])
    np.testing.assert_array_equal(probe.value("up_sizes"), [2, 8, 32, 48])
    assert probe.shape("skip") == (2, 8, 64, 20)
    assert probe.shape("deep") == (2, 8, 32, 10)
    # the correct version takes the last two entries from Shape(skip)
    ref = Prober(M.resize_skip(64, 96, sizes="shape")).at({"x": (2, 4, 128, 40)})
    assert ref.ok
    np.testing.assert_array_equal(ref.value("up_sizes"), [2, 8, 64, 20])
    assert ref.shape("y") == (2, 2, 64, 20)


def test_an_empty_slice_of_a_shape_vector_is_no_failure() -> None:
    # target = Concat(Shape(x)[0:2], [-1], Shape(x)[4:]): the last piece is empty, legally (swin's
    # legacy export slices shape vectors like this at every size)
    g = M.GraphBuilder()
    shape = g.op("Shape", [M.X], "shape")
    head = g.op("Slice", [shape, g.i64("s0", [0]), g.i64("e2", [2])], "head")
    tail = g.op("Slice", [shape, g.i64("s4", [4]), g.i64("e9", [9])], "tail")
    target = g.op("Concat", [head, g.i64("minus1", [-1]), tail], "target", axis=0)
    g.op("Reshape", [M.X, target], M.Y)
    prober = Prober(g.model([M.Y]))
    probe = prober.at({"x": (2, 4, 6, 8)})
    assert probe.ok, probe.failure
    assert probe.shape("tail") == (0,) and probe.shape(M.Y) == (2, 4, 48)
    # a pool whose window finds no input is still a failure
    assert not Prober(M.strip_pool(32, 48)).at({"x": (1, 4, 16, 24)}).ok


def test_shape_arithmetic_div_mul() -> None:
    # h2 = Shape(x)[2] // 2 * 3, as a 1-element tensor: an arithmetic shape subgraph
    g = M.GraphBuilder()
    shape = g.op("Shape", [M.X], "shape")
    h = g.op("Gather", [shape, g.i64("two", [2])], "h", axis=0)
    half = g.op("Div", [h, g.i64("d", [2])], "half")
    tripled = g.op("Mul", [half, g.i64("m", [3])], "tripled")
    target = g.op("Concat", [g.i64("lead", [-1]), tripled], "target", axis=0)
    g.op("Reshape", [M.X, target], M.Y)
    probe = Prober(g.model([M.Y])).at({"x": (1, 4, 10, 6)})
    np.testing.assert_array_equal(probe.value("tripled"), [15])
    np.testing.assert_array_equal(probe.value("target"), [-1, 15])
    # (ONNX's own data propagation stops at Div, so the probe knows the target's value but
    # shape inference does not know y's dims: values are not fed back into inference)


def test_rank_mismatch_is_a_failure_not_a_crash() -> None:
    probe = Prober(M.plain_conv()).at({"x": (1, 4, 8)})
    assert probe.failure is not None and "rank 4, not 3" in probe.failure.message


def test_probes_are_cached_and_large_weights_keep_their_dims() -> None:
    model = M.plain_conv()
    prober = Prober(model)
    a = prober.at({"x": (1, 4, 8, 8)})
    assert prober.at({"x": (1, 4, 8, 8)}) is a
    assert a.shape("conv1.weight") == (4, 4, 3, 3)  # 144 elements: declared, not carried
    assert a.shape("y") == (1, 2, 8, 8)
    assert all(init.name != "conv1.weight" for init in prober.skeleton.graph.initializer)


def test_non_float_input_and_multiple_inputs() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])
    m = helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "m"], ["y"], name="mask_mul")], "g", [x, m], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    prober = Prober(model)
    assert prober.input_names == ["x", "m"]
    assert prober.at({"x": (2, 4, 8, 8), "m": (2, 1, 8, 8)}).shape("y") == (2, 4, 8, 8)
    bad = prober.at({"x": (2, 4, 8, 8), "m": (2, 1, 8, 9)})
    assert bad.failure is not None and bad.failure.node == "mask_mul"


def test_values_feed_back_into_inference() -> None:
    # x.view(n, 2, c // 2, h, w): the legacy exporter writes c // 2 as Div on Shape values, which
    # ONNX data propagation does not evaluate; the probe feeds the value back (shufflenet's
    # channel shuffle used to leave 31 of its 32 Reshapes with unknown shapes)
    g = M.GraphBuilder()
    shape = g.op("Shape", [M.X], "shape")
    c = g.op("Gather", [shape, g.i64("one", [1])], "c", axis=0)
    half = g.op("Div", [c, g.i64("two", [2])], "half")
    n = g.op("Gather", [shape, g.i64("zero", [0])], "n", axis=0)
    hw = g.op("Slice", [shape, g.i64("s", [2]), g.i64("e", [4])], "hw")
    target = g.op("Concat", [n, g.i64("groups", [2]), half, hw], "target", axis=0)
    g.op("Reshape", [M.X, target], M.Y)
    probe = Prober(g.model([M.Y])).at({"x": (1, 4, 6, 8)})
    np.testing.assert_array_equal(probe.value("target"), [1, 2, 2, 6, 8])
    assert probe.shape("y") == (1, 2, 2, 6, 8)


def _halving_slice(g: M.GraphBuilder, x: str, name: str) -> str:
    """``x[:, :, h // 2:]`` with ``h // 2`` a Div of Shape values (which ONNX data propagation
    leaves unevaluated): the slice's start is known only once ``x``'s own shape is."""
    h = g.op("Gather", [g.op("Shape", [x], f"{name}_shape"), g.i64(f"{name}_two_idx", [2])], f"{name}_h", axis=0)
    start = g.op("Div", [h, g.i64(f"{name}_two", [2])], f"{name}_start")
    return g.op("Slice", [x, start, g.i64(f"{name}_end", [2**62]), g.i64(f"{name}_axes", [2])], name)


def _nch(g: M.GraphBuilder) -> tuple[str, str, str]:
    """N, C and H of the graph input, as scalars gathered from its Shape."""
    shape = g.op("Shape", [M.X], "shape")
    n, c, h = (g.op("Gather", [shape, g.i64(idx, [k])], name, axis=0)
               for k, (idx, name) in enumerate([("zero", "n"), ("one", "c"), ("two", "h")]))
    return n, c, h


def test_values_fed_back_stay_fed_back_over_several_passes() -> None:
    # The dynamo exporter computes sizes as scalar Div/Mod chains, and torch.roll slices at a
    # start taken from the Shape of the previous slice: each level becomes known one pass after
    # the one before it. A value fed back in one pass must stay fed back in the next (else the
    # level it made known is lost again), and it takes more than two passes to get to the end.
    g = M.GraphBuilder()
    n, c, h = _nch(g)
    half = g.op("Div", [h, g.i64("two_", [2])], "half")
    target = g.op("Concat", [n, c, half, g.i64("rest", [-1])], "target", axis=0)
    folded = g.op("Reshape", [M.X, target], "folded")  # (n, c, h/2, 2w): known after one pass
    level = folded
    for k in range(3):
        level = _halving_slice(g, level, f"slice{k}")
    g.op("Identity", [level], M.Y)
    probe = Prober(g.model([M.Y])).at({"x": (1, 4, 64, 8)})
    assert probe.shape("folded") == (1, 4, 32, 16)
    assert [probe.shape(f"slice{k}") for k in range(3)] == [(1, 4, 16, 16), (1, 4, 8, 16), (1, 4, 4, 16)]
    assert probe.shape(M.Y) == (1, 4, 4, 16)


def test_an_empty_slice_is_not_a_failure() -> None:
    # Swin builds its shifted-window mask with img_mask[:, 0:-7] = ... on the padded map: on a
    # 7-row map that slice is empty, at the export shape itself; a zero-size conv output is not
    g = M.GraphBuilder()
    rows = g.op("Slice", [M.X, g.i64("start", [0]), g.i64("end", [-7]), g.i64("axes", [2])], "rows")
    g.op("Identity", [rows], M.Y)
    probe = Prober(g.model([M.Y])).at({"x": (1, 4, 7, 8)})
    assert probe.ok, probe.failure
    assert probe.shape("rows") == (1, 4, 0, 8)
    g = M.GraphBuilder()
    g.op("Conv", [M.X, g.f32("w", [0.0] * (2 * 4 * 9)), g.f32("b", [0.0, 0.0])], M.Y, kernel_shape=[3, 3])
    model = g.model([M.Y])
    model.graph.initializer[0].dims[:] = [2, 4, 3, 3]
    bad = Prober(model).at({"x": (1, 4, 2, 8)})
    assert bad.failure is not None and bad.failure.node == M.Y


def _passes_model() -> tuple[onnx.ModelProto, str]:
    """Sizes known only pass by pass (see the test above), then an ``Add`` of the last level with
    a tensor whose height is ``h // 16``: equal at h = 64, not at h = 72 (found after the passes)."""
    g = M.GraphBuilder()
    n, c, h = _nch(g)
    half = g.op("Div", [h, g.i64("two_", [2])], "half")
    folded = g.op("Reshape", [M.X, g.op("Concat", [n, c, half, g.i64("rest", [-1])], "target", axis=0)], "folded")
    level = folded
    for k in range(3):
        level = _halving_slice(g, level, f"slice{k}")
    sixteenth = g.op("Div", [h, g.i64("sixteen", [16])], "sixteenth")
    other = g.op("Reshape", [M.X, g.op("Concat", [n, c, sixteenth, g.i64("rest2", [-1])], "target2", axis=0)],
                 "other")
    tail = g.op("Add", [level, g.op("Slice", [other, g.i64("s0", [0]), g.i64("s1", [16]), g.i64("ax3", [3])],
                                    "other_w")], "join")
    for k in range(4):
        tail = g.op("Relu", [tail], f"tail{k}")
    g.op("Identity", [tail], M.Y)
    return g.model([M.Y]), "join"


def test_a_feedback_pass_reinferring_only_what_changed_equals_a_whole_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # A feedback pass infers only the windows of the graph its new values reach (a few dozen
    # nodes of Swin-T's thousands); with windows of 2 nodes every step goes through that path,
    # and every dim, value and failure must be what inferring the whole patched graph gives
    import dynashape.analysis.probe as probe_module

    model, join = _passes_model()
    monkeypatch.setattr(probe_module, "_WINDOW", 2)
    windowed = Prober(model)
    whole = Prober(model)
    whole._incremental = False
    calls = []
    original = Prober._infer_window
    monkeypatch.setattr(Prober, "_infer_window", lambda self, *a: calls.append(1) or original(self, *a))
    names = [o for n in model.graph.node for o in n.output]
    for shape in [(1, 4, 64, 8), (1, 4, 72, 8), (2, 4, 48, 8)]:
        a, b = windowed.at({"x": shape}), whole.at({"x": shape})
        assert str(a.failure) == str(b.failure)
        assert {n: a.shape(n) for n in names} == {n: b.shape(n) for n in names}
        assert a.values.keys() == b.values.keys()
        for k in a.values:
            np.testing.assert_array_equal(a.values[k], b.values[k])
    assert len(calls) > 3
    assert windowed.at({"x": (1, 4, 64, 8)}).failure is None
    assert windowed.at({"x": (1, 4, 64, 8)}).shape(M.Y) == (1, 4, 4, 16)
    failed = windowed.at({"x": (1, 4, 72, 8)}).failure
    assert failed is not None and failed.node == join


def test_a_failed_probe_makes_its_dims_and_values_when_read() -> None:
    # the join fails in ONNX's first inference: its dims (a second, non-strict inference) and
    # shape values are made only when something reads them, and are then what they always were
    model = M.unet(depth=1)
    prober = Prober(model)
    prober._engine_state = "off"  # ONNX inference only
    bad = prober.at({"x": (1, 4, 33, 32)})
    assert bad.failure is not None and bad.failure.node == "join0"
    assert bad.dims._loader is not None and bad._values_loader is not None
    prober.at({"x": (1, 4, 64, 64)})  # another probe changes the skeleton's input dims meanwhile
    prober._set_input_dims({"x": (1, 4, 33, 32)})
    inferred = onnx.shape_inference.infer_shapes(prober.skeleton, strict_mode=False, data_prop=True).graph
    expected = {vi.name: _dims_of(vi) for part in (inferred.value_info, inferred.output) for vi in part}
    assert expected and all(bad.shape(name) == dims for name, dims in expected.items())
    assert bad.dims._loader is None
    good = prober.at({"x": (1, 4, 34, 32)})
    assert good.ok and good.dims._loader is None  # a probe that holds is made whole at once
