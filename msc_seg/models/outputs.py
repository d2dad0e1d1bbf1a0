"""The output record every segmentor returns, and the last step of making its logits."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from msc_seg.models.layers import resize_bilinear


class SegOutputs(NamedTuple):
    """What a segmentor returns.

    logits: float32 [B,H,W,K] at the input resolution; at the head's resolution [B,h,w,K] when
        the caller passed `upsample_logits=False` (the train step: its loss,
        `losses.segmentation.upsampled_cross_entropy`, upsamples in chunks with the model's
        `align_corners`, never holding [B,H,W,K]).
    aux_logits: float32, as logits, or None for models without an auxiliary head.
    embeddings: per-scale projector outputs, float32 [B,h_s,w_s,D], finest first (scale 0);
        an empty tuple unless the caller asked for them, so inference pays nothing for them.
    """

    logits: jax.Array
    aux_logits: jax.Array | None
    embeddings: tuple[jax.Array, ...]


def finish_logits(
    logits: jax.Array, size: tuple[int, int], *, align_corners: bool, upsample: bool
) -> jax.Array:
    """A head's logits [B,h,w,K] as float32, bilinearly resized to `size` when `upsample`."""
    logits = logits.astype(jnp.float32)
    return resize_bilinear(logits, size, align_corners=align_corners) if upsample else logits
