"""export.py: loading FILE.py:FACTORY specs, both exporters, warnings with file:line, bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dynashape import cli  # noqa: E402
from dynashape.backends.ort import run_model  # noqa: E402
from dynashape.backends.torch import TorchRunner  # noqa: E402
from dynashape.errors import DynashapeError  # noqa: E402
from dynashape.export import (  # noqa: E402
    default_dynamic,
    export_module,
    load_module,
    valid_output_names,
)
from dynashape.model import graph_inputs, load_model, read_export_shape  # noqa: E402
from dynashape.testing import max_abs_error  # noqa: E402

DEMO_SOURCE = "src/dynashape/demo/model.py"


class SkipNet(nn.Module):
    """Fully dynamic: the resize target comes from a tensor's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        return self.skip(x) + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def write_model_file(tmp_path: Path, body: str, name: str = "user_model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


GOOD_FILE = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    def build():
        return Net()

    def not_a_module():
        return 42

    def needs_args(width):
        return Net()
"""


# ------------------------------------------------------------------ load_module


def test_load_module_from_file_class_and_function(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, GOOD_FILE)
    for factory in ("Net", "build"):
        module = load_module(f"{path}:{factory}")
        assert isinstance(module, nn.Module)
        assert not module.training, "load_module must put the module in eval mode"


def test_load_module_dotted() -> None:
    module = load_module("dynashape.demo.model:build")
    assert type(module).__name__ == "DemoNet"
    assert not module.training


def test_load_module_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DynashapeError, match="no such file"):
        load_module(f"{tmp_path}/nope.py:build")


def test_load_module_missing_factory_lists_callables(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, GOOD_FILE)
    with pytest.raises(DynashapeError, match=r"has no 'make'.*build") as err:
        load_module(f"{path}:make")
    assert "Net" in str(err.value)


def test_load_module_factory_returns_no_module(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, GOOD_FILE)
    with pytest.raises(DynashapeError, match=r"returned int, not a torch.nn.Module"):
        load_module(f"{path}:not_a_module")


def test_load_module_factory_needs_arguments(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, GOOD_FILE)
    with pytest.raises(DynashapeError, match=r"needs_args\(\) failed.*no arguments"):
        load_module(f"{path}:needs_args")


def test_load_module_import_error_names_the_line(tmp_path: Path) -> None:
    path = write_model_file(tmp_path, """
        import torch

        x = 1
        raise ValueError("boom")
    """, name="broken.py")
    with pytest.raises(DynashapeError, match=r"importing .*broken.py failed: ValueError: boom.*broken.py:5"):
        load_module(f"{path}:build")


def test_load_module_bad_spec_and_unknown_package() -> None:
    with pytest.raises(DynashapeError, match=r"FILE\.py:FACTORY|file\.py:FACTORY"):
        load_module("just_a_name")
    with pytest.raises(DynashapeError, match=r"no module named 'no_such_pkg_xyz\.models'"):
        load_module("no_such_pkg_xyz.models:build")


def test_importing_export_does_not_import_torch() -> None:
    code = "import sys, dynashape.export, dynashape.pipeline.differential, dynashape.cli.torch, " \
           "dynashape.backends.torch; assert 'torch' not in sys.modules, 'torch imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ export_module


def test_default_dynamic_axes() -> None:
    assert default_dynamic({"input": (1, 3, 64, 64), "seq": (2, 7)}) == {"input": [0, 2, 3], "seq": [0, 1]}


def test_legacy_export_demo_warnings_metadata_and_save(tmp_path: Path) -> None:
    out = tmp_path / "demo.onnx"
    result = export_module(load_module("dynashape.demo.model:build"), {"input": (1, 3, 256, 256)},
                           exporter="legacy", path=out)
    assert result.path == out and out.exists()
    model = load_model(out)
    (info,) = graph_inputs(model)
    assert info.dims == ("batch", 3, "height", "width")
    assert read_export_shape(model) == {"input": (1, 3, 256, 256)}
    tracer = [w for w in result.warnings if w.category == "TracerWarning"]
    lines = {w.location for w in tracer}
    assert f"{DEMO_SOURCE}:38" in lines and f"{DEMO_SOURCE}:41" in lines, lines
    # the legacy exporter keeps the Python stack per node (for source lines later)
    assert any("model.py(42)" in n.doc_string for n in model.graph.node if n.op_type == "AveragePool")
    assert not list(tmp_path.glob(".*.tmp")), "atomic save left a temporary file"


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_export_is_dynamic_and_matches_torch(exporter: str) -> None:
    torch.manual_seed(0)
    net = SkipNet().eval()
    result = export_module(net, {"input": (1, 3, 32, 32)}, exporter=exporter)
    (info,) = graph_inputs(result.model)
    assert info.dims == ("batch", 3, "height", "width")
    assert result.specialized == {}
    for shape in [(1, 3, 32, 32), (2, 3, 48, 40), (1, 3, 17, 33)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        with TorchRunner(net, output_names=result.output_names) as ref:
            expected = ref.infer({"input": x})
        got = run_model(result.model, {"input": x})
        assert max_abs_error(got, expected) < 1e-4, shape


def test_static_axes_stay_static() -> None:
    net = SkipNet().eval()
    result = export_module(net, {"input": (1, 3, 32, 32)}, {"input": [0]})
    (info,) = graph_inputs(result.model)
    assert info.dims == ("batch", 3, 32, 32)


def test_dynamo_failure_names_the_line() -> None:
    net = load_module("dynashape.demo.model:build")
    with pytest.raises(DynashapeError, match=rf"dynamo exporter cannot export.*{DEMO_SOURCE}:4[12].*legacy"):
        export_module(net, {"input": (1, 3, 64, 64)}, exporter="dynamo")


def test_input_that_does_not_fit_the_module() -> None:
    net = SkipNet().eval()
    with pytest.raises(DynashapeError, match=r"does not accept --input input:1x4x32x32"):
        export_module(net, {"input": (1, 4, 32, 32)})
    with pytest.raises(DynashapeError, match=r"axis 4 is out of range"):
        export_module(net, {"input": (1, 3, 32, 32)}, {"input": [4]})
    with pytest.raises(DynashapeError, match=r"unknown exporter"):
        export_module(net, {"input": (1, 3, 32, 32)}, exporter="onnxscript")


class DictOut(nn.Module):
    """A dict output keyed '0', '1', ... like torchvision's FPN backbones (plus one named key)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        return {"0": y, "1": F.max_pool2d(y, 2), "pool": F.max_pool2d(y, 4)}


class CachedGrid(nn.Module):
    """YOLOv5 Detect's habit: a grid built at the first forward and kept on the module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.grid = torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.grid.shape[2:] != y.shape[2:]:
            ny, nx = y.shape[2], y.shape[3]
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            self.grid = torch.stack((xv, yv), 0).unsqueeze(0).float()
        return y + self.grid


def test_valid_output_names() -> None:
    assert valid_output_names(["0", "1", "pool"]) == ["output_0", "output_1", "pool"]
    assert valid_output_names(["out", "aux"]) == ["out", "aux"]
    assert valid_output_names(["a b", "3x", "", "p.q"]) == ["a_b", "output_3x", "output_", "p.q"]
    # unique among the outputs and the inputs
    assert valid_output_names(["0", "output_0", "input"], reserved=["input"]) == [
        "output_0", "output_0_1", "input_1"]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_dict_output_keyed_by_digits_exports(exporter: str) -> None:
    torch.manual_seed(0)
    net = DictOut().eval()
    result = export_module(net, {"input": (1, 3, 16, 16)}, exporter=exporter)
    assert result.output_names == ["output_0", "output_1", "pool"]
    assert [o.name for o in result.model.graph.output] == result.output_names
    x = np.random.default_rng(0).standard_normal((2, 3, 24, 20)).astype(np.float32)
    with TorchRunner(net, output_names=result.output_names) as ref:
        expected = ref.infer({"input": x})
    assert max_abs_error(run_model(result.model, {"input": x}), expected) < 1e-5


def test_given_output_names_must_be_valid() -> None:
    with pytest.raises(DynashapeError, match=r"output name '0' cannot be used.*'output_0'"):
        export_module(DictOut().eval(), {"input": (1, 3, 16, 16)}, output_names=["0", "1", "pool"])


def test_module_caching_tensors_in_forward_exports() -> None:
    # legacy only: the dynamo exporter refuses this module (the cache check is a guard on the size)
    net = CachedGrid().eval()
    result = export_module(net, {"input": (1, 3, 8, 8)}, exporter="legacy")
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with TorchRunner(net, output_names=result.output_names) as ref:
        expected = ref.infer({"input": x})
    assert max_abs_error(run_model(result.model, {"input": x}), expected) < 1e-5
    # a second export of the same module (differential export at S1) works too
    export_module(net, {"input": (1, 3, 12, 12)}, exporter="legacy")


def test_module_cached_under_inference_mode_still_exports() -> None:
    net = CachedGrid().eval()
    with torch.inference_mode():
        net(torch.zeros(1, 3, 8, 8))
    assert net.grid.is_inference()
    export_module(net, {"input": (1, 3, 8, 8)}, exporter="legacy")


class Attention(torch.nn.Module):
    """Tokens from a 4x4 patch embedding through nn.MultiheadAttention (ViT's encoder block)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.attn(t, t, t, need_weights=False)[0]


def test_multihead_attention_exports_with_the_legacy_exporter_and_fix_repairs_its_views() -> None:
    from dynashape.pipeline.fix import fix_model

    # under no_grad, nn.MultiheadAttention runs a fused kernel the legacy exporter has no symbolic for
    net = Attention().eval()
    result = export_module(net, {"input": (1, 3, 16, 16)}, exporter="legacy")
    # torch's attention reshapes q/k/v with sizes taken as Python ints: the traced views are DS005
    fixed = fix_model(result.model)
    assert [line.split(":")[0] for line in fixed.applied] == ["/attn/Reshape_4", "/attn/Reshape_5"]
    for shape in [(1, 3, 16, 16), (2, 3, 32, 16)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with TorchRunner(net, output_names=result.output_names) as ref:
            expected = ref.infer({"input": x})
        assert max_abs_error(run_model(fixed.fixed, {"input": x}), expected) < 1e-5, shape


# ------------------------------------------------------------------ CLI


def test_cli_export_prints_warnings_with_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    code = cli.main(["export", "dynashape.demo.model:build", "--input", "input:1x3x128x128",
                           "--dynamic", "input:0,2,3", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert out.exists()
    assert "input:batchx3xheightxwidth" in text
    assert f"{DEMO_SOURCE}:38: TracerWarning" in text
    assert "dynashape check" in text


def test_cli_export_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_model_file(tmp_path, GOOD_FILE)
    cases = [
        ([f"{tmp_path}/missing.py:build", "--input", "input:1x3x32x32"], "no such file"),
        ([f"{path}:nothere", "--input", "input:1x3x32x32"], "has no 'nothere'"),
        ([f"{path}:not_a_module", "--input", "input:1x3x32x32"], "not a torch.nn.Module"),
        ([f"{path}:build", "--input", "input:1x5x32x32"], "does not accept --input input:1x5x32x32"),
        ([f"{path}:build", "--input", "input:1x3x32x32", "--dynamic", "other:0"], "not an input"),
        ([f"{path}:build", "--input", "input:1x3x32x32", "--dynamic", "input:a"], "axes are integers"),
    ]
    for argv, message in cases:
        code = cli.main(["export", *argv, "-o", str(tmp_path / "x.onnx")])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert message in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()
