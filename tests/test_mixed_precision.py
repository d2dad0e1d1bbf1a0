"""`model.dtype=bfloat16`: bfloat16 convolutions, float32 parameters, BN statistics and outputs."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msc_seg import config_lib, train, train_state
from msc_seg import mesh as mesh_lib
from msc_seg.train_step import make_train_step

K = 5
FAMILIES = {
    "upernet": "swin_micro_test",
    "deeplabv3": "resnet_tiny_test",
    "hrnet": "hrnet_tiny_test",
    "ocrnet": "hrnet_tiny_test",
}


def tiny_config(model: str, dtype: str):
    c = config_lib.base_config()
    c.model.name = model
    c.model.backbone = FAMILIES[model]
    c.model.dtype = dtype
    c.model.window_size = 4
    c.model.embedding_dim = 16
    c.model.decoder_channels = 32
    c.model.aux_channels = 16
    c.model.aspp_channels = 16
    c.model.ocr_channels = 32
    c.model.ocr_key_channels = 16
    c.loss.contrastive.weight = 0.1
    c.loss.contrastive.images_per_group = 2
    c.loss.contrastive.max_features_total = 256
    c.loss.contrastive.max_views_per_class = 32
    num_scales = len(c.model.taps) if model == "deeplabv3" else 4
    c.loss.contrastive.scale_weights = (1.0, 0.7, 0.4, 0.1)[:num_scales]
    c.batch_size = 2
    c.dataset.crop_size = (64, 64)
    return c


def conv_operand_dtypes(model, images) -> set:
    """dtypes of the lhs operand of every convolution in the traced forward pass."""

    graphdef, state = nnx.split(model)

    def forward(state, x):  # merged inside the trace: the model's variables stay untouched
        return nnx.merge(graphdef, state)(x, train=True, return_embeddings=True)

    jaxpr = jax.make_jaxpr(forward)(state, images)
    dtypes = set()

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                dtypes.add(eqn.invars[0].aval.dtype)
            for param in eqn.params.values():  # nested jaxprs: scans, remat, custom_vjp
                for sub in param if isinstance(param, (list, tuple)) else (param,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(jaxpr.jaxpr)
    return dtypes


@pytest.mark.parametrize("model_name", sorted(FAMILIES))
def test_bfloat16_model_convolves_in_bfloat16_and_keeps_float32_state_and_outputs(model_name):
    config = tiny_config(model_name, "bfloat16")
    model = nnx.eval_shape(lambda k: train_state.make_model(config, K, k), jax.random.key(0))
    for kind in (nnx.Param, nnx.BatchStat):
        flat = nnx.to_flat_state(nnx.state(model, kind))
        assert flat and {v.get_value().dtype for _, v in flat} == {jnp.dtype(jnp.float32)}
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    assert jnp.dtype(jnp.bfloat16) in conv_operand_dtypes(model, images)
    out = nnx.eval_shape(lambda m, x: m(x, train=True, return_embeddings=True), model, images)
    assert out.logits.dtype == jnp.float32
    assert out.aux_logits is None or out.aux_logits.dtype == jnp.float32
    # The contrastive path (projector outputs -> loss) is float32.
    assert out.embeddings and all(e.dtype == jnp.float32 for e in out.embeddings)


def test_bfloat16_train_step_matches_float32_loss_closely_and_updates_float32_params():
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config("deeplabv3", dtype)
        tx_builder = train_state.make_tx_builder(config)
        model_def, create, _ = train_state.make_state_factory(
            config, K, mesh_lib.make_mesh(1), tx_builder
        )
        state = create()  # one jitted init instead of an eager compile per initialiser
        tx = tx_builder(state.params)
        step = make_train_step(
            model_def,
            tx,
            tx_builder.schedule,
            aux_weight=0.0,
            contrastive_weight=0.1,
            contrastive_kwargs=train.contrastive_kwargs(config, K),
        )
        rng_np = np.random.default_rng(0)
        batch = {
            "image": jnp.asarray(rng_np.normal(size=(2, 32, 32, 3)), jnp.float32),
            "label": jnp.asarray(np.kron(rng_np.integers(0, K, (2, 4, 4)), np.ones((8, 8)))),
        }
        batch["label"] = batch["label"].astype(jnp.int32)
        new_state, metrics = jax.jit(step)(state, batch, jax.random.key(0))
        assert float(metrics["nonfinite"]) == 0.0
        assert {x.dtype for x in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
        losses[dtype] = float(metrics["loss"])
    # Same weights, same batch: bfloat16 compute moves the loss by rounding only.
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)
