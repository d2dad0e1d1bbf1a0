"""The blocked MS/CS contrastive loss vs a dense restatement; edge cases, groups, devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from msc_seg.losses import (
    IGNORE_LABEL,
    ContrastiveOptions,
    contrastive_loss_for_batch,
    contrastive_loss_for_group,
    info_nce_loss,
    multiscale_contrastive_loss,
    pack_anchors,
    sample_batch_anchors,
    within_scale_info_nce,
)


def dense_info_nce(za, ya, va, zb, yb, vb, temperature, exclude_self):
    """docs/METHOD.md §7 and §8 written out on full matrices (one group)."""
    s = za @ zb.T / temperature
    same = ya[:, None] == yb[None, :]
    pos = same & vb[None, :]
    if exclude_self:
        pos = pos & ~jnp.eye(za.shape[0], zb.shape[0], dtype=bool)
    neg = ~same & vb[None, :]
    neg_sum = jnp.sum(jnp.where(neg, jnp.exp(s), 0.0), axis=1, keepdims=True)
    log_prob = s - jnp.log(jnp.exp(s) + neg_sum)
    num_pos = jnp.sum(pos, axis=1)
    per_anchor = -jnp.sum(jnp.where(pos, log_prob, 0.0), axis=1) / jnp.maximum(num_pos, 1)
    return jnp.sum(jnp.where(va, per_anchor, 0.0)) / jnp.maximum(jnp.sum(va), 1)


def unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def random_set(rng, groups, n, dim, num_classes, valid_fraction):
    z = unit(jnp.asarray(rng.standard_normal((groups, n, dim)), jnp.float32))
    y = jnp.asarray(rng.integers(0, num_classes, (groups, n)), jnp.int32)
    v = jnp.asarray(rng.random((groups, n)) < valid_fraction)
    return z, y, v


def rel_err(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)


@pytest.mark.parametrize("exclude_self", [True, False])
def test_blocked_loss_and_gradients_match_dense_restatement(exclude_self):
    rng = np.random.default_rng(int(exclude_self))
    # Two groups with different valid extents, holes in the masks, several blocks and tiles.
    za, ya, va = random_set(rng, 2, 70, 16, 4, 0.8)
    va = va.at[1, 40:].set(False)
    if exclude_self:
        zb, yb, vb = za, ya, va
    else:
        zb, yb, vb = random_set(rng, 2, 45, 16, 5, 0.7)
    kw = dict(temperature=0.1, exclude_self=exclude_self, block_size=16, column_block_size=24)

    def blocked(za, zb):
        if exclude_self:
            zb = za
        return jnp.sum(info_nce_loss(za, ya, va, zb, yb, vb, **kw) * jnp.array([1.0, 0.5]))

    def dense(za, zb):
        if exclude_self:
            zb = za
        per_group = jax.vmap(
            lambda *a: dense_info_nce(*a, temperature=0.1, exclude_self=exclude_self)
        )(za, ya, va, zb, yb, vb)
        return jnp.sum(per_group * jnp.array([1.0, 0.5]))

    value, grads = jax.jit(jax.value_and_grad(blocked, argnums=(0, 1)))(za, zb)
    ref_value, ref_grads = jax.value_and_grad(dense, argnums=(0, 1))(za, zb)
    assert rel_err(value, ref_value) < 1e-5
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel_err(g, r) < 1e-5
    # The forward-only path (no VJP) gives the same value.
    assert rel_err(jax.jit(blocked)(za, zb), ref_value) < 1e-5


@pytest.mark.parametrize("block", [8, 16, 24, 512])
def test_within_scale_kernel_matches_the_dense_restatement_and_the_two_set_kernel(block):
    rng = np.random.default_rng(block)
    # Two groups with different valid extents and holes; 70 slots: several block pairs, a
    # partial last block, a diagonal block per row of blocks.
    z, y, v = random_set(rng, 2, 70, 16, 4, 0.8)
    v = v.at[1, 40:].set(False)
    weights = jnp.array([1.0, 0.5])
    kw = dict(temperature=0.1)

    def within(z):
        return jnp.sum(within_scale_info_nce(z, y, v, block_size=block, **kw) * weights)

    def two_set(z):
        return jnp.sum(info_nce_loss(z, y, v, z, y, v, exclude_self=True, **kw) * weights)

    def dense(z):
        per_group = jax.vmap(lambda *a: dense_info_nce(*a, exclude_self=True, **kw))(
            z, y, v, z, y, v
        )
        return jnp.sum(per_group * weights)

    value, grad = jax.jit(jax.value_and_grad(within))(z)
    ref_value, ref_grad = jax.value_and_grad(dense)(z)
    two_value, two_grad = jax.jit(jax.value_and_grad(two_set))(z)
    assert rel_err(value, ref_value) < 1e-5 and rel_err(grad, ref_grad) < 1e-5
    assert rel_err(value, two_value) < 1e-6 and rel_err(grad, two_grad) < 1e-5
    assert rel_err(jax.jit(within)(z), ref_value) < 1e-5  # the forward-only path


def test_within_scale_kernel_skips_only_block_pairs_without_positives():
    # Slots ordered by class (as the sampler orders them by (image, class)): with 8-slot blocks
    # most block pairs hold no positive pair and are skipped; the result must not change.
    rng = np.random.default_rng(3)
    z, _, v = random_set(rng, 1, 96, 8, 1, 0.9)
    y = jnp.asarray(np.repeat(np.arange(12), 8)[None] // 2 * 2, jnp.int32)  # runs of 16
    f = lambda z: jnp.sum(within_scale_info_nce(z, y, v, temperature=0.2, block_size=8))
    ref = lambda z: jnp.sum(dense_info_nce(z[0], y[0], v[0], z[0], y[0], v[0], 0.2, True))
    value, grad = jax.jit(jax.value_and_grad(f))(z)
    ref_value, ref_grad = jax.value_and_grad(ref)(z)
    assert rel_err(value, ref_value) < 1e-5 and rel_err(grad, ref_grad) < 1e-5


def test_block_sizes_do_not_change_the_result():
    rng = np.random.default_rng(5)
    z, y, v = random_set(rng, 1, 300, 8, 6, 1.0)
    values = [
        info_nce_loss(
            z, y, v, z, y, v, temperature=0.1, exclude_self=True, block_size=b, column_block_size=c
        )
        for b, c in ((8, 8), (64, 40), (512, 2048))
    ]
    for x in values[1:]:
        assert rel_err(x, values[0]) < 1e-6


@pytest.mark.parametrize("kernel", ["two_set", "within_scale"])
def test_degenerate_sets_give_zero_loss_and_zero_gradients(kernel):
    rng = np.random.default_rng(0)
    z, y, _ = random_set(rng, 1, 32, 8, 3, 1.0)
    loss = {
        "two_set": lambda z, y, v: info_nce_loss(
            z, y, v, z, y, v, temperature=0.1, exclude_self=True
        ),
        "within_scale": lambda z, y, v: within_scale_info_nce(z, y, v, temperature=0.1),
    }[kernel]
    grad = jax.value_and_grad(lambda z, y, v: jnp.sum(loss(z, y, v)))
    cases = {
        "empty": (y, jnp.zeros((1, 32), bool)),
        "single class, no negatives": (jnp.zeros_like(y), jnp.ones((1, 32), bool)),
        "one anchor per class, no positives": (jnp.arange(32)[None], jnp.ones((1, 32), bool)),
    }
    for name, (labels, valid) in cases.items():
        value, g = grad(z, labels, valid)
        assert float(value) == 0.0, name
        assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) < 1e-6, name
    # Zero feature vectors (normalised with eps) keep the whole loss finite too.
    feats = (jnp.zeros((1, 4, 4, 8)),)
    anchors = (pack_anchors(np.arange(16).reshape(2, 8), [0, 0], [0, 1], 32),)
    loss_fn = lambda f: multiscale_contrastive_loss(f, anchors, scale_weights=(1.0,))[0]
    value, g = jax.value_and_grad(loss_fn)(feats)
    assert np.isfinite(float(value)) and np.all(np.isfinite(g[0]))


# One shared configuration (2 scales, strides 2 and 4) so that the tests below compile once.
OPTS = dict(
    temperature=0.1,
    scale_weights=(1.0, 0.7),
    cross_scale=True,
    w_high_low=1.0,
    w_high_mid=1.0,
    detach_coarse=False,
    min_views=3,
    max_views=2500,
    max_total=128,
)
KW = dict(num_classes=5, options=ContrastiveOptions(**OPTS))


def batch_kw(images_per_group, **overrides):
    """contrastive_loss_for_batch's keyword arguments: KW with these options changed."""
    return dict(
        KW, options=ContrastiveOptions(**dict(OPTS, images_per_group=images_per_group, **overrides))
    )


STRIDES = (2, 4)


def make_batch(rng, batch, size=16, dim=8, num_classes=5, dtype=jnp.float32):
    labels = rng.integers(0, num_classes, (batch, size // 4, size // 4))
    labels = np.repeat(np.repeat(labels, 4, axis=1), 4, axis=2).astype(np.int32)
    labels[:, -2:, :] = IGNORE_LABEL
    embeddings = tuple(
        jnp.asarray(rng.standard_normal((batch, size // s, size // s, dim)), dtype) for s in STRIDES
    )
    return embeddings, jnp.asarray(labels)


@functools.cache
def batch_grad_fn(images_per_group, gather_all_groups=False, **overrides):
    kw = batch_kw(images_per_group, gather_all_groups=gather_all_groups, **overrides)
    return jax.jit(
        jax.value_and_grad(
            lambda e, lab, k: contrastive_loss_for_batch(e, lab, k, **kw), has_aux=True
        )
    )


def test_batch_loss_is_the_mean_of_per_group_losses_and_compiles_once():
    rng = np.random.default_rng(0)
    embeddings, labels = make_batch(rng, 4)
    key = jax.random.key(3)
    fn = batch_grad_fn(2)
    (loss, metrics), grads = fn(embeddings, labels, key)
    group_loss = jax.jit(
        lambda e, lab, g: contrastive_loss_for_group(e, lab, key, group_index=g, **KW)[0]
    )
    group_losses = [
        float(
            group_loss(
                tuple(e[2 * g : 2 * g + 2] for e in embeddings), labels[2 * g : 2 * g + 2], g
            )
        )
        for g in range(2)
    ]
    assert rel_err(loss, np.mean(group_losses)) < 1e-6
    expected = {
        "loss_ms/s0", "loss_ms/s1", "loss_cs/high_low", "loss_contrastive",
        "num_anchors/s0", "num_anchors/s1", "views_per_class/s0", "views_per_class/s1",
        "num_pairs/s0", "num_pairs/s1",
    }  # fmt: skip
    assert set(metrics) == expected
    assert float(metrics["loss_contrastive"]) == pytest.approx(float(loss))
    assert all(np.all(np.isfinite(g)) for g in grads)
    # Another batch and key: same compiled function.
    fn(*make_batch(rng, 4), jax.random.key(4))
    assert fn._cache_size() == 1


def test_edge_case_batches_give_finite_loss_and_gradients():
    rng = np.random.default_rng(1)
    embeddings, labels = make_batch(rng, 4)
    fn = batch_grad_fn(2)
    cases = {
        "all ignore": jnp.full_like(labels, IGNORE_LABEL),
        "single class": jnp.zeros_like(labels),
        # class 1 has exactly min_views = 3 pixels at stride 2 (2 at stride 4, dropped there)
        "exactly min_views pixels": jnp.full_like(labels, IGNORE_LABEL)
        .at[:, 0, :6]
        .set(1)
        .at[:, 4:12, :]
        .set(2),
        "no ignore label": jnp.where(labels < 0, 4, labels),
        # 4 images x 2 halves = 8 pairs of 32 pixels at stride 2: V = min(32, 128 // 8) = 16
        "cap binds": jnp.zeros_like(labels).at[:, :, 8:].set(3),
    }
    for name, lab in cases.items():
        (loss, metrics), grads = fn(embeddings, lab, jax.random.key(0))
        assert np.isfinite(float(loss)), name
        assert all(np.all(np.isfinite(g)) for g in grads), name
    (loss, metrics), grads = fn(embeddings, cases["all ignore"], jax.random.key(0))
    assert float(loss) == 0.0 and float(metrics["num_anchors/s0"]) == 0.0
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads)
    (_, metrics), _ = fn(embeddings, cases["exactly min_views pixels"], jax.random.key(0))
    assert float(metrics["views_per_class/s0"]) == 3.0  # the 3-pixel class is kept at s0
    (_, metrics), _ = fn(embeddings, cases["cap binds"], jax.random.key(0))
    assert float(metrics["num_pairs/s0"]) == 4.0  # 2 pairs per group of 2 images
    assert float(metrics["views_per_class/s0"]) == 32.0  # min(32 pixels, 128 // 4)
    assert float(metrics["num_anchors/s0"]) == 128.0


def test_detach_coarse_stops_gradients_into_the_coarse_scale_only():
    rng = np.random.default_rng(2)
    embeddings, labels = make_batch(rng, 2)
    key = jax.random.key(0)
    (loss_a, m_a), g_a = batch_grad_fn(2)(embeddings, labels, key)
    (loss_b, m_b), g_b = batch_grad_fn(2, detach_coarse=True)(embeddings, labels, key)
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-6)
    assert float(m_a["loss_cs/high_low"]) > 0
    np.testing.assert_allclose(g_a[0], g_b[0], rtol=1e-5, atol=1e-7)  # finest: unchanged
    # Coarse: only the within-scale term's gradient is left.
    _, ms_only = batch_grad_fn(2, cross_scale=False)(embeddings, labels, key)
    np.testing.assert_allclose(g_b[1], ms_only[1], rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(g_a[1] - g_b[1]))) > 1e-6


def test_bfloat16_embeddings_are_contrasted_in_float32():
    rng = np.random.default_rng(4)
    embeddings, labels = make_batch(rng, 2, dtype=jnp.bfloat16)
    upcast = tuple(e.astype(jnp.float32) for e in embeddings)
    fwd = lambda e: contrastive_loss_for_batch(e, labels, jax.random.key(0), **batch_kw(2))[0]
    low = jax.jit(fwd)(embeddings)
    assert low.dtype == jnp.float32
    assert rel_err(low, batch_grad_fn(2)(upcast, labels, jax.random.key(0))[0][0]) < 1e-6


def test_gather_all_groups_contrasts_every_groups_anchors_together():
    rng = np.random.default_rng(6)
    embeddings, labels = make_batch(rng, 4)
    key = jax.random.key(1)
    (loss, metrics), grads = batch_grad_fn(2, gather_all_groups=True)(embeddings, labels, key)
    # The same samples, merged by hand into one set over the 4 images.
    anchors = sample_batch_anchors(
        labels,
        key,
        STRIDES,
        images_per_group=2,
        num_classes=5,
        min_views=3,
        max_views=2500,
        max_total=128,
    )
    merged = []
    for a in anchors:
        keep = np.asarray(a.valid)
        image = np.asarray(a.image) + 2 * np.arange(2)[:, None]
        pixels, images, classes = (np.asarray(x)[keep] for x in (a.pixel, image, a.label))
        merged.append(pack_anchors(pixels[:, None], images, classes, 256))
    kw = {k: OPTS[k] for k in ("temperature", "scale_weights", "cross_scale", "w_high_low")}
    ref, ref_metrics = jax.jit(lambda e, a: multiscale_contrastive_loss(e, a, **kw))(
        embeddings, merged
    )
    assert rel_err(loss, ref) < 1e-5
    assert rel_err(metrics["loss_cs/high_low"], ref_metrics["loss_cs/high_low"]) < 1e-5
    separate = batch_grad_fn(2)(embeddings, labels, key)[0][0]
    assert abs(float(loss) - float(separate)) > 1e-4  # negatives from the other group count
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_blocked_loss_keeps_no_capacity_squared_matrix_alive():
    n, dim = 4096, 8
    z = jnp.zeros((1, n, dim))
    y = jnp.zeros((1, n), jnp.int32)
    v = jnp.ones((1, n), bool)
    f = jax.value_and_grad(
        lambda z: jnp.sum(
            info_nce_loss(
                z,
                y,
                v,
                z,
                y,
                v,
                temperature=0.1,
                exclude_self=True,
                block_size=64,
                column_block_size=256,
            )
        )
    )
    stats = jax.jit(f).lower(z).compile().memory_analysis()
    if stats is None:
        pytest.skip("this backend gives no memory analysis")
    # One N x N float32 matrix would take 64 MiB; the blocked pass needs a few block x N ones.
    assert stats.temp_size_in_bytes < 8 * 64 * n * 4 + 16 * n * dim * 4
    # The within-scale kernel: a few [256, 256] tiles and O(N) row statistics.
    g = jax.value_and_grad(
        lambda z: jnp.sum(within_scale_info_nce(z, y, v, temperature=0.1, block_size=256))
    )
    stats = jax.jit(g).lower(z).compile().memory_analysis()
    assert stats.temp_size_in_bytes < 8 * 256 * 256 * 4 + 16 * n * dim * 4


def test_errors_name_the_field_at_fault():
    rng = np.random.default_rng(0)
    embeddings, labels = make_batch(rng, 4)
    with pytest.raises(ValueError, match="images_per_group=3"):
        contrastive_loss_for_batch(embeddings, labels, jax.random.key(0), **batch_kw(3))
    with pytest.raises(ValueError, match=r"scale_weights=\(1.0,\): has 1 entries"):
        contrastive_loss_for_batch(
            embeddings, labels, jax.random.key(0), **batch_kw(2, scale_weights=(1.0,))
        )
    with pytest.raises(ValueError, match="not an integer multiple"):
        contrastive_loss_for_batch(
            (embeddings[0][:, :7],) + embeddings[1:], labels, jax.random.key(0), **batch_kw(2)
        )


def test_pmap_shard_map_and_jit_vmap_give_the_same_loss_on_8_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 CPU devices)")
    rng = np.random.default_rng(7)
    embeddings, labels = make_batch(rng, 8)
    key = jax.random.key(11)
    (vmapped, _), _ = batch_grad_fn(1)(embeddings, labels, key)

    def per_device(e, lab):
        group = jax.lax.axis_index("data")
        return contrastive_loss_for_group(e, lab, key, group_index=group, **KW)[0]

    per_group = lambda x: x.reshape(8, 1, *x.shape[1:])
    pmapped = jax.pmap(per_device, axis_name="data")(
        tuple(per_group(e) for e in embeddings), per_group(labels)
    )
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.jit(
        jax.shard_map(
            lambda e, lab: per_device(e, lab)[None],
            mesh=mesh,
            in_specs=P("data"),
            out_specs=P("data"),
        )  # fmt: skip
    )(embeddings, labels)
    assert rel_err(jnp.mean(pmapped), vmapped) < 1e-6
    assert rel_err(jnp.mean(sharded), vmapped) < 1e-6


def test_sharded_batch_keeps_groups_on_their_devices_and_matches_one_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 CPU devices)")
    rng = np.random.default_rng(8)
    embeddings, labels = make_batch(rng, 8)
    key = jax.random.key(2)
    fn = batch_grad_fn(1)
    (loss_1, _), grads_1 = fn(embeddings, labels, key)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, P("data"))
    sharded = jax.device_put((embeddings, labels), sharding)
    (loss_8, _), grads_8 = fn(*sharded, key)
    assert rel_err(loss_8, loss_1) < 1e-6
    for g8, g1 in zip(grads_8, grads_1, strict=True):
        assert rel_err(g8, g1) < 1e-5
    # Each device works on its own groups: no feature map is all-gathered.
    assert "all-gather" not in fn.lower(*sharded, key).compile().as_text()
