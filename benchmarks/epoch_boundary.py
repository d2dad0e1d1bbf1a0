"""How long the training loop waits for batches around epoch boundaries (demo dataset).

    python benchmarks/epoch_boundary.py [--epochs 3] [--batch 8] [--step_ms 100] [--data_dir DIR]

Builds the demo dataset (into --data_dir, or a temporary folder) and reads `--epochs` epochs of
`pipeline.make_train_iterator` (the demo config's batch 8 and 128x128 crops by default). The
consumer sleeps `--step_ms` per batch, standing in for a train step that runs on the
accelerator. Prints the wait in `next()` for the first batch, for the batches at and right after
each epoch boundary, and the median / max over the others, then the first-batch wait when
resuming one batch before a boundary.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from msc_seg.data import builders, pipeline, registry  # noqa: E402


def waits(spec, data_dir, *, batch, start_step, n, step_s):
    it = pipeline.make_train_iterator(
        spec,
        data_dir=data_dir,
        split=spec.train_split,
        batch_size=batch,
        crop_size=(128, 128),
        seed=0,
        start_step=start_step,
    )
    out = []
    for _ in range(n):
        t = time.perf_counter()
        next(it)
        out.append(time.perf_counter() - t)
        time.sleep(step_s)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--step_ms", type=float, default=100.0)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    spec = registry.get_dataset_spec("demo")
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_tfds_")
    builders.prepare_dataset(spec, data_dir)
    steps = builders.split_sizes(spec, data_dir)[spec.train_split] // args.batch
    step_s = args.step_ms / 1000
    w = waits(spec, data_dir, batch=args.batch, start_step=0, n=args.epochs * steps, step_s=step_s)
    boundaries = [e * steps for e in range(1, args.epochs)]
    special = {0, *boundaries, *(b + 1 for b in boundaries)}
    others = [x for i, x in enumerate(w) if i not in special]
    print(f"demo: batch {args.batch}, {steps} steps/epoch, consumer step {args.step_ms:.0f} ms")
    print(f"{'batch':>24} | wait (s)")
    print(f"{'first (step 0)':>24} | {w[0]:.3f}")
    for b in boundaries:
        print(f"{f'epoch start (step {b})':>24} | {w[b]:.3f}")
        print(f"{f'next (step {b + 1})':>24} | {w[b + 1]:.3f}")
    print(f"{'others: median':>24} | {statistics.median(others):.3f}")
    print(f"{'others: max':>24} | {max(others):.3f}")
    print(f"{'epochs total':>24} | {sum(w):.1f} (+ {len(w) * step_s:.1f} consumer)")
    r = waits(spec, data_dir, batch=args.batch, start_step=steps - 1, n=3, step_s=step_s)
    print(f"{f'resume at {steps - 1}: first':>24} | {r[0]:.3f}")
    print(f"{'resume: across boundary':>24} | {r[1]:.3f}")


if __name__ == "__main__":
    main()
