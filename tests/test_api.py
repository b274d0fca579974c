"""The Python API (``import dynashape``): the README's example, and the same behaviour as the CLI."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import onnx
import pytest
from trt_fixtures import conv_model, fixed_demo_model, skip_gpu_tests_without_trt  # noqa: F401

import dynashape
from dynashape import api, cli
from dynashape.demo import demo_onnx_path
from dynashape.model import save_model
from dynashape.trt import compat as trt_compat

DEMO = str(demo_onnx_path())
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_examples() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_example_runs_on_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = _readme_examples()
    assert len(examples) == 2, "the Python API section has a CPU example and a TensorRT one"
    monkeypatch.chdir(tmp_path)
    exec(compile(examples[0], "README.md (Python API)", "exec"), {})
    assert (tmp_path / "demo.fixed.onnx").is_file()


@pytest.mark.gpu
def test_the_readme_tensorrt_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DYNASHAPE_CACHE_DIR", str(tmp_path / "cache"))
    cpu, gpu = _readme_examples()
    exec(compile(cpu, "README.md (Python API)", "exec"), {})
    exec(compile(gpu, "README.md (Python API, TensorRT)", "exec"), {})
    assert (tmp_path / "demo.engine").is_file() and (tmp_path / "demo.engine.json").is_file()


def test_the_package_exposes_the_api() -> None:
    for name in ("check", "fix", "verify", "build"):
        assert callable(getattr(dynashape, name)) and getattr(dynashape, name).__doc__
    assert dynashape.Engine.__name__ == "Engine" and dynashape.Profile.__name__ == "Profile"
    assert dynashape.Finding.__name__ == "Finding" and issubclass(dynashape.DynashapeError, Exception)
    assert set(dynashape.__all__) <= set(dir(dynashape))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = dynashape.nope  # type: ignore[attr-defined]


def test_the_api_names_stay_functions_when_the_pipeline_modules_are_imported() -> None:
    """No module of the package is named like an API function (the layout by stage): importing
    the pipeline's modules leaves ``dynashape.check``, ``fix`` and ``verify`` the functions."""
    for name in ("check", "fix", "verify"):
        assert importlib.util.find_spec(f"dynashape.{name}") is None
        importlib.import_module(f"dynashape.pipeline.{name}")
        assert getattr(dynashape, name) is getattr(api, name) and callable(getattr(dynashape, name))


def test_check_takes_a_path_or_a_model_and_text_or_dict_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx.load(DEMO)
    before = model.SerializeToString()
    by_text = dynashape.check(DEMO, export_shape="input:1x3x512x512")
    by_dict = dynashape.check(model, export_shape={"input": (1, 3, 512, 512)})
    assert model.SerializeToString() == before  # the caller's model is not modified
    assert [f.rule for f in by_text.findings] == [f.rule for f in by_dict.findings]
    assert {"DS001", "DS002"} <= {f.rule for f in by_text.findings}
    assert all(isinstance(f, dynashape.Finding) for f in by_text.findings)
    assert by_text.not_proven  # a static check proves nothing about branches the export did not take
    # the CLI prints the same JSON
    assert cli.main(["check", DEMO, "--export-shape", "input:1x3x512x512", "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    data = json.loads(json.dumps(by_text.to_json(), default=str))
    assert [f["rule"] for f in printed["findings"]] == [f["rule"] for f in data["findings"]]
    assert printed["export_shape"] == data["export_shape"] and printed["not_proven"] == data["not_proven"]


def test_bad_input_is_a_dynashape_error_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(dynashape.DynashapeError, match="no such file"):
        dynashape.check(tmp_path / "missing.onnx")
    with pytest.raises(dynashape.DynashapeError, match="unknown input name 'image'"):
        dynashape.check(DEMO, ranges={"image": "1x3x[128..256:32]x128"})
    with pytest.raises(dynashape.DynashapeError, match="--atol"):
        dynashape.verify(DEMO, atol=-1)


def test_fix_dry_run_writes_nothing_and_fix_writes_the_rewrite(tmp_path: Path) -> None:
    dry = dynashape.fix(DEMO)
    assert dry.applied and dry.path is None and list(tmp_path.iterdir()) == []
    out = tmp_path / "fixed.onnx"
    result = dynashape.fix(DEMO, out)
    assert result.path == str(out) and out.is_file()
    assert not {f.rule for f in dynashape.check(out).findings} & {"DS001", "DS002"}
    with pytest.raises(dynashape.DynashapeError, match="refusing to overwrite"):
        dynashape.fix(out, out)


def test_verify_returns_the_sweep(tmp_path: Path) -> None:
    path = save_model(conv_model(), tmp_path / "conv.onnx")
    sweep = dynashape.verify(path, ranges="input:1x3x[16..64:16]x[16..64:16]")
    assert sweep.results and sweep.all_ok and not sweep.proven  # no reference: sizes only
    assert sweep.to_json()["counts"]["ran"] == len(sweep.results)


def test_list_rules_names_the_file_of_every_rule() -> None:
    rules = api.list_rules()
    assert [r.id for r in rules] == sorted(r.id for r in rules)
    assert {r.id for r in rules} >= {f"DS{i:03d}" for i in range(1, 18)}
    for rule in rules:
        assert rule.title and (Path(dynashape.__file__).parent / rule.file).is_file(), rule


# ------------------------------------------------------------------ build's policy, without TensorRT


def test_build_without_tensorrt_says_so_before_the_gate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trt_compat, "tensorrt_available", lambda: "TensorRT is not installed (test)")
    with pytest.raises(dynashape.DynashapeError, match="TensorRT is not installed"):
        dynashape.build(DEMO, tmp_path / "d.engine")


def test_build_refuses_a_model_with_hazards_unless_forced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trt_compat, "tensorrt_available", lambda: None)
    with pytest.raises(api.BuildRefused) as refused:
        api.prepare_build(DEMO, tmp_path / "d.engine", timing_cache=False)
    assert refused.value.exit_code == 1 and {f.rule for f in refused.value.hazards} >= {"DS001", "DS002"}
    setup = api.prepare_build(DEMO, tmp_path / "d.engine", timing_cache=False, force=True)
    assert setup.forced and setup.profile_source == "lattice" and setup.timing_cache is None
    assert not (tmp_path / "d.engine").exists()  # nothing is built before run_build


def test_build_default_profile_and_timing_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                fixed_demo: Path) -> None:
    monkeypatch.setattr(trt_compat, "tensorrt_available", lambda: None)
    monkeypatch.setattr(trt_compat, "runtime_env", lambda: trt_compat.RuntimeEnv("8.5.3.1", "Fake GPU", "9.0"))
    monkeypatch.setenv("DYNASHAPE_CACHE_DIR", str(tmp_path / "cache"))
    setup = api.prepare_build(fixed_demo, tmp_path / "d.engine")
    assert setup.profile_source == "lattice" and len(setup.profiles) == 1 and not setup.forced
    assert setup.timing_cache is not None and setup.timing_cache.parent.parent == tmp_path / "cache"
    assert setup.timing_cache.name == "timing-trt8.5.3.1-sm9.0.cache"
    given = dynashape.Profile().add("input", min=(1, 3, 128, 128), opt=(1, 3, 256, 256), max=(1, 3, 512, 512))
    as_text = ("input:1x3x128x128", None, "input:1x3x512x512")
    setup = api.prepare_build(fixed_demo, None, profiles=[given, as_text], timing_cache=tmp_path / "t.cache")
    assert setup.profile_source == "given" and setup.profiles[0] == given and len(setup.profiles) == 2
    assert setup.timing_cache == tmp_path / "t.cache"
    with pytest.raises(dynashape.DynashapeError, match="an engine is not an ONNX model"):
        api.prepare_build(fixed_demo, tmp_path / "x.onnx")


@pytest.fixture
def fixed_demo(tmp_path: Path) -> Path:
    return save_model(fixed_demo_model(), tmp_path / "fixed_demo.onnx")


@pytest.mark.gpu
def test_build_and_engine_on_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed_demo: Path) -> None:
    import numpy as np

    monkeypatch.setenv("DYNASHAPE_CACHE_DIR", str(tmp_path / "cache"))
    result = dynashape.build(fixed_demo, tmp_path / "d.engine")
    assert result.path == tmp_path / "d.engine" and result.built.info.source_path == str(fixed_demo)
    with dynashape.Engine.load(tmp_path / "d.engine") as engine:
        outputs = engine.infer({"input": np.random.default_rng(0).random((1, 3, 256, 384), np.float32)})
    assert all(out.shape[0] == 1 for out in outputs.values())
