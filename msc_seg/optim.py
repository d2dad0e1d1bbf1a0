"""Optimisers, learning-rate schedules and weight-decay masks (the reference's recipes).

Config sections map one to one: `config.schedule` holds the keyword arguments of
`make_warmup_poly_schedule` (plus the run's total_steps), `config.optimizer` those of
`make_optimizer` (plus the schedule). The optimizer is built without parameters: its weight-decay
mask is a function of the parameters that optax calls when it needs it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from msc_seg.errors import ArgumentError

OPTIMIZERS = ("sgd", "adamw")


def make_warmup_poly_schedule(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    warmup_init_ratio: float = 1e-6,
    poly_power: float = 1.0,
    end_learning_rate: float = 0.0,
) -> optax.Schedule:
    """The reference's per-iteration LambdaLR schedule (`utils/lr_functions.py`).

    The learning rate of update t (0-based) is learning_rate * factor(t) with
      warm-up (t < W):  factor = 1 - (1 - (t + 1) / W) * (1 - warmup_init_ratio)
      poly (t >= W):    factor = (1 - t / (T - 1)) ** poly_power   (global t, as the reference:
                        this leaves its small jump at t = W, ~1.0 -> 1 - W / T)
    then floored at end_learning_rate. optax calls the schedule with the number of updates already
    made, which is exactly the reference's t (LambdaLR is stepped after every optimizer step).
    """
    if not learning_rate > 0:
        raise ArgumentError("learning_rate", learning_rate, "must be > 0")
    if not 0 <= warmup_steps < total_steps:
        raise ArgumentError(
            "warmup_steps", warmup_steps, f"must be in [0, total_steps={total_steps})"
        )
    base_lr, end_lr = learning_rate, end_learning_rate
    denom = max(total_steps - 1, 1)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        poly = jnp.clip(1.0 - t / denom, 0.0, 1.0) ** poly_power
        if warmup_steps > 0:
            warm = 1.0 - (1.0 - (t + 1.0) / warmup_steps) * (1.0 - warmup_init_ratio)
            factor = jnp.where(t < warmup_steps, warm, poly)
        else:
            factor = poly
        return jnp.maximum(base_lr * factor, end_lr)

    return schedule


def path_to_str(path) -> str:
    """A pytree key path as 'a/b/0/c' (used for weight-decay masks and logging)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def make_decay_mask(params, no_decay_patterns: Sequence[str]):
    """A pytree of bools like `params`: True where weight decay applies.

    A parameter is exempt when a regular expression of `no_decay_patterns` matches (re.search)
    its path 'a/b/c'. The reference's Swin recipe exempts parameters whose PyTorch name contains
    `absolute_pos_embed`, `relative_position_bias_table` or `norm`; its `norm`s are the Swin
    LayerNorms only (its decoder BatchNorms are decayed), hence `^backbone/.*norm` in the ADE20K
    config. SGD recipes decay everything (no patterns).
    """
    patterns = [re.compile(p) for p in no_decay_patterns]

    def decays(path, _):
        name = path_to_str(path)
        return not any(p.search(name) for p in patterns)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    name: str,
    schedule: optax.Schedule,
    *,
    weight_decay: float,
    no_decay_patterns: Sequence[str] = (),
    b1: float = 0.9,
    b2: float = 0.999,
    momentum: float = 0.9,
    grad_clip_norm: float = 0.0,
) -> optax.GradientTransformation:
    """SGD (PyTorch semantics: decay added to the gradient before momentum) or AdamW (decoupled).

    Built without parameters: the weight-decay mask (`make_decay_mask` by parameter path) is a
    function optax applies to the parameters it is given. grad_clip_norm > 0 clips the global
    gradient norm first.
    """
    patterns = tuple(no_decay_patterns)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ArgumentError(
                "no_decay_patterns", patterns, f"{pattern!r} is no regular expression ({e})"
            ) from None

    def mask(params):
        return make_decay_mask(params, patterns)

    if name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(weight_decay, mask=mask),
            optax.sgd(schedule, momentum=momentum),
        )
    elif name == "adamw":
        # PyTorch AdamW: p <- p - lr * wd * p, then the Adam step; optax applies lr * (adam + wd*p),
        # the same update since the Adam step does not depend on p.
        tx = optax.adamw(schedule, b1=b1, b2=b2, eps=1e-8, weight_decay=weight_decay, mask=mask)
    else:
        raise ArgumentError("name", name, f"must be one of {list(OPTIMIZERS)}")
    if grad_clip_norm < 0:
        raise ArgumentError("grad_clip_norm", grad_clip_norm, "must be >= 0 (0 = no clipping)")
    if grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx
