"""The training objective: CE(final) + aux_weight * CE(aux) + contrastive_weight * contrastive.

`make_objective` returns one function of (model outputs, labels, key); the train step calls it and
asks it whether the model must return embeddings (`needs_embeddings`), so "contrastive on" is
decided in exactly one place.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from msc_seg.errors import ArgumentError
from msc_seg.losses.segmentation import upsampled_cross_entropy
from msc_seg.models.outputs import SegOutputs

# (embeddings finest first, labels int32 [B,H,W], key) -> (scalar loss, metrics), e.g.
# functools.partial(contrastive_loss_for_batch, num_classes=K, options=ContrastiveOptions(...)).
ContrastiveFn = Callable[[Sequence[jax.Array], jax.Array, jax.Array], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """(outputs: SegOutputs, labels int32 [B,H,W] (-1 = ignore), key, align_corners) -> (loss,
    metrics). The logits may be at the labels' size or at their head's (`upsample_logits=False`,
    then `align_corners` is the model's: the CE upsamples them in chunks).

    Metric keys: loss, loss_ce, loss_aux (when the model has an aux head and aux_weight > 0),
    loss_contrastive and the contrastive loss's own terms (when it is on).
    """

    aux_weight: float = 0.0
    class_weights: tuple[float, ...] = ()
    contrastive: ContrastiveFn | None = None
    contrastive_weight: float = 0.0

    @property
    def needs_embeddings(self) -> bool:
        """Whether the model must run its projectors (the contrastive term is on)."""
        return self.contrastive is not None and self.contrastive_weight > 0

    def __call__(
        self,
        outputs: SegOutputs,
        labels: jax.Array,
        key: jax.Array,
        *,
        align_corners: bool | None = None,
    ):
        metrics = {}
        ce = functools.partial(self._cross_entropy, labels=labels, align_corners=align_corners)
        loss_ce = ce(outputs.logits)
        loss = loss_ce
        metrics["loss_ce"] = loss_ce
        if outputs.aux_logits is not None and self.aux_weight > 0:
            loss_aux = ce(outputs.aux_logits)
            loss = loss + self.aux_weight * loss_aux
            metrics["loss_aux"] = loss_aux
        if self.needs_embeddings:
            con, con_metrics = self.contrastive(outputs.embeddings, labels, key)
            loss = loss + self.contrastive_weight * con
            metrics.update(con_metrics)
            metrics["loss_contrastive"] = con
        metrics["loss"] = loss
        return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    def _cross_entropy(self, logits, labels, align_corners):
        """CE of logits at the labels' size, or at a head's size (then upsampled in chunks)."""
        if logits.shape[1:3] != labels.shape[1:3] and align_corners is None:
            raise ValueError(
                f"logits of size {logits.shape[1:3]} for labels of size {labels.shape[1:3]}: "
                "pass the model's align_corners so that the objective can upsample them"
            )
        return upsampled_cross_entropy(
            logits, labels, self.class_weights, align_corners=bool(align_corners)
        )


def make_objective(
    *,
    aux_weight: float = 0.0,
    class_weights: Sequence[float] = (),
    contrastive: ContrastiveFn | None = None,
    contrastive_weight: float = 0.0,
    num_classes: int | None = None,
) -> Objective:
    """The objective, its arguments checked (ArgumentError naming the argument).

    class_weights: () = unweighted CE, else one weight per class (checked against num_classes
    when given). contrastive_weight 0 (or contrastive None) turns the contrastive term off.
    """
    if aux_weight < 0:
        raise ArgumentError("aux_weight", aux_weight, "must be >= 0 (0 turns the aux CE off)")
    if contrastive_weight < 0:
        raise ArgumentError(
            "contrastive_weight", contrastive_weight, "must be >= 0 (0 turns it off)"
        )
    class_weights = tuple(float(w) for w in class_weights)
    if class_weights and num_classes is not None and len(class_weights) != num_classes:
        raise ArgumentError(
            "class_weights",
            class_weights,
            f"needs one weight per class ({num_classes}) or () for an unweighted CE",
        )
    return Objective(
        aux_weight=float(aux_weight),
        class_weights=class_weights,
        contrastive=contrastive,
        contrastive_weight=float(contrastive_weight),
    )
