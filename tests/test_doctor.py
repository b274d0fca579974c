"""No clean bill without proof: what `check`, `verify` and `doctor` claim with and without a reference,
and the static DS009 warning on a window-partition pad."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import models as M
import models_reports as MR
import pytest

from dynashape import cli
from dynashape.demo import demo_onnx_path
from dynashape.pipeline.check import check_model
from dynashape.pipeline.doctor import run_doctor

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")


# ---------------------------------------------------------------- static DS009: window-partition pad


def test_window_pad_is_a_ds009_warning() -> None:
    model = MR.window_pad(7)
    report = check_model(model, export_shape={"x": (1, 4, 56, 60)})
    (f,) = [f for f in report.findings if f.rule == "DS009"]
    assert f.severity == "warning" and not f.fixable and f.op == "Pad"
    assert f.details["windows"] == [7] and "multiple of 7" in f.message
    assert "--torch" in f.fix
    # the pad itself is right at every size: the graph still runs and follows the input
    M.run(model, (1, 4, 61, 50))


def test_pad_from_size_without_a_window_is_not_warned() -> None:
    report = check_model(MR.window_pad(7, mod=False), export_shape={"x": (1, 4, 56, 60)})
    assert [f for f in report.findings if f.rule == "DS009"] == []
    assert any(r.rule == "DS009" and "follow it" in r.reason for r in report.refusals)


def test_plain_conv_net_gets_no_ds009() -> None:
    g = M.GraphBuilder(17)
    g.conv(g.conv(M.X, 4, 4, "c1", stride=2), 4, 4, "c2", stride=2)
    report = check_model(g.model(["c2"]), export_shape={"x": (1, 4, 64, 64)})
    assert [f for f in report.findings if f.rule == "DS009"] == []


# ---------------------------------------------------------------- ONNX only: not proven


def test_verify_without_reference_says_ran_not_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixed = tmp_path / "fixed.onnx"
    assert cli.main(["fix", str(demo_onnx_path()), "-o", str(fixed)]) == 0
    capsys.readouterr()
    assert cli.main(["verify", str(fixed), "--range", "input:1x3x[128..256:64]x[128..256:64]"]) == 0
    out = capsys.readouterr().out
    assert "ran, 0 wrong, 0 error; outputs not compared with a reference" in out
    assert "NOT PROVEN" in out and "--reference torch:" in out
    assert cli.main(["verify", str(fixed), "--range", "input:1x3x[128..256:64]x[128..256:64]", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["proven"] is False and {r["status"] for r in data["results"]} == {"ran"}


def test_check_onnx_only_says_what_it_did_not_prove(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["check", str(demo_onnx_path())])
    out = capsys.readouterr().out
    assert "not proven:" in out and "--torch" in out
    cli.main(["check", str(demo_onnx_path()), "--json"])
    assert "--torch" in json.loads(capsys.readouterr().out)["not_proven"]


def test_doctor_onnx_only_is_not_proven(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_doctor(str(demo_onnx_path()), out_dir=tmp_path, heatmap=False, tensorrt=False)
    assert result.sweep.proof == "self" and {r.status for r in result.sweep.results} == {"same"}
    assert result.healthy and not result.proven
    assert "not with PyTorch" in result.not_proven_reason()
    data = result.to_json()
    assert data["proven"] is False and data["healthy"] is True and "not with PyTorch" in data["not_proven"]
    code = cli.main(["doctor", str(demo_onnx_path()), "--out-dir", str(tmp_path / "cli"), "--no-tensorrt",
                     "--no-heatmap"])
    out = capsys.readouterr().out
    assert code == 0  # nothing failed; exit 0 as Polygraphy and trtexec do, with the claim spelled out
    assert "not proven:" in out and "same as the original graph" in out and "proven: every" not in out


# ---------------------------------------------------------------- doctor with a module


@pytest.mark.torch
@needs_torch
def test_doctor_with_module_finds_the_branch_and_fails(tmp_path: Path) -> None:
    path = MR.write_size_branch_modules(tmp_path)
    spec = f"{path}:DPTStyle"
    from dynashape.export import export_module, load_module

    onnx_path = tmp_path / "dpt.onnx"
    export_module(load_module(spec), {"input": (1, 3, 64, 64)}, path=onnx_path)
    result = run_doctor(str(onnx_path), out_dir=tmp_path / "out", torch_spec=spec, heatmap=False, tensorrt=False)
    branches = [f for f in result.extra_findings if f.rule == "DS009"]
    assert branches and branches[0].source == f"{path}:{MR.source_line('dpt-interp-line')}"
    assert not result.healthy and not result.proven
    flips = set(branches[0].details["flips_at"])
    # the flip shapes joined the sweep against PyTorch, and the exported graph fails or is wrong there
    rows = {f"input:{'x'.join(map(str, r.shapes['input']))}": r for r in result.sweep.results}
    assert flips <= set(rows)
    assert all(rows[s].status in ("wrong", "error") for s in flips)
    assert result.to_json()["differential"]["exports"] >= 3


@pytest.mark.torch
@needs_torch
def test_doctor_with_clean_module_is_proven(tmp_path: Path) -> None:
    from dynashape.demo import demo_torch_spec

    result = run_doctor(None, out_dir=tmp_path, heatmap=False, tensorrt=False, torch_spec=demo_torch_spec())
    assert result.sweep.proof == "independent" and result.proven, result.sweep.summary()
    assert not [f for f in result.extra_findings if f.rule == "DS009"]


_FIXED_SIZE = '''
import torch
from torch import nn


class FixedSize(nn.Module):
    """Like torchvision's ViT: position embeddings for one image size, and a check that refuses others."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 4, 16, 16))

    def forward(self, x):
        torch._assert(x.shape[2] == 16 and x.shape[3] == 16, "Wrong image size! Expected 16")
        return self.conv(x) + self.pos
'''


@pytest.mark.torch
@needs_torch
def test_doctor_goes_on_when_the_module_runs_at_one_size_only(tmp_path: Path) -> None:
    from dynashape.export import export_module, load_module

    path = tmp_path / "fixed_size.py"
    path.write_text(_FIXED_SIZE)
    spec = f"{path}:FixedSize"
    onnx_path = tmp_path / "fixed_size.onnx"
    export_module(load_module(spec), {"input": (1, 3, 16, 16)}, path=onnx_path)
    result = run_doctor(str(onnx_path), out_dir=tmp_path / "out", torch_spec=spec, tensorrt=False,
                        ranges=None, heatmap=True)
    assert result.differential is None
    assert result.notes and result.notes[0].startswith("no differential export:")
    assert "Expected 16" in result.notes[0]
    assert not result.healthy and not result.proven  # PyTorch refuses the other sizes: not a clean bill
    assert result.to_json()["notes"] == result.notes
    # the heat map says what it sampled, capped
    assert result.heatmap_sampled.startswith("17x17 sizes of input: axis 2 8..24 every 1, axis 3 8..24 every 1")


@pytest.mark.torch
@needs_torch
def test_doctor_export_child_gives_what_the_in_process_run_gives(tmp_path: Path) -> None:
    """The module exported and compared in one child process (the doctor's way, so the exporter's
    memory peak ends before the model is loaded) finds the same branch, at the same shapes, as
    the differential export run here."""
    from dynashape.pipeline.doctor import export_module_for_doctor

    path = MR.write_size_branch_modules(tmp_path)
    spec = f"{path}:DPTStyle"
    exported = export_module_for_doctor(spec, {"input": (1, 3, 64, 64)}, tmp_path / "child")
    assert Path(exported.path).is_file() and exported.spec == spec and exported.differential is not None
    in_child = run_doctor(None, out_dir=tmp_path / "child", exported=exported, heatmap=False, tensorrt=False)
    here = run_doctor(exported.path, out_dir=tmp_path / "here", torch_spec=spec, heatmap=False, tensorrt=False)
    assert in_child.differential is not None and here.differential is not None
    child_json, here_json = in_child.differential.to_json(), here.differential.to_json()
    def runs(data: dict[str, Any]) -> list[tuple[str, str]]:
        return [(r["shape"], r["status"]) for r in data["runs"]]

    assert runs(child_json) == runs(here_json)
    assert child_json["branches"] == here_json["branches"] and child_json["branches"]
    key = [(f.rule, f.node, f.source) for f in in_child.extra_findings]
    assert key and key == [(f.rule, f.node, f.source) for f in here.extra_findings]
    assert [r.status for r in in_child.sweep.results] == [r.status for r in here.sweep.results]


@pytest.mark.torch
@needs_torch
def test_doctor_export_child_reports_a_module_that_runs_at_one_size(tmp_path: Path) -> None:
    from dynashape.pipeline.doctor import export_module_for_doctor

    path = tmp_path / "fixed_size.py"
    path.write_text(_FIXED_SIZE)
    exported = export_module_for_doctor(f"{path}:FixedSize", {"input": (1, 3, 16, 16)}, tmp_path)
    assert exported.differential is None and "Expected 16" in exported.differential_note
    result = run_doctor(None, out_dir=tmp_path, exported=exported, heatmap=False, tensorrt=False)
    assert result.notes[0].startswith("no differential export:") and "Expected 16" in result.notes[0]


@pytest.mark.torch
@needs_torch
def test_doctor_export_child_refuses_a_bad_spec_in_one_line(tmp_path: Path) -> None:
    from dynashape.errors import DynashapeError
    from dynashape.pipeline.doctor import export_module_for_doctor

    path = tmp_path / "fixed_size.py"
    path.write_text(_FIXED_SIZE)
    with pytest.raises(DynashapeError) as info:
        export_module_for_doctor(f"{path}:NoSuchFactory", {"input": (1, 3, 16, 16)}, tmp_path)
    assert "NoSuchFactory" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "model.onnx").exists()
