"""The TrainState pytree and its creation directly on the devices.

The NNX model is split once into a static graph definition and three kinds of state:
  params       (nnx.Param)                     -- optimised, checkpointed
  batch_stats  (every other non-RNG variable: BatchNorm running statistics) -- checkpointed
  rng          (nnx RNG keys/counts for dropout) -- NOT checkpointed: the train step reseeds it
               from (seed, step) every step, so a resumed run draws the same dropout masks as an
               unbroken one.
Nothing here reads a config: `experiment.py` passes the model builder and the optimizer in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from msc_seg import mesh as mesh_lib

RNG_FILTER = nnx.RngState


@flax.struct.dataclass
class TrainState:
    """step: int32 []; params / batch_stats: nnx.State; opt_state: optax state of params."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static half of the split model; merged with a TrainState's params/rest it is a model."""

    graphdef: Any
    rng: Any  # concrete RNG state template; the train step reseeds its keys every step

    def merge(self, params, batch_stats) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rng, batch_stats, copy=True)

    def apply(self, state: TrainState) -> nnx.Module:
        """The model holding `state`'s parameters and statistics."""
        return self.merge(state.params, state.batch_stats)


def split_model(model: nnx.Module):
    """-> graphdef, params, batch_stats, rng (see the module docstring)."""
    graphdef, params, rng, batch_stats = nnx.split(model, nnx.Param, RNG_FILTER, ...)
    return graphdef, params, batch_stats, rng


def make_state_factory(
    build_model: Callable[[jax.Array], nnx.Module],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    seed: int,
) -> tuple[ModelDef, Callable[[], TrainState], TrainState]:
    """-> (model definition, jitted creator of a replicated TrainState, its abstract shape).

    build_model(key) -> the initialised model (traced under jit: parameters are built directly
    on the devices, replicated over the mesh); tx: the optimizer; seed: the initialisation seed.
    """
    key = jax.random.key(int(seed))

    def build(key) -> TrainState:
        _, params, batch_stats, _ = split_model(build_model(key))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
        )

    graphdef, _, _, rng = split_model(nnx.eval_shape(build_model, key))
    # The RNG template must hold real keys (merge needs values); they are overwritten every step.
    rng = jax.tree.map(
        lambda x: (
            jax.random.key(0)
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            else jnp.zeros(x.shape, x.dtype)
        ),
        rng,
    )
    replicated = mesh_lib.replicated_sharding(mesh)
    abstract_state = jax.eval_shape(build, key)
    shardings = jax.tree.map(lambda _: replicated, abstract_state)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )
    jitted = jax.jit(build, out_shardings=shardings)
    return ModelDef(graphdef, rng), lambda: jitted(key), abstract_state


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def is_finite_tree(tree) -> jax.Array:
    """bool []: every floating leaf of `tree` is free of NaN and inf."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
