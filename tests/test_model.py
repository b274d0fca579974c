"""Loading, validating and saving models (dynashape.model): every bad file is one clear error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import models as M
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dynashape.errors import DynashapeError
from dynashape.model import (
    check_output_path,
    concrete_shapes,
    graph_inputs,
    input_names,
    load_model,
    read_export_shape,
    require_dynamic,
    save_model,
    sha256_file,
    write_export_shape,
    write_json_atomic,
)
from dynashape.pipeline.check import check_model


def _static_model(opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "static", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.onnx"
    path.write_bytes(M.resize_skip(64, 64).SerializeToString())
    return path


def test_good_file_loads_with_every_node_named(model_file: Path, tmp_path: Path) -> None:
    model = M.resize_skip(64, 64)
    for node in model.graph.node[:3]:
        node.name = ""
    model.graph.node[3].name = model.graph.node[4].name  # a duplicate
    path = tmp_path / "unnamed.onnx"
    path.write_bytes(model.SerializeToString())
    loaded = load_model(path)
    names = [n.name for n in loaded.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert names[0] == f"{loaded.graph.node[0].op_type}_0"
    assert input_names(loaded) == ["x"]
    info = graph_inputs(loaded)[0]
    assert info.dims == ("N", 4, "H", "W") and info.dynamic_axes == [0, 2, 3]
    assert info.describe() == "Nx4xHxW"


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file(model_file: Path, fraction: float) -> None:
    data = model_file.read_bytes()
    model_file.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(DynashapeError, match=r"good\.onnx: not a valid ONNX|good\.onnx: the ONNX checker"):
        load_model(model_file)


@pytest.mark.parametrize(
    "content",
    [b"def forward(x):\n    return x\n", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"\x00" * 64],
)
def test_not_an_onnx_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(DynashapeError, match=r"model\.onnx: not a valid ONNX"):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DynashapeError, match=r"nope\.onnx: no such file"):
        load_model(tmp_path / "nope.onnx")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DynashapeError, match=r"is a directory"):
        load_model(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(DynashapeError, match=r"the file is empty"):
        load_model(path)


def test_external_data_loads_and_a_missing_data_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(M.plain_conv(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    model = load_model(path)
    assert all(t.HasField("raw_data") for t in model.graph.initializer)  # the weights came along
    (tmp_path / "ext.data").unlink()
    with pytest.raises(DynashapeError, match=r"external data cannot be read .*keep the data files beside"):
        load_model(path)


def test_opset_older_than_11(tmp_path: Path) -> None:
    path = tmp_path / "old.onnx"
    path.write_bytes(_static_model(opset=10).SerializeToString())
    with pytest.raises(DynashapeError, match=r"opset 10 is older than 11.*opset_version>=11"):
        load_model(path)


def test_checker_rejection_is_a_user_error(tmp_path: Path) -> None:
    model = _static_model()
    model.graph.node[0].input[0] = "undefined_tensor"
    path = tmp_path / "broken.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(DynashapeError, match=r"broken\.onnx: the ONNX checker rejects the model"):
        load_model(path)


def test_no_dynamic_axis_says_there_is_nothing_to_check() -> None:
    model = _static_model()
    with pytest.raises(DynashapeError, match=r"static\.onnx: no input has a dynamic axis \(x:1x4x8x8\)"):
        require_dynamic(model, "static.onnx")
    with pytest.raises(DynashapeError, match=r"nothing to check"):
        check_model(model)
    require_dynamic(M.plain_conv())  # dynamic: no error


def test_initializers_listed_as_inputs_are_not_inputs() -> None:
    model = M.plain_conv()
    weight = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims)))
    assert input_names(model) == ["x"]


def test_export_shape_metadata_round_trip() -> None:
    model = M.plain_conv()
    assert read_export_shape(model) is None
    write_export_shape(model, {"x": (1, 4, 96, 64)})
    write_export_shape(model, {"x": (1, 4, 64, 96)})  # overwrites, no duplicate entry
    assert [p.key for p in model.metadata_props] == ["dynashape.export_shape"]
    assert read_export_shape(model) == {"x": (1, 4, 64, 96)}
    assert check_model(model).export_shape_source == "metadata"


def test_concrete_shapes_needs_every_dynamic_input() -> None:
    model = M.plain_conv()
    assert concrete_shapes(model, {"x": (1, 4, 8, 8)}) == {"x": (1, 4, 8, 8)}
    assert concrete_shapes(_static_model(), {}) == {"x": (1, 4, 8, 8)}
    with pytest.raises(DynashapeError, match=r"no shape for input 'x' \(Nx4xHxW\)"):
        concrete_shapes(model, {})


# -- writing ---------------------------------------------------------------------------------------

def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_save_is_atomic_and_loadable(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    save_model(M.plain_conv(), out)
    assert load_model(out).graph.node[0].name == "conv1"
    assert _leftovers(tmp_path) == []


def test_written_files_get_the_usual_permissions_not_the_temp_files(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_model(M.plain_conv(), tmp_path / "out.onnx")
        write_json_atomic(tmp_path / "out.json", {})
    finally:
        os.umask(old)
    for name in ("out.onnx", "out.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_failed_save_leaves_no_temp_file_and_keeps_the_old_output(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")

    def half_then_fail(self: Path, data: bytes) -> int:
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_model(M.plain_conv(), out)
    monkeypatch.undo()
    assert out.read_bytes() == b"previous output"
    assert _leftovers(tmp_path) == []

    fresh = tmp_path / "fresh.onnx"
    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError):
        save_model(M.plain_conv(), fresh)
    monkeypatch.undo()
    assert not fresh.exists()
    assert _leftovers(tmp_path) == []


def test_json_write_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    write_json_atomic(out, {"findings": []})
    assert out.read_text() == '{\n  "findings": []\n}\n'
    assert _leftovers(tmp_path) == []


def test_output_path_checks(tmp_path: Path, model_file: Path) -> None:
    with pytest.raises(DynashapeError, match=r"output directory .*missing does not exist"):
        check_output_path(tmp_path / "missing" / "out.onnx")
    with pytest.raises(DynashapeError, match=r"refusing to overwrite the input model"):
        check_output_path(model_file, [model_file])
    assert check_output_path(tmp_path / "new.onnx", [model_file]) == tmp_path / "new.onnx"


def test_check_never_touches_the_input(model_file: Path) -> None:
    before_hash, before_mtime = sha256_file(model_file), model_file.stat().st_mtime_ns
    model = load_model(model_file)
    snapshot = model.SerializeToString()
    report = check_model(model, export_shape={"x": (1, 4, 64, 64)}, path=str(model_file))
    assert report.applied  # it did rewrite something: on its own copy
    assert model.SerializeToString() == snapshot
    assert sha256_file(model_file) == before_hash
    assert model_file.stat().st_mtime_ns == before_mtime


# ------------------------------------------------------------------------------ validation at load


def _bad_file(tmp_path: Path, model: onnx.ModelProto) -> Path:
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _refused(tmp_path: Path, model: onnx.ModelProto, message: str) -> None:
    path = _bad_file(tmp_path, model)
    data = path.read_bytes()
    with pytest.raises(DynashapeError, match=message) as info:
        load_model(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: ")
    assert path.read_bytes() == data


def test_missing_standard_opset_import(tmp_path: Path) -> None:
    model = M.resize_skip(32, 32)
    del model.opset_import[:]
    _refused(tmp_path, model, r"no opset import for the standard ONNX domain|checker rejects")


def test_standard_domain_imported_twice(tmp_path: Path) -> None:
    model = M.resize_skip(32, 32)
    model.opset_import.append(helper.make_opsetid("ai.onnx", 18))
    _refused(tmp_path, model, r"domain 'ai.onnx' is imported twice|checker rejects")


def test_sequence_input_is_refused(tmp_path: Path) -> None:
    model = M.resize_skip(32, 32)
    seq = helper.make_tensor_sequence_value_info("extra", TensorProto.FLOAT, None)
    model.graph.input.append(seq)
    _refused(tmp_path, model, r"graph input 'extra' is not a tensor \(sequence_type\)")


def test_input_without_shape_is_refused(tmp_path: Path) -> None:
    model = M.resize_skip(32, 32)
    model.graph.input[0].type.tensor_type.ClearField("shape")
    _refused(tmp_path, model, r"graph input 'x' has no shape|checker rejects the model: Field 'shape'")


def test_initializer_holding_more_values_than_its_dims(tmp_path: Path) -> None:
    model = M.resize_skip(32, 32)
    weight = next(t for t in model.graph.initializer if t.dims)
    weight.dims[0] -= 1  # the checker refuses too few bytes itself, not too many
    _refused(tmp_path, model, rf"initializer '{weight.name}' declares dims .* but holds")


def test_typed_field_tensor_counted_too(tmp_path: Path) -> None:
    """Tensors written with int64_data (not raw bytes) are counted by values."""
    model = M.resize_skip(32, 32)
    typed = model.graph.initializer.add()
    typed.name, typed.data_type = "typed", TensorProto.INT64
    typed.dims.append(3)
    typed.int64_data.extend([1, 2, 3, 4])  # too many: the checker refuses only too few
    _refused(tmp_path, model, r"initializer 'typed' declares dims \[3\] of INT64 \(3 element\(s\)\) but holds 4")


def test_node_types_that_cannot_agree_are_refused(tmp_path: Path) -> None:
    """The checker does not infer types: an Add of int64 and float passes it, not the loader."""
    model = M.resize_skip(32, 32)
    model.graph.initializer.append(helper.make_tensor("half", TensorProto.INT64, [1], [2]))
    add = helper.make_node("Add", ["x", "half"], ["x_plus"], name="bad_add")
    model.graph.node.insert(0, add)
    model.graph.output.append(helper.make_tensor_value_info("x_plus", TensorProto.FLOAT, [None] * 4))
    _refused(tmp_path, model, r"type and shape inference rejects the model \(.*bad_add")


def test_valid_model_passes_every_load_check(model_file: Path) -> None:
    load_model(model_file)  # the fixture's model, and the demo
    from dynashape.demo import __file__ as demo_init

    load_model(Path(demo_init).parent / "demo.onnx")


def _big_weight_model() -> onnx.ModelProto:
    """x -> MatMul(W 64x80) -> y: one weight over the 1,024 elements the load checks inline."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [64, 80], rng.standard_normal((64, 80)).astype(np.float32)
                           .tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 80])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_large_weight_short_of_its_dims_is_refused(tmp_path: Path) -> None:
    """The checker sees large weights as typed inputs (so it does not copy them): their length
    is checked by the loader itself."""
    model = _big_weight_model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    _refused(tmp_path, model, r"initializer 'W' declares dims \[64, 80\] of FLOAT \(20480 bytes\) but holds 20476")


def test_a_weight_holding_its_data_twice_is_refused(tmp_path: Path) -> None:
    model = _big_weight_model()
    model.graph.initializer[0].float_data.extend([1.0])
    _refused(tmp_path, model, r"initializer 'W' holds its data twice \(raw_data and float_data\)")


def test_a_large_weight_model_loads(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_big_weight_model(), path)
    assert load_model(path).graph.initializer[0].dims == [64, 80]


def test_lighten_keeps_the_graph_and_what_probes_read() -> None:
    from dynashape.model import DIGESTED, lighten, serialized_size

    model = M.resize_skip(32, 32)
    model.graph.initializer.extend(_big_weight_model().graph.initializer)
    light = lighten(model)
    by_name = {t.name: t for t in light.graph.initializer}
    assert by_name["W"].doc_string == DIGESTED and len(by_name["W"].raw_data) == 32
    assert list(by_name["W"].dims) == [64, 80]
    # everything else as it was: nodes, small constants, metadata
    assert light.graph.node == model.graph.node and light.metadata_props == model.metadata_props
    assert all(by_name[t.name] == t for t in model.graph.initializer if t.name != "W")
    # an estimate on the safe side of protobuf's 2 GB limit, a few bytes per tensor over
    assert model.ByteSize() <= serialized_size(model) <= model.ByteSize() + 16 * len(model.graph.initializer)
    assert model.graph.initializer[-1].doc_string != DIGESTED  # the input is not touched


def test_external_weights_are_written_one_tensor_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dynashape import model as model_module
    from dynashape.model import save_with_external_weights

    model = _big_weight_model()
    before = model.SerializeToString()
    monkeypatch.setattr(model_module, "_EXTERNAL_OVER", 1024)
    path = save_with_external_weights(model, tmp_path / "m.onnx")
    assert model.SerializeToString() == before  # the model itself is not touched
    assert (tmp_path / "m.onnx.weights").stat().st_size == 64 * 80 * 4
    (w,) = onnx.load(path, load_external_data=False).graph.initializer
    assert w.data_location == TensorProto.EXTERNAL and {e.key for e in w.external_data} >= {"location", "offset"}
    back = onnx.load(path)  # resolves the weights file beside it
    assert back.graph.initializer[0].raw_data == model.graph.initializer[0].raw_data
    assert back.graph.node == model.graph.node
