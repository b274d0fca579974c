"""`dynashape triton`: config generation (synthetic sidecars, no TensorRT) checked against Triton's
own ModelConfig schema, and the Python-backend repository served by a real tritonserver (the one
in the nvidia-pytriton wheel) with ONNX Runtime on CPU, compared with ONNX Runtime directly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from trt_fixtures import skip_gpu_tests_without_trt  # noqa: F401  (the autouse fixture skips gpu tests)

from dynashape.cli import main
from dynashape.demo import demo_onnx_path
from dynashape.errors import DynashapeError
from dynashape.model import load_model, sha256_file, write_json_atomic
from dynashape.pipeline.fix import fix_model, write_fixed
from dynashape.serving.config import validate_pbtxt
from dynashape.serving.repository import write_repository
from dynashape.shapes import Profile
from dynashape.trt.engine import EngineInfo, TensorInfo, sidecar_path

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def _profile(lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...]) -> Profile:
    return Profile().add("input", lo, opt, hi)


def _engine(
    tmp: Path,
    profiles: list[Profile],
    input_shape: tuple[int, ...] = (-1, 3, -1, -1),
    output_shape: tuple[int, ...] = (-1, 2, -1, -1),
    source: Path | None = None,
    trt: str = "10.3.0.26",
    name: str = "net.engine",
) -> Path:
    """A plan file (not a real engine) with a sidecar as `dynashape build` writes it."""
    plan = b"synthetic plan bytes " + name.encode()
    path = tmp / name
    path.write_bytes(plan)
    info = EngineInfo(
        tensorrt_version=trt, gpu_name="NVIDIA H200", compute_capability="9.0", profiles=profiles,
        inputs=[TensorInfo("input", "float32", input_shape, True)],
        outputs=[TensorInfo("output", "float32", output_shape, False)],
        source_sha256=sha256_file(source) if source else "ab" * 32,
        source_path=str(source) if source else None,
        engine_sha256=hashlib.sha256(plan).hexdigest(), engine_size=len(plan),
    )
    write_json_atomic(sidecar_path(path), info.to_json())
    return path


def _parse(repo: Any) -> Any:
    """config.pbtxt through Triton's own ModelConfig message: unknown fields or wrong types raise."""
    return text_format.Parse((repo.model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def demo_fixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in demo after `dynashape fix`: valid at every multiple of 16."""
    path = tmp_path_factory.mktemp("demo") / "demo_fixed.onnx"
    write_fixed(fix_model(load_model(demo_onnx_path())), path)
    return path


# --------------------------------------------------------------------------- tensorrt_plan config


def test_dynamic_batch_engine_config(tmp_path: Path) -> None:
    engine = _engine(tmp_path, [_profile((1, 3, 64, 64), (2, 3, 256, 256), (4, 3, 512, 512))])
    repo = write_repository(engine, tmp_path / "repo", lattice=False)
    cfg = _parse(repo)
    assert repo.schema_checked
    assert cfg.platform == "tensorrt_plan" and cfg.name == "net"
    assert cfg.max_batch_size == 4  # the profile's batch range; dims leave the batch axis out
    assert list(cfg.input[0].dims) == [3, -1, -1] and list(cfg.output[0].dims) == [2, -1, -1]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert cfg.HasField("dynamic_batching")
    assert [list(g.profile) for g in cfg.instance_group] == [["0"]]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    profiles = json.loads(cfg.parameters["dynashape.profiles"].string_value)
    assert profiles == [{"input": {"min": [1, 3, 64, 64], "opt": [2, 3, 256, 256], "max": [4, 3, 512, 512]}}]
    assert (repo.model_dir / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert "profile 0: input: 1x3x64x64 / 2x3x256x256 / 4x3x512x512" in (repo.model_dir / "config.pbtxt").read_text()


def test_fixed_batch_engine_has_no_triton_batching(tmp_path: Path) -> None:
    engine = _engine(tmp_path, [_profile((1, 3, 64, 64), (1, 3, 128, 128), (1, 3, 256, 256))],
                     input_shape=(1, 3, -1, -1), output_shape=(1, 2, -1, -1))
    cfg = _parse(write_repository(engine, tmp_path / "repo", lattice=False))
    assert cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [1, 3, -1, -1]
    assert not cfg.HasField("dynamic_batching")  # only valid with max_batch_size > 0
    with pytest.raises(DynashapeError, match="axis 0 of 'input' is not dynamic"):
        write_repository(engine, tmp_path / "repo2", max_batch=4, lattice=False)


def test_rank_1_input_is_not_batched(tmp_path: Path) -> None:
    engine = _engine(tmp_path, [Profile().add("input", (1,), (64,), (512,))], input_shape=(-1,), output_shape=(-1,))
    cfg = _parse(write_repository(engine, tmp_path / "repo", lattice=False))
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [-1]


def test_profile_not_starting_at_batch_1_turns_batching_off(tmp_path: Path) -> None:
    engine = _engine(tmp_path, [_profile((2, 3, 64, 64), (4, 3, 128, 128), (8, 3, 256, 256))])
    cfg = _parse(write_repository(engine, tmp_path / "repo", lattice=False))
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [-1, 3, -1, -1]
    with pytest.raises(DynashapeError, match="starts at batch 2"):
        write_repository(engine, tmp_path / "repo2", max_batch=4, lattice=False)


def test_max_batch_is_bounded_by_every_profile(tmp_path: Path) -> None:
    engine = _engine(tmp_path, [_profile((1, 3, 64, 64), (1, 3, 128, 128), (8, 3, 256, 256)),
                                _profile((1, 3, 256, 256), (1, 3, 512, 512), (2, 3, 1024, 1024))])
    cfg = _parse(write_repository(engine, tmp_path / "repo", lattice=False))
    assert cfg.max_batch_size == 2
    with pytest.raises(DynashapeError, match="only all accept batches up to 2"):
        write_repository(engine, tmp_path / "repo2", max_batch=8, lattice=False)
    assert _parse(write_repository(engine, tmp_path / "repo3", max_batch=0, lattice=False)).max_batch_size == 0


def test_profiles_with_different_ranges_share_one_group(tmp_path: Path) -> None:
    # Triton does not route by shape: each instance must hold every profile
    engine = _engine(tmp_path, [_profile((1, 3, 64, 64), (1, 3, 128, 128), (4, 3, 256, 256)),
                                _profile((1, 3, 256, 256), (1, 3, 512, 512), (4, 3, 1024, 1024))])
    cfg = _parse(write_repository(engine, tmp_path / "repo", instances=2, lattice=False))
    assert [(g.count, list(g.profile)) for g in cfg.instance_group] == [(2, ["0", "1"])]


def test_profiles_with_the_same_range_get_one_group_each(tmp_path: Path) -> None:
    same = _profile((1, 3, 64, 64), (1, 3, 128, 128), (4, 3, 256, 256))
    engine = _engine(tmp_path, [same, same, same])
    cfg = _parse(write_repository(engine, tmp_path / "repo", lattice=False))
    assert [list(g.profile) for g in cfg.instance_group] == [["0"], ["1"], ["2"]]


def test_engine_for_another_tensorrt_or_gpu_is_refused(tmp_path: Path) -> None:
    engine = _engine(tmp_path, [_profile((1, 3, 64, 64), (1, 3, 128, 128), (4, 3, 256, 256))], trt="10.3.0.26")
    with pytest.raises(DynashapeError, match=r"built with TensorRT 10\.3\.0\.26, but the Triton .* TensorRT 10\.8"):
        write_repository(engine, tmp_path / "repo", triton_trt="10.8", lattice=False)
    with pytest.raises(DynashapeError, match=r"compute capability 8\.0"):
        write_repository(engine, tmp_path / "repo", triton_trt="10.3.0", triton_gpu="8.0", lattice=False)
    assert not (tmp_path / "repo" / "net").exists()  # nothing half-written
    repo = write_repository(engine, tmp_path / "repo", triton_trt="10.3", triton_gpu="9.0", lattice=False)
    assert repo.model_dir.is_dir()
    assert main(["triton", str(engine), "-o", str(tmp_path / "r4"), "--triton-trt", "10.8.0"]) == 2


def test_engine_without_sidecar_or_with_a_changed_plan_is_refused(tmp_path: Path) -> None:
    engine = _engine(tmp_path, [_profile((1, 3, 64, 64), (1, 3, 128, 128), (4, 3, 256, 256))])
    engine.write_bytes(engine.read_bytes() + b"x")
    with pytest.raises(DynashapeError, match="longer than when it was built"):
        write_repository(engine, tmp_path / "repo")
    sidecar_path(engine).unlink()
    with pytest.raises(DynashapeError, match="no sidecar"):
        write_repository(engine, tmp_path / "repo")


def test_onnx_with_tensorrt_backend_says_build_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triton", str(demo_onnx_path()), "-o", str(tmp_path / "repo"), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dynashape build" in err[0]
    assert not (tmp_path / "repo").exists()


def test_schema_check_rejects_a_wrong_config() -> None:
    assert validate_pbtxt('name: "m"\nplatform: "tensorrt_plan"\nmax_batch_size: 2\n')
    with pytest.raises(DynashapeError, match="ModelConfig"):
        validate_pbtxt('name: "m"\nmax_batch_size: "two"\n')
    with pytest.raises(DynashapeError, match="ModelConfig"):
        validate_pbtxt('name: "m"\nprofiles: [ "0" ]\n')


def test_rewrites_only_its_own_model_directory(tmp_path: Path, demo_fixed: Path) -> None:
    before = sha256_file(demo_fixed)
    repo = write_repository(demo_fixed, tmp_path / "repo", name="demo")
    write_repository(demo_fixed, tmp_path / "repo", name="demo", max_batch=2)  # replaces its own
    assert _parse(repo).max_batch_size == 2
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["demo"]  # no temporary left
    (tmp_path / "repo" / "other").mkdir()
    with pytest.raises(DynashapeError, match="not written by dynashape"):
        write_repository(demo_fixed, tmp_path / "repo", name="other")
    assert sha256_file(demo_fixed) == before


def test_cli_writes_the_repository(tmp_path: Path, demo_fixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triton", str(demo_fixed), "-o", str(tmp_path / "repo"), "--max-batch", "2", "--instances", "2"]) == 0
    out = capsys.readouterr().out
    assert "python backend, max_batch_size 2" in out and "parses as Triton's ModelConfig" in out
    assert [g.count for g in _parse_path(tmp_path / "repo" / "demo_fixed").instance_group] == [2]


def _parse_path(model_dir: Path) -> Any:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_python_backend_config_from_onnx(tmp_path: Path, demo_fixed: Path) -> None:
    repo = write_repository(demo_fixed, tmp_path / "repo", name="demo")
    cfg = _parse(repo)
    assert cfg.backend == "python" and cfg.max_batch_size == 8
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    lattice = json.loads(cfg.parameters["dynashape.lattice"].string_value)
    assert lattice["input"]["2"] == {"min": 16, "multiple": 16}
    assert cfg.parameters["dynashape.onnx"].string_value == "model.onnx"
    assert sorted(p.name for p in (repo.model_dir / "1").iterdir()) == ["model.onnx", "model.py"]


# --------------------------------------------------------------------------- a real tritonserver


def _require_tritonserver() -> None:
    """Skip without the binary (make test installs it: nvidia-pytriton, without its Python deps)."""
    from dynashape.serving.server import TritonInstall

    try:
        TritonInstall.find()
    except DynashapeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """segmentation_models_pytorch's U-Net (resnet18, random weights), opset 17, dynamic N/H/W;
    None without torch and smp (the GPU machine), so only its own tests skip."""
    from dynashape.testing import import_torchvision

    try:
        import torch

        import_torchvision()
        import segmentation_models_pytorch as smp
    except ImportError:
        return None

    from dynashape.export import export_module

    torch.manual_seed(0)
    net = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=3, decoder_channels=(64, 32, 16, 16, 8))
    path = tmp_path_factory.mktemp("unet") / "unet.onnx"
    export_module(net.eval(), {"input": (1, 3, 128, 128)}, {"input": [0, 2, 3]}, path=path, opset=17)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_fixed: Path, unet: Path | None) -> Any:
    """One tritonserver for the module on a repository of three Python-backend models: the fixed
    demo and the U-Net from ONNX, and a (synthetic) engine of the demo, served on CPU from the
    ONNX model copied beside it. Stopped at the end; its log is shown when it fails to start."""
    _require_tritonserver()
    from dynashape.serving.server import TritonServer

    tmp = tmp_path_factory.mktemp("triton")
    repo = tmp / "repo"
    write_repository(demo_fixed, repo, name="demo")
    if unet is not None:
        write_repository(unet, repo, name="unet", max_batch=4)
    engine = _engine(tmp, [_profile((1, 3, 32, 32), (1, 3, 64, 64), (4, 3, 256, 256))], output_shape=(-1, 2, -1, -1),
                     source=demo_fixed, name="demo.engine")
    write_repository(engine, repo, name="demo_engine", backend="python")
    srv = TritonServer(repo, env={"DYNASHAPE_ORT_THREADS": "1"}, ready_timeout=90)
    try:
        srv.start()
    except DynashapeError:
        print(srv.log_text()[-6000:])
        raise
    yield srv
    srv.stop()
    if "Traceback" in srv.log_text():
        print(srv.log_text()[-6000:])


def _client_module(protocol: str) -> Any:
    """tritonclient.http or .grpc; skip without it (the GPU machine carries only gRPC's packages,
    and tritonclient.http says so with a RuntimeError, not an ImportError)."""
    import importlib

    try:
        return importlib.import_module(f"tritonclient.{protocol}")
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"tritonclient[{protocol}] is not installed ({exc})")


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _infer(server: Any, model: str, x: np.ndarray, protocol: str = "http") -> np.ndarray:
    mod = _client_module(protocol)
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    inp = mod.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("output")


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 128, 32), (1, 3, 16, 208)])
def test_demo_over_http_matches_onnxruntime(server: Any, demo_fixed: Path, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
    got = _infer(server, "demo", x)
    want = _reference(demo_fixed, x)
    assert got.shape == want.shape == (shape[0], 2, *shape[2:])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 3, 96, 160), (1, 3, 224, 32)])
def test_unet_over_grpc_matches_onnxruntime(server: Any, unet: Path | None, shape: tuple[int, ...]) -> None:
    grpcclient = _client_module("grpc")
    if unet is None:
        pytest.skip("needs torch and segmentation_models_pytorch")
    x = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("unet", [inp]).as_numpy("output")
    np.testing.assert_allclose(got, _reference(unet, x), rtol=1e-4, atol=1e-4)


def test_engine_repository_falls_back_to_onnxruntime_on_cpu(server: Any, demo_fixed: Path) -> None:
    x = np.random.default_rng(1).standard_normal((1, 3, 48, 80), dtype=np.float32)
    got = _infer(server, "demo_engine", x, "grpc")
    np.testing.assert_allclose(got, _reference(demo_fixed, x), rtol=1e-5, atol=1e-5)
    assert "demo_engine" in server.log_text() and "ONNX Runtime" in server.log_text()


def test_off_lattice_shape_is_answered_with_the_valid_sizes(server: Any) -> None:
    from tritonclient.utils import InferenceServerException

    x = np.zeros((1, 3, 100, 64), dtype=np.float32)
    with pytest.raises(InferenceServerException, match=r"axis 2 is 100: .*16, 32, 48.*pad or resize to 96 or 112"):
        _infer(server, "demo", x, "grpc")


def test_concurrent_requests_are_batched_and_split_back(server: Any, demo_fixed: Path) -> None:
    httpclient = _client_module("http")
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1 + i % 2, 3, 64, 64), dtype=np.float32) for i in range(8)]
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    pending = []
    for x in inputs:
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        pending.append(client.async_infer("demo", [inp]))
    results = [p.get_result().as_numpy("output") for p in pending]
    batched = np.concatenate(inputs)
    want = _reference(demo_fixed, batched)
    start = 0
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got, want[start:start + x.shape[0]], rtol=1e-5, atol=1e-5)
        start += x.shape[0]
    client.close()


def test_server_that_cannot_load_a_model_fails_with_its_reason(tmp_path: Path, demo_fixed: Path) -> None:
    _require_tritonserver()
    from dynashape.serving.server import TritonServer

    repo = write_repository(demo_fixed, tmp_path / "repo", name="demo")
    (repo.model_dir / "1" / "model.onnx").unlink()
    (repo.model_dir / "1" / "model.onnx").write_bytes(b"not onnx")
    server = TritonServer(tmp_path / "repo", ready_timeout=60)
    # "exited": it noticed the exit rather than waiting out the timeout; the reason is ONNX Runtime's
    with pytest.raises(DynashapeError, match=r"tritonserver exited with code 1 .*failed to load 'demo'.*(?i:protobuf)"):
        server.start()
    assert server.log_text()  # the log outlives the stopped server


# --------------------------------------------------------------------------- the GPU machine


@pytest.mark.gpu
def test_python_backend_serves_the_engine_with_tensorrt(tmp_path: Path, demo_fixed: Path) -> None:
    """The Python-backend repository of a real two-profile engine, its runtime forced to TensorRT:
    mixed shapes over gRPC match ONNX Runtime within TensorRT's fp32 (TF32) tolerance."""
    _require_tritonserver()
    grpcclient = _client_module("grpc")

    from dynashape.serving.server import TritonServer
    from dynashape.trt.engine import build_engine

    small = _profile((1, 3, 32, 32), (1, 3, 128, 128), (4, 3, 256, 256))
    large = _profile((1, 3, 256, 256), (1, 3, 512, 512), (2, 3, 768, 768))
    engine = build_engine(demo_fixed, [small, large]).save(tmp_path / "demo.engine")
    write_repository(engine, tmp_path / "repo", name="demo", backend="python")
    with TritonServer(tmp_path / "repo", env={"DYNASHAPE_TRITON_RUNTIME": "tensorrt"}, ready_timeout=120) as srv:
        assert "serves TensorRT engine model.engine" in srv.log_text()
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        # max_batch_size is 2, the largest batch both profiles take (config.py says why): batch 3 at
        # 128x256 would fit the small profile, but Triton refuses it before the model sees it
        for shape in [(1, 3, 64, 96), (2, 3, 128, 256), (1, 3, 512, 384), (2, 3, 768, 768)]:
            x = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("demo", [inp]).as_numpy("output")
            want = _reference(demo_fixed, x)
            assert got.shape == want.shape
            assert np.max(np.abs(got - want)) <= 1e-2 * np.max(np.abs(want)) + 1e-4
