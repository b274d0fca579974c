"""`build`, `run`, `bench` from the command line: error paths on CPU, end to end on the GPU."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from trt_fixtures import conv_model, fixed_demo_model, skip_gpu_tests_without_trt  # noqa: F401

import dynashape.trt.engine as engine_mod
from dynashape import cli
from dynashape.cli import engine as cli_engine
from dynashape.demo import demo_onnx_path
from dynashape.model import save_model
from dynashape.shapes import Profile
from dynashape.trt import bench
from dynashape.trt import compat as trt_compat
from dynashape.trt.engine import BuildError, BuiltEngine, EngineInfo, TensorInfo, read_sidecar

NO_TRT = "TensorRT is not installed (No module named 'tensorrt'); install the extra"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "error:" in lines[0] and needle in lines[0]
    assert "Traceback" not in err


@pytest.fixture
def no_trt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_compat, "tensorrt_available", lambda: NO_TRT)


@pytest.fixture
def fixed_demo(tmp_path: Path) -> Path:
    return save_model(fixed_demo_model(), tmp_path / "fixed.onnx")


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """TensorRT 'present' on a fake GPU; the per-model cache goes to a temporary folder."""
    monkeypatch.setattr(trt_compat, "tensorrt_available", lambda: None)
    monkeypatch.setattr(trt_compat, "runtime_env", lambda: trt_compat.RuntimeEnv("8.5.3.1", "Fake GPU", "9.0"))
    cache = tmp_path / "cache"
    monkeypatch.setenv("DYNASHAPE_CACHE_DIR", str(cache))
    return cache


# --------------------------------------------------------------------------- build (CPU)


def test_build_without_tensorrt_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_trt: None
) -> None:
    model = save_model(conv_model(), tmp_path / "conv.onnx")
    code, _, err = _run(capsys, "build", str(model), "-o", str(tmp_path / "c.engine"),
                        "--min", "input:1x3x16x16", "--max", "input:[1,3,64,64]")
    assert code == 2
    _one_line_error(err, "TensorRT is not installed")  # before check runs: no DS003 note first
    assert not (tmp_path / "c.engine").exists()


def test_build_says_tensorrt_is_missing_before_the_hazard_gate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_trt: None
) -> None:
    code, _, err = _run(capsys, "build", str(demo_onnx_path()), "-o", str(tmp_path / "d.engine"))
    assert code == 2
    _one_line_error(err, "TensorRT is not installed")
    assert "refusing" not in err and "DS001" not in err


def test_build_refuses_the_unfixed_demo_naming_rules_and_nodes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_trt: Path
) -> None:
    code, _, err = _run(capsys, "build", str(demo_onnx_path()), "-o", str(tmp_path / "d.engine"))
    assert code == 1
    assert "refusing to build" in err and "--force" in err
    for needle in ("DS001", "DS002", "/AveragePool (AveragePool)", "/AveragePool_1", "/Resize (Resize)"):
        assert needle in err
    assert not (tmp_path / "d.engine").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--tactic-sources=-CUBLASS"], "unknown tactic source 'CUBLASS'"),
        (["--min", "input:1x3x16x16"], "--min and --max go together"),
        (["--min", "input:1x3x16x16", "--max", "input:1x3x8x8"], "min <= opt <= max"),
        (["--min", "x:1x3x16x16", "--max", "x:1x3x32x32"], "unknown input name 'x'"),
        (["--min", "input:1x3x16x16", "--max", "input:1x3x32x32",
          "--profile", "input:1x3x16x16", "input:1x3x16x16", "input:1x3x16x16"], "not both"),
    ],
)
def test_build_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], needle: str
) -> None:
    model = save_model(conv_model(), tmp_path / "conv.onnx")
    code, _, err = _run(capsys, "build", str(model), "-o", str(tmp_path / "c.engine"), *extra)
    assert code == 2
    _one_line_error(err, needle)


def test_build_refuses_onnx_output_and_missing_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = save_model(conv_model(), tmp_path / "conv.onnx")
    code, _, err = _run(capsys, "build", str(model), "-o", str(tmp_path / "out.onnx"))
    assert code == 2
    _one_line_error(err, "an engine is not an ONNX model")
    code, _, err = _run(capsys, "build", str(tmp_path / "gone.onnx"), "-o", str(tmp_path / "x.engine"))
    assert code == 2
    _one_line_error(err, "no such file")


def _fake_info(profiles: list[Profile]) -> EngineInfo:
    return EngineInfo(
        tensorrt_version="8.5.3.1", gpu_name="Fake GPU", compute_capability="9.0", profiles=profiles,
        inputs=[TensorInfo("input", "float32", (-1, 3, -1, -1), True)],
        outputs=[TensorInfo("output", "float32", (-1, 2, -1, -1), False)],
        source_sha256="0" * 64, engine_sha256=hashlib.sha256(b"plan").hexdigest(), engine_size=4,
    )


def test_build_derives_the_profile_from_the_lattice_and_writes_both_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fixed_demo: Path, monkeypatch: pytest.MonkeyPatch,
    fake_trt: Path,
) -> None:
    seen: dict[str, Any] = {}

    def fake_build(model: Any, profiles: list[Profile], **opts: Any) -> BuiltEngine:
        seen.update(opts, profiles=profiles)
        return BuiltEngine(b"plan", _fake_info(profiles))

    monkeypatch.setattr(engine_mod, "build_engine", fake_build)
    out = tmp_path / "demo.engine"
    code, stdout, err = _run(capsys, "build", str(fixed_demo), "-o", str(out), "--fp16", "--workspace", "256")
    assert code == 0, err
    p = seen["profiles"][0].inputs["input"]
    assert (p.min, p.opt, p.max) == ((1, 3, 128, 128), (1, 3, 512, 512), (1, 3, 1024, 1024))
    assert seen["fp16"] is True and seen["workspace"] == 256
    assert seen["tactic_sources"] == trt_compat.DEFAULT_TACTIC_SOURCES
    # the timing cache is on by default, one per model, TensorRT version and GPU type
    cache = Path(seen["timing_cache"])
    assert cache.parent.parent == fake_trt and cache.name == "timing-trt8.5.3.1-sm9.0.cache"
    assert out.read_bytes() == b"plan"
    info = read_sidecar(out)
    assert info is not None and info.source_path == str(fixed_demo)
    assert f"built {out}" in stdout
    assert "profile 0: input: 1x3x128x128 / 1x3x512x512 / 1x3x1024x1024" in stdout


def test_forced_build_failure_prints_tensorrt_lines_then_check_findings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        "[network.cpp::validate] Error Code 4: Internal Error (/AveragePool: window 32 > input 8)",
        "Cask convolution isConsistent check failed",
    ]

    def failing_build(model: Any, profiles: list[Profile], **opts: Any) -> BuiltEngine:
        summary = f"TensorRT failed to build the engine after 3.0 s: {lines[0]}"
        raise BuildError(summary, lines, ["/AveragePool"])

    monkeypatch.setattr(trt_compat, "tensorrt_available", lambda: None)
    monkeypatch.setattr(engine_mod, "build_engine", failing_build)
    code, _, err = _run(capsys, "build", str(demo_onnx_path()), "-o", str(tmp_path / "d.engine"), "--force",
                        "--no-timing-cache",
                        "--min", "input:1x3x128x128", "--max", "input:1x3x1024x1024")
    assert code == 1
    assert "TensorRT said:" in err and "Cask convolution isConsistent check failed" in err
    tail = err.split("what `check` says about the nodes involved (/AveragePool):", 1)[1]
    assert "DS001" in tail and "/AveragePool (AveragePool)" in tail and "/Resize" not in tail


def test_timing_cache_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fixed_demo: Path, monkeypatch: pytest.MonkeyPatch,
    fake_trt: Path,
) -> None:
    seen: list[Any] = []

    def fake_build(model: Any, profiles: list[Profile], **opts: Any) -> BuiltEngine:
        seen.append(opts["timing_cache"])
        return BuiltEngine(b"plan", _fake_info(profiles))

    monkeypatch.setattr(engine_mod, "build_engine", fake_build)
    out = str(tmp_path / "d.engine")
    assert _run(capsys, "build", str(fixed_demo), "-o", out, "--no-timing-cache")[0] == 0
    assert _run(capsys, "build", str(fixed_demo), "-o", out, "--timing-cache", str(tmp_path / "t.cache"))[0] == 0
    assert seen == [None, str(tmp_path / "t.cache")]
    code, _, err = _run(capsys, "build", str(fixed_demo), "-o", out, "--no-timing-cache", "--timing-cache", "x")
    assert code == 2 and "contradict" in err


class FakeMeasurer:
    """Stands in for bench.TrtMeasurer: a wide profile costs 20% at every probe."""

    instances: ClassVar[list[FakeMeasurer]] = []

    def __init__(self, model: Any, **opts: Any) -> None:
        self.opts = opts
        self.builds: list[Any] = []
        self.final_engine: BuiltEngine | None = None
        FakeMeasurer.instances.append(self)

    @staticmethod
    def _ms(profile: Profile, shapes: Any) -> float:
        p = profile.inputs["input"]
        wide = p.max[2] > 2 * p.min[2] or p.max[0] > p.min[0]
        return float(np.prod(shapes["input"])) * 1e-6 * (1.2 if wide else 1.0)

    def static_ms(self, shapes: Any) -> float:
        return float(np.prod(shapes["input"])) * 1e-6

    def profile_ms(self, profile: Profile, probes: Any) -> dict[str, float]:
        from dynashape.trt.planning import shape_key

        return {shape_key(p): self._ms(profile, p) for p in probes}

    def final(self, profiles: list[Profile], points: Any) -> list[dict[int, float]]:
        self.final_engine = BuiltEngine(b"plan", _fake_info(profiles))
        return [{i: self._ms(p, pt) for i, p in enumerate(profiles) if p.contains(pt)} for pt in points]


def test_build_profiles_auto_plans_writes_the_plan_and_prints_the_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fixed_demo: Path, monkeypatch: pytest.MonkeyPatch,
    fake_trt: Path,
) -> None:
    monkeypatch.setattr(bench, "TrtMeasurer", FakeMeasurer)
    out = tmp_path / "planned.engine"
    code, stdout, err = _run(
        capsys, "build", str(fixed_demo), "-o", str(out), "--profiles", "auto:3", "--fp16",
        "--min", "input:1x3x256x256", "--opt", "input:1x3x512x512", "--max", "input:2x3x1024x1024",
        "--probes", "input:1x3x256x256", "input:1x3x1024x1024", "input:2x3x512x512",
    )
    assert code == 0, err
    measurer = FakeMeasurer.instances[-1]
    assert measurer.opts["fp16"] is True and measurer.opts["timing_cache"].endswith("sm9.0.cache")
    assert str(measurer.opts["store"]).startswith(str(fake_trt))
    info = read_sidecar(out)
    assert info is not None and info.plan is not None
    assert 1 < len(info.profiles) <= 3 and len(info.plan.profiles) == len(info.profiles)
    assert {p.shapes["input"] for p in info.plan.probes} == {(1, 3, 256, 256), (1, 3, 1024, 1024), (2, 3, 512, 512)}
    assert "planned profiles" in stdout and "input:2x3x512x512" in stdout and "build time:" in stdout


def test_build_profiles_auto_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fixed_demo: Path, fake_trt: Path
) -> None:
    out = str(tmp_path / "x.engine")
    for argv, needle in [
        (["--profiles", "auto:0"], "auto:N with N >= 1"),
        (["--profiles", "many"], "write auto or auto:N"),
        (["--profiles", "auto", "--profile", "input:1x3x64x64", "input:1x3x64x64", "input:1x3x64x64"],
         "give the range with --min/--max"),
        (["--probes", "input:1x3x64x64"], "--probes goes with --profiles auto"),
        (["--profiles", "auto", "--min", "input:1x3x256x256", "--max", "input:1x3x512x512",
          "--probes", "input:1x3x1024x1024"], "outside the range"),
    ]:
        code, _, err = _run(capsys, "build", str(fixed_demo), "-o", out, *argv)
        assert code == 2, (argv, err)
        # check's DS003 warnings may come first; the error itself is one line
        errors = [ln for ln in err.splitlines() if "error:" in ln]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err


# --------------------------------------------------------------------------- run / bench (CPU)


def test_run_and_bench_error_paths(capsys: pytest.CaptureFixture[str], tmp_path: Path, no_trt: None) -> None:
    code, _, err = _run(capsys, "run", str(tmp_path / "gone.engine"))
    assert code == 2
    _one_line_error(err, "no such file")
    (tmp_path / "m.engine").write_bytes(b"plan")
    code, _, err = _run(capsys, "run", str(tmp_path / "m.engine"), "--shape", "input:1x3x8x8")
    assert code == 2
    _one_line_error(err, "TensorRT is not installed")
    code, _, err = _run(capsys, "bench", str(tmp_path / "m.engine"))
    assert code == 2
    _one_line_error(err, "TensorRT is not installed")


def test_run_refuses_a_truncated_engine(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    BuiltEngine(b"plan", _fake_info([])).save(tmp_path / "m.engine")
    (tmp_path / "m.engine").write_bytes(b"pl")
    code, _, err = _run(capsys, "run", str(tmp_path / "m.engine"))
    assert code == 2
    _one_line_error(err, "truncated")


class _FakeEngine:
    """Stands in for a loaded engine: output = 2 * input."""

    def __init__(self) -> None:
        self.inputs = [TensorInfo("input", "float32", (-1, 3, -1, -1), True)]
        self.profiles = [Profile().add("input", (1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 64, 64))]
        self.input_names = ["input"]
        self.graphs = engine_mod.cudart.GraphCache()

    def select_profile(self, shapes: Any) -> int:
        return engine_mod.select_profile(self.profiles, shapes)

    def warmup(self, shapes: Any = None) -> float:
        return 0.0

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.select_profile({n: a.shape for n, a in feeds.items()})
        return {"output": feeds["input"] * 2}

    def __enter__(self) -> _FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--shape", "input:1x3x16"], "has 3 axes, but input 'input' has 4"),
        (["--shape", "input:1x4x16x16"], "axis 1 is fixed at 3"),
        (["--shape", "input:1x3x[16..32]x16"], "cannot parse"),
        (["--shape", "image:1x3x16x16"], "unknown input name 'image'"),
    ],
)
def test_run_checks_shapes_against_the_engine_inputs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], needle: str
) -> None:
    monkeypatch.setattr(engine_mod.Engine, "load", classmethod(lambda cls, path, **kw: _FakeEngine()))
    code, _, err = _run(capsys, "run", "m.engine", *argv)
    assert code == 2
    _one_line_error(err, needle)


def test_bench_checks_shapes_against_the_sidecar_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    BuiltEngine(b"plan", _fake_info([])).save(tmp_path / "m.engine")
    code, _, err = _run(capsys, "bench", str(tmp_path / "m.engine"), "--shapes", "input:1x3x16x16", "input:1x3x16")
    assert code == 2
    _one_line_error(err, "--shapes input:1x3x16 has 3 axes")


def test_run_reads_npy_and_writes_npz(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_mod.Engine, "load", classmethod(lambda cls, path, **kw: _FakeEngine()))
    x = np.arange(3 * 20 * 24, dtype=np.float32).reshape(1, 3, 20, 24)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    code, stdout, err = _run(capsys, "run", "m.engine", "--input", f"input:{tmp_path / 'x.npy'}",
                             "-o", str(out))
    assert code == 0, err
    assert "1x2x20x24" not in stdout and "1x3x20x24" in stdout  # the table shows the output's shape
    np.testing.assert_array_equal(np.load(out)["output"], x * 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left behind
    code, stdout, err = _run(capsys, "run", "m.engine")
    assert code == 0 and "using profile 0's opt shape for input" in err and "1x3x16x16" in stdout
    code, _, err = _run(capsys, "run", "m.engine", "--shape", "input:1x3x128x128")
    assert code == 2
    _one_line_error(err, "outside every optimization profile")
    code, _, err = _run(capsys, "run", "m.engine", "--input", f"input:{tmp_path / 'x.npy'}",
                        "--shape", "input:1x3x8x8")
    assert code == 2
    _one_line_error(err, "disagrees with its --input")
    code, _, err = _run(capsys, "run", "m.engine", "--input", f"input:{tmp_path / 'nope.npy'}")
    assert code == 2
    _one_line_error(err, "no such file")


def test_split_known_name_allows_colons() -> None:
    assert cli_engine._split_known_name("a:b:c:/tmp/x:1.npy", ["a:b", "a:b:c"]) == ("a:b:c", "/tmp/x:1.npy")
    assert cli_engine._split_known_name("/tmp/x.npy", ["input"]) == ("input", "/tmp/x.npy")
    with pytest.raises(Exception, match=r"NAME:FILE\.npy"):
        cli_engine._split_known_name("/tmp/x.npy", ["a", "b"])


# --------------------------------------------------------------------------- GPU, end to end


@pytest.mark.gpu
def test_end_to_end_fixed_demo(capsys: pytest.CaptureFixture[str], tmp_path: Path, fixed_demo: Path) -> None:
    from dynashape.backends.ort import run_model
    from dynashape.model import load_model

    engine = tmp_path / "demo.engine"
    code, stdout, err = _run(capsys, "build", str(fixed_demo), "-o", str(engine),
                             "--min", "input:1x3x128x128", "--opt", "input:1x3x512x512",
                             "--max", "input:1x3x1024x1024", "--timing-cache", str(tmp_path / "tc"))
    assert code == 0, err
    model = load_model(fixed_demo)
    rng = np.random.default_rng(0)
    errors = {}
    for hw in [(128, 128), (512, 512), (1024, 1024), (256, 768), (640, 480), (384, 1024), (1024, 128)]:
        x = rng.standard_normal((1, 3, *hw)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        code, stdout, err = _run(capsys, "run", str(engine), "--input", f"input:{tmp_path / 'x.npy'}",
                                 "-o", str(tmp_path / "y.npz"))
        assert code == 0, err
        got = np.load(tmp_path / "y.npz")["output"]
        want = run_model(model, {"input": x})["output"]
        assert got.shape == want.shape
        errors[hw] = float(np.max(np.abs(got - want)))
    assert max(errors.values()) <= 1e-3, errors
    code, _, err = _run(capsys, "run", str(engine), "--shape", "input:1x3x2048x2048")
    assert code == 2
    _one_line_error(err, "outside every optimization profile")
    code, stdout, err = _run(capsys, "bench", str(engine), "--shapes", "input:1x3x256x256",
                             "--warmup", "2", "--iters", "20", "--json")
    assert code == 0, err
    assert json.loads(stdout)["rows"][0]["dynamic"]["median_ms"] > 0


def test_plan_table_reports_each_profile_and_the_build_times(capsys: pytest.CaptureFixture[str]) -> None:
    from dynashape.trt.planning import BuildRecord, Measured, ProfilePlan

    whole = Profile().add("input", (1, 3, 64, 64), (1, 3, 128, 128), (2, 3, 512, 512))
    cell = Profile().add("input", (1, 3, 362, 362), (1, 3, 512, 512), (2, 3, 512, 512))
    points = [Measured({"input": (1, 3, 512, 512)}, {0: 1.3, 1: 1.0}, static_ms=1.0),
              Measured({"input": (1, 3, 400, 400)}, {0: 0.9, 1: 0.8}, is_probe=False)]
    builds = [BuildRecord("static", "s", 10.0), BuildRecord("candidate", str(whole), 30.0, cached=True),
              BuildRecord("candidate", str(cell), 20.0), BuildRecord("final", "2 profile(s)", 5.0)]
    plan = ProfilePlan([whole, cell], points, 1.05, None, "every probe within 1.05x of static", builds=builds)
    cli_engine._print_plan(plan)
    out = capsys.readouterr().out
    assert "(overlap)" in out and "1.00x" in out  # the table (rich wraps it to the terminal)
    assert f"profile 0: {whole}; built alone in 30.0 s (an earlier run)" in out
    assert f"profile 1: {cell}; built alone in 20.0 s" in out
    # this run's builds only: the reused candidate's 30 s were spent in the earlier run
    assert "static probes 10.0 s, candidates 20.0 s, final engine 5.0 s; total 35.0 s" in out
    assert "1 measurement(s) reused" in out
