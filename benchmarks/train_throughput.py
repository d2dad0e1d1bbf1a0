"""Train-step and input-pipeline throughput, and whether the pipeline keeps up with the step.

    python benchmarks/train_throughput.py [--cases demo,ade20k_upernet] [--steps 5] [--batches 20]

Cases:
  demo            configs/demo.py as configured (its batch and crop) on the built demo dataset.
  ade20k_upernet  configs/ade20k_upernet.py (UPerNet + Swin-T, CE + 0.4 aux + 0.1 MS+CS) at 512x512,
                  batch 2 (one contrastive group of 2) on synthetic images; the input pipeline runs
                  the
                  real train transforms on synthetic 512x683 ADE-sized images.
Train-step figures are medians over the timed steps after one compile step; pipeline figures are
the median of per-batch times after the first batch. Both run on this machine's devices and compete
for the same cores in a real run, so "keeps up" compares the two measured separately.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from msc_seg import experiment  # noqa: E402
from msc_seg import mesh as mesh_lib  # noqa: E402
from msc_seg.data import builders, pipeline, registry, transforms  # noqa: E402


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def time_train_step(config, num_classes, batch_np, steps):
    """-> (compile+first step seconds, median step seconds)."""
    mesh = mesh_lib.make_mesh(config.mesh.data)
    parts = experiment.build_train_parts(config, num_classes, mesh)
    state = parts.create_state()
    step = parts.train_step
    batch = mesh_lib.host_batch_to_global(batch_np, mesh)
    key = jax.random.key(0)
    t = time.perf_counter()
    state, m = step(state, batch, key)
    jax.block_until_ready(m)
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = step(state, batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def time_iterator(it, batches):
    next(it)  # start-up (threads, first shuffle buffer fill)
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def synthetic_ade_iterator(batch, crop, seed=0):
    """Real train transforms on synthetic ADE-sized (512x683) examples with ~20 label regions."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (8, 512, 683, 3), dtype=np.uint8)
    labels = np.repeat(np.repeat(rng.integers(-1, 150, (8, 16, 22)), 32, 1), 32, 2)[:, :512, :683]
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))).repeat()

    def prepare(index, example):
        image, label = example
        seed_ = tf.stack([tf.constant(seed, tf.int64), index])
        image, label = transforms.apply_train_transforms(image, label, seed_, crop_size=crop)
        return {"image": image, "label": label}

    ds = ds.enumerate().map(prepare, num_parallel_calls=2).batch(batch).prefetch(2)
    return iter(ds.as_numpy_iterator())


def bench_demo(args):
    config = load_config("demo")
    config.mesh.data = 1
    spec = registry.get_dataset_spec("demo")
    data_dir = tempfile.mkdtemp(prefix="bench_tfds_")
    builders.prepare_dataset(spec, data_dir)
    it = pipeline.make_train_iterator(
        spec,
        data_dir=data_dir,
        batch_size=config.batch_size,
        crop_size=tuple(config.dataset.train.crop_size),
        seed=0,
    )
    batch = next(it)
    compile_s, step_s = time_train_step(config, spec.num_classes, batch, args.steps)
    pipe_s = time_iterator(it, args.batches)
    return "demo", config, compile_s, step_s, pipe_s


def bench_ade(args):
    config = load_config("ade20k_upernet")
    config.mesh.data = 1
    config.batch_size = 2
    config.loss.contrastive.images_per_group = 2
    it = synthetic_ade_iterator(2, (512, 512))
    batch = next(it)
    compile_s, step_s = time_train_step(config, 150, batch, args.steps)
    pipe_s = time_iterator(it, args.batches)
    return "ade20k_upernet 512x512", config, compile_s, step_s, pipe_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="demo,ade20k_upernet")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per case")
    parser.add_argument("--batches", type=int, default=20, help="timed pipeline batches per case")
    args = parser.parse_args()
    runners = {"demo": bench_demo, "ade20k_upernet": bench_ade}
    rows = []
    for case in args.cases.split(","):
        name, config, compile_s, step_s, pipe_s = runners[case](args)
        b = config.batch_size
        rows.append((name, b, compile_s, step_s, b / step_s, b / pipe_s))
        print(f"{name}: done", flush=True)
    print(
        f"\ndevice: {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}"
    )
    print(
        "| case | batch | compile + 1st step (s) | step (s, median) | train img/s | "
        "input pipeline img/s | pipeline keeps up |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, b, c, s, ti, pi in rows:
        print(
            f"| {name} | {b} | {c:.1f} | {s:.3f} | {ti:.2f} | {pi:.1f} | "
            f"{'yes' if pi >= ti else 'NO'} ({pi / ti:.1f}x) |"
        )


if __name__ == "__main__":
    main()
