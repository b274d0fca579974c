"""Engines: profile selection, sidecar checks and errors on CPU; build/load/run on the GPU."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from trt_fixtures import (  # noqa: F401  (the autouse fixture skips gpu tests without TensorRT)
    conv_model,
    fixed_demo_model,
    skip_gpu_tests_without_trt,
    two_input_model,
)

from dynashape import trt_compat
from dynashape.backends.ort import run_model
from dynashape.engine import (
    BuildError,
    BuildOptions,
    BuiltEngine,
    Engine,
    EngineInfo,
    TensorInfo,
    _check_profiles,
    build_engine,
    check_sidecar,
    nodes_in_messages,
    profile_from_lattice,
    profile_from_shapes,
    read_sidecar,
    select_profile,
    sidecar_path,
)
from dynashape.errors import DynashapeError
from dynashape.findings import AxisLattice
from dynashape.model import InputInfo
from dynashape.shapes import Profile
from dynashape.testing import max_abs_error, random_feeds

ENV = trt_compat.RuntimeEnv("8.5.3.1", "NVIDIA H100 80GB HBM3", "9.0")


def _profile(lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...], name: str = "input") -> Profile:
    return Profile().add(name, lo, opt, hi)


def _info(data: bytes = b"plan-bytes") -> EngineInfo:
    import hashlib

    return EngineInfo(
        tensorrt_version=ENV.tensorrt_version,
        gpu_name=ENV.gpu_name,
        compute_capability=ENV.compute_capability,
        profiles=[_profile((1, 3, 16, 16), (1, 3, 32, 32), (2, 3, 64, 64))],
        inputs=[TensorInfo("input", "float32", (-1, 3, -1, -1), True)],
        outputs=[TensorInfo("output", "float32", (-1, 4, -1, -1), False)],
        source_sha256="ab" * 32,
        source_path="model.onnx",
        build_options=BuildOptions(fp16=True, workspace_mib=512),
        build_seconds=1.5,
        built_at="2026-11-25T18:00:00+00:00",
        engine_sha256=hashlib.sha256(data).hexdigest(),
        engine_size=len(data),
    )


# --------------------------------------------------------------------------- profiles (CPU)


def test_select_profile_single_and_outside() -> None:
    profs = [_profile((1, 3, 16, 16), (1, 3, 32, 32), (1, 3, 64, 64))]
    assert select_profile(profs, {"input": (1, 3, 17, 64)}) == 0
    with pytest.raises(DynashapeError) as err:
        select_profile(profs, {"input": (1, 3, 128, 64)})
    msg = str(err.value)
    assert "input:1x3x128x64" in msg and "profile 0: input: 1x3x16x16 / 1x3x32x32 / 1x3x64x64" in msg
    assert "\n" not in msg


def test_select_profile_prefers_nearest_opt_among_overlapping() -> None:
    small = _profile((1, 3, 16, 16), (1, 3, 32, 32), (1, 3, 128, 128))
    large = _profile((1, 3, 64, 64), (1, 3, 128, 128), (1, 3, 256, 256))
    assert select_profile([small, large], {"input": (1, 3, 40, 40)}) == 0
    assert select_profile([small, large], {"input": (1, 3, 100, 100)}) == 1
    assert select_profile([small, large], {"input": (1, 3, 200, 200)}) == 1
    assert select_profile([large, small], {"input": (1, 3, 40, 40)}) == 1


def test_select_profile_needs_every_input() -> None:
    prof = Profile().add("a", (1, 4), (2, 4), (3, 4)).add("b", (1, 4), (2, 4), (3, 4))
    with pytest.raises(DynashapeError, match="outside every optimization profile"):
        select_profile([prof], {"a": (2, 4)})


def test_profile_from_shapes_min_max_and_opt() -> None:
    shapes = [{"input": (1, 3, 64, 96)}, {"input": (1, 3, 128, 32)}, {"input": (2, 3, 64, 64)}]
    prof = profile_from_shapes(shapes)
    p = prof.inputs["input"]
    assert p.min == (1, 3, 64, 32) and p.max == (2, 3, 128, 96)
    assert p.opt == (1, 3, 64, 96)  # all distinct: the middle one by volume
    repeated = [*shapes, {"input": (1, 3, 128, 32)}]
    assert profile_from_shapes(repeated).inputs["input"].opt == (1, 3, 128, 32)  # most common


def test_profile_from_lattice_snaps_to_the_lattice() -> None:
    info = InputInfo("input", 1, ("batch", 3, "height", "width"))
    lattice = {"input": {0: AxisLattice(1, 1), 2: AxisLattice(16, 16), 3: AxisLattice(16, 16)}}
    prof = profile_from_lattice([info], {"input": (1, 3, 512, 512)}, lattice)
    p = prof.inputs["input"]
    assert (p.min, p.opt, p.max) == ((1, 3, 128, 128), (1, 3, 512, 512), (1, 3, 1024, 1024))
    odd = profile_from_lattice([info], {"input": (2, 3, 100, 96)}, {"input": {2: AxisLattice(32, 32)}})
    q = odd.inputs["input"]
    assert q.min == (1, 3, 32, 24) and q.opt == (2, 3, 100, 96) and q.max == (2, 3, 192, 192)


def test_check_profiles_fills_static_inputs_and_refuses_bad_ones() -> None:
    inputs = [TensorInfo("x", "float32", (-1, 3, -1), True), TensorInfo("k", "float32", (4,), True)]
    full = _check_profiles([Profile().add("x", (1, 3, 8), (1, 3, 16), (2, 3, 32))], inputs)
    assert full[0].inputs["k"].min == (4,)
    with pytest.raises(DynashapeError, match="no shape for dynamic input 'x'"):
        _check_profiles([Profile().add("k", (4,), (4,), (4,))], inputs)
    with pytest.raises(DynashapeError, match="axis 1 of input 'x' is fixed at 3"):
        _check_profiles([Profile().add("x", (1, 2, 8), (1, 3, 16), (2, 3, 32))], inputs)
    with pytest.raises(DynashapeError, match=r"unknown input 'y' \(the model's inputs: x, k\)"):
        _check_profiles([Profile().add("y", (1,), (1,), (1,))], inputs)
    with pytest.raises(DynashapeError, match="no optimization profile"):
        _check_profiles([], inputs)


def test_nodes_in_messages_matches_whole_names() -> None:
    lines = [
        "[shapeMachine.cpp::executeContinuation::864] Error Code 7: Internal Error (/AveragePool: "
        "IPoolingLayer has window size 32 larger than input 8)",
        "Cask convolution isConsistent check failed: /conv_h/Conv + /Add_1 + /Sigmoid",
        "tensor /Add_output_0 is fine",
    ]
    names = ["/AveragePool", "/AveragePool_1", "/Add", "/Add_1", "/conv_h/Conv", "/Sigmoid", "/Mul"]
    assert set(nodes_in_messages(lines, names)) == {"/AveragePool", "/Add_1", "/conv_h/Conv", "/Sigmoid"}


# --------------------------------------------------------------------------- sidecar (CPU)


def test_sidecar_round_trip(tmp_path: Path) -> None:
    data = b"plan-bytes"
    BuiltEngine(data, _info(data)).save(tmp_path / "m.engine")
    assert (tmp_path / "m.engine").read_bytes() == data
    raw = json.loads(sidecar_path(tmp_path / "m.engine").read_text())
    assert raw["tensorrt_version"] == "8.5.3.1" and raw["gpu"]["compute_capability"] == "9.0"
    assert raw["inputs"][0]["ranges"] == [{"min": [1, 3, 16, 16], "max": [2, 3, 64, 64]}]
    assert raw["build_options"]["fp16"] is True and raw["source_model"]["sha256"] == "ab" * 32
    back = read_sidecar(tmp_path / "m.engine")
    assert back is not None and back.to_json() == _info(data).to_json()
    assert check_sidecar(back, data, ENV) == []


def test_missing_sidecar_is_none_and_broken_one_refused(tmp_path: Path) -> None:
    assert read_sidecar(tmp_path / "m.engine") is None
    sidecar_path(tmp_path / "m.engine").write_text("{not json")
    with pytest.raises(DynashapeError, match="unreadable engine sidecar"):
        read_sidecar(tmp_path / "m.engine")


def test_check_sidecar_refusals() -> None:
    data = b"plan-bytes"
    info = _info(data)
    with pytest.raises(DynashapeError, match=r"truncated \(5 bytes, the sidecar says 10\)"):
        check_sidecar(info, data[:5], ENV)
    with pytest.raises(DynashapeError, match="corrupt or was modified"):
        check_sidecar(info, b"plan-bytez", ENV)
    other_trt = trt_compat.RuntimeEnv("10.3.0.26", ENV.gpu_name, "9.0")
    with pytest.raises(DynashapeError, match=r"built with TensorRT 8\.5\.3\.1, but this is TensorRT 10\.3"):
        check_sidecar(info, data, other_trt)
    other_gpu = trt_compat.RuntimeEnv("8.5.3.1", "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(DynashapeError, match=r"compute capability 9\.0.*compute capability 8\.0"):
        check_sidecar(info, data, other_gpu)
    sibling = trt_compat.RuntimeEnv("8.5.3.1", "NVIDIA H100 PCIe", "9.0")
    warnings = check_sidecar(info, data, sibling)
    assert len(warnings) == 1 and "running on NVIDIA H100 PCIe" in warnings[0]


def test_load_refuses_truncated_engine_before_needing_tensorrt(tmp_path: Path) -> None:
    data = b"plan-bytes" * 10
    path = BuiltEngine(data, _info(data)).save(tmp_path / "m.engine")
    path.write_bytes(data[:37])
    with pytest.raises(DynashapeError, match="truncated"):
        Engine.load(path)


def test_load_refuses_other_tensorrt_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"plan-bytes"
    path = BuiltEngine(data, _info(data)).save(tmp_path / "m.engine")
    monkeypatch.setattr(trt_compat, "import_trt", lambda: object())
    monkeypatch.setattr(trt_compat, "runtime_env", lambda: trt_compat.RuntimeEnv("10.0.1.6", "x", "9.0"))
    with pytest.raises(DynashapeError, match=r"TensorRT 8\.5\.3\.1, but this is TensorRT 10\.0\.1\.6"):
        Engine.load(path)


def test_load_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DynashapeError, match="no such file"):
        Engine.load(tmp_path / "nope.engine")
    (tmp_path / "empty.engine").write_bytes(b"")
    with pytest.raises(DynashapeError, match="empty"):
        Engine.load(tmp_path / "empty.engine")


def test_load_without_tensorrt_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.engine").write_bytes(b"plan")
    monkeypatch.setattr(trt_compat, "tensorrt_available", lambda: "TensorRT is not installed (test)")
    with pytest.raises(DynashapeError, match="TensorRT is not installed"):
        Engine.load(tmp_path / "m.engine")


# --------------------------------------------------------------------------- GPU

RANGE = _profile((1, 3, 16, 16), (1, 3, 48, 64), (2, 3, 96, 128))


def _compare_with_ort(engine: Engine, model, shapes, atol: float = 1e-3) -> float:  # type: ignore[no-untyped-def]
    feeds = random_feeds(model, shapes, seed=sum(sum(s) for s in shapes.values()))
    got = engine.infer(feeds)
    want = run_model(model, feeds)
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
    err = max_abs_error(got, want)
    assert err <= atol, f"{shapes}: max error {err}"
    return err


@pytest.mark.gpu
def test_build_save_load_run_one_profile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = conv_model()
    cache = tmp_path / "timing.cache"
    with caplog.at_level(logging.INFO, logger="dynashape.engine"):
        built = build_engine(model, [RANGE], timing_cache=cache)
    assert any("built the engine in" in r.getMessage() for r in caplog.records)
    assert cache.is_file() and cache.stat().st_size > 0
    path = built.save(tmp_path / "conv.engine")
    info = read_sidecar(path)
    assert info is not None and info.tensorrt_version == trt_compat.trt_version()
    assert info.build_options.tactic_sources == trt_compat.DEFAULT_TACTIC_SOURCES
    with Engine.load(path) as eng:
        assert eng.input_names == ["input"] and eng.output_names == ["output"]
        for hw in [(16, 16), (48, 64), (96, 128), (33, 17), (80, 100)]:
            _compare_with_ort(eng, model, {"input": (1, 3, *hw)})
        _compare_with_ort(eng, model, {"input": (2, 3, 96, 128)})
        allocs = eng.allocations
        _compare_with_ort(eng, model, {"input": (1, 3, 20, 20)})  # smaller: buffers reused
        assert eng.allocations == allocs
        with pytest.raises(DynashapeError, match=r"outside every optimization profile.*profile 0"):
            eng.infer(random_feeds(model, {"input": (1, 3, 200, 16)}))
        with pytest.raises(DynashapeError, match="unknown input 'x'"):
            eng.infer({"x": np.zeros((1, 3, 16, 16), np.float32)})


@pytest.mark.gpu
def test_two_profiles_pick_the_right_context(tmp_path: Path) -> None:
    model = conv_model(seed=1)
    small = _profile((1, 3, 8, 8), (1, 3, 32, 32), (1, 3, 64, 64))
    large = _profile((1, 3, 48, 48), (1, 3, 128, 128), (1, 3, 256, 256))
    path = build_engine(model, [small, large]).save(tmp_path / "two.engine")
    with Engine.load(path) as eng:
        assert len(eng.profiles) == 2
        assert eng.profiles[1].inputs["input"].max == (1, 3, 256, 256)
        _compare_with_ort(eng, model, {"input": (1, 3, 8, 8)})
        assert set(eng._contexts) == {0}  # contexts are made lazily, per profile
        _compare_with_ort(eng, model, {"input": (1, 3, 256, 200)})
        assert set(eng._contexts) == {0, 1}
        assert eng.select_profile({"input": (1, 3, 56, 56)}) == 0
        assert eng.select_profile({"input": (1, 3, 120, 64)}) == 1
        for hw in [(56, 56), (120, 64), (64, 64), (48, 48)]:
            _compare_with_ort(eng, model, {"input": (1, 3, *hw)})


@pytest.mark.gpu
def test_two_inputs_two_outputs(tmp_path: Path) -> None:
    model = two_input_model()
    prof = Profile()
    for name in ("a", "b"):
        prof.add(name, (1, 4, 1), (2, 4, 100), (4, 4, 1000))
    path = build_engine(model, [prof]).save(tmp_path / "two_in.engine")
    with Engine.load(path) as eng:
        assert eng.input_names == ["a", "b"] and eng.output_names == ["sum", "mean"]
        for n, length in [(1, 1), (2, 100), (4, 1000), (3, 517)]:
            _compare_with_ort(eng, model, {"a": (n, 4, length), "b": (n, 4, length)}, atol=1e-5)
        with pytest.raises(DynashapeError, match="no value for input 'b'"):
            eng.infer({"a": np.zeros((1, 4, 8), np.float32)})


@pytest.mark.gpu
def test_corrupt_engine_and_other_version_sidecar(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = conv_model()
    path = build_engine(model, [RANGE]).save(tmp_path / "m.engine")
    data = path.read_bytes()
    side = json.loads(sidecar_path(path).read_text())

    side_other = dict(side, tensorrt_version="7.2.3.4")
    sidecar_path(path).write_text(json.dumps(side_other))
    with pytest.raises(DynashapeError, match=r"built with TensorRT 7\.2\.3\.4, but this is TensorRT"):
        Engine.load(path)

    sidecar_path(path).unlink()  # no sidecar: loads, with a warning
    with caplog.at_level(logging.WARNING, logger="dynashape.engine"), Engine.load(path) as eng:
        _compare_with_ort(eng, model, {"input": (1, 3, 24, 24)})
    assert any("no sidecar" in r.getMessage() for r in caplog.records)

    garbage = bytearray(data)
    garbage[len(garbage) // 3 : len(garbage) // 3 + 4096] = b"\x5a" * 4096
    path.write_bytes(bytes(garbage[: len(garbage) // 2]))
    with pytest.raises(DynashapeError, match="TensorRT cannot load the engine"):
        Engine.load(path)  # no sidecar: TensorRT itself must refuse, as one clear error
    path.write_bytes(data)
    sidecar_path(path).write_text(json.dumps(side))
    path.write_bytes(data[:-100])
    with pytest.raises(DynashapeError, match="truncated"):
        Engine.load(path)


@pytest.mark.gpu
def test_fp16_build_is_close() -> None:
    model = conv_model()
    built = build_engine(model, [RANGE], fp16=True)
    assert built.info.build_options.fp16
    with built.load() as eng:
        _compare_with_ort(eng, model, {"input": (1, 3, 40, 40)}, atol=2e-2)


@pytest.mark.gpu
def test_unfixed_demo_fails_with_tensorrt_lines_and_fixed_one_matches() -> None:
    from dynashape.demo import demo_onnx_path

    prof = _profile((1, 3, 128, 128), (1, 3, 512, 512), (1, 3, 1024, 1024))
    with pytest.raises(BuildError) as err:
        build_engine(demo_onnx_path(), [prof])
    assert err.value.trt_errors, "TensorRT's own lines must be carried"
    fixed = fixed_demo_model()
    with build_engine(fixed, [prof]).load() as eng:
        for hw in [(128, 128), (512, 512), (1024, 1024), (256, 768), (640, 480), (1024, 128)]:
            _compare_with_ort(eng, fixed, {"input": (1, 3, *hw)})
