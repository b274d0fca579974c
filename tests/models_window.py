"""Swin-style window attention for DS013 (window pad) and DS014 (crop back), as PyTorch modules.

One Swin layer the way Hugging Face ``SwinLayer`` writes it: ``maybe_pad`` pads the feature map
up to a multiple of the window (``pad_right = (window - width % window) % window``), an optional
cyclic shift (``torch.roll``), ``window_partition`` (``view(b, h // w, w, w_ // w, w, c)`` +
``permute``), attention inside each window, ``window_reverse``, and the crop back to the unpadded
size when it padded (``x[:, :height, :width, :]``).

``sizes`` says where ``height`` and ``width`` come from:

* ``"tensor"``: ``x.shape`` as HF does (traced: pads, crop ends and reshapes follow the input);
* ``"int"``: ``int(x.shape[i])`` for the pad and the crop (frozen at the export size), the
  window partition reading the padded tensor's shape (so the reshapes follow it): what DS013 and
  DS014 rebuild exactly;
* ``"int_all"``: Python ints everywhere, the window-partition reshape targets included (those
  are DS005's, not rebuilt by DS013/DS014).

``pad`` changes the amount: ``"window"`` (the formula), ``"plus_window"`` (the formula plus a
whole window: taken at the export size, but not the multiple-completion), ``"fixed"`` (a genuinely
constant ``F.pad(x, (1, 1, 1, 1))`` in NCHW before the patch embedding, no window pad).
``crop="short"`` crops one row and column more than the pad added (``y[:, :height - 1, ...]``, the
shortcut likewise): a fixed crop, not the crop back to the unpadded size.
"""

from __future__ import annotations

from typing import Any


def window_block(dim: int = 8, window: int = 7, *, sizes: str = "int", shift: int = 0, pad: str = "window",
                 crop: str = "back", patch: int = 4) -> Any:
    """A patch embedding (conv, stride ``patch``) and one window-attention layer; NCHW in and out."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class WindowBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.window, self.shift = window, shift
            self.embed = nn.Conv2d(3, dim, patch, stride=patch)
            self.norm = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def _hw(self, x: torch.Tensor) -> tuple[Any, Any]:
            return (int(x.shape[1]), int(x.shape[2])) if sizes in ("int", "int_all") else (x.shape[1], x.shape[2])

        def maybe_pad(self, x: torch.Tensor, height: Any, width: Any) -> tuple[torch.Tensor, tuple[Any, ...]]:
            w = self.window
            pad_right = (w - width % w) % w
            pad_bottom = (w - height % w) % w
            if pad == "plus_window":
                pad_right, pad_bottom = pad_right + w, pad_bottom + w
            pad_values = (0, 0, 0, pad_right, 0, pad_bottom)
            return F.pad(x, pad_values), pad_values

        def partition(self, x: torch.Tensor, hp: Any, wp: Any) -> torch.Tensor:
            b, c, w = x.shape[0], x.shape[3], self.window
            x = x.view(b, hp // w, w, wp // w, w, c)
            return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w * w, c)

        def reverse(self, windows: torch.Tensor, hp: Any, wp: Any) -> torch.Tensor:
            c, w = windows.shape[2], self.window
            x = windows.view(-1, hp // w, wp // w, w, w, c)
            return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, hp, wp, c)

        def attention(self, t: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            a = torch.softmax(q @ k.transpose(1, 2) / dim**0.5, dim=-1)
            return self.proj(a @ v)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            if pad == "fixed":
                image = F.pad(image, (1, 1, 1, 1))
            x = self.embed(image).permute(0, 2, 3, 1)
            height, width = self._hw(x)
            shortcut = x
            x = self.norm(x)
            if pad == "fixed":
                padded, pad_values = x, (0, 0, 0, 0, 0, 0)
            else:
                padded, pad_values = self.maybe_pad(x, height, width)
            if self.shift:
                padded = torch.roll(padded, shifts=(-self.shift, -self.shift), dims=(1, 2))
            if sizes == "int_all":
                hp, wp = int(height) + pad_values[5], int(width) + pad_values[3]
            else:
                hp, wp = padded.shape[1], padded.shape[2]
            y = self.reverse(self.attention(self.partition(padded, hp, wp)), hp, wp)
            if self.shift:
                y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
            if crop == "short":
                height, width = height - 1, width - 1
                shortcut = shortcut[:, :height, :width, :]
            if pad_values[3] > 0 or pad_values[5] > 0 or crop == "short":
                y = y[:, :height, :width, :].contiguous()
            return (shortcut + y).permute(0, 3, 1, 2)

    return WindowBlock().eval()
