"""Confusion matrices and mmseg-style IoU tables.

Formulas (mmsegmentation `total_area_to_metrics`): IoU_c = TP / (TP + FP + FN),
Acc_c = TP / (TP + FN),
aAcc = sum TP / sum labelled pixels. A class absent from both label and prediction has IoU 0/0 = NaN
and is left out of mIoU; a class absent from the labels has Acc NaN and is left out of mAcc.
(The reference counts such classes as 0; we follow mmseg, docs/METHOD.md §12.)
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from msc_seg.data.conventions import IGNORE_LABEL as IGNORE_LABEL  # re-exported


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int) -> jax.Array:
    """int32 [K,K] counts, rows = label, columns = prediction; label -1 (or out of range) ignored.

    pred, label: int [...] of the same shape. Fixed-shape (a bincount of fixed length), jit-safe.
    """
    pred = pred.reshape(-1).astype(jnp.int32)
    label = label.reshape(-1).astype(jnp.int32)
    valid = (label >= 0) & (label < num_classes) & (pred >= 0) & (pred < num_classes)
    index = jnp.where(valid, label * num_classes + pred, 0)
    counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes * num_classes)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def iou_results(cm: np.ndarray) -> dict:
    """aAcc, mIoU, mAcc and per-class IoU / Acc (NaN where undefined) from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    label_area = cm.sum(axis=1)
    pred_area = cm.sum(axis=0)
    union = label_area + pred_area - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(label_area > 0, tp / label_area, np.nan)
    total = label_area.sum()
    return {
        "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mAcc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "IoU": iou,
        "Acc": acc,
    }


def group_mious(results: dict, class_groups) -> dict[str, float]:
    """mIoU over each named group of class ids (CaDIS: anatomies / instruments / others / rare).

    class_groups: (name, class ids) pairs. Classes absent from the evaluated set (NaN IoU) are
    skipped as in mIoU; a group with no present class is NaN.
    """
    out = {}
    for name, ids in class_groups:
        iou = np.asarray(results["IoU"], np.float64)[list(ids)]
        out[name] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return out


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{100 * v:.2f}"


def format_iou_table(results: dict, class_names) -> str:
    """The mmseg-style per-class table (percentages, two decimals) followed by the summary."""
    names = list(class_names)
    width = max([5] + [len(n) for n in names])
    line = f"+-{'-' * width}-+--------+--------+"
    rows = [line, f"| {'Class':<{width}} |  IoU   |  Acc   |", line]
    for n, i, a in zip(names, results["IoU"], results["Acc"], strict=True):
        rows.append(f"| {n:<{width}} | {_fmt(i):>6} | {_fmt(a):>6} |")
    rows.append(line)
    summary = (
        "+--------+--------+--------+\n|  aAcc  |  mIoU  |  mAcc  |\n+--------+--------+--------+\n"
    )
    summary += (
        f"| {_fmt(results['aAcc']):>6} | {_fmt(results['mIoU']):>6} "
        f"| {_fmt(results['mAcc']):>6} |\n"
        "+--------+--------+--------+"
    )
    return "\n".join(rows) + "\n" + summary


def results_to_json(results: dict, class_names, **extra) -> str:
    """Results as JSON: summary numbers plus a per-class list (NaN written as null)."""

    def num(v):
        v = float(v)
        return None if not np.isfinite(v) else v

    out = {k: num(results[k]) for k in ("aAcc", "mIoU", "mAcc")}
    out["per_class"] = [
        {"class": n, "IoU": num(i), "Acc": num(a)}
        for n, i, a in zip(class_names, results["IoU"], results["Acc"], strict=True)
    ]
    out.update(extra)
    return json.dumps(out, indent=2)
