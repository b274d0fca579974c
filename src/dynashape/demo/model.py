"""DemoNet: the three pitfalls exactly as the original write-up has them (needs torch).

1. strip pooling with kernels read from the shape (``torch.tensor(q.shape[i]).item()``, then
   ``F.avg_pool2d(q, [h, 1])``) -> DS001;
2. ``F.interpolate(feat32, size=(H16, W16))`` with Python ints -> DS002;
3. five stride-2 conv stages and a 16x upsample at the end, so the output follows the input
   only when H and W are multiples of 16 -> DS003.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class DemoNet(nn.Module):
    def __init__(self, num_classes: int = 2, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stage1 = _stage(3, w)
        self.stage2 = _stage(w, 2 * w)
        self.stage3 = _stage(2 * w, 4 * w)
        self.stage4 = _stage(4 * w, 4 * w)
        self.stage5 = _stage(4 * w, 4 * w)
        self.conv_h = nn.Conv2d(4 * w, 4 * w, 1)
        self.conv_w = nn.Conv2d(4 * w, 4 * w, 1)
        self.classifier = nn.Conv2d(4 * w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat16 = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        feat32 = self.stage5(feat16)
        # pitfall 2: the target size as Python ints, frozen at export
        H16, W16 = int(feat16.shape[2]), int(feat16.shape[3])
        q = feat16 + F.interpolate(feat32, size=(H16, W16), mode="bilinear", align_corners=False)
        # pitfall 1: pooling kernels taken from the shape, frozen at export
        b, c, h, w = (torch.tensor(q.shape[i]).item() for i in range(4))  # noqa: RUF059 (as in the write-up)
        pooled_h = F.avg_pool2d(q, [h, 1])  # type: ignore[list-item]  # (b, c, 1, w)
        pooled_w = F.avg_pool2d(q, [1, w])  # type: ignore[list-item]  # (b, c, h, 1)
        attention = torch.sigmoid(self.conv_h(pooled_h) + self.conv_w(pooled_w))
        logits = self.classifier(q * attention)
        # pitfall 3: stride 16 undone by a fixed 16x upsample
        return F.interpolate(logits, scale_factor=16.0, mode="bilinear", align_corners=False)


def build(seed: int = 0) -> DemoNet:
    """The demo net with deterministic, non-trivial weights, in eval mode."""
    torch.manual_seed(seed)
    net = DemoNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None  # track_running_stats
            nn.init.uniform_(m.running_mean, -0.1, 0.1)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
    return net.eval()
