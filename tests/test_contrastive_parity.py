"""Exact parity with the authors' PyTorch loss (`DenseContrastiveLossV2_ms`) on golden outputs.

../shared/golden/ holds inputs, the authors' sampled pixels and their loss and gradients
(see its README). Fed the same samples, our loss must match to float32 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msc_seg.losses import (
    IGNORE_LABEL,
    downsample_labels,
    multiscale_contrastive_loss,
    pack_anchors,
    sample_anchors,
)

SCALES = ("s4", "s8", "s16", "s32")
STRIDES = (4, 8, 16, 32)
SETTINGS = dict(
    temperature=0.1,
    scale_weights=(1.0, 0.7, 0.4, 0.1),
    cross_scale=True,
    w_high_low=1.0,
    w_high_mid=1.0,
    detach_coarse=False,
)


@pytest.fixture(scope="module")
def golden(shared_dir):
    folder = shared_dir / "golden"
    names = ("inputs", "samples", "ref")
    paths = [folder / f"mscs_small_{n}.npz" for n in names]
    if not all(p.exists() for p in paths):
        pytest.skip(f"golden outputs not found under {folder}")
    return {n: dict(np.load(p)) for n, p in zip(names, paths, strict=True)}


def labels_of(golden):
    labels = golden["inputs"]["labels"].astype(np.int32)
    return np.where(labels == 255, IGNORE_LABEL, labels)


@pytest.fixture(scope="module")
def ours(golden):
    """Our loss, metrics and gradients (NHWC) on the golden inputs and the authors' samples."""
    features = tuple(
        jnp.asarray(golden["inputs"][f"feat_{s}"].transpose(0, 2, 3, 1)) for s in SCALES
    )
    smp = golden["samples"]
    anchors = tuple(
        pack_anchors(smp[f"idx_{s}"], smp[f"b_{s}"], smp[f"c_{s}"], 10000) for s in SCALES
    )
    fn = jax.jit(
        jax.value_and_grad(
            lambda f: multiscale_contrastive_loss(f, anchors, **SETTINGS), has_aux=True
        )
    )
    (loss, metrics), grads = fn(features)
    return float(loss), jax.tree.map(float, metrics), [np.asarray(g) for g in grads]


def rel_err(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)


def test_total_loss_matches_the_authors_code(golden, ours):
    loss, _, _ = ours
    assert rel_err(loss, golden["ref"]["loss"]) <= 1e-5


def test_within_scale_and_cross_scale_terms_match_the_authors_code(golden, ours):
    _, metrics, _ = ours
    ms = golden["ref"]["ms_losses"]
    cs = golden["ref"]["cs_losses"]
    for i, ref in enumerate(ms):
        got = metrics[f"loss_ms/s{i}"]
        assert abs(got - ref) <= 1e-5 * max(abs(ref), 1.0), (i, got, ref)
    for name, ref in zip(("loss_cs/high_low", "loss_cs/high_mid"), cs, strict=True):
        assert abs(metrics[name] - ref) <= 1e-5 * max(abs(ref), 1.0), (name, metrics[name], ref)
    # The golden case is not trivial: the terms that can be non-zero are.
    assert min(ms[:3]) > 0.1 and cs[1] > 0.1


def test_gradients_wrt_features_match_the_authors_code(golden, ours):
    _, _, grads = ours
    refs = [golden["ref"][f"grad_{s}"].transpose(0, 2, 3, 1) for s in SCALES]
    scale = max(np.max(np.abs(r)) for r in refs)
    for s, got, ref in zip(SCALES, grads, refs, strict=True):
        # s32 carries only one class: its loss is exactly 0 and the authors' gradient there is
        # float rounding noise (~1e-11), so every scale is compared on the common gradient scale.
        assert np.max(np.abs(got - ref)) <= 1e-5 * scale, s
        if np.max(np.abs(ref)) > 1e-6 * scale:
            assert rel_err(got, ref) <= 1e-5, s
            # Exactly the sampled pixels receive gradient.
            np.testing.assert_array_equal(np.abs(got).sum(-1) > 0, np.abs(ref).sum(-1) > 0)


def test_our_sampler_keeps_the_same_pairs_and_views_as_the_authors(golden):
    labels = jnp.asarray(labels_of(golden))
    smp = golden["samples"]
    sample = jax.jit(
        lambda lab: sample_anchors(
            lab, jax.random.key(0), num_classes=150, min_views=5, max_views=2500, max_total=10000
        )
    )
    for s, stride in zip(SCALES, STRIDES, strict=True):
        anchors = sample(downsample_labels(labels, stride))
        num_pairs, views = smp[f"idx_{s}"].shape
        assert int(anchors.num_pairs) == num_pairs, s
        assert int(anchors.views) == views, s
        pair_image = np.asarray(anchors.image[: num_pairs * views : views])
        pair_class = np.asarray(anchors.label[: num_pairs * views : views])
        np.testing.assert_array_equal(pair_image, smp[f"b_{s}"])
        np.testing.assert_array_equal(pair_class, smp[f"c_{s}"])
        # The authors' pixels carry their pair's class at this scale (nearest downsampling).
        low = np.asarray(downsample_labels(labels, stride))
        w = low.shape[2]
        idx = smp[f"idx_{s}"]
        got = low[smp[f"b_{s}"][:, None], idx // w, idx % w]
        np.testing.assert_array_equal(got, np.broadcast_to(smp[f"c_{s}"][:, None], idx.shape))
