"""3x3 stride-1 "same" convolutions as Winograd F(2x2, 3x3): 16 matmuls per 2x2 output tile
instead of the 36 of a direct convolution, in the forward pass and in both gradients.

Why: on the CPU the UPerNet decode head's 3x3 convolutions at stride 4 (2048 -> 512 and
512 -> 512 at 128x128 for a 512 crop) are most of a Swin-T train step's arithmetic, and XLA:CPU
runs them as direct convolutions. Winograd's minimal filtering (Lavin & Gray, 2016; what cuDNN and
oneDNN use for such layers) does the same convolution with 2.25x fewer multiplies:

    y_tile = A^T [ (G w G^T) . (B^T d B) ] A        (per 4x4 input tile d, 2x2 output tile)

with the 16 elementwise products, summed over input channels, being 16 matmuls
[tiles, I] x [I, O]. The transforms' entries are 0, +-1 and +-1/2, so float32 results differ
from a direct convolution by a few ulps of the inputs' scale (tests/test_winograd.py bounds it).

Shapes: x [B,H,W,I], w [3,3,I,O] -> [B,H,W,O], zero padding 1 on every side (any H, W: odd
sizes get a zero row/column of tiles that is cropped). The gradients:
  - input: the same transform of the output gradient with the flipped, transposed kernel (the
    input gradient of a stride-1 "same" 3x3 convolution is such a convolution);
  - weight: dW = G^T [ sum over tiles (A g A^T) . (B^T d B) ] G: 16 matmuls [I, tiles] x
    [tiles, O], g the output gradient's 2x2 tile (the adjoint of the forward in w).
Large maps run as row chunks in a `lax.scan` (one chunk's 16 transformed tiles bounded by
CHUNK_ELEMENTS), so the 4x larger transformed input is never held whole; each chunk gathers its
rows of x (no padded copy of x). The only residuals are x and w.

Cost (`python benchmarks/conv_cost.py --methods msc_seg,winograd`, 2 cores, batch 2, forward +
both gradients): UPerNet's bottleneck 2048 -> 512 at 128x128 7.62 -> 4.51 s (PyTorch/oneDNN
5.02 s), its fpn_conv 512 -> 512 1.79 -> 0.89 s (torch 1.29 s). conv.py says where it is used.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from msc_seg.models import ordering

# B^T, G, A^T of F(2x2, 3x3) with interpolation points 0, 1, -1.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

# One chunk's transformed input tiles (16 values per 2x2 output pixels per input channel) hold
# at most this many values (64 MiB in float32).
CHUNK_ELEMENTS = 1 << 24


def _input_transform(slab, tile_cols: int):
    """B^T d B for every 4x4 tile (stride 2) of a padded slab [B, 2r+2, 2c+2, I] ->
    [16, B*r*c, I] (tile position p = 4*row + column of the transformed tile)."""
    rows = (slab.shape[1] - 2) // 2
    r = [slab[:, k : k + 2 * rows : 2] for k in range(4)]
    out = []
    for t in (r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]):
        c = [t[:, :, k : k + 2 * tile_cols : 2] for k in range(4)]
        out += [c[0] - c[2], c[1] + c[2], c[2] - c[1], c[1] - c[3]]
    return jnp.stack(out).reshape(16, -1, slab.shape[-1])


def _output_transform(m, batch: int, rows: int, cols: int):
    """A^T M A: [16, B*r*c, O] -> [B, 2r, 2c, O]."""
    m = m.reshape(4, 4, batch, rows, cols, m.shape[-1])
    half = [(m[0] + m[1] + m[2]), (m[1] - m[2] - m[3])]  # over the tile's rows
    y = [[h[0] + h[1] + h[2], h[1] - h[2] - h[3]] for h in half]  # over its columns
    y = jnp.stack([jnp.stack(row) for row in y])  # [2, 2, B, r, c, O]
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(batch, 2 * rows, 2 * cols, m.shape[-1])


def _gradient_transform(g_slab, cols: int):
    """A g A^T for every 2x2 tile of an output-gradient slab [B, 2r, 2c, O] -> [16, B*r*c, O]."""
    q = [g_slab[:, k::2] for k in range(2)]
    out = []
    for t in (q[0], q[0] + q[1], q[0] - q[1], -q[1]):
        c = [t[:, :, k : 2 * cols : 2] for k in range(2)]
        out += [c[0], c[0] + c[1], c[0] - c[1], -c[1]]
    return jnp.stack(out).reshape(16, -1, g_slab.shape[-1])


def _weight_transform(w):
    """G w G^T: [3,3,I,O] -> [16,I,O]."""
    g = jnp.asarray(_G, w.dtype)
    return jnp.einsum("ai,ijcd,bj->abcd", g, w, g).reshape(16, *w.shape[2:])


def _chunks(h: int, w: int, batch: int, channels: int):
    """(tile rows per chunk, chunk count) for an HxW map: equal chunks (the last tile rows may be
    zero padding) whose transform fits CHUNK_ELEMENTS."""
    rows, cols = -(-h // 2), -(-w // 2)
    size = max(1, min(rows, CHUNK_ELEMENTS // (16 * batch * cols * channels)))
    count = -(-rows // size)
    return -(-rows // count), count


def _rows(x, start, count: int, width: int):
    """Rows [start, start + count) of x [B,H,W,C] (a traced start), zero outside [0, H), and the
    columns zero-padded from W to `width` on the right: [B, count, width, C]. A gather of the
    rows, so that no padded copy of the whole of x is made."""
    index = start + jnp.arange(count)
    inside = (index >= 0) & (index < x.shape[1])
    rows = jnp.take(x, jnp.clip(index, 0, x.shape[1] - 1), axis=1)
    rows = jnp.where(inside[None, :, None, None], rows, jnp.zeros((), x.dtype))
    return jnp.pad(rows, ((0, 0), (0, 0), (0, width - x.shape[2]), (0, 0)))


def _slab(x, first, count: int, cols: int):
    """The padded input that tile rows [first, first + count) read: x's rows
    [2*first - 1, 2*(first + count) + 1), padded by 1 on the left and up to 2*cols + 2 columns
    -> [B, 2*count + 2, 2*cols + 2, C]."""
    rows = _rows(x, 2 * first - 1, 2 * count + 2, 2 * cols + 1)
    return jnp.pad(rows, ((0, 0), (0, 0), (1, 0), (0, 0)))


def _forward(x, w, precision, after=None):
    """x [B,H,W,I] -> [B,H,W,O]. `after`: a scalar that must be computed before the output
    buffer and the transformed kernel are made (see _conv3x3_bwd); without it they wait for x
    (NaN-free ties, ordering.first_flag / zeros_after)."""
    b, h, wd, cin = x.shape
    cout = w.shape[-1]
    cols = -(-wd // 2)
    size, count = _chunks(h, wd, b, max(cin, cout))
    first = x if after is None else after  # what the kernel transform and buffer wait for
    # The transformed kernel [16,I,O] once per call, before the loop: XLA does not hoist it out
    # of the loop by itself (it is 16/9 larger than w), and made in each of the 16 chunks it
    # cost 0.73 s of the Swin-T step (the fpn_bottleneck's forward and dx). Tied to x, it waits
    # for the concat that feeds the fpn_bottleneck (the Swin-T plan stayed 3.85 GiB).
    wt = _weight_transform(ordering.after(w, ordering.first_flag(first)))

    def chunk(first):
        v = _input_transform(_slab(x, first, size, cols), cols)
        m = jnp.einsum("ptc,pcd->ptd", v, wt, precision=precision)
        return _output_transform(m, b, size, cols)

    if count == 1:
        return chunk(0)[:, :h, :wd]

    # A loop, not unrolled chunks: unrolled, XLA kept several chunks' transforms alive at once.
    def body(y, i):
        return lax.dynamic_update_slice_in_dim(y, chunk(i * size), 2 * size * i, axis=1), None

    y = ordering.zeros_after((b, 2 * size * count, 2 * cols, cout), x.dtype, first)
    return lax.scan(body, y, jnp.arange(count))[0][:, :h, :wd]


def _weight_grad(x, g, precision):
    b, h, wd, cin = x.shape
    cout = g.shape[-1]
    cols = -(-wd // 2)
    size, count = _chunks(h, wd, b, max(cin, cout))
    gm = jnp.asarray(_G, jnp.promote_types(x.dtype, g.dtype))

    def chunk(dw, first):
        v = _input_transform(_slab(x, first, size, cols), cols)
        t = _gradient_transform(_rows(g, 2 * first, 2 * size, 2 * cols), cols)
        du = jnp.einsum("ptd,ptc->pcd", t, v, precision=precision).reshape(4, 4, cin, cout)
        # G^T dU G per chunk: the carry is the [3,3,I,O] gradient, not the 16/9 x larger dU.
        return dw + jnp.einsum("ai,abcd,bj->ijcd", gm, du, gm), None

    # made after g (ordering.after: a zero-filled loop buffer is otherwise made whenever XLA likes)
    dw = jnp.full((3, 3, cin, cout), ordering.after(jnp.zeros((), gm.dtype), g[0, 0, 0, 0]))
    return lax.scan(chunk, dw, jnp.arange(count) * size)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, w, precision=None):
    """[B,H,W,I] x [3,3,I,O] -> [B,H,W,O], stride 1, zero padding 1 (see the module doc)."""
    return _forward(x, w, precision)


def _conv3x3_fwd(x, w, precision):
    return _forward(x, w, precision), (x, w)


def _conv3x3_bwd(precision, residuals, g):
    x, w = residuals
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dw = _weight_grad(x, g, precision)
    # The weight gradient first, then the input gradient's buffer (made from a scalar of dw):
    # x, which only the weight gradient reads, is then free before dx exists. Left to XLA,
    # the two were alive together at the step's peak (UPerNet's bottleneck: 2 x 256 MiB).
    dx = _forward(g, flipped, precision, after=dw[0, 0, 0, 0]).astype(x.dtype)
    return dx, dw.astype(w.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)
