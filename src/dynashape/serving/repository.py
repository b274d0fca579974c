"""Write a Triton model repository (``REPO/NAME/config.pbtxt`` + ``REPO/NAME/1/...``).

``tensorrt`` backend: ``1/model.plan`` is the engine (its sidecar beside it as
``model.plan.json``). ``python`` backend: ``1/model.py`` is dynashape's Python-backend model,
with ``1/model.engine`` (+ sidecar) when an engine was given and ``1/model.onnx`` when the ONNX
model is at hand (given, or the engine's source whose SHA-256 matches the sidecar), so the
repository runs on its own: the engine on a GPU, ONNX Runtime on CPU elsewhere.

The model directory is written beside its final place and renamed into it; an existing one is
replaced only when dynashape wrote it. The user's model is only read.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from dynashape.errors import DynashapeError
from dynashape.model import load_model, sha256_file
from dynashape.pipeline.check import check_model
from dynashape.serving.config import (
    ModelConfig,
    ServedModel,
    check_triton_versions,
    python_config,
    served_from_engine,
    served_from_onnx,
    tensorrt_config,
    validate_pbtxt,
)
from dynashape.trt.engine import check_sidecar, read_sidecar, sidecar_path

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKENDS = ("tensorrt", "python")
VERSION_DIR = "1"
_MARKER = "# written by dynashape"


@dataclass(frozen=True)
class Repository:
    """What ``write_repository`` wrote."""

    root: Path
    name: str
    backend: str
    config: ModelConfig
    files: tuple[Path, ...]
    schema_checked: bool  # parsed with Triton's ModelConfig message (tritonclient installed)
    notes: tuple[str, ...] = ()

    @property
    def model_dir(self) -> Path:
        return self.root / self.name


def model_name(path: Path) -> str:
    """A Triton model name from a file name (letters, digits, ``_ . -``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("._-")
    return name or "model"


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise DynashapeError(f"--name {name!r}: use letters, digits, '_', '.' and '-' (it is a directory name)")
    return name


def write_repository(
    model_path: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    backend: str | None = None,
    max_batch: int | None = None,
    instances: int = 1,
    triton_trt: str | None = None,
    triton_gpu: str | None = None,
    onnx_path: str | Path | None = None,
    lattice: bool = True,
) -> Repository:
    """Write ``out/NAME`` for ``model_path`` (an engine with its sidecar, or an ONNX model).

    ``backend``: ``tensorrt`` (default for an engine) or ``python`` (default for ONNX).
    ``onnx_path``: the engine's source model when the sidecar's path is stale; it gives the
    lattice and the Python backend's CPU fallback. ``lattice=False`` skips the lattice scan.
    """
    src = Path(model_path)
    if not src.exists():
        raise DynashapeError(f"{src}: no such file")
    if src.is_dir():
        raise DynashapeError(f"{src}: is a directory, expected MODEL.engine or MODEL.onnx")
    is_engine = src.suffix in ENGINE_SUFFIXES
    if not is_engine and src.suffix != ".onnx":
        raise DynashapeError(
            f"{src}: expected a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}, with its .json sidecar from "
            "`dynashape build`) or an ONNX model (.onnx)"
        )
    if instances < 1:
        raise DynashapeError(f"--instances {instances}: give at least 1")
    backend = backend or ("tensorrt" if is_engine else "python")
    if backend not in BACKENDS:
        raise DynashapeError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    name = _check_name(name) if name else model_name(src)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DynashapeError(f"{root}: exists and is not a directory; -o takes the model repository directory")
    if not root.parent.is_dir():
        raise DynashapeError(f"{root.parent}: no such directory; create it first")
    target = root / name
    if target.exists() and not _written_by_us(target):
        raise DynashapeError(
            f"{target}: exists and was not written by dynashape; choose another --name or -o, or remove it"
        )

    notes: list[str] = []
    onnx_model: Any = None
    onnx_file: Path | None = None
    if is_engine:
        served, onnx_file = _from_engine(src, onnx_path, notes)
    else:
        if onnx_path is not None:
            raise DynashapeError("--model is for an engine's source model; the ONNX model was given already")
        onnx_model = load_model(src)
        onnx_file = src
        served = served_from_onnx(onnx_model, src.name)
    check_triton_versions(served, triton_trt, triton_gpu)
    if backend == "tensorrt" and served.tensorrt_version and not triton_trt:
        notes.append(
            f"the engine is TensorRT {served.tensorrt_version}: serve it with the Triton release of that TensorRT "
            "(see Triton's release notes; --triton-trt checks it)"
        )
    if lattice and onnx_file is not None:
        served = _with_lattice(served, onnx_model, onnx_file, notes)

    files: dict[str, tuple[Path, str]] = {}  # role -> (source file, name in the version directory)
    if backend == "tensorrt":
        config = tensorrt_config(served, name, max_batch, instances)
        files["plan"] = (src, "model.plan")
        files["plan_sidecar"] = (_sidecar(src), "model.plan.json")
    else:
        if is_engine:
            files["engine"] = (src, "model.engine")
            files["engine_sidecar"] = (_sidecar(src), "model.engine.json")
        if onnx_file is not None:
            files["onnx"] = (onnx_file, "model.onnx")
        elif is_engine:
            notes.append("no ONNX model at hand (give --model): the repository only runs where TensorRT and a GPU are")
        runtime_files = {role: dest for role, (_, dest) in files.items() if role in ("engine", "onnx")}
        config = python_config(served, name, max_batch, instances, runtime_files)
    text = config.to_pbtxt()
    checked = validate_pbtxt(text)

    root.mkdir(exist_ok=True)
    written = _write_model_dir(target, text, files, python=backend == "python")
    log.info("wrote Triton model %s (%s backend) in %s", name, backend, root)
    return Repository(root, name, backend, config, written, checked, tuple(notes))


def _sidecar(engine: Path) -> Path:
    return sidecar_path(engine)


def _from_engine(src: Path, onnx_path: str | Path | None, notes: list[str]) -> tuple[ServedModel, Path | None]:
    info = read_sidecar(src)
    if info is None:
        raise DynashapeError(
            f"{src}: no sidecar {_sidecar(src).name}; the Triton config's dims, profiles and TensorRT version come "
            "from it: rebuild the engine with `dynashape build`"
        )
    check_sidecar(info, src.read_bytes(), None, where=str(src))  # size and SHA-256: a copied-wrong plan
    served = served_from_engine(info, src.name)
    candidate = Path(onnx_path) if onnx_path is not None else (Path(info.source_path) if info.source_path else None)
    if candidate is None:
        return served, None
    if not candidate.is_file():
        if onnx_path is not None:
            raise DynashapeError(f"--model {candidate}: no such file")
        notes.append(f"the engine's source model {candidate} is gone: no lattice in the config (give --model)")
        return served, None
    if info.source_sha256 and sha256_file(candidate) != info.source_sha256:
        what = f"--model {candidate}" if onnx_path is not None else f"the engine's source model {candidate}"
        if onnx_path is not None:
            raise DynashapeError(f"{what} is not the model the engine was built from (its SHA-256 differs)")
        notes.append(f"{what} changed since the build: not used (no lattice; give --model)")
        return served, None
    return served, candidate


def _with_lattice(served: ServedModel, model: Any, path: Path, notes: list[str]) -> ServedModel:
    start = time.perf_counter()
    try:
        report = check_model(model if model is not None else load_model(path), path=str(path))
    except DynashapeError as exc:
        notes.append(f"no lattice in the config: the check of {path.name} failed ({exc})")
        return served
    log.info("valid-size lattice of %s in %.1f s", path.name, time.perf_counter() - start)
    errors = [f for f in report.findings if f.severity == "error" and f.rule != "DS003"]
    if errors:
        rules = ", ".join(sorted({f.rule for f in errors}))
        notes.append(f"{path.name} has hazards ({rules}): run `dynashape fix` first; some sizes give wrong results")
    known = report.export_shape_source != "unknown"
    return replace(served, lattice=report.lattice or None, export_shape=dict(report.export_shape) if known else None)


def _written_by_us(model_dir: Path) -> bool:
    config = model_dir / "config.pbtxt"
    try:
        return model_dir.is_dir() and config.read_text(errors="replace").startswith(_MARKER)
    except OSError:
        return False


def _write_model_dir(
    target: Path, config_text: str, files: dict[str, tuple[Path, str]], python: bool
) -> tuple[Path, ...]:
    """Fill a temporary directory beside ``target``, then swap it in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        version = tmp / VERSION_DIR
        version.mkdir()
        (tmp / "config.pbtxt").write_text(config_text)
        rel = [Path("config.pbtxt")]
        if python:
            template = resources.files("dynashape.serving").joinpath("triton_model.py").read_text()
            (version / "model.py").write_text(template)
            rel.append(Path(VERSION_DIR) / "model.py")
        for source, dest in files.values():
            shutil.copyfile(source, version / dest)
            rel.append(Path(VERSION_DIR) / dest)
        tmp.chmod(0o755)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{time.time_ns()}")
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tuple(target / p for p in rel)
