"""Random inputs for a model and the distance between two sets of outputs.

What ``verify`` and ``fix`` run a model on and how they compare what comes out; the tests and the
benchmarks use the same two functions (through :mod:`dynashape.testing`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from dynashape.model import graph_inputs
from dynashape.shapes import Shape, ShapeMap


def random_feeds(model: onnx.ModelProto, shapes: ShapeMap, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the model's element types at the given shapes."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for info in graph_inputs(model):
        shape: Shape = shapes[info.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[info.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[info.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def max_abs_error(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference over outputs matched by position; inf on a shape mismatch."""
    worst = 0.0
    for x, y in zip(a.values(), b.values()):
        if np.shape(x) != np.shape(y):
            return float("inf")
        if np.size(x):
            worst = max(worst, float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))))
    return worst
