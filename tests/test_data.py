"""Tests of msc_seg.data: registry, tfds builders (demo, folder, CamVid) and the input pipeline."""

import dataclasses
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from msc_seg.data import builders, demo_builder, pipeline, records, train_order
from msc_seg.data.conventions import IGNORE_LABEL
from msc_seg.data.folder_builder import FolderDatasetError
from msc_seg.data.registry import DatasetSpec, get_dataset_spec

DEMO = get_dataset_spec("demo")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_demo"))
    builders.prepare_dataset(DEMO, data_dir)
    return data_dir


def _all_labels(data_dir, split):
    ds = pipeline.load_split(DEMO, data_dir, split, shuffle_files=False, seed=None)
    return np.stack([ex["label"] for ex in ds.as_numpy_iterator()])


# ---------------------------------------------------------------------------------------------
# Registry.


def test_unknown_dataset_name_raises_listing_known_names():
    with pytest.raises(
        ValueError, match="'cityscapes_typo'.*ade20k, cadis_exp1, .*camvid, cityscapes, .*demo"
    ):
        get_dataset_spec("cityscapes_typo")


def test_registered_specs_have_one_palette_colour_per_class():
    for name, classes in (("demo", 8), ("ade20k", 150), ("camvid", 11)):
        spec = get_dataset_spec(name)
        assert spec.num_classes == classes
        assert spec.palette.shape == (classes, 3) and spec.palette.dtype == np.uint8
    assert get_dataset_spec("ade20k").class_names[:3] == ("wall", "building", "sky")
    assert get_dataset_spec("ade20k").class_names[-1] == "flag"


def test_decode_label_maps_ignore_ids_to_minus_one():
    raw = tf.constant([0, 1, 7, 11, 200, 255], tf.uint8)
    assert DEMO.decode_label(raw).numpy().tolist() == [0, 1, 7, -1, -1, -1]
    camvid = get_dataset_spec("camvid")
    assert camvid.decode_label(raw).numpy().tolist() == [0, 1, 7, -1, -1, -1]
    ade = get_dataset_spec("ade20k")
    assert ade.decode_label(tf.constant([0, 1, 150, 151])).numpy().tolist() == [-1, 0, 149, -1]
    assert ade.decode_label(raw).dtype == tf.int32


def test_ade20k_samples_decode_zero_to_ignore_and_k_to_k_minus_one(shared_dir):
    folder = shared_dir / "data" / "ade20k_samples"
    if not folder.is_dir():
        pytest.skip(f"ADE20K samples not available at {folder}")
    ade = get_dataset_spec("ade20k")
    paths = sorted((folder / "labels").glob("*.png"))
    assert len(paths) == 3
    for path in paths:
        raw = np.asarray(Image.open(path))
        decoded = ade.decode_label(tf.io.decode_png(path.read_bytes(), channels=1)[..., 0])
        decoded = decoded.numpy()
        assert decoded.shape == raw.shape and decoded.dtype == np.int32
        np.testing.assert_array_equal(decoded[raw == 0], IGNORE_LABEL)
        np.testing.assert_array_equal(decoded[raw > 0], raw[raw > 0].astype(np.int32) - 1)
        assert (raw == 0).any() and decoded.max() <= 149


def test_ade20k_samples_build_as_folder_dataset_with_shifted_labels(shared_dir, tmp_path):
    folder = shared_dir / "data" / "ade20k_samples"
    if not folder.is_dir():
        pytest.skip(f"ADE20K samples not available at {folder}")
    root = tmp_path / "ADEChallengeData2016"  # official layout, files linked, not copied
    names = {
        "training": ["ADE_val_00000001", "ADE_val_00000002"],
        "validation": ["ADE_val_00000003"],
    }
    for split, stems in names.items():
        for sub, suffix in (("images", ".jpg"), ("annotations", ".png")):
            (root / sub / split).mkdir(parents=True)
            for stem in stems:
                src = folder / ("labels" if sub == "annotations" else "images") / (stem + suffix)
                (root / sub / split / (stem + suffix)).symlink_to(src)
    ade = get_dataset_spec("ade20k")
    data_dir = str(tmp_path / "tfds")
    builders.prepare_dataset(ade, data_dir, root=str(root))
    assert builders.split_sizes(ade, data_dir) == {"train": 2, "validation": 1}
    ds = pipeline.load_split(ade, data_dir, "validation", shuffle_files=False, seed=None)
    label = next(ds.as_numpy_iterator())["label"]
    raw = np.asarray(Image.open(folder / "labels" / "ADE_val_00000003.png")).astype(np.int32)
    np.testing.assert_array_equal(label, np.where(raw == 0, IGNORE_LABEL, raw - 1))


# ---------------------------------------------------------------------------------------------
# Demo builder.


def test_demo_builds_with_split_sizes_all_classes_and_some_ignore(demo_dir):
    assert builders.split_sizes(DEMO, demo_dir) == {"train": 400, "validation": 100}
    labels = _all_labels(demo_dir, "train")
    assert labels.shape == (400, 128, 128)
    present = set(np.unique(labels).tolist())
    assert present == set(range(8)) | {IGNORE_LABEL}
    assert 0.003 < (labels == IGNORE_LABEL).mean() < 0.1
    # Small classes are still frequent enough to be learnable.
    fractions = np.bincount(labels[labels >= 0], minlength=8) / (labels >= 0).sum()
    assert fractions.min() > 0.002


def test_demo_build_is_byte_deterministic(tmp_path):
    config = demo_builder.DemoConfig(name="tiny", num_train=6, num_validation=3)
    contents = []
    for run in ("a", "b"):
        builder = demo_builder.MscSegDemo(config=config, data_dir=str(tmp_path / run))
        builder.download_and_prepare()
        files = sorted(pathlib.Path(builder.data_dir).glob("*.tfrecord*"))
        assert len(files) == 2
        contents.append([f.read_bytes() for f in files])
    assert contents[0] == contents[1]
    other = demo_builder.generate_example(seed=1, stream=1, index=0)
    assert not np.array_equal(other[0], demo_builder.generate_example(0, 1, 0)[0])


def test_demo_validation_scenes_differ_from_train_scenes(demo_dir):
    assert not np.array_equal(
        _all_labels(demo_dir, "validation")[:5], _all_labels(demo_dir, "train")[:5]
    )


# ---------------------------------------------------------------------------------------------
# Pipeline errors.


def test_missing_demo_dataset_raises_not_prepared_with_build_command(tmp_path):
    with pytest.raises(builders.DatasetNotPreparedError) as info:
        pipeline.load_split(DEMO, str(tmp_path), "train", shuffle_files=False, seed=None)
    assert f"python -m msc_seg.data.prepare --dataset=demo --data_dir={tmp_path}" in str(info.value)


def test_folder_dataset_without_root_raises_not_prepared_with_download_hint(tmp_path):
    with pytest.raises(builders.DatasetNotPreparedError) as info:
        builders.prepare_dataset(get_dataset_spec("ade20k"), str(tmp_path))
    message = str(info.value)
    assert "ADEChallengeData2016.zip" in message and "--dataset=ade20k" in message
    assert "--root=" in message


def test_catalog_tfds_dataset_not_built_raises_with_tfds_build_command(tmp_path):
    spec = DatasetSpec(
        name="mnist_as_seg", tfds_name="mnist", class_names=("a", "b"), palette=[[0, 0, 0]] * 2,
        source="tfds",
    )  # fmt: skip
    with pytest.raises(
        builders.DatasetNotPreparedError, match=f"tfds build mnist --data_dir={tmp_path}"
    ):
        pipeline.load_split(spec, str(tmp_path), "train", shuffle_files=False, seed=None)
    with pytest.raises(builders.DatasetNotPreparedError, match="tfds build mnist"):
        builders.prepare_dataset(spec, str(tmp_path))


def test_unknown_split_raises_listing_available_splits(demo_dir):
    with pytest.raises(ValueError, match="no split 'val'.*train, validation"):
        pipeline.load_split(DEMO, demo_dir, "val", shuffle_files=False, seed=None)


# ---------------------------------------------------------------------------------------------
# Training iterator: one global stream, each process's rows of it.


def _train_batches(data_dir, seed, n=2, **kwargs):
    it = pipeline.make_train_iterator(
        DEMO, data_dir=data_dir, batch_size=4, crop_size=(64, 64), seed=seed, **kwargs
    )
    return [next(it) for _ in range(n)]


def _validation_stream(demo_dir, start_step, n, process_index=0, process_count=1):
    """Batches start_step.. of the validation stream: 100 scenes, global batch 8 -> 12 steps per
    epoch (4 scenes left out of each epoch)."""
    it = pipeline.make_train_iterator(
        DEMO, data_dir=demo_dir, batch_size=8, crop_size=(64, 64), seed=1, split="validation",
        start_step=start_step, process_index=process_index, process_count=process_count,
    )  # fmt: skip
    return [next(it) for _ in range(n)]


def _assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_train_iterator_yields_fixed_shape_normalised_batches(demo_dir):
    batch = _train_batches(demo_dir, seed=0, n=1)[0]
    assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 64, 64) and batch["label"].dtype == np.int32
    assert set(np.unique(batch["label"]).tolist()) <= set(range(8)) | {IGNORE_LABEL}
    assert -2.2 < batch["image"].min() and batch["image"].max() < 2.7


def test_train_and_eval_pipelines_run_without_tf_data_autotuning(demo_dir):
    """tf.data's autotuning thread is not woken when an iterator is destroyed: with it, a pod's
    processes stayed ~16 s after their SIGTERM save (pipeline._options). Both pipelines set
    every parallelism explicitly and still read."""
    it = pipeline.make_train_iterator(
        DEMO, data_dir=demo_dir, batch_size=4, crop_size=(64, 64), seed=0
    )
    ev = pipeline.make_eval_dataset(
        DEMO, data_dir=demo_dir, split="validation", batch_size=16, pad_shape=(128, 128)
    )
    for dataset in (it.dataset, ev.dataset):
        assert dataset.options().autotune.enabled is False
    assert next(it)["image"].shape == (4, 64, 64, 3)
    assert next(iter(ev))["image"].shape == (16, 128, 128, 3)
    it.close()


def test_train_iterator_is_deterministic_given_seed(demo_dir):
    a, b, c = (_train_batches(demo_dir, seed) for seed in (3, 3, 4))
    _assert_same_batches(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_train_iterator_repeats_with_a_new_order_each_epoch(demo_dir):
    # 100 validation scenes, batch 4, no augmentation: 25 batches per epoch.
    it = pipeline.make_train_iterator(
        DEMO, data_dir=demo_dir, batch_size=4, crop_size=(128, 128), seed=0, split="validation",
        scale_range=(1.0, 1.0), aspect_range=(1.0, 1.0), cat_max_ratio=1.0, color_jitter=False,
    )  # fmt: skip
    epochs = [np.concatenate([next(it)["label"] for _ in range(25)]) for _ in range(2)]

    # Same scenes (up to a flip) in both epochs, in a different order.
    def keys(labels):
        return sorted(min(lb.tobytes(), lb[:, ::-1].tobytes()) for lb in labels)

    assert keys(epochs[0]) == keys(epochs[1])
    assert not np.array_equal(epochs[0], epochs[1])


def test_train_iterator_resumes_exactly_at_start_step_across_epochs(demo_dir):
    fresh = _validation_stream(demo_dir, 0, 14)
    _assert_same_batches(fresh[10:], _validation_stream(demo_dir, 10, 4))  # crosses step 12
    _assert_same_batches(fresh[12:], _validation_stream(demo_dir, 12, 2))  # starts an epoch


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_rows_concatenate_to_the_one_process_global_batch(demo_dir, process_count):
    # Steps 0..13 cross the epoch boundary at step 12; then resumed at step 11 on every process.
    fresh = _validation_stream(demo_dir, 0, 14)
    for start in (0, 11):
        parts = [
            _validation_stream(demo_dir, start, 14 - start, i, process_count)
            for i in range(process_count)
        ]
        joined = [
            {k: np.concatenate([p[t][k] for p in parts]) for k in ("image", "label")}
            for t in range(14 - start)
        ]
        assert joined[0]["image"].shape[0] == 8
        _assert_same_batches(fresh[start:], joined)


def test_each_process_reads_only_its_rows_of_each_global_batch(demo_dir, monkeypatch):
    read = {0: [], 1: []}
    real_example = train_order.GlobalOrder.example

    def example(self, position):
        read[self.process_index].append(position)
        return real_example(self, position)

    monkeypatch.setattr(train_order.GlobalOrder, "example", example)
    for i in (0, 1):
        _validation_stream(demo_dir, 0, 14, i, 2)
    for i, positions in read.items():  # rows [4 i, 4 i + 4) of each global batch of 8
        assert positions and all((p % 8) // 4 == i for p in positions)
        assert set(range(i * 4, 14 * 8, 8)) <= set(positions)


def test_train_stream_crosses_epoch_boundaries_in_one_pipeline(demo_dir, monkeypatch):
    builds = []
    real = pipeline._train_dataset

    def counted(*args, **kwargs):
        builds.append(kwargs["start_step"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_train_dataset", counted)
    batches = _validation_stream(demo_dir, 0, 30)  # 2.5 epochs of 12 steps
    assert builds == [0]
    assert len(batches) == 30 and all(b["image"].shape == (8, 64, 64, 3) for b in batches)


def test_train_iterator_rejects_global_batch_larger_than_the_split(demo_dir):
    with pytest.raises(ValueError, match="fewer than the global batch of 101"):
        pipeline.make_train_iterator(
            DEMO, data_dir=demo_dir, batch_size=101, crop_size=(64, 64), seed=0,
            split="validation",
        )  # fmt: skip


def test_train_iterator_rejects_global_batch_not_divisible_by_processes(demo_dir):
    with pytest.raises(ValueError, match=r"global batch \(6.*multiple of the number of proc"):
        pipeline.make_train_iterator(
            DEMO, data_dir=demo_dir, batch_size=6, crop_size=(64, 64), seed=0,
            process_index=0, process_count=4,
        )  # fmt: skip


def test_global_order_epochs_are_seeded_permutations_cut_to_whole_batches():
    order = train_order.GlobalOrder(num_examples=10, global_batch=4, seed=5)
    assert order.steps_per_epoch == 2  # 2 examples left out of each epoch
    for epoch in range(3):
        assert sorted(order.permutation(epoch).tolist()) == list(range(10))
    assert order.permutation(0).tolist() != order.permutation(1).tolist()
    epoch1 = [order.example(p) for p in range(8, 16)]
    assert epoch1 == order.permutation(1)[:8].tolist()
    other = train_order.GlobalOrder(num_examples=10, global_batch=4, seed=6)
    assert other.permutation(0).tolist() != order.permutation(0).tolist()
    two = [train_order.GlobalOrder(10, 4, 5, process_index=i, process_count=2) for i in (0, 1)]
    # Process 1's 3rd local example is row 2 + 0 of step 1: global position 4 + 2 + 0 = 6.
    assert [two[1].position(i) for i in range(4)] == [2, 3, 6, 7]
    assert [two[0].position(i) for i in range(4)] == [0, 1, 4, 5]


def test_record_index_reads_the_split_records_in_order(demo_dir):
    builder = builders.prepared_builder(DEMO, demo_dir)
    for split in ("validation", "train[5:7]+validation[:3]"):
        index = records.RecordIndex(builder, split)
        files = [f.filename for f in builder.info.splits[split].file_instructions]
        expected = []
        for f in builder.info.splits[split].file_instructions:
            raw = tf.data.TFRecordDataset(f.filename).skip(f.skip).take(f.take)
            expected += list(raw.as_numpy_iterator())
        assert len(index) == len(expected) == builder.info.splits[split].num_examples
        assert [index.read(i) for i in range(len(index))] == expected, files


def test_hosts_read_disjoint_shards_covering_the_split(demo_dir):
    shards = [
        pipeline.load_split(
            DEMO, demo_dir, "validation", shuffle_files=False, seed=None,
            process_index=i, process_count=3,
        )
        for i in range(3)
    ]  # fmt: skip
    hashes = [{ex["image"].tobytes() for ex in ds.as_numpy_iterator()} for ds in shards]
    assert [len(h) for h in hashes] == [34, 33, 33]
    assert len(hashes[0] | hashes[1] | hashes[2]) == 100


# ---------------------------------------------------------------------------------------------
# Evaluation dataset.


def test_eval_batches_have_fixed_shapes_and_a_padded_last_batch(demo_dir):
    ev = pipeline.make_eval_dataset(
        DEMO, data_dir=demo_dir, split="validation", batch_size=16, pad_shape=(136, 144)
    )
    batches = list(ev)
    assert len(ev) == len(batches) == 7
    for batch in batches:
        assert batch["image"].shape == (16, 136, 144, 3)
        assert batch["label"].shape == (16, 136, 144)
        assert batch["image_hw"].shape == batch["label_hw"].shape == (16, 2)
        assert batch["valid_example"].shape == (16,)
    assert [int(b["valid_example"].sum()) for b in batches] == [16] * 6 + [4]
    last = batches[-1]
    assert np.all(last["label"][4:] == IGNORE_LABEL) and np.all(last["label_hw"][4:] == 0)
    first = batches[0]
    np.testing.assert_array_equal(first["image_hw"], [[128, 128]] * 16)
    assert np.all(first["label"][:, 128:] == IGNORE_LABEL) and np.all(
        first["label"][:, :, 128:] == IGNORE_LABEL
    )
    black = -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(first["image"][0, 130, 140], black, rtol=1e-5)
    again = list(ev)  # re-iterable: a fresh, identical pass
    np.testing.assert_array_equal(again[0]["label"], first["label"])


def test_eval_gives_every_host_the_same_number_of_batches(demo_dir):
    evs = [
        pipeline.make_eval_dataset(
            DEMO, data_dir=demo_dir, split="validation", batch_size=16, pad_shape=(128, 128),
            process_index=i, process_count=3,
        )
        for i in range(3)
    ]  # fmt: skip
    assert [len(ev) for ev in evs] == [3, 3, 3]
    valid = [sum(int(b["valid_example"].sum()) for b in ev) for ev in evs]
    assert valid == [34, 33, 33]


def test_eval_resize_short_side_resizes_image_but_keeps_original_label(demo_dir):
    ev = pipeline.make_eval_dataset(
        DEMO, data_dir=demo_dir, split="validation", batch_size=50, pad_shape=(128, 128),
        resize_short_side=64,
    )  # fmt: skip
    batch = next(iter(ev))
    np.testing.assert_array_equal(batch["image_hw"], [[64, 64]] * 50)
    np.testing.assert_array_equal(batch["label_hw"], [[128, 128]] * 50)
    assert (batch["label"] != IGNORE_LABEL).mean() > 0.9  # original labels, not padding


def test_eval_image_larger_than_pad_shape_raises_naming_the_config_field(demo_dir):
    ev = pipeline.make_eval_dataset(
        DEMO, data_dir=demo_dir, split="validation", batch_size=4, pad_shape=(96, 160)
    )
    with pytest.raises(ValueError, match=r"eval\.pad_shape") as info:
        next(iter(ev))
    assert "[96, 160]" in str(info.value) and "128" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Folder builder.


def _write_pair(root, split, name, size=(12, 10), label_size=None, mode="L"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        root / "images" / split / f"{name}.png"
    )
    lw, lh = label_size or size
    ids = (np.arange(lh * lw).reshape(lh, lw) % 4).astype(np.uint8)
    label = Image.fromarray(ids, mode="L")
    if mode == "P":
        label = label.convert("P")
        label.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    label.save(root / "labels" / split / f"{name}.png")
    return ids


def _folder_spec(name="tiny_folder"):
    return DatasetSpec(
        name=name, tfds_name=name, class_names=("a", "b", "c"), palette=[[0, 0, 0]] * 3,
        source="folder", ignore_ids=(3,), train_split="train", eval_split="val",
    )  # fmt: skip


def test_folder_builder_builds_discovered_splits_and_decodes_labels(tmp_path):
    root = tmp_path / "src"
    ids = _write_pair(root, "train", "a0")
    _write_pair(root, "train", "a1", mode="P")
    _write_pair(root, "val", "b0", size=(7, 9))
    spec = _folder_spec()
    data_dir = str(tmp_path / "tfds")
    builders.prepare_dataset(spec, data_dir, root=str(root))
    assert builders.split_sizes(spec, data_dir) == {"train": 2, "val": 1}
    ds = pipeline.load_split(spec, data_dir, "train", shuffle_files=False, seed=None)
    labels = [ex["label"] for ex in ds.as_numpy_iterator()]
    expected = np.where(ids == 3, IGNORE_LABEL, ids.astype(np.int32))
    for label in labels:  # gray and palette labels decode to the same ids
        np.testing.assert_array_equal(label, expected)


def test_folder_builder_renames_split_folders_like_ade20k(tmp_path):
    root = tmp_path / "src"
    _write_pair(root, "training", "a0")
    _write_pair(root, "validation", "b0")
    spec = dataclasses.replace(_folder_spec("renamed"), split_folders=(("training", "train"),))
    data_dir = str(tmp_path / "tfds")
    builders.prepare_dataset(spec, data_dir, root=str(root))
    assert builders.split_sizes(spec, data_dir) == {"train": 1, "validation": 1}


def test_folder_builder_names_unpaired_files(tmp_path):
    root = tmp_path / "src"
    _write_pair(root, "train", "a0")
    _write_pair(root, "train", "lonely")
    (root / "labels" / "train" / "lonely.png").unlink()
    with pytest.raises(FolderDatasetError, match=r"Images without a label: .*lonely\.png"):
        builders.prepare_dataset(_folder_spec(), str(tmp_path / "tfds"), root=str(root))


def test_folder_builder_names_corrupt_image(tmp_path):
    root = tmp_path / "src"
    _write_pair(root, "train", "a0")
    _write_pair(root, "train", "broken")
    path = root / "images" / "train" / "broken.png"
    path.write_bytes(path.read_bytes()[:60])  # truncated file
    with pytest.raises(FolderDatasetError, match=r"cannot read image .*broken\.png"):
        builders.prepare_dataset(_folder_spec(), str(tmp_path / "tfds"), root=str(root))


def test_folder_builder_names_label_with_wrong_size(tmp_path):
    root = tmp_path / "src"
    _write_pair(root, "train", "a0")
    _write_pair(root, "train", "odd", size=(12, 10), label_size=(11, 10))
    with pytest.raises(
        FolderDatasetError, match=r"odd\.png is 10x11 \(HxW\) but image .*odd\.png is 10x12"
    ):
        builders.prepare_dataset(_folder_spec(), str(tmp_path / "tfds"), root=str(root))


def test_folder_builder_rejects_colour_labels(tmp_path):
    root = tmp_path / "src"
    _write_pair(root, "train", "a0")
    Image.new("RGB", (12, 10)).save(root / "labels" / "train" / "a0.png")
    with pytest.raises(FolderDatasetError, match=r"a0\.png has mode 'RGB'"):
        builders.prepare_dataset(_folder_spec(), str(tmp_path / "tfds"), root=str(root))


def test_label_image_size_mismatch_at_read_time_names_dataset_and_split(tmp_path):
    root = tmp_path / "src"
    _write_pair(root, "train", "a0")
    spec = _folder_spec()
    data_dir = str(tmp_path / "tfds")
    builders.prepare_dataset(spec, data_dir, root=str(root))
    builder = builders.make_builder(spec, data_dir)
    decode = pipeline._make_decoder(builder, spec, "train")
    example = {
        "image": tf.io.encode_png(tf.zeros([4, 5, 3], tf.uint8)),
        "label": tf.io.encode_png(tf.zeros([4, 6, 1], tf.uint8)),
    }
    ds = tf.data.Dataset.from_tensors(example).map(decode)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="Dataset tiny_folder, split train: label size differs"
    ):
        next(iter(ds))
