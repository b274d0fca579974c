"""DS002: Resize whose output size is a constant frozen at the export shape."""

from __future__ import annotations

import models as M
import models_resize as MR
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dynashape.backends.ort import RunError
from dynashape.findings import Finding
from dynashape.pipeline.check import check_model
from dynashape.rules.resize import ResizePlan, SizeTerm
from dynashape.testing import assert_models_equivalent

S0 = {"x": (1, 4, 64, 96)}
# includes sizes that are not multiples of 4: with sizes from Shape(skip) any size joins
OTHER_SHAPES = [(2, 4, 128, 40), (1, 4, 50, 70), (3, 4, 32, 32)]


def _plan(f: Finding) -> ResizePlan:
    """The rewrite's plan: typed, and not in the JSON."""
    assert isinstance(f.plan, ResizePlan) and "plan" not in f.to_json()["details"]
    return f.plan


def _ds002(report):  # type: ignore[no-untyped-def]
    return [f for f in report.findings if f.rule == "DS002"]


def _resize_inputs(model: onnx.ModelProto) -> list[str]:
    (node,) = [n for n in model.graph.node if n.op_type == "Resize"]
    return list(node.input)


@pytest.mark.parametrize("join", ["Add", "Concat"])
@pytest.mark.parametrize("sizes", ["legacy", "constant"])
@pytest.mark.parametrize("given", [True, False], ids=["export_shape", "estimated"])
def test_resize_frozen_to_the_skip_size(sizes: str, join: str, given: bool) -> None:
    model = M.resize_skip(64, 96, sizes=sizes, join=join)
    report = check_model(model, export_shape=S0 if given else None)
    # estimated: the frozen 32x48 votes through its join partner (skip, stride 2) for 64x96
    assert report.export_shape == S0
    (finding,) = _ds002(report)
    assert (finding.node, finding.op, finding.fixable, finding.severity) == ("up", "Resize", True, "error")
    # the legacy exporter keeps N, C from Shape; a constant initializer freezes the batch too
    frozen = {"2": 32, "3": 48} if sizes == "legacy" else {"0": 1, "2": 32, "3": 48}
    assert finding.baked_value == frozen
    assert (_plan(finding).kind, _plan(finding).ref) == ("shape", "skip")
    assert "the join with 'skip' fails" in finding.message
    assert report.applied == [f"up: sizes 1x8x32x48 -> Shape(skip) on axes {[int(a) for a in frozen]}"]

    fixed = report.fixed_model
    assert_models_equivalent(model, fixed, S0)
    reference = M.resize_skip(64, 96, sizes="shape", join=join)
    channels = 2
    for shape in OTHER_SHAPES:
        n, _, h, w = shape
        M.assert_same_outputs(fixed, reference, shape, expected_shape=(n, channels, h // 2, w // 2))
    with pytest.raises(RunError):
        M.run(model, OTHER_SHAPES[0])


@pytest.mark.parametrize("opset", [13, 18])
def test_resize_legacy_other_opsets(opset: int) -> None:
    model = M.resize_skip(64, 96, opset=opset)
    report = check_model(model, export_shape=S0)
    assert [(f.rule, f.node, f.fixable) for f in report.findings] == [("DS002", "up", True)]
    assert_models_equivalent(model, report.fixed_model, S0)
    reference = M.resize_skip(64, 96, sizes="shape", opset=opset)
    M.assert_same_outputs(report.fixed_model, reference, (2, 4, 50, 70), expected_shape=(2, 2, 25, 35))


def test_constant_sizes_with_batch_two_at_export() -> None:
    s0 = {"x": (2, 4, 64, 96)}
    model = M.resize_skip(64, 96, sizes="constant", batch0=2)
    report = check_model(model, export_shape=s0)
    (finding,) = _ds002(report)
    assert finding.baked_value == {"0": 2, "2": 32, "3": 48}
    assert_models_equivalent(model, report.fixed_model, s0)
    M.assert_same_outputs(report.fixed_model, M.resize_skip(64, 96, sizes="shape"), (3, 4, 40, 40))


def test_resize_to_the_graph_input_size() -> None:
    model = M.resize_to_input(64, 96)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds002(report)
    assert (finding.node, finding.fixable) == (M.Y, True)
    assert finding.baked_value == {"2": 64, "3": 96}
    assert (_plan(finding).kind, _plan(finding).ref) == ("shape", "x")
    assert_models_equivalent(model, report.fixed_model, S0)
    reference = M.resize_to_input(64, 96, reference=True)
    for shape in OTHER_SHAPES:
        M.assert_same_outputs(report.fixed_model, reference, shape, expected_shape=(shape[0], 3, *shape[2:]))
    # unfixed, the output stays 64x96 whatever the input
    assert M.run(model, (1, 4, 128, 40))[M.Y].shape == (1, 3, 64, 96)


@pytest.mark.parametrize("sizes", ["legacy", "constant"])
@pytest.mark.parametrize("factor", [2, 3])
def test_resize_by_an_integer_factor_becomes_scales(sizes: str, factor: int) -> None:
    model = M.resize_by_factor(64, 96, factor, sizes=sizes)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds002(report)
    assert finding.node == M.Y and finding.fixable
    assert _plan(finding).kind == "scales"
    assert _plan(finding).factor == factor
    fixed = report.fixed_model
    inputs = _resize_inputs(fixed)
    assert len(inputs) == 3, f"sizes must be gone: {inputs}"
    scales = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}[inputs[2]]
    np.testing.assert_array_equal(scales, [1, 1, factor, factor])
    assert_models_equivalent(model, fixed, S0)
    reference = M.resize_by_factor(64, 96, factor, reference=True)
    for shape in [(2, 4, 20, 30), (1, 4, 33, 17), (1, 4, 64, 96)]:
        n, _, h, w = shape
        M.assert_same_outputs(fixed, reference, shape, expected_shape=(n, 4, factor * h, factor * w))


def test_resize_without_evidence_of_the_export_shape_is_reported_not_rewritten() -> None:
    # A lone resize to a constant 128x128 says nothing about the export shape: the default
    # guess (512) would "prove" a 1/4 scale at 512 and be wrong at the true 64x64.
    model = M.resize_by_factor(64, 64)
    report = check_model(model)
    assert report.export_shape_source == "unknown"  # no silent default (issue 11)
    (finding,) = _ds002(report)
    assert finding.node == M.Y and not finding.fixable
    assert "the export shape is unknown" in finding.fix
    assert report.applied == []
    # given the export shape, the same model is fixed
    fixed = check_model(model, export_shape={"x": (1, 4, 64, 64)})
    assert [f.fixable for f in _ds002(fixed)] == [True]
    assert fixed.applied == ["y: sizes 1x4x128x128 -> scales [1.0, 1.0, 2.0, 2.0]"]


@pytest.mark.parametrize("export_shape", [S0, None])
def test_resize_with_scales_is_not_flagged(export_shape: dict | None) -> None:
    report = check_model(M.resize_with_scales(), export_shape=export_shape)
    assert _ds002(report) == []
    assert [r.reason for r in report.refusals if r.rule == "DS002"] == ["resizes by scales, not to a fixed size"]


@pytest.mark.parametrize("export_shape", [S0, None])
def test_resize_with_sizes_from_shape_is_not_flagged(export_shape: dict | None) -> None:
    model = M.resize_skip(64, 96, sizes="shape")
    report = check_model(model, export_shape=export_shape)
    assert _ds002(report) == []
    assert [(r.node, r.reason) for r in report.refusals if r.rule == "DS002"] == [
        ("up", "its output size follows the input size")
    ]
    assert report.applied == []


# ------------------------------------------------------------------------------------------------
# The forms third-party code writes (HAZARDS.md, "As third-party code writes them"): PyTorch
# modules exported as users export them, checked against eager PyTorch at other shapes.
# ------------------------------------------------------------------------------------------------

torch_only = pytest.mark.torch
# batch 2, odd and non-square sizes, not multiples of the patch (14) or of 4
EAGER_SHAPES = [(2, 3, 70, 98), (1, 3, 61, 87), (1, 3, 100, 43)]


def _modules() -> dict[str, type]:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    nn = torch.nn

    class _Seeded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)

    class OwnTimesTwo(_Seeded):
        """``F.interpolate(f, size=(int(f.shape[2]) * 2, int(f.shape[3]) * 2))``: k x its own input."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.conv(x)
            return F.interpolate(f, size=(int(f.shape[2]) * 2, int(f.shape[3]) * 2), mode="bilinear",
                                 align_corners=False)

    class OwnPlusFive(OwnTimesTwo):
        """``size=(h + 5, w + 5)``: no tensor's size, multiple or rounding explains it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.conv(x)
            return F.interpolate(f, size=(int(f.shape[2]) + 5, int(f.shape[3]) + 5), mode="bilinear",
                                 align_corners=False)

    class PatchDepthHead(_Seeded):
        """Depth Anything (transformers ``DepthAnythingDepthEstimationHead``): ``patch_height = height
        // patch_size`` and ``F.interpolate(f, (int(patch_height * patch_size), ...))``."""

        patch = 14

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, self.patch, stride=self.patch)
            self.conv = nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            patch_height, patch_width = x.shape[2] // self.patch, x.shape[3] // self.patch
            # the neck upsamples the grid 4x: 14 / 4 is no integer scale of the head's input
            f = F.interpolate(self.embed(x), scale_factor=4, mode="bilinear", align_corners=True)
            f = self.conv(f)
            return F.interpolate(f, (int(patch_height * self.patch), int(patch_width * self.patch)),
                                 mode="bilinear", align_corners=True)

    class RoundDownNoGrid(_Seeded):
        """``(H // 7) * 7`` with nothing in the graph of size ``H // 7``: at 64 it is 63, which
        ``(H // 3) * 3``, ``(H // 9) * 9`` and ``(H // 21) * 21`` give too."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[2], x.shape[3]
            return F.interpolate(self.conv(x), (int(h // 7 * 7), int(w // 7 * 7)), mode="bilinear")

    class SlicedSkip(_Seeded):
        """An FPN step joined through a channel slice: ``up[:, :4] + skip`` (or ``torch.cat``). A
        second tensor, ``side`` (3x3 stride 2: ceil(H / 2)), has the skip's (floor(H / 2)) export
        size and is nearer to the resize: only the join says which one the size is."""

        def __init__(self, cat: bool = False) -> None:
            super().__init__()
            self.cat = cat
            self.enc = nn.Conv2d(3, 4, 3, padding=1)
            self.side = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.head = nn.Conv2d(8 if cat else 4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skip = F.max_pool2d(torch.relu(self.enc(x)), 2)
            deep = self.down(torch.relu(self.side(x)))
            up = F.interpolate(deep, size=(int(skip.shape[2]), int(skip.shape[3])), mode="bilinear",
                               align_corners=False)
            y = torch.cat([up[:, :4], skip], dim=1) if self.cat else up[:, :4] + skip
            return self.head(y)

    return {c.__name__: c for c in (OwnTimesTwo, OwnPlusFive, PatchDepthHead, RoundDownNoGrid, SlicedSkip)}


def _export(module: object, shape: tuple[int, ...]) -> onnx.ModelProto:
    """As users export: legacy exporter, opset 17, dynamic batch, H and W (no S0 in the metadata)."""
    import io

    import torch

    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(*shape),), buf, dynamo=False, opset_version=17,  # type: ignore[arg-type]
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}})
    return onnx.load_from_string(buf.getvalue())


def _assert_matches_eager(model: onnx.ModelProto, module: object, shapes: list[tuple[int, ...]]) -> None:
    import torch

    from dynashape.backends.ort import run_model

    for shape in shapes:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()  # type: ignore[operator]
        got = run_model(model, {"x": x})["y"]
        assert got.shape == want.shape, f"at {shape}: {got.shape}, eager {want.shape}"
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"at {shape}")


@torch_only
def test_torch_resize_to_k_times_its_own_input_becomes_scales() -> None:
    net = _modules()["OwnTimesTwo"]().eval()
    s0 = (1, 3, 64, 96)
    model = _export(net, s0)
    report = check_model(model, export_shape={"x": s0})
    (finding,) = _ds002(report)
    assert finding.fixable and finding.baked_value == {"2": 128, "3": 192}
    assert (_plan(finding).kind, _plan(finding).factor, _plan(finding).scaled_axes) == ("scales", 2.0, (2, 3))
    assert_models_equivalent(model, report.fixed_model, {"x": s0})
    _assert_matches_eager(report.fixed_model, net, EAGER_SHAPES)
    with pytest.raises(AssertionError, match="eager"):  # as exported: 128x192 at every size
        _assert_matches_eager(model, net, EAGER_SHAPES[:1])


@torch_only
def test_torch_resize_to_k_times_its_own_input_without_the_export_shape_asks_for_it() -> None:
    # a lone resize to twice its own input pins nothing: 128x192 is 2 x 64x96 or 4 x 32x48 alike.
    # check must say it cannot rewrite without S0 and ask for it, never guess a factor
    net = _modules()["OwnTimesTwo"]().eval()
    model = _export(net, (1, 3, 64, 96))
    report = check_model(model)
    assert report.export_shape_source == "unknown"
    (finding,) = _ds002(report)
    assert not finding.fixable and "export shape" in finding.fix
    assert report.applied == []
    assert any("--export-shape" in note for note in [report.export_shape_note, *report.notes])


@torch_only
def test_torch_resize_to_an_unexplained_size_is_reported_not_rewritten() -> None:
    net = _modules()["OwnPlusFive"]().eval()
    s0 = (1, 3, 64, 96)
    report = check_model(_export(net, s0), export_shape={"x": s0})
    (finding,) = _ds002(report)
    assert not finding.fixable and finding.baked_value == {"2": 69, "3": 101}
    assert "matches no tensor's export-time size, no integer multiple" in finding.fix
    assert report.applied == []


@torch_only
@pytest.mark.parametrize("s0", [(1, 3, 64, 96), (1, 3, 56, 84)], ids=["off-patch", "multiple-of-patch"])
def test_torch_vit_patch_rounding_is_rebuilt_from_shape(s0: tuple[int, ...]) -> None:
    # at 64x96 the size is 56x84 and only (H // 14) * 14 explains it with the patch grid; at
    # 56x84 it equals the input size too, and the patch embedding says which one the source means
    net = _modules()["PatchDepthHead"]().eval()
    model = _export(net, s0)
    report = check_model(model, export_shape={"x": s0})
    (finding,) = _ds002(report)
    assert finding.fixable
    plan = _plan(finding)
    assert plan.kind == "arith"
    assert plan.terms == tuple(SizeTerm(a, "x", a, 14, 14, f"(x.shape[{a}] // 14) * 14") for a in (2, 3))
    assert report.applied == [f"{finding.node}: sizes 1x4x56x84 -> (x.shape[2] // 14) * 14, (x.shape[3] // 14) * 14"]
    assert_models_equivalent(model, report.fixed_model, {"x": s0})
    _assert_matches_eager(report.fixed_model, net, EAGER_SHAPES)
    with pytest.raises(AssertionError, match="eager"):
        _assert_matches_eager(model, net, EAGER_SHAPES[:1])


@torch_only
def test_torch_rounding_without_a_grid_that_corroborates_it_is_ambiguous() -> None:
    net = _modules()["RoundDownNoGrid"]().eval()
    s0 = (1, 3, 64, 64)
    report = check_model(_export(net, s0), export_shape={"x": s0})
    (finding,) = _ds002(report)
    assert not finding.fixable and finding.baked_value == {"2": 63, "3": 63}
    assert "ambiguous" in finding.fix and "(x.shape[2] // 7) * 7" in finding.fix
    assert report.applied == []


@torch_only
@pytest.mark.parametrize("cat", [False, True], ids=["add", "concat"])
def test_torch_join_through_a_channel_slice_names_the_skip(cat: bool) -> None:
    net = _modules()["SlicedSkip"](cat).eval()
    s0 = (1, 3, 64, 96)
    model = _export(net, s0)
    skip = next(n.output[0] for n in model.graph.node if n.op_type == "MaxPool")
    report = check_model(model, export_shape={"x": s0})
    (finding,) = _ds002(report)
    assert finding.fixable and (_plan(finding).kind, _plan(finding).ref) == ("shape", skip)
    assert f"the join with {skip!r} fails" in finding.message
    assert_models_equivalent(model, report.fixed_model, {"x": s0})
    # odd sizes: the skip is floor(H / 2), the nearer tensor of the same export size ceil(H / 2)
    _assert_matches_eager(report.fixed_model, net, EAGER_SHAPES)
    with pytest.raises(RunError):
        M.run(model, EAGER_SHAPES[0])


@pytest.mark.parametrize("slice_axis", [1, 2], ids=["channel-slice", "spatial-crop"])
def test_join_partners_through_slices_that_keep_the_frozen_axes(slice_axis: int) -> None:
    import onnx_ir as ir

    from dynashape.analysis.context import join_partners

    model = ir.serde.deserialize_model(MR.sliced_join(64, 96, slice_axis=slice_axis))
    up = next(n for n in model.graph if n.name == "up").outputs[0]
    assert join_partners(up) == []  # the default does not look through slices
    assert [p.name for p in join_partners(up, through_slices=True)] == ["skip"]
    kept = [p.name for p in join_partners(up, through_slices=True, keep_axes=[2, 3])]
    assert kept == (["skip"] if slice_axis == 1 else [])


def test_channel_sliced_join_is_fixed_from_the_skip() -> None:
    model = MR.sliced_join(64, 96)
    report = check_model(model, export_shape=S0)
    (finding,) = _ds002(report)
    assert (_plan(finding).kind, _plan(finding).ref) == ("shape", "skip")
    assert "the join with 'skip' fails" in finding.message
    assert_models_equivalent(model, report.fixed_model, S0)
    for shape in OTHER_SHAPES:
        out = M.run(report.fixed_model, shape)[M.Y]
        assert out.shape == (shape[0], 4, shape[2] // 2, shape[3] // 2)


@pytest.mark.parametrize("s0", [(1, 4, 64, 96), (1, 4, 56, 84)])
def test_patch_rounding_onnx(s0: tuple[int, ...]) -> None:
    model = MR.patch_head(*s0[2:])
    report = check_model(model, export_shape={"x": s0})
    (finding,) = _ds002(report)
    assert _plan(finding).terms[0] == SizeTerm(2, "x", 2, 14, 14, "(x.shape[2] // 14) * 14")
    assert_models_equivalent(model, report.fixed_model, {"x": s0})
    reference = MR.patch_head(*s0[2:], reference=True)
    for shape in [(2, 4, 70, 98), (1, 4, 61, 87), (1, 4, 100, 43)]:
        M.assert_same_outputs(report.fixed_model, reference, shape,
                              expected_shape=(shape[0], 8, shape[2] // 14 * 14, shape[3] // 14 * 14))
