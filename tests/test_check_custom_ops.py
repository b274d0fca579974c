"""Ops ONNX shape inference does not know (custom domains, com.microsoft): the graph after them is
reported as unchecked (DS017) and the lattice as partial, never as clean; the rest is still checked."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import models_reports as R
import onnx
import pytest
from fuzz_onnx import splice_after
from onnx import TensorProto, helper

from dynashape.analysis.context import unchecked_region
from dynashape.cli import main
from dynashape.demo import __file__ as demo_init
from dynashape.model import load_model
from dynashape.pipeline.check import check_model
from dynashape.rules import rule_catalogue

DEMO = Path(demo_init).parent / "demo.onnx"


def with_custom_op(model: onnx.ModelProto, after: str, *, domain: str = "com.example",
                   op_type: str = "MyOp") -> onnx.ModelProto:
    """``model`` with a one-in one-out ``domain::op_type`` node on the first output of node ``after``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pos = next(i for i, n in enumerate(out.graph.node) if n.name == after)
    splice_after(out, pos, domain, op_type, "/custom/MyOp")
    onnx.checker.check_model(out)
    return out


def rules_of(report: object) -> list[str]:
    return [f.rule for f in report.findings]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def demo() -> onnx.ModelProto:
    return onnx.load(DEMO)


def test_custom_op_early_in_the_demo_is_reported_unchecked_not_clean(demo: onnx.ModelProto) -> None:
    model = with_custom_op(demo, "/stage1/stage1.2/Relu")
    report = check_model(model)
    ds017 = [f for f in report.findings if f.rule == "DS017"]
    assert len(ds017) == 1
    f = ds017[0]
    assert f.node == "/custom/MyOp" and f.op == "com.example::MyOp" and not f.fixable
    assert "com.example::MyOp" in f.message and "NOT checked" in f.message and "'output'" in f.message
    assert f.details["domain"] == "com.example" and f.details["unchecked_outputs"] == ["output"]
    assert "/Resize" in f.details["unchecked_nodes"] and "/AveragePool" in f.details["unchecked_nodes"]
    # the lattice says it is partial, in the report and in its JSON
    assert report.partial.startswith("partial:") and "com.example::MyOp" in report.partial
    data = report.to_json()
    assert data["lattice_partial"] == report.partial
    assert all(axis["partial"] for axes in data["lattice"].values() for axis in axes.values())


def test_standard_ops_only_have_no_unchecked_region(demo: onnx.ModelProto) -> None:
    report = check_model(demo)
    assert "DS017" not in rules_of(report)
    assert report.partial == "" and report.to_json()["lattice_partial"] is None
    assert not any(lat.partial for axes in report.lattice.values() for lat in axes.values())
    assert not unchecked_region(demo)


def test_custom_op_after_the_hazards_keeps_them(demo: onnx.ModelProto) -> None:
    """The demo's frozen resize and pools are upstream of the op: still found (and fixable)."""
    model = with_custom_op(demo, "/classifier/Conv")
    report = check_model(model)
    found = rules_of(report)
    assert found.count("DS001") == 2 and "DS002" in found and "DS017" in found
    assert all(f.fixable for f in report.findings if f.rule in ("DS001", "DS002"))
    ds017 = next(f for f in report.findings if f.rule == "DS017")
    assert ds017.details["unchecked_nodes"] == ["/Resize_1"]  # only the last resize is behind it
    assert report.partial


def test_custom_op_beside_a_hazard_leaves_the_other_branch_checked() -> None:
    """Conv -> (custom op) and Conv -> AveragePool [32, 1] side by side: the pool is found."""
    import models as M

    g = M.GraphBuilder()
    c = g.conv(M.X, M.C, M.C, "conv")
    g.nodes.append(helper.make_node("Mystery", [c], ["mystery"], name="mystery", domain="com.example"))
    g.op("AveragePool", [c], "pool", kernel_shape=[32, 1], strides=[1, 1])
    x = helper.make_tensor_value_info(M.X, TensorProto.FLOAT, ["N", M.C, "H", "W"])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 4) for n in ("pool", "mystery")]
    graph = helper.make_graph(g.nodes, "beside", [x], outs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    report = check_model(model, export_shape={"x": (1, M.C, 32, 32)})
    assert "DS001" in rules_of(report)
    ds017 = next(f for f in report.findings if f.rule == "DS017")
    assert ds017.details["unchecked_outputs"] == ["mystery"] and ds017.details["unchecked_nodes"] == []


def test_a_pool_behind_a_custom_op_is_named_as_unchecked() -> None:
    report = check_model(R.custom_domain())
    assert "DS001" not in rules_of(report)  # its input's size is unknown: no rule can say
    ds017 = next(f for f in report.findings if f.rule == "DS017")
    assert ds017.details["unchecked_nodes"] == ["pool"] and ds017.details["unchecked_outputs"] == ["pool"]


def test_model_local_function_is_not_opaque() -> None:
    """An op defined by a function in the model is inferred by ONNX through its body."""
    fn = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    node = helper.make_node("Twice", ["x"], ["y"], name="twice", domain="local")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(helper.make_graph([node], "fn", [x], [y]), functions=[fn],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    assert not unchecked_region(model)
    assert "DS017" not in rules_of(check_model(model))


def test_ort_optimized_model_with_contrib_ops(demo: onnx.ModelProto, tmp_path: Path) -> None:
    """ONNX Runtime's extended optimizations fuse Conv+Relu into com.microsoft::FusedConv: the
    check names the first one, says the rest is unchecked and points at the unoptimized model."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(DEMO), options, providers=["CPUExecutionProvider"])
    model = load_model(tmp_path / "ort.onnx")
    assert any(n.domain == "com.microsoft" for n in model.graph.node)
    report = check_model(model)
    ds017 = [f for f in report.findings if f.rule == "DS017"]
    assert len(ds017) == 1 and ds017[0].op == "com.microsoft::FusedConv"
    assert "ONNX Runtime's optimizations" in ds017[0].fix
    assert "com.microsoft::FusedConv" in ds017[0].details["opaque_inside"]
    assert report.partial


def test_cli_check_never_says_clean_with_an_unchecked_region(demo: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "custom.onnx"
    onnx.save(with_custom_op(demo, "/stage1/stage1.2/Relu"), path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["check", str(path), "--json"])
    assert rc == 1
    data = json.loads(out.getvalue())
    assert "DS017" in [f["rule"] for f in data["findings"]] and data["lattice_partial"]
    assert ("DS017", ) in [(r,) for r, _ in rule_catalogue()]
