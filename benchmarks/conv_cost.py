"""Cost of the UPerNet decode head's big 3x3 convolutions on the CPU: XLA's convolution against
the same convolution written as matmuls, and against PyTorch (oneDNN) on the same cores.

    python benchmarks/conv_cost.py [--cases bottleneck,fpn] [--methods conv,dot_in,dot_out]
        [--batch 2] [--repeats 3] [--torch]

Cases (UPerNet at a 512x512 crop, stride 4 = 128x128, the widths of configs/ade20k_upernet.py):
  bottleneck  [B,128,128,2048] -> 512, 3x3 (fpn_bottleneck over the 4 concatenated levels)
  fpn         [B,128,128,512] -> 512, 3x3 (the finest fpn_conv)
Methods (all float32, stride 1, "same" padding; each is checked against `conv` first):
  conv     jax.lax.conv_general_dilated, NHWC / HWIO, autodiff gradients (nnx.Conv before conv.py)
  dot_in   sum over the 9 taps of shift(x) @ W[tap]: 9 matmuls, the input shifted
  dot_out  x @ W[all taps] as one matmul to [B,H,W,9*out], then the 9 shifted slices summed
  msc_seg  msc_seg/models/conv.py (on the CPU: XLA's forward, gradients as matmuls / canonical)
  torch    torch.nn.functional.conv2d, NCHW and channels_last (--torch; the `parity` extra)
Timed: fwd (y) and fwd+bwd (y, dx, dW for a fixed cotangent); median of --repeats after one
warm-up. XLA flags come from $XLA_FLAGS, so flag variants are separate runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import numpy as np

from msc_seg.models import conv as conv_lib
from msc_seg.models import winograd

CASES = {
    "bottleneck": (128, 2048, 512),
    "fpn": (128, 512, 512),
    "hrnet_w48_b1": (128, 48, 48),  # HRNet-W48's stride-4 branch
    "hrnet_w48_b2": (64, 96, 96),
    "hrnet_w48_b4": (16, 384, 384),
    "resnet_layer1": (128, 64, 64),  # ResNet-101's 3x3 in layer1 at a 512 crop
    "resnet_layer2": (64, 128, 128),
    "fpn_64": (64, 512, 512),  # the other fpn_convs
    "fpn_32": (32, 512, 512),
    "ppm_bottleneck": (16, 4096, 512),  # UPerNet's PPM bottleneck (2048 + 4 x 512 in)
    "fcn_aux": (32, 1024, 256),  # the auxiliary FCN head on Swin's stage 3
}
SIZE = 128  # --size: the feature map's side (128 = stride 4 of a 512 crop)


def conv_lax(x, w):

    return jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_dot_in(x, w):
    """sum_(i,j) x[h+i-1, w+j-1] @ W[i,j]: the taps shift the input."""
    import jax.numpy as jnp

    kh, kw, _, _ = w.shape
    _, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = 0.0
    for i in range(kh):
        for j in range(kw):
            y = y + jnp.einsum("bhwc,co->bhwo", xp[:, i : i + h, j : j + wd], w[i, j])
    return y


def conv_dot_out(x, w):
    """One matmul to every tap's output, then the shifted taps summed."""
    import jax.numpy as jnp

    kh, kw, cin, cout = w.shape
    b, h, wd, _ = x.shape
    wm = jnp.transpose(w, (2, 0, 1, 3)).reshape(cin, kh * kw * cout)
    z = jnp.einsum("bhwc,ck->bhwk", x, wm).reshape(b, h, wd, kh * kw, cout)
    zp = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
    y = 0.0
    for i in range(kh):
        for j in range(kw):
            y = y + zp[:, i : i + h, j : j + wd, i * kw + j]
    return y


METHODS = {
    "conv": conv_lax,
    "dot_in": conv_dot_in,
    "dot_out": conv_dot_out,
    "msc_seg": lambda x, w: conv_lib.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    ),
    "winograd": lambda x, w: winograd.conv3x3(x, w),
}


def _fwd_bwd(f, g, x, w):
    """(y, dx, dW) of f at (x, w) for the cotangent g."""
    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(g))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def jax_rows(case: str, batch: int, methods: list[str], repeats: int) -> list[dict]:

    _, cin, cout = CASES[case]
    size = CASES[case][0] * SIZE // 128
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((batch, size, size, cin), np.float32))
    w = jax.numpy.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) / np.sqrt(9 * cin))
    g = jax.numpy.asarray(rng.standard_normal((batch, size, size, cout), np.float32))
    reference = None
    rows = []
    for name in methods:
        f = METHODS[name]
        fwd = jax.jit(f)
        fwd_bwd = jax.jit(functools.partial(_fwd_bwd, f, g))
        y = np.asarray(fwd(x, w))
        if reference is None:
            reference = y
        err = float(np.max(np.abs(y - reference)))
        if name != methods[0]:  # the gradients too, against the first method's
            d_ref = jax.jit(jax.vjp(METHODS[methods[0]], x, w)[1])(g)
            d = jax.jit(jax.vjp(f, x, w)[1])(g)
            diffs = [
                np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(d, d_ref, strict=True)
            ]
            err = max(err, *map(float, diffs))
        rows.append(
            dict(
                case=case,
                method=name,
                fwd_s=timed(lambda fn=fwd: jax.block_until_ready(fn(x, w)), repeats),
                fwd_bwd_s=timed(lambda fn=fwd_bwd: jax.block_until_ready(fn(x, w)), repeats),
                max_err=err,
            )
        )
        print_row(rows[-1], batch)
    return rows


def torch_rows(case: str, batch: int, repeats: int) -> list[dict]:
    import torch

    _, cin, cout = CASES[case]
    size = CASES[case][0] * SIZE // 128
    rows = []
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(batch, cin, size, size).contiguous(memory_format=fmt)
        w = (torch.randn(cout, cin, 3, 3) / (9 * cin) ** 0.5).contiguous(memory_format=fmt)
        g = torch.randn(batch, cout, size, size).contiguous(memory_format=fmt)

        def fwd(x=x, w=w):
            with torch.no_grad():
                torch.nn.functional.conv2d(x, w, padding=1)

        def fwd_bwd(x=x, w=w, g=g):
            xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
            torch.nn.functional.conv2d(xr, wr, padding=1).backward(g)

        rows.append(
            dict(
                case=case,
                method=f"torch {layout}",
                fwd_s=timed(fwd, repeats),
                fwd_bwd_s=timed(fwd_bwd, repeats),
                max_err=float("nan"),
            )
        )
        print_row(rows[-1], batch)
    return rows


def print_row(r: dict, batch: int) -> None:
    _, cin, cout = CASES[r["case"]]
    size = CASES[r["case"]][0] * SIZE // 128
    gflop = 2 * batch * size * size * cin * cout * 9 / 1e9
    print(
        f"| {r['case']} | {r['method']} | {r['fwd_s']:.3f} | {gflop / r['fwd_s']:.0f} | "
        f"{r['fwd_bwd_s']:.3f} | {3 * gflop / r['fwd_bwd_s']:.0f} | {r['max_err']:.1e} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="bottleneck,fpn")
    parser.add_argument("--methods", default="conv,dot_in,dot_out")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="also PyTorch (parity extra)")
    parser.add_argument("--torch-only", action="store_true")
    parser.add_argument("--size", type=int, default=128, help="feature side; small to test")
    args = parser.parse_args()
    global SIZE
    SIZE = args.size
    if args.torch or args.torch_only:
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, cores {len(os.sched_getaffinity(0))}")
    print("| case | method | fwd s | fwd GFLOP/s | fwd+bwd s | fwd+bwd GFLOP/s | max err |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        if not args.torch_only:
            jax_rows(case, args.batch, args.methods.split(","), args.repeats)
        if args.torch or args.torch_only:
            torch_rows(case, args.batch, args.repeats)


if __name__ == "__main__":
    main()
