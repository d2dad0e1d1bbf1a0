r"""Predict mode: segment a folder of images with a trained checkpoint.

    python -m msc_seg.main --mode=predict --config=configs/NAME.py --workdir=DIR \
        --images=IN_DIR --output=OUT_DIR [--checkpoint=latest|best|STEP|/path/to/checkpoint]

Every .jpg/.jpeg/.png of IN_DIR (sorted; sub-folders with --recursive) goes through the configured
evaluation input (`eval.data` resize sides and canvas) and protocol (`eval.protocol`), and
OUT_DIR receives, per image NAME (sub-folders mirrored):
  NAME_mask.png     the prediction in the dataset's palette colours, at the image's size;
  NAME_overlay.png  the mask blended over the image;
  NAME_ids.png      class ids (uint8, or uint16 for more than 256 classes).
Only the dataset's class names and palette are used (the registry): the dataset itself need not
be prepared. Images are padded to `eval.data.pad_shape` (one compile); an image that does not
fit gets a larger canvas (one more compile per canvas size, announced on stderr). Unreadable
files are skipped with a warning naming them; a progress line on stderr shows count, img/s and ETA.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from msc_seg import evaluate, inference, reporting
from msc_seg import mesh as mesh_lib
from msc_seg.data import conventions, transforms
from msc_seg.train_state import ModelDef

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Canvases of images that do not fit the pad shape are rounded up to this, so that a folder of
# similar large images shares a few compiled shapes.
BUCKET_MULTIPLE = 128


class PredictError(ValueError):
    """Bad predict input (images folder, checkpoint); the message names it and what to do."""


# ---------------------------------------------------------------------------------------------
# Inputs.


def list_images(images_dir: str | pathlib.Path, *, recursive: bool = False) -> list[pathlib.Path]:
    """The sorted .jpg/.jpeg/.png files of `images_dir` (and its sub-folders with `recursive`)."""
    root = pathlib.Path(images_dir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise PredictError(f"--images={images_dir} {what}; pass a folder of images")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        hint = "" if recursive else ", or pass --recursive to search its sub-folders"
        raise PredictError(
            f"--images={images_dir} holds no {'/'.join(IMAGE_SUFFIXES)} files; add images{hint}"
        )
    return files


def read_image(path: pathlib.Path) -> np.ndarray:
    """uint8 [H,W,3] RGB pixels of an image file; PredictError naming the file if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise PredictError(f"cannot read {path} as an image ({e})") from None


def output_stems(files: list[pathlib.Path], images_dir: str | pathlib.Path) -> list[str]:
    """Output name per file: its path under images_dir without suffix ('sub/name'); files that
    share a stem (a.jpg, a.png) keep their suffix in the name ('a_jpg', 'a_png')."""
    rel = [f.relative_to(images_dir) for f in files]
    stems = [str(r.with_suffix("")) for r in rel]
    counts = {s: stems.count(s) for s in stems}
    return [
        f"{s}_{r.suffix[1:].lower()}" if counts[s] > 1 else s
        for s, r in zip(stems, rel, strict=True)
    ]


def canvas_shape(hw: tuple[int, int], pad_shape: tuple[int, int]) -> tuple[int, int]:
    """pad_shape when `hw` fits in it; else each side that does not fit is rounded up to
    BUCKET_MULTIPLE (so a folder of similar large images shares a few compiled shapes)."""
    h, w = (
        p if n <= p else inference.round_up(n, BUCKET_MULTIPLE)
        for n, p in zip(hw, pad_shape, strict=True)
    )
    return h, w


@dataclasses.dataclass
class Example:
    """One image ready for the model: `image` normalised [h,w,3] (resized as in evaluation)."""

    index: int
    rgb: np.ndarray  # uint8 [H0,W0,3], the original
    image: np.ndarray  # float32 [h,w,3]

    @property
    def original_hw(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def prepare_example(
    index: int, rgb: np.ndarray, resize_short_side: int = 0, resize_long_side: int = 0
) -> Example:
    """Resizes (short / long side, 0 = off, as the eval pipeline) and normalises."""
    resized = transforms.resize_for_eval(rgb, resize_short_side or None, resize_long_side or None)
    return Example(index, rgb, conventions.normalize(np.asarray(resized)))


def stack_batch(examples: list[Example], batch_size: int, in_shape: tuple[int, int]) -> dict:
    """Pads examples to their canvases and fills the batch up to batch_size with copies of the
    first (their results are dropped) -> 'image' [B,*in_shape,3], 'image_hw', 'out_hw' [B,2]."""
    rows = examples + [examples[0]] * (batch_size - len(examples))
    images = np.broadcast_to(conventions.PAD_VALUE, (len(rows), *in_shape, 3)).copy()
    for i, ex in enumerate(rows):
        images[i, : ex.image_hw[0], : ex.image_hw[1]] = ex.image
    return {
        "image": images,
        "image_hw": np.array([ex.image_hw for ex in rows], np.int32),
        "out_hw": np.array([ex.original_hw for ex in rows], np.int32),
    }


# ---------------------------------------------------------------------------------------------
# Prediction and outputs.


def make_predict_fn(model_def: ModelDef, protocol: inference.Protocol, *, resize_output: bool):
    """Jitted (state, image [B,H,W,3], image_hw, out_hw [B,2], out_shape) -> int32 [B,*out_shape]
    class ids on the original image grid (one compile per (input, output) canvas shape)."""

    def predict(state, image, image_hw, out_hw, out_shape):
        scores = evaluate.predict_scores(
            model_def,
            state,
            image,
            image_hw,
            protocol,
            out_shape=out_shape if resize_output else None,
            out_hw=out_hw if resize_output else None,
        )
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)

    return jax.jit(predict, static_argnames=("out_shape",))


def write_prediction(
    output_dir: pathlib.Path, stem: str, rgb: np.ndarray, ids: np.ndarray, palette: np.ndarray
) -> list[pathlib.Path]:
    """Writes STEM_mask.png, STEM_overlay.png and STEM_ids.png; ids int [H,W] at rgb's size."""
    base = output_dir / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    id_dtype = np.uint8 if len(palette) <= 256 else np.uint16
    outputs = {
        "mask": reporting.colorize(ids, palette),
        "overlay": reporting.overlay(rgb, ids, palette),
        "ids": ids.astype(id_dtype),
    }
    paths = []
    for kind, array in outputs.items():
        path = base.parent / f"{base.name}_{kind}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def _batches_by_canvas(
    examples: Iterable[Example], batch_size: int, canvases: Callable
) -> Iterable[tuple[tuple, list[Example]]]:
    """Groups a stream of examples into full batches per canvas key, then the partial rest."""
    pending: dict[tuple, list[Example]] = {}
    for ex in examples:
        key = canvases(ex)
        pending.setdefault(key, []).append(ex)
        if len(pending[key]) == batch_size:
            yield key, pending.pop(key)
    yield from pending.items()


@dataclasses.dataclass(frozen=True)
class PredictInput:
    """How images enter the model (the eval data settings): resize sides (0 = off), the canvas
    every image is padded to, the global batch size."""

    pad_shape: tuple[int, int]
    batch_size: int
    resize_short_side: int = 0
    resize_long_side: int = 0

    @property
    def resizes(self) -> bool:
        return bool(self.resize_short_side or self.resize_long_side)


def predict_folder(
    predict_fn: Callable,
    state,
    mesh,
    *,
    images: str | pathlib.Path,
    output: str | pathlib.Path,
    settings: PredictInput,
    palette: np.ndarray,
    recursive: bool = False,
    stream=None,
) -> dict:
    """Segments every image of `images` into `output` (see the module docstring).

    predict_fn: `make_predict_fn(...)` (resize_output = settings.resizes); state: the restored
    TrainState, replicated over `mesh`. Returns {'written': [stems], 'skipped': [(file, reason)]}.
    Raises PredictError for an empty or missing images folder, or a folder where no file could
    be read.
    """
    stream = stream if stream is not None else sys.stderr
    if jax.process_count() > 1:
        raise PredictError(
            "predict mode runs on one process; start it without --distributed, "
            "--coordinator_address or JAX_* variables"
        )
    files = list_images(images, recursive=recursive)
    pad_shape = (int(settings.pad_shape[0]), int(settings.pad_shape[1]))
    batch_size = int(settings.batch_size)
    output_dir = pathlib.Path(output)
    output_dir.mkdir(parents=True, exist_ok=True)
    stems = output_stems(files, images)
    bar = reporting.ProgressBar(len(files), stream)
    skipped: list[tuple[str, str]] = []
    written: list[str] = []
    announced: set[tuple] = set()

    def examples():
        for i, path in enumerate(files):
            try:
                rgb = read_image(path)
            except PredictError as err:
                skipped.append((str(path), str(err)))
                bar.message(f"warning: skipping {path}: {err}")
                bar.update()
                continue
            yield prepare_example(i, rgb, settings.resize_short_side, settings.resize_long_side)

    def canvases(ex: Example) -> tuple:
        in_canvas = canvas_shape(ex.image_hw, pad_shape)
        out_canvas = canvas_shape(ex.original_hw, pad_shape) if settings.resizes else in_canvas
        key = (in_canvas, out_canvas)
        if key != (pad_shape, pad_shape) and key not in announced:
            announced.add(key)
            bar.message(
                f"note: {files[ex.index]} ({ex.original_hw[0]}x{ex.original_hw[1]}) does not "
                f"fit eval.data.pad_shape={list(pad_shape)}; predicting on a {in_canvas[0]}x"
                f"{in_canvas[1]} canvas, output on {out_canvas[0]}x{out_canvas[1]} (one more "
                "compile; raise the config field eval.data.pad_shape to avoid it)"
            )
        return key

    try:
        for (in_canvas, out_canvas), batch_examples in _batches_by_canvas(
            examples(), batch_size, canvases
        ):
            host = stack_batch(batch_examples, batch_size, in_canvas)
            device = mesh_lib.host_batch_to_global(host, mesh)
            ids = predict_fn(
                state, device["image"], device["image_hw"], device["out_hw"], out_canvas
            )
            ids = np.asarray(jax.device_get(ids))
            for ex, row in zip(batch_examples, ids, strict=False):
                h, w = ex.original_hw
                write_prediction(output_dir, stems[ex.index], ex.rgb, row[:h, :w], palette)
                written.append(stems[ex.index])
                bar.update()
    finally:
        bar.close()
    if not written:
        raise PredictError(
            f"none of the {len(files)} files in --images={images} could be read as an image: "
            + "; ".join(reason for _, reason in skipped)
        )
    return {"written": written, "skipped": skipped}
