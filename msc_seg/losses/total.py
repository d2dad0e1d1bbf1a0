"""The training objective: CE(final) + aux_weight * CE(aux) + weight * (MS + CS contrastive)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from msc_seg.losses.segmentation import cross_entropy
from msc_seg.models.outputs import SegOutputs


def total_loss(
    outputs: SegOutputs,
    labels: jax.Array,
    key: jax.Array,
    *,
    aux_weight: float,
    class_weights: Sequence[float] = (),
    contrastive_weight: float = 0.0,
    contrastive_kwargs: Mapping[str, Any] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and a metrics dict with every term.

    outputs: the model's SegOutputs (logits [B,H,W,K], aux_logits or None, embeddings finest first);
    labels: int32 [B,H,W], -1 = ignore; key: randomness of the contrastive sampler;
    contrastive_kwargs: keyword arguments of `losses.contrastive_loss_for_batch` (no arrays).
    Metric keys: loss, loss_ce, loss_aux, loss_contrastive, and the contrastive loss's own terms.
    """
    metrics = {}
    loss_ce = cross_entropy(outputs.logits, labels, class_weights)
    loss = loss_ce
    metrics["loss_ce"] = loss_ce
    if outputs.aux_logits is not None and aux_weight > 0:
        loss_aux = cross_entropy(outputs.aux_logits, labels, class_weights)
        loss = loss + aux_weight * loss_aux
        metrics["loss_aux"] = loss_aux
    if contrastive_weight > 0:
        from msc_seg.losses.contrastive import contrastive_loss_for_batch

        con, con_metrics = contrastive_loss_for_batch(
            outputs.embeddings, labels, key, **dict(contrastive_kwargs or {})
        )
        loss = loss + contrastive_weight * con
        metrics.update(con_metrics)
        metrics["loss_contrastive"] = con
    metrics["loss"] = loss
    return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
