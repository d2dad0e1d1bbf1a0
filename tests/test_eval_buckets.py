"""Bucketed evaluation (eval.data.bucket_multiple) gives the single-canvas confusion matrix.

Odd-sized images of a folder dataset are evaluated twice: every image on the pad_shape canvas,
and each on its bucket (a few smaller canvases). A sliding-window protocol with a model that
mixes each window globally (its mean) and a whole-image protocol with a per-pixel model must give
identical confusion matrices; the bucketed batches must be smaller and of several shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from msc_seg import evaluate, inference, metrics
from msc_seg import mesh as mesh_lib
from msc_seg.data import builders, pipeline
from msc_seg.data.conventions import IGNORE_LABEL
from msc_seg.data.registry import DatasetSpec

# (W, H) of the validation images: both orientations, sides that are not multiples of 32.
SIZES = [(37, 50), (50, 37), (64, 64), (90, 20), (70, 41), (33, 95), (20, 20)]
PAD_SHAPE = (96, 96)
K = 3


@pytest.fixture(scope="module")
def odd_sized_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for split, sizes in (("train", SIZES[:1]), ("val", SIZES)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            ids = rng.integers(0, K + 1, (h, w), dtype=np.uint8)  # K = ignored
            Image.fromarray(ids, mode="L").save(root / "labels" / split / f"{i}.png")
    spec = DatasetSpec(
        name="odd_sizes", tfds_name="odd_sizes", class_names=("a", "b", "c"),
        palette=[[0, 0, 0]] * K, source="folder", ignore_ids=(K,), train_split="train",
        eval_split="val",
    )  # fmt: skip
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builders.prepare_dataset(spec, data_dir, root=str(root))
    return spec, data_dir


def _per_pixel(images):
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, K)), jnp.float32)
    return images @ w


def _window_mixing(images):
    # Each window's logits depend on the whole window (its mean): a global-context model.
    return _per_pixel(images) + 3.0 * _per_pixel(images.mean(axis=(1, 2), keepdims=True))


def _eval_step(apply_fn, protocol):
    @jax.jit
    def step(state, batch):
        scores = inference.infer_logits(
            apply_fn, batch["image"], batch["image_hw"], protocol,
            out_shape=batch["label"].shape[1:3], out_hw=batch["label_hw"],
        )  # fmt: skip
        pred = jnp.argmax(scores, -1).astype(jnp.int32)
        return metrics.confusion_matrix(pred, batch["label"], K), pred

    return step


@pytest.mark.parametrize(
    "protocol,apply_fn",
    [
        (inference.Protocol(mode="slide", window=(32, 32), stride=(21, 21)), _window_mixing),
        (inference.Protocol(mode="whole", flip=True), _per_pixel),
    ],
    ids=["slide", "whole"],
)
def test_bucketed_eval_equals_single_canvas_eval(odd_sized_dataset, protocol, apply_fn):
    spec, data_dir = odd_sized_dataset
    bucket_min = protocol.window if protocol.mode == "slide" else (0, 0)

    def dataset(bucket_multiple):
        return pipeline.make_eval_dataset(
            spec, data_dir=data_dir, split="val", batch_size=2, pad_shape=PAD_SHAPE,
            bucket_multiple=bucket_multiple, bucket_min=bucket_min,
        )  # fmt: skip

    single, bucketed = dataset(0), dataset(32)
    batches = list(bucketed)
    assert len(bucketed) == len(batches)
    shapes = {b["image"].shape[1:3] for b in batches}
    assert len(shapes) > 2 and all(s[0] <= 96 and s[1] <= 96 for s in shapes)
    assert all(
        b["image"].shape[0] == 2 and b["label"].shape == b["image"].shape[:3] for b in batches
    )
    assert sum(int(b["valid_example"].sum()) for b in batches) == len(SIZES)
    filler = [b for b in batches if not b["valid_example"].all()]
    assert filler and np.all(filler[0]["label"][~filler[0]["valid_example"]] == IGNORE_LABEL)
    pixels = sum(b["image"].shape[1] * b["image"].shape[2] for b in batches)
    assert pixels < len(single) * PAD_SHAPE[0] * PAD_SHAPE[1]

    mesh = mesh_lib.make_mesh(1)
    step = _eval_step(apply_fn, protocol)
    want, _ = evaluate.run_evaluation(step, None, single, mesh)
    got, _ = evaluate.run_evaluation(step, None, batches, mesh)
    assert want.sum() > 0
    np.testing.assert_array_equal(got, want)


def test_bucket_shape_rounds_up_within_pad_shape_and_window():
    shape = pipeline.bucket_shape([37, 50], PAD_SHAPE, 32, (0, 0))
    assert shape.numpy().tolist() == [64, 64]
    assert pipeline.bucket_shape([20, 95], PAD_SHAPE, 64, (0, 0)).numpy().tolist() == [64, 96]
    assert pipeline.bucket_shape([96, 1], PAD_SHAPE, 64, (0, 0)).numpy().tolist() == [96, 64]
    assert pipeline.bucket_shape([20, 20], PAD_SHAPE, 32, (64, 32)).numpy().tolist() == [64, 32]


def test_bucketing_needs_a_single_process(odd_sized_dataset):
    spec, data_dir = odd_sized_dataset
    with pytest.raises(ValueError, match="single process"):
        pipeline.make_eval_dataset(
            spec, data_dir=data_dir, split="val", batch_size=2, pad_shape=PAD_SHAPE,
            bucket_multiple=32, process_index=0, process_count=2,
        )  # fmt: skip
