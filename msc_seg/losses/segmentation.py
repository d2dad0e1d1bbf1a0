"""Segmentation cross-entropy with an ignore label (PyTorch `CrossEntropyLoss` semantics), on
logits at the labels' resolution or, fused with the bilinear upsampling, at the head's."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msc_seg.data.conventions import IGNORE_LABEL
from msc_seg.models import ordering
from msc_seg.models.layers import interpolate_linear_1d, linear_taps

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
    One chunk of output rows at a time (a `lax.scan`): the chunk's rows of the height
    interpolation (two row gathers of the head's logits), the width, the log-softmax, the loss and
    its gradient, which is interpolated back at once (a custom VJP: the backward pass is a
    multiply) and added into a [B,h,w,K] accumulator at the chunk's source rows. Equal to the
    unfused loss up to float rounding (the unfused resize does the width first, as PyTorch).
    For a 2 x 512 x 512 x 150 batch at stride 4 no buffer larger than a chunk (<= `chunk_values`
    values) and the [B,h,w,K] gradient exists: no five 300 MiB buffers as unfused, and no 75 MiB
    height-interpolated logits and gradient as before (benchmarks/README.md).
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
    batch, in_h, _, classes = logits.shape
    height, width = labels.shape[1:]
    safe, pixel_w = _pixel_weights(labels, weights)
    denom = jnp.maximum(jnp.sum(pixel_w), 1e-12)
    # ceil(H / rows) chunks of equal size; the padding rows weigh 0 (no loss, no gradient).
    n = -(-height // rows)
    rows = -(-height // n)
    pad = n * rows - height
    # Each output row's two source rows and weights (PyTorch's), padded with row 0 at weight 0.
    taps = [np.pad(t, (0, pad)).reshape(n, rows) for t in linear_taps(in_h, height, align_corners)]

    def chunked(x, fill):  # [B, H, ...] -> [n, B, rows, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.swapaxes(x.reshape((batch, n, rows) + x.shape[2:]), 0, 1)

    def along_rows(v):  # [rows] -> [1, rows, 1, 1]
        return v[None, :, None, None]

    def body(grads, chunk):
        i0, i1, w0, w1, y, w = chunk  # [rows] x 4, [B,rows,W] x 2
        # This chunk's rows of the height interpolation, from the head's logits: no [B,H,w,K]
        # buffer (75 MiB for 2 x 512 x 512 x 150 at stride 4) and no gradient of that size.
        x = jnp.take(logits, i0, axis=1) * along_rows(w0)
        x = x + jnp.take(logits, i1, axis=1) * along_rows(w1)
        z, back_w = jax.vjp(
            lambda t: interpolate_linear_1d(t, width, 2, align_corners=align_corners), x
        )
        logp = jax.nn.log_softmax(z, axis=-1)
        nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
        dz = (jnp.exp(logp) - jax.nn.one_hot(y, classes, dtype=z.dtype)) * (w / denom)[..., None]
        dx = back_w(dz)[0]
        grads = grads.at[:, i0].add(dx * along_rows(w0), indices_are_sorted=True)
        grads = grads.at[:, i1].add(dx * along_rows(w1), indices_are_sorted=True)
        return grads, jnp.sum(nll * w)

    xs = (*(jnp.asarray(t) for t in taps), chunked(safe, 0), chunked(pixel_w, 0.0))
    # Made once the logits exist: as the loop's own output buffer XLA made it at the step's
    # start and held it through the forward pass's end (ordering.zeros_after).
    grads = ordering.zeros_after(logits.shape, logits.dtype, logits)
    grads, losses = jax.lax.scan(body, grads, xs)
    return jnp.sum(losses) / denom, grads


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _upsampled_ce(logits, labels, weights, align_corners, rows):
    return _upsampled_ce_and_grad(logits, labels, weights, align_corners, rows)[0]


def _upsampled_ce_fwd(logits, labels, weights, align_corners, rows):
    # The gradient costs little more than the loss (the softmax is there) and is only [B,h,w,K].
    return _upsampled_ce_and_grad(logits, labels, weights, align_corners, rows)


def _upsampled_ce_bwd(weights, align_corners, rows, grad, g):
    return g * grad, None


_upsampled_ce.defvjp(_upsampled_ce_fwd, _upsampled_ce_bwd)
