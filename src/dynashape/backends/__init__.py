"""Runners: one small interface over ONNX Runtime, TensorRT and PyTorch.

A runner is built from a loader-ish description, then ``activate()``d, asked to ``infer()`` any
number of times, and ``deactivate()``d; it is a context manager. Heavy imports happen in
``activate``, never at module import.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Runner:
    """Base class: ``with runner: outputs = runner.infer({"input": array})``."""

    name = "runner"

    def activate(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def deactivate(self) -> None:
        pass

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def output_names(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()
