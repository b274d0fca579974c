"""DS005: Reshape whose constant target holds export-time sizes or their products."""

from __future__ import annotations

import models as M
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dynashape.backends.ort import RunError
from dynashape.findings import Finding
from dynashape.pipeline.check import check_model
from dynashape.rules.reshape import ReshapePlan
from dynashape.testing import assert_models_equivalent

S0 = {"x": (1, 8, 64, 96)}


def _plan(f: Finding) -> ReshapePlan:
    """The rewrite's plan (typed, out of the JSON)."""
    assert isinstance(f.plan, ReshapePlan)
    return f.plan


def _ds005(report):  # type: ignore[no-untyped-def]
    return [f for f in report.findings if f.rule == "DS005"]


def _target(model: onnx.ModelProto, node_name: str) -> np.ndarray:
    (node,) = [n for n in model.graph.node if n.name == node_name]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits[node.input[1]]


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_view_b_c_hw_with_ints(opset: int) -> None:
    # x.view(b, c, h * w) with b, h, w Python ints at 1x8x64x96: target [1, 8, 6144]
    model = M.reshape_baked(8, 64, 96, opset=opset)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds005(report)
    assert (finding.node, finding.op, finding.fixable) == ("flat", "Reshape", True)
    # entry 0 copies the batch, entry 2 is H*W; the channels (8) are a fixed dim in place
    assert finding.baked_value == {"0": 1, "2": 6144}
    assert (_plan(finding).kind, _plan(finding).target) == ("const", (0, 8, -1))
    assert "plan" not in finding.to_json()["details"] and finding.details["target_s0"] == [1, 8, 6144]
    assert "at input 2x8x128x192 it fails" in finding.message
    assert report.applied == ["flat: target [1, 8, 6144] -> [0, 8, -1]"]
    np.testing.assert_array_equal(_target(report.fixed_model, "flat"), [0, 8, -1])
    assert [f.rule for f in report.findings] == ["DS005"]  # no DS003: the fixed model is valid everywhere

    assert_models_equivalent(model, report.fixed_model, S0)
    reference = M.reshape_reference(8, target=(0, 0, -1), opset=opset)
    for shape in [(2, 8, 32, 48), (3, 8, 17, 5), (1, 8, 96, 64)]:
        n, c, h, w = shape
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(n, c, h * w))
    with pytest.raises(RunError):
        M.run(model, (2, 8, 64, 96))


def test_view_b_c_hw_without_the_export_shape_is_still_reported() -> None:
    # nothing but the reshape hints at 64x96: the hazard is found at the guessed export shape
    report = check_model(M.reshape_baked(8, 64, 96))
    assert [f.node for f in _ds005(report)] == ["flat"]


def test_view_bc_hw_with_ints_builds_the_target_from_shape() -> None:
    # x.view(b * c, h * w) at batch 1: [8, 6144]; both entries are products of input dims
    model = M.reshape_bc_hw(8, 64, 96)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds005(report)
    assert finding.fixable and _plan(finding).kind == "shape"
    assert _plan(finding).products == ((0, (0, 1)), (1, (2, 3)))
    ops = [n.op_type for n in report.fixed_model.graph.node]
    assert "Shape" in ops and "ReduceProd" in ops
    assert_models_equivalent(model, report.fixed_model, S0)
    g = M.GraphBuilder(channels=8)  # reference: Flatten(axis=2) is exactly [N*C, H*W]
    g.op("Softmax", [g.op("Flatten", [M.X], "flat", axis=2)], M.Y, axis=1)
    reference = g.model([M.Y], channels=8)
    for shape in [(2, 8, 32, 48), (3, 8, 7, 9)]:
        n, c, h, w = shape
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(n * c, h * w))


@pytest.mark.parametrize("export_shape", [{"x": (1, 4, 64, 96)}, None])
def test_view_1_minus_1_silently_mixes_the_batch(export_shape: dict | None) -> None:
    model = M.reshape_silent()
    # the silent hazard: at batch 3 the original runs and returns one row of 3 samples
    assert M.run(model, (3, 4, 8, 8))[M.Y].shape == (1, 3 * 4 * 8 * 8)
    report = check_model(model, export_shape=export_shape)
    (finding,) = _ds005(report)
    assert (finding.node, finding.fixable) == (M.Y, True)
    assert "silently mixes axes" in finding.message
    assert (_plan(finding).kind, _plan(finding).target) == ("const", (0, -1))
    np.testing.assert_array_equal(_target(report.fixed_model, M.Y), [0, -1])
    assert_models_equivalent(model, report.fixed_model, {"x": (1, 4, 64, 96)})
    reference = M.flatten()
    for shape in [(3, 4, 8, 8), (2, 4, 33, 17)]:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 4 * shape[2] * shape[3]))


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: M.reshape_reference(4, target=(0, 0, -1)), id="copy_and_infer"),
        pytest.param(lambda: M.reshape_reference(4, target=(0, 4, -1)), id="fixed_channels"),
        pytest.param(lambda: M.reshape_reference(4, target=(-1, 4), softmax_axis=None), id="minus1_first"),
        pytest.param(M.reshape_from_shape, id="view_size0_c_minus1_from_Shape"),
        pytest.param(M.flatten, id="flatten"),
    ],
)
@pytest.mark.parametrize("export_shape", [{"x": (1, 4, 64, 96)}, None])
def test_reshapes_that_are_fine(build, export_shape: dict | None) -> None:  # type: ignore[no-untyped-def]
    model = build()
    report = check_model(model, export_shape=export_shape)
    assert report.findings == []
    assert report.applied == []
    reasons = [r.reason for r in report.refusals if r.rule == "DS005"]
    assert all("stays valid" in r or "does not change" in r or "holds no constant" in r for r in reasons), reasons


# ------------------------------------------------------------------ partly computed targets (Swin)


def test_batch_frozen_as_int_regroups_and_is_fixed() -> None:
    # window_reverse with B = int(...): [1, H, W, -1] with H, W from Shape; at batch 2 the -1
    # takes 2C and the final reshape hides it (right shape, wrong values)
    model = M.reshape_batch_int_regroup()
    x2 = M.run(M.identity(), (2, 4, 8, 8))[M.Y]
    assert M.run(model, (2, 4, 8, 8))[M.Y].shape == x2.shape
    assert not np.allclose(M.run(model, (2, 4, 8, 8))[M.Y], x2)
    report = check_model(model, export_shape={"x": (1, 4, 8, 8)})
    (finding,) = _ds005(report)
    assert (finding.node, finding.fixable) == ("back", True)
    assert "silently mixes axes" in finding.message and "[64]->[1,8,8]" in finding.message
    # the frozen 1 becomes -1; the -1, which stood for the static channels, becomes 4
    plan = _plan(finding)
    assert (plan.kind, plan.entries, plan.live) == ("regroup", ((3, 4), (0, -1)), (1, 2))
    assert_models_equivalent(model, report.fixed_model, {"x": (1, 4, 8, 8)})
    for shape in [(2, 4, 8, 8), (3, 4, 6, 10), (1, 4, 16, 8)]:
        M.assert_same_outputs(report.fixed_model, M.identity(), shape)


def test_a_regrouping_behind_a_failure_is_reported_not_rewritten() -> None:
    # at the second probe shape the graph fails before the reshape (a [64, 1] table added to the
    # tokens), so the reshape's shapes there are what inference guessed: found, not rewritten
    report = check_model(M.reshape_batch_int_after_failing_join(), export_shape={"x": (1, 4, 8, 8)})
    (finding,) = _ds005(report)
    assert (finding.node, finding.fixable) == ("back", False)
    assert "[64]->[1,8,8]" in finding.message
    assert "fails before this node (Add 'masked')" in finding.fix
    assert report.applied == []


def test_a_fix_uncovers_the_next_frozen_batch() -> None:
    # [1, H*W, -1] then [1, H, W, -1]: the second looks consistent while the first mixes the
    # batch into the channels, and is found in the next round, on the rewritten graph
    model = M.reshape_batch_int_chain()
    report = check_model(model, export_shape={"x": (1, 4, 8, 8)})
    assert [(f.node, f.fixable) for f in _ds005(report)] == [("rows", True), ("grid", True)]
    assert report.findings == _ds005(report)
    for shape in [(2, 4, 8, 8), (3, 4, 6, 10)]:
        M.assert_same_outputs(report.fixed_model, M.identity(), shape)


def test_window_partition_with_the_batch_frozen_copies_only_the_batch() -> None:
    # at a 7x7 export the window size 7 equals H and W: only the batch entry is a copy (keeping
    # the 7s as copies breaks the reshape at the second shape); H/7 and W/7 stay computed
    model = M.window_partition(batch="int")
    report = check_model(model, export_shape={"x": (1, 4, 7, 7)})
    (finding,) = _ds005(report)
    assert (finding.node, finding.fixable) == ("part", True)
    assert finding.baked_value == {"0": 1}
    plan = _plan(finding)
    assert (plan.kind, plan.copies, plan.products, plan.live) == ("shape", (0,), (), (1, 3))
    reference = M.window_partition(batch="shape")
    for shape in [(2, 4, 14, 21), (3, 4, 7, 28)]:
        M.assert_same_outputs(report.fixed_model, reference, shape)


@pytest.mark.parametrize("export_hw", [7, 14])
def test_windows_of_one_window_are_fine(export_hw: int) -> None:
    # [-1, 49, C] of (N, H/7, W/7, 7, 7, C) exported at one 7x7 window: 49 = 7·7, not 1·1·7·7
    report = check_model(M.window_partition(batch="shape"), export_shape={"x": (1, 4, export_hw, export_hw)})
    assert _ds005(report) == [] and report.applied == []
    # what is left is true: windows need H and W to be multiples of 7
    assert {(f.rule, f.details["axis"], f.baked_value["multiple"]) for f in report.findings} == {
        ("DS003", 2, 7), ("DS003", 3, 7)}
    reasons = {r.node: r.reason for r in report.refusals if r.rule == "DS005"}
    assert "stays valid" in reasons["windows"]


def test_window_count_taken_from_the_export_size_is_reported() -> None:
    # [-1, nW0, 16, C] with nW0 = 4 groups of 16 pixels in an 8x8 image, added to a mask made
    # at that size: at 16x16 it runs and mixes images' groups (silent); not rewritable
    model = M.window_count_int()
    assert M.run(model, (1, 6, 16, 16))[M.Y].shape == (1, 16, 16, 6)
    report = check_model(model, export_shape={"x": (1, 6, 8, 8)})
    (finding,) = _ds005(report)
    assert (finding.node, finding.fixable) == ("per_image", False)
    assert finding.baked_value == {"1": 4}
    assert "export-time size per batch item of input axis 0" in finding.message
    assert "silently mixes axes" in finding.message
    assert report.applied == []


def test_a_constant_group_count_that_follows_only_the_batch_is_fine() -> None:
    # view(-1, H, W) then view(-1, C, H, W): the (N·C) axis grows with the batch only, C is a
    # constant of the model
    report = check_model(M.channel_groups(), export_shape={"x": (1, 4, 8, 8)})
    assert report.findings == []


@pytest.mark.parametrize(("x0", "x1", "t0", "t1", "moves"), [
    # window_reverse with the batch frozen: [64] -> [1, 8, 8] no longer holds as [512] -> [1, 16, 16]
    ((64, 7, 7, 32), (512, 7, 7, 32), [1, 8, 8, 7, 7, -1], [1, 16, 16, 7, 7, -1], True),
    ((1, 4, 8, 8), (2, 4, 16, 16), [1, -1], [1, -1], True),  # view(1, -1)
    # size-1 axes may group either way: 49 = 7·7 holds at both shapes
    ((1, 1, 1, 7, 7, 96), (1, 2, 2, 7, 7, 96), [-1, 49, 96], [-1, 49, 96], False),
    # a split inside one block ([64] -> [-1, 64]) keeps the blocks: the spatial-extent check's job
    ((64, 2, 49, 49), (512, 2, 49, 49), [-1, 64, 2, 49, 49], [-1, 64, 2, 49, 49], False),
    ((1, 4, 8, 8), (2, 4, 16, 16), [0, 4, -1], [0, 4, -1], False),
])
def test_regroups(x0: tuple[int, ...], x1: tuple[int, ...], t0: list[int], t1: list[int], moves: bool) -> None:
    from dynashape.rules.reshape import _regroups

    assert _regroups(x0, x1, t0, t1, allowzero=False) is moves


@pytest.mark.torch
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torch_window_reverse_with_an_int_batch(exporter: str) -> None:
    # The published Swin detection code: B = int(windows.shape[0] / (H * W / ws / ws)). Both
    # exporters freeze it as 1 next to sizes they compute; at batch 2 the batch lands in the
    # channels. After the fix the model matches eager at other batches and sizes.
    torch = pytest.importorskip("torch")
    from torch import nn

    from dynashape.backends.ort import run_model
    from dynashape.export import export_module

    class WindowReverse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Conv2d(3, 8, 4, 4)
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.embed(x).permute(0, 2, 3, 1)
            B, H, W, C = y.shape
            ws = 4
            win = y.reshape(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
            win = self.proj(win)
            b = int(win.shape[0] / (H * W / ws / ws))
            out = win.view(b, H // ws, W // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, H, W, -1)
            return out.permute(0, 3, 1, 2)

    net = WindowReverse().eval()
    model = export_module(net, {"input": (1, 3, 32, 32)}, exporter=exporter).model
    report = check_model(model, export_shape={"input": (1, 3, 32, 32)})
    assert _ds005(report) and all(f.fixable for f in _ds005(report)), report.findings
    for shape in [(2, 3, 32, 48), (3, 3, 64, 32)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        (got,) = run_model(report.fixed_model, {"input": x}).values()
        assert got.shape == want.shape, (shape, got.shape)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torch_window_count_from_np_ceil_is_reported(exporter: str) -> None:
    # Swin's BasicLayer: the shifted-window mask is built with Python ints (np.ceil of the size)
    # and attention is viewed as [B_ // nW, nW, N, N]. The exported count nW is the export-time
    # number of windows; at a larger image the graph runs and adds the mask to the wrong windows.
    torch = pytest.importorskip("torch")
    from torch import nn

    from dynashape.backends.ort import run_model
    from dynashape.export import export_module

    class WindowMask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Conv2d(3, 8, 4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.embed(x).permute(0, 2, 3, 1)
            B, H, W, C = y.shape
            ws = 4
            n_windows = int(np.ceil(H / ws)) * int(np.ceil(W / ws))
            mask = torch.zeros(n_windows, ws * ws, ws * ws)
            mask[0, : ws * ws // 2, ws * ws // 2:] = -100.0  # the first window only (a border)
            win = y.reshape(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
            attn = win @ win.transpose(1, 2)
            attn = attn.view(-1, mask.shape[0], ws * ws, ws * ws) + mask.unsqueeze(0)
            attn = attn.view(-1, ws * ws, ws * ws).softmax(-1)
            return (attn @ win).reshape(B, -1, C).mean(1)

    net = WindowMask().eval()
    model = export_module(net, {"input": (1, 3, 32, 32)}, exporter=exporter).model
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (got,) = run_model(model, {"input": x}).values()
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and not np.allclose(got, want, atol=1e-4)  # silently wrong
    report = check_model(model, export_shape={"input": (1, 3, 32, 32)})
    (finding,) = [f for f in _ds005(report) if not f.fixable]
    assert finding.baked_value == {"1": 4}
    assert "export-time size per batch item" in finding.message


# ------------------------------------------------------------------ as third-party code writes it


def _torch_models():  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    import models_reshape

    return models_reshape


TORCH_S0 = {"x": (1, 3, 64, 64)}


def _matches_eager(model: onnx.ModelProto, net, shape: tuple[int, ...]) -> bool:  # type: ignore[no-untyped-def]
    try:
        _torch_models().assert_matches_eager(model, net, shape)
    except (AssertionError, RunError):
        return False
    return True


@pytest.mark.torch
@pytest.mark.parametrize(("module", "fixed_entries", "map_s0", "shapes"), [
    # DANet / MAnet position attention with int sizes: view(b, c, h*w) ... view(b, c, h, w)
    pytest.param("attention", {"0": 0, "2": 2, "3": 3}, [1, 8, 32, 32],
                 [(2, 3, 64, 64), (1, 3, 48, 80), (3, 3, 32, 96)], id="view_b_c_h_w"),
    # SETR: reshape(b, c, side, side) with side = int(math.sqrt(n)) (square inputs, in eager too)
    pytest.param("sqrt", {"2": 2, "3": 3}, [1, 16, 8, 8], [(2, 3, 64, 64), (3, 3, 96, 96)], id="sqrt_side"),
    # Swin v1: view(B, H, W, C) with H, W kept as ints: the map's axes 2, 3 at entries 1, 2
    pytest.param("hw", {"1": 2, "2": 3}, [1, 16, 8, 8], [(2, 3, 64, 64), (1, 3, 48, 80), (3, 3, 32, 96)],
                 id="view_B_H_W_C"),
])
def test_torch_view_back_to_an_earlier_tensors_shape(module: str, fixed_entries: dict, map_s0: list,
                                                     shapes: list) -> None:
    # the target holds the export-time sizes of the map the tokens were flattened from, not of
    # the reshape's input: the entries are gathered from Shape of that map
    MR = _torch_models()
    net = {"attention": lambda: MR.PositionAttention(),
           "sqrt": lambda: MR.TokensToMap(spelling="sqrt"),
           "hw": lambda: MR.TokensToMap(spelling="hw")}[module]().eval()
    model = MR.export(net, TORCH_S0["x"])
    assert not any(_matches_eager(model, net, shape) for shape in shapes[1:])
    report = check_model(model, export_shape=TORCH_S0)
    findings = _ds005(report)
    assert findings and all(f.fixable for f in findings), findings
    back = findings[-1]
    assert _plan(back).kind == "earlier"
    assert {str(i): a for i, a in _plan(back).axes} == fixed_entries
    assert f"({'x'.join(map(str, map_s0))})" in back.message
    assert "earlier tensor" in back.message
    assert not [f for f in report.findings if f.severity == "error" and f.rule != "DS005"]
    assert_models_equivalent(model, report.fixed_model, TORCH_S0)
    for shape in shapes:
        MR.assert_matches_eager(report.fixed_model, net, shape)


@pytest.mark.torch
@pytest.mark.parametrize("module", ["traced_sizes", "fixed_grid"])
def test_torch_views_back_that_are_right_are_left_alone(module: str) -> None:
    # traced_sizes: the same attention with b, c, h, w = x.shape: every target is computed.
    # fixed_grid: view(b, c, 4, 4) of a learned 4x4 grid while the feature map is 4x4 at export
    # too: the literal 4s are the grid's, and rebuilding them from the map would break the model
    MR = _torch_models()
    net = MR.PositionAttention(ints=False) if module == "traced_sizes" else MR.GridAttention()
    s0 = {"x": (1, 3, 64, 64) if module == "traced_sizes" else (1, 3, 32, 32)}
    model = MR.export(net, s0["x"])
    report = check_model(model, export_shape=s0)
    assert _ds005(report) == [] and report.applied == []
    for shape in [(2, 3, 64, 64), (1, 3, 48, 80)]:
        MR.assert_matches_eager(report.fixed_model, net, shape)


@pytest.mark.torch
def test_torch_view_back_without_the_export_shape() -> None:
    MR = _torch_models()
    net = MR.PositionAttention().eval()
    report = check_model(MR.export(net, TORCH_S0["x"]))
    assert _ds005(report) and all(f.fixable for f in _ds005(report))
    MR.assert_matches_eager(report.fixed_model, net, (2, 3, 48, 80))


@pytest.mark.torch
def test_torch_group_norm_on_a_map_as_wide_as_its_groups_is_fine() -> None:
    # GroupNorm(32, 64) -> Reshape [0, 32, -1]; at 1x3x64x64 the map is 32x32: the 32 splits the
    # channels (32 groups of 2), not a width; the model is right at every size
    MR = _torch_models()
    net = MR.GroupNormBlock(c=64, groups=32).eval()
    model = MR.export(net, TORCH_S0["x"])
    report = check_model(model, export_shape=TORCH_S0)
    assert report.findings == [] and report.applied == []
    reasons = sorted(r.reason for r in report.refusals if r.rule == "DS005")
    assert reasons == ["target [0, 32, -1] stays valid when the input changes (1x64x32x32 -> 2x64x64x64)",
                       # the Reshape back to Shape(x)
                       "target [1, 64, 32, 32] holds no constant size: each entry is 0, -1 or computed from shapes"]
    for shape in [(2, 3, 64, 64), (1, 3, 48, 80), (3, 3, 96, 32)]:
        MR.assert_matches_eager(model, net, shape)


def test_a_window_count_that_splits_the_windows_axis_is_still_reported() -> None:
    # the positive beside the GroupNorm negative: [-1, nW0, 16, C] splits the axis of the groups
    # (which follows the image); the GroupNorm's [0, G, -1] splits the channels
    report = check_model(M.window_count_int(), export_shape={"x": (1, 6, 8, 8)})
    (finding,) = _ds005(report)
    assert finding.baked_value == {"1": 4} and not finding.fixable


@pytest.mark.parametrize(("dims", "resolved", "entry", "axis", "within"), [
    ((1, 64, 32, 32), [1, 32, 2048], 1, 3, False),  # GroupNorm(32, 64): the 32 splits the channels
    ((1, 64, 32, 32), [1, 32, 2048], 1, 1, True),
    ((64, 2, 49, 49), [1, 64, 2, 49, 49], 1, 0, True),  # attn.view(-1, nW, nh, N, N): splits the windows
    ((4, 16, 128), [1, 4, 4, 128], 1, 0, False),  # HF Swin window_reverse: [-1, ws, ws, C] splits the tokens
    ((4, 16, 128), [1, 4, 4, 128], 1, 1, True),
])
def test_within(dims: tuple[int, ...], resolved: list[int], entry: int, axis: int, within: bool) -> None:
    from dynashape.rules.reshape import _within

    assert _within(dims, resolved, entry, axis) is within


@pytest.mark.torch
def test_torch_computed_targets_are_left_alone() -> None:
    # Mask2Former's decoder: nn.MultiheadAttention views its output as (tgt_len * bsz, embed_dim),
    # both computed from Shape, and the hand-written step as (q_len * bsz, self.embed_dim): at
    # batch 1 the regrouping looks like a frozen batch, but the computed entry follows the batch.
    # Rewriting it to [10, -1] broke batch 2; it must stay as exported.
    MR = _torch_models()
    net = MR.QueryDecoder().eval()
    model = MR.export(net, TORCH_S0["x"])
    report = check_model(model, export_shape=TORCH_S0)
    rewritten = {f.node for f in _ds005(report)}
    computed = [n for n in model.graph.node if n.op_type == "Reshape" and n.input[1] not in
                {t.name for t in model.graph.initializer} and n.name not in rewritten]
    fixed = {n.name: list(n.input) for n in report.fixed_model.graph.node}
    assert computed and all(fixed[n.name] == list(n.input) for n in computed)
    # what is rewritten are the key/value views with the memory length frozen (entry 0), their
    # computed entries kept
    for f in _ds005(report):
        assert f.fixable and _plan(f).copies == (0,) and _plan(f).live == (1, 2)
    assert_models_equivalent(model, report.fixed_model, TORCH_S0)
    for shape in [(2, 3, 64, 64), (3, 3, 64, 64), (2, 3, 48, 80)]:
        MR.assert_matches_eager(report.fixed_model, net, shape)


@pytest.mark.torch
def test_torch_a_frozen_entry_beside_a_computed_one_is_rebuilt() -> None:
    # view(x.shape[0] * x.shape[1], int(h) * int(w)): the computed entry is kept (gathered from
    # the old target), the frozen product is rebuilt from Shape
    MR = _torch_models()
    net = MR.RowSoftmax().eval()
    model = MR.export(net, TORCH_S0["x"])
    assert not _matches_eager(model, net, (3, 3, 96, 96))
    report = check_model(model, export_shape=TORCH_S0)
    (finding,) = _ds005(report)
    plan = _plan(finding)
    assert (plan.kind, plan.copies, plan.products, plan.live) == ("shape", (), ((1, (2, 3)),), (0,))
    assert_models_equivalent(model, report.fixed_model, TORCH_S0)
    for shape in [(2, 3, 64, 64), (3, 3, 96, 96), (2, 3, 48, 80)]:
        MR.assert_matches_eager(report.fixed_model, net, shape)


@pytest.mark.torch
def test_torch_clipseg_decoder_view_is_rebuilt_from_the_patch_grid() -> None:
    # transformers' CLIPSeg: view(batch, reduce_dim, size, size) with size = int(math.sqrt(n));
    # refused before ("match no input dim"), so every size but the export size failed
    pytest.importorskip("transformers")
    MR = _torch_models()
    net = MR.ClipSegFromConfig().eval()
    s0 = {"x": (1, 3, 64, 64)}
    model = MR.export(net, s0["x"])
    assert not _matches_eager(model, net, (1, 3, 96, 96))
    report = check_model(model, export_shape=s0)
    (finding,) = _ds005(report)
    assert finding.fixable and _plan(finding).kind == "earlier"
    assert sorted(i for i, _ in _plan(finding).axes) == [2, 3]
    assert_models_equivalent(model, report.fixed_model, s0)
    for shape in [(2, 3, 64, 64), (1, 3, 96, 96), (2, 3, 128, 128)]:
        MR.assert_matches_eager(report.fixed_model, net, shape)
