"""Small PyTorch modules for DS013 written the way Hugging Face ``transformers`` writes "same" padding.

- :class:`BitLike`: HF BiT with ``global_padding="SAME"``: ``DynamicPad2d`` computes TF 'SAME'
  with ``math.ceil`` on the traced size (only ``ceil(h / s)`` is frozen: the pads export as
  ``const - H``), a weight-standardized-style conv without padding, GroupNorm, a residual
  bottleneck with a strided 1x1 shortcut (the join that fails at the second shape once the stem
  is rebuilt), then a 1x1 conv + GroupNorm whose affine weight is a deduplicated ``Identity``:
  past the failed join the Pad's input dims fell back to that ``(C, 1, 1)`` weight, the
  ``same_padding_plan`` IndexError on HF BiT.
- :class:`MobileNetV2Like`: HF MobileNetV2 with ``tf_padding=True``: ``apply_tf_padding`` reads the
  size with ``int(features.shape[-2])`` before every conv (1x1 convs included, a Pad adding
  nothing), so every pad is a constant.
- :class:`EfficientNetLike`: HF EfficientNet: ``nn.ZeroPad2d(correct_pad(k))`` before a stride-2
  "valid" conv, ``padding="same"`` on stride 1: constant pads that are right at every size.
- :class:`FixedPadLike`: ``F.pad(x, (1, 1, 1, 1))`` before a stride-2 conv, beside a pad computed
  in Python (so a witness of Python padding is present): a genuinely fixed pad.
- :class:`TracedSamePad`: TF 'SAME' written with traced size arithmetic (no ``math.ceil``, no
  ``int``): the pads come from ``Shape`` and are right at every size.
"""

from __future__ import annotations

import math
from typing import Any


def _nn() -> Any:
    import torch

    return torch


def modules() -> dict[str, type]:
    """name -> module class (built lazily: torch is imported only here)."""
    torch = _nn()
    nn = torch.nn
    F = nn.functional

    class DynamicPad2d(nn.Module):
        """transformers.models.bit.modeling_bit.DynamicPad2d, as written there."""

        def __init__(self, kernel_size: int, stride: int, dilation: int = 1) -> None:
            super().__init__()
            self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation

        @staticmethod
        def compute_padding(x: Any, kernel_size: int, stride: int, dilation: int) -> Any:
            return max((math.ceil(x / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - x, 0)

        def forward(self, x: Any) -> Any:
            input_height, input_width = x.size()[-2:]
            padding_height = self.compute_padding(input_height, self.kernel_size, self.stride, self.dilation)
            padding_width = self.compute_padding(input_width, self.kernel_size, self.stride, self.dilation)
            if padding_height > 0 or padding_width > 0:
                x = F.pad(x, [padding_width // 2, padding_width - padding_width // 2,
                              padding_height // 2, padding_height - padding_height // 2])
            return x

    class SameConv(nn.Conv2d):
        """BiT's WeightStandardizedConv2d with padding="SAME": static when stride 1, else DynamicPad2d."""

        def __init__(self, cin: int, cout: int, k: int, s: int = 1) -> None:
            super().__init__(cin, cout, k, s, padding=(k - 1) // 2 if s == 1 else 0, bias=False)
            self.pad = DynamicPad2d(k, s) if s > 1 else None

        def forward(self, x: Any) -> Any:
            if self.pad is not None:
                x = self.pad(x)
            return F.conv2d(x, self.weight, None, self.stride, self.padding)

    class BitLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.stem_norm = SameConv(3, 8, 7, 2), nn.GroupNorm(2, 8)
            self.pool = nn.MaxPool2d(3, 2)
            self.conv1, self.norm1 = SameConv(8, 8, 1), nn.GroupNorm(2, 8)
            self.conv2, self.norm2 = SameConv(8, 16, 3, 2), nn.GroupNorm(2, 16)
            self.down, self.down_norm = SameConv(8, 16, 1, 2), nn.GroupNorm(2, 16)
            self.conv4, self.norm4 = SameConv(16, 16, 1), nn.GroupNorm(2, 16)
            self.conv3, self.norm3 = SameConv(16, 16, 3, 2), nn.GroupNorm(2, 16)

        def forward(self, x: Any) -> Any:
            x = self.pool(torch.relu(self.stem_norm(self.stem(x))))
            y = torch.relu(self.norm1(self.conv1(x)))
            x = torch.relu(self.norm2(self.conv2(y)) + self.down_norm(self.down(x)))
            x = torch.relu(self.norm4(self.conv4(x)))
            return torch.relu(self.norm3(self.conv3(x)))

    def apply_tf_padding(features: Any, conv_layer: Any) -> Any:
        """transformers.models.mobilenet_v2.modeling_mobilenet_v2.apply_tf_padding, as written there."""
        in_height = int(features.shape[-2])
        in_width = int(features.shape[-1])
        stride_height, stride_width = conv_layer.stride
        kernel_height, kernel_width = conv_layer.kernel_size
        dilation_height, dilation_width = conv_layer.dilation
        if in_height % stride_height == 0:
            pad_along_height = max(kernel_height - stride_height, 0)
        else:
            pad_along_height = max(kernel_height - (in_height % stride_height), 0)
        if in_width % stride_width == 0:
            pad_along_width = max(kernel_width - stride_width, 0)
        else:
            pad_along_width = max(kernel_width - (in_width % stride_width), 0)
        pad_left = pad_along_width // 2
        pad_right = pad_along_width - pad_left
        pad_top = pad_along_height // 2
        pad_bottom = pad_along_height - pad_top
        padding = (pad_left * dilation_width, pad_right * dilation_width, pad_top * dilation_height,
                   pad_bottom * dilation_height)
        return F.pad(features, padding, "constant", 0.0)

    class TfConv(nn.Module):
        """MobileNetV2ConvLayer with tf_padding: conv without padding after apply_tf_padding."""

        def __init__(self, cin: int, cout: int, k: int, s: int = 1, groups: int = 1, dilation: int = 1) -> None:
            super().__init__()
            self.convolution = nn.Conv2d(cin, cout, k, s, padding=0, dilation=dilation, groups=groups)

        def forward(self, x: Any) -> Any:
            return F.relu6(self.convolution(apply_tf_padding(x, self.convolution)))

    class MobileNetV2Like(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = TfConv(3, 8, 3, 2)
            self.expand = TfConv(8, 16, 1)
            self.dw = TfConv(16, 16, 3, 2, groups=16)
            self.reduce = TfConv(16, 8, 1)
            self.dw2 = TfConv(8, 8, 3, 1, groups=8, dilation=2)
            self.down = TfConv(8, 8, 5, 2)

        def forward(self, x: Any) -> Any:
            x = self.reduce(self.dw(self.expand(self.stem(x))))
            return self.down(self.dw2(x) + x)

    def correct_pad(kernel_size: int, adjust: bool = True) -> tuple[int, int, int, int]:
        """transformers.models.efficientnet.modeling_efficientnet.correct_pad."""
        correct = (kernel_size // 2, kernel_size // 2)
        if adjust:
            return (correct[1] - 1, correct[1], correct[0] - 1, correct[0])
        return (correct[1], correct[1], correct[0], correct[0])

    class EfficientNetLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pad = nn.ZeroPad2d(correct_pad(3))
            self.stem = nn.Conv2d(3, 8, 3, 2, padding="valid")
            self.conv = nn.Conv2d(8, 8, 3, 1, padding="same")
            self.pad2 = nn.ZeroPad2d(correct_pad(5))
            self.dw = nn.Conv2d(8, 8, 5, 2, padding="valid", groups=8)

        def forward(self, x: Any) -> Any:
            x = torch.relu(self.conv(torch.relu(self.stem(self.pad(x)))))
            return self.dw(self.pad2(x))

    class FixedPadLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expand = TfConv(3, 8, 1)  # a Pad adding nothing: Python padding is in this graph
            self.down = nn.Conv2d(8, 8, 3, 2, padding=0)

        def forward(self, x: Any) -> Any:
            return self.down(F.pad(self.expand(x), (1, 1, 1, 1)))

    class TracedSamePad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.expand = TfConv(3, 8, 1)
            self.down = nn.Conv2d(8, 8, 3, 2, padding=0)

        def forward(self, x: Any) -> Any:
            x = self.expand(x)
            h, w = x.shape[-2], x.shape[-1]
            ph = ((h + 1) // 2 - 1) * 2 + 3 - h  # ceil(h / 2) as (h + 1) // 2; >= k - s > 0: no max
            pw = ((w + 1) // 2 - 1) * 2 + 3 - w
            return self.down(F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]))

    return {"bit": BitLike, "mobilenet_v2": MobileNetV2Like, "efficientnet": EfficientNetLike,
            "fixed_pad": FixedPadLike, "traced_same_pad": TracedSamePad}


def build(name: str) -> Any:
    """The module, seeded and in eval mode."""
    torch = _nn()
    torch.manual_seed(0)
    return modules()[name]().eval()
