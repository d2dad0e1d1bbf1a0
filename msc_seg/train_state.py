"""The TrainState pytree and its creation directly on the devices.

The NNX model is split once into a static graph definition and three kinds of state:
  params  (nnx.Param)            -- optimised, checkpointed
  rest    (everything else but RNG state, e.g. BatchNorm statistics) -- checkpointed
  rng     (nnx RNG keys/counts for dropout)  -- NOT checkpointed: the train step reseeds it from
          (seed, step) every step, so a resumed run draws the same dropout masks as an unbroken one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from msc_seg import mesh as mesh_lib
from msc_seg import optim

RNG_FILTER = nnx.RngState


@flax.struct.dataclass
class TrainState:
    """step: int32 []; params / rest: nnx.State; opt_state: optax state of params."""

    step: jax.Array
    params: Any
    rest: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static half of the split model; merged with a TrainState's params/rest it is a model."""

    graphdef: Any
    rng: Any  # concrete RNG state template; the train step reseeds its keys every step

    def merge(self, params, rest) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rng, rest, copy=True)


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
    """Constructor arguments of the configured segmentor (the only config -> model mapping)."""
    m = config.model
    contrastive_on = config.loss.contrastive.weight > 0
    kwargs = dict(
        num_classes=num_classes,
        backbone=m.backbone,
        embedding_dim=m.embedding_dim,
        use_projectors=contrastive_on,
        dtype=jnp.dtype(m.dtype),
        param_dtype=jnp.float32,
    )
    if m.name == "upernet":
        kwargs.update(
            decoder_channels=m.decoder_channels,
            aux_channels=m.aux_channels,
            aux_in_index=m.aux_in_index,
            dropout=m.dropout,
            drop_path_rate=m.drop_path_rate,
            window_size=m.window_size,
            projector_position=m.projector_position,
            use_aux=config.loss.aux_weight > 0,
            align_corners=m.align_corners,
        )
    elif m.name == "deeplabv3":
        kwargs.update(
            output_stride=m.output_stride,
            aspp_channels=m.aspp_channels,
            aspp_dilations=tuple(m.aspp_dilations) or None,
            taps=tuple(m.taps),
            align_corners=m.align_corners,
        )
    elif m.name == "hrnet":
        kwargs.update(reference_head=m.reference_head, align_corners=m.align_corners)
    elif m.name == "ocrnet":
        kwargs.update(
            ocr_channels=m.ocr_channels,
            key_channels=m.ocr_key_channels,
            dropout=m.dropout,
            official_aux_head=m.official_aux_head,
            align_corners=m.align_corners,
        )
    return kwargs


def make_model(config: ml_collections.ConfigDict, num_classes: int, key: jax.Array) -> nnx.Module:
    """The configured segmentor, initialised from `key`.

    Under tracing (jit / eval_shape) only the key is traced: the RNG stream counters are kept
    concrete (`ensure_compile_time_eval`), otherwise flax's tracer checks on every counter update
    make building a large model take tens of seconds.
    """
    from msc_seg.models.segmentor import make_segmentor

    with jax.ensure_compile_time_eval():
        rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
        return make_segmentor(config.model.name, rngs=rngs, **model_kwargs(config, num_classes))


def split_model(model: nnx.Module):
    """-> graphdef, params, rest, rng (see the module docstring)."""
    return nnx.split(model, nnx.Param, RNG_FILTER, ...)


def make_state_factory(
    config: ml_collections.ConfigDict, num_classes: int, mesh: Mesh, tx_builder: Callable
) -> tuple[ModelDef, Callable[[], TrainState], TrainState]:
    """-> (model definition, jitted creator of a replicated TrainState, its abstract shape).

    tx_builder(params) -> optax.GradientTransformation (it needs params for the decay mask).
    The creator builds parameters directly on the devices, replicated over the mesh.
    """
    key = jax.random.key(int(config.seed))

    def build(key) -> TrainState:
        _, params, _, rest = split_model(make_model(config, num_classes, key))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            rest=rest,
            opt_state=tx_builder(params).init(params),
        )

    abstract_model = nnx.eval_shape(lambda k: make_model(config, num_classes, k), key)
    graphdef, abs_params, rng, _ = split_model(abstract_model)
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


def make_tx_builder(
    config: ml_collections.ConfigDict,
) -> Callable[[Any], optax.GradientTransformation]:
    o, s = config.optimizer, config.schedule
    schedule = optim.make_warmup_poly_schedule(
        o.learning_rate,
        config.total_steps,
        warmup_steps=s.warmup_steps,
        warmup_init_ratio=s.warmup_init_ratio,
        poly_power=s.poly_power,
        end_lr=s.end_learning_rate,
    )

    def build(params):
        return optim.make_optimizer(
            o.name,
            schedule,
            params,
            weight_decay=o.weight_decay,
            no_decay_patterns=o.no_decay_patterns,
            b1=o.b1,
            b2=o.b2,
            momentum=o.momentum,
            grad_clip_norm=o.grad_clip_norm,
        )

    build.schedule = schedule
    return build


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
