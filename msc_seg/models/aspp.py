"""DeepLabV3 decode head: Atrous Spatial Pyramid Pooling + 1x1 classifier.

Parameter names follow the reference (``models/DeepLabv3.py``): ``aspp.aspp1..aspp5``,
``aspp.aspp1_bn..aspp5_bn``, ``aspp.conv2``, ``aspp.bn2`` and ``conv_out``.

Deviation switch: the reference passes its BN momentum (0.0003) positionally into the *eps*
slot of ``BatchNorm2d``, so its ASPP BNs have eps 3e-4. We use the standard 1e-5 unless
``bn_epsilon=REFERENCE_ASPP_BN_EPS`` is asked for.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models.layers import TORCH_BN_EPS
from msc_seg.models.resnet import make_batch_norm, make_conv

# The reference's accidental ASPP BatchNorm eps (docs/METHOD.md §3.4, §13).
REFERENCE_ASPP_BN_EPS = 3e-4


def aspp_dilations(output_stride: int) -> tuple[int, int, int]:
    """Standard DeepLabV3 atrous rates: (6, 12, 18) at OS16, doubled at OS8.

    The reference hard-codes (12, 24, 36) whatever its output stride (default 16): pass those
    explicitly to reproduce it at OS16.
    """
    if output_stride not in (8, 16, 32):
        raise ArgumentError("output_stride", output_stride, "ASPP supports 8, 16 or 32")
    return tuple(rate * 16 // output_stride for rate in (6, 12, 18))


def classifier_kernel_init():
    """Normal(0.01) for the final 1x1 classifiers, as mmseg initialises ``conv_seg``."""
    return nnx.initializers.normal(0.01)


class ASPP(nnx.Module):
    """``[B,h,w,in_channels] -> [B,h,w,channels]``.

    Five branches of ``channels`` each: 1x1; three 3x3 convs dilated by ``dilations``; global
    average pooling -> 1x1 (broadcast back over h, w: bilinear upsampling of a 1x1 map is a
    constant under either align_corners convention). Concat (5 * channels) -> 1x1 -> BN -> ReLU.
    All convs have no bias, every conv is followed by BN + ReLU. No dropout.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        dilations: Sequence[int] = (12, 24, 36),
        *,
        bn_epsilon: float = TORCH_BN_EPS,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(dilations) != 3:
            raise ArgumentError(
                "aspp_dilations", tuple(dilations), "ASPP needs exactly 3 dilation rates"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.aspp1 = make_conv(in_channels, channels, 1, **kw)
        self.aspp2 = make_conv(in_channels, channels, 3, dilation=dilations[0], **kw)
        self.aspp3 = make_conv(in_channels, channels, 3, dilation=dilations[1], **kw)
        self.aspp4 = make_conv(in_channels, channels, 3, dilation=dilations[2], **kw)
        self.aspp5 = make_conv(in_channels, channels, 1, **kw)
        for i in range(1, 6):
            setattr(self, f"aspp{i}_bn", make_batch_norm(channels, epsilon=bn_epsilon, **kw))
        self.conv2 = make_conv(5 * channels, channels, 1, **kw)
        self.bn2 = make_batch_norm(channels, epsilon=bn_epsilon, **kw)

    def image_pooling(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """The image-level branch: ``[B,h,w,C] -> [B,h,w,channels]``, constant over h, w."""
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32).astype(x.dtype)
        y = jax.nn.relu(self.aspp5_bn(self.aspp5(pooled), use_running_average=not train))
        return jnp.broadcast_to(y, x.shape[:3] + y.shape[3:])

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        ura = not train
        branches = [
            jax.nn.relu(bn(conv(x), use_running_average=ura))
            for conv, bn in (
                (self.aspp1, self.aspp1_bn),
                (self.aspp2, self.aspp2_bn),
                (self.aspp3, self.aspp3_bn),
                (self.aspp4, self.aspp4_bn),
            )
        ]
        branches.append(self.image_pooling(x, train=train))
        y = self.conv2(jnp.concatenate(branches, axis=-1))
        return jax.nn.relu(self.bn2(y, use_running_average=ura))


class ASPPHead(nnx.Module):
    """DeepLabV3 decode head: ``[B,h,w,in_channels] -> logits [B,h,w,num_classes]``.

    ``aspp`` (:class:`ASPP`) then ``conv_out`` (1x1 with bias).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 256,
        dilations: Sequence[int] = (12, 24, 36),
        bn_epsilon: float = TORCH_BN_EPS,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.aspp = ASPP(in_channels, channels, dilations, bn_epsilon=bn_epsilon, **kw)
        self.conv_out = make_conv(
            channels, num_classes, 1, use_bias=True, kernel_init=classifier_kernel_init(), **kw
        )

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.conv_out(self.aspp(x, train=train))
