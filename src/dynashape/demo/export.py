"""Regenerate demo.onnx: ``python -m dynashape.demo.export`` (needs torch)."""

from __future__ import annotations

import warnings

import torch

from dynashape.demo import EXPORT_SHAPE, INPUT_NAME, OUTPUT_NAME, demo_onnx_path
from dynashape.demo.model import build


def main() -> None:
    net = build()
    x = torch.randn(*EXPORT_SHAPE)
    path = demo_onnx_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TracerWarnings are the point of the demo
        torch.onnx.export(
            net,
            (x,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                          OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}},
            opset_version=17,
            dynamo=False,
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
