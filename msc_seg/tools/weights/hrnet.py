"""HRNetV2 backbones from the official ImageNet checkpoints (`hrnet_official`):
hrnetv2_w48_imagenet_pretrained.pth and W18.

msc_seg.models.hrnet mirrors the official module names, so keys pass through; the ImageNet
classification modules after stage 4 are not loaded.
"""

from __future__ import annotations

import re

from msc_seg.tools.weights.common import (
    WRAPPER_PREFIXES,
    Architecture,
    Canon,
    Converter,
    Request,
    strip_prefixes,
)
from msc_seg.tools.weights.detect import detect_hrnet

HRNET_HEAD = (
    "ImageNet classification head of HRNetV2 (incre_modules, downsamp_modules, final_layer, "
    "classifier): the segmentation backbone ends at stage4"
)


def canon_hrnet_official(key: str, target: str = "backbone") -> tuple[str | None, str]:
    del target  # backbone only
    key = strip_prefixes(key, WRAPPER_PREFIXES)
    if re.match(r"^(incre_modules|downsamp_modules|final_layer|classifier)\.", key):
        return None, HRNET_HEAD
    return key, ""


def build_hrnet(canon: Canon, req: Request) -> Architecture:
    from msc_seg.models.hrnet import make_hrnet

    name = req.backbone or detect_hrnet(canon, req.source, req.fmt)
    return Architecture(
        description={"family": "hrnet", "backbone": name},
        config_overrides={"model.backbone": name},
        factory=lambda rngs: make_hrnet(name, rngs=rngs),
    )


HRNET_OFFICIAL = Converter(
    format="hrnet_official",
    family="hrnet",
    summary="hrnetv2_w48_imagenet_pretrained.pth (and W18)",
    canonicalise=canon_hrnet_official,
    build=build_hrnet,
)
