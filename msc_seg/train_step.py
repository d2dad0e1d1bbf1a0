"""The pure train step: (state, batch, key) -> (state, metrics); experiment.py jits it."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from msc_seg.losses.total import Objective
from msc_seg.train_state import ModelDef, TrainState, is_finite_tree, split_model


def make_train_step(
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    objective: Objective,
    *,
    schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """Builds the train step.

    batch: {'image': float32 [B,H,W,3], 'label': int32 [B,H,W]} (global arrays sharded on `data`);
    key: the run's base key; per-step randomness is fold_in(key, step), so it does not depend on
    how the run was interrupted and resumed. objective(outputs, labels, key, align_corners=...)
    -> (loss, metrics); the model returns embeddings when `objective.needs_embeddings` and its
    logits at the head's resolution where it can (`forward_for_loss`). schedule: logged as
    metrics['learning_rate'] when given.
    Non-finite guard: when the loss or any gradient is NaN/inf the step returns the incoming state
    unchanged (step not advanced) with metrics['nonfinite'] = 1; the host stops the run.
    """
    want_embeddings = objective.needs_embeddings

    def step_fn(state: TrainState, batch: dict, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)
        dropout_key, sample_key = jax.random.split(step_key)

        def loss_fn(params):
            model = model_def.merge(params, state.batch_stats)
            nnx.reseed(model, dropout=dropout_key)
            outputs, align_corners = forward_for_loss(model, batch["image"], want_embeddings)
            loss, metrics = objective(
                outputs, batch["label"], sample_key, align_corners=align_corners
            )
            _, _, new_batch_stats, _ = split_model(model)
            return loss, (metrics, new_batch_stats)

        (loss, (metrics, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & is_finite_tree(grads)
        new_state = TrainState(
            step=state.step + 1,
            params=new_params,
            batch_stats=new_batch_stats,
            opt_state=new_opt_state,
        )
        # Keep the last good state when anything is non-finite: nothing corrupt can be saved.
        # One cond, not a per-leaf `where`: selects that all wait on one scalar reduced from every
        # gradient made XLA CPU's fusion pass take > 10 min on HRNet-W48's 941 leaves (~30 s with
        # the cond; benchmarks/train_compile.py --guard where|cond).
        new_state = jax.lax.cond(finite, lambda: new_state, lambda: state)
        metrics = dict(metrics)
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["nonfinite"] = (~finite).astype(jnp.float32)
        return new_state, metrics

    return step_fn


def forward_for_loss(model, images: jax.Array, return_embeddings: bool):
    """The training forward: -> (SegOutputs, the model's align_corners or None).

    A model that can leave its logits at the head's resolution (`upsample_logits=False`, every
    built-in segmentor) does, and the objective upsamples them inside the CE in chunks: the
    [B,H,W,K] logits, their softmax and gradient (1.2 GiB of temporaries for the main and aux
    heads at 2 x 512 x 512 x 150) are never held. Other models give full-size logits.
    """
    if "upsample_logits" in inspect.signature(model.__call__).parameters:
        outputs = model(
            images, train=True, return_embeddings=return_embeddings, upsample_logits=False
        )
        return outputs, model.align_corners
    return model(images, train=True, return_embeddings=return_embeddings), None
