"""The layers with hand-written VJPs (fewer residuals than autodiff) equal what they replace:
`gelu_exact` equals jax.nn.gelu's erf form and PyTorch's GELU, `LayerNorm` equals nnx.LayerNorm
and PyTorch's, `ConvModule`'s training BatchNorm + ReLU equals nnx.BatchNorm then ReLU (values,
gradients, running statistics), in float32 and bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msc_seg.models.layers import ConvModule, LayerNorm, gelu_exact
from msc_seg.models.projector import Projector

X = np.concatenate([np.linspace(-12, 12, 2001), [-40.0, -6.5, 0.0, 1e-8, 6.5, 40.0]]).astype(
    np.float32
)


def test_gelu_exact_equals_jax_erf_gelu_in_value_and_gradient():
    x = jnp.asarray(X)
    g = jnp.asarray(np.random.default_rng(0).standard_normal(X.shape), jnp.float32)
    ref = lambda t: jax.nn.gelu(t, approximate=False)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(gelu_exact(x)), np.asarray(ref(x)))
    ours = jax.vjp(gelu_exact, x)[1](g)[0]
    theirs = jax.vjp(ref, x)[1](g)[0]
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=2e-6, atol=1e-7)


def test_gelu_exact_gradient_keeps_bfloat16():
    x = jnp.asarray(X, jnp.bfloat16)
    grad = jax.grad(lambda t: jnp.sum(gelu_exact(t).astype(jnp.float32)))(x)
    assert grad.dtype == jnp.bfloat16
    ref = jax.grad(lambda t: jnp.sum(gelu_exact(t)))(jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(ref), rtol=1e-2, atol=1e-2)


def test_gelu_exact_equals_torch_gelu():
    torch = pytest.importorskip("torch")
    t = torch.tensor(X, requires_grad=True)
    y = torch.nn.functional.gelu(t)
    y.sum().backward()
    np.testing.assert_allclose(
        np.asarray(gelu_exact(jnp.asarray(X))), y.detach().numpy(), atol=1e-6
    )
    grad = jax.grad(lambda v: jnp.sum(gelu_exact(v)))(jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(grad), t.grad.numpy(), rtol=1e-5, atol=1e-6)


def _norms(dtype=None, features=6):
    ours = LayerNorm(features, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
    ref = nnx.LayerNorm(features, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for m in (ours, ref):
        m.scale[...] = jnp.asarray(rng.standard_normal(features), jnp.float32)
        m.bias[...] = jnp.asarray(rng.standard_normal(features), jnp.float32)
        rng = np.random.default_rng(1)
    return ours, ref


def _uses_custom_vjp(fn, *args) -> bool:
    """Whether fn's program goes through a hand-written VJP (not nnx's composed ops): the
    comparisons below would also pass if the layer silently fell back to nnx."""
    return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


def _value_and_grads(norm, x, g):
    graphdef, params = nnx.split(norm)

    def f(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x).astype(jnp.float32) * g)

    y = nnx.merge(graphdef, params)(x)
    return y, jax.grad(f, argnums=(0, 1))(params, x)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_layer_norm_equals_nnx_layer_norm_in_value_and_gradients(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(3 + 2 * rng.standard_normal((2, 5, 4, 6)), dtype or jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 5, 4, 6)), jnp.float32)
    ours, ref = _norms(dtype)
    assert _uses_custom_vjp(lambda x: ours(x), x)
    assert not _uses_custom_vjp(lambda x: ref(x), x)
    (y, (dp, dx)), (y_ref, (dp_ref, dx_ref)) = (_value_and_grads(m, x, g) for m in (ours, ref))
    tol = dict(rtol=2e-2, atol=2e-2) if dtype else dict(rtol=1e-5, atol=1e-5)
    assert y.dtype == y_ref.dtype and dx.dtype == dx_ref.dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), **tol)
    np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32), **tol)
    for a, b in zip(jax.tree.leaves(dp), jax.tree.leaves(dp_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol)


def test_layer_norm_equals_torch_layer_norm():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (3 + 2 * rng.standard_normal((2, 5, 4, 6))).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    ours, _ = _norms()
    tn = torch.nn.LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        tn.weight.copy_(torch.tensor(np.asarray(ours.scale[...])))
        tn.bias.copy_(torch.tensor(np.asarray(ours.bias[...])))
    tx = torch.tensor(x, requires_grad=True)
    (tn(tx) * torch.tensor(g)).sum().backward()
    y, (dp, dx) = _value_and_grads(ours, jnp.asarray(x), jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(y), tn(tx).detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dp["scale"][...]), tn.weight.grad.numpy(), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(dp["bias"][...]), tn.bias.grad.numpy(), rtol=1e-5)


def _conv_module_reference(m, x):  # the composed nnx path
    y = m.batch_norm(m.conv(x), use_running_average=False)
    return jax.nn.relu(y) if m.use_act else y


def _projector_reference(m, x):
    y = m.norm(jax.nn.relu(m.conv1(x)), use_running_average=False)
    return m.conv2(y)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["conv_bn_relu", "conv_bn", "projector"])
def test_training_batch_norm_equals_nnx_batch_norm(kind, dtype):
    """Outputs, gradients (params and input) and updated running statistics."""
    rngs = nnx.Rngs(0)
    if kind == "projector":
        module = Projector(4, 6, dtype=dtype, rngs=rngs)
        reference, norm, out, norm_channels = _projector_reference, module.norm, 6, 4
    else:
        module = ConvModule(4, 6, 3, use_act=kind == "conv_bn_relu", dtype=dtype, rngs=rngs)
        reference, norm, out, norm_channels = _conv_module_reference, module.batch_norm, 6, 6
    rng = np.random.default_rng(0)
    norm.scale[...] = jnp.asarray(rng.standard_normal(norm_channels), jnp.float32)
    norm.bias[...] = jnp.asarray(rng.standard_normal(norm_channels), jnp.float32)
    x = jnp.asarray(2 + rng.standard_normal((2, 7, 5, 4)), dtype)
    g = jnp.asarray(rng.standard_normal((2, 7, 5, out)), jnp.float32)

    def run(forward):
        graphdef, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)

        def loss(params, x):
            m = nnx.merge(graphdef, params, stats, copy=True)
            y = forward(m, x)
            return jnp.sum(y.astype(jnp.float32) * g), (y, nnx.state(m, nnx.BatchStat))

        (_, (y, new_stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            params, x
        )
        return y, grads, new_stats

    assert _uses_custom_vjp(lambda x: nnx.clone(module)(x, train=True), x)
    assert not _uses_custom_vjp(lambda x: reference(nnx.clone(module), x), x)
    ours = run(lambda m, x: m(x, train=True))
    ref = run(reference)
    # nnx normalises bfloat16 inputs in bfloat16 arithmetic (x - mean at |x| ~ 10 has an ulp of
    # 0.06), ours in float32: the bfloat16 tolerance is a few of nnx's ulps.
    tol = dict(rtol=5e-2, atol=0.15) if dtype == jnp.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    assert ours[0].dtype == ref[0].dtype == dtype
    if kind == "conv_bn_relu":
        assert float(jnp.mean(ours[0] > 0)) not in (0.0, 1.0)  # the ReLU clips some values
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)
