"""Running chains of repeated blocks: one `lax.scan` per run of identical blocks, and remat.

Compile size. A ResNet-101 layer3 holds 22 identical bottlenecks, an HRNet-W48 stage 3 four
identical multi-branch modules; unrolled, XLA compiles every copy (and its backward) separately.
`run_chain` runs each run of consecutive blocks with equal graph definitions (same structure,
shapes and static attributes) as one `jax.lax.scan` over their states, stacked at call time: the
program holds one copy of the block. The parameters stay where they are (one module per block,
the checkpoints' paths); stacking costs one copy of the run's parameters per call.

Remat. `remat` (a segmentor argument) is one of `REMAT_MODES`:
  "none"    keep every activation the backward needs (fastest, most memory);
  "blocks"  recompute each block (Swin block, ResNet bottleneck, HRNet module) in the backward,
            keeping only block inputs; the decode head is recomputed too;
  "stages"  the same per stage (Swin stage, ResNet layer, HRNet stage): least memory, and the
            stage's blocks are recomputed from the stage input.
Outputs and gradients do not change (up to float rounding); the backward costs about one more
forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.errors import ArgumentError

REMAT_MODES = ("none", "blocks", "stages")


def check_remat(remat: str) -> str:
    """`remat` if it is one of REMAT_MODES, else an ArgumentError naming it."""
    if remat not in REMAT_MODES:
        raise ArgumentError(
            "remat",
            remat,
            f"must be one of {REMAT_MODES} (recompute nothing, each block, or each stage in the "
            "backward pass)",
        )
    return remat


def call(fn: Callable[..., Any], *args, remat: bool = False):
    """`fn(*args)`, recomputed in the backward pass (`nnx.remat`) when `remat`.

    Modules must come in through `args` (not a closure) so that their state updates (BatchNorm
    statistics, RNG counters) leave the checkpointed region.
    """
    return nnx.remat(fn)(*args) if remat else fn(*args)


def _runs(graphdefs: Sequence[Any]) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive equal graph definitions."""
    runs, start = [], 0
    for i in range(1, len(graphdefs) + 1):
        if i == len(graphdefs) or graphdefs[i] != graphdefs[start]:
            runs.append((start, i))
            start = i
    return runs


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _scan_run(modules: Sequence[nnx.Module], graphdef, x, fn, remat: bool):
    # Parameters go in stacked and do not come out (the body cannot change them); the rest of
    # the state (BatchNorm statistics, RNG counters) comes out stacked and is written back with
    # static slices.
    splits = [nnx.split(m, nnx.Param, ...) for m in modules]
    params = _stack([p for _, p, _ in splits])
    rest = _stack([r for _, _, r in splits])

    def body(carry, xs):
        module = nnx.merge(graphdef, *xs)
        out = fn(module, carry)
        return out, nnx.split(module, nnx.Param, ...)[2]

    if remat:
        body = jax.checkpoint(body)
    x, new_rest = jax.lax.scan(body, x, (params, rest))
    for i, m in enumerate(modules):
        nnx.update(m, jax.tree.map(lambda a, i=i: jax.lax.index_in_dim(a, i, 0, False), new_rest))
    return x


def run_chain(
    modules: Sequence[nnx.Module],
    x,
    fn: Callable[[nnx.Module, Any], Any],
    *,
    scan: bool = True,
    remat: bool = False,
):
    """`x -> fn(modules[-1], ... fn(modules[1], fn(modules[0], x)))`.

    x may be any pytree whose structure and shapes each block keeps (e.g. HRNet's list of
    branches). scan: runs of >= 2 consecutive modules with equal graph definitions become one
    `lax.scan`; False unrolls (same numbers). remat: recompute each block in the backward.
    """
    modules = list(modules)
    if not scan:
        for m in modules:
            x = call(fn, m, x, remat=remat)
        return x
    graphdefs = [nnx.graphdef(m) for m in modules]
    for start, end in _runs(graphdefs):
        if end - start == 1:
            x = call(fn, modules[start], x, remat=remat)
        else:
            x = _scan_run(modules[start:end], graphdefs[start], x, fn, remat)
    return x


__all__ = ["REMAT_MODES", "call", "check_remat", "run_chain"]
