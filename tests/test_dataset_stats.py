"""dataset_stats.json (data/stats.py), the prepare summary, class-weight schemes and the start-up
checks against the prepared data, on tiny synthetic folder datasets (ids labels, 255 = ignore)."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from test_datasets import _run_prepare

from msc_seg import config_lib, experiment
from msc_seg.data import stats as stats_lib
from msc_seg.data import user_datasets
from msc_seg.data.registry import DatasetSpec
from msc_seg.losses.class_weights import class_weights

CLASSES = ["bg", "road", "car", "boat", "plane"]  # boat and plane never occur; car not in val
IGNORE = 255


def _labels(seed: int, ids, shape) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.asarray(ids, np.uint8), size=shape)


# split -> {name: label}: sizes differ per image so the largest image is a max over both axes.
LABELS = {
    "train": {
        "t0": _labels(0, [0, 1, 2, IGNORE], (40, 24)),
        "t1": _labels(1, [0, 1], (16, 72)),
        "t2": _labels(2, [0, 2, IGNORE], (24, 24)),
    },
    "val": {"v0": _labels(3, [0, 1, IGNORE], (40, 64)), "v1": _labels(4, [1], (8, 8))},
}


def _write_tree(root, labels):
    for split, by_name in labels.items():
        for name, label in by_name.items():
            for folder, array in (
                ("images", np.zeros((*label.shape, 3), np.uint8)),
                ("labels", label),
            ):
                path = root / folder / split / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(dataset file, data_dir, stdout of `prepare --stats`) of the dataset above."""
    tmp = tmp_path_factory.mktemp("stats")
    _write_tree(tmp / "src", LABELS)
    path = tmp / "vehicles.json"
    path.write_text(
        json.dumps(
            {
                "name": "stats_vehicles",
                "classes": CLASSES,
                "ignore_ids": [IGNORE],
                "eval_split": "val",
                "class_groups": {"vehicles": ["car", "boat", "plane"], "no_bg": [1, 2, 3, 4]},
            }
        )
    )
    data_dir = tmp / "tfds"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = _run_prepare(
            f"--dataset_file={path}", f"--data_dir={data_dir}", f"--root={tmp / 'src'}", "--stats"
        )
    assert rc == 0, out.getvalue()
    return path, str(data_dir), out.getvalue()


def _spec(prepared):
    return user_datasets.register_dataset_file(prepared[0])


def test_prepare_summary_lists_zero_pixel_classes_and_classes_absent_from_eval(prepared):
    out = prepared[2]
    assert "classes with 0 pixels (all splits): 2 (3 boat, 4 plane)" in out
    assert "classes absent from the eval split 'val': 3 (2 car, 3 boat, 4 plane)" in out
    assert "train: 3 examples" in out and "val: 2 examples" in out
    assert "dataset_stats.json" in out and " px%" in out  # --stats adds the per-class table


def test_stats_file_counts_equal_numpy_bincounts_of_the_labels(prepared):
    spec, data_dir = _spec(prepared), prepared[1]
    path = stats_lib.stats_path(spec, data_dir)
    assert path.name == "dataset_stats.json" and path.parent.name == "1.0.0"
    entry = json.loads(path.read_text())["datasets"]["stats_vehicles"]
    k = len(CLASSES)
    for split, by_name in LABELS.items():
        s = entry["splits"][split]
        hists = [np.bincount(lab.ravel(), minlength=256) for lab in by_name.values()]
        assert s["class_pixels"] == np.sum(hists, axis=0)[:k].tolist()
        assert s["class_images"] == np.sum([h[:k] > 0 for h in hists], axis=0).tolist()
        image_pixels = np.sum([(h[:k] > 0) * h[:k].sum() for h in hists], axis=0)
        assert s["class_image_pixels"] == image_pixels.tolist()
        assert s["ignore_pixels"] == int(sum(h[IGNORE] for h in hists))
        assert s["total_pixels"] == int(sum(lab.size for lab in by_name.values()))
        shapes = np.array([lab.shape for lab in by_name.values()])
        assert s["max_image_shape"] == shapes.max(axis=0).tolist()
        assert s["raw_ids_seen"] == np.flatnonzero(np.sum(hists, axis=0)).tolist()
        assert s["num_images"] == len(by_name)
    assert entry["splits"]["train"]["max_image_shape"] == [40, 72]


def test_class_groups_of_the_dataset_file_become_class_ids(prepared, tmp_path):
    assert _spec(prepared).class_groups == (("vehicles", (2, 3, 4)), ("no_bg", (1, 2, 3, 4)))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "g", "classes": ["a"], "class_groups": {"x": ["b"]}}))
    with pytest.raises(ValueError, match=r"bad\.json: .*group 'x' names 'b'"):
        user_datasets.register_dataset_file(bad)


# ---------------------------------------------------------------------------------------------
# Class weights.


def _numpy_weights(scheme, n, m):
    """The papers' formulas, restated: classes with 0 pixels get 0."""
    n, m = np.asarray(n, float), np.asarray(m, float)
    present = n > 0
    p = n / n.sum()
    if scheme == "inverse_freq":  # sklearn "balanced": N / (K' n_c)
        w = n.sum() / (present.sum() * np.where(present, n, 1))
    elif scheme == "median_freq":  # Eigen & Fergus: median(f) / f_c, f_c = n_c / m_c
        f = np.where(present, n / np.where(present, m, 1), np.nan)
        w = np.nanmedian(f) / f
    else:  # ENet: 1 / ln(1.02 + p_c)
        w = 1 / np.log(1.02 + p)
    return np.where(present, w, 0.0)


def test_class_weight_schemes_match_their_formulas():
    n = np.array([900, 50, 0, 40, 10])
    m = np.array([1000, 400, 0, 300, 1000])
    for scheme in ("inverse_freq", "median_freq", "enet"):
        np.testing.assert_allclose(class_weights(scheme, n, m), _numpy_weights(scheme, n, m))
    # Spot values: median of f = (0.9, 0.125, 0.133, 0.01) is 0.129...; ENet's bound.
    assert class_weights("median_freq", n, m)[1] == pytest.approx((0.125 + 0.4 / 3) / 2 / 0.125)
    assert class_weights("enet", [1, 0], [1, 0])[0] == pytest.approx(1 / np.log(2.02))


def _config(prepared, **eval_data):
    c = config_lib.base_config()
    c.dataset.spec_file, c.dataset.name = str(prepared[0]), "stats_vehicles"
    c.dataset.data_dir = prepared[1]
    c.dataset.train.crop_size = (32, 32)
    c.eval.data.pad_shape = (64, 96)
    for k, v in eval_data.items():
        c.eval.data[k] = v
    return c


def test_config_class_weight_scheme_is_computed_from_the_train_split(prepared, capsys):
    config = _config(prepared)
    config.loss.class_weights = "median_freq"
    weights = experiment.class_weights(config, len(CLASSES))
    hists = [np.bincount(lab.ravel(), minlength=256)[:5] for lab in LABELS["train"].values()]
    m = np.sum([(h > 0) * h.sum() for h in hists], axis=0)
    np.testing.assert_allclose(weights, _numpy_weights("median_freq", np.sum(hists, 0), m))
    assert "2 classes have 0 pixels in split 'train' and get weight 0: boat, plane" in (
        capsys.readouterr().out
    )
    assert experiment.class_weights(config, len(CLASSES), for_training=False) == ()
    config.loss.class_weights = "median_frequency"
    with pytest.raises(config_lib.ConfigError, match="unknown scheme; use one of inverse_freq"):
        experiment.validate(config, config_lib.RuntimeFacts(8), check_model=False)


def test_class_weight_scheme_without_stats_file_says_to_run_prepare_stats(prepared, tmp_path):
    config = _config(prepared)
    config.dataset.data_dir = str(tmp_path)  # nothing prepared there
    config.loss.class_weights = "enet"
    with pytest.raises(config_lib.ConfigError) as info:
        experiment.class_weights(config, len(CLASSES))
    message = str(info.value)
    assert "\n" not in message and "loss.class_weights" in message
    assert "dataset_stats.json, which does not exist" in message
    assert f"msc_seg.data.prepare --dataset=stats_vehicles --data_dir={tmp_path} --stats" in message


# ---------------------------------------------------------------------------------------------
# Start-up checks against the prepared data: before the workdir is touched.


def test_eval_canvas_smaller_than_the_images_is_refused_at_start(prepared, tmp_path):
    workdir = tmp_path / "run"
    config = _config(prepared, pad_shape=(32, 64))  # val images are up to 40x64
    with pytest.raises(config_lib.ConfigError) as info:
        experiment.build(config, workdir, mode="train")
    message = str(info.value)
    assert "`eval.data.pad_shape` = (32, 64)" in message
    assert "(40x64, the largest eval image in dataset_stats.json)" in message
    assert "use at least (64, 64)" in message
    assert not workdir.exists()


def test_missing_eval_split_is_refused_at_start_listing_the_splits(prepared, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(
        config_lib.ConfigError, match=r"`eval.data.split` = 'test'.*splits: train, val"
    ):
        experiment.build(_config(prepared, split="test"), workdir, mode="train")
    assert not workdir.exists()


def test_unknown_image_size_is_said_in_one_line_not_skipped(prepared, capsys):
    spec = _spec(prepared)
    config = _config(prepared)
    notes = config_lib.check_against_dataset(config, spec, {"train": (40, 72), "eval": None})
    assert len(notes) == 1 and "`eval.data.pad_shape` not checked" in notes[0]
    assert "size is unknown" in notes[0] and "--stats" in notes[0]


def test_label_ids_beyond_the_class_list_are_refused_naming_file_and_field(prepared, tmp_path):
    # The same build read with a class list three names short: raw id 2 (car) is not a class.
    spec = _spec(prepared)
    short = DatasetSpec(
        name="stats_vehicles_short", tfds_name=spec.tfds_name, class_names=("bg", "road"),
        palette=[[0, 0, 0]] * 2, ignore_ids=(IGNORE,), eval_split="val", spec_file="short.json",
    )  # fmt: skip
    _write_tree(tmp_path / "src", {"train": {"a": np.array([[0, 1], [2, 3]], np.uint8)}})
    path = tmp_path / "short.json"
    path.write_text(json.dumps({"name": "stats_short", "classes": ["bg", "road", "car"]}))
    args = (f"--dataset_file={path}", f"--data_dir={tmp_path / 't'}", f"--root={tmp_path / 'src'}")
    assert _run_prepare(*args) == 1  # the build itself refuses the unknown id 3
    assert _run_prepare(*args, "--unknown_label_ids=ignore") == 0  # warned, accepted
    stats = stats_lib.load_stats(short, prepared[1])
    assert stats is not None and not stats.fresh
    message = stats_lib.unknown_ids_message(short, stats_lib.unknown_raw_ids(short, stats))
    assert "hold raw ids 2 (largest 2)" in message
    assert '"classes" lists 2 names, for raw ids 0..1' in message
    assert "dataset file short.json" in message
    config = _config(prepared)
    with pytest.raises(config_lib.ConfigError, match=r"raw ids 2.*dataset file short\.json"):
        experiment.check_prepared_dataset(config, short, prepared[1])
