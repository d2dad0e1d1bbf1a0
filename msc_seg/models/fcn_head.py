"""FCN auxiliary head, mmseg `FCNHead(num_convs=1, concat_input=False)` / HF `UperNetFCNHead`.

[B,h,w,C_in] -> [B,h,w,num_classes]: ConvModule 3x3 + BN + ReLU, Dropout2d, 1x1 conv.
The 3x3 conv has no bias by default (mmseg/HF, so their weights map); `conv_bias=True` gives the
released reference config's head, whose ConvModule conv has a bias before its BN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.models.layers import ConvModule, dropout2d
from msc_seg.models.uper_head import classifier_conv


class FCNHead(nnx.Module):
    """Auxiliary head; parameters `convs[i]` and `classifier` as in HF."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 256,
        num_convs: int = 1,
        kernel_size: int = 3,
        dropout: float = 0.1,
        conv_bias: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.convs = nnx.List(
            [
                ConvModule(
                    in_channels if i == 0 else channels,
                    channels,
                    kernel_size,
                    use_bias=conv_bias,
                    **kw,
                )
                for i in range(num_convs)
            ]
        )
        self.dropout = dropout2d(dropout, rngs=rngs)
        self.classifier = classifier_conv(channels, num_classes, **kw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for conv in self.convs:
            x = conv(x, train=train)
        return self.classifier(self.dropout(x, deterministic=not train))
