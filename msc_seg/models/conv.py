"""The models' 2-D convolution: `jax.lax.conv_general_dilated` everywhere but on the CPU, where
its gradients are rewritten into the two forms XLA:CPU runs fast.

Why: XLA:CPU runs a convolution fast only in the canonical NHWC x HWIO form (Eigen). The
gradients autodiff makes are other forms: the weight gradient contracts over batch and space
(`f01b_i01o->01bf`), the input gradient uses the kernel transposed (`01oi`). Outside loops XLA
rewrites most of them, but inside a `lax.scan` body (models/repeat.py) they stay and go to
XLA's generic loop emitter: a ResNet-101 train step at 512x512 took over 10 minutes on 2 cores,
75 % of it in 24 such convolutions (benchmarks/profile_step.py). Here, on the CPU backend:
  - 1x1 convolutions are matmuls (a strided one subsamples first): both gradients are matmuls;
  - k x k convolutions (no input dilation, one group) keep XLA's forward convolution, and a
    custom VJP computes the weight gradient as k*k matmuls of the shifted input with the output
    gradient (one tap at a time, in a loop: unrolled, all k*k window copies were alive at once),
    and the input gradient at stride 1 as a canonical convolution with the flipped,
    transposed kernel, at other strides as k*k matmuls spread back with interior padding;
  - a large undilated stride-1 convolution (forward, input gradient) runs as row chunks, on
    which XLA:CPU's convolution is ~30 % faster (CHUNK_ELEMENTS below);
  - a wide 3x3 stride-1 "same" float32 convolution on a large map (UPerNet's decode head) runs as
    Winograd F(2x2, 3x3), forward and both gradients (models/winograd.py, WINOGRAD_* below).
Convolutions below MIN_REWRITE_FLOPS (tiny ones: the tests' models) stay lax's, whose program
compiles faster. Forward values equal XLA's convolution; gradients equal autodiff's to float
rounding (tested in tests/test_conv.py). Other backends (GPU, TPU) and other convolutions use lax
unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from msc_seg.models import winograd
from msc_seg.models.ordering import after, first_flag

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
    """Drop-in for `lax.conv_general_dilated` (as `nnx.Conv(conv_general_dilated=...)`)."""

    def plain():
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )

    if not _rewritable(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count):
        return plain()
    if _forward_flops(lhs.shape, rhs.shape, window_strides) < MIN_REWRITE_FLOPS:
        return plain()
    if kwargs.get("preferred_element_type") is not None or kwargs.get("out_sharding") is not None:
        return plain()
    strides = tuple(window_strides)
    dilation = tuple(rhs_dilation or (1, 1))
    kh, kw = rhs.shape[:2]
    if isinstance(padding, str):  # "SAME" / "VALID" -> explicit (low, high) pairs
        reach = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
        padding = lax.padtype_to_pads(lhs.shape[1:3], reach, strides, padding)
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)
    if (kh, kw) == (1, 1) and pads == ((0, 0), (0, 0)):
        return _conv1x1(lhs[:, :: strides[0], :: strides[1]], rhs, precision)
    if _winograd_pays(lhs, rhs, strides, pads, dilation):
        return winograd.conv3x3(lhs, rhs, precision)
    return _conv_cpu_vjp(lhs, rhs, strides, pads, dilation, precision)


# Below this many forward FLOPs a convolution stays lax's: its loop-emitter cost is small, and the
# k*k tap matmuls of the rewritten gradients cost compile time (the test suite's tiny models are
# compile-bound). Every convolution of the paper models at their crop sizes is far above it
# (the smallest, Swin's 4x4 patch embedding at 512x512 batch 2: 3e8).
MIN_REWRITE_FLOPS = 1 << 27


# A 3x3 stride-1 "same" float32 convolution this wide, over this many 2x2 output tiles, runs as
# Winograd F(2x2, 3x3) (models/winograd.py). `python benchmarks/conv_cost.py --methods
# msc_seg,winograd` (2 cores, batch 2, forward + both gradients): UPerNet's 2048 -> 512
# bottleneck at 128x128 7.62 -> 4.51 s, its 512 -> 512 fpn_conv 1.79 -> 0.89 s, at 64x64
# 0.43 -> 0.27 s; at 32x32 (512 tiles) no gain, at 16x16 and for HRNet's and ResNet's narrower
# convolutions (48-128 channels) the forward got 2-4x slower.
WINOGRAD_MIN_CHANNELS = 256
WINOGRAD_MIN_TILES = 2048


def _winograd_pays(x, w, strides, pads, dilation) -> bool:
    b, h, wd, _ = x.shape
    kh, kw, cin, cout = w.shape
    return (
        (kh, kw, strides, dilation, pads) == (3, 3, (1, 1), (1, 1), ((1, 1), (1, 1)))
        and x.dtype == w.dtype == jnp.float32
        and min(cin, cout) >= WINOGRAD_MIN_CHANNELS
        and b * -(-h // 2) * -(-wd // 2) >= WINOGRAD_MIN_TILES
    )


def _forward_flops(lhs_shape, rhs_shape, strides) -> int:
    """2*B*H'*W'*kh*kw*I*O with H', W' from the input size and stride (padding ignored: a size
    estimate, not an exact count)."""
    b, h, w, _ = lhs_shape
    kh, kw, i, o = rhs_shape
    return 2 * b * -(-h // strides[0]) * -(-w // strides[1]) * kh * kw * i * o


def _rewritable(lhs, rhs, lhs_dilation, dimension_numbers, groups) -> bool:
    if jax.default_backend() != "cpu" or groups != 1:
        return False
    if lhs.ndim != 4 or rhs.ndim != 4 or any(d != 1 for d in (lhs_dilation or (1, 1))):
        return False
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    given = (
        dimension_numbers
        if dimension_numbers is None or isinstance(dimension_numbers, lax.ConvDimensionNumbers)
        else lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    )
    return given == nhwc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv1x1(x, w, precision):
    """[B,H,W,I] x [1,1,I,O] -> [B,H,W,O] as a matmul (both gradients matmuls, see below)."""
    return jnp.einsum("bhwi,io->bhwo", x, w[0, 0], precision=precision)


def _conv1x1_fwd(x, w, precision):
    return _conv1x1(x, w, precision), (x, w)


def _conv1x1_bwd(precision, residuals, g):
    x, w = residuals
    dw = _matmul_weight_grad(x, g, precision)[None, None].astype(w.dtype)
    dx = jnp.einsum("bhwo,io->bhwi", g, w[0, 0], precision=precision)
    return weight_grad_first(dx.astype(x.dtype), dw), dw


_conv1x1.defvjp(_conv1x1_fwd, _conv1x1_bwd)


def weight_grad_first(dx, dw):
    """dx, made to wait for the weight gradient dw (a NaN-free tie, ordering.first_flag).

    Why: nothing needs a weight gradient before the optimiser's update, and XLA CPU's
    scheduler put many of them there, at the backward pass's end, so each one kept its input
    and output gradient (64 MiB each for UPerNet-Swin-T's stride-4 maps at 512x512, batch 2)
    alive through the backbone's backward, the step's peak. Tied, the weight gradient is
    computed where the input gradient is, and its operands die there."""
    return after(dx, first_flag(dw))


def _matmul_weight_grad(x, g, precision):
    """sum over b,h,w of x^T g -> [I,O], computed as (g^T x)^T: XLA:CPU's matmul wants its
    contraction last on the left, so the (smaller) output gradient is the one it transposes,
    once for every tap, rather than each tap's input window (a 9x larger copy at 2048 in)."""
    return jnp.einsum("bhwo,bhwi->oi", g, x, precision=precision).T


# XLA:CPU's convolution (Eigen) slows down when one call's input is large: on 2 cores (AVX2),
# UPerNet's 3x3 convolutions at 128x128, batch 2, ran at 69-79 GFLOP/s whole and at 95-104 GFLOP/s
# as row chunks whose input slab holds <= 4M values (the same convolutions at 64x64 already ran at
# 90-114; benchmarks/conv_cost.py). Dilated convolutions (DeepLab's ASPP) got slower in chunks
# (their halo rows dominate), so they stay whole. MAX_CHUNKS bounds the program's size for large
# eval canvases (beyond it the chunks grow).
CHUNK_ELEMENTS = 1 << 22
MAX_CHUNKS = 16


def _forward(x, w, strides, pads, dilation, precision):
    """XLA's NHWC convolution; a large undilated stride-1 one runs as row chunks (see above)."""

    def whole(x, row_pads):
        return lax.conv_general_dilated(
            x,
            w,
            strides,
            (row_pads, pads[1]),
            rhs_dilation=dilation,
            dimension_numbers=_NHWC,
            precision=precision,
        )

    b, h, wd, cin = x.shape
    kh = w.shape[0]
    lo, hi = pads[0]
    out_rows = h + lo + hi - kh + 1
    # A chunk must not lie wholly in a padding of a kernel or more (its slice would be empty).
    too_much_padding = max(lo, hi) >= kh or min(lo, hi, *pads[1]) < 0
    if strides != (1, 1) or dilation != (1, 1) or too_much_padding:
        return whole(x, pads[0])
    slab_row = b * (wd + sum(pads[1])) * cin  # values per input row of a chunk
    rows = max(CHUNK_ELEMENTS // slab_row, -(-out_rows // MAX_CHUNKS), 1)
    if rows >= out_rows:  # also a map of one output row
        return whole(x, pads[0])
    rows = -(-out_rows // -(-out_rows // rows))  # even chunks: 64 rows as 32 + 32, not 62 + 2
    chunks = []
    for r0 in range(0, out_rows, rows):
        n = min(rows, out_rows - r0)
        # output rows [r0, r0 + n) read padded rows [r0, r0 + n + kh - 1), i.e. input rows
        # [r0 - lo, r0 + n + kh - 1 - lo), the part outside [0, h) being zero padding
        start, stop = r0 - lo, r0 + n + kh - 1 - lo
        first, last = max(start, 0), min(stop, h)
        chunks.append(whole(x[:, first:last], (first - start, stop - last)))
    return jnp.concatenate(chunks, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_cpu_vjp(x, w, strides, pads, dilation, precision):
    """[B,H,W,I] x [kh,kw,I,O] -> [B,H',W',O]: XLA's convolution, CPU-friendly gradients."""
    return _forward(x, w, strides, pads, dilation, precision)


def _conv_cpu_fwd(x, w, strides, pads, dilation, precision):
    return _forward(x, w, strides, pads, dilation, precision), (x, w)


def _conv_cpu_bwd(strides, pads, dilation, precision, residuals, g):
    x, w = residuals
    dw = _weight_grad(x, g, w.shape, strides, pads, dilation, precision)
    return weight_grad_first(_input_grad(x, w, g, strides, pads, dilation, precision), dw), dw


_conv_cpu_vjp.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def _map_taps(tap, taps: int, shape, dtype, dep):
    """jnp.stack([tap(t) for t in range(taps)]) [taps, *shape], one tap at a time (a loop, so one
    tap's window copy is alive at a time), into a buffer made after `dep` (see `after`)."""

    def body(t, out):
        return lax.dynamic_update_index_in_dim(out, tap(t).astype(dtype), t, axis=0)

    out = jnp.full((taps, *shape), after(jnp.zeros((), dtype), dep))
    return lax.fori_loop(0, taps, body, out)


def _weight_grad(x, g, w_shape, strides, pads, dilation, precision):
    """dW[i,j] = (the input rows tap (i,j) reads)^T g: one [I,O] matmul per tap, the taps in a
    loop (_map_taps) so that one tap's window copy is alive at a time: unrolled, XLA kept all
    k*k of them (9 x 277 MB for UPerNet's 2048-channel bottleneck at 512x512, batch 2)."""
    kh, kw, cin, cout = w_shape
    b, ho, wo, _ = g.shape
    back_pads = _back_pads(pads, (kh, kw), dilation)
    if strides == (1, 1) and cin > cout and back_pads is not None:
        return _weight_grad_shifting_g(x, g, w_shape, back_pads, dilation, precision)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    span = (strides[0] * (ho - 1) + 1, strides[1] * (wo - 1) + 1)

    def tap(t):
        r, c = (t // kw) * dilation[0], (t % kw) * dilation[1]
        window = lax.dynamic_slice(xp, (0, r, c, 0), (b, *span, cin))
        window = window[:, :: strides[0], :: strides[1]]
        return _matmul_weight_grad(window, g, precision)

    taps = _map_taps(tap, kh * kw, (cin, cout), x.dtype, g[0, 0, 0, 0])
    return taps.reshape(w_shape)


def _back_pads(pads, kernel, dilation):
    """The padding of a stride-1 convolution's output gradient that lines it up with the input:
    (reach - lo, reach - hi) per axis, reach = dilation * (k - 1); None when a padding exceeds
    the reach (the forward then had outputs reading only padding)."""
    reach = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    if any(p > r for pair, r in zip(pads, reach, strict=True) for p in pair):
        return None
    return tuple((r - lo, r - hi) for (lo, hi), r in zip(pads, reach, strict=True))


def _weight_grad_shifting_g(x, g, w_shape, back_pads, dilation, precision):
    """The stride-1 weight gradient with the output gradient's windows moving over the input,
    for convolutions that narrow the channels (in > out): output o reads x[o + d*i - lo], so
    dW[i] = sum_q x[q] g[q - d*i + lo] = x^T (g padded by `_back_pads`, rows from d*(k-1-i)).
    The copies are of g: for UPerNet's 2048 -> 512 bottleneck at 512x512, batch 2, a 66 MiB
    padded g and a 64 MiB window per tap instead of a 264 MiB padded input and a 256 MiB window
    (XLA temporaries of this gradient alone 588 -> 134 MiB, same time)."""
    kh, kw, _, cout = w_shape
    b, h, wd, _ = x.shape
    gp = jnp.pad(g, [(0, 0), *back_pads, (0, 0)])

    def tap(t):
        i, j = t // kw, t % kw
        start = (0, dilation[0] * (kh - 1 - i), dilation[1] * (kw - 1 - j), 0)
        window = lax.dynamic_slice(gp, start, (b, h, wd, cout))
        return _matmul_weight_grad(x, window, precision)

    cin = x.shape[-1]
    taps = _map_taps(tap, kh * kw, (cin, cout), x.dtype, g[0, 0, 0, 0])
    return taps.reshape(w_shape)


def _input_grad(x, w, g, strides, pads, dilation, precision):
    """At stride 1 with padding <= the kernel's reach: the forward convolution of g with the
    flipped kernel, inputs and outputs swapped (canonical form). Otherwise one matmul per tap,
    g @ W[tap]^T, spread back over the rows the tap read (lax.pad with interior zeros)."""
    kh, kw, _, _ = w.shape
    back_pads = _back_pads(pads, (kh, kw), dilation)
    if strides == (1, 1) and back_pads is not None:
        flipped = after(jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), g[0, 0, 0, 0])
        return _forward(g, flipped, (1, 1), back_pads, dilation, precision).astype(x.dtype)
    _, h, wd, _ = x.shape
    _, ho, wo, _ = g.shape
    hp, wp = h + sum(pads[0]), wd + sum(pads[1])
    zero = jnp.zeros((), g.dtype)
    total = None
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilation[0], j * dilation[1]
            part = jnp.einsum("bhwo,io->bhwi", g, w[i, j], precision=precision)
            spread = lax.pad(
                part,
                zero,
                (
                    (0, 0, 0),
                    (r, hp - r - strides[0] * (ho - 1) - 1, strides[0] - 1),
                    (c, wp - c - strides[1] * (wo - 1) - 1, strides[1] - 1),
                    (0, 0, 0),
                ),
            )
            total = spread if total is None else total + spread
    return total[:, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + wd].astype(x.dtype)


def conv_layer(*args, **kwargs) -> nnx.Conv:
    """`nnx.Conv(*args, **kwargs)` running `conv_general_dilated` above (same parameters)."""
    return nnx.Conv(*args, conv_general_dilated=conv_general_dilated, **kwargs)
