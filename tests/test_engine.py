"""Engines: profile selection, sidecar checks and errors on CPU; build/load/run on the GPU."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trt_fixtures import (  # noqa: F401  (the autouse fixture skips gpu tests without TensorRT)
    conv_model,
    fixed_demo_model,
    skip_gpu_tests_without_trt,
    two_input_model,
)

from dynashape.backends.ort import run_model
from dynashape.errors import DynashapeError
from dynashape.findings import AxisLattice
from dynashape.model import InputInfo
from dynashape.shapes import Profile
from dynashape.testing import max_abs_error, random_feeds
from dynashape.trt import compat as trt_compat
from dynashape.trt import cudart
from dynashape.trt.engine import (
    BuildError,
    BuildOptions,
    BuiltEngine,
    Engine,
    EngineInfo,
    HostFeed,
    TensorInfo,
    _check_profiles,
    build_engine,
    check_sidecar,
    classify_feeds,
    nodes_in_messages,
    profile_from_lattice,
    profile_from_shapes,
    read_sidecar,
    select_profile,
    shape_key,
    sidecar_path,
)

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
    with caplog.at_level(logging.INFO, logger="dynashape.trt.engine"):
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
    with caplog.at_level(logging.WARNING, logger="dynashape.trt.engine"), Engine.load(path) as eng:
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


# --------------------------------------------------------------------------- feeds, keys, graph cache (CPU)


class FakeDeviceArray:
    """Anything exposing __cuda_array_interface__ (as PyTorch CUDA tensors and CuPy arrays do)."""

    def __init__(self, shape: tuple[int, ...], typestr: str = "<f4", ptr: int = 0x7F0000000000,
                 strides: tuple[int, ...] | None = None, stream: int | None = None) -> None:
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": typestr, "data": (ptr, False), "strides": strides, "version": 3,
            **({"stream": stream} if stream is not None else {}),
        }


INPUTS = [TensorInfo("a", "float32", (-1, 4), True), TensorInfo("b", "int32", (-1,), True)]


def test_classify_feeds_host_and_device() -> None:
    feeds = classify_feeds(INPUTS, {"a": FakeDeviceArray((2, 4), stream=7), "b": [1, 2, 3]})
    a, b = feeds["a"], feeds["b"]
    assert isinstance(a, cudart.DeviceFeed) and a.ptr == 0x7F0000000000 and a.shape == (2, 4)
    assert a.dtype == np.float32 and a.stream == 7 and a.nbytes == 32
    assert isinstance(b, HostFeed) and b.array.dtype == np.int32 and b.shape == (3,)
    # host arrays are cast when safe and made contiguous; numpy never counts as a device array
    host = classify_feeds(INPUTS, {"a": np.zeros((3, 4), np.float16), "b": np.arange(2, dtype=np.int32)})
    assert isinstance(host["a"], HostFeed) and host["a"].array.dtype == np.float32
    assert cudart.device_feed(np.zeros(3)) is None
    # C-contiguous strides given explicitly are fine; the default stream 0 means "nothing to wait for"
    contiguous = FakeDeviceArray((2, 4), strides=(16, 4), stream=0)
    dev = classify_feeds(INPUTS, {"a": contiguous, "b": np.zeros(1, np.int32)})["a"]
    assert isinstance(dev, cudart.DeviceFeed) and dev.stream is None


def test_classify_feeds_refusals() -> None:
    ok_b = np.zeros(2, np.int32)
    with pytest.raises(DynashapeError, match=r"'a' is a float16 device array, the engine expects float32"):
        classify_feeds(INPUTS, {"a": FakeDeviceArray((2, 4), "<f2"), "b": ok_b})
    with pytest.raises(DynashapeError, match=r"not contiguous.*contiguous"):
        classify_feeds(INPUTS, {"a": FakeDeviceArray((2, 4), strides=(4, 8)), "b": ok_b})
    with pytest.raises(DynashapeError, match=r"'a' has shape 8, the engine expects rank 2"):
        classify_feeds(INPUTS, {"a": FakeDeviceArray((8,)), "b": ok_b})
    with pytest.raises(DynashapeError, match="'b' is float32, the engine expects int32"):
        classify_feeds(INPUTS, {"a": np.zeros((1, 4), np.float32), "b": np.zeros(2, np.float32)})
    with pytest.raises(DynashapeError, match="unknown input 'c'"):
        classify_feeds(INPUTS, {"a": np.zeros((1, 4), np.float32), "b": ok_b, "c": ok_b})
    with pytest.raises(DynashapeError, match="no value for input 'b'"):
        classify_feeds(INPUTS, {"a": np.zeros((1, 4), np.float32)})
    with pytest.raises(DynashapeError, match="null pointer"):
        classify_feeds(INPUTS, {"a": FakeDeviceArray((1, 4), ptr=0), "b": ok_b})


def test_dlpack_objects_on_the_host_are_host_arrays() -> None:
    class CpuDlpack:  # a DLPack producer on the CPU (device type 1): np.asarray takes it
        def __dlpack_device__(self) -> tuple[int, int]:
            return (1, 0)

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            return np.ones((1, 4), np.float32)

    assert cudart.device_feed(CpuDlpack()) is None
    feeds = classify_feeds(INPUTS, {"a": CpuDlpack(), "b": np.zeros(1, np.int32)})
    assert isinstance(feeds["a"], HostFeed) and feeds["a"].array.sum() == 4


def test_shape_key_orders_by_the_engine_inputs() -> None:
    key = shape_key(1, ["a", "b"], {"b": (3,), "a": (2, 4)})
    assert key == (1, ((2, 4), (3,)))
    assert key != shape_key(0, ["a", "b"], {"b": (3,), "a": (2, 4)})
    assert hash(key) == hash(shape_key(1, ["a", "b"], {"a": [2, 4], "b": [3]}))


class FakeGraph:
    def __init__(self, name: str, freed: list[str]) -> None:
        self.name, self.freed = name, freed

    def free(self) -> None:
        self.freed.append(self.name)


def test_graph_cache_is_a_bounded_lru() -> None:
    freed: list[str] = []
    cache = cudart.GraphCache(capacity=2)
    cache.put("a", FakeGraph("a", freed))
    cache.put("b", FakeGraph("b", freed))
    assert cache.get("a").name == "a"  # a is now the most recent
    cache.put("c", FakeGraph("c", freed))
    assert freed == ["b"] and cache.keys() == ["a", "c"] and len(cache) == 2
    assert cache.get("b") is None and cache.evictions == 1 and cache.captures == 3
    cache.put("c", FakeGraph("c2", freed))  # replacing a key frees the old graph
    assert freed == ["b", "c"] and len(cache) == 2
    cache.fail("d", "capture failed")
    assert "d" in cache.failed and "d" not in cache
    cache.clear()
    assert len(cache) == 0 and sorted(freed) == ["a", "b", "c", "c2"]
    with pytest.raises(ValueError):
        cudart.GraphCache(0)


def test_copy_bound() -> None:
    bw = cudart.CopyBandwidth(h2d_gbps=50.0, d2h_gbps=25.0, nbytes=1 << 20)
    assert bw.bound_ms(50_000_000, 25_000_000) == pytest.approx(2.0)
    assert bw.bound_ms(0, 0) <= 1e-5


def test_cuda_errors_are_one_line_without_a_gpu() -> None:
    if cudart.cuda_available() is None:
        pytest.skip("a GPU is present")
    reason = cudart.cuda_available()
    assert reason and "\n" not in reason


# --------------------------------------------------------------------------- device arrays, graphs, warm-up (GPU)


def _max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert list(a) == list(b)
    return max(float(np.max(np.abs(np.asarray(a[n]) - np.asarray(b[n])))) for n in a)


@pytest.mark.gpu
def test_device_inputs_and_outputs_equal_numpy(tmp_path: Path) -> None:
    model = two_input_model()
    prof = Profile()
    for name in ("a", "b"):
        prof.add(name, (1, 4, 1), (2, 4, 100), (4, 4, 1000))
    with build_engine(model, [prof]).load() as eng:
        for n, length in [(1, 7), (4, 1000), (2, 100)]:
            feeds = random_feeds(model, {"a": (n, 4, length), "b": (n, 4, length)}, seed=n + length)
            host = eng.infer(feeds)
            allocations = eng.allocations
            device = {k: cudart.DeviceArray.from_numpy(v) for k, v in feeds.items()}
            got = eng.infer(device)  # device in, host out
            assert _max_diff(got, host) <= 1e-5
            assert eng.allocations == allocations  # device inputs are bound in place: no new buffers
            views = eng.infer(device, device_outputs=True)  # device in, device out
            assert all(isinstance(v, cudart.DeviceArray) for v in views.values())
            assert {k: v.shape for k, v in views.items()} == {k: v.shape for k, v in host.items()}
            assert _max_diff({k: v.to_numpy() for k, v in views.items()}, host) <= 1e-5
            mixed = eng.infer({"a": device["a"], "b": feeds["b"]})  # one of each
            assert _max_diff(mixed, host) <= 1e-5
            pinned = {k: cudart.pinned_empty(v.shape, v.dtype) for k, v in feeds.items()}
            for k, v in feeds.items():
                pinned[k][...] = v
            assert all(cudart.is_pinned(v) for v in pinned.values()) and not cudart.is_pinned(feeds["a"])
            assert _max_diff(eng.infer(pinned), host) <= 1e-5  # copied straight from, not staged
            queued = eng.infer(device, device_outputs=True, synchronize=False)
            assert queued["sum"].stream == eng.stream.ptr  # consumers order themselves after it
            assert _max_diff({k: v.to_numpy() for k, v in queued.items()}, host) <= 1e-5
            for arr in device.values():
                arr.free()
        with pytest.raises(DynashapeError, match="device array, the engine expects float32"):
            eng.infer({"a": cudart.DeviceArray.empty((1, 4, 8), np.float16), "b": np.zeros((1, 4, 8), np.float32)})
        with pytest.raises(DynashapeError, match="needs device_outputs"):
            eng.infer(random_feeds(model, {"a": (1, 4, 8), "b": (1, 4, 8)}), synchronize=False)


@pytest.mark.gpu
def test_pinned_memory_made_and_dropped_again_and_again() -> None:
    if cudart.cuda_available() is not None:
        pytest.skip(cudart.cuda_available() or "no GPU")
    import gc

    for _ in range(4):  # dropped without free(): same addresses come back from the allocator
        buf = cudart.PinnedBuffer(64 << 20)
        arr = cudart.pinned_empty((1 << 20,), "float32")
        assert cudart.is_pinned(buf.array) and cudart.is_pinned(arr)
        del buf, arr
        gc.collect()


@pytest.mark.gpu
def test_cuda_graphs_equal_plain_runs_and_the_cache_stays_bounded() -> None:
    model = conv_model(seed=3)
    shapes = [(1, 3, 16, 16), (2, 3, 96, 128), (1, 3, 48, 64)]
    built = build_engine(model, [RANGE])
    with built.load() as plain, built.load() as eng:
        eng.cuda_graph = True
        eng.graphs = cudart.GraphCache(capacity=2)
        eng.warmup()
        want = {s: plain.infer(random_feeds(model, {"input": s}, seed=sum(s))) for s in shapes}
        for _round in range(3):  # alternate: each shape is captured, evicted, replayed, captured again
            for s in shapes:
                feeds = random_feeds(model, {"input": s}, seed=sum(s))
                assert _max_diff(eng.infer(feeds), want[s]) <= 1e-5, s
                dev = cudart.DeviceArray.from_numpy(feeds["input"])
                assert _max_diff(eng.infer({"input": dev}), want[s]) <= 1e-5, s  # copied in on the device
                dev.free()
                assert len(eng.graphs) <= 2
        assert eng.graphs.captures >= 3 and eng.graphs.evictions >= 1 and not eng.graphs.failed
        # the same shape twice in a row is replayed, not captured again
        captures = eng.graphs.captures
        feeds = random_feeds(model, {"input": shapes[0]}, seed=sum(shapes[0]))
        for _ in range(3):
            assert _max_diff(eng.infer(feeds), want[shapes[0]]) <= 1e-5
        assert eng.graphs.captures - captures <= 1
        run = eng.prepare(feeds, cuda_graph=True)
        assert run.graph is not None
        run.launch()
        run.synchronize()


@pytest.mark.gpu
def test_cuda_graph_capture_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = conv_model(seed=4)
    real = cudart.capture_graph

    def breaking(stream: Any, work: Any) -> Any:  # a synchronize inside a capture is illegal
        return real(stream, lambda: (stream.synchronize(), work())[1])

    monkeypatch.setattr(cudart, "capture_graph", breaking)
    with build_engine(model, [RANGE]).load() as eng:
        eng.cuda_graph = True
        for s in [(1, 3, 32, 32), (2, 3, 64, 96)]:
            feeds = random_feeds(model, {"input": s}, seed=sum(s))
            want = eng.infer(feeds, cuda_graph=False)
            for _ in range(3):
                assert _max_diff(eng.infer(feeds), want) <= 1e-5
        assert len(eng.graphs) == 0 and len(eng.graphs.failed) == 2
        assert all("capture" in reason for reason in eng.graphs.failed.values())
        run = eng.prepare(feeds, cuda_graph=True)  # falls back to the plain launch too
        assert run.graph is None
        run.launch()
        run.synchronize()


@pytest.mark.gpu
def test_warmup_creates_every_context_and_the_largest_buffers() -> None:
    model = conv_model(seed=5)
    small = _profile((1, 3, 8, 8), (1, 3, 32, 32), (1, 3, 64, 64))
    large = _profile((1, 3, 48, 48), (1, 3, 128, 128), (2, 3, 256, 256))
    with build_engine(model, [small, large]).load() as eng:
        assert eng.contexts == []
        seconds = eng.warmup()
        assert seconds > 0 and eng.contexts == [0, 1]
        allocations = eng.allocations
        for s in [(2, 3, 256, 256), (1, 3, 8, 8), (1, 3, 200, 100), (1, 3, 64, 64)]:
            _compare_with_ort(eng, model, {"input": s})
        assert eng.allocations == allocations  # nothing grew after the warm-up
        eng.warmup([{"input": (1, 3, 40, 40)}])  # given shapes run too; nothing new to allocate
        assert eng.allocations == allocations


class FakePinned:
    """cudart.PinnedBuffer without CUDA: plain host bytes."""

    made = 0

    def __init__(self, nbytes: int = 0) -> None:
        FakePinned.made += 1
        self.array = np.zeros(max(1, nbytes), np.uint8)
        self.nbytes = nbytes
        self.freed = False

    @property
    def ptr(self) -> int:
        return int(self.array.__array_interface__["data"][0])

    def ensure(self, nbytes: int) -> bool:
        if nbytes <= self.array.nbytes:
            return False
        self.array, self.nbytes = np.zeros(nbytes, np.uint8), nbytes
        return True

    def free(self) -> None:
        self.freed = True


def test_pinned_output_blocks_come_back_only_when_every_view_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from dynashape.trt.engine import _PinnedOutputs

    monkeypatch.setattr(cudart, "PinnedBuffer", FakePinned)
    pool = _PinnedOutputs(limit=2)
    pool.block_bytes = 64  # warm-up's largest size: a block made for a small shape fits any later one
    block = pool.take(16)
    assert block is not None and block.nbytes == 64 and pool.made == 1
    block.array[:16] = np.arange(16, dtype=np.uint8)
    out = pool.lend(block, (2, 2), np.dtype(np.float32))
    assert out.shape == (2, 2) and out.dtype == np.float32 and out.flags.writeable
    assert out.tobytes() == bytes(range(16))  # the array is the block: no copy
    row = out[1]
    del out
    gc.collect()
    assert pool.free == []  # a view still holds it
    del row
    gc.collect()
    assert pool.free == [block]
    again = pool.take(64)
    assert again is block and pool.made == 1  # reused, not made anew
    kept = [pool.lend(again, (4,), np.dtype(np.float32)), pool.lend(pool.take(8), (2,), np.dtype(np.float32))]
    assert pool.made == 2 and pool.take(8) is None  # the caller holds both: the caller gets a copy instead
    del kept[1]
    gc.collect()
    bigger = pool.take(128)  # the free block is too small: it is replaced, the count stays bounded
    assert bigger is not None and bigger.nbytes == 128 and pool.made == 2 and pool.free == []
    pool.give_back(bigger)
    pool.close()
    del kept
    gc.collect()
    assert block.freed and pool.made == 0 and pool.free == []  # after close, blocks are freed, not kept


class FakeStream:
    ptr = 7

    def __init__(self) -> None:
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1

    def free(self) -> None:
        pass


def _staging_engine(monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, list[tuple[int, int, int]]]:
    """An Engine with only what ``_stage_in`` uses, copies to the device recorded, not made."""
    monkeypatch.setattr(cudart, "PinnedBuffer", FakePinned)
    copies: list[tuple[int, int, int]] = []

    def copy_htod(dst: int, src: Any, nbytes: int, stream: Any) -> None:
        copies.append((dst, src if isinstance(src, int) else int(src.__array_interface__["data"][0]), nbytes))

    monkeypatch.setattr(cudart, "copy_htod", copy_htod)
    eng = Engine.__new__(Engine)
    eng._stream, eng._pinned, eng._in_flight, eng._pool = FakeStream(), {}, False, None  # type: ignore[assignment]
    return eng, copies


@pytest.mark.parametrize("nbytes", [(16 << 20) + 12, (16 << 20) * 2 + 4096])  # four uneven parts; four parts
def test_large_pageable_inputs_are_staged_whole_then_copied_once(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    eng, copies = _staging_engine(monkeypatch)
    monkeypatch.setattr(cudart, "is_pinned", lambda arr: False)
    arr = np.random.default_rng(nbytes).integers(0, 255, nbytes, dtype=np.uint8)
    eng._stage_in("input", arr, dst=1000)
    pinned = eng._pinned["input"]
    assert copies == [(1000, pinned.ptr, nbytes)]  # one copy, from the staging buffer
    assert np.array_equal(pinned.array[:nbytes], arr)  # every byte staged, by however many threads
    eng._in_flight = True  # a call that returned without waiting may still read the staging buffer
    eng._stage_in("input", arr, dst=1000)
    assert eng._stream.synchronized == 1 and not eng._in_flight  # type: ignore[attr-defined]
    if eng._pool is not None:
        eng._pool.shutdown()


def test_small_pageable_inputs_are_copied_straight_from(monkeypatch: pytest.MonkeyPatch) -> None:
    eng, copies = _staging_engine(monkeypatch)
    monkeypatch.setattr(cudart, "is_pinned", lambda arr: False)
    arr = np.ones(3 << 18, np.float32)  # 3 MB: CUDA stages it faster than we do
    eng._stage_in("input", arr, dst=3000)
    assert copies == [(3000, int(arr.__array_interface__["data"][0]), arr.nbytes)] and eng._pinned == {}


@pytest.mark.parametrize("nbytes", [40, (9 << 20) + 8])  # one thread; two uneven parts
def test_outputs_copied_out_of_the_staging_buffer_are_whole(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    eng, _copies = _staging_engine(monkeypatch)
    view = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8).view(np.uint8)
    out = eng._copy_out(view.view(np.float32).reshape(2, -1))
    assert out.shape == (2, nbytes // 8) and np.array_equal(out.view(np.uint8).reshape(-1), view)
    assert not np.shares_memory(out, view)
    if eng._pool is not None:
        eng._pool.shutdown()


def test_page_locked_inputs_are_copied_straight_from(monkeypatch: pytest.MonkeyPatch) -> None:
    eng, copies = _staging_engine(monkeypatch)
    monkeypatch.setattr(cudart, "is_pinned", lambda arr: True)
    arr = np.zeros(5 << 20, dtype=np.float32)  # 20 MB, but page-locked: no staging
    eng._in_flight = True
    eng._stage_in("input", arr, dst=2000)
    assert copies == [(2000, int(arr.__array_interface__["data"][0]), arr.nbytes)]
    assert eng._pinned == {} and eng._stream.synchronized == 0  # type: ignore[attr-defined]


def test_capture_log_collects_only_inside_the_block() -> None:
    holder = trt_compat._HOLDER
    with trt_compat.capture_log() as outer:
        with trt_compat.capture_log() as inner:
            for cap in holder.captures:
                cap.errors.append("bad shape")
        assert inner.errors == ["bad shape"] and outer.errors == ["bad shape"]
        for cap in holder.captures:
            cap.warnings.append("slow")
    assert outer.warnings == ["slow"] and inner.warnings == []
    assert holder.captures == []


# --------------------------------------------------------------------------- the per-call path (CPU, fakes)


class FakeContext:
    """An execution context that records what it is set to and what each run saw."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.calls = 0  # set_input_shape and set_tensor_address calls
        self.runs = runs

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls += 1
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        n, _c, h, w = self.shapes["input"]
        return (n, 2, h, w)

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.calls += 1
        self.addresses[name] = ptr

    def execute_async_v3(self, stream: int) -> bool:
        self.runs.append({"context": self, "shapes": dict(self.shapes), "addresses": dict(self.addresses)})
        return True


class FakeDeviceBuffer:
    """Device memory without CUDA: every growth moves it to a new address, as cudaMalloc may."""

    next_ptr = 1 << 40

    def __init__(self) -> None:
        self.ptr, self.nbytes = 0, 0

    def ensure(self, nbytes: int) -> bool:
        if nbytes <= self.nbytes:
            return False
        FakeDeviceBuffer.next_ptr += 1 << 30
        self.ptr, self.nbytes = FakeDeviceBuffer.next_ptr, nbytes
        return True

    def free(self) -> None:
        self.ptr, self.nbytes = 0, 0


def _fake_engine(monkeypatch: pytest.MonkeyPatch, profiles: list[Profile]) -> tuple[Engine, list[dict[str, Any]]]:
    """An Engine over a fake TensorRT engine (input ``input`` NCHW, output ``output`` N2HW):
    contexts, buffers and copies without a GPU, every run recorded."""
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(cudart, "DeviceBuffer", FakeDeviceBuffer)
    monkeypatch.setattr(cudart, "PinnedBuffer", FakePinned)
    monkeypatch.setattr(cudart, "copy_htod", lambda *args: None)
    monkeypatch.setattr(cudart, "copy_dtoh", lambda *args: None)
    eng = Engine.__new__(Engine)
    eng.where, eng.info, eng.profiles = "fake", None, profiles
    eng.inputs = [TensorInfo("input", "float32", (-1, 3, -1, -1), True)]
    eng.outputs = [TensorInfo("output", "float32", (-1, 2, -1, -1), False)]
    eng._engine = type("FakeTrtEngine", (), {"create_execution_context": lambda self: FakeContext(runs)})()
    eng._init_runtime_state(False, 4)
    eng._stream = FakeStream()  # type: ignore[assignment]
    return eng, runs


def _expect_run(eng: Engine, run: dict[str, Any], shape: tuple[int, ...], input_ptr: int | None) -> None:
    """The run saw ``shape``, the input at ``input_ptr`` (None: the engine's own buffer) and the
    output in the engine's current output buffer, big enough for it."""
    assert run["shapes"] == {"input": shape}
    want_in = eng._buffers["input"].ptr if input_ptr is None else input_ptr
    assert run["addresses"]["input"] == want_in
    out = eng._buffers["output"]
    assert run["addresses"]["output"] == out.ptr and out.nbytes >= 4 * 2 * shape[0] * shape[2] * shape[3]


def test_a_repeated_call_skips_binding_and_any_change_binds_again(monkeypatch: pytest.MonkeyPatch) -> None:
    two = [_profile((1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 32, 32)),
           _profile((2, 3, 8, 8), (4, 3, 16, 16), (4, 3, 64, 64))]
    eng, runs = _fake_engine(monkeypatch, two)
    a, b = np.ones((1, 3, 16, 16), np.float32), np.ones((1, 3, 32, 32), np.float32)
    dev1 = cudart.DeviceArray(0x1000, (1, 3, 16, 16), np.float32)
    dev2 = cudart.DeviceArray(0x2000, (1, 3, 16, 16), np.float32)

    eng.infer({"input": a})
    _expect_run(eng, runs[-1], a.shape, None)
    ctx = runs[-1]["context"]
    calls = ctx.calls
    eng.infer({"input": a})  # the same call again: nothing is set
    assert ctx.calls == calls
    _expect_run(eng, runs[-1], a.shape, None)

    steps: list[tuple[Any, tuple[int, ...], int | None]] = [
        (dev1, dev1.shape, 0x1000), (dev1, dev1.shape, 0x1000),  # device input: bound in place
        (dev2, dev2.shape, 0x2000),  # another device pointer
        (a, a.shape, None),  # back to the engine's own buffer
        (b, b.shape, None),  # a bigger shape: buffers grow and move
        (a, a.shape, None),
    ]
    for feed, shape, ptr in steps:
        before = ctx.calls
        eng.infer({"input": feed}, device_outputs=True)
        _expect_run(eng, runs[-1], shape, ptr)
        repeated = runs[-2]["shapes"] == runs[-1]["shapes"] and runs[-2]["addresses"] == runs[-1]["addresses"]
        assert (ctx.calls == before) == repeated
    # someone else sets the context to other shapes (output_shapes does): the next call resets them
    eng.output_shapes({"input": (1, 3, 24, 24)})
    eng.infer({"input": a})
    _expect_run(eng, runs[-1], a.shape, None)
    # buffers grown outside a call (warm-up makes them at the largest size first)
    eng._device_buffer("output", 1 << 20)
    eng.infer({"input": a})
    _expect_run(eng, runs[-1], a.shape, None)
    # another profile's context grows the shared output buffer: profile 0 must see its new address
    eng.infer({"input": np.ones((4, 3, 64, 64), np.float32)})
    assert runs[-1]["context"] is not ctx
    eng.infer({"input": a})
    assert runs[-1]["context"] is ctx
    _expect_run(eng, runs[-1], a.shape, None)
    eng.close()  # nothing runs on freed buffers: a closed engine says so
    with pytest.raises(DynashapeError, match="the engine is closed"):
        eng.infer({"input": a})


def test_a_failed_run_names_tensorrt_s_error_of_that_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    severity = SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)
    fake_trt = SimpleNamespace(ILogger=SimpleNamespace(Severity=severity))
    eng, runs = _fake_engine(monkeypatch, [_profile((1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 32, 32))])
    x = np.ones((1, 3, 16, 16), np.float32)
    eng.infer({"input": x})
    trt_compat._forward(fake_trt, severity.ERROR, "an error of an earlier call")
    ctx = runs[-1]["context"]

    def failing(stream: int) -> bool:
        trt_compat._forward(fake_trt, severity.ERROR, "IExecutionContext::enqueueV3: out of memory")
        return False

    monkeypatch.setattr(ctx, "execute_async_v3", failing)
    with pytest.raises(DynashapeError, match=r"at input:1x3x16x16: IExecutionContext::enqueueV3: out of memory$"):
        eng.infer({"input": x})
    assert trt_compat.errors_since(trt_compat.error_mark()) == []
