"""dynashape: TensorRT engines that are correct at every input shape in range."""

from __future__ import annotations

__version__ = "0.1.0"
