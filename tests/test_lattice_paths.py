"""Lattice details: the paths of joins that come apart, outputs that follow, suggested profiles."""

from __future__ import annotations

from pathlib import Path

import models as M
import numpy as np
import onnx
import pytest
from onnx import helper

from dynashape.analysis.lattice import suggest_profile
from dynashape.demo import demo_onnx_path
from dynashape.model import load_model
from dynashape.pipeline.check import check_model
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


def _pooled(op: str, **attrs: object) -> onnx.ModelProto:
    """x -> Conv -> ``op``: a downsampling pool, or a global one."""
    w = onnx.numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["y"], **attrs)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, "h", "w"])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_downsampled_output_follows_and_a_global_pool_has_nothing_to_follow() -> None:
    half = check_model(_pooled("AveragePool", kernel_shape=[2, 2], strides=[2, 2]))
    assert half.outputs_follow == {"y": {"x[2]": True, "x[3]": True}}
    assert check_model(_pooled("GlobalAveragePool")).outputs_follow == {}


def test_an_output_of_a_fixed_size_does_not_follow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from dynashape.cli import main
    from dynashape.model import save_model

    fixed = _pooled("Resize", mode="nearest")  # sizes come in as a constant input below
    sizes = onnx.numpy_helper.from_array(np.array([1, 8, 32, 32], np.int64), "sizes")
    fixed.graph.initializer.append(sizes)
    fixed.graph.node[1].input.extend(["", "", "sizes"])
    report = check_model(fixed)
    assert report.outputs_follow["y"] == {"x[2]": False, "x[3]": False}
    main(["check", str(save_model(fixed, tmp_path / "m.onnx"))])
    assert "keeps one size on x[2], x[3] whatever the input size" in capsys.readouterr().out
