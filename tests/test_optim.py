"""Schedules and weight-decay masks against the reference formulas."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from msc_seg import optim


def reference_factor(t, total, warmup, ratio, power):
    # utils/lr_functions.py of the reference, restated
    if warmup and t <= warmup - 1:
        return 1 - (1 - (t + 1) / warmup) * (1 - ratio)
    return (1 - t / (total - 1)) ** power


@pytest.mark.parametrize("warmup,power", [(0, 0.9), (15, 1.0)])
def test_schedule_matches_reference_lambda(warmup, power):
    total = 100
    sched = optim.make_warmup_poly_schedule(2.0, total, warmup_steps=warmup, poly_power=power)
    got = np.array([float(sched(t)) for t in range(total)])
    ref = 2.0 * np.array([reference_factor(t, total, warmup, 1e-6, power) for t in range(total)])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_schedule_keeps_the_reference_jump_after_warmup():
    sched = optim.make_warmup_poly_schedule(1.0, 160401, warmup_steps=1500)
    assert float(sched(1499)) == pytest.approx(1.0)
    assert float(sched(1500)) == pytest.approx(1 - 1500 / 160400, rel=1e-5)


def test_decay_mask_exempts_norms_and_position_tables():
    params = {
        "backbone": {
            "norm1": {"scale": jnp.ones(2)},
            "attn": {"relative_position_bias_table": jnp.ones(2), "qkv": {"kernel": jnp.ones(2)}},
        },
        "head": {"conv": {"bias": jnp.ones(2)}},
    }
    params["head"]["batch_norm"] = {"scale": jnp.ones(2)}
    mask = optim.make_decay_mask(params, ("^backbone/.*norm", "relative_position_bias_table"))
    assert mask["backbone"]["norm1"]["scale"] is False
    assert mask["backbone"]["attn"]["relative_position_bias_table"] is False
    assert mask["backbone"]["attn"]["qkv"]["kernel"] is True
    assert mask["head"]["conv"]["bias"] is True
    assert mask["head"]["batch_norm"]["scale"] is True  # the reference decays decoder BNs


def test_adamw_decays_only_masked_parameters_like_pytorch():
    params = {"w": jnp.ones(3), "norm": jnp.ones(3)}
    tx = optim.make_optimizer("adamw", lambda _: 0.1, weight_decay=0.5, no_decay_patterns=("norm",))
    zero = {"w": jnp.zeros(3), "norm": jnp.zeros(3)}
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1 - 0.1 * 0.5)  # p <- p - lr * wd * p
    np.testing.assert_allclose(new["norm"], 1.0)


def test_sgd_adds_decay_to_the_gradient_before_momentum():
    params = {"w": jnp.ones(2)}
    tx = optim.make_optimizer("sgd", lambda _: 0.1, weight_decay=0.01, momentum=0.9)
    state = tx.init(params)
    g = {"w": jnp.full(2, 0.5)}
    upd, state = tx.update(g, state, params)
    np.testing.assert_allclose(upd["w"], -0.1 * (0.5 + 0.01))
