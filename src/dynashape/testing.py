"""Helpers shared by the tests and the benchmarks (no pytest dependency)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from dynashape.shapes import Shape, ShapeMap


def random_feeds(model: onnx.ModelProto, shapes: ShapeMap, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the model's element types at the given shapes."""
    from dynashape.model import graph_inputs

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


def assert_models_equivalent(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    shapes: ShapeMap,
    atol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Run both models in ONNX Runtime on the same random inputs; fail unless they agree."""
    from dynashape.backends.ort import run_model

    feeds = random_feeds(original, shapes, seed)
    a = run_model(original, feeds)
    b = run_model(rewritten, feeds)
    assert len(a) == len(b), f"output count differs: {len(a)} vs {len(b)}"
    for (na, xa), (nb, xb) in zip(a.items(), b.items()):
        assert xa.shape == xb.shape, f"output {na}: shape {xa.shape} vs {nb}: {xb.shape}"
    err = max_abs_error(a, b)
    assert err <= atol, f"models differ by {err:.3g} (> {atol}) at {shapes}"
    return err


def import_torchvision() -> Any:
    """Import torchvision beside the CPU torch build.

    PyPI's torchvision is built for CUDA torch; its C extension cannot load beside the CPU
    build, and its import then fails on two missing op schemas. Declaring them lets the pure
    Python model zoo import (detection post-processing, which needs the kernels, stays out).
    """
    import torch

    try:
        import torchvision

        return torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    import sys

    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]
    lib = torch.library.Library("torchvision", "DEF")  # kept alive below
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    torchvision._dynashape_schema_lib = lib
    return torchvision
