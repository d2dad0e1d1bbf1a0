"""models/ordering: `after` ties x to a scalar so that XLA cannot compute it before that scalar
(the tie must survive XLA's simplifier); `backward_after` and `recompute_after_grad` move a
branch's backward pass later without changing any value or gradient."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msc_seg.models.ordering import after, backward_after, recompute_after_grad, zeros_after
from msc_seg.models.projector import make_projectors, project_taps


def test_after_returns_x_for_a_number_and_nan_for_nan():
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(after(x, jnp.float32(-3.5)), x)
    assert np.isnan(np.asarray(after(x, jnp.float32(np.nan)))).all()


def test_the_tie_to_the_scalar_survives_xla_optimisation():
    """In the optimised program, x's value still reads the scalar: it cannot be hoisted."""

    def f(w, g):
        return after(w * 2.0, g[0]) + 1.0

    hlo = jax.jit(f).lower(jnp.ones((4, 4)), jnp.ones((3,))).compile().as_text()
    assert "compare(" in hlo, hlo


def test_zeros_after_are_zeros_whatever_the_value_holds_nan_included():
    for value in (jnp.arange(3.0), jnp.full((2, 2), jnp.nan), jnp.array([7, 0], jnp.int32)):
        for dtype in (jnp.float32, jnp.bfloat16, jnp.int32):
            z = zeros_after((2, 3), dtype, value)
            assert z.dtype == dtype and z.shape == (2, 3)
            np.testing.assert_array_equal(np.asarray(z, np.float32), np.zeros((2, 3)))


def test_the_zero_buffer_stays_tied_to_its_value_in_the_optimised_program():
    """The buffer reads the value (a compare XLA keeps), so it cannot be made before it."""

    def f(x):
        buf = zeros_after((8, 4), jnp.float32, x)
        return jax.lax.fori_loop(0, 8, lambda i, b: b.at[i].set(x[i] * 2.0), buf)

    hlo = jax.jit(f).lower(jnp.ones((8, 4))).compile().as_text()
    # the tie: a value compared with itself for equality (the loop's condition compares i, 8)
    assert re.search(r"compare\((%[\w.]+), \1\), direction=EQ", hlo), hlo


def test_backward_after_changes_no_value_or_gradient():
    x = {"a": jnp.arange(4.0), "b": jnp.ones((2, 2))}
    y = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)

    def loss(x, y, tie):
        if tie:
            x, y = backward_after(x, y)
        return jnp.sum(jnp.sin(x["a"])) + jnp.sum(x["b"] ** 2) * jnp.sum(y**3)

    plain = jax.grad(loss, argnums=(0, 1))(x, y, False)
    tied = jax.grad(loss, argnums=(0, 1))(x, y, True)
    jax.tree.map(np.testing.assert_array_equal, tied, plain)


def test_the_backward_tie_waits_for_the_other_gradient_in_the_optimised_program():
    """x's gradient reads y's gradient: XLA keeps the compare that ties them."""

    def loss(x, y):
        x, y = backward_after(x, y)
        return jnp.sum(x**2) + jnp.sum(jnp.cos(y))

    hlo = jax.jit(jax.grad(loss)).lower(jnp.ones((4,)), jnp.ones((3,))).compile().as_text()
    assert "compare(" in hlo, hlo


def test_recompute_after_grad_gives_the_same_outputs_and_gradients():
    w, x = jnp.arange(6.0).reshape(3, 2) / 5, jnp.linspace(0.0, 1.0, 12).reshape(4, 3)

    def fn(w, x):
        h = jax.nn.relu(x @ w)
        return h * 2.0, {"mean": h.mean(0)}

    def loss(w, x, wrapped):
        out, stats = recompute_after_grad(fn, w, x) if wrapped else fn(w, x)
        return jnp.sum(out**2) + jnp.sum(stats["mean"])

    np.testing.assert_array_equal(recompute_after_grad(fn, w, x)[0], fn(w, x)[0])
    for argnums in (0, 1):
        np.testing.assert_allclose(
            jax.grad(loss, argnums)(w, x, True), jax.grad(loss, argnums)(w, x, False), rtol=1e-6
        )


def test_recomputed_projectors_equal_plain_ones_in_outputs_gradients_and_statistics():
    """project_taps(recompute_late=True) (UPerNet's training path) against the plain projectors."""
    taps = [jax.random.normal(jax.random.key(i), (2, 8 // 2**i, 8 // 2**i, 6)) for i in range(2)]

    def run(recompute):
        projectors = make_projectors([6, 6], 4, True, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(projectors, nnx.Param, ...)

        def loss(params, taps, rest):
            module = nnx.merge(graphdef, params, rest, copy=True)
            out = project_taps(module, taps, True, True, recompute_late=recompute)
            value = sum(jnp.sum(jnp.tanh(o) * (i + 1)) for i, o in enumerate(out))
            return value, (out, nnx.split(module, nnx.Param, ...)[2])

        return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, taps, rest)

    (g_params, g_taps), (out, stats) = run(True)
    (r_params, r_taps), (r_out, r_stats) = run(False)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    jax.tree.map(close, out, r_out)
    jax.tree.map(close, stats, r_stats)
    jax.tree.map(close, g_params, r_params)
    jax.tree.map(close, g_taps, r_taps)
