"""Input pipeline: prepared tfds datasets -> host-local numpy batches for training and evaluation.

Labels are mapped to the network's space (ignore = -1) when read, by `DatasetSpec.decode_label`,
and nowhere later. Importing this module (through builders.py) hides the accelerators from
TensorFlow.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from msc_seg.data import builders, transforms
from msc_seg.data.conventions import IGNORE_LABEL
from msc_seg.data.registry import DatasetSpec


def _options(num_threads: int) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(1, num_threads)
    options.threading.max_intra_op_parallelism = 1
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


def _mix_seed(*values: int) -> int:
    """A well-mixed 31-bit seed from integers (fits tf.data and TF stateless seeds)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0] & 0x7FFFFFFF)


class _Background:
    """Runs fn(*args) on a daemon thread; `result()` waits for it (and re-raises its error)."""

    def __init__(self, fn, *args):
        self._result = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn, args):
        try:
            self._result = fn(*args)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer thread
            self._error = e

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


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
    shuffle_buffer: int = 1024,
    prefetch: int = 2,
    split: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_parallel_calls: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless host-local training batches.

    Yields {'image': float32 [b,h,w,3] normalised, 'label': int32 [b,h,w]} with b = batch_size
    (the per-host batch) and (h, w) = crop_size.

    Epoch e of host p reads p's shard (`tfds.split_for_jax_process`) in an order drawn from
    (seed, p, e): files and a `shuffle_buffer` of encoded examples are shuffled, the tail that
    does not fill a batch is dropped, and example i of the epoch is augmented with the stateless
    seed (epoch seed, i). The stream is therefore a pure function of (seed, p), and
    `start_step=n` resumes it exactly at batch n by skipping encoded examples of one epoch
    (no decoding, no augmentation).
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    split = spec.train_split if split is None else split
    builder = builders.prepared_builder(spec, data_dir)
    decode = _make_decoder(builder, spec, split)
    crop_size = (int(crop_size[0]), int(crop_size[1]))

    def read(epoch_seed):
        return _read_encoded(
            builder,
            spec,
            split,
            shuffle_files=True,
            seed=epoch_seed,
            process_index=pi,
            process_count=pc,
            num_threads=num_parallel_calls,
        )

    host_examples = _count_examples(read(0))
    steps_per_epoch = host_examples // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"Dataset {spec.name!r} split {split!r} has {host_examples} examples on this host, "
            f"fewer than the per-host batch of {batch_size} (config field `batch_size` / number "
            "of processes). Use a smaller batch_size."
        )

    def epoch_batches(epoch: int, skip_batches: int):
        epoch_seed = _mix_seed(seed, pi, epoch)

        def prepare(index, example):
            example = decode(example)
            example_seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
            image, label = transforms.apply_train_transforms(
                example["image"],
                example["label"],
                example_seed,
                crop_size=crop_size,
                scale_range=scale_range,
                aspect_range=aspect_range,
                cat_max_ratio=cat_max_ratio,
                jitter=color_jitter,
            )
            return {"image": image, "label": label}

        first = skip_batches * batch_size
        ds = read(epoch_seed).shuffle(shuffle_buffer, seed=epoch_seed)
        ds = ds.take(steps_per_epoch * batch_size).skip(first).enumerate(start=first)
        ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=True).prefetch(prefetch)
        return iter(tfds.as_numpy(ds.with_options(_options(num_parallel_calls))))

    def open_epoch(epoch: int, skip_batches: int):
        batches = epoch_batches(epoch, skip_batches)
        return next(batches), batches  # The first batch pays for graph building and buffers.

    def stream():
        # Each epoch is a new tf.data pipeline (its seeds are Python ints). The next one is
        # built, and its first batch produced, on a helper thread while this one is consumed,
        # so epoch boundaries do not stall the training loop.
        epoch, skip_batches = divmod(int(start_step), steps_per_epoch)
        upcoming = _Background(open_epoch, epoch, skip_batches)
        while True:
            first, rest = upcoming.result()
            remaining = steps_per_epoch - skip_batches
            epoch, skip_batches, upcoming = epoch + 1, 0, None
            yield first
            for i, batch in enumerate(rest, start=2):
                if upcoming is None and i >= remaining // 2:  # Halfway: start the next epoch.
                    upcoming = _Background(open_epoch, epoch, 0)
                yield batch
            if upcoming is None:
                upcoming = _Background(open_epoch, epoch, 0)

    return stream()


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
        self._ds = ds
        self.num_batches = num_batches
        self.num_examples = num_examples  # Real examples on this host.
        self._where = where

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        iterator = iter(tfds.as_numpy(self._ds))
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
) -> EvalDataset:
    """Host-local evaluation batches of `split` at fixed shape (see `EvalDataset`).

    With `resize_short_side` / `resize_long_side`, images are resized bilinearly, aspect kept
    (`transforms.resize_for_eval`); labels keep their original size. `pad_shape` (Hp, Wp) must
    hold both, otherwise iteration raises ValueError naming the sizes and the config field
    `eval.pad_shape`.
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
            image = _pad_bottom_right(image, pad_shape, 0.0)
            label = _pad_bottom_right(label, pad_shape, IGNORE_LABEL)
        return {
            "image": tf.ensure_shape(transforms.normalize(image), [*pad_shape, 3]),
            "label": tf.ensure_shape(label, list(pad_shape)),
            "image_hw": image_hw,
            "label_hw": label_hw,
            "valid_example": tf.constant(True),
        }

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
