"""The within-scale InfoNCE term on the upper triangle of its symmetric logit matrix.

Within a scale the anchors are their own contrast set (docs/METHOD.md §7): s = Z Z^T / tau is
symmetric, and so are the positive mask [y_i = y_j, i != j, both valid] and the negative mask
[y_i != y_j, both valid]. `contrastive._info_nce_blocked` treats Z as two sets: it computes every
s_ij once for the loss and spends two more [N,N]x[N,D] matmuls on the gradient (dL/dZ = G Z + G^T Z,
G = dL/ds). Here each block pair (I, J) with I <= J is visited instead, and its tile serves both
rows I (as s_IJ) and rows J (as s_JI = s_IJ^T):

  pass 1: negatives' sums neg_i = sum_k neg_ik exp(s_ik)                  (1/2 of the logits)
  pass 2: per anchor, over its positives: sums of s_ij, 1, log(e_ij + neg_i), 1/(e_ij + neg_i);
          a block pair without a positive pair is skipped (slots are ordered by (image, class),
          so positives sit in few blocks)
  pass 3: H_IJ = G_IJ + G_JI^T, dZ_I += H_IJ Z_J and dZ_J += H_IJ^T Z_I    (1/2 + 2 x 1/2)

so about 2.1 instead of 3 [N,N,D] matmuls per term with its gradient (0.6 instead of 1 without).
Loss and gradient equal `contrastive._info_nce_blocked` with a = b, exclude_self=True, to float
rounding (tests/test_contrastive.py). Like it: float32, one leading group axis, loops to the
largest valid extent over groups, no float matrix larger than [G, block, block] alive, residuals
O(N*D), reverse-mode first-order only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from msc_seg.losses import tiling
from msc_seg.models import ordering

_dslice = jax.lax.dynamic_slice_in_dim
_dupdate = jax.lax.dynamic_update_slice_in_dim


def _add_at(x: jax.Array, start, rows: jax.Array) -> jax.Array:
    """x[:, start:start+len(rows)] += rows (x [G,N,...], rows [G,n,...])."""
    return _dupdate(x, _dslice(x, start, rows.shape[1], 1) + rows, start, 1)


def _within_blocked(z, y, v, temperature, block, with_grad):
    """Per-group loss [G] and, if with_grad, dloss/dz [G,N,D] (else None).

    z: float32 [G,N,D] normalised embeddings, y int32 [G,N], v bool [G,N].
    """
    num_groups, n, dim = z.shape
    bl = tiling.block_length(n, block)
    n_pad = tiling.round_up(n, bl)
    z_p, y_p = tiling.pad_rows(z, n_pad, 0.0), tiling.pad_rows(y, n_pad, -1)
    v_p = tiling.pad_rows(v, n_pad, 0)
    inv_tau = 1.0 / temperature
    inv_m = 1.0 / jnp.maximum(jnp.sum(v, axis=1, dtype=jnp.float32), 1.0)  # [G]
    num_blocks = (tiling.extent(v) + bl - 1) // bl
    # Made once the anchors exist (see contrastive._info_nce_blocked).
    zeros = lambda shape: tiling.varying_like(ordering.zeros_after(shape, jnp.float32, z), z, y, v)
    not_self = ~jnp.eye(bl, dtype=bool)[None]

    def masks(i, j):
        """Positive and negative masks of block pair (i, j): bool [G,bl,bl]."""
        yi, yj = _dslice(y_p, i * bl, bl, 1), _dslice(y_p, j * bl, bl, 1)
        vi, vj = _dslice(v_p, i * bl, bl, 1), _dslice(v_p, j * bl, bl, 1)
        both = vi[:, :, None] & vj[:, None, :]
        same = yi[:, :, None] == yj[:, None, :]
        pos = both & same & ((i != j) | not_self)
        return pos, both & ~same

    def rows(i):
        """The embeddings of block i: [G,bl,D]."""
        return _dslice(z_p, i * bl, bl, 1)

    def logits(i, j):
        """Shifted logits (s_ij - 1/tau: <= 0) and their exp for block pair (i, j)."""
        x = (jnp.einsum("gid,gjd->gij", rows(i), rows(j)) - 1.0) * inv_tau
        return x, jnp.exp(x)

    def upper_pairs(body, init):
        """body(i, j, carry) over the block pairs i <= j < num_blocks (i outer)."""
        row = lambda i, c: jax.lax.fori_loop(i, num_blocks, lambda j, c: body(i, j, c), c)
        return jax.lax.fori_loop(0, num_blocks, row, init)

    # Pass 1: negatives' sums. The diagonal block's column sums are its row sums.
    def negatives(i, j, neg):
        _, e = logits(i, j)
        e = jnp.where(masks(i, j)[1], e, 0.0)
        neg = _add_at(neg, i * bl, jnp.sum(e, axis=2))
        return _add_at(neg, j * bl, jnp.where(i != j, jnp.sum(e, axis=1), 0.0))

    neg = upper_pairs(negatives, zeros((num_groups, n_pad)))

    # Pass 2: per anchor over its positives [G,n_pad,4]: the logits' sum, their count, and the
    # sums of log(den) and 1/den, den = e_ij + neg_i.
    def positive_sums(x, e, pos, neg_s, axis):
        den = jnp.maximum(neg_s + jnp.maximum(e, tiling.TINY), tiling.TINY)
        terms = (x, jnp.ones_like(x), jnp.log(den), 1.0 / den)
        return jnp.stack([jnp.sum(jnp.where(pos, t, 0.0), axis=axis) for t in terms], axis=-1)

    def positives(i, j, stats):
        pos, _ = masks(i, j)

        def add(stats):
            x, e = logits(i, j)
            neg_i = _dslice(neg, i * bl, bl, 1)[:, :, None]
            neg_j = _dslice(neg, j * bl, bl, 1)[:, None, :]
            stats = _add_at(stats, i * bl, positive_sums(x, e, pos, neg_i, 2))
            cols = jnp.where(i != j, positive_sums(x, e, pos, neg_j, 1), 0.0)
            return _add_at(stats, j * bl, cols)

        return jax.lax.cond(jnp.any(pos), add, lambda s: s, stats)

    stats = upper_pairs(positives, zeros((num_groups, n_pad, 4)))
    pos_logit, num_pos, log_den, inv_den = (stats[..., k] for k in range(4))
    inv_p = 1.0 / jnp.maximum(num_pos, 1.0)
    w = v_p.astype(jnp.float32) * inv_m[:, None]
    loss = jnp.sum(w * (log_den - pos_logit) * inv_p, axis=1)
    if not with_grad:
        return loss, None

    # Pass 3: G = dL/ds row by row (coef_i = w_i / (P_i tau)); H_IJ = G_IJ + G_JI^T.
    coef = w * inv_p * inv_tau

    def grad_rows(e, pos, negm, neg_s, inv_den_s, coef_s):
        e_pos = jnp.maximum(e, tiling.TINY)
        den = jnp.maximum(neg_s + e_pos, tiling.TINY)
        g = jnp.where(pos, e_pos / den - 1.0, jnp.where(negm, e * inv_den_s, 0.0))
        return coef_s * g

    def gradient(i, j, dz):
        _, e = logits(i, j)
        pos, negm = masks(i, j)
        row_stats = [_dslice(t, i * bl, bl, 1)[:, :, None] for t in (neg, inv_den, coef)]
        col_stats = [_dslice(t, j * bl, bl, 1)[:, None, :] for t in (neg, inv_den, coef)]
        h = grad_rows(e, pos, negm, *row_stats) + grad_rows(e, pos, negm, *col_stats)
        dz = _add_at(dz, i * bl, jnp.einsum("gij,gjd->gid", h, rows(j)))
        return jax.lax.cond(
            i != j,
            lambda dz: _add_at(dz, j * bl, jnp.einsum("gij,gid->gjd", h, rows(i))),
            lambda dz: dz,
            dz,
        )

    dz = upper_pairs(gradient, zeros((num_groups, n_pad, dim)))
    return loss, dz[:, :n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _within(z, y, v, temperature, block):
    return _within_blocked(z, y, v, temperature, block, False)[0]


def _within_fwd(z, y, v, temperature, block):
    return _within_blocked(z, y, v, temperature, block, True)  # (loss, residual dz)


def _within_bwd(temperature, block, dz, g):
    return g[:, None, None] * dz, None, None


_within.defvjp(_within_fwd, _within_bwd)


def within_scale_info_nce(
    embeddings: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    *,
    temperature: float,
    block_size: int = 512,
) -> jax.Array:
    """The within-scale InfoNCE term per group: `info_nce_loss(z, y, v, z, y, v,
    exclude_self=True)` at about 2/3 of its cost.

    embeddings: float [G,N,D] L2-normalised; labels int32 [G,N]; valid bool [G,N];
    block_size: the side of the square tiles. Returns float32 [G].
    """
    return _within(
        embeddings.astype(jnp.float32),
        labels.astype(jnp.int32),
        valid.astype(bool),
        float(temperature),
        int(block_size),
    )
