"""Helpers shared by the tests and the benchmarks (no pytest dependency); production code does not
import this module (what it shares with them lives in :mod:`dynashape.feeds`)."""

from __future__ import annotations

from typing import Any

import onnx

from dynashape.backends.ort import run_model
from dynashape.feeds import max_abs_error, random_feeds
from dynashape.shapes import ShapeMap

__all__ = ["assert_models_equivalent", "import_torchvision", "max_abs_error", "random_feeds"]


def assert_models_equivalent(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    shapes: ShapeMap,
    atol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Run both models in ONNX Runtime on the same random inputs; fail unless they agree."""
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
