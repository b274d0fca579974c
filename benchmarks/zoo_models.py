"""Small models that reproduce how published architectures handle shapes (for benchmarks/zoo.py).

Each one copies the shape handling of its original as written there (the layer sizes are cut down
so a CPU run stays quick); the docstring names the original and the hazard it carries. Weights are
random (``torch.manual_seed`` before building); BatchNorm statistics are perturbed so the models are
not near-identities.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    pad = k // 2 if padding is None else padding
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyBackbone(nn.Module):
    """Five stride-2 stages; returns the stride 8, 16 and 32 features (a ResNet-18 cut down)."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.s2 = conv_bn_relu(3, w, stride=2)
        self.s4 = conv_bn_relu(w, w, stride=2)
        self.s8 = conv_bn_relu(w, 2 * w, stride=2)
        self.s16 = conv_bn_relu(2 * w, 4 * w, stride=2)
        self.s32 = conv_bn_relu(4 * w, 8 * w, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8 = self.s8(self.s4(self.s2(x)))
        f16 = self.s16(f8)
        f32 = self.s32(f16)
        return f8, f16, f32


# --------------------------------------------------------------------------- BiSeNet V1


class AttentionRefinementModule(nn.Module):
    """BiSeNet V1 ARM (CoinCheung/BiSeNet): global average pool written as a pool over the whole map."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = F.avg_pool2d(feat, feat.size()[2:])
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(atten)))
        return torch.mul(feat, atten)


class FeatureFusionModule(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = conv_bn_relu(cin, cout, 1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = F.avg_pool2d(feat, feat.size()[2:])
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(atten))))
        return feat * atten + feat


class BiSeNetV1(nn.Module):
    """BiSeNet V1: spatial path (stride 8), context path with ARMs and a global-context branch,
    resizes to the skip's size via ``feat.size()[2:]`` and a final resize to the input size."""

    def __init__(self, n_classes: int = 5, w: int = 16) -> None:
        super().__init__()
        self.backbone = TinyBackbone(w)
        self.arm16 = AttentionRefinementModule(4 * w, 4 * w)
        self.arm32 = AttentionRefinementModule(8 * w, 4 * w)
        self.conv_head32 = conv_bn_relu(4 * w, 4 * w)
        self.conv_head16 = conv_bn_relu(4 * w, 4 * w)
        self.conv_avg = conv_bn_relu(8 * w, 4 * w, 1)
        self.spatial = nn.Sequential(conv_bn_relu(3, w, 7, 2), conv_bn_relu(w, w, 3, 2), conv_bn_relu(w, 2 * w, 3, 2))
        self.ffm = FeatureFusionModule(6 * w, 4 * w)
        self.head = nn.Conv2d(4 * w, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.size()[2:]
        feat8, feat16, feat32 = self.backbone(x)
        H8, W8 = feat8.size()[2:]
        H16, W16 = feat16.size()[2:]
        H32, W32 = feat32.size()[2:]
        avg = F.avg_pool2d(feat32, feat32.size()[2:])
        avg = self.conv_avg(avg)
        avg_up = F.interpolate(avg, (H32, W32), mode="nearest")
        feat32_sum = self.arm32(feat32) + avg_up
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, (H16, W16), mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, (H8, W8), mode="nearest"))
        feat_sp = self.spatial(x)
        feat_fuse = self.ffm(feat_sp, feat16_up)
        out = self.head(feat_fuse)
        return F.interpolate(out, (H, W), mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------- DDRNet / PIDNet


class DDRNetSlim(nn.Module):
    """DDRNet-23-slim / PIDNet: the high-resolution branch is joined with the low one after
    ``F.interpolate(..., size=[height_output, width_output])`` where ``height_output = x.shape[-2] // 8``
    (eager works only when H, W are multiples of 8; the naive export keeps the sizes symbolic)."""

    def __init__(self, n_classes: int = 5, w: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(conv_bn_relu(3, w, stride=2), conv_bn_relu(w, w, stride=2))
        self.layer2 = conv_bn_relu(w, 2 * w, stride=2)  # 1/8
        self.layer3 = conv_bn_relu(2 * w, 4 * w, stride=2)  # 1/16 (low branch)
        self.layer3_ = conv_bn_relu(2 * w, 2 * w)  # 1/8 (high branch)
        self.down3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(4 * w))
        self.compression3 = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w))
        self.layer4 = conv_bn_relu(4 * w, 8 * w, stride=2)  # 1/32
        self.layer4_ = conv_bn_relu(2 * w, 2 * w)
        self.compression4 = nn.Sequential(nn.Conv2d(8 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w))
        self.spp = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(8 * w, 2 * w, 1, bias=False))
        self.final = nn.Conv2d(2 * w, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width_output = x.shape[-1] // 8
        height_output = x.shape[-2] // 8
        x = self.layer2(self.conv1(x))
        x_ = self.layer3_(x)
        x = self.layer3(x)
        x = x + self.down3(F.relu(x_))
        x_ = x_ + F.interpolate(
            self.compression3(F.relu(x)), size=[height_output, width_output], mode="bilinear"
        )
        x = self.layer4(F.relu(x))
        x_ = self.layer4_(F.relu(x_))
        x_ = x_ + F.interpolate(
            self.compression4(F.relu(x)), size=[height_output, width_output], mode="bilinear"
        )
        x = F.interpolate(self.spp(x), size=[height_output, width_output], mode="bilinear")
        out = self.final(x + x_)
        return F.interpolate(out, size=[height_output * 8, width_output * 8], mode="bilinear")


# --------------------------------------------------------------------------- Coordinate attention


class HSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3) / 6


class CoordAtt(nn.Module):
    """Coordinate Attention (Hou et al., CVPR 2021), as published: strip pooling with
    ``AdaptiveAvgPool2d((None, 1))`` and ``torch.split(y, [h, w], dim=2)`` with the sizes of x."""

    def __init__(self, inp: int, oup: int, reduction: int = 32) -> None:
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mip, oup, 1)
        self.conv_w = nn.Conv2d(mip, oup, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        n, c, h, w = x.size()  # noqa: RUF059 (as published)
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.act(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w).sigmoid()
        return identity * a_w * a_h


class CoordAttNet(nn.Module):
    """A MobileNet-like classifier with a CoordAtt block after the stride-8 and stride-16 stages."""

    def __init__(self, n_classes: int = 10, w: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, w, stride=2), conv_bn_relu(w, 2 * w, stride=2),
                                  conv_bn_relu(2 * w, 2 * w, stride=2))
        self.ca8 = CoordAtt(2 * w, 2 * w)
        self.down = conv_bn_relu(2 * w, 4 * w, stride=2)
        self.ca16 = CoordAtt(4 * w, 4 * w)
        self.fc = nn.Linear(4 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ca16(self.down(self.ca8(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- YOLOv5 head


class Detect(nn.Module):
    """YOLOv5 ``Detect``: grids cached on the module at the first forward (``self.grid[i]``) and
    rebuilt only when ``self.grid[i].shape[2:4] != x[i].shape[2:4]``; the export's warm-up run
    caches them at the export shape."""

    stride = torch.tensor([8.0, 16.0, 32.0])
    dynamic = False
    anchors: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, nc: int = 3, anchors: tuple[tuple[int, ...], ...] = (), ch: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.dynamic or self.grid[i].shape[2:4] != x[i].shape[2:4]:
                self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
            xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + self.grid[i]) * self.stride[i]
            wh = (wh * 2) ** 2 * self.anchor_grid[i]
            y = torch.cat((xy, wh, conf), 4)
            z.append(y.view(bs, self.na * nx * ny, self.no))
        return torch.cat(z, 1)

    def _make_grid(self, nx: int = 20, ny: int = 20, i: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.anchors[i].device
        t = self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class TinyYolo(nn.Module):
    """A YOLOv5-style detector: small backbone, an upsample+concat neck, the YOLOv5 Detect head."""

    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.backbone = TinyBackbone(w)
        self.lat32 = conv_bn_relu(8 * w, 4 * w, 1)
        self.c16 = conv_bn_relu(8 * w, 4 * w)
        self.lat16 = conv_bn_relu(4 * w, 2 * w, 1)
        self.c8 = conv_bn_relu(4 * w, 2 * w)
        anchors = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
        self.detect = Detect(3, anchors, (2 * w, 4 * w, 4 * w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f8, f16, f32 = self.backbone(x)
        p5 = self.lat32(f32)
        p4 = self.c16(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), f16], 1))
        p4l = self.lat16(p4)
        p3 = self.c8(torch.cat([F.interpolate(p4l, scale_factor=2.0, mode="nearest"), f8], 1))
        return self.detect([p3, p4, p5])


# --------------------------------------------------------------------------- Swin (detection code base)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        tokens = window_size * window_size
        self.rel_bias = nn.Parameter(torch.randn(num_heads, tokens, tokens) * 0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.rel_bias.unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B_, N, C))


class SwinBlock(nn.Module):
    """Swin-Transformer-Object-Detection ``SwinTransformerBlock``: pad to a multiple of the window
    (pads computed in Python from ``self.H, self.W``), cyclic shift, crop back only ``if pad_r > 0 or
    pad_b > 0``."""

    H: int  # set by the caller before each forward, as in the original
    W: int

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.H: int = 0
        self.W: int = 0

    def forward(self, x: torch.Tensor, mask_matrix: torch.Tensor | None) -> torch.Tensor:
        B, L, C = x.shape  # noqa: RUF059 (as published)
        H, W = self.H, self.W
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_l = pad_t = 0
        pad_r = (self.window_size - W % self.window_size) % self.window_size
        pad_b = (self.window_size - H % self.window_size) % self.window_size
        x = F.pad(x, (0, 0, pad_l, pad_r, pad_t, pad_b))
        _, Hp, Wp, _ = x.shape
        if self.shift_size > 0:
            shifted_x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            attn_mask = mask_matrix
        else:
            shifted_x = x
            attn_mask = None
        x_windows = window_partition(shifted_x, self.window_size).view(-1, self.window_size * self.window_size, C)
        attn_windows = self.attn(x_windows, attn_mask).view(-1, self.window_size, self.window_size, C)
        shifted_x = window_reverse(attn_windows, self.window_size, Hp, Wp)
        if self.shift_size > 0:
            x = torch.roll(shifted_x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        else:
            x = shifted_x
        if pad_r > 0 or pad_b > 0:
            x = x[:, :H, :W, :].contiguous()
        x = shortcut + x.view(B, H * W, C)
        return x + self.mlp(self.norm2(x))


class SwinPadNet(nn.Module):
    """Swin ``BasicLayer`` from the detection code base: H, W are Python ints handed from the patch
    embedding, ``Hp = int(np.ceil(H / window_size)) * window_size`` and the shifted-window attention
    mask is built in Python with ``torch.zeros((1, Hp, Wp, 1))`` and slices."""

    def __init__(self, n_classes: int = 10, dim: int = 32, window_size: int = 7) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.ModuleList(
            [SwinBlock(dim, 2, window_size, 0), SwinBlock(dim, 2, window_size, window_size // 2)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        Wh, Ww = x.size(2), x.size(3)
        x = x.flatten(2).transpose(1, 2)
        H, W = Wh, Ww
        Hp = int(np.ceil(H / self.window_size)) * self.window_size
        Wp = int(np.ceil(W / self.window_size)) * self.window_size
        img_mask = torch.zeros((1, Hp, Wp, 1), device=x.device)
        h_slices = (slice(0, -self.window_size), slice(-self.window_size, -self.shift_size),
                    slice(-self.shift_size, None))
        w_slices = h_slices
        cnt = 0
        for h in h_slices:
            for w in w_slices:
                img_mask[:, h, w, :] = cnt
                cnt += 1
        mask_windows = window_partition(img_mask, self.window_size).view(-1, self.window_size * self.window_size)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, (-100.0)).masked_fill(attn_mask == 0, 0.0)
        for blk in self.blocks:
            assert isinstance(blk, SwinBlock)  # for mypy: a ModuleList yields Modules
            blk.H, blk.W = H, W
            x = blk(x, attn_mask)
        return self.head(self.norm(x).mean(1))


# --------------------------------------------------------------------------- PSPNet


class PPM(nn.Module):
    """PSPNet pyramid pooling (hszhao/semseg): ``nn.AdaptiveAvgPool2d(bin)`` for bins 1, 2, 3, 6,
    each resized back to ``x.size()[2:]`` and concatenated."""

    def __init__(self, in_dim: int, reduction_dim: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_dim, reduction_dim, 1, bias=False),
                          nn.BatchNorm2d(reduction_dim), nn.ReLU())
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_size = x.size()
        out = [x]
        for f in self.features:
            out.append(F.interpolate(f(x), x_size[2:], mode="bilinear", align_corners=True))
        return torch.cat(out, 1)


class PSPNet(nn.Module):
    """PSPNet at output stride 8, exported at 192x192 (feature map 24x24, divisible by every bin);
    the final resize goes to the input's ``(h, w)``."""

    def __init__(self, n_classes: int = 5, w: int = 16) -> None:
        super().__init__()
        self.layer0 = nn.Sequential(conv_bn_relu(3, w, stride=2), conv_bn_relu(w, 2 * w, stride=2),
                                    conv_bn_relu(2 * w, 4 * w, stride=2))
        self.layer4 = conv_bn_relu(4 * w, 4 * w, padding=2)
        self.ppm = PPM(4 * w, w, (1, 2, 3, 6))
        self.cls = nn.Sequential(conv_bn_relu(8 * w, 2 * w), nn.Conv2d(2 * w, n_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_size = x.size()
        h, w = x_size[2], x_size[3]
        x = self.ppm(self.layer4(self.layer0(x)))
        return F.interpolate(self.cls(x), size=(h, w), mode="bilinear", align_corners=True)


# --------------------------------------------------------------------------- UNet


class UNet(nn.Module):
    """The original UNet layout with same-padded convs, four 2x2 max-pools, ``ConvTranspose2d``
    upsampling and concatenated skips (no cropping): valid only when H, W are multiples of 16."""

    def __init__(self, n_classes: int = 2, w: int = 8) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))

        chans = [w, 2 * w, 4 * w, 8 * w, 16 * w]
        self.inc = block(3, chans[0])
        self.downs = nn.ModuleList(block(chans[i], chans[i + 1]) for i in range(4))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, 2) for i in reversed(range(4)))
        self.up_blocks = nn.ModuleList(block(2 * chans[i], chans[i]) for i in reversed(range(4)))
        self.outc = nn.Conv2d(chans[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up, blk in zip(self.ups, self.up_blocks):
            y = blk(torch.cat([skips.pop(), up(y)], dim=1))
        return self.outc(y)


# --------------------------------------------------------------------------- registry


def _perturb_bn(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None  # track_running_stats
            nn.init.uniform_(m.running_mean, -0.1, 0.1)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
    return net.eval()


def bisenet_v1() -> nn.Module:
    torch.manual_seed(0)
    return _perturb_bn(BiSeNetV1())


def ddrnet_slim() -> nn.Module:
    torch.manual_seed(0)
    return _perturb_bn(DDRNetSlim())


def coordatt_net() -> nn.Module:
    torch.manual_seed(0)
    return _perturb_bn(CoordAttNet())


def yolo_detect() -> nn.Module:
    torch.manual_seed(0)
    return _perturb_bn(TinyYolo())


def swin_pad() -> nn.Module:
    torch.manual_seed(0)
    return _perturb_bn(SwinPadNet())


def pspnet() -> nn.Module:
    torch.manual_seed(0)
    return _perturb_bn(PSPNet())


def unet() -> nn.Module:
    torch.manual_seed(0)
    return _perturb_bn(UNet())


__all__ = [
    "bisenet_v1", "coordatt_net", "ddrnet_slim", "pspnet", "swin_pad", "unet", "yolo_detect",
]
