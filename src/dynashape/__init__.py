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

``dynashape.check``, ``fix`` and ``verify`` are these functions, although modules of the same names
exist (``dynashape/check.py``, ...): import those by their full name (``from dynashape.check import
check_model``, ``importlib.import_module("dynashape.check")``); the package does not let the import
system rebind the three names to the modules.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from dynashape._version import __version__
from dynashape.errors import DynashapeError
from dynashape.findings import Finding
from dynashape.shapes import Profile

if TYPE_CHECKING:
    from dynashape.api import build, check, fix, verify
    from dynashape.engine import Engine

_LAZY = {"check": "dynashape.api", "fix": "dynashape.api", "verify": "dynashape.api", "build": "dynashape.api",
         "Engine": "dynashape.engine"}
_API_NAMED_LIKE_MODULES = frozenset({"check", "fix", "verify"})

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


class _Package(types.ModuleType):
    """The package: the import system binds each imported submodule onto its package
    (``setattr(dynashape, "check", <module dynashape.check>)``), which would replace the API's
    ``check``, ``fix`` and ``verify``; those three bindings are skipped."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API_NAMED_LIKE_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
