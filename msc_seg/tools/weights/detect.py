"""Which msc_seg variant a checkpoint is, from the shapes of its canonical (renamed) tensors.

The --format names the key layout; these functions find the variant within the family (Swin
T/S/B/L and window size, ResNet-50/101, HRNet-W18/W48) so that no --backbone is needed. Each
raises ConversionError naming what it looked for when the tensors fit no known variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from msc_seg.tools.weights.common import ConversionError, first_keys


def require(canon: Mapping[str, Any], key: str, what: str, source: str, fmt: str) -> np.ndarray:
    """canon[key]'s array, or a ConversionError suggesting the --format is wrong."""
    if key not in canon:
        raise ConversionError(
            f"{source}: no {what} ({key}) found for --format {fmt}; is the format right? "
            f"The file's keys start: {first_keys(canon)}"
        )
    return canon[key][0]


def count(canon: Mapping[str, Any], pattern: str) -> int:
    """How many of pattern.format(0), pattern.format(1), ... are keys of canon, in a row."""
    n = 0
    while pattern.format(n) in canon:
        n += 1
    return n


def detect_swin(canon: Mapping[str, Any], source: str, fmt: str) -> tuple[str, int]:
    """-> (variant name of msc_seg.models.swin.SWIN_VARIANTS, window size) from the shapes."""
    from msc_seg.models.swin import SWIN_VARIANTS

    proj = require(canon, "patch_embed.proj.weight", "Swin patch embedding", source, fmt)
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    num_stages = count(canon, "layers.{}.blocks.0.norm1.weight")
    depths = tuple(count(canon, f"layers.{i}.blocks.{{}}.norm1.weight") for i in range(num_stages))
    tables = [
        require(
            canon,
            f"layers.{i}.blocks.0.attn.relative_position_bias_table",
            "Swin bias table",
            source,
            fmt,
        )
        for i in range(num_stages)
    ]
    heads = tuple(int(t.shape[1]) for t in tables)
    window = (math.isqrt(int(tables[0].shape[0])) + 1) // 2
    for name, v in SWIN_VARIANTS.items():
        if (v.embed_dim, v.depths, v.num_heads, v.patch_size) == (embed_dim, depths, heads, patch):
            return name, window
    raise ConversionError(
        f"{source}: Swin with embed_dim={embed_dim}, depths={depths}, heads={heads}, "
        f"patch={patch} matches no known variant ({sorted(SWIN_VARIANTS)}); add it to "
        "msc_seg.models.swin.SWIN_VARIANTS or pass --backbone"
    )


def detect_resnet(canon: Mapping[str, Any], source: str, fmt: str) -> str:
    """-> name of msc_seg.models.resnet.RESNET_BLOCK_COUNTS from the block counts and widths."""
    from msc_seg.models.resnet import RESNET_BLOCK_COUNTS

    stem = int(require(canon, "conv1.weight", "ResNet stem conv", source, fmt).shape[0])
    blocks = tuple(count(canon, f"layer{i}.{{}}.conv1.weight") for i in range(1, 5))
    if "layer1.0.conv3.weight" not in canon:
        raise ConversionError(
            f"{source}: a ResNet with basic blocks (ResNet-18/34); only bottleneck ResNets "
            "(50/101) are supported"
        )
    planes = tuple(int(canon[f"layer{i}.0.conv1.weight"][0].shape[0]) for i in range(1, 5))
    tiny = stem == 8 and planes == (8, 16, 32, 64)
    for name, counts in RESNET_BLOCK_COUNTS.items():
        if counts == blocks and tiny == (name == "resnet_tiny_test"):
            return name
    raise ConversionError(
        f"{source}: ResNet with blocks {blocks}, stem {stem}, widths {planes} matches none of "
        f"{sorted(RESNET_BLOCK_COUNTS)}; pass --backbone"
    )


def detect_hrnet(canon: Mapping[str, Any], source: str, fmt: str) -> str:
    """-> name of msc_seg.models.hrnet.HRNET_CONFIGS from the stem, stage-1 and branch widths."""
    from msc_seg.models.hrnet import HRNET_CONFIGS

    stem = int(require(canon, "conv1.weight", "HRNet stem conv", source, fmt).shape[0])
    width = int(require(canon, "transition1.0.0.weight", "HRNet transition", source, fmt).shape[0])
    stage1_blocks = count(canon, "layer1.{}.conv1.weight")
    stage1_planes = int(canon["layer1.0.conv1.weight"][0].shape[0]) if stage1_blocks else -1
    key = (stem, width, stage1_blocks, stage1_planes)
    for name, c in HRNET_CONFIGS.items():
        if (c.stem_channels, c.width, c.stage1_blocks, c.stage1_planes) == key:
            return name
    raise ConversionError(
        f"{source}: HRNet with stem {stem}, width {width}, stage-1 blocks {stage1_blocks} "
        f"matches none of {sorted(HRNET_CONFIGS)}; pass --backbone"
    )
