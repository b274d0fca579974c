"""differential.py: baked values found by exporting at two shapes; the first divergent node."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import models_reports as MR  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dynashape.analysis.second_shapes import ShapeClasses, plan_class_shapes, shape_classes  # noqa: E402
from dynashape.backends.ort import run_model  # noqa: E402
from dynashape.backends.torch import TorchRunner  # noqa: E402
from dynashape.cli import torch as cli_torch  # noqa: E402
from dynashape.errors import DynashapeError  # noqa: E402
from dynashape.export import export_module, load_module  # noqa: E402
from dynashape.findings import AxisLattice  # noqa: E402
from dynashape.pipeline.differential import (  # noqa: E402
    choose_s1,
    differential_export,
    first_divergent_node,
    module_path,
)
from dynashape.testing import max_abs_error, random_feeds  # noqa: E402

S0 = {"input": (1, 3, 64, 64)}
THIS = Path(__file__).name


def line_of(text: str) -> int:
    """The line of this file containing ``text`` (so the expected source lines stay right)."""
    for i, line in enumerate(Path(__file__).read_text().splitlines(), 1):
        if text in line and "line_of(" not in line:
            return i
    raise AssertionError(text)


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)


class PoolNet(Base):  # DS001
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h = int(y.shape[2])
        return y * torch.sigmoid(F.avg_pool2d(y, [h, 1]))  # pool-kernel-line


class ResizeNet(Base):  # DS002
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h, w = int(x.shape[2]), int(x.shape[3])
        return y + F.interpolate(F.max_pool2d(y, 2), size=(h, w))  # resize-line


class ReshapeNet(Base):  # DS005
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, c, h, w = (int(s) for s in y.shape)
        return y.view(b, c, h * w).softmax(-1)  # reshape-line


class IfNet(Base):  # DS009
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if x.shape[2] > 100:
            y = torch.relu(y)  # branch-line
        return y


class ZerosNet(Base):  # DS007
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + torch.ones(1, 1, int(x.shape[2]), int(x.shape[3]))  # zeros-line


class SliceNet(Base):  # DS014
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        half = int(y.shape[3]) // 2
        return y[:, :, :, :half] * 2.0  # slice-line


class CleanNet(Base):  # no findings: every size stays a tensor
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        pooled = F.adaptive_avg_pool2d(y, 1)
        up = F.interpolate(F.max_pool2d(y, 2), size=y.shape[-2:], mode="nearest")
        return (y + up) * torch.sigmoid(pooled) + y.flatten(2).mean(-1)[..., None, None]


class WrongMeanNet(Base):  # runs at other shapes, silently wrong: the pooling kernel is baked
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h, w = int(y.shape[2]), int(y.shape[3])
        g = F.avg_pool2d(y, [h, w]).mean((2, 3), keepdim=True)
        return self.conv2(y * g) if hasattr(self, "conv2") else y * g


CASES = [
    (PoolNet, "DS001", "AveragePool", "pool-kernel-line"),
    (ResizeNet, "DS002", "Resize", "resize-line"),
    (ReshapeNet, "DS005", "Reshape", "reshape-line"),
    (ZerosNet, "DS007", None, "zeros-line"),
    (SliceNet, "DS014", "Slice", "slice-line"),
]


def test_choose_s1_is_on_the_lattice_and_differs_everywhere() -> None:
    s1 = choose_s1({"input": (1, 3, 512, 480), "b": (2, 7)}, {"input": [0, 2, 3], "b": [1]})
    assert s1 == {"input": (2, 3, 640, 544), "b": (2, 9)}


@pytest.mark.parametrize(("cls", "rule", "op", "marker"), CASES, ids=[c[1] for c in CASES])
def test_legacy_differential_finds_the_baked_value(cls: type[nn.Module], rule: str, op: str | None,
                                                   marker: str) -> None:
    result = differential_export(cls().eval(), S0, exporter="legacy")
    assert result.same_structure
    hits = [f for f in result.findings if f.rule == rule]
    assert hits, [(f.rule, f.node, f.message) for f in result.findings]
    f = hits[0]
    assert f.detected_by == "differential-export"
    if op is not None:
        assert f.op == op
    assert f.node in {n.name for n in result.export_s0.model.graph.node}
    assert f.details["s0"] != f.details["s1"]
    assert f.baked_value == f.details["s0"]
    assert f.source is not None and f.source.endswith(f"{THIS}:{line_of(marker)}"), f.source


def test_legacy_pool_and_resize_values() -> None:
    pool = differential_export(PoolNet().eval(), S0).findings
    (f,) = [f for f in pool if f.rule == "DS001"]
    assert f.baked_value == [64, 1] and f.details["s1"] == [192, 1]  # S1 = 64 + 2*64
    resize = differential_export(ResizeNet().eval(), S0).findings
    (g,) = [f for f in resize if f.rule == "DS002"]
    assert 64 in np.ravel(g.baked_value) and 192 in np.ravel(g.details["s1"])


def test_legacy_control_flow_is_ds009() -> None:
    result = differential_export(IfNet().eval(), S0)
    assert not result.same_structure
    (f,) = [f for f in result.findings if f.rule == "DS009"]
    assert f.op == "Relu"
    assert f.details["s0"] != f.details["s1"]
    assert f.source is not None and f.source.endswith(f"{THIS}:{line_of('branch-line')}")


def test_clean_model_has_no_findings() -> None:
    result = differential_export(CleanNet().eval(), S0)  # with the class shapes: still nothing
    assert result.findings == [], [f.message for f in result.findings]
    assert result.exports >= 3 and result.same_structure and not result.branches  # S0, S1, class shapes
    result = differential_export(CleanNet().eval(), S0, exporter="dynamo", class_shapes=0)
    assert result.findings == [], [f.message for f in result.findings]


@pytest.mark.slow  # six torch.export runs
@pytest.mark.parametrize("cls", [PoolNet, ResizeNet, ReshapeNet, IfNet, ZerosNet, SliceNet],
                         ids=lambda c: c.__name__)
def test_dynamo_either_reports_or_exports_correctly(cls: type[nn.Module]) -> None:
    """The dynamo exporter keeps many sizes symbolic; whatever it baked must be reported."""
    net = cls().eval()
    try:
        result = differential_export(net, S0, exporter="dynamo", class_shapes=0)
    except DynashapeError as exc:  # refusing to export is also an honest answer
        assert "dynamo exporter" in str(exc)
        return
    if result.findings:
        assert all(f.detected_by == "differential-export" for f in result.findings)
        return
    model = result.export_s0.model
    with TorchRunner(net) as ref:
        for shape in [(1, 3, 64, 64), (2, 3, 96, 80)]:
            feeds = random_feeds(model, {"input": shape})
            assert max_abs_error(run_model(model, feeds), ref.infer(feeds)) < 1e-4, shape


def test_demo_names_both_pools_and_the_resize() -> None:
    result = differential_export("dynashape.demo.model:build", {"input": (1, 3, 512, 512)})
    by_node = {f.node: f for f in result.findings}
    assert set(by_node) == {"/AveragePool", "/AveragePool_1", "/Resize"}, by_node
    src = "src/dynashape/demo/model.py"
    assert by_node["/AveragePool"].rule == "DS001"
    assert by_node["/AveragePool"].baked_value == [32, 1] and by_node["/AveragePool"].details["s1"] == [40, 1]
    assert by_node["/AveragePool"].source == f"{src}:42"
    assert by_node["/AveragePool_1"].baked_value == [1, 32]
    assert by_node["/AveragePool_1"].source == f"{src}:43"
    assert by_node["/Resize"].rule == "DS002"
    assert by_node["/Resize"].baked_value == [32, 32] and by_node["/Resize"].details["s1"] == [40, 40]
    assert by_node["/Resize"].source == f"{src}:39"


def test_s1_override_and_bad_s1() -> None:
    result = differential_export(PoolNet().eval(), S0, s1={"input": (1, 3, 96, 64)})
    (f,) = [f for f in result.findings if f.rule == "DS001"]
    assert f.details["s1"] == [96, 1]
    with pytest.raises(DynashapeError, match="static axes"):
        differential_export(PoolNet().eval(), S0, dynamic={"input": [2]}, s1={"input": (1, 3, 96, 96)})


def test_torch_findings_for_check(tmp_path: Path) -> None:
    """What `check MODEL.onnx --torch FILE.py:FACTORY` gets, through the CLI helpers."""
    import argparse

    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent("""
        import torch.nn.functional as F
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)

            def forward(self, x):
                y = self.conv(x)
                return y * F.avg_pool2d(y, [int(y.shape[2]), 1])
    """))
    spec = f"{src}:Net"
    model = export_module(load_module(spec), S0).model  # records the export shape
    parser = argparse.ArgumentParser()
    cli_torch.add_torch_check_arguments(parser)
    args = parser.parse_args(["--torch", spec])
    findings = cli_torch.torch_findings(args, model)
    (f,) = findings
    assert (f.rule == "DS001" and f.source == f"{src}:12") or f.source.endswith("net.py:12")
    assert f.details["in_model"] is True
    assert f.to_json()["detected_by"] == "differential-export"
    assert cli_torch.torch_findings(parser.parse_args([]), model) == []
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.metadata_props[:]
    with pytest.raises(DynashapeError, match="needs the export shape"):
        cli_torch.torch_findings(args, stripped)


# ------------------------------------------------------------------ first divergent node


def test_first_divergent_node_when_ort_fails() -> None:
    net = load_module("dynashape.demo.model:build")
    model = export_module(net, {"input": (1, 3, 256, 256)}).model
    feeds = random_feeds(model, {"input": (1, 3, 320, 320)})
    d = first_divergent_node(model, feeds, net)
    # ONNX Runtime fails at the join; what went wrong before it is the resize's frozen size
    assert d is not None and d.details["fails_at"] == "/Add"
    assert d.kind == "value" and "it feeds /Resize (Resize)" in d.message
    assert "then fails at /Add (Add)" in d.message
    assert d.source == "src/dynashape/demo/model.py:39"


def test_first_divergent_node_when_silently_wrong() -> None:
    net = WrongMeanNet().eval()
    model = export_module(net, S0).model
    feeds = random_feeds(model, {"input": (1, 3, 96, 96)})
    with TorchRunner(net) as ref:  # it runs, but is wrong
        assert max_abs_error(run_model(model, feeds), ref.infer(feeds)) > 1e-3
    d = first_divergent_node(model, feeds, net)
    assert d is not None
    assert d.op == "AveragePool" and d.kind in ("shape", "value")
    assert d.max_error is not None and d.max_error > 1e-3
    assert d.source is not None and d.source.endswith(f"{THIS}:{line_of('avg_pool2d(y, [h, w])')}")
    # at the export shape nothing diverges
    assert first_divergent_node(model, random_feeds(model, S0), net) is None


def test_first_divergent_node_with_onnx_reference() -> None:
    net = WrongMeanNet().eval()
    model = export_module(net, S0).model
    reference = export_module(net, {"input": (1, 3, 96, 96)}).model
    d = first_divergent_node(model, random_feeds(model, {"input": (1, 3, 96, 96)}), reference)
    assert d is not None and d.op == "AveragePool"


def test_module_path_from_node_names() -> None:
    net = load_module("dynashape.demo.model:build")
    model = export_module(net, {"input": (1, 3, 64, 64)}).model
    paths = {n.name: module_path(n) for n in model.graph.node}
    assert paths["/stage4/stage4.0/Conv"] == "stage4.0"
    node = onnx.helper.make_node("Conv", [], [], name="/layer1/layer1.0/conv1/Conv")
    assert module_path(node) == "layer1.0.conv1"
    assert paths["/conv_h/Conv"] == "conv_h"
    assert paths["/Resize"] == ""


def test_divergent_module_found_through_hooks() -> None:
    """A conv inside a submodule diverges: the hook comparison names the module path."""

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, y: torch.Tensor) -> torch.Tensor:
            return self.conv(y * F.avg_pool2d(y, [int(y.shape[2]), 1]).mean(2, keepdim=True))

    class Outer(Base):
        def __init__(self) -> None:
            super().__init__()
            self.block = Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(self.conv(x))

    net = Outer().eval()
    model = export_module(net, S0).model
    d = first_divergent_node(model, random_feeds(model, {"input": (1, 3, 96, 64)}), net)
    assert d is not None and d.op == "AveragePool" and d.module_path == "block"
    # the hooks compared module outputs: the top-level conv agrees, block.conv is the first that doesn't
    assert d.details.get("first_divergent_module") in ("block.conv", "block")


# ------------------------------------------------------------------ size branches found on purpose


def _ds009(result):  # type: ignore[no-untyped-def]
    return [f for f in result.findings if f.rule == "DS009"]


def test_swin_style_pad_branch_found_without_a_second_shape(tmp_path: Path) -> None:
    """`if h % 7: pad ... crop` taken at S0 = 128 (h = 32) and at S1 = 256 (h = 64): only a class
    shape whose feature map is a multiple of the window 7 takes the other branch."""
    path = MR.write_size_branch_modules(tmp_path)
    s0 = {"input": (1, 3, 128, 128)}
    only_s1 = differential_export(f"{path}:SwinStyle", s0, class_shapes=0)
    assert _ds009(only_s1) == [] and only_s1.exports == 2  # the old single second shape misses it
    result = differential_export(f"{path}:SwinStyle", s0)
    assert result.classes == {"levels": [1, 2, 4], "windows": [7]}
    assert [r.status for r in result.runs] == ["exported"] * result.exports and 3 <= result.exports <= 5
    assert all(r.reason for r in result.runs) and result.seconds > 0
    found = _ds009(result)
    sources = {f.source for f in found}
    assert f"{path}:{MR.source_line('swin-pad-line')}" in sources, sources
    assert f"{path}:{MR.source_line('swin-crop-line')}" in sources, sources
    for f in found:
        assert f.details["flips_at"] and "input:2x3x256x256" not in f.details["flips_at"]
        assert "input:2x3x256x256" in f.details["same_as_s0_at"]
        for shape in f.details["flips_at"]:  # it flips where the feature maps are multiples of 7
            h, w = (int(v) for v in shape.split("x")[2:])
            assert (h // 4) % 7 == 0 and (w // 4) % 7 == 0, shape
    flip_run = next(r for r in result.runs if r.branches)
    assert "multiple of 7" in flip_run.reason, flip_run.reason
    assert result.to_json()["branches"][0]["flips_at"]


def test_dpt_style_interpolate_branch_found(tmp_path: Path) -> None:
    """`if up.shape != skip.shape: interpolate` never taken at S0 = 64 nor at S1 = 192 (both
    multiples of 4): a class shape with an odd half size takes it."""
    path = MR.write_size_branch_modules(tmp_path)
    result = differential_export(f"{path}:DPTStyle", {"input": (1, 3, 64, 64)})
    assert result.classes["levels"] == [1, 2, 4] and result.classes["windows"] == []
    (f,) = _ds009(result)
    assert f.source == f"{path}:{MR.source_line('dpt-interp-line')}"
    assert f.op == "Resize" or "Resize" in f.details["ops"]
    assert "input:2x3x192x192" in f.details["same_as_s0_at"]
    for shape in f.details["flips_at"]:
        h, w = (int(v) for v in shape.split("x")[2:])
        assert (h // 2) % 2 or (w // 2) % 2, shape  # an odd half size: the up-sampled map is one larger
    assert any(r.shapes["input"][2] != r.shapes["input"][3] for r in result.runs)  # a non-square shape


def test_failing_class_shapes_are_recorded_and_finer_ones_skipped(tmp_path: Path) -> None:
    path = MR.write_size_branch_modules(tmp_path)
    result = differential_export(f"{path}:NeedsMultipleOf32", {"input": (1, 3, 128, 128)})
    statuses = [r.status for r in result.runs]
    assert statuses[:2] == ["exported", "exported"]  # S0 and S1 (multiples of 32)
    assert "failed" in statuses and statuses.count("exported") + statuses.count("failed") == result.exports
    failed = next(r for r in result.runs if r.status == "failed")
    assert "multiple of 32" in failed.message
    assert result.findings == [] and not result.branches


def test_planned_shapes_cover_the_classes_on_the_lattice() -> None:
    s0, dyn = {"input": (1, 3, 256, 256)}, {"input": [0, 2, 3]}
    classes = ShapeClasses(levels=[1, 2, 4, 8, 16, 32], windows=[7])
    plan = plan_class_shapes(s0, dyn, classes, already=[choose_s1(s0, dyn)])
    assert 1 <= len(plan) <= 3
    first = plan[0].shapes["input"]
    assert first[2] == first[3] == 224  # 7 x 32: every level's feature map a multiple of the window
    assert any(p.shapes["input"][2] != p.shapes["input"][3] for p in plan)
    assert all(p.shapes["input"][0] == 1 for p in plan)  # the batch stays
    safeties = [p.safety for p in plan]
    assert safeties == sorted(safeties, reverse=True)  # coarse (likely valid) shapes first
    lattice = {"input": {2: AxisLattice(32, 32), 3: AxisLattice(32, 32)}}
    on = plan_class_shapes(s0, dyn, classes, already=[choose_s1(s0, dyn)], lattice=lattice)
    assert on and all(d % 32 == 0 for p in on for d in p.shapes["input"][2:])
    # nothing left to cover: no shape (a plain net whose classes S0 and S1 already show)
    assert plan_class_shapes({"x": (1, 3, 96, 96)}, {"x": [2, 3]}, ShapeClasses([1], []),
                             already=[{"x": (1, 3, 97, 97)}]) == []


def test_shape_classes_read_strides_and_windows(tmp_path: Path) -> None:
    swin = load_module(f"{MR.write_size_branch_modules(tmp_path)}:SwinStyle")
    classes = shape_classes(export_module(swin, {"input": (1, 3, 112, 112)}).model)
    assert classes.levels == [1, 2, 4] and classes.windows == [7]  # patch conv /4, Mod by 7
    clean = shape_classes(export_module(CleanNet().eval(), S0).model)
    assert clean.windows == [] and clean.levels == [1, 2]  # one max-pool /2


def test_check_torch_cli_says_how_many_exports_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from dynashape import cli

    path = MR.write_size_branch_modules(tmp_path)
    spec = f"{path}:DPTStyle"
    onnx_path = tmp_path / "dpt.onnx"
    export_module(load_module(spec), {"input": (1, 3, 64, 64)}, path=onnx_path)
    assert cli.main(["check", str(onnx_path), "--torch", spec]) == 1
    out = capsys.readouterr().out
    assert "differential export: 4 exports" in out and "DS009" in out  # S0, S1, two class shapes
    assert f"size_branches.py:{MR.source_line('dpt-interp-line')}" in out
    assert "other branch at" in out and "S1: every dynamic axis grown" in out
    assert cli.main(["check", str(onnx_path), "--torch", spec, "--json", "--class-shapes", "1"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["differential"]["exports"] == 3 and len(data["differential"]["runs"]) == 3
    assert all(r["reason"] for r in data["differential"]["runs"])


def test_intermediates_are_computed_a_window_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search holds a bounded share of the intermediates: with a tiny budget it runs the model
    window by window, gives the same tensors as one run with every output, and finds the same node."""
    from dynashape.pipeline import differential
    from dynashape.pipeline.differential import Intermediates, run_intermediates

    net = load_module("dynashape.demo.model:build")
    model = export_module(net, {"input": (1, 3, 256, 256)}).model
    before = model.SerializeToString()
    feeds = random_feeds(model, {"input": (1, 3, 256, 256)})
    everything = run_intermediates(model, feeds)
    lazy = Intermediates(model, feeds, budget=64 * 1024, window=4)
    assert set(lazy) == set(everything)
    for name in lazy.order:
        np.testing.assert_array_equal(lazy[name], everything[name])
    assert lazy.runs > len(lazy) // 4 and lazy.window == 1  # the budget shrank the window
    assert model.SerializeToString() == before  # outputs swapped for each run, then put back
    monkeypatch.setattr(differential, "INTERMEDIATES_BUDGET", 64 * 1024)
    d = first_divergent_node(model, random_feeds(model, {"input": (1, 3, 320, 320)}), net)
    assert d is not None and d.details["fails_at"] == "/Add" and "it feeds /Resize (Resize)" in d.message
