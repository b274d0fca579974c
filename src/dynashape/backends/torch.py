"""PyTorch eager runner: the reference a model exported from PyTorch should agree with.

Inputs and outputs are numpy dicts like every other runner. A module may return a tensor, a
tuple/list, or a dict (torchvision segmentation models return ``{'out': ..., 'aux': ...}``);
the outputs are flattened in the order ``torch.onnx.export`` flattens them, so they line up with
the ONNX model's outputs. Torch is imported in ``activate``, never at module import.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dynashape.backends import Runner
from dynashape.errors import DynashapeError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


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
            from dynashape.export import load_module

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
