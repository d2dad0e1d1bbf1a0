"""The fixed-shape sampler against an independent numpy restatement of the reference rules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import stats

from msc_seg.losses import (
    IGNORE_LABEL,
    anchor_key,
    downsample_labels,
    sample_anchors,
    sample_batch_anchors,
    split_groups,
)


def reference_plan(labels, num_classes, min_views, max_views, max_total):
    """Numpy restatement of `sample_anchors_fast` / `_select_views_per_class` (docs/METHOD.md §6),
    without the reference's drop-the-last-class bug: kept (image, class) pairs in order, and V."""
    pairs = []
    counts = []
    for n in range(labels.shape[0]):
        for k in range(num_classes):
            c = int(np.sum(labels[n] == k))
            if c >= min_views:
                pairs.append((n, k))
                counts.append(c)
    if not pairs:
        return pairs, 0
    views = min(counts) if max_views == 1 else min(min(counts), max_views)
    if views * len(pairs) > max_total:
        views = max_total // len(pairs)
    return pairs, views


def random_labels(rng, b, h, w, num_classes, ignore_fraction=0.2):
    """Blocky label maps with classes of very different sizes and some ignore pixels."""
    labels = rng.integers(0, num_classes, (b, h // 2, w // 2))
    labels = np.repeat(np.repeat(labels, 2, axis=1), 2, axis=2)
    noise = rng.integers(0, num_classes, (b, h, w))
    labels = np.where(rng.random((b, h, w)) < 0.1, noise, labels)
    labels = np.where(rng.random((b, h, w)) < ignore_fraction, IGNORE_LABEL, labels)
    return labels.astype(np.int32)


def check_against_reference(labels, anchors, num_classes, min_views, max_views, max_total):
    pairs, views = reference_plan(labels, num_classes, min_views, max_views, max_total)
    a = jax.tree.map(np.asarray, anchors)
    assert int(a.num_pairs) == len(pairs)
    assert int(a.views) == views
    used = len(pairs) * views
    np.testing.assert_array_equal(a.valid, np.arange(max_total) < used)
    assert np.all(a.label[used:] == IGNORE_LABEL)
    w = labels.shape[2]
    for t, (n, k) in enumerate(pairs):
        sl = slice(t * views, (t + 1) * views)
        assert np.all(a.image[sl] == n) and np.all(a.label[sl] == k)
        pix = a.pixel[sl]
        assert len(np.unique(pix)) == views, "views of a pair must be distinct pixels"
        assert np.all(labels[n, pix // w, pix % w] == k), "every view must carry its pair's class"


SAMPLE = functools.partial(
    jax.jit, static_argnames=("num_classes", "min_views", "max_views", "max_total")
)(sample_anchors)


@pytest.mark.parametrize(
    "min_views,max_views,max_total",
    [
        (5, 2500, 10000),  # reference settings: V = smallest kept count
        (3, 4, 10000),  # max_views_per_class binds
        (2, 2500, 40),  # max_features_total binds: V = 40 // T
        (4, 1, 10000),  # max_views_per_class == 1 means no cap, as in the reference
    ],
)
def test_sampler_matches_numpy_restatement_of_reference_rules(min_views, max_views, max_total):
    rng = np.random.default_rng(min_views * 100 + max_views)
    for trial in range(3):
        labels = random_labels(rng, 3, 16, 12, num_classes=7)
        anchors = SAMPLE(
            jnp.asarray(labels),
            jax.random.key(trial),
            num_classes=7,
            min_views=min_views,
            max_views=max_views,
            max_total=max_total,
        )
        check_against_reference(labels, anchors, 7, min_views, max_views, max_total)


def test_all_ignore_batch_gives_empty_anchor_set():
    labels = np.full((2, 8, 8), IGNORE_LABEL, np.int32)
    a = SAMPLE(
        jnp.asarray(labels),
        jax.random.key(0),
        num_classes=4,
        min_views=5,
        max_views=2500,
        max_total=64,
    )
    assert int(a.num_pairs) == 0 and int(a.views) == 0
    assert not np.any(np.asarray(a.valid))


def test_class_with_exactly_min_views_pixels_is_kept_and_one_less_is_not():
    labels = np.full((1, 8, 8), IGNORE_LABEL, np.int32)
    labels[0, 0, :5] = 2  # exactly min_views pixels
    labels[0, 1, :4] = 3  # one fewer
    labels[0, 2:5, :] = 1
    a = SAMPLE(
        jnp.asarray(labels),
        jax.random.key(0),
        num_classes=4,
        min_views=5,
        max_views=2500,
        max_total=64,
    )
    assert int(a.num_pairs) == 2 and int(a.views) == 5
    np.testing.assert_array_equal(np.asarray(a.label[:10]), [1] * 5 + [2] * 5)
    check_against_reference(labels, a, 4, 5, 2500, 64)


def test_dataset_without_ignore_label_keeps_its_last_class():
    # The reference's cnt[:, :-1] would drop class 2 here (the CaDIS exp1 bug): we keep it.
    labels = np.zeros((1, 6, 6), np.int32)
    labels[0, :, 2:4] = 1
    labels[0, :, 4:] = 2
    a = SAMPLE(
        jnp.asarray(labels),
        jax.random.key(0),
        num_classes=3,
        min_views=5,
        max_views=2500,
        max_total=64,
    )
    assert int(a.num_pairs) == 3
    assert 2 in set(np.asarray(a.label)[np.asarray(a.valid)].tolist())


def test_sampler_selects_views_uniformly_without_replacement():
    # Class 0 has 20 pixels, class 1 has 8, so V = 8: 8 of class 0's 20 pixels per draw.
    labels = np.full((1, 8, 8), IGNORE_LABEL, np.int32)
    labels[0].reshape(-1)[:20] = 0
    labels[0].reshape(-1)[30:38] = 1
    runs = 3000
    keys = jax.random.split(jax.random.key(1234), runs)
    draw = jax.jit(
        jax.vmap(
            lambda k: sample_anchors(
                jnp.asarray(labels), k, num_classes=2, min_views=5, max_views=2500, max_total=64
            ).pixel[:8]
        )
    )
    chosen = np.asarray(draw(keys))  # [runs, 8] pixels of class 0
    assert all(len(set(row)) == 8 for row in chosen)
    inclusion = np.bincount(chosen.reshape(-1), minlength=20)[:20]
    p = 8 / 20
    z2 = np.sum((inclusion - runs * p) ** 2) / (runs * p * (1 - p))
    assert stats.chi2.sf(z2, df=19) > 1e-3, f"inclusion counts not uniform: {inclusion}"
    first = np.bincount(chosen[:, 0], minlength=20)
    assert stats.chisquare(first).pvalue > 1e-3, f"first view not uniform: {first}"


def test_different_groups_and_scales_get_different_samples():
    labels = jnp.asarray(random_labels(np.random.default_rng(0), 2, 16, 16, 3, 0.0))
    kw = dict(num_classes=3, min_views=2, max_views=2500, max_total=128)
    a0 = SAMPLE(labels, anchor_key(jax.random.key(0), 0, 0), **kw)
    a1 = SAMPLE(labels, anchor_key(jax.random.key(0), 1, 0), **kw)
    a2 = SAMPLE(labels, anchor_key(jax.random.key(0), 0, 1), **kw)
    assert not np.array_equal(a0.pixel, a1.pixel)
    assert not np.array_equal(a0.pixel, a2.pixel)


def test_downsample_labels_matches_pytorch_legacy_nearest():
    torch = pytest.importorskip("torch")
    labels = np.random.default_rng(0).integers(-1, 9, (2, 32, 48)).astype(np.int32)
    for stride in (2, 4, 8, 16):
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(labels)[:, None].float(), (32 // stride, 48 // stride), mode="nearest"
        )[:, 0].numpy()
        ours = np.asarray(downsample_labels(jnp.asarray(labels), stride))
        np.testing.assert_array_equal(ours, ref.astype(np.int32))


def test_downsample_labels_rejects_sizes_not_divisible_by_the_stride():
    with pytest.raises(ValueError, match="multiple of the feature stride 8"):
        downsample_labels(jnp.zeros((1, 36, 32), jnp.int32), 8)


def test_split_groups_error_names_images_per_group():
    with pytest.raises(ValueError, match="images_per_group=3"):
        split_groups(jnp.zeros((8, 4, 4)), 3)


BATCH_KW = dict(
    strides=(2, 4), images_per_group=2, num_classes=5, min_views=2, max_views=2500, max_total=96
)


def test_batch_sampling_is_the_same_on_1_and_8_devices():
    labels = random_labels(np.random.default_rng(3), 8, 16, 16, 5)
    key = jax.random.key(7)
    fn = jax.jit(functools.partial(sample_batch_anchors, **BATCH_KW))
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 CPU devices)")
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:8]):
        mesh = Mesh(np.array(devices), ("data",))
        sharded = jax.device_put(jnp.asarray(labels), NamedSharding(mesh, P("data")))
        results.append(jax.tree.map(np.asarray, fn(sharded, key)))
    for one, eight in zip(results[0], results[1], strict=True):
        for x, y in zip(one, eight, strict=True):
            np.testing.assert_array_equal(x, y)
    # And the groups are what sampling each group on its own gives.
    for g in range(4):
        for s, stride in enumerate(BATCH_KW["strides"]):
            alone = SAMPLE(
                downsample_labels(jnp.asarray(labels[2 * g : 2 * g + 2]), stride),
                anchor_key(key, g, s),
                num_classes=5,
                min_views=2,
                max_views=2500,
                max_total=96,
            )
            np.testing.assert_array_equal(results[0][s].pixel[g], alone.pixel)


def test_batch_sampling_compiles_once_across_batches():
    fn = jax.jit(functools.partial(sample_batch_anchors, **BATCH_KW))
    rng = np.random.default_rng(0)
    for step in range(3):
        labels = jnp.asarray(random_labels(rng, 4, 16, 16, 5, ignore_fraction=0.1 * step))
        jax.block_until_ready(fn(labels, jax.random.key(step)))
    assert fn._cache_size() == 1
