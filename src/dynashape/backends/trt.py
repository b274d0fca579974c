"""TensorRT runner: an engine behind the Runner interface, for `verify --backend trt`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dynashape.backends import Runner
from dynashape.shapes import ShapeMap
from dynashape.trt.engine import BuiltEngine, Engine, build_engine, profile_from_shapes

log = logging.getLogger(__name__)


class TrtRunner(Runner):
    """Runs a TensorRT engine: given as an ``Engine``, a ``BuiltEngine`` or an engine file path.

    ``activate`` loads (or deserializes) it; ``deactivate`` frees its device memory and contexts.
    """

    name = "tensorrt"

    def __init__(self, engine: Any) -> None:
        # Engine / BuiltEngine / path (importing this module, or engine.py, needs no TensorRT)
        self._source = engine
        self._engine: Any = None

    def activate(self) -> None:
        src = self._source
        if isinstance(src, Engine):
            self._engine = src
        elif isinstance(src, BuiltEngine):
            self._engine = src.load()
        elif isinstance(src, (str, os.PathLike)):
            self._engine = Engine.load(Path(src))
        else:
            raise TypeError(f"TrtRunner needs an Engine, BuiltEngine or path, got {type(src).__name__}")

    def deactivate(self) -> None:
        if self._engine is not None and self._engine is not self._source:
            self._engine.close()  # an Engine handed in by the caller stays the caller's to close
        self._engine = None

    @property
    def engine(self) -> Any:
        assert self._engine is not None, "activate() first"
        return self._engine

    def output_names(self) -> list[str]:
        return list(self.engine.output_names)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = self.engine.infer(feeds)
        return result


def engine_runner_for_shapes(
    model: onnx.ModelProto, shapes: Sequence[ShapeMap], **build_opts: Any
) -> TrtRunner:
    """Build one engine whose single profile covers every shape in ``shapes`` (min/max over them,
    opt the most common shape or the middle one) and return a runner over it.

    ``build_opts`` go to :func:`dynashape.trt.engine.build_engine` (``fp16``, ``workspace``,
    ``timing_cache``, ``tactic_sources``, ``progress``). Raises ``BuildError`` with TensorRT's own
    lines when the build fails.
    """
    profile = profile_from_shapes(list(shapes))
    log.info("building a verification engine over %d shapes: %s", len(shapes), profile)
    built = build_engine(model, [profile], **build_opts)
    return TrtRunner(built)
