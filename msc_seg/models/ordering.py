"""Ordering hints for XLA's scheduler that survive its simplifier."""

from __future__ import annotations

import jax.numpy as jnp


def after(x, dep):
    """x, made to depend on the scalar `dep` (x where dep is a number, NaN where dep is NaN):
    XLA then cannot compute it before dep exists. Why: XLA's scheduler computes values that
    depend only on the parameters (a flipped kernel, Winograd's transformed kernel, a loop's
    zero-filled output) wherever it likes, and for the backward pass it put several of them
    before the forward pass's end, the step's peak (UPerNet-Swin-T: ~200 MiB). Tied to a
    scalar of the output gradient they wait for the backward pass. A float compared with
    itself cannot be simplified away (NaN != NaN), so the tie survives XLA's optimisation
    (tests/test_ordering.py)."""
    dep = dep.astype(x.dtype)
    return jnp.where(dep == dep, x, dep)
