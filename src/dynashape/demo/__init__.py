"""The built-in demo: a small segmentation net with the three original pitfalls.

``demo.onnx`` is this module's ``DemoNet`` exported by the legacy exporter at 1x3x512x512 with
batch, height and width dynamic, so ``dynashape doctor`` runs without torch. Regenerate it with
``python -m dynashape.demo.export`` after changing the net.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EXPORT_SHAPE = (1, 3, 512, 512)
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def demo_onnx_path() -> Path:
    """Path of the pre-exported demo model shipped inside the package."""
    return Path(str(resources.files("dynashape.demo").joinpath("demo.onnx")))


def demo_torch_spec() -> str:
    """The factory spec of the demo net, for `--reference torch:` and `export`."""
    return "dynashape.demo.model:build"
