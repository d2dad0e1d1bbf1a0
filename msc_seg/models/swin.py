"""Swin Transformer backbone, the segmentation variant (Liu et al. 2021; Swin-Transformer-Semantic-
Segmentation `mmseg/models/backbones/swin_transformer.py`, which the reference `models/Swin.py` is).

Facts this file reproduces (docs/METHOD.md §14):
* feature maps are padded (bottom/right, zeros, after `norm1`) to a multiple of the window, and
  **every odd block of every stage is shifted** whatever the resolution (the classification model
  turns the shift off when a stage is no larger than the window; at 512x512 inputs both agree);
* the shifted-window mask is built for the padded size (-100 between regions), and padded tokens of
  unshifted blocks are not masked (as in the reference);
* exact (erf) GELU, LayerNorm eps 1e-5, one output LayerNorm `norm{i}` per returned stage.

Parameter layout mirrors the official checkpoint keys one to one so a later importer can map them
(`patch_embed.proj`, `patch_embed.norm`, `layers[i].blocks[j].{norm1,attn.qkv,attn.proj,
attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}`, `layers[i].downsample.{norm,reduction}`,
`norm0..norm3`). Flax kernels are transposed PyTorch weights: Linear [in,out], Conv
[kh,kw,in,out]. The qkv output features are ordered [3, heads, head_dim] and the attention output
[heads, head_dim], as in PyTorch. `relative_position_index` is not a variable: it is a constant
derived from the window size.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models.conv import conv_layer
from msc_seg.models.layers import (
    DropPath,
    LayerNorm,
    gelu_exact,
    torch_default_kernel,
    trunc_normal_02,
)
from msc_seg.models.repeat import call, check_remat, run_chain

LN_EPS = 1e-5
MASK_VALUE = -100.0  # the reference's additive mask between shifted-window regions


@dataclasses.dataclass(frozen=True)
class SwinVariant:
    """Architecture hyper-parameters of one Swin size."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


SWIN_VARIANTS: dict[str, SwinVariant] = {
    "swin_t": SwinVariant(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": SwinVariant(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": SwinVariant(128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_l": SwinVariant(192, (2, 2, 18, 2), (6, 12, 24, 48)),
    # Tests and the demo: 2 blocks per stage so every stage has a shifted block; window 4 so that
    # 128x128 inputs (stages 32,16,8,4) exercise shifts and 96x160 inputs exercise padding.
    "swin_tiny_test": SwinVariant(32, (2, 2, 2, 2), (1, 2, 4, 8), window_size=4),
    # End-to-end tests of the training system: one (unshifted) block per stage keeps the train
    # step's compile time down; the blocks themselves are tested with swin_tiny_test.
    "swin_micro_test": SwinVariant(16, (1, 1, 1, 1), (1, 1, 2, 2), window_size=4),
}


def get_swin_variant(name: str) -> SwinVariant:
    """Look a variant up by name; unknown names raise an ArgumentError listing the known ones."""
    if name not in SWIN_VARIANTS:
        raise ArgumentError(
            "backbone", name, f"unknown Swin backbone: choose one of {sorted(SWIN_VARIANTS)}"
        )
    return SWIN_VARIANTS[name]


# --------------------------------------------------------------------------------------------
# Window bookkeeping (static, numpy)


@functools.lru_cache(maxsize=32)
def relative_position_index(window_size: int) -> np.ndarray:
    """[N,N] int32 index into the [(2w-1)^2, heads] bias table, N = w*w (row-major tokens)."""
    w = window_size
    coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
    return (rel[..., 0] * (2 * w - 1) + rel[..., 1]).astype(np.int32)


@functools.lru_cache(maxsize=64)
def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int) -> np.ndarray:
    """[nW,N,N] float32 additive mask (0 or -100) for a padded [height,width] map, shifted by
    `shift_size`: tokens from different pre-shift regions must not attend to each other."""
    w, s = window_size, shift_size
    img = np.zeros((1, height, width, 1), dtype=np.float32)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    mw = np.asarray(window_partition(img, w))[..., 0]  # [nW, N]
    diff = mw[:, None, :] - mw[:, :, None]
    return np.where(diff != 0, MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x, window_size: int):
    """[B,H,W,C] -> [B*nH*nW, w*w, C], windows in (batch, row, column) order like PyTorch."""
    b, h, w_, c = x.shape
    ws = window_size
    x = x.reshape(b, h // ws, ws, w_ // ws, ws, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows, window_size: int, height: int, width: int):
    """[B*nH*nW, w*w, C] -> [B,H,W,C] (inverse of `window_partition`)."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, height // ws, width // ws, ws, ws, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


# --------------------------------------------------------------------------------------------
# Modules


def _linear(d_in, d_out, *, use_bias=True, dtype, param_dtype, rngs):
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=use_bias,
        kernel_init=trunc_normal_02,
        bias_init=nnx.initializers.zeros_init(),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def _layer_norm(dim, *, dtype, param_dtype, rngs):
    return LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class PatchEmbed(nnx.Module):
    """[B,H,W,3] -> [B,H/p,W/p,C]: p x p conv with stride p, then LayerNorm (`proj`, `norm`).
    Inputs not divisible by p are zero-padded bottom/right first, as in the reference."""

    def __init__(self, in_chans, embed_dim, patch_size, *, dtype, param_dtype, rngs):
        self.patch_size = patch_size
        self.proj = conv_layer(
            in_chans,
            embed_dim,
            (patch_size, patch_size),
            strides=patch_size,
            padding="VALID",
            kernel_init=torch_default_kernel,  # the reference leaves the conv at PyTorch default
            bias_init=nnx.initializers.zeros_init(),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.norm = _layer_norm(embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        p = self.patch_size
        _, h, w, _ = x.shape
        if h % p or w % p:
            x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        return self.norm(self.proj(x))


class Mlp(nnx.Module):
    """fc1 -> exact GELU -> fc2 on the last axis."""

    def __init__(self, dim, hidden_dim, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = _linear(dim, hidden_dim, **kw)
        self.fc2 = _linear(hidden_dim, dim, **kw)

    def __call__(self, x):
        return self.fc2(gelu_exact(self.fc1(x)))


class WindowAttention(nnx.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    [B*nW, N, C] (N = w*w tokens of a window) -> [B*nW, N, C]. `mask` is an additive
    [nW,N,N] mask (shifted windows) or None. Softmax runs in float32 whatever the compute dtype.
    """

    def __init__(self, dim, window_size, num_heads, *, dtype, param_dtype, rngs):
        if dim % num_heads:
            raise ValueError(f"Swin: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nnx.Param(
            trunc_normal_02(rngs.params(), ((2 * window_size - 1) ** 2, num_heads), param_dtype)
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = _linear(dim, 3 * dim, **kw)
        self.proj = _linear(dim, dim, **kw)

    def relative_position_bias(self) -> jax.Array:
        """[heads,N,N] float32 bias gathered from the table."""
        idx = relative_position_index(self.window_size)
        n = idx.shape[0]
        table = self.relative_position_bias_table[...].astype(jnp.float32)
        bias = jnp.take(table, jnp.asarray(idx.reshape(-1)), axis=0).reshape(n, n, -1)
        return bias.transpose(2, 0, 1)

    def __call__(self, x, mask=None):
        bw, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(bw, n, 3, h, c // h).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * jnp.asarray(self.scale, x.dtype), qkv[1], qkv[2]
        attn = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
        attn = attn + self.relative_position_bias()[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(bw // nw, nw, h, n, n) + jnp.asarray(mask)[None, :, None]
            attn = attn.reshape(bw, h, n, n)
        attn = jax.nn.softmax(attn, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bqhd", attn, v).reshape(bw, n, c)
        return self.proj(out)


class SwinBlock(nnx.Module):
    """Pre-norm (shifted) window attention + MLP, each with a residual and drop path.

    [B,H,W,C] -> [B,H,W,C]; any H, W (padded to a multiple of the window inside).
    """

    def __init__(
        self,
        dim,
        num_heads,
        *,
        window_size,
        shift_size,
        mlp_ratio,
        drop_path,
        dtype,
        param_dtype,
        rngs,
    ):
        self.window_size, self.shift_size = window_size, shift_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _layer_norm(dim, **kw)
        self.attn = WindowAttention(dim, window_size, num_heads, **kw)
        self.drop_path = DropPath(drop_path, rngs=rngs)
        self.norm2 = _layer_norm(dim, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)

    def __call__(self, x, *, train: bool = False):
        b, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x)
        hp, wp = h + (-h % ws), w + (-w % ws)
        if (hp, wp) != (h, w):
            x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        if s > 0:
            x = jnp.roll(x, (-s, -s), axis=(1, 2))
            mask = shifted_window_mask(hp, wp, ws, s)
        else:
            mask = None
        x = window_reverse(self.attn(window_partition(x, ws), mask), ws, hp, wp)
        if s > 0:
            x = jnp.roll(x, (s, s), axis=(1, 2))
        x = x[:, :h, :w, :]
        x = shortcut + self.drop_path(x, train=train)
        return x + self.drop_path(self.mlp(self.norm2(x)), train=train)


class PatchMerging(nnx.Module):
    """[B,H,W,C] -> [B,ceil(H/2),ceil(W/2),2C]: concat the 2x2 neighbours in the order
    (0,0),(1,0),(0,1),(1,1) (row, column offsets), LayerNorm(4C), Linear(4C->2C, no bias)."""

    def __init__(self, dim, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = _layer_norm(4 * dim, **kw)
        self.reduction = _linear(4 * dim, 2 * dim, use_bias=False, **kw)

    def __call__(self, x):
        _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
    """`depth` blocks (odd ones shifted by window//2), then optional patch merging.

    Returns (stage output [B,H,W,C] before merging, input of the next stage)."""

    def __init__(
        self,
        dim,
        depth,
        num_heads,
        *,
        window_size,
        mlp_ratio,
        drop_paths,
        downsample: bool,
        scan: bool = True,
        remat_blocks: bool = False,
        dtype,
        param_dtype,
        rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.scan, self.remat_blocks = scan, remat_blocks
        self.blocks = nnx.List(
            [
                SwinBlock(
                    dim,
                    num_heads,
                    window_size=window_size,
                    shift_size=0 if j % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio,
                    drop_path=drop_paths[j],
                    **kw,
                )
                for j in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim, **kw) if downsample else None

    def __call__(self, x, *, train: bool = False):
        x = run_chain(
            self.blocks,
            x,
            lambda blk, y: blk(y, train=train),
            scan=self.scan,
            remat=self.remat_blocks,
        )
        return x, (self.downsample(x) if self.downsample is not None else x)


class SwinTransformer(nnx.Module):
    """Swin backbone. [B,H,W,3] -> 4 maps, finest first:
    [B,H/4,W/4,C], [B,H/8,W/8,2C], [B,H/16,W/16,4C], [B,H/32,W/32,8C] (H, W multiples of 32;
    other sizes work too, the spatial sizes are then ceil-divided).

    drop_path_rate: the stochastic-depth rate of the last block; rates rise linearly from 0
    over all blocks of all stages.
    scan: run runs of identical blocks as one `lax.scan` (`repeat.run_chain`). Swin blocks
    differ in their shift and drop-path rate, so today this finds no run of two; kept for
    symmetry with the CNN backbones.
    remat: "none", "blocks" (recompute each Swin block in the backward) or "stages" (each
    stage with its patch merging), see `msc_seg.models.repeat`.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: tuple[int, ...],
        window_size: int = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        drop_path_rate: float = 0.3,
        scan: bool = True,
        remat: str = "none",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.remat = check_remat(remat)
        if len(depths) != len(num_heads):
            raise ValueError(f"Swin: depths {depths} and num_heads {num_heads} differ in length")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_stages = len(depths)
        self.out_channels = tuple(embed_dim * 2**i for i in range(self.num_stages))
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, **kw)
        dpr = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        starts = np.cumsum((0,) + tuple(depths)).tolist()
        self.layers = nnx.List(
            [
                SwinStage(
                    self.out_channels[i],
                    depths[i],
                    num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop_paths=dpr[starts[i] : starts[i + 1]],
                    downsample=i < self.num_stages - 1,
                    scan=scan,
                    remat_blocks=remat == "blocks",
                    **kw,
                )
                for i in range(self.num_stages)
            ]
        )
        # Output norms named as in the reference state dict (norm0..norm3).
        for i, c in enumerate(self.out_channels):
            setattr(self, f"norm{i}", _layer_norm(c, **kw))

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, ...]:
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = call(
                lambda layer, x: layer(x, train=train), layer, x, remat=self.remat == "stages"
            )
            outs.append(getattr(self, f"norm{i}")(out))
        return tuple(outs)


def make_swin(
    name: str,
    *,
    drop_path_rate: float = 0.3,
    window_size: int | None = None,
    in_chans: int = 3,
    scan: bool = True,
    remat: str = "none",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> SwinTransformer:
    """Build a Swin backbone from the variant table (`swin_t`, `swin_s`, `swin_b`, `swin_l`,
    `swin_tiny_test`). window_size None keeps the variant's window (7 for the real sizes)."""
    v = get_swin_variant(name)
    return SwinTransformer(
        embed_dim=v.embed_dim,
        depths=v.depths,
        num_heads=v.num_heads,
        window_size=v.window_size if window_size is None else window_size,
        patch_size=v.patch_size,
        mlp_ratio=v.mlp_ratio,
        in_chans=in_chans,
        drop_path_rate=drop_path_rate,
        scan=scan,
        remat=remat,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
