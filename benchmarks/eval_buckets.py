"""Eval throughput with every image on the pad_shape canvas vs bucketed (eval.data.bucket_multiple).

    python benchmarks/eval_buckets.py [--dataset ade20k_like|camvid] [--buckets 0,128]
        [--backbone resnet_tiny_test] [--images 12] [--data_dir DIR] [--json OUT]

ade20k_like: the three ADE20K validation samples of ../shared/data/ade20k_samples, each also
  transposed (portrait) and cut to wide / square crops, `--images` in all, evaluated as the ADE20K
  recipe does: short side resized to 512, labels at their original size, pad_shape 2048x2048,
  whole image, 150 classes (+ "other" ignored).
camvid: the 101 val frames of ../shared/data/camvid (360x480), pad_shape 384x480, whole image.
The model is the demo-sized UPerNet (configs/demo.py) with `--backbone`, random weights: speed
and the confusion matrix's equality do not need trained weights. For each bucket setting
(0 = single canvas) the split is evaluated twice with the real eval step: pass 1 includes one
compile per canvas shape, pass 2 is the steady state (img/s). Printed: canvas shapes, pixels the
model ran on, pass times, img/s, mIoU, and whether the confusion matrix equals the single-canvas
one. A whole-image model with global context (pooling, attention) sees less padding on a bucket,
so its numbers may change; sliding windows are exact (tests/test_eval_buckets.py).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_ade20k_like(root: pathlib.Path, n: int) -> None:
    """A folder dataset of `n` ADE20K-shaped val pairs cut from the three samples."""
    import numpy as np
    from PIL import Image

    samples = sorted((SHARED / "ade20k_samples" / "images").glob("*.jpg"))
    if not samples:
        raise SystemExit(f"no ADE20K samples under {SHARED / 'ade20k_samples'}")
    views = []
    for path in samples:
        image = np.asarray(Image.open(path).convert("RGB"))
        label = np.asarray(Image.open(str(path).replace("images", "labels")[:-3] + "png"))
        h, w = label.shape
        views += [
            (image, label),
            (image.transpose(1, 0, 2), label.T),  # portrait
            (image[: h // 2], label[: h // 2]),  # wide
            (image[:, : min(h, w)], label[:, : min(h, w)]),  # square
        ]
    for split, count in (("train", 1), ("val", n)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = views[i % len(views)]
            Image.fromarray(np.ascontiguousarray(image)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(np.ascontiguousarray(label)).save(root / "labels" / split / f"{i}.png")


def dataset(args, data_dir: str):
    """(DatasetSpec, pad_shape, resize_short_side) of --dataset, prepared into data_dir."""
    from msc_seg.data import builders
    from msc_seg.data.registry import DatasetSpec, get_dataset_spec

    if args.dataset == "camvid":
        spec = get_dataset_spec("camvid")
        builders.prepare_dataset(spec, data_dir, root=str(SHARED / "camvid"))
        return spec, (384, 480), 0
    spec = DatasetSpec(
        name="ade20k_like",
        tfds_name="ade20k_like",
        class_names=tuple(f"c{i}" for i in range(150)),
        palette=[[0, 0, 0]] * 150,
        source="folder",
        ignore_ids=(0,),
        label_offset=1,
        train_split="train",
        eval_split="val",
    )
    root = pathlib.Path(data_dir) / "src"
    if not root.exists():
        build_ade20k_like(root, args.images)
    builders.prepare_dataset(spec, data_dir, root=str(root))
    return spec, (2048, 2048), 512


def run(args) -> list[dict]:
    import jax
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import importlib.util

    from msc_seg import evaluate, experiment, inference, metrics
    from msc_seg import mesh as mesh_lib
    from msc_seg.data import pipeline

    data_dir = args.data_dir or tempfile.mkdtemp(prefix=f"eval_buckets_{args.dataset}_")
    spec, pad_shape, short_side = dataset(args, data_dir)
    num_classes = len(spec.class_names)
    module_spec = importlib.util.spec_from_file_location("demo", ROOT / "configs" / "demo.py")
    demo = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(demo)
    config = demo.get_config()
    config.model.backbone = args.backbone
    config.loss.contrastive.weight = 0.0
    mesh = mesh_lib.make_mesh(1)
    parts = experiment.build_train_parts(config, num_classes, mesh)
    state = parts.create_state()
    step = jax.jit(
        evaluate.make_eval_step(
            parts.model_def,
            num_classes,
            resize_to_labels=bool(short_side),
            protocol=inference.Protocol(),
        )
    )
    rows, reference = [], None
    for multiple in args.buckets:
        batches = pipeline.make_eval_dataset(
            spec,
            data_dir=data_dir,
            split=spec.eval_split,
            batch_size=args.batch_size,
            pad_shape=pad_shape,
            resize_short_side=short_side or None,
            bucket_multiple=multiple,
        )
        shapes = sorted({tuple(b["image"].shape[1:3]) for b in batches})
        pixels = sum(int(np.prod(b["image"].shape[:3])) for b in batches)
        times, cm = [], None
        for _ in range(2):
            t = time.perf_counter()
            cm, _ = evaluate.run_evaluation(step, state, batches, mesh)
            times.append(time.perf_counter() - t)
        n = batches.num_examples
        if reference is None:
            reference = cm
        row = {
            "dataset": args.dataset,
            "bucket_multiple": multiple,
            "images": n,
            "canvas_shapes": shapes,
            "model_pixels": int(pixels),
            "pass1_s": times[0],
            "pass2_s": times[1],
            "img_per_s": n / times[1],
            "mIoU": float(metrics.iou_results(cm)["mIoU"]),
            "cm_equal_to_single_canvas": bool(np.array_equal(cm, reference)),
            "load": os.getloadavg(),
        }
        log(json.dumps(row))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ade20k_like", choices=("ade20k_like", "camvid"))
    parser.add_argument("--buckets", default="0,128", help="bucket_multiple values; 0 = off")
    parser.add_argument("--backbone", default="resnet_tiny_test")
    parser.add_argument("--images", type=int, default=12, help="ade20k_like: val images")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    args.buckets = [int(v) for v in args.buckets.split(",")]
    load = os.getloadavg()
    rows = run(args)
    print(f"load average (1/5/15 min) at start {load}, at end {os.getloadavg()}; "
          f"{os.cpu_count()} CPUs; backbone {args.backbone}")  # fmt: skip
    print("| dataset | bucket_multiple | canvas shapes | model Mpx | pass 1 s (compiles) | "
          "pass 2 s | img/s | mIoU | same CM |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        shapes = " ".join(f"{h}x{w}" for h, w in r["canvas_shapes"])
        print(
            f"| {r['dataset']} ({r['images']} img) | {r['bucket_multiple'] or 'off'} | {shapes} | "
            f"{r['model_pixels'] / 1e6:.1f} | {r['pass1_s']:.1f} | {r['pass2_s']:.1f} | "
            f"{r['img_per_s']:.2f} | {100 * r['mIoU']:.2f} | {r['cm_equal_to_single_canvas']} |"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
