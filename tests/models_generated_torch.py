"""PyTorch modules with the DS007 / DS008 / DS012 source patterns (and their correct forms), for
the rule tests; imported only where torch is installed. Input: ``[N, 3, H, W]``."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class _Base(nn.Module):
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 3, padding=1)


# ------------------------------------------------------------------------------------- DS007


class AddZeros(_Base):
    """``y + torch.zeros(b, c, h, w)`` with every size an int (folded to one constant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, c, h, w = (int(s) for s in y.shape)
        return y + torch.zeros(b, c, h, w)


class MulFull(_Base):
    """``y * torch.full((y.shape[0], 1, h, w), 0.5)``: batch from the shape, H and W ints
    (legacy: ConstantOfShape with a partly constant size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h, w = int(y.shape[2]), int(y.shape[3])
        return y * torch.full((y.shape[0], 1, h, w), 0.5)


class AddArange(_Base):
    """A positional row: ``y + torch.arange(w)`` with ``w`` an int."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + torch.arange(int(y.shape[3]))


class CellCentres(_Base):
    """Normalized cell centres ``(arange(w) + 0.5) / w`` times the map, ints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        w = int(y.shape[3])
        return y * ((torch.arange(w) + 0.5) / w)


class LinspaceRows(_Base):
    """``y + torch.linspace(-1, 1, h).view(h, 1)`` with ``h`` an int."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h = int(y.shape[2])
        return y + torch.linspace(-1, 1, h).view(h, 1)


class CleanGenerated(_Base):
    """The correct forms: sizes stay tensors (``zeros_like``, ``arange(x.shape[-1])``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        w = y.shape[3]
        row = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        return (y + torch.zeros_like(y)) * row + torch.ones(y.shape[0], 1, y.shape[2], y.shape[3])


class LearnedPosition(_Base):
    """A learned ``[1, 4, 32, 48]`` table added to the map: size-tied but not generated."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 4, 32, 48))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.pos


class ChannelParams(_Base):
    """32 channels at an export size of 32x32: per-channel parameters must not fire."""

    def __init__(self) -> None:
        super().__init__(channels=32)
        self.bias = nn.Parameter(torch.randn(32, 1, 1))
        self.gamma = nn.Parameter(torch.randn(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) + self.bias
        return y.permute(0, 2, 3, 1) * self.gamma


# ------------------------------------------------------------------------------------- DS008


class YoloDetect(nn.Module):
    """A YOLOv5 ``Detect`` level: ``grid`` and ``anchor_grid`` are made by ``_make_grid(nx, ny)``
    and cached on the module; a warm-up run at the export size fills them, so the export reuses
    them as constants."""

    def __init__(self, na: int = 3, no: int = 6, stride: float = 8.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.na, self.no, self.stride = na, no, stride
        self.m = nn.Conv2d(3, na * no, 1)
        self.anchors = torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]])[:na]
        self.grid = torch.zeros(1)
        self.anchor_grid = torch.zeros(1)

    def _make_grid(self, nx: int, ny: int) -> tuple[torch.Tensor, torch.Tensor]:
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2).float() - 0.5
        anchor_grid = (self.anchors * self.stride).view(1, self.na, 1, 1, 2).expand(1, self.na, ny, nx, 2)
        return grid, anchor_grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.m(x)
        bs, _, ny, nx = x.shape
        x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        if self.grid.shape[2:4] != x.shape[2:4]:
            self.grid, self.anchor_grid = self._make_grid(nx, ny)
        xy, wh, conf = x.sigmoid().split((2, 2, self.no - 4), 4)
        xy = (xy * 2 + self.grid) * self.stride
        wh = (wh * 2) ** 2 * self.anchor_grid
        return torch.cat((xy, wh, conf), 4).view(bs, -1, self.no)


class YoloDetectDynamic(YoloDetect):
    """The source fix: the grids are made from the feature map's shape in every forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.m(x)
        bs, _, ny, nx = x.shape
        x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        grid, anchor_grid = self._make_grid(nx, ny)
        xy, wh, conf = x.sigmoid().split((2, 2, self.no - 4), 4)
        xy = (xy * 2 + grid) * self.stride
        wh = (wh * 2) ** 2 * anchor_grid
        return torch.cat((xy, wh, conf), 4).view(bs, -1, self.no)


class CoordChannels(_Base):
    """CoordConv: ``cat([y, xx, yy], 1)`` with ``linspace(-1, 1)`` coordinates built with ints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, _, h, w = (int(s) for s in y.shape)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return torch.cat([y, xx.expand(b, 1, h, w), yy.expand(b, 1, h, w)], 1)


# ------------------------------------------------------------------------------------- DS012


class ClassToken(nn.Module):
    """ViT-style: ``cat([cls.expand(b, -1, -1), tokens], 1)`` with ``b`` an int; ``repeat``:
    ``cls.repeat(b, 1, 1)``; ``clean``: ``b = x.shape[0]`` stays a tensor."""

    def __init__(self, mode: str = "expand") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        b = x.shape[0] if self.mode == "clean" else int(x.shape[0])
        cls = self.cls.repeat(b, 1, 1) if self.mode == "repeat" else self.cls.expand(b, -1, -1)
        return torch.cat([cls, tokens], 1)


class MaskExpand(_Base):
    """``cat([y, mask.expand(b, -1, -1, -1)], 1)``, ``mask = (y[:1, :1] > 0)`` and ``b`` an int."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b = int(x.shape[0])
        mask = (y[:1, :1] > 0).float()
        return torch.cat([y, mask.expand(b, -1, -1, -1)], 1)


class ExpandOwn(_Base):
    """``m.expand(b, 8, h, w)`` of ``m = y.mean(1, keepdim=True)`` with every size an int."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.conv(x).mean(1, keepdim=True)
        b, _, h, w = (int(s) for s in m.shape)
        return m.expand(b, 8, h, w) * 2


class Yolo8Head(nn.Module):
    """A one-level YOLOv8 ``Detect``: ``anchors [2, H·W]`` (cell centres, flattened) and
    ``strides [1, H·W]`` are cached when the map size changes (``self.shape != shape``), so a
    warm-up run at the export size leaves them as constants."""

    def __init__(self, stride: float = 8.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stride = stride
        self.box = nn.Conv2d(3, 4, 1)
        self.cls = nn.Conv2d(3, 2, 1)
        self.shape: tuple[int, ...] | None = None
        self.anchors = torch.empty(0)
        self.strides = torch.empty(0)

    def _make_anchors(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        sx = torch.arange(end=w) + 0.5
        sy = torch.arange(end=h) + 0.5
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points = torch.stack((sx, sy), -1).view(-1, 2)
        return points.transpose(0, 1), torch.full((h * w, 1), self.stride).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box, cls = self.box(x), self.cls(x)
        shape = tuple(box.shape)
        if self.shape != shape:
            self.anchors, self.strides = self._make_anchors(shape[2], shape[3])
            self.shape = shape
        dist = box.flatten(2)  # [N, 4, L]
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((xywh, cls.flatten(2).sigmoid()), 1)


# ------------------------------------------------------------------ DS008: multi-level YOLOv8 heads


def make_anchors(feats: list[torch.Tensor], strides: list[float], offset: float = 0.5
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchors a YOLOv8-style head decodes with (our own spelling of the pattern): per level
    the cell centres ``(x + offset, y + offset)`` in row-major order, ``[h·w, 2]``, and a
    ``[h·w, 1]`` column of the level's stride; both concatenated over the levels."""
    points, fills = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[2], feat.shape[3]  # traced sizes: with dynamic=True the grid follows them
        xs = (torch.arange(w, dtype=feat.dtype) + offset).unsqueeze(0).expand(h, w)
        ys = (torch.arange(h, dtype=feat.dtype) + offset).unsqueeze(1).expand(h, w)
        cells = torch.stack((xs, ys), dim=-1).reshape(-1, 2)
        points.append(cells)
        fills.append(torch.full_like(cells[:, :1], float(stride)))
    return torch.cat(points), torch.cat(fills)


class Yolo8Levels(nn.Module):
    """A three-level YOLOv8 ``Detect`` (strides 8, 16, 32) on a small backbone, written as
    ultralytics writes it: per-level box (DFL bins) and class convs viewed to ``[b, c, h·w]`` and
    concatenated; ``anchors [2, Σ h·w]`` and ``strides [1, Σ h·w]`` made by ``make_anchors`` and
    cached while the map size stays the same (``self.shape != shape``), so a warm-up run at the
    export size leaves them as constants. ``dynamic=True`` is ultralytics' ``dynamic`` flag: the
    anchors are made in every forward from the maps' shapes (the source fix).

    ``task``: ``detect``; ``pose`` adds keypoints decoded with ``(anchors - 0.5)`` and the strides
    (the export-mode ``kpts_decode``); ``pose_rows`` decodes them as the non-export path does,
    ``anchors[0] - 0.5`` and ``anchors[1] - 0.5`` rows; ``learned``: the anchors are a trained
    ``[2, Σ h·w]`` table (not a grid) at the export size of ``TORCH_S0``."""

    def __init__(self, task: str = "detect", dynamic: bool = False, nc: int = 3, reg_max: int = 4,
                 nkpt: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.task, self.dynamic, self.nc, self.reg_max, self.nkpt = task, dynamic, nc, reg_max, nkpt
        self.strides_per_level = [8.0, 16.0, 32.0]
        chans = [3, 8, 8, 16, 16, 16]
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in itertools.pairwise(chans))
        level_chans = chans[3:]
        self.box = nn.ModuleList(nn.Conv2d(c, 4 * reg_max, 1) for c in level_chans)
        self.cls = nn.ModuleList(nn.Conv2d(c, nc, 1) for c in level_chans)
        self.kpt = nn.ModuleList(nn.Conv2d(c, nkpt * 2, 1) for c in level_chans)
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)
        self.shape: tuple[int, ...] | None = None
        self.anchors = torch.empty(0)
        self.strides = torch.empty(0)
        self.learned = nn.Parameter(torch.rand(2, 4 * 6 + 2 * 3 + 1 * 2) * 8) if task == "learned" else None

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, conv in enumerate(self.down):
            x = torch.relu(conv(x))
            if i >= 2:
                feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        bs = feats[0].shape[0]
        boxes = torch.cat([self.box[i](f).view(bs, 4 * self.reg_max, -1) for i, f in enumerate(feats)], -1)
        scores = torch.cat([self.cls[i](f).view(bs, self.nc, -1) for i, f in enumerate(feats)], -1)
        shape = feats[0].shape
        if self.dynamic or self.shape != shape:
            self.anchors, self.strides = (a.transpose(0, 1) for a in make_anchors(feats, self.strides_per_level))
            self.shape = shape
        anchors = self.learned if self.learned is not None else self.anchors
        b, _, a = boxes.shape  # DFL: expected value of the distance bins
        dist = self.dfl(boxes.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        y = torch.cat((dbox, scores.sigmoid()), 1)
        if self.task not in ("pose", "pose_rows"):
            return y
        kpts = torch.cat([self.kpt[i](f).view(bs, self.nkpt * 2, -1) for i, f in enumerate(feats)], -1)
        if self.task == "pose":
            k = kpts.view(bs, self.nkpt, 2, -1)
            k = ((k * 2.0 + (self.anchors - 0.5)) * self.strides).view(bs, self.nkpt * 2, -1)
        else:
            k = kpts.clone()
            k[:, 0::2] = (k[:, 0::2] * 2.0 + (self.anchors[0] - 0.5)) * self.strides
            k[:, 1::2] = (k[:, 1::2] * 2.0 + (self.anchors[1] - 0.5)) * self.strides
        return torch.cat((y, k), 1)


def ultralytics_model(name: str, s0: tuple[int, ...]) -> nn.Module:
    """An ultralytics YOLO (``yolov8n``, ``yolov8n-seg``, ``yolov8n-pose``...) built from its yaml with
    random weights, warmed up once at ``s0`` as a user's first inference does."""
    from dynashape.testing import import_torchvision

    import_torchvision()
    from ultralytics.nn.tasks import DetectionModel, PoseModel, SegmentationModel

    torch.manual_seed(0)
    kind = PoseModel if "-pose" in name else SegmentationModel if "-seg" in name else DetectionModel
    net = kind(f"{name}.yaml", verbose=False).eval()
    with torch.no_grad():
        net(torch.zeros(s0))
    return net
