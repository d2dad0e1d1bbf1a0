"""Cost of the segmentation CE on head-resolution logits: resize-then-CE vs the fused, chunked
`upsampled_cross_entropy`.

    python benchmarks/ce_cost.py [--repeats 5] [--chunks 4,8,16]

Prints a markdown table, one row per (head, method):
  head          the main head (stride 4: [2,128,128,150]) or the aux head (stride 16:
                [2,32,32,150]) of a 2 x 512 x 512 crop batch with 150 classes
  method        "unfused": cross_entropy(resize_bilinear(logits, 512x512)) (what the train step
                did before); "fused NM": upsampled_cross_entropy with chunk_values = N Mi values
  fwd+bwd s     median of --repeats jitted value-and-grad calls after one warm-up
  temp MiB      XLA's temporary buffers of the compiled program (`memory_analysis()`): what the
                loss adds to a train step's peak
  |dloss|, |dgrad|  largest difference to the unfused loss / gradient
align_corners False (UPerNet's); labels uniform over the classes with 10 % ignored.
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

from msc_seg.losses.segmentation import cross_entropy, upsampled_cross_entropy  # noqa: E402
from msc_seg.models.layers import resize_bilinear  # noqa: E402

BATCH, SIZE, CLASSES = 2, 512, 150


def measure(loss_fn, logits, labels, repeats):
    """-> (median s, temp MiB, loss, grad) of jit(value_and_grad(loss_fn))."""
    f = jax.jit(jax.value_and_grad(loss_fn)).lower(logits, labels).compile()
    temp = f.memory_analysis().temp_size_in_bytes / 2**20
    loss, grad = jax.block_until_ready(f(logits, labels))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(logits, labels))
        times.append(time.perf_counter() - t)
    return statistics.median(times), temp, float(loss), np.asarray(grad)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunks", default="4,8,16", help="chunk_values in Mi values, comma-separated")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, (BATCH, SIZE, SIZE)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.1] = -1
    labels = jnp.asarray(labels)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load {os.getloadavg()}")
    print("| head | method | fwd+bwd s | temp MiB | abs dloss | max abs dgrad |")
    print("|---|---|---|---|---|---|")
    for head, stride in (("main", 4), ("aux", 16)):
        h = SIZE // stride
        logits = jnp.asarray(3 * rng.standard_normal((BATCH, h, h, CLASSES)), jnp.float32)

        def unfused(x, y):
            return cross_entropy(resize_bilinear(x, (SIZE, SIZE), align_corners=False), y)

        s, temp, ref_loss, ref_grad = measure(unfused, logits, labels, args.repeats)
        print(f"| {head} [{BATCH},{h},{h},{CLASSES}] | unfused | {s:.3f} | {temp:.0f} | - | - |")
        for mi in (int(c) for c in args.chunks.split(",")):

            def fused(x, y, mi=mi):
                return upsampled_cross_entropy(x, y, align_corners=False, chunk_values=mi << 20)

            s, temp, loss, grad = measure(fused, logits, labels, args.repeats)
            print(
                f"| {head} [{BATCH},{h},{h},{CLASSES}] | fused {mi}M | {s:.3f} | {temp:.0f} "
                f"| {abs(loss - ref_loss):.1e} | {np.abs(grad - ref_grad).max():.1e} |"
            )
    print(f"load at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
