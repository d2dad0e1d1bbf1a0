"""Ordering hints for XLA's scheduler that survive its simplifier."""

from __future__ import annotations

import jax
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


def zeros_after(shape, dtype, value: jax.Array) -> jax.Array:
    """jnp.zeros(shape, dtype), made once `value` (any array) exists, whatever it holds.

    Why: a loop's zero-filled buffer (a scan's output, a gradient accumulator) depends on
    nothing, and XLA CPU's scheduler made several at the start of the step and held them through
    the forward pass's end, the peak (UPerNet-Swin-T: ~0.3 GiB; benchmarks/README.md, "Zero
    buffers"). Tied to the loop's input they are made when the loop runs. The tie reads
    isnan(first element), a 0/1 that is never NaN, so a NaN in `value` does not spread."""
    # The tie is made on a float scalar: a compare of integers with themselves is simplified.
    return jnp.full(shape, after(jnp.zeros((), jnp.float32), first_flag(value)).astype(dtype))


def first_flag(value: jax.Array) -> jax.Array:
    """A float32 0/1 scalar read from value's first element, never NaN: `after(x,
    first_flag(v))` makes x wait for v without a NaN in v reaching x."""
    first = value.reshape(-1)[0]
    flag = jnp.isnan(first) if jnp.issubdtype(first.dtype, jnp.inexact) else first != 0
    return flag.astype(jnp.float32)


@jax.custom_vjp
def backward_after(x, y):
    """(x, y) unchanged; in the backward pass x's gradient waits for y's.

    x: any pytree, y: an array. Why: a branch whose gradient depends only on the loss (the
    contrastive projectors) is otherwise back-propagated as soon as the loss's gradient exists,
    i.e. at the forward pass's end, the step's memory peak, and its buffers add to it. Tied
    to the gradient of a tensor the main path reaches late, it runs after the main path has
    freed its largest activations."""
    return x, y


def _backward_after_fwd(x, y):
    return (x, y), None


def _backward_after_bwd(_, grads):
    gx, gy = grads
    dep = gy.reshape(-1)[0]
    return jax.tree.map(lambda g: after(g, dep), gx), gy


backward_after.defvjp(_backward_after_fwd, _backward_after_bwd)


def recompute_after_grad(fn, *args):
    """fn(*args), recomputed in the backward pass only once its output's gradient exists.

    args and fn's outputs: pytrees of float arrays. `jax.checkpoint` also recomputes, but XLA
    may schedule the recomputation anywhere, and put it at the forward pass's end (the peak);
    here the inputs of the recomputation are tied to the output gradient (`after`), so it
    runs where that gradient is computed (with `backward_after`: late in the backward pass)."""

    @jax.custom_vjp
    def run(*args):
        return fn(*args)

    def run_fwd(*args):
        return fn(*args), args

    def run_bwd(args, g):
        dep = jax.tree.leaves(g)[0].reshape(-1)[0]
        args = jax.tree.map(lambda a: after(a, dep), args)
        return jax.vjp(fn, *args)[1](g)

    run.defvjp(run_fwd, run_bwd)
    return run(*args)
