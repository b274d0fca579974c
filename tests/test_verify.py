"""verify: the sweep's shapes, statuses against references, and the re-specialized reference."""

from __future__ import annotations

import onnx
import pytest

from dynashape.check import check_model
from dynashape.demo import demo_onnx_path
from dynashape.errors import DynashapeError
from dynashape.fix import fix_model
from dynashape.model import load_model
from dynashape.shapes import parse_ranges
from dynashape.verify import (
    default_ranges,
    make_reference,
    output_follow_check,
    sweep_shapes,
    verify,
)


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
