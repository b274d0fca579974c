"""The console script: exit codes, JSON, and one-line errors with no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dynashape import cli
from dynashape.demo import demo_onnx_path

EXE = shutil.which("dynashape", path=os.path.dirname(sys.executable)) or "dynashape"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The same command through ``cli.main`` (the console script's entry point), without the
    interpreter start-up: for the error paths, where nothing heavy runs."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("dynashape: error:")]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0]


def test_check_demo_json() -> None:
    proc = run("check", str(demo_onnx_path()), "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    rules = sorted({f["rule"] for f in data["findings"]})
    assert rules == ["DS001", "DS002", "DS003"]
    for f in data["findings"]:
        assert set(f) >= {"rule", "severity", "node", "op", "message", "fixable", "detected_by"}
    assert data["lattice"]["input"]["2"] == {"min": 16, "multiple": 16}


def test_check_list_rules() -> None:
    proc = run("check", "--list-rules")
    assert proc.returncode == 0
    for rule in ("DS001", "DS002", "DS003", "DS005"):
        assert rule in proc.stdout
    assert "[1, L0, C]" in proc.stdout  # square brackets in text are shown, not taken for rich markup


def test_brackets_in_messages_survive_the_terminal_output(tmp_path: Path) -> None:
    src = tmp_path / "[weird]name.onnx"
    shutil.copy(demo_onnx_path(), src)
    proc = run("check", str(src))
    assert proc.returncode == 1, proc.stderr
    assert "[weird]name.onnx" in proc.stdout.replace("\n", "")


def test_check_range_off_lattice_is_an_error_finding() -> None:
    proc = run("check", str(demo_onnx_path()), "--range", "input:1x3x[128..1024:8]x[128..1024:32]", "--json")
    data = json.loads(proc.stdout)
    errors = [f for f in data["findings"] if f["rule"] == "DS003" and f["severity"] == "error"]
    assert len(errors) == 1 and "[128..1024:16]" in errors[0]["fix"]


def test_fix_writes_and_never_overwrites_input(tmp_path: Path) -> None:
    src = tmp_path / "demo.onnx"
    shutil.copy(demo_onnx_path(), src)
    before = src.read_bytes()
    proc = run("fix", str(src), "-o", str(tmp_path / "fixed.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fixed.onnx").exists() and src.read_bytes() == before
    assert_one_line_error(run("fix", str(src), "-o", str(src)), "refusing to overwrite")
    assert check_clean(tmp_path / "fixed.onnx")


def check_clean(path: Path) -> bool:
    data = json.loads(run("check", str(path), "--json").stdout)
    return {f["rule"] for f in data["findings"]} == {"DS003"}


def test_verify_json(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.onnx"
    assert run("fix", str(demo_onnx_path()), "-o", str(fixed)).returncode == 0
    proc = run("verify", str(fixed), "--range", "input:[1..2]x3x[128..256:16]x[128..256:64]", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)["results"]
    # no --reference: only sizes checked, so "ran", never "ok" (tests/test_doctor.py)
    assert results and all(r["status"] == "ran" for r in results)
    assert set(results[0]) >= {"shape", "status", "max_abs_error", "message"}


def test_doctor_demo_json(tmp_path: Path) -> None:
    proc = run("doctor", "--json", "--no-heatmap", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert {"DS001", "DS002", "DS003"} <= {f["rule"] for f in data["findings"]}
    assert len(data["fixed"]["applied"]) == 3 and Path(tmp_path, data["fixed"]["path"]).exists()
    results = data["verify"]["results"]
    assert len(results) >= 6 and all(r["status"] == "ok" for r in results)
    assert data["tensorrt"]["status"] in ("skipped", "built", "failed")
    if data["tensorrt"]["status"] == "skipped":
        assert data["tensorrt"]["reason"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ("empty",)),
        (b"this is not onnx at all", ("not a valid ONNX",)),
    ],
)
def test_bad_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, words: tuple[str, ...]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    assert_one_line_error(in_process(capsys, "check", str(bad)), *words)


def test_truncated_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = demo_onnx_path().read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    assert_one_line_error(in_process(capsys, "check", str(bad)))
    out = tmp_path / "out.onnx"
    assert_one_line_error(in_process(capsys, "fix", str(bad), "-o", str(out)))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["truncated.onnx"]


def test_missing_file_and_missing_output_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_line_error(in_process(capsys, "check", str(tmp_path / "nope.onnx")), "no such file")
    assert_one_line_error(in_process(capsys, "fix", str(demo_onnx_path()), "-o", str(tmp_path / "no" / "x.onnx")),
                          "does not exist")
    out = tmp_path / "doctor-out"
    assert_one_line_error(in_process(capsys, "doctor", str(tmp_path / "nope.onnx"), "--out-dir", str(out)),
                          "no such file")
    assert not out.exists()  # a refused model leaves nothing behind


def test_bad_specs(capsys: pytest.CaptureFixture[str]) -> None:
    model = str(demo_onnx_path())
    assert_one_line_error(in_process(capsys, "check", model, "--range", "image:1x3x[128..1024:32]x512"),
                          "unknown input", "input")
    assert_one_line_error(in_process(capsys, "check", model, "--range", "input:1x3x[1024..128]x512"), "larger than max")
    assert_one_line_error(in_process(capsys, "check", model, "--export-shape", "input:1x3xfoox512"), "cannot parse")


def test_no_dynamic_axis(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "static.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert_one_line_error(in_process(capsys, "check", str(path)), "no input has a dynamic axis")


def test_old_opset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)]), path)
    assert_one_line_error(in_process(capsys, "check", str(path)), "opset 9")
