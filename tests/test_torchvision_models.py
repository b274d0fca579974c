"""Six torchvision models exported with dynamic axes and checked against PyTorch eager in ORT.

Weights are random (``weights=None``) but re-drawn so that every layer carries signal (the
default init leaves some classifiers' outputs near 1e-9, which would make any comparison pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]  # torchvision exports: `make test-slow`

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dynashape.backends.ort import OrtRunner  # noqa: E402
from dynashape.backends.torch import TorchRunner  # noqa: E402
from dynashape.export import export_module  # noqa: E402
from dynashape.model import graph_inputs  # noqa: E402
from dynashape.pipeline.differential import differential_export, first_divergent_node  # noqa: E402
from dynashape.testing import import_torchvision  # noqa: E402

EXPORT_SHAPE = (1, 3, 128, 128)
SHAPES = [(1, 3, 64, 64), (1, 3, 96, 128), (2, 3, 128, 96), (1, 3, 160, 160)]
RTOL = 1e-4  # max |onnx - torch| relative to max |torch|


def _models() -> dict[str, Callable[[Any], nn.Module]]:
    seg = "segmentation"
    return {
        "fcn_resnet50": lambda m: getattr(m, seg).fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True),
        "deeplabv3_mobilenet_v3_large": lambda m: getattr(m, seg).deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None),
        "lraspp_mobilenet_v3_large": lambda m: getattr(m, seg).lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None),
        "resnet18": lambda m: m.resnet18(weights=None),
        "mobilenet_v3_small": lambda m: m.mobilenet_v3_small(weights=None),
        "efficientnet_b0": lambda m: m.efficientnet_b0(weights=None),
    }


def build(name: str) -> nn.Module:
    tv = import_torchvision()
    torch.manual_seed(0)
    net = _models()[name](tv.models)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = mod.weight[0].numel()
                mod.weight.normal_(0.0, (1.0 / fan_in) ** 0.5, generator=gen)
                if mod.bias is not None:
                    mod.bias.uniform_(-0.1, 0.1, generator=gen)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1, generator=gen)
                mod.running_var.uniform_(0.5, 1.5, generator=gen)
                mod.weight.uniform_(0.5, 1.5, generator=gen)
                mod.bias.uniform_(-0.1, 0.1, generator=gen)
    return net.eval()


@pytest.mark.parametrize("name", list(_models()))
def test_export_and_verify_at_four_shapes(name: str) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    net = build(name)
    result = export_module(net, {"input": EXPORT_SHAPE})
    (info,) = graph_inputs(result.model)
    assert info.dims == ("batch", 3, "height", "width")
    rows = []
    with OrtRunner(result.model) as ort_runner, TorchRunner(net, output_names=result.output_names) as ref:
        for shape in SHAPES:
            x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
            got = ort_runner.infer({"input": x})
            want = ref.infer({"input": x})
            for out in result.output_names:
                assert got[out].shape == want[out].shape, (name, shape, out)
                scale = float(np.abs(want[out]).max())
                err = float(np.abs(got[out].astype(np.float64) - want[out]).max())
                assert scale > 1e-3, f"{name}: outputs near zero ({scale:.2g}); the check would be vacuous"
                rows.append((shape, out, err, scale))
                assert err <= RTOL * scale, (name, shape, out, err, scale)
    print("\n".join(f"{name} {'x'.join(map(str, s))} {o}: max error {e:.2g} (scale {m:.2g})"
                    for s, o, e, m in rows))


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "resnet18"])
def test_differential_export_is_clean(name: str) -> None:
    """torchvision keeps sizes as tensors: exporting at two shapes must change no value."""
    result = differential_export(build(name), {"input": EXPORT_SHAPE})
    assert result.same_structure
    assert result.findings == [], [f.message for f in result.findings]


def test_no_divergent_node_for_a_correct_model() -> None:
    net = build("lraspp_mobilenet_v3_large")
    model = export_module(net, {"input": EXPORT_SHAPE}).model
    x = np.random.default_rng(3).standard_normal((1, 3, 96, 160)).astype(np.float32)
    assert first_divergent_node(model, {"input": x}, net, atol=1e-4, rtol=1e-3) is None
