"""Tests of the paper's datasets: label tables, on-disk layouts (tiny synthetic trees), tfds
catalog datasets under `tfds.testing.mock_data`, bad input, and the real CamVid / ADE20K data."""

import functools
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from PIL import Image
from tensorflow_datasets.core import naming

from msc_seg import config_lib, experiment
from msc_seg.data import builders, pipeline, prepare, user_datasets
from msc_seg.data.conventions import IGNORE_LABEL
from msc_seg.data.folder_builder import FolderDatasetError
from msc_seg.data.registry import DatasetSpec, get_dataset_spec

# ---------------------------------------------------------------------------------------------
# Independent restatements of the label conventions (numpy, from the sources' own tables).

# cityscapesScripts labels.py: labelId -> trainId of the 19 evaluated classes.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
# The authors' CaDIS remaps (class: raw ids; their 255 = ignore is left out here).
CADIS_REMAPS = {
    1: {**{i: [i] for i in range(7)}, 7: list(range(7, 36))},
    2: {
        **{i: [i] for i in range(7)}, 7: [7, 8, 10, 27, 20, 32], 8: [9, 22], 9: [11, 33],
        10: [12, 28], 11: [13, 21], 12: [14, 24], 13: [15, 18], 14: [16, 23], 15: [17], 16: [19],
    },
    3: {i: [i] for i in range(25)},
}  # fmt: skip


def np_remap(raw: np.ndarray, remap: dict) -> np.ndarray:
    out = np.full(raw.shape, IGNORE_LABEL, np.int32)
    for cls, ids in remap.items():
        out[np.isin(raw, ids)] = cls
    return out


def np_cityscapes(raw: np.ndarray) -> np.ndarray:
    return np_remap(raw, {v: [k] for k, v in CITYSCAPES_TRAIN_IDS.items()})


def np_shift_by_one(raw: np.ndarray, num_classes: int) -> np.ndarray:
    """0 -> ignore, k -> k-1 (ADE20K, scene_parse150, Pascal Context 59)."""
    raw = raw.astype(np.int32)
    return np.where((raw >= 1) & (raw <= num_classes), raw - 1, IGNORE_LABEL)


def decode(spec: DatasetSpec, raw) -> np.ndarray:
    return spec.decode_label(tf.constant(raw)).numpy()


# ---------------------------------------------------------------------------------------------
# Registry: names, tables, categories.


def test_paper_datasets_are_registered_with_their_class_counts():
    counts = {
        "ade20k": 150, "scene_parse150": 150, "cityscapes": 19, "cityscapes_tfds": 19,
        "pascal_context": 59, "cadis_exp1": 8, "cadis_exp2": 17, "cadis_exp3": 25, "camvid": 11,
    }  # fmt: skip
    for name, k in counts.items():
        spec = get_dataset_spec(name)
        assert spec.num_classes == k and spec.palette.shape == (k, 3), name
    assert get_dataset_spec("cityscapes").class_names[-1] == "bicycle"
    assert get_dataset_spec("pascal_context").class_names[:2] == ("aeroplane", "bag")
    assert get_dataset_spec("cadis_exp2").class_names[7] == "Cannula"
    assert get_dataset_spec("cadis_exp3").class_names[24] == "Lens Injector Handle"


def test_cityscapes_label_ids_become_train_ids():
    raw = np.arange(-2, 300)
    for name in ("cityscapes", "cityscapes_tfds"):
        np.testing.assert_array_equal(decode(get_dataset_spec(name), raw), np_cityscapes(raw))


def test_cadis_experiments_decode_like_the_authors_remaps():
    raw = np.arange(-1, 260)
    for exp, remap in CADIS_REMAPS.items():
        spec = get_dataset_spec(f"cadis_exp{exp}")
        np.testing.assert_array_equal(decode(spec, raw), np_remap(raw, remap))
    # Experiment 1 has no ignored raw id; 2 and 3 ignore the ids their remaps leave out.
    assert (decode(get_dataset_spec("cadis_exp1"), np.arange(36)) >= 0).all()
    ignored2 = np.flatnonzero(decode(get_dataset_spec("cadis_exp2"), np.arange(36)) < 0)
    assert ignored2.tolist() == [25, 26, 29, 30, 31, 34, 35]


def test_cadis_categories_per_experiment():
    assert get_dataset_spec("cadis_exp1").categories == {
        "anatomies": (0, 4, 5, 6), "instruments": (7,), "others": (1, 2, 3), "rare": (2,)
    }  # fmt: skip
    exp2 = get_dataset_spec("cadis_exp2").categories
    assert exp2["instruments"] == tuple(range(7, 17)) and exp2["rare"] == (16, 10, 9, 12, 14)
    exp3 = get_dataset_spec("cadis_exp3").categories
    assert exp3["instruments"] == tuple(range(7, 25))
    assert exp3["rare"] == (24, 20, 21, 22, 18, 23, 19, 16, 12, 11, 14)


def test_shift_by_one_datasets_ignore_zero_and_unknown_ids():
    raw = np.arange(-3, 300)
    for name, k in (("ade20k", 150), ("scene_parse150", 150), ("pascal_context", 59)):
        np.testing.assert_array_equal(decode(get_dataset_spec(name), raw), np_shift_by_one(raw, k))


def test_registering_a_different_spec_under_a_taken_name_fails():
    with pytest.raises(ValueError, match="'camvid' is already registered"):
        user_datasets.register_folder_dataset("camvid", ["a", "b"])


# ---------------------------------------------------------------------------------------------
# Synthetic on-disk trees (8x8 PNGs). Example i's image is the constant 20*i+10, so decoded
# examples can be matched to the labels written (tfds reorders examples).


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _example(index: int, raw_ids, rng):
    image = np.full((8, 8, 3), 20 * index + 10, np.uint8)
    label = rng.choice(np.asarray(raw_ids), size=(8, 8)).astype(np.uint8)
    return image, label


def _labels_by_example(spec, data_dir, split) -> dict[int, np.ndarray]:
    ds = pipeline.load_split(spec, data_dir, split, shuffle_files=False, seed=None)
    return {
        int(round((ex["image"].mean() - 10) / 20)): ex["label"] for ex in ds.as_numpy_iterator()
    }


def _cityscapes_tree(root, counts=(("train", 2), ("val", 1), ("test", 1))):
    rng, labels, index = np.random.default_rng(0), {}, 0
    for folder, n in counts:
        for j in range(n):
            city = ("aachen", "bonn")[j % 2]
            stem = f"{city}_{index:06d}_000019"
            image, label = _example(index, list(range(34)) + [255], rng)
            _save(root / "leftImg8bit" / folder / city / f"{stem}_leftImg8bit.png", image)
            _save(root / "gtFine" / folder / city / f"{stem}_gtFine_labelIds.png", label)
            # The release's other gtFine files must not disturb pairing.
            _save(root / "gtFine" / folder / city / f"{stem}_gtFine_color.png", image)
            labels[index] = label
            index += 1
    return labels


def test_cityscapes_folder_builds_splits_and_decodes_train_ids(tmp_path):
    raw = _cityscapes_tree(tmp_path / "cityscapes")
    spec = get_dataset_spec("cityscapes")
    data_dir = str(tmp_path / "tfds")
    builders.prepare_dataset(spec, data_dir, root=str(tmp_path / "cityscapes"))
    assert builders.split_sizes(spec, data_dir) == {"train": 2, "validation": 1, "test": 1}
    decoded = _labels_by_example(spec, data_dir, "train")
    assert sorted(decoded) == [0, 1]
    for i, label in decoded.items():
        np.testing.assert_array_equal(label, np_cityscapes(raw[i]))


def test_cityscapes_unpaired_image_is_named(tmp_path):
    _cityscapes_tree(tmp_path / "cs", counts=(("train", 2),))
    lonely = (
        tmp_path / "cs" / "gtFine" / "train" / "bonn" / "bonn_000001_000019_gtFine_labelIds.png"
    )
    lonely.unlink()
    with pytest.raises(FolderDatasetError, match=r"Images without a label: .*bonn_000001_000019"):
        builders.prepare_dataset(
            get_dataset_spec("cityscapes"), str(tmp_path / "tfds"), root=str(tmp_path / "cs")
        )


def _pascal_context_tree(devkit, lists=(("train", 2), ("val", 1))):
    root, rng, labels, index = devkit / "VOC2010", np.random.default_rng(1), {}, 0
    for split, n in lists:
        names = []
        for _ in range(n):
            name = f"2008_{index:06d}"
            image, label = _example(index, range(60), rng)
            _save(root / "JPEGImages" / f"{name}.jpg", image)
            _save(root / "SegmentationClassContext" / f"{name}.png", label)
            names.append(name)
            labels[index] = label
            index += 1
        lists_dir = root / "ImageSets" / "SegmentationContext"
        lists_dir.mkdir(parents=True, exist_ok=True)
        (lists_dir / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    # VOC2010 holds many more JPEGs than Pascal Context lists: they are not examples.
    _save(root / "JPEGImages" / "2007_999999.jpg", np.zeros((8, 8, 3), np.uint8))
    return labels


def test_pascal_context_builds_listed_images_and_shifts_labels(tmp_path):
    raw = _pascal_context_tree(tmp_path / "VOCdevkit")
    spec = get_dataset_spec("pascal_context")
    data_dir = str(tmp_path / "tfds")
    # The VOCdevkit folder above VOC2010 works as the root too.
    builders.prepare_dataset(spec, data_dir, root=str(tmp_path / "VOCdevkit"))
    assert builders.split_sizes(spec, data_dir) == {"train": 2, "validation": 1}
    decoded = _labels_by_example(spec, data_dir, "train")
    assert sorted(decoded) == [0, 1]
    for i, label in decoded.items():
        np.testing.assert_array_equal(label, np_shift_by_one(raw[i], 59))


def test_pascal_context_missing_listed_file_names_the_list(tmp_path):
    _pascal_context_tree(tmp_path / "VOCdevkit")
    root = tmp_path / "VOCdevkit" / "VOC2010"
    (root / "SegmentationClassContext" / "2008_000002.png").unlink()
    with pytest.raises(FolderDatasetError, match=r"val\.txt are missing: .*2008_000002\.png"):
        builders.prepare_dataset(
            get_dataset_spec("pascal_context"), str(tmp_path / "tfds"), root=str(root)
        )


def _cadis_tree(root, videos=(("Video01", 2), ("Video5", 1), ("Video02", 1))):
    """Train video 1 (zero-padded name), validation video 5, test video 2."""
    rng, labels, index = np.random.default_rng(2), {}, 0
    for folder, n in videos:
        number = int(folder[len("Video") :])
        for frame in range(n):
            stem = f"Video{number}_frame{90 * frame:06d}"
            image, label = _example(index, range(36), rng)
            _save(root / folder / "Images" / f"{stem}.png", image)
            _save(root / folder / "Labels" / f"{stem}.png", label)
            labels[index] = label
            index += 1
    return labels


@pytest.fixture(scope="module")
def cadis_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cadis")
    raw = _cadis_tree(tmp / "CaDIS")
    data_dir = str(tmp / "tfds")
    builders.prepare_dataset(get_dataset_spec("cadis_exp1"), data_dir, root=str(tmp / "CaDIS"))
    return data_dir, raw


def test_cadis_one_build_serves_all_three_experiments(cadis_build):
    data_dir, raw = cadis_build
    for exp, remap in CADIS_REMAPS.items():
        spec = get_dataset_spec(f"cadis_exp{exp}")
        # Experiments 2 and 3 read the build of experiment 1: nothing to prepare again.
        assert builders.split_sizes(spec, data_dir) == {"train": 2, "validation": 1, "test": 1}
        for split, indices in (("train", [0, 1]), ("validation", [2]), ("test", [3])):
            decoded = _labels_by_example(spec, data_dir, split)
            assert sorted(decoded) == indices
            for i, label in decoded.items():
                np.testing.assert_array_equal(label, np_remap(raw[i], remap))


def test_cadis_split_expression_reads_validation_and_test_together(cadis_build):
    data_dir, _ = cadis_build
    spec = get_dataset_spec("cadis_exp2")
    decoded = _labels_by_example(spec, data_dir, "validation+test")
    assert sorted(decoded) == [2, 3]
    ev = pipeline.make_eval_dataset(
        spec, data_dir=data_dir, split="validation+test", batch_size=2, pad_shape=(32, 32)
    )
    assert [int(b["valid_example"].sum()) for b in ev] == [2]


def test_cadis_split_without_videos_is_an_empty_split_error(tmp_path):
    _cadis_tree(tmp_path / "CaDIS", videos=(("Video1", 1), ("Video02", 1)))
    with pytest.raises(FolderDatasetError, match=r"none of the validation videos \[5, 7, 16\]"):
        builders.prepare_dataset(
            get_dataset_spec("cadis_exp3"), str(tmp_path / "tfds"), root=str(tmp_path / "CaDIS")
        )


# ---------------------------------------------------------------------------------------------
# Bad input: unknown ids, empty split, corrupt files (split-folder layout).


def _folder_tree(root, labels: dict[str, dict[str, np.ndarray]]):
    """images/<split>/<name>.png (constant 20*i+10) + labels/<split>/<name>.png."""
    index = 0
    for split, by_name in labels.items():
        for name, label in by_name.items():
            _save(
                root / "images" / split / f"{name}.png",
                np.full((*label.shape[:2], 3), 20 * index + 10, np.uint8),
            )
            _save(root / "labels" / split / f"{name}.png", label)
            index += 1


def _abc_spec(name):
    """Classes a, b, c and raw 3 = ignore: known raw ids 0..3."""
    return DatasetSpec(
        name=name, tfds_name=name, class_names=("a", "b", "c"), palette=[[0, 0, 0]] * 3,
        source="folder", ignore_ids=(3,),
    )  # fmt: skip


def _ids(*values):
    return np.array(values, np.uint8).reshape(2, -1)


def test_unknown_label_ids_error_names_file_ids_and_the_option(tmp_path):
    _folder_tree(
        tmp_path / "src",
        {"train": {"ok": _ids(0, 1, 2, 3), "bad": _ids(0, 7, 9, 9)}, "val": {"v": _ids(1, 1)}},
    )
    with pytest.raises(FolderDatasetError) as info:
        builders.prepare_dataset(
            _abc_spec("unknown_ids"), str(tmp_path / "t"), root=str(tmp_path / "src")
        )
    message = str(info.value)
    assert "1 label files" in message and "ids outside the dataset's label ids (0-3)" in message
    assert f"{tmp_path / 'src' / 'labels' / 'train' / 'bad.png'} (7, 9)" in message
    assert "--unknown_label_ids=ignore" in message


def test_unknown_label_ids_ignore_option_reads_them_as_ignore(tmp_path):
    _folder_tree(tmp_path / "src", {"train": {"bad": _ids(0, 7, 2, 3)}})
    spec, data_dir = _abc_spec("unknown_ids_ignored"), str(tmp_path / "t")
    builders.prepare_dataset(spec, data_dir, root=str(tmp_path / "src"), unknown_label_ids="ignore")
    (label,) = _labels_by_example(spec, data_dir, "train").values()
    np.testing.assert_array_equal(label, [[0, IGNORE_LABEL], [2, IGNORE_LABEL]])


def test_empty_split_folder_is_named(tmp_path):
    _folder_tree(tmp_path / "src", {"train": {"a": _ids(0, 1)}})
    (tmp_path / "src" / "images" / "val").mkdir()
    (tmp_path / "src" / "labels" / "val").mkdir()
    with pytest.raises(FolderDatasetError, match=r"no images in .*images/val \(an empty split\)"):
        builders.prepare_dataset(
            _abc_spec("empty"), str(tmp_path / "t"), root=str(tmp_path / "src")
        )


def test_corrupt_label_is_named(tmp_path):
    _folder_tree(tmp_path / "src", {"train": {"a": _ids(0, 1), "b": _ids(1, 2)}})
    label = tmp_path / "src" / "labels" / "train" / "b.png"
    label.write_bytes(label.read_bytes()[:40])
    with pytest.raises(FolderDatasetError, match=r"cannot read label .*b\.png"):
        builders.prepare_dataset(
            _abc_spec("corrupt"), str(tmp_path / "t"), root=str(tmp_path / "src")
        )


# ---------------------------------------------------------------------------------------------
# Generic folder dataset with colour (palette) labels, registered without editing the package.

ROAD, CAR, VOID = (128, 64, 128), (0, 0, 142), (0, 0, 0)


def _colour_label(*colours):
    return np.array(colours, np.uint8).reshape(2, -1, 3)


def _write_dataset_file(path, name):
    path.write_text(json.dumps({
        "name": name, "classes": ["road", "car"], "palette": [ROAD, CAR],
        "label_format": "palette", "ignore_colors": [VOID], "eval_split": "val",
    }))  # fmt: skip
    return path


def test_palette_labels_map_colours_to_classes_and_ignore(tmp_path):
    spec = user_datasets.register_dataset_file(
        _write_dataset_file(tmp_path / "d.json", "roads_rgb")
    )
    assert spec.class_names == ("road", "car") and spec.eval_split == "val"
    _folder_tree(tmp_path / "src", {"train": {"x": _colour_label(ROAD, CAR, VOID, CAR)}})
    data_dir = str(tmp_path / "t")
    builders.prepare_dataset(spec, data_dir, root=str(tmp_path / "src"))
    (label,) = _labels_by_example(spec, data_dir, "train").values()
    np.testing.assert_array_equal(label, [[0, 1], [IGNORE_LABEL, 1]])


def test_palette_label_with_unknown_colour_names_file_and_colour(tmp_path):
    spec = user_datasets.register_folder_dataset(
        "roads_rgb_strict", ["road", "car"], [ROAD, CAR], label_format="palette"
    )
    _folder_tree(tmp_path / "src", {"train": {"x": _colour_label(ROAD, (1, 2, 3), ROAD, CAR)}})
    with pytest.raises(FolderDatasetError, match=r"x\.png \(\(1, 2, 3\)\)") as info:
        builders.prepare_dataset(spec, str(tmp_path / "t"), root=str(tmp_path / "src"))
    assert "neither class colours nor ignore colours" in str(info.value)
    data_dir = str(tmp_path / "t2")
    builders.prepare_dataset(spec, data_dir, root=str(tmp_path / "src"), unknown_label_ids="ignore")
    (label,) = _labels_by_example(spec, data_dir, "train").values()
    np.testing.assert_array_equal(label, [[0, IGNORE_LABEL], [0, 1]])


def test_dataset_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "x", "clases": ["a"]}))
    with pytest.raises(
        ValueError, match=r"bad\.json: unknown keys \['clases'\]; missing keys \['classes'\]"
    ):
        user_datasets.register_dataset_file(path)


def test_config_spec_file_registers_the_dataset(tmp_path):
    config = config_lib.base_config()
    config.dataset.spec_file = str(_write_dataset_file(tmp_path / "d.json", "roads_cfg"))
    config.dataset.name = "roads_cfg"
    facts = config_lib.RuntimeFacts(num_devices=8)
    experiment.validate(config, facts, check_model=False)
    assert get_dataset_spec("roads_cfg").num_classes == 2
    config.dataset.name = "demo"
    with pytest.raises(config_lib.ConfigError, match=r"dataset.name.*set dataset.name=roads_cfg"):
        experiment.validate(config, facts, check_model=False)


# ---------------------------------------------------------------------------------------------
# tfds catalog datasets, offline under tfds.testing.mock_data, through `load_split`.


def _write_catalog_metadata(data_dir, tfds_name, split_sizes):
    """dataset_info.json as `tfds build` would leave it, so the builder counts as prepared."""
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    splits = [
        tfds.core.SplitInfo(
            name=split, shard_lengths=[n], num_bytes=0,
            filename_template=naming.ShardedFileTemplate(
                data_dir=builder.data_dir, dataset_name=builder.name, split=split,
                filetype_suffix="tfrecord",
            ),
        )
        for split, n in split_sizes.items()
    ]  # fmt: skip
    builder.info.set_splits(tfds.core.SplitDict(splits))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


def _mock_catalog(data_dir, examples):
    """mock_data serving `examples` (dicts of numpy features), encoded with the builder's own
    features and decoded as the pipeline asks (images stay encoded until `_make_decoder`)."""

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        del split, read_config, shuffle_files
        encoded = [self.info.features.encode_example(ex) for ex in examples]
        ds = tf.data.Dataset.from_tensor_slices({k: [e[k] for e in encoded] for k in encoded[0]})
        return ds.map(functools.partial(self.info.features.decode_example, decoders=decoders))

    return tfds.testing.mock_data(
        num_examples=len(examples),
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=data_dir,
        as_dataset_fn=as_dataset,
    )


def test_scene_parse150_mock_reads_channel_zero_with_the_ade_convention(tmp_path):
    spec, data_dir = get_dataset_spec("scene_parse150"), str(tmp_path)
    _write_catalog_metadata(data_dir, "scene_parse150", {"train": 2, "test": 1})
    rng = np.random.default_rng(3)
    annotations = [rng.integers(0, 152, (6, 9, 3), dtype=np.uint8) for _ in range(2)]
    examples = [
        {"image": np.full((6, 9, 3), 20 * i + 10, np.uint8), "annotation": a}
        for i, a in enumerate(annotations)
    ]
    with _mock_catalog(data_dir, examples):
        assert builders.split_sizes(spec, data_dir) == {"train": 2, "test": 1}
        decoded = _labels_by_example(spec, data_dir, "train")
    for i, label in decoded.items():
        np.testing.assert_array_equal(label, np_shift_by_one(annotations[i][..., 0], 150))


def test_cityscapes_tfds_mock_maps_label_ids_to_train_ids(tmp_path):
    spec, data_dir = get_dataset_spec("cityscapes_tfds"), str(tmp_path)
    _write_catalog_metadata(
        data_dir, "cityscapes/semantic_segmentation", {"train": 1, "validation": 1, "test": 1}
    )
    label = np.tile(np.arange(34, dtype=np.uint8), (1024, 61))[:, :2048, None]
    example = {
        "image_id": "aachen_000000_000019",
        "image_left": np.zeros((1024, 2048, 3), np.uint8),
        "segmentation_label": label,
    }
    with _mock_catalog(data_dir, [example]):
        ds = pipeline.load_split(spec, data_dir, "validation", shuffle_files=False, seed=None)
        (decoded,) = [ex["label"] for ex in ds.as_numpy_iterator()]
    np.testing.assert_array_equal(decoded, np_cityscapes(label[..., 0]))


def test_ade20k_samples_decode_through_scene_parse150(shared_dir, tmp_path):
    folder = shared_dir / "data" / "ade20k_samples"
    if not folder.is_dir():
        pytest.skip(f"ADE20K samples not available at {folder}")
    stems = sorted(p.stem for p in (folder / "labels").glob("*.png"))
    assert len(stems) == 3
    raws = [np.asarray(Image.open(folder / "labels" / f"{s}.png")) for s in stems]
    examples = [
        {  # the label replicated over RGB, as tfds decodes the instance PNGs
            "image": np.asarray(Image.open(folder / "images" / f"{s}.jpg").convert("RGB")),
            "annotation": np.repeat(raw[..., None], 3, axis=-1),
        }
        for s, raw in zip(stems, raws, strict=True)
    ]
    spec, data_dir = get_dataset_spec("scene_parse150"), str(tmp_path)
    _write_catalog_metadata(data_dir, "scene_parse150", {"train": 3, "test": 3})
    with _mock_catalog(data_dir, examples):
        ds = pipeline.load_split(spec, data_dir, "test", shuffle_files=False, seed=None)
        decoded = [ex["label"] for ex in ds.as_numpy_iterator()]
    assert len(decoded) == 3
    for raw, label in zip(raws, decoded, strict=True):
        np.testing.assert_array_equal(label, np_shift_by_one(raw, 150))
        assert (label == IGNORE_LABEL).any() and label.max() <= 149


# ---------------------------------------------------------------------------------------------
# The prepare CLI.


def _run_prepare(*args) -> int:
    flags.FLAGS(["prepare", *args])
    try:
        return prepare.main([])
    finally:
        flags.FLAGS.unparse_flags()


def test_prepare_cli_explains_tfds_build_for_catalog_datasets(tmp_path, capsys):
    assert _run_prepare("--dataset=cityscapes_tfds", f"--data_dir={tmp_path}") == 1
    err = capsys.readouterr().err
    assert f"tfds build cityscapes/semantic_segmentation --data_dir={tmp_path}" in err
    assert "--manual_dir=" in err and "gtFine_trainvaltest.zip" in err


def test_prepare_cli_builds_folder_dataset_with_ignore_option(tmp_path, capsys):
    _folder_tree(tmp_path / "src", {"train": {"a": _ids(0, 1)}, "val": {"b": _ids(2, 200)}})
    path = tmp_path / "abc.json"
    path.write_text(json.dumps({"name": "abc_cli", "classes": ["a", "b", "c"]}))
    args = (f"--dataset_file={path}", f"--data_dir={tmp_path / 't'}", f"--root={tmp_path / 'src'}")
    assert _run_prepare(*args) == 1
    assert "val/b.png (200)" in capsys.readouterr().err
    assert _run_prepare(*args, "--unknown_label_ids=ignore") == 0
    assert "train: 1 examples" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# CamVid (real data in ../shared/data), built once for this module.

# ../shared/data/README.md: train pixel fractions per class, and void (ignore).
CAMVID_TRAIN_FRACTIONS = (
    0.169, 0.233, 0.010, 0.317, 0.045, 0.097, 0.012, 0.011, 0.059, 0.006, 0.003,
)  # fmt: skip
CAMVID_VOID_FRACTION = 0.040


@pytest.fixture(scope="module")
def camvid_dir(shared_dir, tmp_path_factory):
    root = shared_dir / "data" / "camvid"
    if not root.is_dir():
        pytest.skip(f"CamVid not available at {root}")
    data_dir = str(tmp_path_factory.mktemp("tfds_camvid"))
    builders.prepare_dataset(get_dataset_spec("camvid"), data_dir, root=str(root))
    return data_dir


def test_camvid_builds_with_reference_split_sizes(camvid_dir):
    spec = get_dataset_spec("camvid")
    assert builders.split_sizes(spec, camvid_dir) == {"train": 367, "val": 101, "test": 233}
    ds = pipeline.load_split(spec, camvid_dir, "val", shuffle_files=False, seed=None)
    example = next(ds.as_numpy_iterator())
    assert example["image"].shape == (360, 480, 3) and example["label"].shape == (360, 480)


def test_camvid_train_class_histogram_matches_the_data_readme(camvid_dir):
    spec = get_dataset_spec("camvid")
    ds = pipeline.load_split(spec, camvid_dir, "train", shuffle_files=False, seed=None)
    counts = np.zeros(12, np.int64)  # 11 classes + ignore (last)
    for ex in ds.as_numpy_iterator():
        counts += np.bincount(np.where(ex["label"] < 0, 11, ex["label"]).ravel(), minlength=12)
    fractions = counts / counts.sum()
    expected = np.array([*CAMVID_TRAIN_FRACTIONS, CAMVID_VOID_FRACTION])
    np.testing.assert_allclose(fractions, expected, atol=0.001)  # README rounds to 3 decimals


def test_camvid_dataset_stats_match_the_data_readme(camvid_dir):
    from msc_seg.data import stats as stats_lib

    spec = get_dataset_spec("camvid")
    stats = stats_lib.compute_stats(spec, camvid_dir)
    train = stats.splits["train"]
    of_all_pixels = np.asarray(train.class_pixels) / train.total_pixels
    np.testing.assert_allclose(of_all_pixels, CAMVID_TRAIN_FRACTIONS, atol=0.001)
    assert train.ignore_share == pytest.approx(CAMVID_VOID_FRACTION, abs=0.001)
    assert {s.max_image_shape for s in stats.splits.values()} == {(360, 480)}
    assert [s.num_images for s in stats.splits.values()] == [233, 367, 101]  # test, train, val
    assert stats_lib.unknown_raw_ids(spec, stats) == {}
