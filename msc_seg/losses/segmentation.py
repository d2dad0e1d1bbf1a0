"""Segmentation cross-entropy with an ignore label (PyTorch `CrossEntropyLoss` semantics)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msc_seg.data.conventions import IGNORE_LABEL


def cross_entropy(
    logits: jax.Array, labels: jax.Array, class_weights: Sequence[float] | jax.Array | None = None
) -> jax.Array:
    """Mean CE over non-ignored pixels.

    logits: [B,H,W,K] (any float dtype; computed in float32); labels: int32 [B,H,W], -1 = ignore.
    With class_weights [K], the weighted mean: sum_i w[y_i] * ce_i / sum_i w[y_i] (PyTorch).
    A batch with no valid pixel gives 0 (PyTorch gives NaN) with zero gradients.
    """
    logits = logits.astype(jnp.float32)
    valid = labels != IGNORE_LABEL
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    w = valid.astype(jnp.float32)
    if class_weights is not None and len(class_weights):
        w = w * jnp.asarray(class_weights, jnp.float32)[safe]
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1e-12)
