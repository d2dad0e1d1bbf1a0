"""UPerNet decode head, mmseg `UPerHead` style (what HF `UperNetHead` implements).

Differences from the reference's CSAIL-style head (docs/METHOD.md §3.3, §13), on purpose so that HF
and mmseg checkpoints map one to one: the PPM ConvModule runs *before* the bilinear upsample, and
ConvModule convs have no bias (a BatchNorm follows).

Parameter names follow HF/mmseg: `psp_modules[i]`, `bottleneck`, `lateral_convs[i]`,
`fpn_convs[i]`, `fpn_bottleneck`, `classifier` (mmseg `conv_seg`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.models.conv import conv_layer
from msc_seg.models.layers import ConvModule, adaptive_avg_pool, dropout2d, resize_bilinear


def classifier_conv(in_channels, num_classes, *, dtype, param_dtype, rngs) -> nnx.Conv:
    """1x1 conv with bias, mmseg `conv_seg` init (normal std 0.01, bias 0)."""
    return conv_layer(
        in_channels,
        num_classes,
        (1, 1),
        kernel_init=nnx.initializers.normal(0.01),
        bias_init=nnx.initializers.zeros_init(),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class UPerHead(nnx.Module):
    """UPerNet head (PPM + FPN + fuse).

    Input: backbone maps finest first [B,H/4,W/4,C1] ... [B,H/32,W/32,C4].
    Output: (logits [B,H/4,W/4,num_classes] in the compute dtype,
             fpn_outs (P2,P3,P4,P5), each [B,H/2^(s+2),W/2^(s+2),channels]; P5 is the PPM
             bottleneck output, P2..P4 the fpn_convs outputs, all before the fuse upsampling).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        align_corners: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_channels = tuple(in_channels)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.align_corners = align_corners
        self.pool_scales = tuple(pool_scales)
        # PPM branches: adaptive avg pool -> ConvModule 1x1 -> bilinear upsample (HF/mmseg
        # `psp_modules.{i}.1`; the pool at index 0 has no parameters).
        self.psp_modules = nnx.List(
            [ConvModule(in_channels[-1], channels, 1, **kw) for _ in self.pool_scales]
        )
        self.bottleneck = ConvModule(
            in_channels[-1] + len(pool_scales) * channels, channels, 3, **kw
        )
        self.lateral_convs = nnx.List([ConvModule(c, channels, 1, **kw) for c in in_channels[:-1]])
        self.fpn_convs = nnx.List(
            [ConvModule(channels, channels, 3, **kw) for _ in in_channels[:-1]]
        )
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, **kw)
        self.dropout = dropout2d(dropout, rngs=rngs)
        self.classifier = classifier_conv(channels, num_classes, **kw)

    def _resize(self, x, like):
        return resize_bilinear(x, like.shape[1:3], align_corners=self.align_corners)

    def _pyramid_pool(self, x, *, train: bool):
        """[B,h,w,C] -> [B,h,w,C + len(pool_scales) * channels] (input first, as mmseg)."""
        outs = [x]
        for scale, conv in zip(self.pool_scales, self.psp_modules, strict=True):
            outs.append(self._resize(conv(adaptive_avg_pool(x, scale), train=train), x))
        return jnp.concatenate(outs, axis=-1)

    def __call__(
        self, feats: Sequence[jax.Array], *, train: bool = False
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        fpn_outs, fused = self.features(feats, train=train)
        return self.classify(fused, train=train), fpn_outs

    def features(
        self, feats: Sequence[jax.Array], *, train: bool = False
    ) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """(fpn_outs as in __call__, fused [B,H/4,W/4,4*channels]: P2..P5 upsampled to P2 and
        concatenated, the fpn_bottleneck's input)."""
        top = feats[-1]
        if len(feats) != len(self.lateral_convs) + 1:
            raise ValueError(
                f"UPerHead expects {len(self.lateral_convs) + 1} maps, got {len(feats)}"
            )
        psp = self._pyramid_pool(top, train=train)
        laterals = [
            conv(f, train=train) for conv, f in zip(self.lateral_convs, feats, strict=False)
        ]
        laterals.append(self.bottleneck(psp, train=train))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1])
        fpn_outs = [
            conv(lat, train=train) for conv, lat in zip(self.fpn_convs, laterals, strict=False)
        ]
        fpn_outs.append(laterals[-1])
        fused = jnp.concatenate(
            [fpn_outs[0]] + [self._resize(f, fpn_outs[0]) for f in fpn_outs[1:]], axis=-1
        )
        return tuple(fpn_outs), fused

    def classify(self, fused: jax.Array, *, train: bool = False) -> jax.Array:
        """fused [B,H/4,W/4,4*channels] -> logits [B,H/4,W/4,num_classes]."""
        x = self.fpn_bottleneck(fused, train=train)
        x = self.dropout(x, deterministic=not train)
        return self.classifier(x)
