"""Optimisers, learning-rate schedules and weight-decay masks (spec/method.md section 12)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def make_warmup_poly_schedule(
    base_lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    warmup_init_ratio: float = 1e-6,
    poly_power: float = 1.0,
    end_lr: float = 0.0,
) -> optax.Schedule:
    """The reference's per-iteration LambdaLR schedule (`utils/lr_functions.py`).

    The learning rate of update t (0-based) is base_lr * factor(t) with
      warm-up (t < W):  factor = 1 - (1 - (t + 1) / W) * (1 - warmup_init_ratio)
      poly (t >= W):    factor = (1 - t / (T - 1)) ** poly_power   (global t, as the reference:
                        this leaves its small jump at t = W, ~1.0 -> 1 - W / T)
    then floored at end_lr. optax calls the schedule with the number of updates already made,
    which is exactly the reference's t (LambdaLR is stepped after every optimizer step).
    """
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
    params,
    *,
    weight_decay: float,
    no_decay_patterns: Sequence[str] = (),
    b1: float = 0.9,
    b2: float = 0.999,
    momentum: float = 0.9,
    grad_clip_norm: float = 0.0,
) -> optax.GradientTransformation:
    """SGD (PyTorch semantics: decay added to the gradient before momentum) or AdamW (decoupled).

    `params` is only used to build the weight-decay mask by parameter path.
    """
    mask = make_decay_mask(params, no_decay_patterns)
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
        raise ValueError(f"optimizer.name={name!r}: must be 'sgd' or 'adamw'")
    if grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx
