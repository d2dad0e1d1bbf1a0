"""Losses: segmentation cross-entropy, fixed-shape anchor sampling, MS + CS contrastive."""

from msc_seg.losses.contrastive import (
    ContrastiveOptions,
    contrastive_loss_for_batch,
    contrastive_loss_for_group,
    info_nce_loss,
    multiscale_contrastive_loss,
)
from msc_seg.losses.sampling import (
    IGNORE_LABEL,
    AnchorSet,
    anchor_key,
    downsample_labels,
    pack_anchors,
    sample_anchors,
    sample_batch_anchors,
    sample_group_anchors,
    split_groups,
)

__all__ = [
    "ContrastiveOptions",
    "IGNORE_LABEL",
    "AnchorSet",
    "anchor_key",
    "contrastive_loss_for_batch",
    "contrastive_loss_for_group",
    "downsample_labels",
    "info_nce_loss",
    "multiscale_contrastive_loss",
    "pack_anchors",
    "sample_anchors",
    "sample_batch_anchors",
    "sample_group_anchors",
    "split_groups",
]
