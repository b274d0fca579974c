"""PyTorch modules for the DS005 forms third-party code writes (HAZARDS.md, "As third-party code
writes them"), exported the way users export them. Input ``x``: ``[N, 3, H, W]``; output ``y``.

Imported by the torch tests only (it imports torch)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch import nn


def export(module: nn.Module, shape: Sequence[int]) -> onnx.ModelProto:
    """``torch.onnx.export`` as users write it: legacy exporter, opset 17, dynamic N, H, W."""
    buf = io.BytesIO()
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(*shape),), buf, dynamo=False, opset_version=17,  # type: ignore[arg-type]
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}})
    return onnx.load_from_string(buf.getvalue())


def eager(module: nn.Module, shape: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random input of ``shape`` and the module's output on it."""
    x = np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    return x, y


def assert_matches_eager(model: onnx.ModelProto, module: nn.Module, shape: Sequence[int], atol: float = 1e-4) -> None:
    """``model`` in ONNX Runtime gives what the module gives in eager at ``shape``."""
    from dynashape.backends.ort import run_model

    x, want = eager(module, shape)
    (got,) = run_model(model, {"x": x}).values()
    assert got.shape == want.shape, f"at {tuple(shape)}: output {got.shape}, eager {want.shape}"
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-4)


class PositionAttention(nn.Module):
    """The position attention block of DANet / smp MAnet (``PAB``): flatten the map, attend over its
    pixels, view the result back to the map's shape. ``ints``: the sizes as Python ints
    (``b, c, h, w = (int(d) for d in x.shape)``), so the export freezes both views:
    ``view(b, c, h * w)`` and, after the attention, ``view(b, c, h, w)``; else ``x.shape`` (traced)."""

    def __init__(self, c: int = 8, *, ints: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ints = ints
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.query, self.key, self.value = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        b, c, h, w = (int(d) for d in f.shape) if self.ints else f.shape
        q = self.query(f).view(b, c, h * w)
        k = self.key(f).view(b, c, h * w)
        v = self.value(f).view(b, c, h * w)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)
        out = (v @ attn.transpose(1, 2)).view(b, c, h, w)
        return f + out


class TokensToMap(nn.Module):
    """A patch embedding, a token mixer, and the tokens viewed back as a map with sizes frozen as
    Python ints, as ViT segmentation heads write it. ``spelling``:

    * ``"sqrt"``: SETR / ViT-Adapter, ``side = int(math.sqrt(n))``, ``reshape(b, c, side, side)``
      (square inputs only, in eager too);
    * ``"hw"``: the Swin v1 reference code, ``H, W`` kept as ints from the patch embedding and
      ``x.view(B, H, W, C)`` (tokens in NHWC order)."""

    def __init__(self, c: int = 16, *, spelling: str = "sqrt") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.spelling = spelling
        self.embed = nn.Conv2d(3, c, 8, 8)
        self.mix = nn.Linear(c, c)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x)
        height, width = int(f.shape[2]), int(f.shape[3])
        t = f.flatten(2).transpose(1, 2)
        t = t + self.mix(t)
        b, n, c = t.shape
        if self.spelling == "sqrt":
            side = int(math.sqrt(n))
            g = t.transpose(1, 2).reshape(b, c, side, side)
        else:
            g = t.view(b, height, width, c).permute(0, 3, 1, 2)
        return self.head(g)


class GridAttention(nn.Module):
    """A learned 4x4 grid (a parameter) conditioned on the image's mean feature, flattened, mixed
    and viewed back with the literal 4s: right at every size, also where the feature map itself
    is 4x4 at export (an earlier tensor whose size follows the input has the same export-time
    sizes, and must not be taken for the grid's)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, c, 8, 8)
        self.grid = nn.Parameter(torch.randn(1, c, 4, 4))
        self.mix = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        b, c = f.shape[:2]
        g = self.grid + f.mean((2, 3), keepdim=True)
        return self.mix(g.reshape(b, c, 16)).view(b, c, 4, 4)


class GroupNormBlock(nn.Module):
    """smp FPN's segmentation block: ``Conv3x3 -> GroupNorm(32, C) -> ReLU``. ``GroupNorm``
    exports as ``Reshape [0, 32, -1] -> InstanceNormalization -> Reshape(Shape(x))``: right at
    every size, also where the map is 32 pixels wide at export."""

    def __init__(self, c: int = 64, groups: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, c, 3, 2, 1, bias=False)
        self.norm = nn.GroupNorm(groups, c)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class QueryDecoder(nn.Module):
    """A DETR / Mask2Former transformer decoder step: learned queries repeated over the batch,
    cross-attention to the flattened feature map with ``nn.MultiheadAttention`` (its
    ``view(tgt_len * bsz, embed_dim)`` computed from ``Shape``), then the same step written by hand
    with ``embed_dim`` an int of the module (``reshape(q_len * bsz, self.embed_dim)``: one entry
    computed, one a model constant). Right at every size and batch."""

    def __init__(self, c: int = 32, queries: int = 10, heads: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed_dim, self.heads = c, heads
        self.stem = nn.Conv2d(3, c, 8, 8)
        self.queries = nn.Embedding(queries, c)
        self.cross = nn.MultiheadAttention(c, heads)
        self.q, self.kv, self.out = nn.Linear(c, c), nn.Linear(c, 2 * c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        b = f.shape[0]
        memory = f.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        q = self.queries.weight.unsqueeze(1).repeat(1, b, 1)  # (Q, B, C)
        q = q + self.cross(q, memory, memory)[0]
        q_len, bsz, _ = q.shape
        head_dim = self.embed_dim // self.heads
        query = self.q(q).reshape(q_len, bsz * self.heads, head_dim).transpose(0, 1)
        k, v = self.kv(memory).chunk(2, dim=-1)
        k = k.reshape(-1, bsz * self.heads, head_dim).transpose(0, 1)
        v = v.reshape(-1, bsz * self.heads, head_dim).transpose(0, 1)
        attn = torch.softmax(query @ k.transpose(1, 2) / math.sqrt(head_dim), dim=-1)
        out = (attn @ v).transpose(0, 1).reshape(q_len * bsz, self.embed_dim)
        out = self.out(out).view(q_len, bsz, self.embed_dim)
        return (q + out).transpose(0, 1)  # (B, Q, C)


class RowSoftmax(nn.Module):
    """``x.view(x.shape[0] * x.shape[1], int(h) * int(w))``: one entry computed from ``Shape``,
    one frozen (the pixels per plane, a product of export-time sizes), then a softmax over each
    plane and ``view_as`` back."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, c, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        planes = f.view(f.shape[0] * f.shape[1], int(f.shape[2]) * int(f.shape[3]))
        return torch.softmax(planes, dim=1).view_as(f)


class ClipSegFromConfig(nn.Module):
    """Hugging Face ``CLIPSegForImageSegmentation`` built from a small config (random weights),
    conditioned on a fixed embedding. Its decoder writes ``size = int(math.sqrt(output.shape[2]))``
    and ``output.view(batch_size, output.shape[1], size, size)``: the patch grid frozen, the SETR
    form in a released model."""

    def __init__(self) -> None:
        super().__init__()
        from dynashape.testing import import_torchvision

        import_torchvision()  # transformers imports torchvision; the CPU torch needs its op schemas first
        import transformers

        torch.manual_seed(0)
        config = transformers.CLIPSegConfig(
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                           "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
            projection_dim=16, extract_layers=[1, 2], reduce_dim=16, decoder_num_attention_heads=2,
            decoder_intermediate_size=32)
        self.model = transformers.CLIPSegForImageSegmentation(config).eval()
        self.register_buffer("condition", torch.randn(1, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        condition = self.condition.expand(x.shape[0], -1)  # type: ignore[operator]
        return self.model(pixel_values=x, conditional_embeddings=condition, interpolate_pos_encoding=True).logits
