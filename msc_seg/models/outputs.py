"""The output record every segmentor returns."""

from typing import NamedTuple

import jax


class SegOutputs(NamedTuple):
    """What a segmentor returns.

    logits: float32 [B,H,W,K] at the input resolution.
    aux_logits: float32 [B,H,W,K], or None for models without an auxiliary head.
    embeddings: per-scale projector outputs, float32 [B,h_s,w_s,D], finest first (scale 0);
        an empty tuple unless the caller asked for them, so inference pays nothing for them.
    """

    logits: jax.Array
    aux_logits: jax.Array | None
    embeddings: tuple[jax.Array, ...]
