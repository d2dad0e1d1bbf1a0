"""The segmentation cross-entropy, and its fusion with the logits' bilinear upsampling.

`cross_entropy` equals PyTorch's `F.cross_entropy` (ignore_index=-1, class weights);
`upsampled_cross_entropy` equals `cross_entropy(resize_bilinear(...))` in value and gradient for
every size, align_corners and chunking, compiles once per shape; every model family gives its
training forward's logits at head resolution, and the objective on them (`upsample_logits=False`)
equals the objective on the full-resolution outputs, loss and parameter gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_model_remat import FAMILIES, build_random

from msc_seg.losses.segmentation import cross_entropy, upsampled_cross_entropy
from msc_seg.losses.total import make_objective
from msc_seg.models.layers import resize_bilinear
from msc_seg.train_step import forward_for_loss


def _logits_labels(b, h, w, big_h, big_w, k, *, seed=0, ignore=0.2):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(3 * rng.standard_normal((b, h, w, k)), jnp.float32)
    labels = rng.integers(0, k, (b, big_h, big_w)).astype(np.int32)
    labels[rng.random(labels.shape) < ignore] = -1
    return logits, jnp.asarray(labels)


def _unfused(logits, labels, weights, align_corners):
    up = resize_bilinear(logits, labels.shape[1:], align_corners=align_corners)
    return cross_entropy(up, labels, weights)


def test_cross_entropy_equals_torch_with_ignore_label_and_class_weights():
    torch = pytest.importorskip("torch")
    logits, labels = _logits_labels(2, 9, 7, 9, 7, 5)
    weights = (0.5, 1.0, 2.0, 0.1, 3.0)
    for w in (None, weights):
        ours = float(cross_entropy(logits, labels, w))
        ref = torch.nn.functional.cross_entropy(
            torch.tensor(np.asarray(logits)).permute(0, 3, 1, 2),
            torch.tensor(np.asarray(labels)).long(),
            weight=None if w is None else torch.tensor(w),
            ignore_index=-1,
        )
        np.testing.assert_allclose(ours, float(ref), rtol=1e-6)


@pytest.mark.parametrize(
    "shape, align_corners, weights, chunk_values",
    [
        ((2, 8, 8, 32, 32, 5), False, None, 1 << 23),  # stride 4, one chunk
        ((2, 8, 8, 32, 32, 5), True, None, 1 << 23),
        ((2, 5, 7, 19, 26, 4), False, (0.5, 2.0, 1.0, 3.0), 300),  # odd sizes, uneven chunks
        ((1, 5, 7, 19, 26, 4), True, (0.5, 2.0, 1.0, 3.0), 1),  # one row per chunk
        ((2, 3, 4, 6, 4, 3), False, None, 50),  # width unchanged, height doubled
    ],
)
def test_upsampled_cross_entropy_equals_resize_then_cross_entropy(
    shape, align_corners, weights, chunk_values
):
    b, h, w, big_h, big_w, k = shape
    logits, labels = _logits_labels(b, h, w, big_h, big_w, k, seed=big_h)

    def fused(x):
        return upsampled_cross_entropy(
            x, labels, weights, align_corners=align_corners, chunk_values=chunk_values
        )

    loss, grad = jax.value_and_grad(fused)(logits)
    ref_loss, ref_grad = jax.value_and_grad(lambda x: _unfused(x, labels, weights, align_corners))(
        logits
    )
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2e-6)
    assert grad.shape == logits.shape
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-8)


def test_upsampled_cross_entropy_is_zero_without_valid_pixels():
    logits, _ = _logits_labels(2, 4, 4, 16, 16, 3)
    labels = jnp.full((2, 16, 16), -1, jnp.int32)
    loss, grad = jax.value_and_grad(
        lambda x: upsampled_cross_entropy(x, labels, align_corners=False)
    )(logits)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_upsampled_cross_entropy_at_equal_sizes_is_the_plain_cross_entropy():
    logits, labels = _logits_labels(2, 6, 5, 6, 5, 4)
    np.testing.assert_array_equal(
        np.asarray(upsampled_cross_entropy(logits, labels, align_corners=True)),
        np.asarray(cross_entropy(logits, labels)),
    )


def test_upsampled_cross_entropy_compiles_once_per_shape():
    traces = []

    @jax.jit
    def grad(x, y):
        traces.append(1)
        return jax.grad(lambda t: upsampled_cross_entropy(t, y, align_corners=False))(x)

    for seed in range(3):
        grad(*_logits_labels(2, 4, 4, 16, 16, 3, seed=seed))
    assert len(traces) == 1
    grad(*_logits_labels(2, 5, 4, 20, 16, 3))
    assert len(traces) == 2


def test_objective_needs_align_corners_for_head_resolution_logits():
    from msc_seg.models.outputs import SegOutputs

    logits, labels = _logits_labels(1, 4, 4, 16, 16, 3)
    objective = make_objective()
    with pytest.raises(ValueError, match="align_corners"):
        objective(SegOutputs(logits, None, ()), labels, jax.random.key(0))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_leaves_its_logits_at_head_resolution_for_the_loss(family):
    factory, (h, w) = FAMILIES[family]
    model = nnx.eval_shape(lambda: factory("none", nnx.Rngs(0)))
    images = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    seen = []

    def forward(m, x):
        outputs, align_corners = forward_for_loss(m, x, True)
        seen.append(align_corners)
        return outputs

    outputs = nnx.eval_shape(forward, model, images)
    full = nnx.eval_shape(lambda m, x: m(x, train=True), model, images)
    assert seen == [model.align_corners]
    assert full.logits.shape == (2, h, w, 3)
    for head, up in [(outputs.logits, full.logits), (outputs.aux_logits, full.aux_logits)]:
        if up is None:
            assert head is None
            continue
        assert head.dtype == jnp.float32 and head.shape[0] == 2 and head.shape[3] == 3
        assert head.shape[1] < h and head.shape[2] < w


def test_head_resolution_objective_equals_full_resolution_objective():
    """Loss and parameter gradients of UPerNet-Swin (main + aux CE, class weights)."""
    factory, (h, w) = FAMILIES["upernet"]
    model = build_random(lambda rngs: factory("none", rngs))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, h, w, 3)), jnp.float32)
    _, labels = _logits_labels(2, 1, 1, h, w, 3, seed=2)
    objective = make_objective(aux_weight=0.4, class_weights=(1.0, 0.5, 2.0))

    @jax.jit
    def both(params):
        def loss(params, head_resolution):
            m = nnx.merge(graphdef, params, rest, copy=True)
            if head_resolution:
                outputs, align_corners = forward_for_loss(m, images, False)
            else:
                outputs, align_corners = m(images, train=True), None
            return objective(outputs, labels, jax.random.key(0), align_corners=align_corners)[0]

        return [jax.value_and_grad(loss)(params, mode) for mode in (True, False)]

    (fused_loss, fused_grads), (ref_loss, ref_grads) = both(params)
    np.testing.assert_allclose(float(fused_loss), float(ref_loss), rtol=1e-5)
    scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(ref_grads))
    for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5 * scale)
