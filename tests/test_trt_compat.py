"""TensorRT version branches and tactic-source parsing, with fake `tensorrt` modules (no GPU)."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from dynashape.errors import DynashapeError
from dynashape.trt import compat as trt_compat
from dynashape.trt.compat import TacticSpec, parse_tactic_sources, tactic_mask

BITS = {"CUBLAS": 0, "CUBLAS_LT": 1, "CUDNN": 2, "EDGE_MASK_CONVOLUTIONS": 3, "JIT_CONVOLUTIONS": 4}
ALL = 0b11111


# --------------------------------------------------------------------------- tactic sources


def test_default_spellings_keep_tensorrt_default() -> None:
    for text in (None, "", "default", " DEFAULT "):
        spec = parse_tactic_sources(text)
        assert spec.is_default
        assert tactic_mask(spec, ALL, BITS) == ALL


def test_trtexec_removal_list() -> None:
    spec = parse_tactic_sources("-CUBLAS,-CUBLAS_LT,-CUDNN")
    assert spec.remove == {"CUBLAS", "CUBLAS_LT", "CUDNN"} and not spec.add
    assert tactic_mask(spec, ALL, BITS) == 0b11000  # edge-mask + JIT only


def test_addition_and_case_and_alias() -> None:
    spec = parse_tactic_sources(" +edge_mask_convolutions , -cublasLt ")
    assert spec.add == {"EDGE_MASK_CONVOLUTIONS"} and spec.remove == {"CUBLAS_LT"}
    assert tactic_mask(spec, 0b00001, BITS) == 0b01001


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("CUBLAS", "+NAME or -NAME"),
        ("-CUBLASS", "unknown tactic source 'CUBLASS'"),
        ("+CUDNN,-CUDNN", "both added and removed"),
        ("-", "+NAME or -NAME"),
    ],
)
def test_bad_tactic_specs_are_user_errors(text: str, needle: str) -> None:
    with pytest.raises(DynashapeError, match=needle.replace("+", r"\+")):
        parse_tactic_sources(text)


def test_adding_a_source_this_version_lacks_is_refused_removing_is_not() -> None:
    old = {k: v for k, v in BITS.items() if k != "JIT_CONVOLUTIONS"}
    assert tactic_mask(TacticSpec(remove=frozenset({"JIT_CONVOLUTIONS"})), 0b1111, old) == 0b1111
    with pytest.raises(DynashapeError, match="does not exist in this TensorRT"):
        tactic_mask(TacticSpec(add=frozenset({"JIT_CONVOLUTIONS"})), 0b1111, old)


def test_default_is_tensorrt_kernels_only() -> None:
    assert tactic_mask(parse_tactic_sources(trt_compat.DEFAULT_TACTIC_SOURCES), ALL, BITS) == 0b11000


# --------------------------------------------------------------------------- availability


def test_tensorrt_available_reports_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    reason = trt_compat.tensorrt_available()
    assert reason is not None and "TensorRT is not installed" in reason
    with pytest.raises(DynashapeError, match="TensorRT is not installed"):
        trt_compat.import_trt()


# --------------------------------------------------------------------------- fakes of tensorrt


def _fake_trt(version: str) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)  # type: ignore[attr-defined]

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    trt.ILogger = ILogger  # type: ignore[attr-defined]
    return trt


class _Builder:
    def __init__(self) -> None:
        self.flags: list[int] = []

    def create_network(self, flags: int) -> str:
        self.flags.append(flags)
        return "network"


@pytest.mark.parametrize(("version", "flags"), [("8.5.3.1", 1), ("8.6.1.6", 1), ("10.3.0.26", 0)])
def test_explicit_batch_only_below_10(monkeypatch: pytest.MonkeyPatch, version: str, flags: int) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(version))
    builder = _Builder()
    assert trt_compat.create_network(builder) == "network"
    assert builder.flags == [flags]


def test_profile_shapes_uses_named_api_when_present() -> None:
    class Named:
        def get_tensor_profile_shape(self, name: str, index: int) -> list[list[int]]:
            assert (name, index) == ("x", 1)
            return [[1, 2], [1, 4], [1, 8]]

    class Old:
        def get_profile_shape(self, index: int, name: str) -> list[list[int]]:
            assert (name, index) == ("x", 1)
            return [[1, 2], [1, 3], [1, 9]]

    assert trt_compat.profile_shapes(Named(), "x", 1) == ((1, 2), (1, 4), (1, 8))
    assert trt_compat.profile_shapes(Old(), "x", 1) == ((1, 2), (1, 3), (1, 9))


def test_parser_errors_name_the_node_in_both_versions() -> None:
    class Err85:
        def desc(self) -> str:
            return "bad attribute"

        def node(self) -> int:
            return 7

    class Err10(Err85):
        def node_name(self) -> str:
            return "/AveragePool"

    class Parser:
        def __init__(self, errs: list[Any]) -> None:
            self.errs = errs
            self.num_errors = len(errs)

        def get_error(self, i: int) -> Any:
            return self.errs[i]

    assert trt_compat.parser_errors(Parser([Err85()])) == ["bad attribute (node #7)"]
    assert trt_compat.parser_errors(Parser([Err10()])) == ["bad attribute (node /AveragePool)"]


def test_logger_captures_errors_and_shows_each_warning_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    trt = _fake_trt("8.5.3.1")
    sev = trt.ILogger.Severity  # type: ignore[attr-defined]
    monkeypatch.setattr(trt_compat._HOLDER, "seen_warnings", set())
    with caplog.at_level(logging.WARNING, logger="dynashape.trt.compat"), trt_compat.capture_log() as cap:
        trt_compat._forward(trt, sev.ERROR, "Error Code 4: /AveragePool: bad\n")
        trt_compat._forward(trt, sev.WARNING, "slow tactic")
        trt_compat._forward(trt, sev.WARNING, "slow tactic")
        trt_compat._forward(trt, sev.INFO, "chatter")
    trt_compat._forward(trt, sev.ERROR, "after the block")
    assert cap.errors == ["Error Code 4: /AveragePool: bad"]
    assert cap.warnings == ["slow tactic", "slow tactic"]
    assert [r.getMessage() for r in caplog.records] == ["TensorRT: slow tactic"]


def test_logger_subclasses_ilogger_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("8.5.3.1"))
    monkeypatch.setattr(trt_compat._HOLDER, "instance", None)
    first = trt_compat.trt_logger()
    assert isinstance(first, sys.modules["tensorrt"].ILogger)
    assert trt_compat.trt_logger() is first


def test_major_version() -> None:
    assert trt_compat.major_version("8.5.3.1") == 8
    assert trt_compat.major_version("10.0.1") == 10
    assert trt_compat.major_version("garbage") == 0


def test_numpy_dtypes_by_name_without_trt_nptype() -> None:
    import enum

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        BOOL = 4
        BF16 = 7

    assert trt_compat.numpy_dtype_name(DataType.FLOAT) == "float32"
    assert trt_compat.numpy_dtype_name(DataType.HALF) == "float16"
    assert trt_compat.numpy_dtype_name(DataType.BOOL) == "bool"
    with pytest.raises(DynashapeError, match="BF16 are not supported"):
        trt_compat.numpy_dtype_name(DataType.BF16)


def test_gpu_uuid_from_nvidia_smi_or_empty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # torch absent: nvidia-smi is asked
    monkeypatch.setenv("PATH", str(tmp_path))
    assert trt_compat.gpu_uuid() == ""  # no nvidia-smi: no card to name
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho GPU-1234abcd-0000\n")
    smi.chmod(0o755)
    assert trt_compat.gpu_uuid() == "GPU-1234abcd-0000"
    smi.write_text("#!/bin/sh\nexit 9\n")  # a driver that fails says nothing, it does not raise
    assert trt_compat.gpu_uuid() == ""


@pytest.mark.parametrize(("visible", "smi_id"), [(None, "0"), ("1", "1"), ("2,0", "2"), ("GPU-ab12", "GPU-ab12"),
                                                 ("", "0"), ("junk", "0")])
def test_nvidia_smi_asks_about_the_gpu_cuda_uses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 visible: str | None, smi_id: str) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    smi = tmp_path / "nvidia-smi"  # answers with the --id it was given, as name and as UUID
    smi.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --id=*) id="${a#--id=}";; esac; done\n'
                   'case "$1" in *uuid*) echo "$id";; *) echo "card $id, 9.0";; esac\n')
    smi.chmod(0o755)
    assert trt_compat.gpu_uuid() == smi_id
    assert trt_compat.gpu_identity() == (f"card {smi_id}", "9.0")
