"""Tiling helpers of the blocked InfoNCE kernels (losses/contrastive.py, losses/within_scale.py).

Sets of N slots ([G,N,...] arrays, valid slots a prefix of each group) are cut into blocks of a
static length; loops run only to the largest valid extent over groups (a dynamic trip count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TINY = 1e-30  # keeps log() and 1/x finite for pathological tiny temperatures


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def block_length(n: int, target: int) -> int:
    """Block length for n slots: a multiple of 8 in (target/2, target] dividing n if there is one
    (no padding copy), else the multiple of 8 that tiles n with the least padding."""
    target = max(8, min(target, round_up(n, 8)))
    for length in range(target - target % 8, target // 2, -8):
        if n % length == 0:
            return length
    num_blocks = -(-n // target)
    return round_up(-(-n // num_blocks), 8)


def _varying_axes(x: jax.Array) -> frozenset:
    """The manual mesh axes x varies over inside `shard_map` (empty elsewhere)."""
    aval = jax.typeof(x)
    if hasattr(aval, "vma"):  # older jax
        return frozenset(aval.vma)
    manual = getattr(aval, "manual_axis_type", None)
    return frozenset(getattr(manual, "varying", ()))


def varying_like(x: jax.Array, *refs: jax.Array) -> jax.Array:
    """x marked as varying over every manual mesh axis any of refs varies over.

    Under `shard_map` a loop carry that starts as a constant but is updated from per-device data
    must be declared device-varying up front; elsewhere this is the identity.
    """
    missing = frozenset().union(*map(_varying_axes, refs)) - _varying_axes(x)
    return jax.lax.pcast(x, tuple(sorted(missing)), to="varying") if missing else x


def extent(valid: jax.Array) -> jax.Array:
    """1 + the largest valid slot index over all groups (0 when nothing is valid). valid [G,N]."""
    slots = jnp.arange(1, valid.shape[-1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(valid, slots, 0))


def pad_rows(x: jax.Array, size: int, value) -> jax.Array:
    """x [G,N,...] padded with `value` to [G,size,...]."""
    pad = size - x.shape[1]
    if pad == 0:
        return x
    widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, widths, constant_values=value)
