"""OCR (object-contextual representations) heads, as in the reference ``models/OCR.py``.

Input: the HRNetV2 concatenation ``[B,h,w,C]`` (C = 720 for W48, stride 4).

* :class:`SoftRegionHead` (aux / "soft object regions"): the reference's Conv3x3(C->512, bias)
  -> BN -> ReLU -> Dropout2d -> Conv1x1(512->K, bias), parameters ``interm_prediction_head.0..4``.
  ``official=True`` gives the official HRNet-OCR ``aux_head`` instead: Conv1x1(C->C, bias) -> BN
  -> ReLU -> Conv1x1(C->K, bias), parameters ``aux_head.0, 1, 3``.
* :class:`OCRHead`: ``conv_high_map`` Conv3x3(C->512, bias)-BN-ReLU; :func:`spatial_gather`
  (softmax over pixels of the soft-region logits); :class:`ObjectAttentionBlock` (key channels
  256, scale 1); concat [context, feats] -> Conv1x1(1024->512, no bias)-BN-ReLU-Dropout2d;
  ``conv_out`` Conv1x1(512->K, bias).

The reference's ``scale`` option (max-pool before attention) is 1 in every config and left out.
Softmaxes run in float32 whatever the compute dtype.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.models.aspp import classifier_kernel_init
from msc_seg.models.layers import dropout2d
from msc_seg.models.resnet import IndexedSequential, make_batch_norm, make_conv


class SoftRegionHead(nnx.Module):
    """Soft object regions (OCRNet's auxiliary logits): ``[B,h,w,C] -> [B,h,w,num_classes]``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 512,
        dropout: float = 0.0,
        official: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        classifier_kw = dict(use_bias=True, kernel_init=classifier_kernel_init(), **kw)
        self.official = official
        if official:
            self.aux_head = IndexedSequential(
                [
                    make_conv(in_channels, in_channels, 1, use_bias=True, **kw),
                    make_batch_norm(in_channels, **kw),
                    jax.nn.relu,
                    make_conv(in_channels, num_classes, 1, **classifier_kw),
                ]
            )
        else:
            self.interm_prediction_head = IndexedSequential(
                [
                    make_conv(in_channels, channels, 3, use_bias=True, **kw),
                    make_batch_norm(channels, **kw),
                    jax.nn.relu,
                    dropout2d(dropout, rngs=rngs),
                    make_conv(channels, num_classes, 1, **classifier_kw),
                ]
            )

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        head = self.aux_head if self.official else self.interm_prediction_head
        return head(x, train=train)


def spatial_gather(feats: jax.Array, logits: jax.Array) -> jax.Array:
    """Object region representations (reference ``SpatialGatherModule``, scale 1).

    feats [B,h,w,C], logits [B,h,w,K] -> [B,K,C]: for each class k, the average of the pixel
    features weighted by softmax over all h*w pixels of logits[..., k].
    """
    b, h, w, c = feats.shape
    probs = jax.nn.softmax(logits.reshape(b, h * w, -1).astype(jnp.float32), axis=1)
    return jnp.einsum("bnk,bnc->bkc", probs, feats.reshape(b, h * w, c).astype(jnp.float32)).astype(
        feats.dtype
    )


def _conv_bn_relu(in_channels: int, out_channels: int, kw) -> list:
    return [
        make_conv(in_channels, out_channels, 1, **kw),
        make_batch_norm(out_channels, **kw),
        jax.nn.relu,
    ]


class ObjectAttentionBlock(nnx.Module):
    """Pixel-to-object attention (reference ``ObjectAttentionBlock2D``).

    x [B,h,w,C], proxy [B,K,C] -> context [B,h,w,C]:
      query = f_pixel(x) [B,hw,Ck]; key = f_object(proxy) [B,K,Ck]; value = f_down(proxy);
      attn = softmax_K(query key^T / sqrt(Ck)); context = f_up(attn value).
    f_pixel, f_object: 2x (1x1 conv, BN, ReLU); f_down, f_up: 1x1 conv, BN, ReLU. The proxy is
    treated as a [B,K,1,C] image so its BNs see B*K samples, as in the reference.
    """

    def __init__(
        self,
        in_channels: int,
        key_channels: int,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.key_channels = key_channels
        self.f_pixel = IndexedSequential(
            _conv_bn_relu(in_channels, key_channels, kw)
            + _conv_bn_relu(key_channels, key_channels, kw)
        )
        self.f_object = IndexedSequential(
            _conv_bn_relu(in_channels, key_channels, kw)
            + _conv_bn_relu(key_channels, key_channels, kw)
        )
        self.f_down = IndexedSequential(_conv_bn_relu(in_channels, key_channels, kw))
        self.f_up = IndexedSequential(_conv_bn_relu(key_channels, in_channels, kw))

    def __call__(self, x: jax.Array, proxy: jax.Array, *, train: bool = False) -> jax.Array:
        b, h, w, _ = x.shape
        proxy_img = proxy[:, :, None, :]
        query = self.f_pixel(x, train=train).reshape(b, h * w, self.key_channels)
        key = self.f_object(proxy_img, train=train)[:, :, 0, :]
        value = self.f_down(proxy_img, train=train)[:, :, 0, :]
        sim = jnp.einsum("bnd,bkd->bnk", query.astype(jnp.float32), key.astype(jnp.float32))
        attn = jax.nn.softmax(sim * self.key_channels**-0.5, axis=-1)
        context = jnp.einsum("bnk,bkd->bnd", attn, value.astype(jnp.float32))
        context = context.astype(x.dtype).reshape(b, h, w, self.key_channels)
        return self.f_up(context, train=train)


class SpatialOCR(nnx.Module):
    """Reference ``SpatialOCR_Module``: ``object_context_block`` then ``conv_bn_dropout`` on
    concat [context, feats]: ``[B,h,w,C], [B,K,C] -> [B,h,w,out_channels]``."""

    def __init__(
        self,
        in_channels: int,
        key_channels: int,
        out_channels: int,
        *,
        dropout: float = 0.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels, **kw)
        self.conv_bn_dropout = IndexedSequential(
            [
                make_conv(2 * in_channels, out_channels, 1, **kw),
                make_batch_norm(out_channels, **kw),
                jax.nn.relu,
                dropout2d(dropout, rngs=rngs),
            ]
        )

    def __call__(self, feats: jax.Array, proxy: jax.Array, *, train: bool = False) -> jax.Array:
        context = self.object_context_block(feats, proxy, train=train)
        return self.conv_bn_dropout(jnp.concatenate([context, feats], axis=-1), train=train)


class OCRHead(nnx.Module):
    """OCR decode head: ``x [B,h,w,C], soft-region logits [B,h,w,K] -> logits [B,h,w,K]``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        ocr_channels: int = 512,
        key_channels: int = 256,
        dropout: float = 0.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv_high_map = IndexedSequential(
            [
                make_conv(in_channels, ocr_channels, 3, use_bias=True, **kw),
                make_batch_norm(ocr_channels, **kw),
                jax.nn.relu,
            ]
        )
        self.spatial_ocr_head = SpatialOCR(
            ocr_channels, key_channels, ocr_channels, dropout=dropout, **kw
        )
        self.conv_out = make_conv(
            ocr_channels,
            num_classes,
            1,
            use_bias=True,
            kernel_init=classifier_kernel_init(),
            **kw,
        )

    def __call__(self, x: jax.Array, region_logits: jax.Array, *, train: bool = False):
        high = self.conv_high_map(x, train=train)
        proxy = spatial_gather(high, region_logits)
        return self.conv_out(self.spatial_ocr_head(high, proxy, train=train))
