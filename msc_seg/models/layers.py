"""Shared model pieces: ConvModule, exact PyTorch-style resizes and pools, DropPath, initialisers.

All arrays are NHWC. The resize and pool helpers reproduce PyTorch's
`F.interpolate(mode="bilinear")` and `nn.AdaptiveAvgPool2d` exactly, because the reference
models and the checkpoints we import were trained with them; `jax.image.resize` differs
(it antialiases when downsampling and has no align_corners=True mode).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# PyTorch `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: untruncated normal,
# variance 2 / (out_channels * kh * kw). Flax conv kernels are [kh, kw, in, out].
kaiming_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# timm/Swin `trunc_normal_(std=.02)` (truncation at +-2 absolute is +-100 sigma: irrelevant).
trunc_normal_02 = nnx.initializers.truncated_normal(stddev=0.02)
# PyTorch's default Conv2d/Linear weight init (kaiming_uniform with a=sqrt(5)).
torch_default_kernel = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

TORCH_BN_MOMENTUM = 0.1
TORCH_BN_EPS = 1e-5


def flax_momentum(torch_momentum: float) -> float:
    """PyTorch BN momentum m (new-batch weight) -> Flax momentum 1 - m (old-value weight)."""
    return 1.0 - torch_momentum


# --------------------------------------------------------------------------------------------
# Bilinear resize (PyTorch F.interpolate semantics)


@functools.lru_cache(maxsize=256)
def _linear_taps(in_size: int, out_size: int, align_corners: bool):
    """Source indices i0, i1 [out] and weight w1 [out] of PyTorch 1-D linear interpolation."""
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        # PyTorch uses in/out as the scale when an output size is given, and clamps at 0.
        src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    return i0.astype(np.int32), i1.astype(np.int32), w1


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """[out, in] matrix of PyTorch 1-D linear interpolation weights (two taps per row)."""
    i0, i1, w1 = _linear_taps(in_size, out_size, align_corners)
    m = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    m.setflags(write=False)  # cached: shared between callers
    return m


def _apply_rows(m: np.ndarray, x: jax.Array) -> jax.Array:
    return jnp.einsum("oh,bhwc->bowc", jnp.asarray(m, x.dtype), x, precision="highest")


def _apply_cols(m: np.ndarray, x: jax.Array) -> jax.Array:
    return jnp.einsum("pw,bhwc->bhpc", jnp.asarray(m, x.dtype), x, precision="highest")


def resize_bilinear(
    x: jax.Array, size: tuple[int, int], *, align_corners: bool = False
) -> jax.Array:
    """Bilinear resize of [B,H,W,C] to [B,size[0],size[1],C], exactly as PyTorch's
    `F.interpolate(x, size, mode="bilinear", align_corners=align_corners)` (no antialiasing).

    Separable, as two small dense matmuls with [out,in] weight matrices (precision "highest"):
    cheaper to compile and differentiate than gathers, and TPU/GPU friendly.
    """
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear expects [B,H,W,C], got shape {x.shape}")
    (in_h, in_w), (out_h, out_w) = x.shape[1:3], (int(size[0]), int(size[1]))
    if out_h != in_h:
        x = _apply_rows(interpolation_matrix(in_h, out_h, align_corners), x)
    if out_w != in_w:
        x = _apply_cols(interpolation_matrix(in_w, out_w, align_corners), x)
    return x


# --------------------------------------------------------------------------------------------
# Adaptive average pooling (PyTorch nn.AdaptiveAvgPool2d semantics)


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] averaging matrix: row i averages input [floor(i*in/out), ceil((i+1)*in/out))."""
    m = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    m.setflags(write=False)  # cached: shared between callers
    return m


def adaptive_avg_pool(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
    """[B,H,W,C] -> [B,oh,ow,C], exactly PyTorch's AdaptiveAvgPool2d (windows may overlap)."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    oh, ow = output_size
    x = _apply_rows(adaptive_pool_matrix(x.shape[1], oh), x)
    return _apply_cols(adaptive_pool_matrix(x.shape[2], ow), x)


# --------------------------------------------------------------------------------------------
# Modules


class ConvModule(nnx.Module):
    """Conv -> BatchNorm -> ReLU (mmcv ConvModule / HF UperNetConvModule).

    [B,H,W,in_channels] -> [B,H',W',out_channels]. Parameter names: `conv`, `batch_norm`
    (contains "norm" so weight-decay masks by path can find it).

    padding: None gives PyTorch's usual symmetric `dilation * (k - 1) // 2` (same size at
    stride 1); an int gives that symmetric padding.
    use_bias: the conv bias (mmcv's bias="auto" means False when a norm follows).
    use_norm / use_act: drop the BN or the ReLU (e.g. heads that end without ReLU).
    bn_momentum: Flax convention (0.9 == PyTorch 0.1). bn_eps: 1e-5 unless a reference differs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        use_norm: bool = True,
        use_act: bool = True,
        bn_momentum: float = 0.9,
        bn_eps: float = TORCH_BN_EPS,
        kernel_init=kaiming_normal_fan_out,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            (kernel_size, kernel_size),
            strides=stride,
            padding=((padding, padding), (padding, padding)),
            kernel_dilation=dilation,
            feature_group_count=groups,
            use_bias=use_bias,
            kernel_init=kernel_init,
            bias_init=nnx.initializers.zeros_init(),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.batch_norm = (
            nnx.BatchNorm(
                out_channels,
                momentum=bn_momentum,
                epsilon=bn_eps,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if use_norm
            else None
        )
        self.use_act = use_act

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.conv(x)
        if self.batch_norm is not None:
            x = self.batch_norm(x, use_running_average=not train)
        if self.use_act:
            x = jax.nn.relu(x)
        return x


class DropPath(nnx.Module):
    """Stochastic depth per sample (timm `drop_path`): in training, zero a whole sample's
    residual branch with probability `rate` and scale survivors by 1/(1-rate); identity in eval.

    Randomness comes from the `dropout` stream of the rngs the module was built with.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = float(rate)
        self.rngs = rngs["dropout"].fork() if self.rate > 0.0 else nnx.data(None)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.rngs(), keep, mask_shape)
        return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


def dropout2d(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout:
    """PyTorch `nn.Dropout2d` for NHWC: one mask value per (sample, channel)."""
    return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)


def gelu_exact(x: jax.Array) -> jax.Array:
    """PyTorch nn.GELU() default (erf form); jax.nn.gelu defaults to the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


__all__ = [
    "ConvModule",
    "DropPath",
    "TORCH_BN_EPS",
    "TORCH_BN_MOMENTUM",
    "adaptive_avg_pool",
    "adaptive_pool_matrix",
    "dropout2d",
    "flax_momentum",
    "gelu_exact",
    "kaiming_normal_fan_out",
    "resize_bilinear",
    "torch_default_kernel",
    "trunc_normal_02",
]
