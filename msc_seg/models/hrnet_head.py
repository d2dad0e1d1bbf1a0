"""HRNetV2 segmentation head: concatenate the 4 branches at stride 4, then a small classifier.

Two variants (docs/METHOD.md §3.1, §13):

* official (default; HRNet-Semantic-Segmentation ``last_layer``): Conv1x1(C->C, bias) -> BN ->
  ReLU -> Conv1x1(C->K, bias). Parameter indices 0, 1, 3 as in the official ``last_layer``.
* reference (``reference_head=True``; the paper's ``models/HRNet.py`` ``cls_head``):
  Conv3x3(C->C, bias) -> BN -> Conv1x1(C->K, no bias), with **no ReLU** between the BN and the
  classifier. Parameter indices 0, 1, 2 as in the reference.

C = 720 for W48 (48 + 96 + 192 + 384).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.models.aspp import classifier_kernel_init
from msc_seg.models.layers import resize_bilinear
from msc_seg.models.resnet import IndexedSequential, make_batch_norm, make_conv


def concat_branches(feats: Sequence[jax.Array], *, align_corners: bool = True) -> jax.Array:
    """HRNetV2 representation: ``[B,H/4,W/4,C0], [B,H/8,..,C1], ... -> [B,H/4,W/4,sum C_i]``.

    Coarser branches are upsampled bilinearly to the finest one's size (the reference uses the
    config's align_corners, True in its HRNet/OCR configs).
    """
    size = feats[0].shape[1:3]
    ups = [feats[0]] + [resize_bilinear(f, size, align_corners=align_corners) for f in feats[1:]]
    return jnp.concatenate(ups, axis=-1)


class HRNetHead(nnx.Module):
    """``[B,H/4,W/4,in_channels]`` (the concatenation) ``-> logits [B,H/4,W/4,num_classes]``.

    Parameters under ``cls_head`` (see the module docstring for the two layouts).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        reference_head: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if reference_head:
            layers = [
                make_conv(in_channels, in_channels, 3, use_bias=True, **kw),
                make_batch_norm(in_channels, **kw),
                make_conv(in_channels, num_classes, 1, kernel_init=classifier_kernel_init(), **kw),
            ]
        else:
            layers = [
                make_conv(in_channels, in_channels, 1, use_bias=True, **kw),
                make_batch_norm(in_channels, **kw),
                jax.nn.relu,
                make_conv(
                    in_channels,
                    num_classes,
                    1,
                    use_bias=True,
                    kernel_init=classifier_kernel_init(),
                    **kw,
                ),
            ]
        self.cls_head = IndexedSequential(layers)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.cls_head(x, train=train)
