"""The evaluation loop: eval step (confusion matrix on device), loop over batches, mmseg-style
table and files. Receives built objects (model definition, protocol, batches); reads no config."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from msc_seg import inference, metrics, reporting
from msc_seg import mesh as mesh_lib
from msc_seg.data import conventions
from msc_seg.data.conventions import PAD_VALUE
from msc_seg.train_state import ModelDef, TrainState


def predict_scores(
    model_def: ModelDef,
    state: TrainState,
    images: jax.Array,
    image_hw: jax.Array | None,
    protocol: inference.Protocol,
    *,
    out_shape: tuple[int, int] | None = None,
    out_hw: jax.Array | None = None,
) -> jax.Array:
    """float32 [B,*out_shape,K] scores of the protocol (averaged logits or probabilities).

    images [B,H,W,3] normalised, valid in image_hw int32 [B,2] (None = the whole canvas), padded
    with PAD_VALUE. out_shape / out_hw: the grid to predict on (e.g. the original labels); None =
    the input grid. Jit-able; the projectors and the contrastive loss are not run.
    """
    if image_hw is None:
        image_hw = jnp.broadcast_to(jnp.asarray(images.shape[1:3], jnp.int32), (len(images), 2))

    def apply(x):
        # Merged at every call: inside the window scan this builds the model in the scan's trace.
        model = model_def.apply(state)
        return model(x, train=False).logits

    return inference.infer_logits(
        apply, images, image_hw, protocol, pad_value=PAD_VALUE, out_shape=out_shape, out_hw=out_hw
    )


def make_eval_step(
    model_def: ModelDef,
    num_classes: int,
    *,
    resize_to_labels: bool,
    protocol: inference.Protocol | None = None,
) -> Callable[[TrainState, dict], tuple[jax.Array, jax.Array]]:
    """(state, batch) -> (confusion matrix int32 [K,K], prediction int32 [B,Hl,Wl]).

    batch: 'image' [B,Hp,Wp,3], 'label' int32 [B,Hl,Wl] (-1 = ignore and padding), 'image_hw' /
    'label_hw' int32 [B,2] (required with resize_to_labels, a sliding window or test-time
    augmentation). `protocol` (default: whole image, scale 1, no flip) says how logits are made;
    with resize_to_labels they are resized from each image's valid region onto its label's.
    """
    protocol = protocol or inference.Protocol()

    def eval_step(state: TrainState, batch: dict):
        labels = batch["label"]
        scores = predict_scores(
            model_def,
            state,
            batch["image"],
            batch.get("image_hw"),
            protocol,
            out_shape=labels.shape[1:3] if resize_to_labels else None,
            out_hw=batch["label_hw"] if resize_to_labels else None,
        )
        pred = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        return metrics.confusion_matrix(pred, labels, num_classes), pred

    return eval_step


def _denormalize(images: np.ndarray) -> np.ndarray:
    return conventions.denormalize(images)


def _images_on_label_grid(batch: dict, n: int) -> np.ndarray:
    """uint8 [n,Hl,Wl,3]: the first n images, resized from their valid size to the label's."""
    rgb = _denormalize(np.asarray(batch["image"][:n]))
    label_shape = np.asarray(batch["label"]).shape[1:3]
    if "image_hw" not in batch:
        return rgb[:, : label_shape[0], : label_shape[1]]
    out = np.zeros((n, *label_shape, 3), np.uint8)
    for i in range(n):
        (h, w), (lh, lw) = batch["image_hw"][i], batch["label_hw"][i]
        if min(h, w, lh, lw) <= 0:
            continue
        image = rgb[i, :h, :w]
        if (h, w) != (lh, lw):
            image = np.asarray(Image.fromarray(image).resize((int(lw), int(lh)), Image.BILINEAR))
        out[i, :lh, :lw] = image
    return out


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (global) array on this host: directly when this process holds it
    all (one process, or replicated), else by an all-gather every process takes part in."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in batch order (no communication)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    shards = {s.index[0].start or 0: s for s in x.addressable_shards}  # replicas share a start
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


def _first_rows(local: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first n rows of the *global* batch from every process's local rows.

    Global row order is process 0's rows, then process 1's, ...; each process sends its first
    min(n, local size) rows (one small all-gather, every process takes part) and all keep the
    first n of the concatenation. One process: a plain slice.
    """
    if jax.process_count() == 1:
        return {k: v[:n] for k, v in local.items()}
    from jax.experimental import multihost_utils

    m = min(n, len(next(iter(local.values()))))
    gathered = multihost_utils.process_allgather({k: v[:m] for k, v in local.items()})
    return {k: np.asarray(v).reshape(-1, *v.shape[2:])[:n] for k, v in gathered.items()}


def run_evaluation(
    eval_step: Callable,
    state: TrainState,
    batches: Iterable[dict],
    mesh,
    *,
    num_images: int = 0,
    palette: np.ndarray | None = None,
    progress: reporting.PeriodicProgress | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sums the confusion matrices of all batches -> (int64 [K,K], overlay images).

    progress: told the batch sizes as they go (a line every ~10 s with the rate and ETA).
    Multi-host: every process runs the same number of batches (its own rows of each global
    batch); the confusion matrices are global (reduced over all hosts by the eval step), and
    the overlay images are the first `num_images` rows of the first global batch, gathered on
    every process (only process 0's reporter writes them).
    """
    per_batch = []  # device arrays, fetched at the end so the loop never waits on a batch
    images = {}
    keys = ("image", "label", "image_hw", "label_hw")
    for batch in batches:
        device_batch = mesh_lib.host_batch_to_global(
            {k: batch[k] for k in keys if k in batch}, mesh
        )
        if progress is not None and not per_batch:  # the first call compiles: say so meanwhile
            with progress.compiling():
                cm, pred = jax.block_until_ready(eval_step(state, device_batch))
        else:
            cm, pred = eval_step(state, device_batch)
        per_batch.append(cm)
        if progress is not None:
            progress.update(len(batch["label"]), ready=cm)
        if num_images and not images and palette is not None:
            local = {k: np.asarray(batch[k]) for k in keys if k in batch}
            local["prediction"] = _local_rows(pred)
            rows = _first_rows(local, min(num_images, len(pred)))
            n = len(rows["label"])
            label = rows["label"]
            rgb = _images_on_label_grid(rows, n)
            pred_np = np.where(label >= 0, rows["prediction"], -1)  # blank the padding
            images = {
                "prediction": reporting.overlay(rgb, pred_np, palette),
                "label": reporting.overlay(rgb, label, palette),
            }
    if not per_batch:
        raise ValueError("the evaluation split yielded no batch; check dataset.eval_split")
    # Summed in int64 on the host: a whole split's pixel counts can exceed int32.
    total = sum(_to_host(cm).astype(np.int64) for cm in per_batch)
    return total, images


def report_evaluation(
    cm: np.ndarray,
    step: int,
    class_names,
    workdir: str | pathlib.Path,
    reporter: reporting.Reporter | None = None,
    images: dict | None = None,
    class_groups=(),
    tag: str = "eval",
    protocol: str = "",
) -> dict:
    """Prints the per-class table, writes eval_<step>.json and the TensorBoard scalars/images.

    class_groups: (name, class ids) pairs whose mIoUs are reported too (CaDIS categories).
    tag: the TensorBoard tag prefix ('<tag>/mIoU', '<tag>_iou/<class>', ...).
    protocol: the protocol of an evaluation other than training's (eval_<step>_<protocol>.json),
    so that no protocol's results overwrite another's.
    """
    results = metrics.iou_results(cm)
    groups = metrics.group_mious(results, class_groups)
    table = metrics.format_iou_table(results, class_names)
    if groups:
        table += "\n" + "\n".join(f"mIoU[{k}]: {100 * v:.2f}" for k, v in groups.items())
        results["group_mIoU"] = groups
    if jax.process_index() == 0:
        suffix = f"_{protocol}" if protocol else ""
        named = f" ({protocol})" if protocol else ""
        print(f"Evaluation at step {step}{named}:\n{table}", flush=True)
        path = pathlib.Path(workdir) / f"eval_{step}{suffix}.json"
        finite = {k: (v if np.isfinite(v) else None) for k, v in groups.items()}
        extra = {"group_mIoU": finite} if groups else {}
        path.write_text(metrics.results_to_json(results, class_names, step=int(step), **extra))
    if reporter is not None:
        scalars = {f"{tag}/{k}": results[k] for k in ("aAcc", "mIoU", "mAcc")}
        scalars.update({f"{tag}_group/{k}": v for k, v in groups.items() if np.isfinite(v)})
        for name, iou in zip(class_names, results["IoU"], strict=True):
            if np.isfinite(iou):
                scalars[f"{tag}_iou/{name}"] = iou
        reporter.write_scalars(step, scalars, progress=False)
        reporter.write_text(step, f"{tag}/table", table)
        if images:
            reporter.write_images(step, {f"{tag}/{k}": v for k, v in images.items()})
    return results
