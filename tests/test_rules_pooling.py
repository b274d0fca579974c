"""DS001: pooling whose kernel is the export-time size of the axis it pools; DS004: adaptive pooling
into k > 1 bins frozen as a kernel == stride window."""

from __future__ import annotations

import importlib.util

import models as M
import models_slicing as MS
import numpy as np
import onnx
import pytest
from onnx import helper

from dynashape.backends.ort import RunError, run_model
from dynashape.pipeline.check import check_model
from dynashape.testing import assert_models_equivalent

S0 = {"x": (1, 4, 64, 96)}
OTHER_SHAPES = [(2, 4, 32, 48), (1, 4, 100, 30), (3, 4, 64, 96)]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _ds001(report) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {f.node: f for f in report.findings if f.rule == "DS001"}


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
@pytest.mark.parametrize("given", [True, False], ids=["export_shape", "estimated"])
def test_strip_pooling_h1_and_1w(op: str, opset: int, given: bool) -> None:
    model = M.strip_pool(64, 96, op=op, opset=opset)
    report = check_model(model, export_shape=S0 if given else None)
    # both strip kernels are anchors: the estimate recovers the non-square export shape
    assert report.export_shape == S0
    assert report.export_shape_source == ("given" if given else "estimated")
    found = _ds001(report)
    assert sorted(found) == ["pool_h", "pool_w"]
    h, w = found["pool_h"], found["pool_w"]
    assert (h.severity, h.op, h.detected_by, h.fixable) == ("error", op, "static", True)
    assert h.baked_value == {"2": 64} and w.baked_value == {"3": 96}
    assert h.details == {"pooled_axes": [2], "global": False}
    assert w.details == {"pooled_axes": [3], "global": False}
    assert "kernel [64, 1] equals the export-time size of axis 2 of its input (1x4x64x96)" in h.message
    reduce_op = {"AveragePool": "ReduceMean", "MaxPool": "ReduceMax"}[op]
    assert report.applied == [
        f"pool_h: {op} kernel [64, 1] -> {reduce_op} over axes [2]",
        f"pool_w: {op} kernel [1, 96] -> {reduce_op} over axes [3]",
    ]

    fixed = report.fixed_model
    assert op not in _ops(fixed)
    reduces = [n for n in fixed.graph.node if n.op_type == reduce_op]
    assert len(reduces) == 2
    for node in reduces:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["keepdims"] == 1
        if opset >= 18:  # axes moved from an attribute to an input in opset 18
            assert "axes" not in attrs and len(node.input) == 2
        else:
            assert attrs["axes"] in ([2], [3]) and len(node.input) == 1
    assert_models_equivalent(model, fixed, S0)
    reference = M.strip_pool(64, 96, op=op, opset=opset, reference=True)
    for shape in OTHER_SHAPES:
        M.assert_same_outputs(fixed, reference, shape, expected_shape=shape)


def test_the_original_strip_pool_breaks_off_the_export_shape() -> None:
    model = M.strip_pool(64, 96)
    M.run(model, S0["x"])
    with pytest.raises(RunError):  # [1,4,2,96] + [1,4,128,1]: the attention add fails
        M.run(model, (1, 4, 128, 96))


@pytest.mark.parametrize(("axes", "node", "axis", "size"), [("h", "pool_h", 2, 64), ("w", "pool_w", 3, 96)])
@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_single_strip(axes: str, node: str, axis: int, size: int, op: str) -> None:
    model = M.strip_pool(64, 96, op=op, axes=axes)
    reference = M.strip_pool(64, 96, op=op, axes=axes, reference=True)
    for export_shape in (S0, None):
        report = check_model(model, export_shape=export_shape)
        # estimated: one kernel speaks for one axis; the other is taken square
        assert report.export_shape["x"][axis] == size
        assert [(f.rule, f.node) for f in report.findings] == [("DS001", node)]
        assert report.findings[0].details["pooled_axes"] == [axis]
        assert_models_equivalent(model, report.fixed_model, S0)
        for shape in OTHER_SHAPES:
            M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=shape)


@pytest.mark.parametrize(("op", "global_op"), [("AveragePool", "GlobalAveragePool"), ("MaxPool", "GlobalMaxPool")])
@pytest.mark.parametrize("given", [True, False], ids=["export_shape", "estimated"])
def test_whole_map_pooling_becomes_global(op: str, global_op: str, given: bool) -> None:
    model = M.whole_map_pool(64, 96, op=op)
    report = check_model(model, export_shape=S0 if given else None)
    assert report.export_shape == S0
    (finding,) = [f for f in report.findings if f.rule == "DS001"]
    assert finding.node == "pool"
    assert finding.details == {"pooled_axes": [2, 3], "global": True}
    assert finding.baked_value == {"2": 64, "3": 96}
    assert finding.fix == f"replace with {global_op}"
    assert global_op in _ops(report.fixed_model) and op not in _ops(report.fixed_model)
    assert_models_equivalent(model, report.fixed_model, S0)
    reference = M.whole_map_pool(64, 96, op=op, reference=True)
    for shape in OTHER_SHAPES:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 8))
    # unfixed, a larger map gives a 2x1 pooled map: the classifier's width doubles
    assert M.run(model, (1, 4, 128, 96))[M.Y].shape == (1, 16)


@pytest.mark.parametrize("export_shape", [S0, {"x": (1, 4, 2, 2)}, None])
def test_ordinary_pooling_is_not_flagged(export_shape: dict | None) -> None:
    # at 1x4x2x2 the 2x2 MaxPool covers the whole map: still ordinary downsampling
    model = M.ordinary_pooling()
    report = check_model(model, export_shape=export_shape)
    assert [f for f in report.findings if f.rule == "DS001"] == []
    assert report.applied == []
    refused = {r.node: r.reason for r in report.refusals if r.rule == "DS001"}
    assert set(refused) == {"maxpool2", "avgpool3", "maxpool3s2"}
    if export_shape == S0:
        assert "ordinary windowed pooling" in refused["maxpool2"]
    assert _ops(report.fixed_model) == _ops(model)


def test_two_by_two_pool_on_a_two_by_two_map_at_a_small_export_shape() -> None:
    # six MaxPool 2x2/2 at a 64x64 export: the last one pools a 2x2 map with a 2x2 window. A
    # GlobalMaxPool "fix" would be wrong at 128x128 (2x2 output, not 1x1).
    g = M.GraphBuilder()
    cur = M.X
    for i in range(6):
        cur = g.op("MaxPool", [cur], f"down{i}" if i < 5 else M.Y, kernel_shape=[2, 2], strides=[2, 2])
    model = g.model([M.Y])
    report = check_model(model, export_shape={"x": (1, 4, 64, 64)})
    assert [f.rule for f in report.findings] == []
    assert report.applied == []


def test_padded_whole_axis_pool_is_reported_but_not_rewritten() -> None:
    g = M.GraphBuilder()
    g.op("AveragePool", [M.X], M.Y, kernel_shape=[64, 1], strides=[64, 1], pads=[1, 0, 1, 0])
    model = g.model([M.Y])
    report = check_model(model, export_shape=S0)
    (finding,) = report.findings
    assert (finding.rule, finding.node, finding.fixable) == ("DS001", M.Y, False)
    assert "it pads ([1, 0, 1, 0])" in finding.fix
    assert report.applied == [] and _ops(report.fixed_model) == ["AveragePool"]


def test_global_average_pool_and_reduce_mean_are_not_flagged() -> None:
    g = M.GraphBuilder()
    gap = g.op("GlobalAveragePool", [M.X], "gap")
    mean = g.reduce("ReduceMean", M.X, [2], "mean_h")
    g.op("Add", [gap, mean], M.Y)
    report = check_model(g.model([M.Y]), export_shape=S0)
    assert report.findings == [] and report.applied == []


# ---------------------------------------------------------------------------------------- DS004

PPM_S0 = {"x": (1, 4, 64, 96)}
# every spatial size divisible by 4: the bins (2 and 4) are even, the rewrite exact
DIVISIBLE = [(2, 4, 32, 48), (1, 4, 128, 64), (3, 4, 16, 160)]


def _ds004(report):  # type: ignore[no-untyped-def]
    return {f.node: f for f in report.findings if f.rule == "DS004"}


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_pyramid_pooling_bins_become_a_reshape_and_a_reduction(op: str, opset: int) -> None:
    model = MS.ppm(64, 96, op=op, opset=opset)
    report = check_model(model, export_shape=PPM_S0)
    found = _ds004(report)
    assert sorted(found) == ["pool2", "pool4"]
    f = found["pool4"]
    assert (f.severity, f.op, f.fixable, f.detected_by) == ("error", op, True, "static")
    assert f.baked_value == {"2": 16, "3": 24}
    assert f.details["modes"] == ["bins", "bins"] and f.details["bins"] == [4, 4]
    assert "into a 4x4 grid only at the export size (axis 2: 64 / 4 = 16; axis 3: 96 / 4 = 24)" in f.message
    assert "the output grid is 4x4 only there" in f.message and "it gives 8x8 instead of 4x4" in f.message
    assert "other bin counts" in f.message and "resized to a size" in f.message
    assert "not exact at other sizes" in f.fix and "uneven bins" in f.fix
    assert "Reshape to [N, C, 4, H/4, 4, W/4]" in f.fix
    assert [r for r in report.findings if r.rule == "DS001"] == []  # the bins are not whole axes
    refused = {r.node: r.reason for r in report.refusals if r.rule == "DS004"}
    assert "pool1" not in refused  # the global pool (bin 1) is not an AveragePool/MaxPool
    reduce_op = {"AveragePool": "ReduceMean", "MaxPool": "ReduceMax"}[op]
    assert report.applied == [
        f"pool2: {op} kernel [32, 48] -> Reshape into a 2x2 grid of windows (from Shape) + {reduce_op}",
        f"pool4: {op} kernel [16, 24] -> Reshape into a 4x4 grid of windows (from Shape) + {reduce_op}",
    ]
    fixed = report.fixed_model
    assert op not in _ops(fixed) and "Reshape" in _ops(fixed)

    assert_models_equivalent(model, fixed, PPM_S0)
    reference = MS.ppm(64, 96, op=op, opset=opset, reference=True)
    assert_models_equivalent(model, reference, PPM_S0)  # the reference is right where the original is
    for shape in DIVISIBLE:
        M.assert_same_outputs(fixed, reference, shape, expected_shape=(shape[0], 2, shape[2], shape[3]))
    # the original runs at 128x192 but pools 16x24 windows into an 8x8 grid: silently wrong
    wrong = M.run(model, (1, 4, 128, 192))[M.Y]
    assert not np.allclose(wrong, M.run(reference, (1, 4, 128, 192))[M.Y], atol=1e-3)
    # not divisible by 4: PyTorch's uneven bins are not reproduced; the fixed model rejects the
    # size and the lattice scan reports the valid sizes
    with pytest.raises(RunError):
        M.run(fixed, (1, 4, 66, 96))
    lattice = [g for g in report.findings if g.rule == "DS003"]
    assert lattice and all("multiple of 4" in g.message for g in lattice)


def test_pyramid_pooling_without_the_export_shape_is_not_rewritten() -> None:
    # the kernels of a pyramid (32x48 and 16x24) say nothing about the input size: they must
    # not vote for an export shape as if they were whole-axis pools (that "fix" would pool 2x2
    # into one global value), and DS004 needs the true export shape to rewrite
    report = check_model(MS.ppm(64, 96))
    assert report.export_shape_source == "unknown"  # no silent default (issue 11)
    assert report.applied == []
    assert all(not f.fixable for f in report.findings if f.rule in ("DS001", "DS004"))


@pytest.mark.parametrize("flatten", ["op", "computed"])
def test_spp_classifier_into_a_fixed_gemm(flatten: str) -> None:
    s0 = {"x": (1, 4, 64, 64)}
    model = MS.spp_classifier(64, 64, k=2, flatten=flatten)
    report = check_model(model, export_shape=s0)
    (f,) = _ds004(report).values()
    assert f.node == "pool" and "flattened into the fixed-size Gemm" in f.message
    if flatten == "computed":  # the flatten size grew with the input: it must follow the fixed grid
        assert f.details["flattens"] == [["flat", 1]]
        assert "Reshape 'flat' flattens it with a size computed from the input" in f.message
        assert report.applied[0].endswith("; flat: flatten target -> Shape[:1] + [-1]")
    else:
        assert f.details["flattens"] == []
    assert [g.rule for g in report.findings if g.rule != "DS003"] == ["DS004"]
    assert_models_equivalent(model, report.fixed_model, s0)
    reference = MS.spp_classifier(64, 64, k=2, reference=True)
    for shape in [(2, 4, 32, 32), (1, 4, 96, 128)]:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 5))
    with pytest.raises(RunError):  # unfixed: 4x4 bins feed 64 features into a 16-feature Gemm
        M.run(model, (1, 4, 128, 128))


@pytest.mark.parametrize(("width", "modes", "kernel"), [("keep", ["bins", "keep"], [16, 1]),
                                                        ("whole", ["bins", "whole"], [16, 96])])
def test_one_axis_in_bins(width: str, modes: list[str], kernel: list[int]) -> None:
    # adaptive_avg_pool2d(f, (4, None)) and (4, 1): only H is cut into bins
    model = MS.strip_bins(64, 96, 4, width=width)
    report = check_model(model, export_shape=PPM_S0)
    (f,) = _ds004(report).values()
    assert f.details["modes"] == modes and f.baked_value == {"2": 16}
    # (4, 1) also pools W whole: DS001 leaves the node to DS004 instead of reporting it unfixable
    assert [r.rule for r in report.findings if r.node == "pool"] == ["DS004"]
    if width == "whole":
        assert any(r.rule == "DS001" and "DS004 owns it" in r.reason for r in report.refusals)
    assert_models_equivalent(model, report.fixed_model, PPM_S0)
    reference = MS.strip_bins(64, 96, 4, width=width, reference=True)
    for shape in [(2, 4, 32, 48), (1, 4, 128, 30), (1, 4, 8, 7)]:  # W is free: any width works
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(*shape[:1], 4, *shape[2:]))


def test_one_dimensional_sequence_bins() -> None:
    s0 = {"x": (1, 4, 96)}
    model = MS.seq_bins(96, 3)
    report = check_model(model, export_shape=s0)
    (f,) = _ds004(report).values()
    assert f.details == {"modes": ["bins"], "bins": [3], "kernel": [32], "signs": f.details["signs"], "flattens": []}
    assert "Reshape to [N, C, 3, L/3]" in f.fix
    assert_models_equivalent(model, report.fixed_model, s0)
    reference = MS.seq_bins(96, 3, reference=True)
    for shape in [(2, 4, 48), (1, 4, 300)]:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=shape)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        # nn.AvgPool2d(8) then x8 upsampling: a fixed window (8x8 bins at 64x64), nothing adaptive
        pytest.param(lambda: MS.fixed_window_pool(8), "taken as a fixed nn.AvgPool2d window", id="fixed_window"),
        # the same resized back to f's size: a context branch looks like one adaptive pool, but 8
        # bins of 8 is no pyramid bin count (a resize alone needs windows >= twice the bins)
        pytest.param(lambda: MS.fixed_window_pool(8, resize="sizes"), "taken as a fixed nn.AvgPool2d window",
                     id="fixed_window_resized_to_size"),
        # a 4x4 window leaves 16x16 bins: ordinary downsampling even when resized back to a size
        pytest.param(lambda: MS.fixed_window_pool(4, resize="sizes"), "ordinary windowed pooling", id="many_bins"),
        pytest.param(M.ordinary_pooling, "ordinary windowed pooling", id="ordinary"),
        pytest.param(lambda: MS.ppm(64, 64, reference=True), None, id="correct_bins"),
    ],
)
def test_pools_that_are_not_frozen_bins(build, reason: str | None) -> None:  # type: ignore[no-untyped-def]
    model = build()
    report = check_model(model, export_shape={"x": (1, 4, 64, 64)})
    assert _ds004(report) == {}
    assert report.applied == []
    reasons = [r.reason for r in report.refusals if r.rule == "DS004"]
    if reason is not None:
        assert reasons and all(reason in r for r in reasons), reasons


# ------------------------------------------------------------------------------------- PyTorch

requires_torch = [pytest.mark.torch,
                  pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")]


@pytest.mark.parametrize("_", [pytest.param(0, marks=requires_torch)], ids=["torch"])
def test_torch_spp_classifier_dynamo(_: int) -> None:
    # adaptive_avg_pool2d(f, 4) -> flatten -> Linear: the dynamo exporter bakes a 16x16 window
    # and computes the flatten size as 4 * (H // 16) * (W // 16)
    import torch

    from dynashape.export import export_module
    from dynashape.pipeline.fix import fix_model

    net = MS.torch_modules()["spp"]().eval()
    exported = export_module(net, {"input": (1, 3, 64, 64)}, exporter="dynamo")
    result = fix_model(exported.model)
    (f,) = [g for g in result.report.findings if g.rule == "DS004"]
    assert f.fixable and len(f.details["flattens"]) == 1
    assert [g.rule for g in result.unfixed] == []
    assert result.other_proofs and all(p.status == "ok" for p in result.other_proofs)
    for shape in [(2, 3, 32, 48), (1, 3, 128, 64)]:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = next(iter(run_model(result.fixed, {"input": x}).values()))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("exporter", "int_kernels"),
    [pytest.param("dynamo", False, id="adaptive_avg_pool2d-dynamo", marks=requires_torch),
     pytest.param("legacy", True, id="avg_pool2d_int_kernel-legacy", marks=requires_torch)],
)
def test_torch_pyramid_pooling_fix_is_proven_and_matches_eager(exporter: str, int_kernels: bool) -> None:
    import torch

    from dynashape.export import export_module
    from dynashape.pipeline.fix import fix_model

    net = MS.torch_modules()["ppm"](bins=(1, 2, 4), int_kernels=int_kernels).eval()
    s0 = {"input": (1, 3, 64, 96)}
    exported = export_module(net, s0, exporter=exporter)
    result = fix_model(exported.model)  # the export shape comes from the model's metadata
    found = [f for f in result.report.findings if f.rule == "DS004"]
    assert len(found) == 2 and all(f.fixable for f in found)
    assert [f.rule for f in result.unfixed] == []
    assert result.export_proof is not None and result.export_proof.status == "ok"
    assert result.other_proofs and all(p.status == "ok" for p in result.other_proofs)
    for shape in [(2, 3, 32, 48), (1, 3, 128, 64)]:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = run_model(result.fixed, {"input": x})
        np.testing.assert_allclose(next(iter(got.values())), want, atol=1e-4, rtol=0)
