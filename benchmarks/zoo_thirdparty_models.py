"""Third-party vision models for ``benchmarks/zoo_thirdparty.py``, built offline with random weights.

Three families, each built the way its users build it, only smaller (few channels and layers, so a
CPU run takes seconds):

- ``transformers``: a ``*Config`` with small sizes and the task model class (``...ForSemanticSegmentation``,
  ``...ForDepthEstimation``, ``...ForImageClassification``); the wrapper returns the tensors a user exports
  (``logits``, ``predicted_depth``, ...). Models whose position embeddings are fixed to the config's
  image size are called with ``interpolate_pos_encoding=True``, as a user exporting dynamic sizes must.
- ``ultralytics``: the model yaml (``yolov8n.yaml`` ...), fused and in eval mode with the head's export
  flags set as ``yolo export format=onnx`` sets them (``export = True``, ``format = 'onnx'``), warmed up once
  at the export shape. ``dynamic`` is left as a user writing ``torch.onnx.export`` by hand leaves it
  (False: the anchors are cached at the warm-up shape); the ``*-exporter`` models set ``dynamic = True``
  as ``yolo export dynamic=True`` does (the anchors are computed in the graph).
- ``segmentation_models_pytorch``: the architecture class with a small encoder (``resnet18``,
  ``mobilenet_v2``, ``mit_b0``, timm ``tu-`` encoders), ``encoder_weights=None``.

Left out because ``torch.onnx.export(dynamo=False)`` refuses them with dynamic axes (``adaptive_avg_pool2d``
to k > 1 bins: "input size not accessible"), so there is nothing to check: smp ``PSPNet`` and ``UPerNet``,
transformers ``UperNetForSemanticSegmentation`` and ``BeitForSemanticSegmentation`` (PSP pool scales 1, 2, 3,
6). ``PvtForImageClassification`` runs in eager only at the patch count of its config, so it has no pair.

Nothing is downloaded: ``HF_HUB_OFFLINE`` is set before ``transformers`` is imported, and every
builder passes configs, never a hub name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")


def _torch() -> Any:
    import torch

    return torch


class _Outputs:
    """Picks the tensors a user exports from a model's output (a ModelOutput, a tuple, a tensor)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys

    def __call__(self, out: Any) -> Any:
        torch = _torch()
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, dict) or hasattr(out, "keys"):
            picked = tuple(out[k] for k in self.keys)
            return picked[0] if len(picked) == 1 else picked
        return out


def wrap(model: Any, keys: tuple[str, ...], **call_kwargs: Any) -> Any:
    """``model(pixel_values=x, **call_kwargs)`` returning the ``keys`` of its output as a tuple."""
    import torch

    pick = _Outputs(keys)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            return pick(self.model(pixel_values=x, **call_kwargs))

    Wrapped.__name__ = Wrapped.__qualname__ = f"{type(model).__name__}Export"
    return Wrapped()


def _seed() -> None:
    _torch().manual_seed(0)


def _prepare() -> None:
    """torchvision beside the CPU torch, before transformers, ultralytics or smp import it."""
    from dynashape.testing import import_torchvision

    import_torchvision()


# --------------------------------------------------------------------------- transformers


def _hf(model_cls: str, config_cls: str, keys: tuple[str, ...] = ("logits",), call: dict[str, Any] | None = None,
        **config: Any) -> Callable[[], Any]:
    def build() -> Any:
        _prepare()
        import transformers

        _seed()
        cfg = getattr(transformers, config_cls)(**config)
        model = getattr(transformers, model_cls)(cfg).eval()
        return wrap(model, keys, **(call or {}))

    return build


def _hf_backbone(model_cls: str, config_cls: str, backbone_cls: str, backbone: dict[str, Any],
                 keys: tuple[str, ...] = ("logits",), **config: Any) -> Callable[[], Any]:
    def build() -> Any:
        _prepare()
        import transformers

        _seed()
        bb = getattr(transformers, backbone_cls)(**backbone)
        cfg = getattr(transformers, config_cls)(backbone_config=bb, **config)
        model = getattr(transformers, model_cls)(cfg).eval()
        return wrap(model, keys)

    return build


_SMALL_VIT: dict[str, Any] = {
    "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128}
_STAGES4: dict[str, Any] = {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1]}


def hf_builders() -> dict[str, tuple[Callable[[], Any], str]]:
    """name -> (builder, note)."""
    return {
        "hf_segformer": (_hf(
            "SegformerForSemanticSegmentation", "SegformerConfig", **_STAGES4,
            num_attention_heads=[1, 2, 2, 4], sr_ratios=[8, 4, 2, 1], decoder_hidden_size=32, num_labels=5),
            "MiT encoder, all-MLP decoder: resize to the stride-4 map's size"),
        "hf_dpt": (_hf(
            "DPTForDepthEstimation", "DPTConfig", ("predicted_depth",), **_SMALL_VIT, image_size=256,
            patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 64, 64],
            fusion_hidden_size=32, head_hidden_size=16),
            "ViT + reassemble/fusion: position embeddings resized to the patch grid, `if` on skip size"),
        "hf_convnext": (_hf(
            "ConvNextForImageClassification", "ConvNextConfig", **_STAGES4, num_labels=10),
            "stride-4 patchify, global mean"),
        "hf_convnextv2": (_hf(
            "ConvNextV2ForImageClassification", "ConvNextV2Config", **_STAGES4, num_labels=10),
            "GRN: norms over H, W"),
        "hf_swin": (_hf(
            "SwinForImageClassification", "SwinConfig", image_size=256, embed_dim=16, depths=[1, 1, 2, 1],
            num_heads=[1, 2, 2, 4], window_size=7, num_labels=10),
            "window 7: `if H % window` pads (Python branch on a size)"),
        "hf_swinv2": (_hf(
            "Swinv2ForImageClassification", "Swinv2Config", image_size=256, embed_dim=16, depths=[1, 1, 2, 1],
            num_heads=[1, 2, 2, 4], window_size=8, num_labels=10),
            "window 8, continuous position bias"),
        "hf_vit": (_hf(
            "ViTForImageClassification", "ViTConfig", call={"interpolate_pos_encoding": True}, **_SMALL_VIT,
            image_size=256, patch_size=16, num_labels=10),
            "interpolate_pos_encoding=True: bicubic resize of the position grid"),
        "hf_dinov2": (_hf(
            "Dinov2Model", "Dinov2Config", ("pooler_output",), **_SMALL_VIT, image_size=252, patch_size=14),
            "patch 14: position grid resized with a scale factor"),
        "hf_beit": (_hf(
            "BeitForImageClassification", "BeitConfig", call={"interpolate_pos_encoding": True}, **_SMALL_VIT,
            image_size=256, patch_size=16, use_relative_position_bias=False,
            use_absolute_position_embeddings=True, use_mean_pooling=True, num_labels=10),
            "absolute position embeddings interpolated (interpolate_pos_encoding=True)"),
        "hf_mobilevit_seg": (_hf(
            "MobileViTForSemanticSegmentation", "MobileViTConfig", image_size=256, hidden_sizes=[24, 32, 40],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], aspp_out_channels=32, num_labels=5),
            "unfold into 2x2 patches, interpolate when not divisible (a Python branch)"),
        "hf_resnet": (_hf(
            "ResNetForImageClassification", "ResNetConfig", embedding_size=16, **_STAGES4, layer_type="basic",
            num_labels=10), "plain CNN (control)"),
        "hf_regnet": (_hf(
            "RegNetForImageClassification", "RegNetConfig", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1], groups_width=8, num_labels=10), "plain CNN (control)"),
        "hf_depth_anything": (_hf_backbone(
            "DepthAnythingForDepthEstimation", "DepthAnythingConfig", "Dinov2Config",
            {**_SMALL_VIT, "image_size": 252, "patch_size": 14, "out_indices": [1, 2, 3, 4],
             "reshape_hidden_states": False},
            ("predicted_depth",), neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32,
            head_hidden_size=16, reassemble_hidden_size=64, patch_size=14),
            "(H // 14) * 14: the head resizes to the patch grid times 14"),
        "hf_focalnet": (_hf(
            "FocalNetForImageClassification", "FocalNetConfig", image_size=256, embed_dim=16,
            depths=[1, 1, 1, 1], focal_levels=[2, 2, 2, 2], focal_windows=[3, 3, 3, 3], num_labels=10),
            "`maybe_pad` on sizes not a multiple of the patch"),
        "hf_pvt_v2": (_hf(
            "PvtV2ForImageClassification", "PvtV2Config", **_STAGES4, num_attention_heads=[1, 2, 2, 4],
            sr_ratios=[8, 4, 2, 1], mlp_ratios=[2, 2, 2, 2], num_labels=10),
            "overlapping patch embedding, spatial-reduction attention"),
        "hf_mobilenet_v2_deeplab": (_hf(
            "MobileNetV2ForSemanticSegmentation", "MobileNetV2Config", depth_multiplier=0.35, num_labels=5,
            image_size=256), "DeepLabV3 ASPP with global pooling, TF 'same' padding"),
        "hf_glpn": (_hf(
            "GLPNForDepthEstimation", "GLPNConfig", ("predicted_depth",), **_STAGES4,
            num_attention_heads=[1, 2, 2, 4], sr_ratios=[8, 4, 2, 1], decoder_hidden_size=16,
            max_depth=10, head_in_index=-1), "MiT encoder, selective-fusion decoder"),
        "hf_bit": (_hf(
            "BitForImageClassification", "BitConfig", embedding_size=32, hidden_sizes=[32, 64, 128, 256],
            depths=[1, 1, 1, 1], global_padding="SAME", layer_type="bottleneck", num_groups=4, num_labels=10),
            "dynamic 'SAME' padding computed from the input size"),
        "hf_efficientnet": (_hf(
            "EfficientNetForImageClassification", "EfficientNetConfig", image_size=256, width_coefficient=0.25,
            depth_coefficient=0.25, hidden_dim=320, num_labels=10), "TF-style padding, squeeze-excite"),
        "hf_mask2former": (_hf_backbone(
            "Mask2FormerForUniversalSegmentation", "Mask2FormerConfig", "SwinConfig",
            {"image_size": 256, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
             "window_size": 7, "out_features": ["stage1", "stage2", "stage3", "stage4"]},
            ("class_queries_logits", "masks_queries_logits"), hidden_dim=32, mask_feature_size=32,
            feature_size=32, encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1,
            decoder_layers=2, num_queries=10, num_attention_heads=4, common_stride=4, num_labels=5),
            "Swin backbone, deformable pixel decoder with GroupNorm, masks at stride 4"),
        "hf_maskformer": (_hf_backbone(
            "MaskFormerForInstanceSegmentation", "MaskFormerConfig", "SwinConfig",
            {"image_size": 256, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
             "window_size": 7, "out_features": ["stage1", "stage2", "stage3", "stage4"]},
            ("class_queries_logits", "masks_queries_logits"), fpn_feature_size=32, mask_feature_size=32,
            num_queries=10, num_labels=5,
            decoder_config={"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
                            "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}),
            "Swin backbone, FPN pixel decoder with GroupNorm, DETR decoder"),
        "hf_rtdetr": (_hf_backbone(
            "RTDetrForObjectDetection", "RTDetrConfig", "RTDetrResNetConfig",
            {"embedding_size": 16, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1],
             "layer_type": "bottleneck", "out_features": ["stage2", "stage3", "stage4"]},
            ("logits", "pred_boxes"), encoder_in_channels=[64, 128, 256], decoder_in_channels=[32, 32, 32],
            d_model=32, encoder_hidden_dim=32,
            encoder_ffn_dim=64, decoder_ffn_dim=64, decoder_layers=1, num_queries=20,
            encoder_attention_heads=4, decoder_attention_heads=4, decoder_n_points=2, num_labels=5,
            anchor_image_size=None),
            "anchors made from the feature sizes at run time (anchor_image_size=None); 2-D sine embedding"),
    }


# --------------------------------------------------------------------------- ultralytics


def _yolo(yaml_name: str, dynamic: bool = False) -> Callable[[], Any]:
    def build() -> Any:
        _prepare()
        torch = _torch()
        from ultralytics.nn import tasks
        from ultralytics.nn.modules.head import Detect
        from ultralytics.nn.tasks import guess_model_task, yaml_model_load

        _seed()
        cfg = yaml_model_load(yaml_name)  # the packaged yaml: 'yolov8n.yaml' is scale n of yolov8.yaml
        task = guess_model_task(cfg)
        cls = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel, "pose": tasks.PoseModel,
               "obb": tasks.OBBModel}[task]
        model = cls(cfg, verbose=False).eval()
        for p in model.parameters():
            p.requires_grad = False
        model = model.fuse(verbose=False)
        for m in model.modules():
            if isinstance(m, Detect):  # as ultralytics' exporter sets them for format=onnx
                for attr, value in (("export", True), ("format", "onnx"), ("dynamic", dynamic), ("shape", None)):
                    setattr(m, attr, value)
        with torch.no_grad():
            model(torch.zeros(1, 3, 256, 256))  # warm-up at the export shape, as users (and the exporter) do
        return model

    return build


def yolo_builders() -> dict[str, tuple[Callable[[], Any], str]]:
    note = "anchors and strides cached at warm-up: one grid per level, concatenated (DS008)"
    return {
        "yolov8n": (_yolo("yolov8n.yaml"), note),
        "yolov8n_seg": (_yolo("yolov8n-seg.yaml"), note + "; mask prototypes"),
        "yolov8n_pose": (_yolo("yolov8n-pose.yaml"), note + "; keypoints decoded with the same grid"),
        "yolo11n": (_yolo("yolo11n.yaml"), note),
        "yolo11n_seg": (_yolo("yolo11n-seg.yaml"), note + "; mask prototypes"),
        "yolo11n_pose": (_yolo("yolo11n-pose.yaml"), note + "; keypoints"),
        "yolov10n": (_yolo("yolov10n.yaml"), note + "; end-to-end one-to-one head (TopK)"),
        "yolov5nu": (_yolo("yolov5nu.yaml"), note + "; v5 backbone with the anchor-free head"),
        "yolov8n_obb": (_yolo("yolov8n-obb.yaml"), note + "; oriented boxes"),
        "yolov8n_exporter": (_yolo("yolov8n.yaml", dynamic=True),
                             "as `yolo export format=onnx dynamic=True`: anchors made in the graph (control)"),
        "yolo11n_pose_exporter": (_yolo("yolo11n-pose.yaml", dynamic=True),
                                  "as `yolo export format=onnx dynamic=True` (control)"),
    }


# --------------------------------------------------------------------------- segmentation_models_pytorch


def _smp(arch: str, encoder: str = "resnet18", **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        _prepare()
        import segmentation_models_pytorch as smp

        _seed()
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3, **kwargs).eval()

    return build


def smp_builders() -> dict[str, tuple[Callable[[], Any], str]]:
    small: dict[str, Any] = {"decoder_channels": (64, 32, 16, 16, 8)}
    return {
        "smp_unet_resnet18": (_smp("Unet", **small), "skip concat after 2x upsampling (scale factor)"),
        "smp_unetpp_resnet18": (_smp("UnetPlusPlus", **small), "nested skips"),
        "smp_fpn_resnet18": (_smp("FPN", decoder_pyramid_channels=32, decoder_segmentation_channels=32),
                             "GroupNorm(32, C): Reshape [0, 32, -1]"),
        "smp_deeplabv3_resnet18": (_smp("DeepLabV3", decoder_channels=64), "ASPP global pool, resize back"),
        "smp_deeplabv3plus_mobilenet_v2": (_smp("DeepLabV3Plus", "mobilenet_v2", decoder_channels=64),
                                           "ASPP, resize to the stride-4 skip"),
        "smp_linknet_resnet18": (_smp("Linknet"), "transposed-conv decoder, skip add"),
        "smp_manet_resnet18": (_smp("MAnet", **small, decoder_pab_channels=16), "position attention block"),
        "smp_pan_resnet18": (_smp("PAN", decoder_channels=32), "feature pyramid attention, global pool"),
        "smp_segformer_mit_b0": (_smp("Segformer", "mit_b0", decoder_segmentation_channels=32),
                                 "MiT encoder: reshape back to (B, C, H, W)"),
        "smp_unet_tu_mobilenetv3": (_smp("Unet", "tu-mobilenetv3_small_100", **small),
                                    "timm encoder (tu-), squeeze-excite"),
    }


def all_builders() -> dict[str, tuple[str, Callable[[], Any], str]]:
    """name -> (family, builder, note)."""
    out: dict[str, tuple[str, Callable[[], Any], str]] = {}
    for family, table in (("transformers", hf_builders()), ("ultralytics", yolo_builders()),
                          ("smp", smp_builders())):
        for name, (build, note) in table.items():
            out[name] = (family, build, note)
    return out
