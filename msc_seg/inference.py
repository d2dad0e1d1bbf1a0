"""Fixed-shape inference: whole-image logits and resizing them back onto the label grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resize_logits_to_labels(
    logits: jax.Array, image_hw: jax.Array, label_shape: tuple[int, int], label_hw: jax.Array
) -> jax.Array:
    """Maps each image's valid logits region onto its label's valid region (bilinear).

    logits: [B,Hp,Wp,K] predicted on a padded (possibly resized) image whose valid part is
    image_hw[b] = (h, w); labels are padded to label_shape and valid in label_hw[b] = (H0, W0).
    Returns [B,*label_shape,K]: pixel (y, x) of the label samples the logits at the half-pixel
    position of a (h/H0, w/W0) scaling (align_corners=False). Values outside the valid label region
    are meaningless and must be masked by the label's ignore padding. Fixed shapes: one compile.
    """

    def one(lg, ihw, lhw):
        scale = lhw.astype(jnp.float32) / ihw.astype(jnp.float32)
        return jax.image.scale_and_translate(
            lg,
            (*label_shape, lg.shape[-1]),
            (0, 1),
            scale,
            jnp.zeros(2, jnp.float32),
            method="linear",
            antialias=False,
        )

    return jax.vmap(one)(logits.astype(jnp.float32), image_hw, label_hw)
