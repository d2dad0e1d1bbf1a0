"""Cost of the bilinear resizes: one logits upsampling, and what they do to HRNet's program size.

    python benchmarks/resize_cost.py [--skip-hrnet] [--repeats 5]

Prints a markdown table:
  resize fwd+bwd ms   one jitted value-and-grad of sum(resize(x) * g) for x float32
                      [2,128,128,150] -> [2,512,512,150] (the logits upsampling of a 512x512
                      crop, 150 classes, batch 2), align_corners False and True; median of
                      --repeats calls after one warm-up
  resize compile s    its jit lower + compile seconds
  HRNet HLO lines     number of lines of `jax.jit(forward).lower(...).as_text()` of an HRNet-W48
                      segmentor forward (train=False, logits only) on [1,512,512,3]
  HRNet compile s     seconds of `.lower(...)` and of `.compile()` of that forward, wall and
                      process CPU (all threads; steadier than wall on a shared machine)
The HRNet model is built abstractly (`nnx.eval_shape`): no parameters are allocated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from msc_seg.models.layers import resize_bilinear  # noqa: E402


def time_resize(align_corners: bool, repeats: int) -> tuple[float, float]:
    """(compile s, median fwd+bwd ms) of the 128->512 logits upsampling."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 128, 128, 150), np.float32))
    g = jnp.asarray(rng.standard_normal((2, 512, 512, 150), np.float32))

    def loss(x, g):
        return jnp.sum(resize_bilinear(x, (512, 512), align_corners=align_corners) * g)

    t = time.perf_counter()
    f = jax.jit(jax.value_and_grad(loss)).lower(x, g).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(f(x, g))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(x, g))
        times.append(time.perf_counter() - t)
    return compile_s, 1000 * statistics.median(times)


def hrnet_program(size: int) -> tuple[int, float, float, float]:
    """(HLO lines, lower s, compile s, compile CPU s) of an HRNet-W48 forward at
    [1,size,size,3]."""
    from msc_seg.models.hrnet_seg import HRNetSegmentor

    model = nnx.eval_shape(lambda: HRNetSegmentor(num_classes=150, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def forward(state, images):
        return nnx.merge(graphdef, state)(images, train=False).logits

    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    t = time.perf_counter()
    lowered = jax.jit(forward).lower(state, images)
    lower_s = time.perf_counter() - t
    lines = len(lowered.as_text().splitlines())
    t, cpu = time.perf_counter(), time.process_time()
    lowered.compile()
    return lines, lower_s, time.perf_counter() - t, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=512, help="HRNet input size")
    parser.add_argument("--skip-hrnet", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPU cores")
    print("| measurement | value |")
    print("|---|---|")
    for ac in (False, True):
        compile_s, ms = time_resize(ac, args.repeats)
        print(f"| resize 128->512 fwd+bwd, align_corners={ac} | {ms:.0f} ms |", flush=True)
        print(f"| resize compile, align_corners={ac} | {compile_s:.2f} s |", flush=True)
    if not args.skip_hrnet:
        lines, lower_s, compile_s, compile_cpu_s = hrnet_program(args.size)
        print(f"| HRNet-W48 fwd {args.size}x{args.size} HLO lines | {lines} |")
        print(f"| HRNet-W48 fwd lower | {lower_s:.1f} s |")
        print(f"| HRNet-W48 fwd XLA compile | {compile_s:.1f} s ({compile_cpu_s:.1f} s CPU) |")
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
