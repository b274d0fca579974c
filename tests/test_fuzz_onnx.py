"""Mutation fuzz of the ONNX loader and `check` (tests/fuzz_onnx.py), and the crashes it found.

``test_fuzz`` runs cases for DYNASHAPE_FUZZ_SECONDS (default 20) from case DYNASHAPE_FUZZ_START
(default 0), so the short run repeats the same cases; a crash (or a rule that met a node it could
not read, which check turns into a refusal and a note) prints the command that replays it.
Every crash found so far is a named case below, built with an explicit mutation (not through the
fuzzer's random choices, so it stays the same case when the mutators change).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import fuzz_onnx as F
import onnx
import pytest
from onnx import helper, numpy_helper

from dynashape.errors import DynashapeError
from dynashape.model import load_model
from dynashape.pipeline.check import UNREADABLE, check_model


def test_fuzz(tmp_path: Path) -> None:
    budget = float(os.environ.get("DYNASHAPE_FUZZ_SECONDS", "20"))
    start = int(os.environ.get("DYNASHAPE_FUZZ_START", "0"))
    names = sorted(F.seeds())
    crashes: list[F.Outcome] = []
    results: dict[str, int] = {}
    begin = time.monotonic()
    n = start
    while time.monotonic() - begin < budget and len(crashes) < 10:
        outcome = F.run_case(F.make_case(names[n % len(names)], n), tmp_path, cli=n % 10 == 0)
        kind = outcome.result.split(":")[0]
        results[kind] = results.get(kind, 0) + 1
        if kind in ("CRASH", "guarded"):  # guarded: a rule met a node it could not read (check's backstop)
            crashes.append(outcome)
        n += 1
    print(f"fuzz: {n - start} cases in {time.monotonic() - begin:.0f} s: {results}")
    report = [f"{o.case.replay}  # {'; '.join(o.case.mutations)}\n{o.traceback or o.result}" for o in crashes]
    assert not crashes, "crashes (replay each with the command shown):\n" + "\n".join(report)
    assert n > start, "no case ran"


def test_cases_replay_exactly() -> None:
    a, b = F.make_case("demo", 12345), F.make_case("demo", 12345)
    assert a.data == b.data and a.mutations == b.mutations
    assert F.make_case("demo", 12346).data != a.data or F.make_case("demo", 12346).mutations != a.mutations


# ------------------------------------------------------------------------------------- regressions


def seed(name: str) -> onnx.ModelProto:
    return onnx.load_from_string(F.seeds()[name])


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def input_dim(model: onnx.ModelProto, axis: int) -> onnx.TensorShapeProto.Dimension:
    return model.graph.input[0].type.tensor_type.shape.dim[axis]


def set_attr(n: onnx.NodeProto, name: str, value: object) -> None:
    for a in n.attribute:
        if a.name == name:
            a.CopyFrom(helper.make_attribute(name, value))
            return
    n.attribute.append(helper.make_attribute(name, value))


def constant_tensor(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return node(model, name).attribute[0].t


def loaded_and_checked(model: onnx.ModelProto, tmp_path: Path) -> object:
    """The oracle on one model: load it from a file and check it (a DynashapeError propagates)."""
    path = tmp_path / "case.onnx"
    data = model.SerializeToString()
    path.write_bytes(data)
    report = check_model(load_model(path), path=str(path))
    assert path.read_bytes() == data
    assert not [n for n in report.notes if UNREADABLE in n], report.notes
    return report


def _elem_type_255(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.elem_type = 255  # was: onnx_ir SerdeError in the export-shape estimate


def _init_scalar_dims(m: onnx.ModelProto) -> None:
    del init(m, "onnx::Conv_92").dims[:]  # was: ValueError (cannot reshape) in the probe


def _init_dtype(m: onnx.ModelProto) -> None:
    init(m, "conv.weight").data_type = onnx.TensorProto.BOOL  # was: ValueError in numpy_helper.to_array


def _constant_dtype(m: onnx.ModelProto) -> None:
    constant_tensor(m, "/Constant_2").data_type = onnx.TensorProto.FLOAT16  # was: ValueError in the probe


def _negative_dim(m: onnx.ModelProto) -> None:
    input_dim(m, 2).dim_value = -(2**63)  # was: a C++ assertion in ONNX shape inference aborted the process


def _huge_dim(m: onnx.ModelProto) -> None:
    input_dim(m, 1).dim_value = 2**40


def _ir_version_3(m: onnx.ModelProto) -> None:
    m.ir_version = 3  # was: ValidationError from the checker on the rewritten model


def _float_axes(m: onnx.ModelProto) -> None:
    n = node(m, "ax_a")  # was: RuntimeTypeError (float + int64 Add) folding the axes for DS016
    del n.attribute[:]
    n.attribute.append(helper.make_attribute("value_float", 1.5))


def _value_info_rank(m: onnx.ModelProto) -> None:
    m.graph.value_info.append(helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [0, None, 2, None, 0]))


REFUSED: dict[str, tuple[str, Callable[[onnx.ModelProto], None], str]] = {
    "input_elem_type_255": ("strip_pool", _elem_type_255, r"tensor 'x' has element type 255, which is not an ONNX"),
    "initializer_dims_disagree_with_data": (
        "demo", _init_scalar_dims, r"initializer 'onnx::Conv_92' declares dims \[\] of FLOAT \(4 bytes\) but holds"),
    "initializer_dtype_disagrees_with_data": ("custom_domain", _init_dtype, r"initializer 'conv.weight' .* of BOOL"),
    "constant_dtype_disagrees_with_data": ("demo", _constant_dtype, r"Constant node '/Constant_2' declares dims"),
    "negative_input_dim": ("slice_axes", _negative_dim, r"axis 2 of size -9223372036854775808 \(negative\)"),
    "huge_input_dim": ("strip_pool", _huge_dim, r"axis 1 of size 1099511627776, over 2147483647"),
    "ir_version_3": ("slice_axes", _ir_version_3, r"IR version 3 is older than 4"),
    "float_constant_into_int64_add": ("slice_axes", _float_axes,
                                      r"type and shape inference rejects the model \(.*axes_sum"),
    "value_info_contradicts_input": ("yolo_grid", _value_info_rank,
                                     r"the value_info 'x' has rank 5, the graph input of that name rank 4"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_model_is_refused_in_one_line(case: str, tmp_path: Path) -> None:
    seed_name, mutate, message = REFUSED[case]
    model = seed(seed_name)
    mutate(model)
    with pytest.raises(DynashapeError, match=message) as info:
        loaded_and_checked(model, tmp_path)
    assert "\n" not in str(info.value) and "case.onnx: " in str(info.value)


def test_graph_output_named_like_the_input_with_another_rank(tmp_path: Path) -> None:
    """An output renamed 'x' (the input's name) declaring rank 3: was an IndexError in the lattice's
    output-follows-input scan (the export shape took the output's rank)."""
    model = seed("slice_axes")
    model.graph.output[0].name = "x"
    del model.graph.output[0].type.tensor_type.shape.dim[1]
    with pytest.raises(DynashapeError, match=r"the graph output 'x' has rank 3, the graph input of that name rank 4"):
        loaded_and_checked(model, tmp_path)


def test_two_d_slice_axes_are_left_to_inference(tmp_path: Path) -> None:
    """Slice axes computed as a [1, 1] tensor: was a TypeError in DS014's bound reader."""
    model = seed("slice_axes")
    constant_tensor(model, "ax_a").dims.append(1)
    loaded_and_checked(model, tmp_path)


@pytest.mark.parametrize("which", ["starts", "ends"])
def test_slice_with_empty_bounds_is_refused_by_the_rule(which: str, tmp_path: Path) -> None:
    """Was an IndexError in DS014: starts/ends shorter than axes."""
    model = seed("slice_axes")
    constant_tensor(model, which).CopyFrom(numpy_helper.from_array(__import__("numpy").zeros(0, "int64"), which))
    report = loaded_and_checked(model, tmp_path)
    reasons = [r.reason for r in report.refusals if r.node == "crop"]  # type: ignore[attr-defined]
    assert any("differ in length" in r for r in reasons), reasons


def test_custom_domain_op_named_like_a_standard_op_is_not_read_as_one(tmp_path: Path) -> None:
    """com.example::Reshape with one input: was an IndexError in DS005 (rules matched the op_type alone)."""
    model = seed("custom_domain")
    node(model, "mystery").op_type = "Reshape"
    report = loaded_and_checked(model, tmp_path)
    assert [f.rule for f in report.findings] == ["DS017"]  # type: ignore[attr-defined]


def test_pool_in_a_bogus_domain_with_float_strides(tmp_path: Path) -> None:
    """Was a TypeError (as_ints on a FLOAT attribute) in the export-shape estimate."""
    model = seed("demo")
    pool = node(model, "/AveragePool")
    pool.domain = "bogus.domain"
    set_attr(pool, "strides", 1.5)
    model.opset_import.append(helper.make_opsetid("bogus.domain", 1))
    report = loaded_and_checked(model, tmp_path)
    rules = {(f.rule, f.node) for f in report.findings}  # type: ignore[attr-defined]
    assert ("DS017", "/AveragePool") in rules and ("DS001", "/AveragePool") not in rules
    assert ("DS001", "/AveragePool_1") in rules  # its twin beside it is still checked


def test_pool_that_is_a_graph_output_is_rewritten(tmp_path: Path) -> None:
    """Was a ValueError from onnx_ir (replace_all_uses_with on a graph output) in DS001's rewrite."""
    model = seed("custom_domain")
    mystery = node(model, "mystery")
    mystery.domain, mystery.op_type = "", "Softmax"
    report = loaded_and_checked(model, tmp_path)
    assert any(a.startswith("pool: AveragePool kernel [32, 1] -> ReduceMean") for a in report.applied)  # type: ignore
    assert [o.name for o in report.fixed_model.graph.output] == ["pool"]  # type: ignore[attr-defined]


def test_constant_subgraph_that_fails_to_evaluate_is_not_folded(tmp_path: Path) -> None:
    """Gather(axes_a, axes_b = 1) out of bounds: was an IndexError from onnx.reference in DS016's fold."""
    model = seed("slice_axes")
    node(model, "axes_sum").op_type = "Gather"
    report = loaded_and_checked(model, tmp_path)
    assert any("not folded: evaluating its constants fails" in a for a in report.applied)  # type: ignore


def test_pool_kernel_longer_than_its_strides_behind_a_custom_op(tmp_path: Path) -> None:
    """Was an IndexError in the export-shape estimate (no inference can check the pool there)."""
    model = seed("custom_domain")
    set_attr(node(model, "pool"), "kernel_shape", [1, 2, 3, 4, 5])
    loaded_and_checked(model, tmp_path)


def test_output_rank_that_differs_from_the_input(tmp_path: Path) -> None:
    """Relu -> Squeeze on the output: was an IndexError in the lattice scan's output check."""
    model = seed("if_on_width")
    node(model, "y").op_type = "Squeeze"
    loaded_and_checked(model, tmp_path)


@pytest.mark.parametrize("opset", [17, 21])
def test_two_d_reshape_target(opset: int, tmp_path: Path) -> None:
    """A [3, 1] reshape target: was a TypeError in the probe, the export-shape estimate and DS005."""
    model = seed("reshape_baked")
    init(model, "flat_shape").dims.append(1)
    for imp in model.opset_import:
        if imp.domain == "":
            imp.version = opset
    try:
        loaded_and_checked(model, tmp_path)
    except DynashapeError as exc:  # refused by inference at some opsets: fine, in one line
        assert "\n" not in str(exc)


def test_fuzz_replay_names_the_case() -> None:
    case = F.make_case("demo", 7)
    assert re.fullmatch(r"python -m tests\.fuzz_onnx demo 7", case.replay)


def test_negative_reshape_entry_before_a_slice(tmp_path: Path) -> None:
    """YOLO's view(N, na, -2**40, ny, nx): the probe sees a negative dim, which the slices after it
    then read; was a ValueError ("length should not be negative") in DS007's size derivation."""
    import numpy as np

    model = seed("yolo_grid")
    constant_tensor(model, "view_a").CopyFrom(numpy_helper.from_array(np.array([3, -(2**40)], np.int64), "view_a"))
    loaded_and_checked(model, tmp_path)


def test_two_d_slice_bounds_behind_a_contrib_op(tmp_path: Path) -> None:
    """Slice(Shape(x)) ends given as [[1, 2], [3, 4]], its input behind com.microsoft::Gelu (so
    inference cannot refuse it): was a TypeError in DS007's size derivation."""
    import numpy as np

    model = seed("resize_skip")
    end = "up_sizes_nc_ends"
    constant_tensor(model, end).CopyFrom(numpy_helper.from_array(np.array([[1, 2], [3, 4]], np.int64), end))
    shape = node(model, "up_sizes_nc_shape")
    gelu = helper.make_node("Gelu", [shape.output[0]], ["gelu_out"], name="gelu", domain="com.microsoft")
    for n in model.graph.node:
        n.input[:] = ["gelu_out" if i == shape.output[0] else i for i in n.input]
    model.graph.node.insert(list(model.graph.node).index(shape) + 1, gelu)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    report = loaded_and_checked(model, tmp_path)
    assert "DS017" in [f.rule for f in report.findings]  # type: ignore[attr-defined]
