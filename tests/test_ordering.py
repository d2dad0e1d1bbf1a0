"""models/ordering.after: x, tied to a scalar so that XLA cannot compute it before that scalar;
the tie must survive XLA's simplifier."""

import jax
import jax.numpy as jnp
import numpy as np

from msc_seg.models.ordering import after


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
