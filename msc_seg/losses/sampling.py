"""Fixed-shape, class-balanced anchor sampling for the contrastive losses.

Mirrors the reference `DenseContrastiveLossV2.sample_anchors_fast` / `_select_views_per_class`
(docs/METHOD.md §6) and `get_dist_and_classes` (label downsampling, §5) with static
shapes: one compile per input shape, no host round-trip, no boolean indexing.

Deviations from the reference, on purpose:
- A batch where no (image, class) pair survives gives an empty anchor set (every slot invalid)
  instead of the reference's crash on `torch.min` of an empty tensor.
- The reference drops the last class index (`cnt[:, :-1]`), which is the ignore class for most
  datasets but a real class when a dataset has none (CaDIS exp1 "Instrument"). Here ignore is -1
  and every class in [0, num_classes) can be kept.
- Label values outside [0, num_classes) are treated as ignore (a jitted function cannot raise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from msc_seg.data.conventions import IGNORE_LABEL


class AnchorSet(NamedTuple):
    """One group's fixed-capacity anchors at one scale (fields may carry leading batch dims).

    Slot i belongs to kept pair i // views and is its view i % views; the valid slots are the
    prefix [0, num_pairs * views) and pairs are ordered by (image, class), like the reference.
    """

    pixel: jax.Array  # int32 [N] flat index y * w + x in that scale's map
    image: jax.Array  # int32 [N] image index within the group
    label: jax.Array  # int32 [N] class of the slot (-1 where invalid)
    valid: jax.Array  # bool [N]
    num_pairs: jax.Array  # int32 [] kept (image, class) pairs T
    views: jax.Array  # int32 [] views per pair V


def downsample_labels(labels: jax.Array, stride: int) -> jax.Array:
    """Nearest-neighbour label downsampling exactly as the reference: `labels[:, ::s, ::s]`.

    labels: [b,H,W] with H and W multiples of `stride` -> [b,H/stride,W/stride].
    (PyTorch legacy 'nearest' picks source index floor(dst * s), the top-left pixel of each block;
    `jax.image.resize` would pick another pixel.)
    """
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"downsample_labels: stride must be a positive integer, got {stride}.")
    height, width = labels.shape[-2:]
    if height % stride or width % stride:
        raise ValueError(
            f"downsample_labels: the label map is {height}x{width}, not a multiple of the feature "
            f"stride {stride}; crop or pad the input (dataset crop size, eval padding) to a "
            f"multiple of the model's largest stride (32 for the 4-scale models)."
        )
    return labels[..., ::stride, ::stride]


def anchor_key(key: jax.Array, group_index, scale: int) -> jax.Array:
    """The sampler key of one group at one scale: fold_in(fold_in(key, group_index), scale).

    Depends only on the global group index, never on the device that runs the group.
    """
    return jax.random.fold_in(jax.random.fold_in(key, group_index), scale)


def _check_sampler_args(num_classes: int, min_views: int, max_views: int, max_total: int) -> None:
    if num_classes < 1:
        raise ValueError(f"sample_anchors: num_classes must be >= 1, got {num_classes}.")
    if min_views < 1:
        raise ValueError(
            f"loss.contrastive.min_views_per_class must be >= 1, got {min_views} (the reference "
            f"uses 5)."
        )
    if max_views < 1:
        raise ValueError(
            f"loss.contrastive.max_views_per_class must be >= 1, got {max_views} (the reference "
            f"uses 2500; 1 means no cap)."
        )
    if max_total < 1:
        raise ValueError(
            f"loss.contrastive.max_features_total must be >= 1, got {max_total} (the reference "
            f"uses 10000)."
        )


def sample_anchors(
    labels: jax.Array,
    key: jax.Array,
    *,
    num_classes: int,
    min_views: int,
    max_views: int,
    max_total: int,
) -> AnchorSet:
    """Class-balanced anchors of one group at one scale, with a fixed capacity N = max_total.

    labels: int32 [b,h,w], values in [0, num_classes) or -1 (ignore), already at the scale's
    resolution (`downsample_labels`). Rules (reference `sample_anchors_fast`):
    - keep (image, class) pairs with at least `min_views` pixels; ignore is never kept;
    - V = min(smallest kept count, max_views) (max_views == 1 means no cap, as in the reference),
      then V = min(V, max_total // T) for T kept pairs;
    - V distinct pixels per kept pair, uniformly at random without replacement.
    Returns AnchorSet with fields [N]; slot i -> pair i // V, view i % V, pairs ordered by
    (image, class). Cost: one sort of b*h*w pixels; no [pairs, h*w] tensor.
    """
    _check_sampler_args(num_classes, min_views, max_views, max_total)
    b, h, w = labels.shape
    hw = h * w
    num_pair_ids = b * num_classes
    labels = labels.astype(jnp.int32).reshape(b, hw)
    in_range = (labels >= 0) & (labels < num_classes)
    # Pair id n * K + k orders pairs by (image, class); ignored pixels get the last id.
    pair = jnp.where(
        in_range, jnp.arange(b, dtype=jnp.int32)[:, None] * num_classes + labels, num_pair_ids
    ).reshape(-1)
    counts = jnp.bincount(pair, length=num_pair_ids + 1)[:num_pair_ids].astype(jnp.int32)
    keep = counts >= min_views
    num_pairs = jnp.sum(keep, dtype=jnp.int32)

    min_count = jnp.min(jnp.where(keep, counts, jnp.iinfo(jnp.int32).max))
    views = min_count if max_views == 1 else jnp.minimum(min_count, max_views)
    views = jnp.minimum(views, max_total // jnp.maximum(num_pairs, 1))
    views = jnp.where(num_pairs > 0, views, 0).astype(jnp.int32)

    # Sorting by (pair id, random 32-bit score) puts each pair's pixels in a contiguous run, in
    # uniformly random order: the first V of a run are a uniform V-subset without replacement.
    scores = jax.random.bits(key, (b * hw,), jnp.uint32)
    sorted_pair, _, order = jax.lax.sort(
        (pair, scores, jnp.arange(b * hw, dtype=jnp.int32)), num_keys=2, is_stable=True
    )
    run_start = jnp.cumsum(counts) - counts
    kept_rank = jnp.cumsum(keep, dtype=jnp.int32) - keep
    real = sorted_pair < num_pair_ids
    pair_id = jnp.where(real, sorted_pair, 0)
    rank = jnp.arange(b * hw, dtype=jnp.int32) - run_start[pair_id]
    chosen = real & keep[pair_id] & (rank < views)
    # Scattering the chosen pixels into their slots (rather than gathering per slot) also gives
    # the loss materialised indices: XLA would otherwise fuse this arithmetic into the feature
    # gather and redo it for every channel.
    slot = jnp.where(chosen, kept_rank[pair_id] * views + rank, max_total)
    scatter = lambda fill, values: (
        jnp.full((max_total,), fill, jnp.int32)
        .at[slot]
        .set(values, mode="drop", unique_indices=True)
    )
    return AnchorSet(
        pixel=scatter(0, order % hw),
        image=scatter(0, order // hw),
        label=scatter(IGNORE_LABEL, pair_id % num_classes),
        valid=jnp.arange(max_total, dtype=jnp.int32) < num_pairs * views,
        num_pairs=num_pairs,
        views=views,
    )


def sample_group_anchors(
    labels: jax.Array,
    key: jax.Array,
    strides: Sequence[int],
    *,
    group_index=0,
    num_classes: int,
    min_views: int,
    max_views: int,
    max_total: int,
) -> tuple[AnchorSet, ...]:
    """Anchors of one group at every scale, each scale with its own key (`anchor_key`).

    labels: int32 [b,H,W] at input resolution; strides: one per scale, finest first;
    group_index: the group's global index (a traced value is fine, e.g. `lax.axis_index`).
    """
    return tuple(
        sample_anchors(
            downsample_labels(labels, stride),
            anchor_key(key, group_index, scale),
            num_classes=num_classes,
            min_views=min_views,
            max_views=max_views,
            max_total=max_total,
        )
        for scale, stride in enumerate(strides)
    )


def split_groups(x: jax.Array, images_per_group: int, what: str = "batch") -> jax.Array:
    """[B,...] -> [B // images_per_group, images_per_group, ...], with a clear error otherwise."""
    batch = x.shape[0]
    if images_per_group < 1 or batch % images_per_group:
        raise ValueError(
            f"loss.contrastive.images_per_group={images_per_group} does not divide the {what} "
            f"size {batch}; choose images_per_group dividing batch_size (the reference used 4 for "
            f"ADE20K, 3 for Cityscapes) or change batch_size."
        )
    return x.reshape(batch // images_per_group, images_per_group, *x.shape[1:])


def sample_batch_anchors(
    labels: jax.Array,
    key: jax.Array,
    strides: Sequence[int],
    *,
    images_per_group: int,
    num_classes: int,
    min_views: int,
    max_views: int,
    max_total: int,
) -> tuple[AnchorSet, ...]:
    """Anchors of every group of a global batch: per scale an AnchorSet with fields [G, N].

    labels: int32 [B,H,W]; the batch is split into G = B // images_per_group consecutive groups,
    group g sampled with `anchor_key(key, g, scale)`, so the result does not depend on the device
    count or on how the batch is sharded.
    """
    groups = split_groups(labels, images_per_group, "label batch")
    sample = lambda lab, g: sample_group_anchors(
        lab,
        key,
        strides,
        group_index=g,
        num_classes=num_classes,
        min_views=min_views,
        max_views=max_views,
        max_total=max_total,
    )
    return jax.vmap(sample)(groups, jnp.arange(groups.shape[0], dtype=jnp.int32))


def pack_anchors(pixels, images, classes, capacity: int) -> AnchorSet:
    """An AnchorSet from explicit samples (e.g. the reference's own), padded to `capacity` slots.

    pixels: int [T,V] flat pixel indices y * w + x; images: int [T]; classes: int [T]. Rows are
    pairs, flattened row-major (slot t * V + v) like the reference. Host-side (numpy) helper.
    """
    pixels = np.asarray(pixels)
    num_pairs, views = pixels.shape
    used = num_pairs * views
    if used > capacity:
        raise ValueError(f"pack_anchors: {used} samples do not fit in capacity {capacity}.")
    pad = capacity - used
    pixel = np.concatenate([pixels.reshape(-1), np.zeros(pad, np.int64)])
    image = np.concatenate([np.repeat(np.asarray(images), views), np.zeros(pad, np.int64)])
    label = np.concatenate(
        [np.repeat(np.asarray(classes), views), np.full(pad, IGNORE_LABEL, np.int64)]
    )
    return AnchorSet(
        pixel=jnp.asarray(pixel, jnp.int32),
        image=jnp.asarray(image, jnp.int32),
        label=jnp.asarray(label, jnp.int32),
        valid=jnp.asarray(np.arange(capacity) < used),
        num_pairs=jnp.asarray(num_pairs, jnp.int32),
        views=jnp.asarray(views, jnp.int32),
    )
