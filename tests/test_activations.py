"""`gelu_exact` (PyTorch's erf GELU with a hand-written VJP) equals jax.nn.gelu's erf form and
its autodiff gradient, and PyTorch's GELU, in float32 and bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msc_seg.models.layers import gelu_exact

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
