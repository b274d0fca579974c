"""Exit codes, one for each kind of ending, the same for every command (issue 15).

0 clean, 1 findings / failed shapes, 2 a user error (one line: what is wrong, what to do; no
traceback), 3 a bug in dynashape (the traceback, then one line with the versions), 130 Ctrl-C.
Each bad input below was once a traceback; each is run in process through ``cli.main``.
"""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from trt_fixtures import conv_model

import dynashape
from dynashape import __main__ as entry
from dynashape import api, cli, inputs
from dynashape.demo import demo_onnx_path
from dynashape.model import save_model
from dynashape.trt import compat as trt_compat

DEMO = str(demo_onnx_path())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys: pytest.CaptureFixture[str], *argv: str, words: tuple[str, ...] = ()) -> str:
    """Exit 2 with exactly one line on stderr, 'dynashape: error: ...', and no traceback."""
    code, _, err = run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("dynashape: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def conv(tmp_path: Path) -> str:
    """input [N,3,H,W] -> Conv -> Relu -> Conv: no hazard, checks in a fraction of a second."""
    return str(save_model(conv_model(), tmp_path / "conv.onnx"))


def _with_custom_op(model: onnx.ModelProto) -> onnx.ModelProto:
    """One `com.example` node on the output: ONNX Runtime cannot load the model."""
    out = model.graph.output[0].name
    last = next(n for n in model.graph.node if out in n.output)
    last.output[list(last.output).index(out)] = out + "_pre"
    model.graph.node.append(helper.make_node("MyOp", [out + "_pre"], [out], domain="com.example", name="custom_myop"))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


# ------------------------------------------------------------------ the cases of issue 15


@pytest.mark.parametrize("spec", ["input:1x3x²²⁴x224", "input:1x3x" + "9" * 5000 + "x224",
                                  "input:" + "x".join(["1"] * 5000), "input:1x3x[1..2" + "0" * 3000 + "]x64"])
def test_unicode_digits_huge_numbers_and_thousands_of_axes(capsys: pytest.CaptureFixture[str], conv: str,
                                                           spec: str) -> None:
    option = "--range" if ".." in spec else "--export-shape"
    line = user_error(capsys, "check", conv, option, spec)
    assert len(line) < 400  # a 5,000-character spec is cut in the message


def test_range_of_another_rank_is_refused_by_check_and_verify(capsys: pytest.CaptureFixture[str], conv: str) -> None:
    # check used to accept it; verify ended in an IndexError
    for command in ("check", "verify"):
        user_error(capsys, command, conv, "--range", "input:1x3x[16..64:16]", words=("3 axes", "has 4"))
        user_error(capsys, command, conv, "--range", "input:1x3x[16..64:16]x16x2", words=("5 axes",))


def test_a_sweep_that_cannot_fit_in_memory_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str], conv: str
) -> None:
    # verify used to allocate the input at the range's max: 224 GiB
    line = user_error(capsys, "verify", conv, "--range", "input:1x3x[16..200000:16]x[16..200000:16]",
                      words=("1x3x200000x200000", "GiB", "narrow the range"))
    assert "447.0 GiB" in line  # the input alone: 3 * 200000**2 float32


def test_memory_limit_is_the_machines_and_counts_the_float64_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = [inputs.DeclaredInput("x", (None, 3, None, None), 4)]
    big = {"x": (1, 3, 1024, 1024)}  # 12 MiB of float32, drawn as 24 MiB of float64 first
    assert inputs.run_bytes(declared, big) == 3 * 1024 * 1024 * 12
    inputs.check_memory(declared, big, "--range", limit=36 * 2**20)
    with pytest.raises(dynashape.errors.DynashapeError, match="12 MiB"):
        inputs.check_memory(declared, big, "--range", limit=36 * 2**20 - 1)


def test_fix_output_onto_a_directory_a_missing_one_or_an_unwritable_one(
    capsys: pytest.CaptureFixture[str], conv: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "out.onnx").mkdir()
    user_error(capsys, "fix", conv, "-o", str(tmp_path / "out.onnx"), words=("is a directory",))
    user_error(capsys, "fix", conv, "-o", str(tmp_path / "no" / "x.onnx"), words=("does not exist",))
    before = sorted(os.listdir(tmp_path))
    # a read-only directory (as root, permissions are not enforced: make the write itself fail)
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    monkeypatch.setattr("tempfile.mkstemp", _raise(PermissionError(13, "Permission denied")))
    user_error(capsys, "fix", conv, "-o", str(tmp_path / "x.onnx"), words=("cannot write", "Permission denied"))
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    user_error(capsys, "fix", conv, "-o", str(tmp_path / "x.onnx"), words=("permission denied",))
    assert sorted(os.listdir(tmp_path)) == before  # nothing half-written


def _raise(exc: BaseException) -> Any:
    def raiser(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return raiser


def test_verify_and_doctor_of_a_custom_op_name_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = str(save_model(_with_custom_op(conv_model()), tmp_path / "custom.onnx"))
    words = ("custom_myop (com.example::MyOp)", "ONNX Runtime cannot run")
    user_error(capsys, "verify", path, "--range", "input:1x3x[16..32:16]x16", words=words)
    user_error(capsys, "doctor", path, "--out-dir", str(tmp_path / "d"), "--no-tensorrt", words=words)
    user_error(capsys, "fix", path, "-o", str(tmp_path / "fixed.onnx"), words=words)
    clean = str(save_model(conv_model(), tmp_path / "conv.onnx"))
    user_error(capsys, "verify", clean, "--reference", f"onnx:{path}", "--range", "input:1x3x[16..32:16]x16",
               words=(*words, "of " + path))
    assert not (tmp_path / "d").exists() and not (tmp_path / "fixed.onnx").exists()


def test_build_without_tensorrt_says_so_before_the_hazard_gate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt_compat, "tensorrt_available", lambda: "TensorRT is not installed; install the extra")
    # the demo has hazards: the gate used to print 11 lines of them before the missing TensorRT
    user_error(capsys, "build", DEMO, "-o", str(tmp_path / "d.engine"), words=("TensorRT is not installed",))


class _InterruptedImport(importlib.abc.MetaPathFinder):
    """Ctrl-C during `import onnxruntime`: an ImportError whose __context__ is the interrupt."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.split(".")[0] == "onnxruntime":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ImportError(f"cannot import {name}") from None  # from None: still its __context__
        return None


def test_ctrl_c_during_the_lazy_onnxruntime_import_is_interrupted(
    capsys: pytest.CaptureFixture[str], conv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "onnxruntime"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_InterruptedImport(), *sys.meta_path])
    code, _, err = run(capsys, "verify", conv, "--range", "input:1x3x[16..32:16]x16")
    assert code == 130 and err.strip() == "dynashape: interrupted"


def test_ctrl_c_anywhere_is_interrupted(capsys: pytest.CaptureFixture[str], conv: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "check_model", _raise(KeyboardInterrupt()))
    code, _, err = run(capsys, "check", conv)
    assert code == 130 and err.strip() == "dynashape: interrupted"


def test_a_reader_that_goes_away_is_not_a_bug(capsys: pytest.CaptureFixture[str], conv: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "check_model", _raise(BrokenPipeError(32, "Broken pipe")))
    code, _, err = run(capsys, "check", conv, "--json")  # as in `dynashape check --json | head`
    assert code == 141 and err == ""


# ------------------------------------------------------------------ bugs are loud: exit 3


def test_a_bug_prints_its_traceback_and_says_it_is_one(capsys: pytest.CaptureFixture[str], conv: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "check_model", _raise(IndexError("tuple index out of range")))
    code, _, err = run(capsys, "check", conv)
    assert code == 3
    assert "Traceback" in err and "IndexError: tuple index out of range" in err
    last = err.strip().splitlines()[-1]
    assert "bug in dynashape" in last and dynashape.__version__ in last and "Python 3." in last
    assert "report" in last


def test_a_broken_command_module_is_loud_not_a_missing_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # build/run/bench/export used to vanish from the command list when their module failed to import
    monkeypatch.delattr(dynashape, "cli")
    monkeypatch.delitem(sys.modules, "dynashape.cli")
    monkeypatch.setitem(sys.modules, "dynashape.cli.engine", None)  # importing it raises ImportError
    monkeypatch.setattr(sys, "argv", ["dynashape", "check", "--list-rules"])
    code = entry.main()
    err = capsys.readouterr().err
    assert code == 3 and "dynashape.cli.engine" in err and "bug in dynashape" in err.splitlines()[-1]


def test_the_command_modules_import_without_torch_or_tensorrt() -> None:
    code = ("import sys; import dynashape.cli, dynashape.cli.engine, dynashape.cli.torch, dynashape.api; "
            "heavy = {'torch', 'tensorrt', 'onnxruntime'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_missing_optional_extra_is_a_user_error(capsys: pytest.CaptureFixture[str], conv: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "check_model", _raise(ModuleNotFoundError("No module", name="torch")))
    user_error(capsys, "check", conv, words=("pip install 'dynashape[torch]'",))


def test_every_entry_point_goes_through_the_same_wrapper(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["build", str(tmp_path / "gone.onnx"), "-o", str(tmp_path / "x.engine")]
    monkeypatch.setattr(sys, "argv", ["dynashape", *argv])
    for main in (entry.main, lambda: cli.main(argv)):
        code = main()
        err = capsys.readouterr().err
        assert code == 2 and err.strip() == f"dynashape: error: {tmp_path / 'gone.onnx'}: no such file"
    assert cli.main(["--version"]) == 0  # argparse's SystemExit becomes the code
    capsys.readouterr()
    # one wrapper: the entry point and cli.main both end in dynashape.errors.run_guarded
    assert entry.run_guarded is cli.run_guarded is dynashape.errors.run_guarded


@pytest.mark.parametrize("argv", [["check", "--no-such-option"], ["check", "x.onnx", "--range"], ["bogus"],
                                  ["verify", "x.onnx", "--atol", "abc"], ["build", "x.onnx"]])
def test_argument_errors_are_one_line_too(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    line = user_error(capsys, *argv)
    assert "--help" in line


# ------------------------------------------------------------------ what a new user types


def _text_file(tmp_path: Path) -> str:
    p = tmp_path / "notes.onnx"
    p.write_text("these are my notes, renamed .onnx\n")
    return str(p)


def _static_model(tmp_path: Path) -> str:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    return str(save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx"))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["check", "{tmp}/missing.onnx"], ("no such file",)),
        (["check", "{tmp}"], ("is a directory",)),
        (["check", "{text}"], ("not a valid ONNX",)),
        (["check", "{empty}"], ("empty",)),
        (["check", "{truncated}"], ("not a valid ONNX",)),
        (["check", "{conv}", "--heatmap", "{tmp}/no/map.png"], ("does not exist",)),
        (["check", "{static}", "--heatmap", "{tmp}/map.png"], ("two dynamic spatial axes",)),
        (["check", "{conv}", "--range", "image:1x3x[16..64]x16"], ("unknown input name 'image'", "input")),
        (["check", "{conv}", "--range", "input:1x4x[16..64]x16"], ("axis 1 is fixed at 3",)),
        (["check", "{conv}", "--export-shape", "input:1x4x16x16"], ("axis 1 is fixed at 3",)),
        (["check", "{static}", "--range", "x:1x3x[8..16]x8"], ("axis 2 is fixed at 8",)),
        (["verify", "{static}"], ("no input has a dynamic axis",)),
        (["check", "{conv}", "--range", "input:-1x3x16x16"], ("a size is positive",)),
        (["check", "{conv}", "--range", "input:1x3x[16..64:0]x16"], ("at least 1",)),
        (["check", "{conv}", "--range", "input:1x3x[64..16]x16"], ("min 64 is larger than max 16",)),
        (["check", "{conv}", "--range", "input:"], ("empty",)),
        (["check", "{conv}", "--range", "input:1x3x[16..64x16"], ("unbalanced",)),
        (["verify", "{conv}", "--atol", "-1"], ("--atol",)),
        (["doctor", "{conv}", "--out-dir", "{text}", "--no-tensorrt"], ("is a file",)),
        (["fix", "{conv}", "-o", "{conv}"], ("refusing to overwrite",)),
        (["fix", "{conv}"], ("-o OUT.onnx",)),
        (["build", "{conv}", "-o", "{tmp}/c.engine", "--min", "input:1x3x16x16", "--max", "input:1x3x32x32x2"],
         ("different ranks",)),
        (["build", "{conv}", "-o", "{tmp}/c.engine", "--min", "input:1x4x16x16", "--max", "input:1x4x32x32"],
         ("axis 1 is fixed at 3",)),
    ],
)
def test_bad_inputs_a_new_user_types(capsys: pytest.CaptureFixture[str], tmp_path: Path, conv: str,
                                     argv: list[str], words: tuple[str, ...]) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    data = Path(conv).read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    paths = {"tmp": str(tmp_path), "conv": conv, "text": _text_file(tmp_path), "static": _static_model(tmp_path),
             "empty": str(tmp_path / "empty.onnx"), "truncated": str(tmp_path / "truncated.onnx")}
    user_error(capsys, *[a.format(**paths) for a in argv], words=words)


def test_clean_and_findings_codes(capsys: pytest.CaptureFixture[str], conv: str) -> None:
    code, out, _ = run(capsys, "check", conv)
    assert code == 0, out
    code, out, _ = run(capsys, "check", DEMO)
    assert code == 1 and "DS001" in out


def test_the_console_script_exits_2_with_one_line() -> None:
    exe = Path(sys.executable).with_name("dynashape")
    proc = subprocess.run([str(exe), "check", DEMO, "--export-shape", "input:1x3x²²⁴x224"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("dynashape: error: cannot parse '²²⁴'")
