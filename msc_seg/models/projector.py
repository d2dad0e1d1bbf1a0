"""Per-scale contrastive projector (docs/METHOD.md §4, reference `models/Projector.py`).

[B,h,w,c] -> [B,h,w,D]: Conv1x1(c->c, no bias) -> ReLU -> BatchNorm(PyTorch momentum 0.0003)
-> Conv1x1(c->D, bias). Note the order: the BN comes *after* the ReLU, as in the reference.
No L2 normalisation here: the loss normalises the sampled vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.models import ordering
from msc_seg.models.conv import conv_layer
from msc_seg.models.layers import (
    TORCH_BN_EPS,
    flax_momentum,
    kaiming_normal_fan_out,
    supports_train_batch_norm,
    train_batch_norm,
)

PROJECTOR_TORCH_BN_MOMENTUM = 0.0003


class Projector(nnx.Module):
    """One projector per scale (no sharing). Parameters: `conv1`, `norm`, `conv2`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = conv_layer(
            in_channels,
            in_channels,
            (1, 1),
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
            **kw,
        )
        self.norm = nnx.BatchNorm(
            in_channels,
            momentum=flax_momentum(PROJECTOR_TORCH_BN_MOMENTUM),
            epsilon=TORCH_BN_EPS,
            **kw,
        )
        self.conv2 = conv_layer(
            in_channels,
            out_channels,
            (1, 1),
            use_bias=True,
            kernel_init=kaiming_normal_fan_out,
            bias_init=nnx.initializers.zeros_init(),
            **kw,
        )

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = jax.nn.relu(self.conv1(x))
        if train and supports_train_batch_norm(self.norm, x):
            x = train_batch_norm(self.norm, x)  # keeps only x for its backward pass
        else:
            x = self.norm(x, use_running_average=not train)
        return self.conv2(x)


def make_projectors(
    channels: Sequence[int], embedding_dim: int, use: bool, **kw
) -> nnx.List | None:
    """One Projector per tap (channels finest first), or None when the model has none."""
    if not use:
        return None
    return nnx.List([Projector(c, embedding_dim, **kw) for c in channels])


def _project_recomputed_late(proj: Projector, t: jax.Array, train: bool) -> jax.Array:
    """proj(t) as float32, recomputed in the backward pass once its output's gradient exists
    (ordering.recompute_after_grad); its BatchNorm statistics are those of this forward pass."""
    graphdef, params, rest = nnx.split(proj, nnx.Param, ...)

    def pure(params, rest, t):
        module = nnx.merge(graphdef, params, rest)
        out = module(t, train=train).astype(jnp.float32)
        return out, nnx.split(module, nnx.Param, ...)[2]

    out, rest = ordering.recompute_after_grad(pure, params, rest, t)
    nnx.update(proj, rest)
    return out


def project_taps(
    projectors: nnx.List | None,
    taps: Sequence[jax.Array],
    train: bool,
    return_embeddings: bool,
    *,
    recompute_late: bool = False,
) -> tuple[jax.Array, ...]:
    """Per-scale projector outputs (float32 [B,h_s,w_s,D], finest first), or () unless asked.
    recompute_late: keep only each projector's input and recompute it in the backward pass,
    where its output's gradient arrives (unrelated to the model's `remat` modes)."""
    if not return_embeddings:
        return ()
    if projectors is None:
        raise ValueError(
            "return_embeddings=True but the model was built with use_projectors=False "
            "(enable the contrastive loss's projectors)"
        )
    if recompute_late:
        return tuple(
            _project_recomputed_late(p, t, train) for p, t in zip(projectors, taps, strict=True)
        )
    return tuple(
        proj(t, train=train).astype(jnp.float32) for proj, t in zip(projectors, taps, strict=True)
    )
