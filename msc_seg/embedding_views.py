"""Views of the projector embedding space at an evaluation: a class-balanced sample per scale,
its 2-D projection (PCA; t-SNE with scikit-learn) as an image, and separability scalars.

    jitted, fixed shape:  (state, eval batch) -> per scale (vectors [K*C,D], labels [K*C])
    host, numpy:          separability (intra/inter-class cosine), PCA, matplotlib scatter

The sample is drawn with a fixed key from the first eval batch, so every evaluation shows the
same pixels and the pictures of successive evaluations can be compared. Nothing here reads a
config; experiment.py decides when it runs (`eval.embedding_plots`, projectors present).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msc_seg import mesh as mesh_lib
from msc_seg import visualize
from msc_seg.data.conventions import IGNORE_LABEL
from msc_seg.train_state import ModelDef, TrainState

PER_CLASS = 50  # sampled embeddings per class and scale (the capacity is K * PER_CLASS)
PROJECTIONS = ("pca", "tsne")


def labels_on_grid(
    labels: jax.Array, image_hw: jax.Array, label_hw: jax.Array, grid_hw: tuple[int, int]
) -> jax.Array:
    """int32 [B,h,w]: the label of each cell of a feature map of stride s = canvas / grid.

    labels int32 [B,Hl,Wl] (valid in label_hw [B,2], -1 elsewhere); image_hw int32 [B,2]: the
    valid image on the canvas [Hp,Wp] the features were computed from, with Hp = h * s. A cell
    (y, x) looks at its top-left image pixel (y*s, x*s), as the contrastive loss's
    `downsample_labels`, mapped nearest onto the label grid when the image was resized
    (label pixel floor(y*s * lh / ih)); cells outside the valid image are -1. With image_hw ==
    label_hw this is `labels[:, ::s, ::s]`.
    """
    h, w = grid_hw
    canvas = labels.shape[1:3]
    stride = canvas[0] // h
    ih, iw = image_hw[:, 0:1], image_hw[:, 1:2]  # [B,1]
    lh, lw = label_hw[:, 0:1], label_hw[:, 1:2]
    ys = jnp.arange(h, dtype=jnp.int32)[None, :] * stride  # [1,h] image rows
    xs = jnp.arange(w, dtype=jnp.int32)[None, :] * stride
    ly = jnp.clip(ys * lh // jnp.maximum(ih, 1), 0, labels.shape[1] - 1)  # [B,h]
    lx = jnp.clip(xs * lw // jnp.maximum(iw, 1), 0, labels.shape[2] - 1)
    b = jnp.arange(labels.shape[0])[:, None, None]
    out = labels[b, ly[:, :, None], lx[:, None, :]]
    valid = (ys < ih)[:, :, None] & (xs < iw)[:, None, :]
    return jnp.where(valid, out, IGNORE_LABEL).astype(jnp.int32)


def sample_per_class(
    labels: jax.Array, key: jax.Array, *, num_classes: int, per_class: int
) -> tuple[jax.Array, jax.Array]:
    """Up to `per_class` distinct random positions of each class, in fixed-shape slots.

    labels int [N] (-1 or out-of-range = ignore) -> (index int32 [K*C], label int32 [K*C]):
    slot k*C + r holds the r-th sampled position of class k, label -1 where class k has fewer
    than C positions. One sort of N keys (class, random bits), as the anchor sampler.
    """
    n = labels.shape[0]
    k, c = num_classes, per_class
    labels = labels.astype(jnp.int32)
    cls = jnp.where((labels >= 0) & (labels < k), labels, k)
    scores = jax.random.bits(key, (n,), jnp.uint32)
    sorted_cls, _, order = jax.lax.sort(
        (cls, scores, jnp.arange(n, dtype=jnp.int32)), num_keys=2, is_stable=True
    )
    counts = jnp.bincount(cls, length=k + 1)
    run_start = (jnp.cumsum(counts) - counts).astype(jnp.int32)
    rank = jnp.arange(n, dtype=jnp.int32) - run_start[sorted_cls]
    chosen = (sorted_cls < k) & (rank < c)
    slot = jnp.where(chosen, sorted_cls * c + rank, k * c)
    index = jnp.zeros((k * c,), jnp.int32).at[slot].set(order, mode="drop")
    label = jnp.full((k * c,), IGNORE_LABEL, jnp.int32).at[slot].set(sorted_cls, mode="drop")
    return index, label


def make_embedding_sampler(
    model_def: ModelDef, num_classes: int, mesh, *, per_class: int = PER_CLASS, seed: int = 0
) -> Callable[[TrainState, dict], tuple[tuple[jax.Array, jax.Array], ...]]:
    """Jitted (state, batch) -> per scale (embeddings float32 [K*C,D], labels int32 [K*C]).

    batch: an eval batch as global arrays ('image' [B,Hp,Wp,3], 'label' [B,Hl,Wl], 'image_hw',
    'label_hw' [B,2]). The model (built with projectors) runs once in eval mode on the canvas;
    the outputs are replicated, so every process can read them.
    """
    key = jax.random.key(seed)

    def sample(state: TrainState, batch: dict):
        model = model_def.apply(state)
        embeddings = model(batch["image"], train=False, return_embeddings=True).embeddings
        out = []
        for scale, e in enumerate(embeddings):
            b, h, w, d = e.shape
            grid_labels = labels_on_grid(
                batch["label"], batch["image_hw"], batch["label_hw"], (h, w)
            )
            index, label = sample_per_class(
                grid_labels.reshape(-1),
                jax.random.fold_in(key, scale),
                num_classes=num_classes,
                per_class=per_class,
            )
            out.append((e.reshape(b * h * w, d)[index], label))
        return tuple(out)

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(sample, out_shardings=replicated)


# ---------------------------------------------------------------------------------------------
# Host side: numbers and pictures of one scale's sample.


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def separability(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean intra- and inter-class cosine similarity of a labelled sample, and their gap.

    embeddings float [N,D], labels int [N] (rows with label < 0 are ignored). Each class counts
    once (the sample is class-balanced anyway):
      intra_cos = mean over classes with >= 2 rows of the mean cosine over its distinct pairs;
      inter_cos = mean over pairs of different classes of the mean cosine between their rows;
      gap = intra_cos - inter_cos (larger = better separated).
    Computed from per-class sums of unit vectors s_c: pairs within c sum to |s_c|^2 - n_c,
    pairs across a, b to s_a . s_b. NaN where undefined (fewer than 2 classes / rows).
    """
    keep = np.asarray(labels) >= 0
    unit = _unit_rows(np.asarray(embeddings)[keep])
    labels = np.asarray(labels)[keep]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), unit.shape[1]))
    np.add.at(sums, inverse, unit)
    multi = counts >= 2
    within = (np.sum(sums**2, axis=1) - counts)[multi] / (counts * (counts - 1))[multi]
    intra = float(np.mean(within)) if within.size else float("nan")
    if len(classes) >= 2:
        cross = (sums @ sums.T) / np.outer(counts, counts)
        inter = float(np.mean(cross[np.triu_indices(len(classes), k=1)]))
    else:
        inter = float("nan")
    return {"intra_cos": intra, "inter_cos": inter, "gap": intra - inter}


def pca_2d(x: np.ndarray) -> np.ndarray:
    """float [N,2]: the rows of x [N,D] centred and projected on their first two principal axes
    (numpy SVD; missing axes are 0)."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:2].T
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def tsne_available() -> bool:
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        return False
    return True


def project_2d(x: np.ndarray, method: str = "pca") -> tuple[np.ndarray, tuple[str, str]]:
    """(points [N,2], axis names) of unit-normalised rows (the loss compares directions):
    "pca" or "tsne" (cosine t-SNE, scikit-learn; tens of seconds for 500 points on a CPU)."""
    unit = _unit_rows(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(unit) - 1) / 3)))
        tsne = TSNE(2, metric="cosine", init="pca", perplexity=perplexity, random_state=0)
        return tsne.fit_transform(unit), ("t-SNE 1", "t-SNE 2")
    return pca_2d(unit), ("PC 1", "PC 2")


def scale_views(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    palette: np.ndarray | None,
    *,
    step: int,
    projection: str = "pca",
    render: bool = True,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per scale s (finest first): scalars 's{s}/intra_cos', 's{s}/inter_cos', 's{s}/gap' (finite
    ones only) and, with `render`, an image 's{s}' (uint8 [H,W,3], the projection coloured by
    class)."""
    scalars, images = {}, {}
    for s, (vectors, labels) in enumerate(samples):
        vectors, labels = np.asarray(vectors), np.asarray(labels)
        keep = labels >= 0
        vectors, labels = vectors[keep], labels[keep]
        numbers = separability(vectors, labels)
        scalars.update({f"s{s}/{k}": v for k, v in numbers.items() if np.isfinite(v)})
        if not render or len(labels) < 2:
            continue
        points, axes = project_2d(vectors, projection)
        title = (
            f"scale {s} embeddings, step {step}: {len(labels)} pixels, "
            f"{len(np.unique(labels))} classes; cos intra {numbers['intra_cos']:.2f} / "
            f"inter {numbers['inter_cos']:.2f}"
        )
        images[f"s{s}"] = visualize.embedding_scatter_image(
            points, labels, class_names, palette, title, axes
        )
    return scalars, images


def log_embedding_views(
    reporter,
    step: int,
    sampler: Callable,
    state: TrainState,
    batch: dict,
    mesh,
    *,
    class_names: Sequence[str],
    palette: np.ndarray | None,
    tag: str = "eval",
    projection: str = "pca",
) -> dict[str, float]:
    """Samples `batch` (a host eval batch) with `sampler` (`make_embedding_sampler`, run on every
    process) and writes, on process 0, the images '<tag>_embedding/s{s}' and the scalars
    '<tag>_embedding/s{s}/{intra_cos,inter_cos,gap}'. Returns the scalars (all processes)."""
    keys = ("image", "label", "image_hw", "label_hw")
    device_batch = mesh_lib.host_batch_to_global({k: batch[k] for k in keys}, mesh)
    samples = jax.device_get(sampler(state, device_batch))
    scalars, images = scale_views(
        samples, class_names, palette, step=step, projection=projection, render=reporter.is_main
    )
    prefix = f"{tag}_embedding"
    reporter.write_scalars(step, {f"{prefix}/{k}": v for k, v in scalars.items()}, progress=False)
    if images:
        reporter.write_images(step, {f"{prefix}/{k}": v[None] for k, v in images.items()})
    return scalars
