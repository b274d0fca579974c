"""PyTorch eager: load the user's module from a ``FILE.py:FACTORY`` spec and run it as a Runner, the
reference a model exported from PyTorch should agree with.

Inputs and outputs are numpy dicts like every other runner. A module may return a tensor, a
tuple/list, or a dict (torchvision segmentation models return ``{'out': ..., 'aux': ...}``);
the outputs are flattened in the order ``torch.onnx.export`` flattens them, so they line up with
the ONNX model's outputs. Torch is imported in ``activate``, never at module import.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dynashape.backends import Runner
from dynashape.errors import DynashapeError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def display_path(path: str) -> str:
    """A path relative to the working directory when it lies inside it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


# --------------------------------------------------------------------------- loading


def load_module(spec: str) -> torch.nn.Module:
    """Build the module named by ``path/to/file.py:FACTORY`` or ``package.module:FACTORY``.

    FACTORY is a class or a function called with no arguments; it must give an ``nn.Module``,
    which is returned in eval mode.
    """
    import torch

    target, factory_name = _split_spec(spec)
    if target.endswith(".py") or os.sep in target or "/" in target:
        mod = _import_file(Path(target), spec)
    else:
        mod = _import_dotted(target, spec)
    if not hasattr(mod, factory_name):
        available = sorted(
            n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
            and getattr(v, "__module__", None) == mod.__name__
        )
        hint = f" (callables defined there: {', '.join(available)})" if available else ""
        raise DynashapeError(f"{spec}: {target} has no {factory_name!r}{hint}")
    factory = getattr(mod, factory_name)
    if not callable(factory):
        raise DynashapeError(f"{spec}: {factory_name!r} is not a class or function")
    try:
        built = factory()
    except Exception as exc:
        raise DynashapeError(
            f"{spec}: calling {factory_name}() failed: {type(exc).__name__}: {exc}; FACTORY must "
            "build the model with no arguments (wrap it in a small function)"
        ) from None
    if not isinstance(built, torch.nn.Module):
        raise DynashapeError(
            f"{spec}: {factory_name}() returned {type(built).__name__}, not a torch.nn.Module; "
            "FACTORY must be a class or function that returns the model"
        )
    return built.eval()


def _split_spec(spec: str) -> tuple[str, str]:
    target, sep, factory = spec.rpartition(":")
    if not sep or not target or not factory:
        raise DynashapeError(
            f"{spec!r}: name the model as path/to/file.py:FACTORY or package.module:FACTORY"
        )
    if not factory.isidentifier():
        raise DynashapeError(f"{spec!r}: {factory!r} is not a Python name; write FILE.py:FACTORY")
    return target, factory


def _import_file(path: Path, spec: str) -> Any:
    if not path.exists():
        raise DynashapeError(f"{spec}: {path}: no such file")
    if path.is_dir():
        raise DynashapeError(f"{spec}: {path} is a directory; name the .py file that defines the model")
    module_name = f"_dynashape_user_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise DynashapeError(f"{spec}: {path} cannot be imported as Python source")
    mod = importlib.util.module_from_spec(loader_spec)
    # The file's own folder goes on sys.path while it runs, so it can import its siblings.
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[module_name] = mod
    try:
        loader_spec.loader.exec_module(mod)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise DynashapeError(
            f"{spec}: importing {path} failed: {type(exc).__name__}: {exc}{_where(exc, path)}; "
            "fix the file so that `python " + str(path) + "` runs"
        ) from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
    return mod


def _where(exc: BaseException, path: Path) -> str:
    """' (file.py:LINE)' for the deepest traceback frame inside the user's file."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" ({display_path(str(path))}:{exc.lineno})"
    tb = exc.__traceback__
    line = None
    resolved = str(path.resolve())
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == resolved:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" ({display_path(str(path))}:{line})" if line else ""


def _import_dotted(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise DynashapeError(
                f"{spec}: no module named {name!r}; give a path to a .py file or install the package"
            ) from None
        raise DynashapeError(f"{spec}: importing {name} failed: {exc}") from None
    except Exception as exc:
        raise DynashapeError(f"{spec}: importing {name} failed: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- running



def flatten_outputs(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, tensor) pairs of a module's output, in torch.onnx's flattening order.

    A lone tensor is ``output``; tuple/list items are ``output_0``, ``output_1``, ...; dict
    entries keep their keys (nested containers join names with ``_``). Non-tensors are dropped.
    """
    import torch

    if isinstance(obj, torch.Tensor):
        return [(prefix or "output", obj)]
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for key, value in obj.items():
            out.extend(flatten_outputs(value, f"{prefix}_{key}" if prefix else str(key)))
        return out
    if isinstance(obj, (list, tuple)):
        out = []
        for i, value in enumerate(obj):
            out.extend(flatten_outputs(value, f"{prefix or 'output'}_{i}"))
        return out
    return []


class TorchRunner(Runner):
    """Runs an ``nn.Module`` (or a ``FILE.py:FACTORY`` spec) eagerly under ``no_grad``.

    ``input_names`` orders the feeds as the module's positional arguments (default: the order
    of the feeds dict). ``output_names`` renames the flattened outputs by position, e.g. to
    the ONNX model's output names; otherwise they are named as :func:`flatten_outputs` does.
    """

    name = "torch"

    def __init__(
        self,
        module: torch.nn.Module | str,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
    ) -> None:
        self._source = module
        self._module: Any = None
        self._input_names = list(input_names) if input_names else None
        self._given_output_names = list(output_names) if output_names else None
        self._output_names: list[str] | None = self._given_output_names

    def activate(self) -> None:
        if isinstance(self._source, str):
            self._module = load_module(self._source)
        else:
            self._module = self._source.eval()

    def deactivate(self) -> None:
        self._module = None

    @property
    def module(self) -> torch.nn.Module:
        assert self._module is not None, "activate() first"
        return self._module

    def output_names(self) -> list[str]:
        if self._output_names is None:
            raise RuntimeError("output names are known after the first infer() or when given")
        return list(self._output_names)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        assert self._module is not None, "activate() first"
        names = self._input_names or list(feeds)
        missing = [n for n in names if n not in feeds]
        if missing:
            raise DynashapeError(f"no feed for input(s) {', '.join(missing)} (given: {', '.join(feeds)})")
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names]
        # no_grad, not inference_mode: a module that caches tensors in forward must stay exportable
        with torch.no_grad():
            result = self._module(*args)
        flat = flatten_outputs(result)
        if self._given_output_names is not None:
            if len(self._given_output_names) != len(flat):
                raise DynashapeError(
                    f"the module returned {len(flat)} tensors but {len(self._given_output_names)} "
                    f"output names were given ({', '.join(self._given_output_names)})"
                )
            out_names = self._given_output_names
        else:
            out_names = [n for n, _ in flat]
            self._output_names = out_names
        return {n: t.detach().cpu().numpy() for n, (_, t) in zip(out_names, flat, strict=False)}
