"""verify: the sweep's shapes, statuses against references, and the re-specialized reference."""

from __future__ import annotations

import onnx
import pytest

from dynashape.demo import demo_onnx_path
from dynashape.errors import DynashapeError
from dynashape.model import load_model
from dynashape.pipeline.check import check_model
from dynashape.pipeline.fix import fix_model
from dynashape.pipeline.verify import (
    default_ranges,
    make_reference,
    output_follow_check,
    sweep_shapes,
    verify,
)
from dynashape.shapes import parse_ranges


@pytest.fixture(scope="module")
def demo() -> onnx.ModelProto:
    return load_model(demo_onnx_path())


@pytest.fixture(scope="module")
def fixed(demo: onnx.ModelProto):
    return fix_model(demo)


def test_sweep_covers_the_fault_classes(demo, fixed) -> None:
    rep = fixed.report
    shapes = sweep_shapes(demo, rep.export_shape, default_ranges(demo, rep.export_shape, rep.lattice), rep.lattice)
    sizes = [s["input"] for s in shapes]
    assert (1, 3, 512, 512) in sizes  # export shape
    assert any(h != w for _, _, h, w in sizes)  # non-square
    assert any(b > 1 for b, *_ in sizes)  # batch > 1
    assert len(sizes) >= 6 and len(set(sizes)) == len(sizes)
    assert all(h % 16 == 0 and w % 16 == 0 for _, _, h, w in sizes)  # default range is on the lattice


def test_sweep_includes_off_lattice_when_the_range_does(demo, fixed) -> None:
    rep = fixed.report
    ranges = parse_ranges("input:1x3x[256..512:8]x[256..512:8]")
    sizes = [s["input"] for s in sweep_shapes(demo, rep.export_shape, ranges, rep.lattice)]
    assert any(h % 16 for _, _, h, _ in sizes)


def test_fixed_demo_ok_against_respecialized_original(demo, fixed) -> None:
    rep = fixed.report
    shapes = sweep_shapes(demo, rep.export_shape, default_ranges(demo, rep.export_shape, rep.lattice), rep.lattice)
    sweep = verify(fixed.fixed, shapes, make_reference("respecialized", fixed.fixed, demo, rep), lattice=rep.lattice)
    assert sweep.all_ok, sweep.to_json()
    assert all(r.max_abs_error is not None and r.max_abs_error < 1e-4 for r in sweep.results)
    # the graph against itself proves the fix, not the model: rows are "same", never "ok"
    assert {r.status for r in sweep.results} == {"same"}
    assert not sweep.proven and sweep.to_json()["proven"] is False
    assert "not with PyTorch" in sweep.summary() and "NOT PROVEN" in sweep.summary()
    assert "--reference torch:" in sweep.summary()


def test_unfixed_demo_errors_off_export_with_the_node(demo, fixed) -> None:
    rep = fixed.report
    shapes = [{"input": (1, 3, 512, 512)}, {"input": (1, 3, 256, 256)}]
    sweep = verify(demo, shapes, make_reference("respecialized", fixed.fixed, demo, rep), lattice=rep.lattice)
    assert [r.status for r in sweep.results] == ["same", "error"]
    assert sweep.failed and not sweep.all_ok
    assert sweep.results[1].node == "/Add"


def test_off_lattice_is_wrong_without_reference(demo, fixed) -> None:
    rep = fixed.report
    follow = output_follow_check(fixed.fixed, rep.export_shape)
    sweep = verify(fixed.fixed, [{"input": (1, 3, 520, 512)}], make_reference(None, fixed.fixed),
                   lattice=rep.lattice, follow=follow)
    assert sweep.results[0].status == "wrong"
    assert "528" in sweep.results[0].message


def test_onnx_reference_against_itself(demo, fixed, tmp_path) -> None:
    from dynashape.model import save_model

    path = save_model(fixed.fixed, tmp_path / "ref.onnx")
    rep = check_model(demo)
    sweep = verify(fixed.fixed, [{"input": (2, 3, 128, 96)}], make_reference(f"onnx:{path}", fixed.fixed),
                   lattice=rep.lattice)
    assert sweep.results[0].status == "ok" and sweep.results[0].max_abs_error == 0.0
    assert sweep.proven and "NOT PROVEN" not in sweep.summary()


def test_sizes_only_sweep_is_not_ok(demo, fixed) -> None:
    """Without a reference the rows say "ran", and the summary says nothing was compared."""
    rep = fixed.report
    follow = output_follow_check(fixed.fixed, rep.export_shape)
    shapes = [{"input": (1, 3, 512, 512)}, {"input": (2, 3, 256, 384)}]
    sweep = verify(fixed.fixed, shapes, make_reference(None, fixed.fixed), lattice=rep.lattice, follow=follow)
    assert [r.status for r in sweep.results] == ["ran", "ran"]
    assert sweep.all_ok and not sweep.failed and not sweep.proven
    assert sweep.counts() == {"ran": 2, "wrong": 0, "error": 0}
    line = sweep.summary()
    assert line.startswith("2 ran, 0 wrong, 0 error; outputs not compared with a reference"), line
    assert "NOT PROVEN" in line and "--reference torch:" in line
    data = sweep.to_json()
    assert data["proof"] == "none" and data["proven"] is False and "not compared" in data["compared_with"]


def test_unknown_reference_is_a_user_error(demo) -> None:
    with pytest.raises(DynashapeError, match="unknown reference"):
        make_reference("tf:model", demo)


# ---------------------------------------------------------------- the reference is not the exported model

_FACTORIES = '''
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """The pooled row is frozen to the export height: wrong (not failing) at any other height."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * F.avg_pool2d(y, (int(y.shape[2]), 1))[:, :, :1]


def seeded():
    torch.manual_seed(0)
    return Net().eval()


def unseeded():
    return Net().eval()  # a fresh random init each call: not the weights that were exported
'''
S0 = {"input": (1, 3, 16, 16)}
TALLER = {"input": (1, 3, 32, 16)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    from dynashape.export import export_module, load_module

    path = tmp_path_factory.mktemp("factories") / "factories.py"
    path.write_text(_FACTORIES)
    model = export_module(load_module(f"{path}:seeded"), S0).model
    return path, model


def test_reference_with_the_exported_weights_judges_every_shape(exported) -> None:
    path, model = exported
    sweep = verify(model, [TALLER, S0], make_reference(f"torch:{path}:seeded", model), export_shape=S0)
    assert [r.shapes for r in sweep.results] == [S0, TALLER]  # the export shape runs first
    assert [r.status for r in sweep.results] == ["ok", "wrong"]  # the frozen pool is wrong off S0
    assert sweep.reference_mismatch == "" and "not the exported model" not in sweep.summary()
    assert sweep.to_json()["reference_mismatch"] is None


def test_unseeded_reference_is_not_the_exported_model(exported) -> None:
    path, model = exported
    sweep = verify(model, [S0, TALLER, {"input": (1, 3, 16, 32)}], make_reference(f"torch:{path}:unseeded", model),
                   export_shape=S0)
    assert [r.status for r in sweep.results] == ["wrong", "untrusted", "untrusted"]
    assert "reference differs at the export shape" in sweep.results[0].message
    assert sweep.reference_mismatch.startswith("at the export shape input:1x3x16x16 itself")
    line = sweep.summary()
    assert "0 wrong" not in line and "2 untrusted" in line
    assert "not the exported model" in line and "torch.manual_seed" in line and ".eval()" in line
    assert "cannot be trusted" in line
    assert sweep.failed and not sweep.proven
    assert sweep.to_json()["counts"]["untrusted"] == 2


def test_cli_verify_says_the_reference_is_not_the_exported_model(exported, tmp_path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from dynashape import cli
    from dynashape.model import save_model

    path, model = exported
    onnx_path = save_model(model, tmp_path / "net.onnx")
    argv = ["verify", str(onnx_path), "--range", "input:1x3x[16..32:16]x[16..32:16]"]
    assert cli.main([*argv, "--reference", f"torch:{path}:unseeded"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "the reference is not the exported model" in out and "untrusted" in out
    assert cli.main([*argv, "--reference", f"torch:{path}:seeded"]) == 1  # the model is wrong off S0
    out = " ".join(capsys.readouterr().out.split())
    assert "not the exported model" not in out and "untrusted" not in out and " wrong " in out


def test_a_model_ort_cannot_load_is_one_line(demo, fixed) -> None:
    from onnx import helper

    custom = onnx.ModelProto()
    custom.CopyFrom(demo)
    out = custom.graph.output[0].name
    custom.graph.node.append(helper.make_node("Foo", [out], ["y"], domain="com.example", name="custom"))
    custom.graph.output[0].name = "y"
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(DynashapeError, match=r"ort cannot load the model: .*com\.example:Foo") as err:
        verify(custom, [{"input": (1, 3, 512, 512)}], make_reference(None, custom))
    assert "\n" not in str(err.value)


def test_onnx_runtime_logs_nothing_of_its_own(demo, fixed, capfd: pytest.CaptureFixture[str]) -> None:
    """ORT's own log lines (red, with ANSI codes) never reach the terminal: its errors are ours."""
    rep = fixed.report
    shapes = [{"input": (1, 3, 512, 512)}, {"input": (1, 3, 200, 136)}]
    sweep = verify(demo, shapes, make_reference("respecialized", fixed.fixed, demo, rep), lattice=rep.lattice)
    assert sweep.results[1].status == "error" and "/Add" in sweep.results[1].message
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_respecialized_reference_leaves_the_original_as_it_was(demo, fixed) -> None:
    rep = fixed.report
    before = demo.SerializeToString()
    ref = make_reference("respecialized", fixed.fixed, demo, rep)
    at_256 = ref.model_at({"input": (1, 3, 256, 256)})
    assert demo.SerializeToString() == before  # patched in place for the run, then restored
    pools = [n for n in at_256.graph.node if n.op_type == "AveragePool"]
    assert pools and all(16 in list(a.ints) for n in pools for a in n.attribute if a.name == "kernel_shape")
    sweep = verify(fixed.fixed, [{"input": (1, 3, 256, 384)}], ref, lattice=rep.lattice)
    assert sweep.results[0].status == "same" and demo.SerializeToString() == before
