"""ResNet-50/101 backbones: torchvision / timm state dicts (`torchvision_resnet`) and Hugging
Face transformers ResNet models (`hf_resnet`).

msc_seg.models.resnet mirrors torchvision's names (the v1.5 layout: stride in the 3x3 conv), so
torchvision keys pass through and Hugging Face keys are renamed to them. Dilation has no
parameters: the weights fit every output stride.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msc_seg.tools.weights.common import (
    CLASSIFIER,
    WRAPPER_PREFIXES,
    Architecture,
    Canon,
    ConversionError,
    Converter,
    Request,
    Rule,
    apply_rules,
    strip_prefixes,
)
from msc_seg.tools.weights.detect import detect_resnet

HF_RESNET_RULES: tuple[Rule, ...] = (
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.",
    ),
)
# config.json fields of an HF ResNet -> the value msc_seg's (torchvision v1.5) ResNet needs.
HF_RESNET_CONFIG = {
    "downsample_in_bottleneck": False,
    "downsample_in_first_stage": False,
    "layer_type": "bottleneck",
    "hidden_act": "relu",
}


def canon_hf_resnet(key: str, target: str = "backbone") -> tuple[str | None, str]:
    del target  # backbone only
    key = strip_prefixes(key, ("resnet.", "backbone.", "model."))
    if key.startswith("classifier."):
        return None, CLASSIFIER
    return apply_rules(key, HF_RESNET_RULES), ""


def canon_torchvision_resnet(key: str, target: str = "backbone") -> tuple[str | None, str]:
    del target  # backbone only
    key = strip_prefixes(key, WRAPPER_PREFIXES)
    if key.startswith("fc."):
        return None, CLASSIFIER
    return key, ""


def check_hf_resnet_config(hf_config: Mapping[str, Any] | None, source: str, notes: list[str]):
    """Refuse an HF ResNet whose config.json describes an architecture msc_seg lacks."""
    if hf_config is None:
        notes.append(
            "no config.json beside the checkpoint: assumed the torchvision-like layout "
            "(downsample_in_bottleneck=False, downsample_in_first_stage=False, relu)"
        )
        return
    for field, ours in HF_RESNET_CONFIG.items():
        if field in hf_config and hf_config[field] != ours:
            raise ConversionError(
                f"{source}: config.json has {field}={hf_config[field]!r}; msc_seg's ResNet "
                f"(torchvision v1.5 layout) needs {field}={ours!r}"
            )


def build_resnet(canon: Canon, req: Request) -> Architecture:
    from msc_seg.models.resnet import make_resnet

    name = req.backbone or detect_resnet(canon, req.source, req.fmt)
    req.notes.append("ResNet weights fit every output stride (dilation has no parameters)")
    return Architecture(
        description={"family": "resnet", "backbone": name},
        config_overrides={"model.backbone": name},
        factory=lambda rngs: make_resnet(name, output_stride=32, rngs=rngs),
    )


def build_hf_resnet(canon: Canon, req: Request) -> Architecture:
    check_hf_resnet_config(req.hf_config, req.source, req.notes)
    return build_resnet(canon, req)


HF_RESNET = Converter(
    format="hf_resnet",
    family="resnet",
    summary="transformers ResNetModel / ResNetBackbone / ResNetForImageClassification",
    canonicalise=canon_hf_resnet,
    build=build_hf_resnet,
)
TORCHVISION_RESNET = Converter(
    format="torchvision_resnet",
    family="resnet",
    summary="torchvision or timm ResNet-50/101 (same keys)",
    canonicalise=canon_torchvision_resnet,
    build=build_resnet,
)
