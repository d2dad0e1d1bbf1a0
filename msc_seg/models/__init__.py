"""Models: backbones, heads, projectors and segmentors (NHWC, finest scale first)."""

from msc_seg.models.outputs import SegOutputs
from msc_seg.models.segmentor import (
    SEGMENTORS,
    UPerNetSegmentor,
    count_params,
    make_segmentor,
    register_segmentor,
)

__all__ = [
    "SEGMENTORS",
    "SegOutputs",
    "UPerNetSegmentor",
    "count_params",
    "make_segmentor",
    "register_segmentor",
]
