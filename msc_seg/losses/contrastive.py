"""Multi-scale (MS) and cross-scale (CS) supervised contrastive losses of Pissas et al.

Mirrors the reference `DenseContrastiveLossV2_ms.forward` with `DenseContrastiveLossV2`
(`contrastive_loss`, `get_masks2`, `get_loss`) and the cross-scale `InfoNce_loss`
(docs/METHOD.md §7-§9). For anchors i and contrast samples j (L2-normalised, eps 1e-12):

    s_ij = z_i . z_j / tau,   neg_i = sum_k neg_ik exp(s_ik)
    l_i  = -1/P_i sum_j pos_ij (s_ij - log(exp(s_ij) + neg_i)),   L = mean over all anchors of l_i

Within a scale pos_ij = [y_i = y_j, i != j]; across scales (finest anchors against a coarse
scale's samples) pos_ij = [y_i = y_j]. The same samples serve both. Deviations, on purpose:
- An anchor without any positive gives 0 (the reference's within-scale loss gives NaN); an empty
  anchor set gives 0 with zero gradients (the reference crashes).
- Logits are shifted by the constant 1/tau (their upper bound), which is mathematically equal and
  cannot overflow float32 whatever tau.

Cost: the loss is computed in row blocks of `block_size` anchors against column tiles of
`column_block_size` samples, only over the valid prefix of each anchor set (a dynamic trip count),
so the work follows the number of sampled anchors, not the capacity. A custom VJP computes the
gradient in the same blocked pass as the loss (three matmuls per term, no recomputation) and keeps
only O(N*D) residuals: no float matrix larger than [block, N] per group is alive. The
within-scale terms, whose logit matrix is symmetric, run in losses/within_scale.py instead: square
`column_block_size` tiles over its upper triangle, each tile serving both its rows and its columns
(~2.1 instead of 3 [N,N,D] matmuls with the gradient: the whole MS + CS loss of a Swin-T step,
2.10 -> 1.43 s on 2 CPU cores). Consequences:
- reverse-mode, first-order differentiation only (no jvp, no Hessians);
- the kernel takes a leading group axis itself and loops to the largest valid extent over groups:
  `contrastive_loss_for_batch` uses it that way. Under `jax.vmap` of the one-group functions the
  results are the same but the loops run with batched predicates (slower);
- on GPU/TPU, larger blocks than the CPU-tuned defaults (e.g. 1024 x 4096) cut loop overhead.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msc_seg.errors import ArgumentError
from msc_seg.losses import tiling
from msc_seg.losses.sampling import (
    AnchorSet,
    sample_batch_anchors,
    sample_group_anchors,
    split_groups,
)
from msc_seg.losses.within_scale import within_scale_info_nce
from msc_seg.models import ordering

_NORM_EPS = 1e-12  # torch.nn.functional.normalize default


@dataclasses.dataclass(frozen=True)
class ContrastiveOptions:
    """Every setting of the MS + CS loss but the class count, checked once on construction.

    Grouping: the batch is split into groups of `images_per_group` images (the reference's
    per-GPU batches); gather_all_groups contrasts all groups' anchors together.
    Loss: InfoNCE `temperature`; `scale_weights` (one per embedding scale, finest first) weigh the
    within-scale terms; with `cross_scale` the finest anchors are also contrasted against the
    coarsest scale (`w_high_low`) and the second coarsest (`w_high_mid`); `detach_coarse` stops the
    gradient into the coarse side of those terms.
    Sampling (per group and scale): classes with fewer than `min_views` pixels are skipped, at most
    `max_views` pixels per class and image, at most `max_total` anchors in all.
    Cost: `block_size` anchors x `column_block_size` samples per tile of the cross-scale kernel;
    the within-scale kernel uses square `column_block_size` tiles.
    `msc_seg.errors.ArgumentError` names the field that cannot work.
    """

    images_per_group: int = 4
    gather_all_groups: bool = False
    temperature: float = 0.1
    scale_weights: tuple[float, ...] = (1.0, 0.7, 0.4, 0.1)
    cross_scale: bool = True
    w_high_low: float = 1.0
    w_high_mid: float = 1.0
    detach_coarse: bool = False
    min_views: int = 5
    max_views: int = 2500
    max_total: int = 10000
    block_size: int = 256
    column_block_size: int = 512

    def __post_init__(self):
        object.__setattr__(self, "scale_weights", tuple(float(w) for w in self.scale_weights))
        if not self.temperature > 0:
            raise ArgumentError("temperature", self.temperature, "must be > 0")
        if not self.scale_weights:
            raise ArgumentError(
                "scale_weights", self.scale_weights, "needs one weight per scale, finest first"
            )
        for name in ("images_per_group", "min_views", "max_views", "max_total"):
            if int(getattr(self, name)) < 1:
                raise ArgumentError(name, getattr(self, name), "must be >= 1")
        for name in ("block_size", "column_block_size"):
            if int(getattr(self, name)) < 1:
                raise ArgumentError(name, getattr(self, name), "must be a positive tile size")

    def loss_settings(self) -> dict:
        """The keyword arguments of `multiscale_contrastive_loss` (the loss without sampling)."""
        return dict(
            temperature=self.temperature,
            scale_weights=self.scale_weights,
            cross_scale=self.cross_scale,
            w_high_low=self.w_high_low,
            w_high_mid=self.w_high_mid,
            detach_coarse=self.detach_coarse,
            block_size=self.block_size,
            column_block_size=self.column_block_size,
        )

    def sampling_settings(self) -> dict:
        """The keyword arguments of the anchor samplers."""
        return dict(min_views=self.min_views, max_views=self.max_views, max_total=self.max_total)


def _info_nce_blocked(
    a, ya, va, b, yb, vb, temperature, exclude_self, block_rows, block_cols, with_grad, grad_b
):
    """Per-group loss [G] and, if with_grad, dloss/da [G,Na,D] and dloss/db [G,Nb,D].

    a: float32 [G,Na,D] normalised anchors, ya int32 [G,Na], va bool [G,Na];
    b, yb, vb: the contrast set, same layout with Nb slots.
    """
    num_groups, na, dim = a.shape
    nb = b.shape[1]
    br, bc = tiling.block_length(na, block_rows), tiling.block_length(nb, block_cols)
    na_pad, nb_pad = tiling.round_up(na, br), tiling.round_up(nb, bc)
    pad = tiling.pad_rows
    a_p, ya_p, va_p = pad(a, na_pad, 0.0), pad(ya, na_pad, -1), pad(va, na_pad, 0)
    b_p, yb_p, vb_p = pad(b, nb_pad, 0.0), pad(yb, nb_pad, -1), pad(vb, nb_pad, 0)
    inv_tau = 1.0 / temperature
    num_anchors = jnp.sum(va, axis=1, dtype=jnp.float32)
    inv_m = 1.0 / jnp.maximum(num_anchors, 1.0)  # [G]
    num_row_blocks = (tiling.extent(va) + br - 1) // br
    num_col_tiles = (tiling.extent(vb) + bc - 1) // bc
    dslice = jax.lax.dynamic_slice_in_dim
    inputs = (a, ya, va, b, yb, vb)
    # Made once the anchors exist: left free, XLA made these loop buffers at the step's start
    # and held them through the forward pass's end (ordering.zeros_after).
    zeros = lambda shape: tiling.varying_like(ordering.zeros_after(shape, jnp.float32, a), *inputs)
    dupdate = jax.lax.dynamic_update_slice_in_dim

    def masks(ya_r, row0, t):
        yb_t, vb_t = dslice(yb_p, t * bc, bc, 1), dslice(vb_p, t * bc, bc, 1)
        same = ya_r[:, :, None] == yb_t[:, None, :]
        col_ok = vb_t[:, None, :]
        pos = same & col_ok
        if exclude_self:
            rows = row0 + jnp.arange(br, dtype=jnp.int32)
            cols = t * bc + jnp.arange(bc, dtype=jnp.int32)
            pos = pos & (rows[:, None] != cols[None, :])[None]
        return pos, (~same) & col_ok

    def row_block(r, carry):
        buf, loss, da, db = carry
        row0 = r * br
        a_r, ya_r = dslice(a_p, row0, br, 1), dslice(ya_p, row0, br, 1)
        w_r = dslice(va_p, row0, br, 1).astype(jnp.float32) * inv_m[:, None]

        # Pass 1: logits (shifted by their bound 1/tau), negatives' sum, positives' logit sum.
        # The buffer keeps exp(logit) signed by role: -e for a positive, +e for a negative, 0 for
        # neither (self, invalid), so that passes 2 and 3 need no label masks.
        def logits_pass(t, c):
            buf, neg, pos_logit, num_pos = c
            b_t = dslice(b_p, t * bc, bc, 1)
            x = (jnp.einsum("gid,gjd->gij", a_r, b_t) - 1.0) * inv_tau
            e = jnp.exp(x)
            pos, negm = masks(ya_r, row0, t)
            neg = neg + jnp.sum(jnp.where(negm, e, 0.0), axis=2)
            pos_logit = pos_logit + jnp.sum(jnp.where(pos, x, 0.0), axis=2)
            num_pos = num_pos + jnp.sum(pos, axis=2, dtype=jnp.float32)
            code = jnp.where(pos, -jnp.maximum(e, tiling.TINY), jnp.where(negm, e, 0.0))
            return dupdate(buf, code, t * bc, 2), neg, pos_logit, num_pos

        row_zeros = zeros((num_groups, br))
        buf, neg, pos_logit, num_pos = jax.lax.fori_loop(
            0, num_col_tiles, logits_pass, (buf, row_zeros, row_zeros, row_zeros)
        )

        # Pass 2: the positive-specific denominators log(exp(s_ij) + neg_i).
        def denominator_pass(t, c):
            log_den, inv_den = c
            code = dslice(buf, t * bc, bc, 2)
            pos = code < 0
            den = jnp.maximum(neg[:, :, None] - code, tiling.TINY)
            log_den = log_den + jnp.sum(jnp.where(pos, jnp.log(den), 0.0), axis=2)
            inv_den = inv_den + jnp.sum(jnp.where(pos, 1.0 / den, 0.0), axis=2)
            return log_den, inv_den

        log_den, inv_den = jax.lax.fori_loop(
            0, num_col_tiles, denominator_pass, (row_zeros, row_zeros)
        )
        inv_p = 1.0 / jnp.maximum(num_pos, 1.0)
        loss = loss + jnp.sum(w_r * (log_den - pos_logit) * inv_p, axis=1)
        if not with_grad:
            return buf, loss, da, db

        # Pass 3: dL/ds, then the two gradient matmuls.
        coef = (w_r * inv_p * inv_tau)[:, :, None]

        def gradient_pass(t, c):
            da_r, db = c
            code = dslice(buf, t * bc, bc, 2)
            pos = code < 0
            den = jnp.maximum(neg[:, :, None] - code, tiling.TINY)
            g = coef * jnp.where(pos, -code / den - 1.0, code * inv_den[:, :, None])
            b_t = dslice(b_p, t * bc, bc, 1)
            da_r = da_r + jnp.einsum("gij,gjd->gid", g, b_t)
            if grad_b:
                db_t = dslice(db, t * bc, bc, 1) + jnp.einsum("gij,gid->gjd", g, a_r)
                db = dupdate(db, db_t, t * bc, 1)
            return da_r, db

        da_r = zeros((num_groups, br, dim))
        da_r, db = jax.lax.fori_loop(0, num_col_tiles, gradient_pass, (da_r, db))
        return buf, loss, dupdate(da, da_r, row0, 1), db

    buf = zeros((num_groups, br, nb_pad))
    loss = zeros((num_groups,))
    da = zeros((num_groups, na_pad, dim)) if with_grad else None
    db = zeros((num_groups, nb_pad, dim)) if with_grad and grad_b else None
    _, loss, da, db = jax.lax.fori_loop(0, num_row_blocks, row_block, (buf, loss, da, db))
    if not with_grad:
        return loss, None, None
    return loss, da[:, :na], None if db is None else db[:, :nb]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _info_nce(a, ya, va, b, yb, vb, temperature, exclude_self, block_rows, block_cols, grad_b):
    loss, _, _ = _info_nce_blocked(
        a, ya, va, b, yb, vb, temperature, exclude_self, block_rows, block_cols, False, grad_b
    )
    return loss


def _info_nce_fwd(a, ya, va, b, yb, vb, temperature, exclude_self, block_rows, block_cols, grad_b):
    loss, da, db = _info_nce_blocked(
        a, ya, va, b, yb, vb, temperature, exclude_self, block_rows, block_cols, True, grad_b
    )
    return loss, (da, db)


def _info_nce_bwd(temperature, exclude_self, block_rows, block_cols, grad_b, residuals, g):
    da, db = residuals
    scale = g[:, None, None]
    return (scale * da, None, None, None if db is None else scale * db, None, None)


_info_nce.defvjp(_info_nce_fwd, _info_nce_bwd)


def info_nce_loss(
    anchors: jax.Array,
    anchor_labels: jax.Array,
    anchor_valid: jax.Array,
    contrast: jax.Array,
    contrast_labels: jax.Array,
    contrast_valid: jax.Array,
    *,
    temperature: float,
    exclude_self: bool,
    stop_contrast_gradient: bool = False,
    block_size: int = 256,
    column_block_size: int = 512,
) -> jax.Array:
    """The reference InfoNCE variant, per group, row-blocked, float32.

    anchors: float [G,Na,D] L2-normalised; anchor_labels int32 [G,Na]; anchor_valid bool [G,Na];
    contrast, contrast_labels, contrast_valid: [G,Nb,D], [G,Nb], [G,Nb].
    exclude_self: within-scale form (pass the same arrays twice; the diagonal is no positive);
    `within_scale_info_nce` computes that form at ~2/3 of the cost (the MS terms use it).
    Returns float32 [G]: per group, the mean over valid anchors of l_i (0 without valid anchors).
    """
    return _info_nce(
        anchors.astype(jnp.float32),
        anchor_labels.astype(jnp.int32),
        anchor_valid.astype(bool),
        contrast.astype(jnp.float32),
        contrast_labels.astype(jnp.int32),
        contrast_valid.astype(bool),
        float(temperature),
        bool(exclude_self),
        int(block_size),
        int(column_block_size),
        not stop_contrast_gradient,
    )


def _gather_normalised(features: jax.Array, anchors: AnchorSet) -> jax.Array:
    """features [G,b,h,w,D] (any float dtype), anchor fields [G,N] -> float32 [G,N,D], unit rows."""
    groups, b, h, w, dim = features.shape
    # A gather batched over groups (not one over the flattened batch) lets XLA keep groups on
    # the devices that hold them when the batch is sharded.
    take = lambda f, image, pixel: f.at[image, pixel].get(mode="promise_in_bounds")
    vectors = jax.vmap(take)(features.reshape(groups, b, h * w, dim), anchors.image, anchors.pixel)
    vectors = vectors.astype(jnp.float32)
    # torch F.normalize: x / max(||x||, eps); the max inside the sqrt keeps the gradient finite.
    norm = jnp.sqrt(jnp.maximum(jnp.sum(vectors * vectors, axis=-1, keepdims=True), _NORM_EPS**2))
    return vectors / norm


def _check_loss_args(num_scales: int, scale_weights: Sequence[float], temperature: float) -> None:
    if num_scales < 1:
        raise ValueError("contrastive loss: no embeddings given (the model returned none).")
    if len(scale_weights) != num_scales:
        raise ArgumentError(
            "scale_weights",
            tuple(scale_weights),
            f"has {len(scale_weights)} entries but the model gives {num_scales} embedding scales; "
            "give one weight per scale, finest first",
        )
    if not temperature > 0:
        raise ArgumentError("temperature", temperature, "must be > 0")


def _grouped_multiscale_loss(features, anchors, options: ContrastiveOptions):
    """features: tuple of [G,b,h_s,w_s,D]; anchors: tuple of AnchorSet with fields [G,N].

    Returns (total [G], terms dict of [G] arrays)."""
    num_scales = len(features)
    scale_weights = options.scale_weights
    _check_loss_args(num_scales, scale_weights, options.temperature)
    kw = dict(
        temperature=options.temperature,
        block_size=options.block_size,
        column_block_size=options.column_block_size,
    )
    detach_coarse = options.detach_coarse
    vectors = [_gather_normalised(f, a) for f, a in zip(features, anchors, strict=True)]
    terms = {}
    total = 0.0
    for s, (z, anc) in enumerate(zip(vectors, anchors, strict=True)):
        # = info_nce_loss(z, ..., z, ..., exclude_self=True) at ~2/3 of its cost (symmetric s).
        term = within_scale_info_nce(
            z,
            anc.label,
            anc.valid,
            temperature=options.temperature,
            block_size=options.column_block_size,
        )
        terms[f"loss_ms/s{s}"] = term
        total = total + scale_weights[s] * term
    if options.cross_scale and num_scales > 1:
        pairs = [("high_low", num_scales - 1, options.w_high_low)]
        if num_scales > 2:
            pairs.append(("high_mid", num_scales - 2, options.w_high_mid))
        fine = anchors[0]
        for name, s, weight in pairs:
            coarse = vectors[s]
            if detach_coarse:
                coarse = jax.lax.stop_gradient(coarse)
            term = info_nce_loss(
                vectors[0],
                fine.label,
                fine.valid,
                coarse,
                anchors[s].label,
                anchors[s].valid,
                exclude_self=False,
                stop_contrast_gradient=detach_coarse,
                **kw,
            )
            terms[f"loss_cs/{name}"] = term
            total = total + weight * term
    return total, terms


def _anchor_metrics(anchors: Sequence[AnchorSet]) -> dict[str, jax.Array]:
    """Per-scale anchor statistics, averaged over any leading group dimension."""
    metrics = {}
    for s, anc in enumerate(anchors):
        metrics[f"num_anchors/s{s}"] = jnp.mean(jnp.sum(anc.valid, axis=-1, dtype=jnp.float32))
        metrics[f"views_per_class/s{s}"] = jnp.mean(anc.views.astype(jnp.float32))
        metrics[f"num_pairs/s{s}"] = jnp.mean(anc.num_pairs.astype(jnp.float32))
    return metrics


def _add_group_dim(tree):
    return jax.tree.map(lambda x: x[None], tree)


def multiscale_contrastive_loss(
    features: Sequence[jax.Array],
    anchors: Sequence[AnchorSet],
    *,
    temperature: float = 0.1,
    scale_weights: Sequence[float] = (1.0, 0.7, 0.4, 0.1),
    cross_scale: bool = True,
    w_high_low: float = 1.0,
    w_high_mid: float = 1.0,
    detach_coarse: bool = False,
    block_size: int = 256,
    column_block_size: int = 512,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MS + CS contrastive loss of one group for given anchors (`DenseContrastiveLossV2_ms`).

    features: tuple of [b,h_s,w_s,D] (one group, finest first, any float dtype: the loss runs in
    float32); anchors: tuple of AnchorSet (fields [N]) per scale, e.g. from `sample_group_anchors`
    or the reference's samples via `pack_anchors`.
    Loss = sum_s scale_weights[s] * L_s + w_high_low * L(0 -> S-1) + w_high_mid * L(0 -> S-2)
    (the cross-scale terms need S >= 2 and S >= 3). detach_coarse stops the gradient into the coarse
    samples of the cross-scale terms (reference `detach_deepest`).
    Returns (loss, metrics): `loss_ms/s{i}`, `loss_cs/high_low`, `loss_cs/high_mid` (unweighted),
    `loss_contrastive` (the weighted total), `num_anchors/s{i}`, `views_per_class/s{i}`,
    `num_pairs/s{i}`.
    """
    options = ContrastiveOptions(
        temperature=temperature,
        scale_weights=tuple(scale_weights),
        cross_scale=cross_scale,
        w_high_low=w_high_low,
        w_high_mid=w_high_mid,
        detach_coarse=detach_coarse,
        block_size=block_size,
        column_block_size=column_block_size,
    )
    total, terms = _grouped_multiscale_loss(
        _add_group_dim(tuple(features)), _add_group_dim(tuple(anchors)), options
    )
    metrics = {k: v[0] for k, v in terms.items()}
    metrics["loss_contrastive"] = total[0]
    metrics.update(_anchor_metrics(anchors))
    return total[0], metrics


def _strides(embeddings: Sequence[jax.Array], labels: jax.Array) -> tuple[int, ...]:
    height, width = labels.shape[-2:]
    strides = []
    for s, emb in enumerate(embeddings):
        h, w = emb.shape[-3:-1]
        stride = height // h if h else 0
        if stride < 1 or h * stride != height or w * stride != width:
            raise ValueError(
                f"contrastive loss: embedding scale {s} is {h}x{w} but the labels are "
                f"{height}x{width}, not an integer multiple; make the input size a multiple of the "
                f"model's largest stride (32 for the 4-scale models)."
            )
        strides.append(stride)
    return tuple(strides)


def contrastive_loss_for_group(
    embeddings: Sequence[jax.Array],
    labels: jax.Array,
    key: jax.Array,
    *,
    num_classes: int,
    options: ContrastiveOptions = ContrastiveOptions(),
    group_index=0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sample + MS/CS loss of one group: what one reference GPU computes.

    embeddings: tuple of [b,h_s,w_s,D], finest first; labels int32 [b,H,W] (-1 ignore); key: the
    step's key; group_index: the group's global index (e.g. `lax.axis_index` under pmap or
    shard_map), so that the samples match `contrastive_loss_for_batch`. `options.images_per_group`
    and `gather_all_groups` are not used (this is one group).
    """
    anchors = sample_group_anchors(
        labels,
        key,
        _strides(embeddings, labels),
        group_index=group_index,
        num_classes=num_classes,
        **options.sampling_settings(),
    )
    return multiscale_contrastive_loss(embeddings, anchors, **options.loss_settings())


def _merge_groups(anchors: AnchorSet, images_per_group: int) -> AnchorSet:
    """[G,N] anchor sets -> one [1,G*N] set over all G*b images, valid slots first."""
    groups, capacity = anchors.valid.shape
    offset = (jnp.arange(groups, dtype=jnp.int32) * images_per_group)[:, None]
    flat = lambda x: x.reshape(1, groups * capacity)
    valid = flat(anchors.valid)
    order = jnp.argsort(~valid, axis=1, stable=True)  # compacts the valid slots into a prefix
    take = lambda x: jnp.take_along_axis(flat(x), order, axis=1)
    return AnchorSet(
        pixel=take(anchors.pixel),
        image=take(anchors.image + offset),
        label=take(anchors.label),
        valid=take(anchors.valid),
        num_pairs=jnp.sum(anchors.num_pairs)[None],
        views=jnp.max(anchors.views)[None],
    )


def contrastive_loss_for_batch(
    embeddings: Sequence[jax.Array],
    labels: jax.Array,
    key: jax.Array,
    *,
    num_classes: int,
    options: ContrastiveOptions = ContrastiveOptions(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MS + CS contrastive loss of a global batch, per group of `options.images_per_group` images.

    embeddings: tuple of [B,h_s,w_s,D] (any float dtype; computed in float32), finest first;
    labels: int32 [B,H,W] at input resolution, -1 = ignore; the stride of scale s is H // h_s.
    The batch is split into G = B // images_per_group groups (the reference's per-GPU batches);
    group g at scale s is sampled with `anchor_key(key, g, s)`; each group is contrasted on its own
    and the result is the mean over groups, whatever the device count. gather_all_groups=True
    samples per group the same way, then contrasts all groups' anchors together (negatives from
    every device). Returns (loss, metrics) as `multiscale_contrastive_loss`, metrics averaged over
    groups (before the objective's overall contrastive weight).
    """
    embeddings = tuple(embeddings)
    strides = _strides(embeddings, labels)
    images_per_group = options.images_per_group
    anchors = sample_batch_anchors(
        labels,
        key,
        strides,
        images_per_group=images_per_group,
        num_classes=num_classes,
        **options.sampling_settings(),
    )
    if options.gather_all_groups:
        features = tuple(e[None] for e in embeddings)
        contrast_anchors = tuple(_merge_groups(a, images_per_group) for a in anchors)
    else:
        features = tuple(split_groups(e, images_per_group, "embedding batch") for e in embeddings)
        contrast_anchors = anchors
    total, terms = _grouped_multiscale_loss(features, contrast_anchors, options)
    loss = jnp.mean(total)
    metrics = {k: jnp.mean(v) for k, v in terms.items()}
    metrics["loss_contrastive"] = loss
    metrics.update(_anchor_metrics(anchors))
    return loss, metrics
