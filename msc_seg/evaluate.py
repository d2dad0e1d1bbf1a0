"""The evaluation loop (confusion matrix on device, mmseg-style table) and the eval-only mode."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msc_seg import inference, metrics, reporting
from msc_seg import mesh as mesh_lib
from msc_seg.train_state import ModelDef, TrainState

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def make_eval_step(
    model_def: ModelDef, num_classes: int, *, resize_to_labels: bool
) -> Callable[[TrainState, dict], tuple[jax.Array, jax.Array]]:
    """(state, batch) -> (confusion matrix int32 [K,K], prediction int32 [B,Hl,Wl]).

    batch: 'image' [B,Hp,Wp,3], 'label' int32 [B,Hl,Wl] (-1 = ignore and padding), and with
    resize_to_labels also 'image_hw' / 'label_hw' int32 [B,2]. Whole-image inference; the
    projectors and the contrastive loss are not run.
    """

    def eval_step(state: TrainState, batch: dict):
        model = model_def.merge(state.params, state.rest)
        logits = model(batch["image"], train=False).logits
        if resize_to_labels:
            logits = inference.resize_logits_to_labels(
                logits, batch["image_hw"], batch["label"].shape[1:3], batch["label_hw"]
            )
        pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return metrics.confusion_matrix(pred, batch["label"], num_classes), pred

    return eval_step


def _denormalize(images: np.ndarray) -> np.ndarray:
    return np.clip((images * IMAGENET_STD + IMAGENET_MEAN) * 255.0, 0, 255).astype(np.uint8)


def run_evaluation(
    eval_step: Callable,
    state: TrainState,
    batches: Iterable[dict],
    mesh,
    *,
    num_images: int = 0,
    palette: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sums the confusion matrices of all batches -> (int64 [K,K], overlay images)."""
    per_batch = []  # device arrays, fetched at the end so the loop never waits on a batch
    images = {}
    keys = ("image", "label", "image_hw", "label_hw")
    for batch in batches:
        device_batch = mesh_lib.host_batch_to_global(
            {k: batch[k] for k in keys if k in batch}, mesh
        )
        cm, pred = eval_step(state, device_batch)
        per_batch.append(cm)
        if num_images and not images and palette is not None:
            n = min(num_images, len(batch["label"]))
            pred_np = np.asarray(jax.device_get(pred))[:n]
            label = np.asarray(batch["label"][:n])
            rgb = _denormalize(np.asarray(batch["image"][:n]))
            if rgb.shape[1:3] == label.shape[1:3]:
                pred_np = np.where(label >= 0, pred_np, -1)  # blank the padding
                images = {
                    "prediction": reporting.overlay(rgb, pred_np, palette),
                    "label": reporting.overlay(rgb, label, palette),
                }
    if not per_batch:
        raise ValueError("the evaluation split yielded no batch; check dataset.eval_split")
    # Summed in int64 on the host: a whole split's pixel counts can exceed int32.
    total = sum(np.asarray(cm, np.int64) for cm in jax.device_get(per_batch))
    return total, images


def report_evaluation(
    cm: np.ndarray,
    step: int,
    class_names,
    workdir: str | pathlib.Path,
    reporter: reporting.Reporter | None = None,
    images: dict | None = None,
) -> dict:
    """Prints the per-class table, writes eval_<step>.json and the TensorBoard scalars/images."""
    results = metrics.iou_results(cm)
    table = metrics.format_iou_table(results, class_names)
    if jax.process_index() == 0:
        print(f"Evaluation at step {step}:\n{table}", flush=True)
        path = pathlib.Path(workdir) / f"eval_{step}.json"
        path.write_text(metrics.results_to_json(results, class_names, step=int(step)))
    if reporter is not None:
        scalars = {f"eval/{k}": results[k] for k in ("aAcc", "mIoU", "mAcc")}
        for name, iou in zip(class_names, results["IoU"], strict=True):
            if np.isfinite(iou):
                scalars[f"eval_iou/{name}"] = iou
        reporter.write_scalars(step, scalars, progress=False)
        reporter.write_text(step, "eval/table", table)
        if images:
            reporter.write_images(step, {f"eval/{k}": v for k, v in images.items()})
    return results


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, checkpoint: str = "latest"
) -> dict:
    """Eval-only mode: restores a checkpoint of `workdir` ('latest', 'best' or a step number)."""
    from msc_seg import train  # the same set-up code as training

    run = train.setup_run(config, workdir, for_training=False)
    best = checkpoint == "best"
    step = None if checkpoint in ("latest", "best") else int(checkpoint)
    state, step = run.checkpointer.restore(run.abstract_state, step, best=best)
    try:
        return train.evaluate_state(run, state, int(step))
    finally:
        run.close()
