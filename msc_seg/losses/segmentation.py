"""Segmentation cross-entropy with an ignore label (PyTorch `CrossEntropyLoss` semantics), on
logits at the labels' resolution or, fused with the bilinear upsampling, at the head's."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msc_seg.data.conventions import IGNORE_LABEL
from msc_seg.models import ordering
from msc_seg.models.layers import interpolate_linear_1d

# Values of full-resolution logits one chunk of `upsampled_cross_entropy` holds ([B,rows,W,K]):
# 8M floats = 32 MiB, against 300 MiB for a whole 2 x 512 x 512 x 150 batch.
CHUNK_VALUES = 1 << 23


def cross_entropy(
    logits: jax.Array, labels: jax.Array, class_weights: Sequence[float] | jax.Array | None = None
) -> jax.Array:
    """Mean CE over non-ignored pixels.

    logits: [B,H,W,K] (any float dtype; computed in float32); labels: int32 [B,H,W], -1 = ignore.
    With class_weights [K], the weighted mean: sum_i w[y_i] * ce_i / sum_i w[y_i] (PyTorch).
    A batch with no valid pixel gives 0 (PyTorch gives NaN) with zero gradients.
    """
    logits = logits.astype(jnp.float32)
    safe, w = _pixel_weights(labels, class_weights)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1e-12)


def upsampled_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: Sequence[float] | None = None,
    *,
    align_corners: bool,
    chunk_values: int = CHUNK_VALUES,
) -> jax.Array:
    """`cross_entropy(resize_bilinear(logits, labels' size, align_corners), labels, weights)`
    without ever holding the full-resolution logits, their softmax or their gradient.

    logits: [B,h,w,K] at the head's resolution (any float dtype; computed in float32);
    labels: int32 [B,H,W], -1 = ignore; class_weights: static, one per class, or None/().
    The height is interpolated first ([B,H,w,K]); then, one chunk of <= `chunk_values` output
    values at a time (a `lax.map`), the width, the log-softmax, the loss and its gradient, which is
    interpolated back at once (a custom VJP: the backward pass is a multiply). Equal to the
    unfused loss up to float rounding (the unfused resize does the width first, as PyTorch).
    For a 2 x 512 x 512 x 150 batch at stride 4 this replaces five 300 MiB buffers with two of
    75 MiB and a chunk (benchmarks/README.md).
    """
    logits = logits.astype(jnp.float32)
    if logits.shape[1:3] == labels.shape[1:3]:
        return cross_entropy(logits, labels, class_weights)
    weights = tuple(float(w) for w in class_weights) if class_weights is not None else ()
    batch, _, _, classes = logits.shape
    rows = max(1, chunk_values // (batch * labels.shape[2] * classes))
    return _upsampled_ce(logits, labels, weights, bool(align_corners), rows)


def _pixel_weights(labels, class_weights):
    """-> (labels with ignored pixels set to class 0, float32 weight per pixel (0 = ignored))."""
    valid = labels != IGNORE_LABEL
    safe = jnp.where(valid, labels, 0)
    w = valid.astype(jnp.float32)
    if class_weights is not None and len(class_weights):
        w = w * jnp.asarray(class_weights, jnp.float32)[safe]
    return safe, w


def _upsampled_ce_and_grad(logits, labels, weights, align_corners, rows):
    """-> (loss, d loss / d logits [B,h,w,K]), the chunked computation described above."""
    batch, _, _, classes = logits.shape
    height, width = labels.shape[1:]
    safe, pixel_w = _pixel_weights(labels, weights)
    denom = jnp.maximum(jnp.sum(pixel_w), 1e-12)
    up_h, back_h = jax.vjp(
        lambda x: interpolate_linear_1d(x, height, 1, align_corners=align_corners), logits
    )
    # ceil(H / rows) chunks of equal size; the padding rows weigh 0 (no loss, no gradient).
    n = -(-height // rows)
    rows = -(-height // n)
    pad = n * rows - height

    def chunked(x, fill):  # [B, H, ...] -> [n, B, rows, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.swapaxes(x.reshape((batch, n, rows) + x.shape[2:]), 0, 1)

    def one_chunk(args):
        x, y, w = args  # [B,rows,w,K], [B,rows,W], [B,rows,W]
        z, back_w = jax.vjp(
            lambda t: interpolate_linear_1d(t, width, 2, align_corners=align_corners), x
        )
        logp = jax.nn.log_softmax(z, axis=-1)
        nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
        dz = (jnp.exp(logp) - jax.nn.one_hot(y, classes, dtype=z.dtype)) * (w / denom)[..., None]
        return jnp.sum(nll * w), back_w(dz)[0]

    def body(grads, chunk):  # lax.map with its output buffer made by us (below)
        i, args = chunk
        loss, grad = one_chunk(args)
        return jax.lax.dynamic_update_index_in_dim(grads, grad, i, 0), loss

    xs = (chunked(up_h, 0.0), chunked(safe, 0), chunked(pixel_w, 0.0))
    # Made once the upsampled logits exist: as lax.map's own output buffer XLA made it at the
    # step's start and held it through the forward pass's end (ordering.zeros_after).
    grads = ordering.zeros_after(xs[0].shape, xs[0].dtype, up_h)
    grads, losses = jax.lax.scan(body, grads, (jnp.arange(n), xs))
    grads = jnp.swapaxes(grads, 0, 1).reshape((batch, n * rows) + grads.shape[3:])
    return jnp.sum(losses) / denom, back_h(grads[:, :height])[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _upsampled_ce(logits, labels, weights, align_corners, rows):
    return _upsampled_ce_and_grad(logits, labels, weights, align_corners, rows)[0]


def _upsampled_ce_fwd(logits, labels, weights, align_corners, rows):
    # The gradient costs little more than the loss (the softmax is there) and is only [B,h,w,K].
    return _upsampled_ce_and_grad(logits, labels, weights, align_corners, rows)


def _upsampled_ce_bwd(weights, align_corners, rows, grad, g):
    return g * grad, None


_upsampled_ce.defvjp(_upsampled_ce_fwd, _upsampled_ce_bwd)
