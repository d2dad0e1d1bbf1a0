"""Figures for people: a confusion matrix and an embedding scatter rendered to uint8 RGB arrays
(TensorBoard images), and the helpers `tools/plot.py` uses to write PNG files.

matplotlib is imported on first use (not at import time), through its object-oriented API with
the Agg canvas: no pyplot global state, no display, safe inside a training process. Nothing here
reads a config.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Above this many classes tick labels would overlap: the confusion matrix is a plain heat map.
MAX_NAMED_CLASSES = 40
# Up to this many classes each cell also prints its percentage.
MAX_ANNOTATED_CLASSES = 12
# Up to this many classes present, the scatter has a legend with class names.
MAX_LEGEND_CLASSES = 24


def new_figure(width: float, height: float, dpi: int = 100):
    """A matplotlib Figure on an Agg canvas (width/height in inches).

    Raises ImportError with the install command when matplotlib is missing.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # the core runs without matplotlib; figures need it
        raise ImportError(
            "matplotlib is needed for figures (TensorBoard images, msc_seg.tools.plot); "
            "install it with `pip install matplotlib`"
        ) from e
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig) -> np.ndarray:
    """uint8 [H,W,3] pixels of a figure made by `new_figure`."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    """float64 [K,K]: each row of a confusion matrix (rows = ground truth) divided by its sum;
    rows of classes absent from the ground truth are NaN (drawn blank), not 0."""
    cm = np.asarray(cm, np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, cm / np.where(totals > 0, totals, 1), np.nan)


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str], title: str = ""):
    """The row-normalised confusion matrix (rows: ground truth, columns: prediction) as a
    figure: class names on the axes up to MAX_NAMED_CLASSES classes, percentages in the cells up
    to MAX_ANNOTATED_CLASSES, a plain heat map above."""
    rates = normalise_rows(cm)
    k = rates.shape[0]
    named = k <= MAX_NAMED_CLASSES
    side = float(np.clip(2.5 + 0.22 * k, 5.0, 9.0)) if named else 8.0
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib  # available: new_figure imported it

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if named:
        ticks = np.arange(k)
        ax.set_xticks(ticks, labels=list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels=list(class_names), fontsize=7)
    if k <= MAX_ANNOTATED_CLASSES:
        for i in range(k):
            for j in range(k):
                if np.isfinite(rates[i, j]) and rates[i, j] >= 0.005:
                    color = "black" if rates[i, j] > 0.6 else "white"
                    ax.text(
                        j,
                        i,
                        f"{100 * rates[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    ax.set_title(title or f"confusion matrix, rows normalised ({k} classes)", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_matrix_image(
    cm: np.ndarray, class_names: Sequence[str], title: str = ""
) -> np.ndarray:
    """uint8 [H,W,3]: `confusion_matrix_figure` rendered."""
    return figure_to_array(confusion_matrix_figure(cm, class_names, title))


def class_colors(labels: np.ndarray, palette: np.ndarray | None) -> np.ndarray:
    """float [N,3] in [0,1]: the dataset palette's colour of each label (the colours of the
    overlays), or the tab20 colours (tab10 first) when there is no palette."""
    labels = np.asarray(labels)
    if palette is not None and len(palette) > int(labels.max(initial=0)):
        return np.asarray(palette, np.float64)[labels] / 255.0
    # matplotlib's tab20: its 10 saturated colours first (tab10), then their light variants.
    tab20 = np.array(
        [
            (31, 119, 180),
            (255, 127, 14),
            (44, 160, 44),
            (214, 39, 40),
            (148, 103, 189),
            (140, 86, 75),
            (227, 119, 194),
            (127, 127, 127),
            (188, 189, 34),
            (23, 190, 207),
            (174, 199, 232),
            (255, 187, 120),
            (152, 223, 138),
            (255, 152, 150),
            (197, 176, 213),
            (196, 156, 148),
            (247, 182, 210),
            (199, 199, 199),
            (219, 219, 141),
            (158, 218, 229),
        ],
        np.float64,
    )
    return tab20[labels % len(tab20)] / 255.0


def embedding_scatter_figure(
    points: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: np.ndarray | None = None,
    title: str = "",
    axis_names: tuple[str, str] = ("PC 1", "PC 2"),
):
    """A 2-D scatter of embeddings (points float [N,2], labels int [N] in [0,K)) coloured by
    class, with a legend of class names when at most MAX_LEGEND_CLASSES classes are present."""
    points = np.asarray(points, np.float64)
    labels = np.asarray(labels, np.int64)
    present = np.unique(labels)
    legend = 0 < len(present) <= MAX_LEGEND_CLASSES
    fig = new_figure(8.0 if legend else 6.5, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    for c in present:  # one call per class: the legend gets one entry per class
        at = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(
            points[at, 0],
            points[at, 1],
            s=9,
            alpha=0.75,
            linewidths=0.3,
            edgecolors="0.2",
            c=class_colors(labels[at], palette),
            label=name,
        )
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize=7,
            markerscale=1.6,
            frameon=False,
        )
    fig.tight_layout()
    return fig


def embedding_scatter_image(
    points, labels, class_names, palette=None, title="", axis_names=("PC 1", "PC 2")
) -> np.ndarray:
    """uint8 [H,W,3]: `embedding_scatter_figure` rendered."""
    return figure_to_array(
        embedding_scatter_figure(points, labels, class_names, palette, title, axis_names)
    )
