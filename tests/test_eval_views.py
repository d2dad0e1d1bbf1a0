"""TensorBoard views of a run: the embedding sample and its separability numbers, the confusion
matrix image, the config as hparams, the evaluation's pictures read back from the event files,
and `--mode=eval` under its own run and tags."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msc_seg import config_lib, embedding_views, experiment, reporting, visualize
from msc_seg.errors import ConfigError
from msc_seg.losses.sampling import downsample_labels

# ---------------------------------------------------------------------------------------------
# Numbers, against hand restatements.


def separability_by_pairs(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The definition spelt out: cosine of every pair, averaged per class (pair of classes),
    then over classes (pairs of classes)."""
    unit = [e / np.linalg.norm(e) for e in emb]
    classes = sorted(set(labels.tolist()))
    intra = []
    for c in classes:
        rows = [i for i in range(len(labels)) if labels[i] == c]
        pairs = [float(unit[i] @ unit[j]) for i in rows for j in rows if i != j]
        if pairs:
            intra.append(sum(pairs) / len(pairs))
    inter = []
    for a, b in itertools.combinations(classes, 2):
        ra = [i for i in range(len(labels)) if labels[i] == a]
        rb = [i for i in range(len(labels)) if labels[i] == b]
        cross = [float(unit[i] @ unit[j]) for i in ra for j in rb]
        inter.append(sum(cross) / len(cross))
    intra_cos, inter_cos = sum(intra) / len(intra), sum(inter) / len(inter)
    return {"intra_cos": intra_cos, "inter_cos": inter_cos, "gap": intra_cos - inter_cos}


def test_separability_equals_the_pairwise_definition_on_a_small_set():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5))
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1, -1])  # -1 rows are ignored
    emb = centres[np.maximum(labels, 0)] + 0.4 * rng.normal(size=(len(labels), 5))
    emb = emb * rng.uniform(0.5, 3.0, size=(len(labels), 1))  # cosine ignores the length
    got = embedding_views.separability(emb, labels)
    want = separability_by_pairs(emb[labels >= 0], labels[labels >= 0])
    for key in ("intra_cos", "inter_cos", "gap"):
        assert got[key] == pytest.approx(want[key], abs=1e-12)
    assert got["gap"] > 0.3  # clustered classes are separable


def test_separability_of_orthogonal_classes_is_one_and_zero():
    emb = np.array([[1.0, 0], [2.0, 0], [0, 1.0], [0, 3.0]])
    got = embedding_views.separability(emb, np.array([0, 0, 1, 1]))
    assert got == {"intra_cos": pytest.approx(1.0), "inter_cos": pytest.approx(0.0), "gap": 1.0}
    single = embedding_views.separability(emb[:2], np.array([0, 0]))
    assert single["intra_cos"] == pytest.approx(1.0) and np.isnan(single["inter_cos"])


def test_pca_2d_puts_the_widest_direction_first():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4)) * np.array([0.1, 5.0, 1.0, 0.01])
    points = embedding_views.pca_2d(x)
    assert points.shape == (200, 2)
    spread = points.std(axis=0)
    assert spread[0] == pytest.approx(x[:, 1].std(), rel=0.05) and spread[1] < spread[0]
    assert np.allclose(points.mean(axis=0), 0, atol=1e-9)


def test_labels_on_grid_is_the_strided_label_without_resize():
    rng = np.random.default_rng(2)
    labels = rng.integers(-1, 5, size=(2, 16, 24)).astype(np.int32)
    hw = np.array([[16, 24], [12, 20]], np.int32)
    labels[1, 12:], labels[1, :, 20:] = -1, -1  # the padding of the smaller example
    got = embedding_views.labels_on_grid(jnp.asarray(labels), hw, hw, (4, 6))
    assert np.array_equal(np.asarray(got), np.asarray(downsample_labels(jnp.asarray(labels), 4)))


def test_labels_on_grid_maps_a_resized_image_onto_its_label_by_nearest():
    # Image resized from a 8x8 label to 16x16 on a 16x16 canvas; features of stride 4 (4x4).
    label = np.arange(64, dtype=np.int32).reshape(1, 8, 8)
    canvas_label = np.full((1, 16, 16), -1, np.int32)
    canvas_label[:, :8, :8] = label
    got = embedding_views.labels_on_grid(
        jnp.asarray(canvas_label), np.array([[16, 16]]), np.array([[8, 8]]), (4, 4)
    )
    # cell (y, x) -> image pixel (4y, 4x) -> label pixel (2y, 2x)
    assert np.array_equal(np.asarray(got)[0], label[0, ::2, ::2])


def test_sample_per_class_takes_distinct_pixels_of_each_class_up_to_capacity():
    labels = np.array([2] * 7 + [0] * 2 + [-1] * 5 + [1] * 40, np.int32)
    np.random.default_rng(3).shuffle(labels)
    index, label = jax.jit(
        lambda lab: embedding_views.sample_per_class(
            lab, jax.random.key(0), num_classes=4, per_class=5
        )
    )(jnp.asarray(labels))
    index, label = np.asarray(index), np.asarray(label)
    assert index.shape == label.shape == (20,)
    for k, expected in enumerate([2, 5, 5, 0]):  # min(count, 5) per class, slots k*5 ...
        slots = slice(5 * k, 5 * k + 5)
        taken = index[slots][label[slots] == k]
        assert len(taken) == expected and len(set(taken.tolist())) == expected
        assert np.all(labels[taken] == k)
        assert np.all(label[slots][expected:] == -1)


# ---------------------------------------------------------------------------------------------
# Pictures.


def test_confusion_matrix_rows_are_normalised_and_absent_classes_blank():
    cm = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    rates = visualize.normalise_rows(cm)
    assert np.allclose(rates[0], [0.8, 0.2, 0.0]) and np.allclose(rates[2], [0.25, 0.25, 0.5])
    assert np.all(np.isnan(rates[1]))
    image = visualize.confusion_matrix_image(cm, ["sky", "road", "car"])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 200 and image.std() > 10  # something is drawn


def test_hparams_flatten_every_field_to_a_scalar_or_text():
    hparams = reporting.hparams_of(config_lib.to_dict(config_lib.base_config()))
    assert hparams["loss.contrastive.weight"] == 0.0
    assert hparams["eval.data.pad_shape"] == "[512, 2048]"
    assert hparams["loss.class_weights"] == "[]"
    assert all(isinstance(v, bool | int | float | str) for v in hparams.values())


# ---------------------------------------------------------------------------------------------
# Event files.


def event_tags(logdir: pathlib.Path) -> dict[str, list]:
    """tag -> [(step, tensor proto)] of every event file under logdir (not recursive)."""
    import tensorflow as tf

    tags: dict[str, list] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value))
    return tags


def scalar(value) -> float:
    import tensorflow as tf

    return float(tf.make_ndarray(value.tensor))


def test_reporter_writes_the_config_as_hparams_and_text(tmp_path):
    reporter = reporting.Reporter(tmp_path, 10)
    reporter.write_config(0, config_lib.to_dict(config_lib.base_config()))
    reporter.close()
    tags = event_tags(tmp_path)
    assert "_hparams_/session_start_info" in tags
    text = tags["config"][0][1].tensor.string_val[0].decode()
    assert '"embedding_plots": true' in text and '"pad_shape": [' in text


def test_a_reporter_that_writes_nothing_leaves_no_files(tmp_path):
    # --mode=eval makes its reporter before restoring: a failed restore must leave no trace.
    reporting.Reporter(tmp_path / "eval" / "whole", 10, jsonl=False).close()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from msc_seg.data import builders, registry

    d = tmp_path_factory.mktemp("tfds")
    builders.prepare_dataset(registry.get_dataset_spec("demo"), str(d))
    return str(d)


def tiny_config(data_dir, **overrides):
    """test_train's micro UPerNet-Swin (contrastive on): the same eval program, compiled once
    per test session."""
    from test_train import micro_config

    return micro_config(data_dir, **{"eval.max_examples": 8, **overrides})


def random_state(abstract):
    """A state of the abstract state's shapes and shardings from numpy draws: no compile
    (BatchNorm variances positive, everything else N(0, 0.3))."""
    rng = np.random.default_rng(0)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        if np.issubdtype(s.dtype, np.integer):
            value = np.zeros(s.shape, s.dtype)
        elif "var" in name:
            value = rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
        else:
            value = (0.3 * rng.normal(size=s.shape)).astype(s.dtype)
        return jax.device_put(value, s.sharding)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def test_an_evaluation_of_a_contrastive_run_writes_its_views_to_tensorboard(data_dir, tmp_path):
    config = tiny_config(data_dir)
    exp = experiment.build(config, tmp_path, mode="train")
    try:
        state = random_state(exp.parts.abstract_state)
        exp.evaluate(state, 3)
        exp.reporter.flush()
        tags = event_tags(tmp_path)
        assert [s for s, _ in tags["eval/confusion_matrix"]] == [3]
        for s in range(4):  # UPerNet projects 4 scales
            assert f"eval_embedding/s{s}" in tags
            intra = scalar(tags[f"eval_embedding/s{s}/intra_cos"][0][1])
            inter = scalar(tags[f"eval_embedding/s{s}/inter_cos"][0][1])
            gap = scalar(tags[f"eval_embedding/s{s}/gap"][0][1])
            assert -1 <= intra <= 1 and -1 <= inter <= 1  # cosines
            assert gap == pytest.approx(intra - inter, abs=1e-6)
        image = tags["eval_embedding/s0"][0][1].tensor.string_val
        assert image[2][:4] == b"\x89PNG"  # [width, height, png bytes]

        # --mode=eval's reporter (experiment.build, mode="eval"): its own TensorBoard run
        # (WORKDIR/eval/whole) and tags, no metrics.jsonl; training's events stay as they were.
        before = {p: p.stat().st_size for p in tmp_path.glob("events.out.tfevents.*")}
        run = experiment.protocol_name(config)
        eval_reporter = experiment._eval_mode_reporter(tmp_path / "eval" / run, config)
        as_eval_mode = dataclasses.replace(exp, reporter=eval_reporter, eval_tag=f"eval_{run}")
        as_eval_mode.evaluate(state, 3)
        eval_reporter.close()
    finally:
        exp.close()
    assert {p: p.stat().st_size for p in tmp_path.glob("events.out.tfevents.*")} == before
    eval_tags = event_tags(tmp_path / "eval" / "whole")
    assert [s for s, _ in eval_tags["eval_whole/mIoU"]] == [3]
    assert "eval_whole/confusion_matrix" in eval_tags and "eval_whole_embedding/s0" in eval_tags
    assert not (tmp_path / "eval" / "whole" / "metrics.jsonl").exists()


def test_embedding_views_are_off_without_projectors_or_when_disabled(data_dir):
    for overrides in ({"loss.contrastive.weight": 0.0}, {"eval.embedding_plots": False}):
        config = tiny_config(data_dir, **overrides)
        objective = experiment.build_objective(config, 8)
        assert experiment.embedding_projection(config, objective) is None


def test_an_unknown_embedding_projection_is_refused_naming_the_field(data_dir):
    config = tiny_config(data_dir, **{"eval.embedding_projection": "umap"})
    with pytest.raises(ConfigError, match="eval.embedding_projection.*'pca', 'tsne'"):
        experiment.validate(config, experiment.runtime_facts(), check_model=False)
    if not embedding_views.tsne_available():
        config = tiny_config(data_dir, **{"eval.embedding_projection": "tsne"})
        with pytest.raises(ConfigError, match="needs scikit-learn"):
            experiment.validate(config, experiment.runtime_facts(), check_model=False)


def test_protocol_names_say_mode_scales_and_flip(data_dir):
    assert experiment.protocol_name(tiny_config(data_dir)) == "whole"
    slide = tiny_config(
        data_dir,
        **{
            "eval.protocol.mode": "slide",
            "eval.protocol.window": (64, 64),
            "eval.protocol.scales": (0.5, 1.0),
            "eval.protocol.flip": True,
        },
    )
    assert experiment.protocol_name(slide) == "slide_ms_flip"
