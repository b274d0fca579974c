"""DS003: the valid-size lattice of each dynamic axis, found by probing (dynashape.analysis.lattice)."""

from __future__ import annotations

import models as M
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dynashape.analysis.lattice import LatticeScanner, check_ranges, snap_down, snap_up
from dynashape.analysis.probe import Prober
from dynashape.findings import AxisLattice
from dynashape.pipeline.check import check_model
from dynashape.shapes import parse_ranges

S0 = {"x": (1, 4, 128, 128)}


def _lat(report, axis: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    lat = report.lattice["x"][axis]
    return lat.min, lat.multiple


def _ds003(report):  # type: ignore[no-untyped-def]
    return {f.details["axis"]: f for f in report.findings if f.rule == "DS003"}


@pytest.mark.parametrize("export_shape", [S0, None])
def test_unet_maxpool_stride_32_with_x2_joins(export_shape: dict | None) -> None:
    # Five MaxPool 2x2/2 (floor): level i has floor(H / 2**i) rows. Decoder join i adds
    # up(level i+1) = 2*floor(H / 2**(i+1)) to level i = floor(H / 2**i): equal iff
    # floor(H / 2**i) is even. For i = 0..4 together: bits 0..4 of H are zero, i.e. H % 32 == 0.
    # Minimum: the deepest level needs floor(H/32) >= 1, so 32.
    report = check_model(M.unet(), export_shape=export_shape)
    assert _lat(report, 2) == (32, 32)
    assert _lat(report, 3) == (32, 32)
    assert _lat(report, 0) == (1, 1)  # batch is free
    found = _ds003(report)
    assert sorted(found) == [2, 3]
    h = found[2]
    assert (h.severity, h.detected_by, h.fixable) == ("warning", "lattice", False)
    assert h.message.startswith("H of 'x' must be a multiple of 32, at least 32")
    if export_shape is not None:
        # at 129 every floor(129 / 2**i), i >= 1, is even (64, 32, 16, 8): only join0 (128 vs 129) fails
        assert h.node == "join0"
        assert "at H = 129: Add node 'join0'" in h.message


def test_unet_strided_conv_reports_the_deepest_join() -> None:
    # 3x3/2 pad 1 convs round up: level i has ceil(H / 2**i) rows. At H = 129: 65, 33, 17, 9, 5;
    # up(5) = 10 != 9, so the deepest join (join4) fails first. Joins need every ceil(H / 2**i)
    # even for i = 0..4 -> again H % 32 == 0 (H even, then H/2 even, ...), minimum 32.
    report = check_model(M.unet(down="conv"), export_shape=S0)
    assert _lat(report, 2) == (32, 32) and _lat(report, 3) == (32, 32)
    assert _ds003(report)[2].node == "join4"


def test_a_band_of_valid_residues_is_not_taken_for_a_multiple() -> None:
    # Only the stride-16 level is joined with up(stride-32): ceil(H/16) == 2*ceil(H/32) holds for
    # H mod 32 in {0, 17..31}. From 224, a step of 31 walks down that band (255, 286, 317, 348
    # are valid), so four steps alone took 31 (then 29) for the multiple and claimed sizes such
    # as 79 that fail; every multiple of 32 is valid.
    model = M.deepest_join()
    prober = Prober(model)
    valid = {h for h in range(200, 260) if prober.at({"x": (1, 4, h, 224)}).ok}
    assert valid == set(range(209, 225)) | set(range(241, 257))
    report = check_model(model, export_shape={"x": (1, 4, 224, 224)})
    assert _lat(report, 2) == (32, 32) and _lat(report, 3) == (32, 32)
    assert all(prober.at({"x": (1, 4, h, 224)}).ok for h in range(32, 1025, 32))


@pytest.mark.parametrize("export_shape", [S0, None])
def test_output_follows_input_after_stride_16(export_shape: dict | None) -> None:
    # Four MaxPool /2 then one x16 resize: the output has 16 * floor(H / 16) rows, equal to H
    # iff H % 16 == 0; minimum 16 (below it floor(H/16) = 0). No join fails: it is the output.
    report = check_model(M.stride_then_upsample(4), export_shape=export_shape)
    assert _lat(report, 2) == (16, 16) and _lat(report, 3) == (16, 16)
    h = _ds003(report)[2]
    assert h.node == ""
    if export_shape is not None:
        assert "output 'y' axis 2 is 128 for input size 129 (it should follow it)" in h.message


def test_no_restriction_means_multiple_one() -> None:
    report = check_model(M.plain_conv(), export_shape=S0)
    assert {a: (lat.min, lat.multiple) for a, lat in report.lattice["x"].items()} == {
        0: (1, 1), 2: (1, 1), 3: (1, 1)
    }
    assert _ds003(report) == {}
    # a single MaxPool 2x2/2 without join: every size from 2 on
    pooled = check_model(M.ordinary_pooling(), export_shape=S0)
    assert _lat(pooled, 2) == (2, 1) and _ds003(pooled) == {}


def test_floor_pooling_without_full_resolution_join_needs_a_real_multiple() -> None:
    # skip = floor(W/2), deep = floor(skip/2), up = 2*deep must equal skip: floor(W/2) even,
    # i.e. W % 4 in {0, 1}. 97 works but 98 does not, so "multiple 1" would be wrong; the
    # largest lattice inside the valid set is the multiples of 4 (minimum 4).
    model = M.resize_with_scales()
    prober = Prober(model)
    assert prober.at({"x": (1, 4, 64, 97)}).ok
    assert not prober.at({"x": (1, 4, 64, 98)}).ok
    report = check_model(model, export_shape={"x": (1, 4, 64, 96)})
    assert _lat(report, 3) == (4, 4) and _lat(report, 2) == (4, 4)
    w = _ds003(report)[3]
    assert w.node == M.Y  # the Add joining skip (49 columns) and up (48)
    assert "at W = 98: Add node 'y'" in w.message


def test_the_lattice_is_that_of_the_fixed_model() -> None:
    # the frozen resize fixed to Shape(skip) joins at any size: only the two pools' minimum remains
    report = check_model(M.resize_skip(64, 96), export_shape={"x": (1, 4, 64, 96)})
    assert report.applied
    assert _lat(report, 2) == (4, 1) and _lat(report, 3) == (4, 1)
    assert _ds003(report) == {}


def test_scanner_directly() -> None:
    # a MaxPool /2 -> x2 join to the input: valid iff H is even
    model = M.unet(depth=1)
    lattice, _ = LatticeScanner(model, {"x": (1, 4, 128, 64)}).scan()
    assert (lattice["x"][2].min, lattice["x"][2].multiple) == (2, 2)
    assert lattice["x"][2].contains(130) and not lattice["x"][2].contains(131)


def test_a_lattice_never_excludes_the_export_shape(caplog: pytest.LogCaptureFixture) -> None:
    # "exported" at 129 rows, where this graph is not consistent: the export shape is wrong (or a
    # rewrite broke the graph there). The model is correct at its true export shape by
    # construction, so no lattice is claimed for that axis ("works only at 129" was reported
    # before, a lattice that excludes the export shape) and the problem is logged as a bug
    model = M.unet(depth=1)
    scanner = LatticeScanner(model, {"x": (1, 4, 129, 64)})
    with caplog.at_level("WARNING", logger="dynashape.analysis.lattice"):
        lattice, findings = scanner.scan()
    assert lattice == {} and findings == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "bug: the graph is not consistent at the export shape x:1x4x129x64 (Add node 'join0': Incompatible "
        "dimensions): either the export shape is wrong or a rewrite broke the graph there; no lattice is reported"
    ]
    assert len(scanner.problems) == 1
    # the same model at a consistent export shape has its lattice
    assert LatticeScanner(model, {"x": (1, 4, 128, 64)}).scan()[0]["x"][2].contains(128)
    report = check_model(model, export_shape={"x": (1, 4, 129, 64)})
    assert any("not consistent at the export shape" in n for n in report.notes)
    assert "the model is not consistent there" in report.export_shape_note


def _odd_sizes_only() -> onnx.ModelProto:
    # a 3x3/2 conv without padding, then a 3x3/2 transposed conv: 2 * floor((H - 3) / 2) + 3 rows,
    # equal to H (the join with the input holds) iff H is odd
    g = M.GraphBuilder()
    down = g.conv(M.X, M.C, M.C, "down", k=3, stride=2, pad=0)
    weight = (0.1 * g.rng.standard_normal((M.C, M.C, 3, 3))).astype(np.float32)
    g.inits.append(numpy_helper.from_array(weight, "up.weight"))
    up = g.op("ConvTranspose", [down, "up.weight"], "up", kernel_shape=[3, 3], strides=[2, 2])
    g.op("Add", [M.X, up], M.Y)
    return g.model([M.Y])


def test_an_offset_lattice_holds_its_export_size() -> None:
    # odd sizes only: {3, 5, 7, ...}. Read as "multiples of 2 from 3" it excluded the export size
    # 65 itself (and claimed 4, 6, ... instead)
    model = _odd_sizes_only()
    prober = Prober(model)
    assert [h for h in range(2, 12) if prober.at({"x": (1, 4, h, 9)}).ok] == [3, 5, 7, 9, 11]
    report = check_model(model, export_shape={"x": (1, 4, 65, 65)})
    lat = report.lattice["x"][2]
    assert (lat.min, lat.multiple) == (3, 2)
    assert lat.contains(65) and lat.contains(3) and not lat.contains(64) and not lat.contains(4)
    assert (snap_up(64, lat), snap_down(64, lat), snap_up(1, lat)) == (65, 63, 3)
    h = _ds003(report)[2]
    assert h.message.startswith("H of 'x' must be 3 plus a multiple of 2 (3, 5, 7, ...)")
    (off,) = [f for f in check_ranges(report.lattice, parse_ranges("x:1x4x[60..70]x65", ["x"]))
              if f.details["axis"] == 2]
    assert off.fix.startswith("use [61..69:2]")
    for size in (3, 5, 63, 65, 67):
        assert prober.at({"x": (1, 4, size, 65)}).ok == lat.contains(size)


# -- requested ranges ------------------------------------------------------------------------------

def test_check_ranges_reports_off_lattice_ranges() -> None:
    lattice = {"x": {0: AxisLattice(1, 1), 2: AxisLattice(32, 32), 3: AxisLattice(32, 32)}}
    on = parse_ranges("x:[1..4]x4x[64..512:32]x[32..1024:64]")
    assert check_ranges(lattice, on) == []
    off = parse_ranges("x:[1..4]x4x[64..512:32]x[100..200]")
    (finding,) = check_ranges(lattice, off)
    assert (finding.rule, finding.severity, finding.detected_by) == ("DS003", "error", "lattice")
    assert finding.details == {"input": "x", "axis": 3}
    # 101 sizes, 3 of them (128, 160, 192) on the lattice
    assert "includes 98 size(s) off the lattice (multiple of 32, min 32), e.g. 100" in finding.message
    assert finding.breaks_at == "100, 101, 102, 103, 104"
    assert finding.fix == "use [128..192:32] for this axis, or --pad-to 32"
    (below,) = check_ranges(lattice, parse_ranges("x:1x4x[8..16:8]x64"))
    assert below.fix == "no size of the range is valid; use --pad-to 32"
    # a step that walks off the lattice: 64, 80 (off), 96, ...
    (stepped,) = check_ranges(lattice, parse_ranges("x:1x4x[64..128:16]x64"))
    assert "includes 2 size(s) off the lattice" in stepped.message and stepped.breaks_at == "80, 112"


def test_check_model_with_ranges() -> None:
    ranges = parse_ranges("x:[1..2]x4x[64..512:32]x[100..200]")
    report = check_model(M.unet(), export_shape=S0, ranges=ranges)
    errors = [f for f in report.findings if f.rule == "DS003" and f.severity == "error"]
    assert [f.details["axis"] for f in errors] == [3]
    ok = check_model(M.unet(), export_shape=S0, ranges=parse_ranges("x:[1..2]x4x[64..512:32]x[32..256:32]"))
    assert [f for f in ok.findings if f.severity == "error"] == []


def test_snap_helpers() -> None:
    lat = AxisLattice(32, 32)
    assert snap_down(100, lat) == 96 and snap_up(100, lat) == 128
    assert snap_down(10, lat) == 32 and snap_up(10, lat) == 32
    assert snap_up(96, lat) == 96
