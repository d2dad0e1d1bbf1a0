"""Input pipeline: prepared tfds datasets -> host-local numpy batches for training and evaluation.

Training reads one global, index-based stream (`train_order`) by random access (`records`);
evaluation and `load_split` read each host's shard front to back. Labels are mapped to the
network's space (ignore = -1) when read, by `DatasetSpec.decode_label`, and nowhere later.
Importing this module (through builders.py) hides the accelerators from TensorFlow.
"""

from __future__ import annotations

import atexit
import math
import weakref
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from msc_seg.data import builders, train_order, transforms
from msc_seg.data import records as records_lib
from msc_seg.data.conventions import IGNORE_LABEL
from msc_seg.data.registry import DatasetSpec


def _options(num_threads: int) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(1, num_threads)
    options.threading.max_intra_op_parallelism = 1
    # No autotuning: every parallelism and buffer here is set explicitly, so it had nothing to
    # tune, and its thread is not woken when an iterator is destroyed. Once its period had grown
    # it held processes for up to its period: a 2 x 4 pod's processes exited 15.8-17.5 s after
    # their SIGTERM save line in 3 of 4 runs with it, <= 0.5 s in 4 of 4 without (py-spy: the
    # main thread in ~RootDataset::Iterator, waiting for that thread).
    options.autotune.enabled = False
    return options


def _read_encoded(
    builder, spec, split, *, shuffle_files, seed, process_index, process_count, num_threads
):
    """This host's shard of `split` with image and label still encoded (cheap to shuffle)."""
    builders.check_split(builder, spec, split)
    host_split = tfds.split_for_jax_process(
        split,
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count,
    )
    read_config = tfds.ReadConfig(
        try_autocache=False,  # Memory stays predictable; shuffling happens on encoded bytes.
        shuffle_seed=seed,
        shuffle_reshuffle_each_iteration=True,
        options=_options(num_threads),
        interleave_cycle_length=1 if not shuffle_files else 4,
        num_parallel_calls_for_decode=1,
        num_parallel_calls_for_interleave_files=1,
    )
    return builder.as_dataset(
        split=host_split,
        shuffle_files=shuffle_files,
        read_config=read_config,
        decoders={
            spec.image_key: tfds.decode.SkipDecoding(),
            spec.label_key: tfds.decode.SkipDecoding(),
        },
    )


def _make_decoder(builder, spec: DatasetSpec, split: str):
    """Encoded example -> {'image': uint8 [H,W,3], 'label': int32 [H,W] (-1 ignore)}."""
    image_feature = builder.info.features[spec.image_key]
    label_feature = builder.info.features[spec.label_key]

    def decode(example):
        image = image_feature.decode_example(example[spec.image_key])
        raw = label_feature.decode_example(example[spec.label_key])
        label = spec.decode_label(raw[..., 0])  # Multi-channel raw labels: ids in channel 0.
        check = tf.debugging.assert_equal(
            tf.shape(image)[:2],
            tf.shape(label),
            message=(
                f"Dataset {spec.name}, split {split}: label size differs from image size "
                "(image [H W] and label [H W] follow). Rebuild the dataset from matching files."
            ),
        )
        with tf.control_dependencies([check] if check is not None else []):
            label = tf.identity(label)
        return {"image": image, "label": label}

    return decode


def load_split(
    spec: DatasetSpec,
    data_dir: str,
    split: str,
    *,
    shuffle_files: bool,
    seed: int | None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
) -> tf.data.Dataset:
    """This host's shard of `split`, decoded: {'image': uint8 [H,W,3], 'label': int32 [H,W]}.

    Hosts read disjoint shards (`tfds.split_for_jax_process`; process index/count default to
    JAX's). Raises DatasetNotPreparedError (with instructions) when the dataset is not built and
    ValueError listing the available splits for an unknown split.
    """
    builder = builders.prepared_builder(spec, data_dir)
    ds = _read_encoded(
        builder,
        spec,
        split,
        shuffle_files=shuffle_files,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        num_threads=num_threads,
    )
    return ds.map(_make_decoder(builder, spec, split), num_parallel_calls=num_threads)


def _count_examples(ds: tf.data.Dataset) -> int:
    """Number of examples of a finite dataset (tfds knows it; counting is the fallback)."""
    count = int(ds.cardinality())
    if count < 0:  # Unknown cardinality: read through the (still encoded) examples once.
        count = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
    return count


def _train_dataset(
    builder,
    spec: DatasetSpec,
    split: str,
    order: train_order.GlobalOrder,
    *,
    start_step: int,
    crop_size: tuple[int, int],
    scale_range: Sequence[float],
    aspect_range: Sequence[float],
    cat_max_ratio: float,
    color_jitter: bool,
    prefetch: int,
    num_parallel_calls: int,
) -> tf.data.Dataset:
    """The whole (endless) training stream of this process as one tf.data pipeline."""
    records = records_lib.RecordIndex(builder, split)
    features = builder.info.features
    skip = {spec.image_key: tfds.decode.SkipDecoding(), spec.label_key: tfds.decode.SkipDecoding()}
    decode = _make_decoder(builder, spec, split)
    augment_seed = train_order.mix_seed(order.seed, 1)

    def fetch(local_index):
        position = order.position(local_index)
        return np.int64(position), records.read(order.example(position))

    def read(local_index):
        position, serialized = tf.numpy_function(
            fetch, [local_index], (tf.int64, tf.string), stateful=False
        )
        example = features.deserialize_example(tf.ensure_shape(serialized, []), decoders=skip)
        return tf.ensure_shape(position, []), example

    def prepare(position, example):
        example = decode(example)
        image, label = transforms.apply_train_transforms(
            example["image"],
            example["label"],
            tf.stack([tf.constant(augment_seed, tf.int64), position]),
            crop_size=crop_size,
            scale_range=scale_range,
            aspect_range=aspect_range,
            cat_max_ratio=cat_max_ratio,
            jitter=color_jitter,
        )
        return {"image": image, "label": label}

    first = int(start_step) * order.local_batch
    ds = tf.data.Dataset.range(first, np.iinfo(np.int64).max)
    ds = ds.map(read, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(order.local_batch, drop_remainder=True).prefetch(prefetch)
    return ds.with_options(_options(num_parallel_calls))


def make_train_iterator(
    spec: DatasetSpec,
    *,
    data_dir: str,
    batch_size: int,
    crop_size: Sequence[int],
    seed: int,
    start_step: int = 0,
    scale_range: Sequence[float] = (0.5, 2.0),
    aspect_range: Sequence[float] = (0.9, 1.1),
    cat_max_ratio: float = 0.75,
    color_jitter: bool = True,
    shuffle_buffer: int | None = None,
    prefetch: int = 2,
    split: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_parallel_calls: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches: this process's rows of one global, deterministic stream.

    `batch_size` is the GLOBAL batch B (all processes together); it must be a multiple of
    `process_count`. Yields {'image': float32 [b,h,w,3] normalised, 'label': int32 [b,h,w]} with
    b = B / process_count and (h, w) = crop_size: rows [process_index * b, (process_index + 1) * b)
    of each global batch. The caller passes process_index / process_count (e.g. JAX's); nothing
    here reads them from JAX.

    The stream (see `train_order`): every epoch is a shuffle of the split drawn from
    (seed, epoch), cut to whole global batches; the example at global position p is augmented
    with the stateless seed (seed, p). So step t's global batch (examples, order, augmentation)
    is the same for any number of processes, and `start_step=n` resumes the stream exactly at
    step n, in any epoch. It is one tf.data pipeline from start to end (no rebuild, hence no stall,
    at epoch boundaries), and each process reads and decodes only its own rows (random access to
    the stored records, `records.RecordIndex`).

    `shuffle_buffer` is accepted for compatibility and ignored: the shuffle is a full permutation
    of the split per epoch, no buffer is involved.
    """
    del shuffle_buffer  # Full per-epoch permutations: see the docstring.
    split = spec.train_split if split is None else split
    builder = builders.prepared_builder(spec, data_dir)
    builders.check_split(builder, spec, split)
    order = train_order.GlobalOrder(
        num_examples=builder.info.splits[split].num_examples,
        global_batch=int(batch_size),
        seed=int(seed),
        process_index=int(process_index),
        process_count=int(process_count),
    )
    if order.steps_per_epoch == 0:
        raise ValueError(
            f"Dataset {spec.name!r} split {split!r} has {order.num_examples} examples, fewer than "
            f"the global batch of {order.global_batch} (config field `batch_size`). Use a "
            "smaller batch_size."
        )
    ds = _train_dataset(
        builder,
        spec,
        split,
        order,
        start_step=start_step,
        crop_size=(int(crop_size[0]), int(crop_size[1])),
        scale_range=tuple(scale_range),
        aspect_range=tuple(aspect_range),
        cat_max_ratio=cat_max_ratio,
        color_jitter=color_jitter,
        prefetch=prefetch,
        num_parallel_calls=num_parallel_calls,
    )
    return TrainIterator(ds)


class TrainIterator:
    """Iterator over a training pipeline's numpy batches; `close()` releases the pipeline.

    The pipeline calls Python (`tf.numpy_function`, to read records) from TensorFlow's threads.
    If such a pipeline is still alive while the interpreter shuts down, those threads wait for
    the GIL forever and the process hangs on exit; so every open iterator is closed at exit
    (`atexit`), before shutdown begins. Close it yourself (or drop it) when you are done early.
    """

    def __init__(self, ds: tf.data.Dataset):
        self.dataset = ds  # the pipeline (its options: `dataset.options()`)
        self._iterator = ds.as_numpy_iterator()
        _OPEN_TRAIN_ITERATORS.add(self)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            raise StopIteration
        return next(self._iterator)

    def close(self) -> None:
        self._iterator = None
        _OPEN_TRAIN_ITERATORS.discard(self)


_OPEN_TRAIN_ITERATORS: weakref.WeakSet[TrainIterator] = weakref.WeakSet()


@atexit.register
def _close_open_train_iterators() -> None:
    for iterator in list(_OPEN_TRAIN_ITERATORS):
        iterator.close()


def _pad_bottom_right(x, shape: Sequence[int], value):
    """Pads x [H,W,...] bottom/right to `shape`; a larger x is cut (callers assert it fits).

    Cutting instead of failing keeps the graph buildable when x has a static size larger than
    `shape`, so the caller's assertion can report the sizes at run time.
    """
    hw = tf.shape(x)[:2]
    pad_h, pad_w = tf.maximum(shape[0] - hw[0], 0), tf.maximum(shape[1] - hw[1], 0)
    paddings = [[0, pad_h], [0, pad_w]] + [[0, 0]] * (len(x.shape) - 2)
    return tf.pad(x, paddings, constant_values=value)[: shape[0], : shape[1]]


def _assertion_text(error: tf.errors.OpError) -> str:
    """The message and data of a failed tf.debugging assertion, without TF's node details."""
    text = error.message
    start = text.find("assertion failed: ")
    if start < 0:
        return text
    return text[start + len("assertion failed: ") :].split("\n")[0]


class EvalDataset:
    """Re-iterable fixed-shape evaluation batches; every `iter()` is a fresh pass.

    Each batch: {'image': float32 [b,Hp,Wp,3] normalised (raw 0 padding bottom/right),
    'label': int32 [b,Hp,Wp] original-size label padded with -1, 'image_hw': int32 [b,2] valid
    (resized) image size, 'label_hw': int32 [b,2], 'valid_example': bool [b]}. The last batch is
    filled with all-ignore examples (valid_example False), and every host yields `len(self)`
    batches, so a collective eval step compiles once and never waits on a missing batch.
    """

    def __init__(self, ds: tf.data.Dataset, num_batches: int, num_examples: int, where: str):
        self.dataset = ds  # the pipeline (its options: `dataset.options()`)
        self.num_batches = num_batches
        self.num_examples = num_examples  # Real examples on this host.
        self._where = where

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        iterator = iter(tfds.as_numpy(self.dataset))
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except tf.errors.InvalidArgumentError as e:
                raise ValueError(f"Evaluation data {self._where}: {_assertion_text(e)}") from None
            yield batch


def make_eval_dataset(
    spec: DatasetSpec,
    *,
    data_dir: str,
    split: str,
    batch_size: int,
    pad_shape: Sequence[int],
    resize_short_side: int | None = None,
    resize_long_side: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_parallel_calls: int = 2,
    prefetch: int = 2,
    bucket_multiple: int = 0,
    bucket_min: Sequence[int] = (0, 0),
) -> EvalDataset:
    """Host-local evaluation batches of `split` at fixed shape (see `EvalDataset`).

    With `resize_short_side` / `resize_long_side`, images are resized bilinearly, aspect kept
    (`transforms.resize_for_eval`); labels keep their original size. `pad_shape` (Hp, Wp) must
    hold both, otherwise iteration raises ValueError naming the sizes and the config field
    `eval.pad_shape`.

    bucket_multiple > 0 (one process only): each example is padded not to `pad_shape` but to its
    bucket, each side of max(image, label) rounded up to a multiple of `bucket_multiple`, at least
    `bucket_min` (a sliding window) and at most `pad_shape`; batches hold one bucket each (a
    bucket's last batch is filled with all-ignore examples), so an eval step compiles once per
    bucket and no image pays for the largest canvas. Batches come bucket by bucket as they fill.
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    builder = builders.prepared_builder(spec, data_dir)
    decode = _make_decoder(builder, spec, split)
    ds = _read_encoded(
        builder,
        spec,
        split,
        shuffle_files=False,
        seed=None,
        process_index=pi,
        process_count=pc,
        num_threads=num_parallel_calls,
    )
    host_examples = _count_examples(ds)
    total_examples = builder.info.splits[split].num_examples
    num_batches = math.ceil(math.ceil(total_examples / pc) / batch_size)
    fill = num_batches * batch_size - host_examples
    pad_shape = (int(pad_shape[0]), int(pad_shape[1]))
    too_big = (
        f"an image of dataset {spec.name}, split {split}, does not fit eval.pad_shape="
        f"{list(pad_shape)}: its image size (after resize_short_side={resize_short_side}, "
        f"resize_long_side={resize_long_side}) and "
        "label size follow as [H W]. Raise the config field `eval.pad_shape` to at least these "
        "sizes (it must hold the resized image and the original label)."
    )

    # Bucketed: `prepare` checks the fit and leaves the padding to the bucket's map.
    canvas = None if bucket_multiple else pad_shape

    @tf.autograph.experimental.do_not_convert  # plain TF ops; AutoGraph warned it could not convert
    def prepare(example):
        example = decode(example)
        image = transforms.resize_for_eval(example["image"], resize_short_side, resize_long_side)
        label = example["label"]
        image_hw = tf.shape(image)[:2]
        label_hw = tf.shape(label)[:2]
        fits = tf.reduce_all(tf.concat([image_hw, label_hw], 0) <= tf.constant(pad_shape * 2))
        check = tf.debugging.Assert(fits, [too_big, "image", image_hw, "label", label_hw])
        with tf.control_dependencies([check] if check is not None else []):
            if canvas is None:  # raw and unpadded: `_bucketed_eval_dataset` pads
                image, label = tf.identity(image), tf.identity(label)
            else:
                image = tf.ensure_shape(
                    transforms.normalize(_pad_bottom_right(image, canvas, 0.0)), [*canvas, 3]
                )
                label = tf.ensure_shape(
                    _pad_bottom_right(label, canvas, IGNORE_LABEL), list(canvas)
                )
        return {
            "image": image,
            "label": label,
            "image_hw": image_hw,
            "label_hw": label_hw,
            "valid_example": tf.constant(True),
        }

    if bucket_multiple:
        if pc > 1:  # every host must step through the same shapes; their buckets differ
            raise ValueError("eval bucketing (bucket_multiple > 0) needs a single process")
        return _bucketed_eval_dataset(
            ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True),
            batch_size=batch_size,
            pad_shape=pad_shape,
            multiple=int(bucket_multiple),
            minimum=(int(bucket_min[0]), int(bucket_min[1])),
            num_examples=host_examples,
            where=f"{spec.name}/{split}",
            num_parallel_calls=num_parallel_calls,
            prefetch=prefetch,
        )
    ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
    if fill > 0:
        filler = {
            "image": transforms.normalize(tf.zeros([*pad_shape, 3], tf.float32)),
            "label": tf.fill(list(pad_shape), tf.constant(IGNORE_LABEL, tf.int32)),
            "image_hw": tf.zeros([2], tf.int32),
            "label_hw": tf.zeros([2], tf.int32),
            "valid_example": tf.constant(False),
        }
        ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(fill))
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(prefetch)
    ds = ds.with_options(_options(num_parallel_calls))
    return EvalDataset(ds, num_batches, host_examples, where=f"{spec.name}/{split}")


def bucket_shape(hw, pad_shape: Sequence[int], multiple: int, minimum: Sequence[int]):
    """int32 [2]: the bucket canvas (H, W) of an example whose image and label need `hw` (the
    larger of both per side): rounded up to `multiple`, at least `minimum`, at most `pad_shape`."""
    hw = tf.cast(hw, tf.int32)
    rounded = (hw + multiple - 1) // multiple * multiple
    return tf.minimum(tf.maximum(rounded, tf.constant(minimum, tf.int32)), pad_shape)


class BucketedEvalDataset(EvalDataset):
    """`EvalDataset` whose batches have one of a few canvas shapes (`make_eval_dataset` with
    bucket_multiple): same keys, `b` rows each, all-ignore filler rows where a bucket ends.
    The number of batches depends on the data: known (`len`) after the first full pass."""

    def __init__(self, ds, batch_size, pad_pixel, num_examples, where):
        super().__init__(ds, None, num_examples, where)
        self._batch_size = batch_size
        self._pad_pixel = pad_pixel  # the normalised colour of raw 0 padding, float32 [3]

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("a bucketed eval dataset knows its length after one full pass")
        return self.num_batches

    def _fill(self, batch: dict) -> dict:
        missing = self._batch_size - len(batch["label"])
        if missing == 0:
            return batch
        h, w = batch["label"].shape[1:3]
        filler = {
            "image": np.broadcast_to(self._pad_pixel, (missing, h, w, 3)),
            "label": np.full((missing, h, w), IGNORE_LABEL, np.int32),
            "image_hw": np.zeros((missing, 2), np.int32),
            "label_hw": np.zeros((missing, 2), np.int32),
            "valid_example": np.zeros((missing,), bool),
        }
        return {k: np.concatenate([v, filler[k].astype(v.dtype)]) for k, v in batch.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        count = 0
        for batch in super().__iter__():
            count += 1
            yield self._fill(batch)
        self.num_batches = count


def _bucketed_eval_dataset(
    ds,
    *,
    batch_size,
    pad_shape,
    multiple,
    minimum,
    num_examples,
    where,
    num_parallel_calls,
    prefetch,
) -> BucketedEvalDataset:
    """Pads each prepared (unpadded) example to its `bucket_shape` and batches by bucket."""
    pad = tf.constant(pad_shape, tf.int32)

    def to_bucket(example):
        shape = bucket_shape(tf.maximum(example["image_hw"], example["label_hw"]), pad, multiple,
                             minimum)  # fmt: skip
        image = _pad_bottom_right(example["image"], tf.unstack(shape), 0.0)
        label = _pad_bottom_right(example["label"], tf.unstack(shape), IGNORE_LABEL)
        key = tf.cast(shape[0], tf.int64) * (pad_shape[1] + 1) + tf.cast(shape[1], tf.int64)
        return key, example | {"image": transforms.normalize(image), "label": label}

    ds = ds.map(to_bucket, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.group_by_window(
        key_func=lambda key, example: key,
        reduce_func=lambda key, group: group.map(lambda k, example: example).batch(batch_size),
        window_size=batch_size,
    )
    ds = ds.prefetch(prefetch).with_options(_options(num_parallel_calls))
    pad_pixel = transforms.normalize(tf.zeros([3], tf.float32)).numpy()
    return BucketedEvalDataset(ds, batch_size, pad_pixel, num_examples, where)
