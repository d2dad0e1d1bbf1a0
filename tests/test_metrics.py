"""Confusion matrices and IoU tables against hand-computed values."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msc_seg import metrics


def test_confusion_matrix_counts_label_rows_and_prediction_columns_ignoring_minus_one():
    label = jnp.array([[0, 0, 1, 2, -1, 2]])
    pred = jnp.array([[0, 1, 1, 0, 2, 2]])
    cm = np.asarray(metrics.confusion_matrix(pred, label, 3))
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(cm, expected)


def test_confusion_matrix_is_jittable_with_one_compile_per_shape():
    f = jax.jit(metrics.confusion_matrix, static_argnums=2)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        lab = rng.integers(-1, 4, (2, 5, 5))
        pr = rng.integers(0, 4, (2, 5, 5))
        cm = np.asarray(f(pr, lab, 4))
        ref = np.zeros((4, 4), np.int64)
        for a, b in zip(lab.ravel(), pr.ravel(), strict=True):
            if a >= 0:
                ref[a, b] += 1
        np.testing.assert_array_equal(cm, ref)
    assert f._cache_size() == 1


def test_iou_results_match_hand_computation_and_skip_absent_classes():
    cm = np.array(
        [
            [3, 0, 0, 1],  # class 0: TP 3, FN 1, FP 2 (col 0) -> IoU 3/6, Acc 3/4
            [2, 2, 0, 0],  # class 1: TP 2, FN 2, FP 0 -> IoU 2/4, Acc 2/4
            [0, 0, 0, 0],  # class 2: never labelled nor predicted -> NaN, left out of the means
            [0, 0, 0, 0],  # class 3: never labelled, predicted once -> IoU 0 (counts), Acc NaN
        ]
    )
    r = metrics.iou_results(cm)
    np.testing.assert_allclose(r["IoU"][:2], [3 / 6, 2 / 4])
    assert np.isnan(r["IoU"][2])
    assert r["IoU"][3] == 0.0
    np.testing.assert_allclose(r["Acc"][:2], [3 / 4, 2 / 4])
    assert np.isnan(r["Acc"][2]) and np.isnan(r["Acc"][3])
    assert r["mIoU"] == pytest.approx((3 / 6 + 2 / 4 + 0.0) / 3)
    assert r["mAcc"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert r["aAcc"] == pytest.approx(5 / 8)


def test_iou_table_prints_every_class_and_the_summary_in_percent():
    cm = np.array([[8, 2], [0, 10]])
    r = metrics.iou_results(cm)
    table = metrics.format_iou_table(r, ["road", "sky"])
    assert "| road  |  80.00 |  80.00 |" in table
    assert "| sky   |  83.33 | 100.00 |" in table
    assert "|  90.00 |  81.67 |  90.00 |" in table


def test_results_json_writes_nan_as_null():
    cm = np.array([[1, 0], [0, 0]])
    out = json.loads(metrics.results_to_json(metrics.iou_results(cm), ["a", "b"], step=3))
    assert out["per_class"][1]["IoU"] is None
    assert out["mIoU"] == 1.0 and out["step"] == 3


def test_group_mious_average_the_present_classes_of_each_group():
    iou = np.array([0.5, np.nan, 0.25, 1.0, 0.0])
    results = {"IoU": iou}
    groups = (("anatomies", (0, 2)), ("others", (1, 3, 4)), ("absent", (1,)))
    out = metrics.group_mious(results, groups)
    assert out["anatomies"] == pytest.approx(0.375)
    assert out["others"] == pytest.approx(0.5)  # class 1 absent: mean of 1.0 and 0.0
    assert np.isnan(out["absent"])


def test_evaluation_report_writes_group_mious_for_datasets_with_categories(tmp_path):
    from msc_seg import evaluate

    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    results = evaluate.report_evaluation(
        cm, 7, ["a", "b", "c"], tmp_path, class_groups=(("ab", (0, 1)), ("c", (2,)))
    )
    written = json.loads((tmp_path / "eval_7.json").read_text())
    expected = np.mean([3 / 4, 2 / 3])
    assert written["group_mIoU"]["ab"] == pytest.approx(expected)
    assert written["group_mIoU"]["c"] is None
    assert results["group_mIoU"]["ab"] == pytest.approx(expected)
