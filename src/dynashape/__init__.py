"""dynashape: TensorRT engines that are correct at every input shape in range.

The Python API (see the README, "Python API")::

    import dynashape

    result = dynashape.check("model.onnx", ranges="input:1x3x[128..1024:32]x[128..2048:32]")
    fixed = dynashape.fix("model.onnx", "fixed.onnx")
    sweep = dynashape.verify("fixed.onnx", reference="torch:net.py:build")
    engine = dynashape.build("fixed.onnx", "fixed.engine")  # needs TensorRT

``check``, ``fix``, ``verify``, ``build`` and ``Engine`` come from :mod:`dynashape.api`, loaded on
first use: ``import dynashape`` itself imports only the standard library and three small modules
(never onnx, torch, onnxruntime or TensorRT).

The package by pipeline stage: ``analysis/`` (the graph under analysis: probes, the shape engine,
the lattice, the export shape), ``rules/`` (one module per hazard family, DS001...), ``pipeline/``
(check, passes, fix, verify, differential export, doctor), ``backends/`` (ONNX Runtime, PyTorch and
TensorRT runners), ``trt/`` (engines, CUDA runtime, benchmarks, profile planning), ``serving/``
(Triton repositories), ``cli/`` (parse, call the API, print).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dynashape._version import __version__
from dynashape.errors import DynashapeError
from dynashape.findings import Finding
from dynashape.shapes import Profile

if TYPE_CHECKING:
    from dynashape.api import build, check, fix, verify
    from dynashape.trt.engine import Engine

_LAZY = {"check": "dynashape.api", "fix": "dynashape.api", "verify": "dynashape.api", "build": "dynashape.api",
         "Engine": "dynashape.trt.engine"}

__all__ = ["DynashapeError", "Engine", "Finding", "Profile", "__version__", "build", "check", "fix", "verify"]


def __getattr__(name: str) -> Any:
    if name == "api":  # ``dynashape.api.BuildRefused`` and the like, without an import of its own
        return importlib.import_module("dynashape.api")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dynashape' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "api"})
