"""`model.dtype=bfloat16`: bfloat16 convolutions, float32 parameters, BN statistics and outputs."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from msc_seg import config_lib, experiment
from msc_seg import mesh as mesh_lib

K = 5
FAMILIES = {
    "upernet": "swin_micro_test",
    "deeplabv3": "resnet_tiny_test",
    "hrnet": "hrnet_tiny_test",
    "ocrnet": "hrnet_tiny_test",
}


def tiny_config(model: str, dtype: str):
    c = config_lib.base_config()
    sizes = {  # each model's own (tiny) arguments
        "upernet": dict(window_size=4, decoder_channels=32, aux_channels=16),
        "deeplabv3": dict(aspp_channels=16, taps=("layer1", "layer4")),
        "hrnet": {},
        "ocrnet": dict(ocr_channels=32, key_channels=16),
    }[model]
    c.model = ml_collections.ConfigDict(
        dict(name=model, backbone=FAMILIES[model], dtype=dtype, embedding_dim=16, **sizes)
    )
    c.loss.contrastive.weight = 0.1
    c.loss.contrastive.images_per_group = 2
    c.loss.contrastive.max_total = 256
    c.loss.contrastive.max_views = 32
    num_scales = len(c.model.taps) if model == "deeplabv3" else 4
    c.loss.contrastive.scale_weights = (1.0, 0.7, 0.4, 0.1)[:num_scales]
    c.batch_size = 2
    c.dataset.train.crop_size = (64, 64)
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
    model = experiment.abstract_model(config, K)
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
        config.loss.aux_weight = 0.0
        parts = experiment.build_train_parts(config, K, mesh_lib.make_mesh(1))
        state = parts.create_state()  # one jitted init instead of an eager compile per initialiser
        rng_np = np.random.default_rng(0)
        batch = {
            "image": jnp.asarray(rng_np.normal(size=(2, 32, 32, 3)), jnp.float32),
            "label": jnp.asarray(np.kron(rng_np.integers(0, K, (2, 4, 4)), np.ones((8, 8)))),
        }
        batch["label"] = batch["label"].astype(jnp.int32)
        new_state, metrics = parts.train_step(state, batch, jax.random.key(0))
        assert float(metrics["nonfinite"]) == 0.0
        assert {x.dtype for x in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
        losses[dtype] = float(metrics["loss"])
    # Same weights, same batch: bfloat16 compute moves the loss by rounding only.
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)
