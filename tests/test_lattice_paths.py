"""Lattice details: the paths of joins that come apart, outputs that follow, suggested profiles."""

from __future__ import annotations

import models as M

from dynashape.check import check_model
from dynashape.demo import demo_onnx_path
from dynashape.lattice import suggest_profile
from dynashape.model import load_model
from dynashape.shapes import parse_ranges


def test_join_off_lattice_names_both_paths() -> None:
    report = check_model(M.unet())
    ds003 = [f for f in report.findings if f.rule == "DS003"]
    assert ds003 and all(f.node for f in ds003)
    paths = ds003[0].details["paths"]
    assert len(paths) == 2
    assert any("MaxPool /2" in p for p in paths)  # one operand went through the downsampling
    assert "the joined tensors come from" in ds003[0].message


def test_demo_output_follows_input_after_fix() -> None:
    report = check_model(load_model(demo_onnx_path()))
    assert report.outputs_follow == {"output": {"input[2]": True, "input[3]": True}}


def test_suggested_profile_snaps_onto_lattice() -> None:
    report = check_model(load_model(demo_onnx_path()))
    profile = suggest_profile(parse_ranges("input:[1..4]x3x[100..1000]x[130..1010]"), report.lattice)
    p = profile.inputs["input"]
    assert p.min == (1, 3, 112, 144) and p.max == (4, 3, 992, 1008)
    assert all(d % 16 == 0 for d in p.opt[2:]) and p.min <= p.opt <= p.max


def test_check_reports_a_default_suggestion() -> None:
    report = check_model(load_model(demo_onnx_path()))
    assert report.suggested_profile is not None
    assert report.suggested_profile.inputs["input"].opt == (1, 3, 512, 512)
