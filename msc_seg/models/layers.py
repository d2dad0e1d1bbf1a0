"""Shared model pieces: ConvModule, exact PyTorch-style resizes and pools, DropPath, initialisers.

All arrays are NHWC. The resize and pool helpers reproduce PyTorch's
`F.interpolate(mode="bilinear")` and `nn.AdaptiveAvgPool2d` (same taps and bins, values equal up
to float rounding), because the reference models and the checkpoints we import were trained with
them; `jax.image.resize` differs (it antialiases when downsampling and has no align_corners=True
mode). Both are gathers/slices and short sums with static numpy indices: O(output), no dense
interpolation matrices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msc_seg.models.conv import conv_layer

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
#
# Separable: one 1-D linear interpolation per resized axis, each a gather of the two source rows
# (static numpy indices; plain or strided slices where the indices allow) and a 2-tap lerp with
# per-position weights. The backward is the gather's transpose (a sorted scatter-add), so the
# cost is O(output) both ways; no dense [out, in] matrices.


@functools.lru_cache(maxsize=512)
def linear_taps(
    in_size: int, out_size: int, align_corners: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's 1-D linear interpolation taps: out[o] = w0[o] * x[i0[o]] + w1[o] * x[i1[o]].

    -> (i0, i1 int32 [out], w0, w1 float32 [out]). Computed in float32 as PyTorch's CPU kernel
    does (`area_pixel_compute_scale`, `area_pixel_compute_source_index`,
    `guard_index_and_lambda`), so the weights carry the same rounding as its own: for
    align_corners=False the compiled kernel evaluates `scale * (dst + 0.5) - 0.5` as one fused
    multiply-add (one rounding), reproduced here by evaluating it in float64 (the product of two
    float32 values and the sum with 0.5 are exact there) and rounding once. Checked equal, tap
    for tap, to torch 2.13 CPU for every in/out size pair up to 40 and the models' sizes.
    """
    f32 = np.float32
    dst = np.arange(out_size, dtype=f32)
    if align_corners:
        scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0.0)
        src = scale * dst
    else:
        # An output size is given (no scale factor): the scale is in/out.
        scale = f32(in_size) / f32(out_size)
        fused = np.float64(scale) * (dst + f32(0.5)).astype(np.float64) - 0.5
        src = np.maximum(fused.astype(f32), f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0)).astype(f32)
    w0 = (f32(1.0) - w1).astype(f32)
    i1 = np.minimum(i0 + 1, in_size - 1)
    out = (i0.astype(np.int32), i1.astype(np.int32), w0, w1)
    for a in out:
        a.setflags(write=False)  # cached: shared between callers
    return out


def take_static(x: jax.Array, index: np.ndarray, axis: int) -> jax.Array:
    """`x` indexed along `axis` by a static int array (values in range): a slice when the
    indices are an arithmetic progression, else a gather marked sorted when they are."""
    index = np.asarray(index, dtype=np.int64)
    n = index.size
    step = int(index[1] - index[0]) if n > 1 else 1
    if n == 0 or (step > 0 and np.array_equal(index, index[0] + step * np.arange(n))):
        start = int(index[0]) if n else 0
        return jax.lax.slice_in_dim(x, start, start + step * (n - 1) + 1, step, axis=axis)
    axis = axis % x.ndim
    dnums = jax.lax.GatherDimensionNumbers(
        offset_dims=tuple(d for d in range(x.ndim) if d != axis),
        collapsed_slice_dims=(axis,),
        start_index_map=(axis,),
    )
    slice_sizes = tuple(1 if d == axis else s for d, s in enumerate(x.shape))
    return jax.lax.gather(
        x,
        jnp.asarray(index.astype(np.int32)[:, None]),
        dnums,
        slice_sizes,
        indices_are_sorted=bool(np.all(np.diff(index) >= 0)),
        unique_indices=bool(np.unique(index).size == n),
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


def _along(v: np.ndarray, axis: int, ndim: int, dtype) -> jax.Array:
    """A static [n] vector shaped to broadcast along `axis` of an ndim-array."""
    shape = [1] * ndim
    shape[axis] = v.size
    return jnp.asarray(v.reshape(shape), dtype)


@functools.lru_cache(maxsize=512)
def linear_taps_transposed(
    in_size: int, out_size: int, align_corners: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The transpose of `linear_taps` as gathers: grad_x[j] = sum_k w[k, j] * grad_y[o[k, j]].

    -> (o int32 [M, in], w float32 [M, in], valid bool [M, in]), M the most outputs any input
    feeds. Contributions are listed in output order (the order PyTorch's backward accumulates
    them); zero weights are left out; unused slots point at a real contributor of the same
    input (or 0) and are masked by `valid`.
    """
    i0, i1, w0, w1 = linear_taps(in_size, out_size, align_corners)
    contrib: list[list[tuple[int, float]]] = [[] for _ in range(in_size)]
    for o in range(out_size):
        for i, w in ((i0[o], w0[o]), (i1[o], w1[o])):
            if w != 0.0:
                contrib[int(i)].append((o, float(w)))
    m = max(1, max(len(c) for c in contrib))
    index = np.zeros((m, in_size), np.int32)
    weight = np.zeros((m, in_size), np.float32)
    valid = np.zeros((m, in_size), bool)
    for j, c in enumerate(contrib):
        for k in range(m):
            if k < len(c):
                index[k, j], weight[k, j], valid[k, j] = c[k][0], c[k][1], True
            elif c:
                index[k, j] = c[-1][0]
    for a in (index, weight, valid):
        a.setflags(write=False)
    return index, weight, valid


def _interpolate_linear_1d(x, out_size, axis, align_corners):
    i0, i1, w0, w1 = linear_taps(x.shape[axis], out_size, align_corners)
    x0 = take_static(x, i0, axis)
    if not np.any(w1):  # every tap on a source row (e.g. output size 1, or exact subsampling)
        return x0
    x1 = take_static(x, i1, axis)
    return x0 * _along(w0, axis, x.ndim, x.dtype) + x1 * _along(w1, axis, x.ndim, x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _interpolate_linear_1d_vjp(x, out_size, axis, align_corners):
    return _interpolate_linear_1d(x, out_size, axis, align_corners)


def _interpolate_fwd(x, out_size, axis, align_corners):
    return _interpolate_linear_1d(x, out_size, axis, align_corners), x.shape[axis]


def _interpolate_bwd(out_size, axis, align_corners, in_size, g):
    # Gathers, not the scatter-add that autodiff of the forward gathers would give: on CPU a
    # scatter-add of a [2,512,512,150] cotangent takes ~4x the forward's time.
    index, weight, valid = linear_taps_transposed(in_size, out_size, align_corners)
    total = None
    for k in range(index.shape[0]):
        part = take_static(g, index[k], axis) * _along(weight[k], axis, g.ndim, g.dtype)
        if not valid[k].all():
            part = jnp.where(_along(valid[k], axis, g.ndim, jnp.bool_), part, 0)
        total = part if total is None else total + part
    return (total,)


_interpolate_linear_1d_vjp.defvjp(_interpolate_fwd, _interpolate_bwd)


def interpolate_linear_1d(
    x: jax.Array, out_size: int, axis: int, *, align_corners: bool = False
) -> jax.Array:
    """PyTorch 1-D linear interpolation of `x` along `axis` to `out_size` (no antialiasing).

    Forward: two static gathers (slices where possible) and a 2-tap lerp. Backward: the
    transposed taps as gathers too (`linear_taps_transposed`), O(input x taps per input).
    Reverse mode only (a custom VJP; `jax.jvp` through it is not supported).
    """
    in_size = x.shape[axis]
    if out_size == in_size:
        return x
    return _interpolate_linear_1d_vjp(x, int(out_size), axis % x.ndim, bool(align_corners))


def resize_bilinear(
    x: jax.Array, size: tuple[int, int], *, align_corners: bool = False
) -> jax.Array:
    """Bilinear resize of [B,H,W,C] to [B,size[0],size[1],C], exactly as PyTorch's
    `F.interpolate(x, size, mode="bilinear", align_corners=align_corners)` (no antialiasing),
    up to float rounding: the width is interpolated first, then the height, as PyTorch's CPU
    kernel combines its taps.

    Two gathers and a 2-tap lerp per resized axis (see `linear_taps`): O(output) work forward and
    backward, static shapes and indices.
    """
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear expects [B,H,W,C], got shape {x.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    x = interpolate_linear_1d(x, out_w, 2, align_corners=align_corners)
    return interpolate_linear_1d(x, out_h, 1, align_corners=align_corners)


# --------------------------------------------------------------------------------------------
# Adaptive average pooling (PyTorch nn.AdaptiveAvgPool2d semantics)


@functools.lru_cache(maxsize=256)
def adaptive_pool_bins(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive-pooling bins: output i averages input [start[i], end[i]) with
    start = floor(i * in / out), end = ceil((i + 1) * in / out) (bins may overlap)."""
    i = np.arange(out_size, dtype=np.int64)
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    start.setflags(write=False)
    end.setflags(write=False)
    return start, end


def adaptive_avg_pool_1d(x: jax.Array, out_size: int, axis: int) -> jax.Array:
    """PyTorch adaptive average pooling of `x` along `axis` (sum of the bin, then / its size).

    Equal bins (in divisible by out) are a reshape and a sum; otherwise the k-th element of every
    bin is taken with one static gather (or slice) per k < the longest bin, masked past each
    bin's end, and summed. Bins are short (at most ceil(in / out) + 1), so this is O(input).
    """
    in_size = x.shape[axis]
    if out_size == in_size:
        return x
    axis = axis % x.ndim
    if in_size % out_size == 0:
        k = in_size // out_size
        shape = x.shape[:axis] + (out_size, k) + x.shape[axis + 1 :]
        total = jnp.sum(x.reshape(shape), axis=axis + 1)
        return total / jnp.asarray(k, x.dtype)
    start, end = adaptive_pool_bins(in_size, out_size)
    length = end - start
    total = None
    for k in range(int(length.max())):
        part = take_static(x, np.minimum(start + k, in_size - 1), axis)
        if k >= int(length.min()):
            part = jnp.where(_along(k < length, axis, x.ndim, jnp.bool_), part, 0)
        total = part if total is None else total + part
    return total / _along(length.astype(np.float32), axis, x.ndim, x.dtype)


def adaptive_avg_pool(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
    """[B,H,W,C] -> [B,oh,ow,C], PyTorch's AdaptiveAvgPool2d (bins may overlap), up to float
    rounding (PyTorch sums a bin in one pass; here rows, then columns)."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    oh, ow = output_size
    return adaptive_avg_pool_1d(adaptive_avg_pool_1d(x, oh, 1), ow, 2)


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
        self.conv = conv_layer(
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
        if train and self.batch_norm is not None and supports_train_batch_norm(self.batch_norm, x):
            return train_batch_norm(self.batch_norm, x, relu=self.use_act)
        if self.batch_norm is not None:
            x = self.batch_norm(x, use_running_average=not train)
        if self.use_act:
            x = jax.nn.relu(x)
        return x


def supports_train_batch_norm(bn: nnx.BatchNorm, x: jax.Array) -> bool:
    """Whether `train_batch_norm` computes exactly what `bn(x, use_running_average=False)` does
    (channels last, scale and bias, flax's fast variance, no cross-device axis name)."""
    return (
        bn.scale is not None
        and bn.bias is not None
        and bn.use_fast_variance
        and bn.axis_name is None
        and bn.axis in (-1, x.ndim - 1)
    )


def train_batch_norm(bn: nnx.BatchNorm, x: jax.Array, *, relu: bool = False) -> jax.Array:
    """`bn(x, use_running_average=False)` (then ReLU when `relu`), running statistics updated
    as nnx.BatchNorm does, through `batch_norm_train` (a backward pass that keeps only x, and
    the output when a ReLU follows). Check `supports_train_batch_norm` first."""
    scale, bias = bn.scale[...], bn.bias[...]
    out_dtype = jnp.dtype(bn.dtype or jnp.result_type(x, scale, bias))
    y, mean, var = batch_norm_train(x, scale, bias, float(bn.epsilon), out_dtype, relu)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    bn.mean[...] = bn.momentum * bn.mean[...] + (1 - bn.momentum) * mean
    bn.var[...] = bn.momentum * bn.var[...] + (1 - bn.momentum) * var
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x, scale, bias, epsilon: float, out_dtype, relu: bool):
    """Training-mode BatchNorm (batch statistics over all but the last axis, float32, flax's
    fast variance E[x^2] - E[x]^2), then ReLU when `relu`: x [..., C], scale/bias [C] ->
    (y out_dtype [..., C], batch mean [C], batch variance [C]; no gradient flows back through
    these two).

    The backward pass recomputes the normalised input from x (and the ReLU's mask as y > 0):
    autodiff kept x, x - mean, the pre-ReLU value and y for every UPerNet ConvModule (4 x 64
    MiB each at stride 4 of a 512x512 batch of 2); PyTorch keeps x and y, as this does."""
    return _batch_norm_train_fwd(x, scale, bias, epsilon, out_dtype, relu)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon, out_dtype, relu):
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(xf, axis=axes)
    var = jnp.maximum(jnp.mean(jnp.square(xf), axis=axes) - jnp.square(mean), 0.0)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (xf - mean) * (rstd * scale.astype(jnp.float32)) + bias.astype(jnp.float32)
    y = (jax.nn.relu(y) if relu else y).astype(out_dtype)
    return (y, mean, var), (x, y if relu else None, mean, rstd, scale, bias)


def _batch_norm_train_bwd(epsilon, out_dtype, relu, residuals, cotangents):
    x, y, mean, rstd, scale, bias = residuals
    g = cotangents[0].astype(jnp.float32)
    if relu:
        g = jnp.where(y > 0, g, 0.0)
    axes = tuple(range(x.ndim - 1))
    # Written without a standalone normalised input: x appears only next to g, so XLA finds no
    # g-independent [..., C] value to compute in the forward pass and keep (it did so with
    # xhat = (x - mean) * rstd, even behind an optimization barrier, which XLA:CPU drops).
    n = x.size // x.shape[-1]
    xf = x.astype(jnp.float32)
    dbias = jnp.sum(g, axis=axes)
    dscale = rstd * (jnp.sum(g * xf, axis=axes) - mean * dbias)
    c = scale.astype(jnp.float32) * rstd
    dx = c * (g - dbias / n - (xf - mean) * (rstd * dscale / n))
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, epsilon: float, out_dtype) -> jax.Array:
    """LayerNorm over the last axis, statistics in float32 (two-pass variance), -> out_dtype.

    x [..., C]; scale, bias [C]. The backward pass recomputes the normalised input from
    (x, mean, 1/std), as PyTorch does: autodiff of the composed ops kept x - mean and the
    normalised x for every call (2 x 150 MiB of the UPerNet-Swin-T train step's peak)."""
    return _layer_norm_fwd(x, scale, bias, epsilon, out_dtype)[0]


def _layer_norm_fwd(x, scale, bias, epsilon, out_dtype):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True) + epsilon)
    y = (xf - mean) * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(out_dtype), (x, mean, rstd, scale, bias)


def _layer_norm_bwd(epsilon, out_dtype, residuals, g):
    x, mean, rstd, scale, bias = residuals
    # As _batch_norm_train_bwd: x appears only next to g (no g-independent [..., C] value).
    gf = g.astype(jnp.float32)
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    dscale = jnp.sum(gf * (xf - mean) * rstd, axis=axes)
    dbias = jnp.sum(gf, axis=axes)
    gs = gf * scale.astype(jnp.float32)
    s1 = jnp.mean(gs, axis=-1, keepdims=True)
    s2 = jnp.mean(gs * xf, axis=-1, keepdims=True) - mean * s1  # mean(gs * (x - mean))
    dx = rstd * (gs - s1 - (xf - mean) * (rstd * rstd * s2))
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.LayerNorm):
    """`nnx.LayerNorm` (same parameters and dtype rules) over the last axis, run by
    `layer_norm` above: a backward pass that keeps only (x, mean, 1/std)."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        if mask is not None or self.scale is None or self.bias is None:
            return super().__call__(x, mask=mask)
        if self.reduction_axes not in (-1, (-1,)) or self.feature_axes not in (-1, (-1,)):
            return super().__call__(x, mask=mask)
        scale, bias = self.scale[...], self.bias[...]
        out_dtype = self.dtype or jnp.result_type(x, scale, bias)
        return layer_norm(x, scale, bias, float(self.epsilon), jnp.dtype(out_dtype))


def dropout2d(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout:
    """PyTorch `nn.Dropout2d` for NHWC: one mask value per (sample, channel)."""
    return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)


@jax.custom_vjp
def gelu_exact(x: jax.Array) -> jax.Array:
    """PyTorch nn.GELU() default (erf form); jax.nn.gelu defaults to the tanh approximation.

    Same values as `jax.nn.gelu(x, approximate=False)`; its gradient Phi(x) + x phi(x) is
    recomputed from x in the backward pass, as PyTorch does: autodiff kept two erfc-sized
    residuals per call besides x (456 MiB of the UPerNet-Swin-T train step's peak at 512x512,
    batch 2; benchmarks/README.md)."""
    return jax.nn.gelu(x, approximate=False)


def _gelu_exact_fwd(x):
    return jax.nn.gelu(x, approximate=False), x


def _gelu_exact_bwd(x, g):
    # The barrier (x tied to g) keeps XLA from sharing this erf's pieces with the forward's and
    # from computing them before g exists: either would keep them alive from the forward to the
    # backward pass (the residuals this VJP is here to drop).
    x, g = jax.lax.optimization_barrier((x, g))
    xf = x.astype(jnp.float32)
    cdf = 0.5 * jax.lax.erfc(-xf * np.float32(np.sqrt(0.5)))
    pdf = jnp.exp(-0.5 * xf * xf) * np.float32(1.0 / np.sqrt(2.0 * np.pi))
    return ((g.astype(jnp.float32) * (cdf + xf * pdf)).astype(g.dtype),)


gelu_exact.defvjp(_gelu_exact_fwd, _gelu_exact_bwd)


__all__ = [
    "ConvModule",
    "DropPath",
    "LayerNorm",
    "TORCH_BN_EPS",
    "TORCH_BN_MOMENTUM",
    "adaptive_avg_pool",
    "adaptive_avg_pool_1d",
    "adaptive_pool_bins",
    "batch_norm_train",
    "dropout2d",
    "flax_momentum",
    "gelu_exact",
    "interpolate_linear_1d",
    "kaiming_normal_fan_out",
    "layer_norm",
    "linear_taps",
    "linear_taps_transposed",
    "resize_bilinear",
    "supports_train_batch_norm",
    "take_static",
    "torch_default_kernel",
    "train_batch_norm",
    "trunc_normal_02",
]
