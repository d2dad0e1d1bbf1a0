"""`msc_seg_folder`: a tfds builder for datasets stored as image and label files on local disk.

Where the files are is the config's `layout` (see `layouts.py`: split folders, Cityscapes,
Pascal Context, CaDIS). Labels are single-channel raw ids (8-bit gray or palette indices), or,
with `label_format="palette"`, RGB colours that the builder maps to class ids through the
dataset's palette (class k -> id k, ignore colours and unknown colours -> 255).

Before anything is written every pair is checked (on a thread pool): unreadable or corrupt files,
label/image size mismatches, labels with ids outside the dataset's known ids (or colours outside
its palette) raise `FolderDatasetError` naming the files; with `unknown_label_ids="ignore"` the
unknown ids are kept and read as ignore (`DatasetSpec.decode_label` maps every id it does not
know to -1), and unknown colours are stored as 255 (ignore). Encoded image bytes are stored as
they are (no re-encoding of JPEGs); only labels that are not 8-bit gray ids are re-encoded as PNG.
Each dataset is a builder config: data lands in `<data_dir>/msc_seg_folder/<config>/<version>/`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image, UnidentifiedImageError

from msc_seg.data.conventions import PALETTE_IGNORE_ID
from msc_seg.data.layouts import FolderDatasetError, Pair, find_pairs, listing

__all__ = ["FolderConfig", "FolderDatasetError", "MscSegFolder"]

_LABEL_MODES = ("L", "P", "1", "I;16", "I")
UNKNOWN_LABEL_POLICIES = ("error", "ignore")
LABEL_FORMATS = ("ids", "palette")


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    """One folder dataset: `name` (the build's name), its root folder, layout and label rules.

    `root` (and the checking fields) are only needed to build; reading a built dataset needs the
    name only.

    Attributes:
      root: folder to build from.
      layout: a key of `layouts.LAYOUTS`.
      image_dir, label_dir, split_names: folder names of the `split_folders` layout; split_names
        are (folder name, split name) pairs renaming split folders, e.g. ("training", "train").
      label_format: "ids" (single-channel raw ids) or "palette" (RGB colours of `palette`).
      known_label_ids: the raw ids a label may hold ("ids" format); empty = not checked.
      palette: "palette" format: the colour of class k, as (r, g, b).
      ignore_colors: "palette" format: colours that mean ignore.
      unknown_label_ids: "error" (default) or "ignore": what ids outside known_label_ids (or
        colours outside palette + ignore_colors) do at build time.
    """

    root: str | None = None
    layout: str = "split_folders"
    image_dir: str = "images"
    label_dir: str = "labels"
    split_names: tuple[tuple[str, str], ...] = ()
    label_format: str = "ids"
    known_label_ids: tuple[int, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    unknown_label_ids: str = "error"


# ---------------------------------------------------------------------------------------------
# Reading one label.


def _open_fully(path: pathlib.Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # Decodes everything: truncated or corrupt data fails here.
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise FolderDatasetError(
            f"Folder dataset: cannot read {what} {path}: {e}. Replace or remove this pair."
        ) from None
    return image


def label_array(image: Image.Image, path: pathlib.Path) -> np.ndarray:
    """Raw label ids uint8 [H,W] from a single-channel PIL image (palette -> indices)."""
    if image.mode not in _LABEL_MODES:
        raise FolderDatasetError(
            f"Folder dataset: label {path} has mode {image.mode!r}; labels must be "
            "single-channel class ids (8-bit gray or palette). Convert colour-coded labels to ids, "
            "or register the dataset with label_format='palette' to map colours to classes."
        )
    ids = np.asarray(image)
    if ids.max(initial=0) > 255:
        raise FolderDatasetError(
            f"Folder dataset: label {path} has ids up to {int(ids.max())}; "
            "at most 255 is supported."
        )
    return ids.astype(np.uint8)


def unknown_ids(ids: np.ndarray, known: Sequence[int]) -> tuple[int, ...]:
    """The distinct values of uint8 `ids` [H,W] that are not in `known` (sorted)."""
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=256))
    known = set(known)
    return tuple(int(v) for v in present if v not in known)


def _colour_codes(colours) -> np.ndarray:
    colours = np.asarray(colours, np.int64).reshape(-1, 3)
    return (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]


def colours_to_ids(
    rgb: np.ndarray, palette: Sequence[Sequence[int]], ignore_colors: Sequence[Sequence[int]]
) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...]]:
    """RGB label uint8 [H,W,3] -> (ids uint8 [H,W], colours found in neither list).

    Colour `palette[k]` becomes id k; ignore colours and unknown colours become 255.
    """
    lookup = {int(c): PALETTE_IGNORE_ID for c in _colour_codes(ignore_colors)}
    lookup.update({int(c): k for k, c in enumerate(_colour_codes(palette))})
    codes, inverse = np.unique(_colour_codes(rgb), return_inverse=True)
    values = np.array([lookup.get(int(c), PALETTE_IGNORE_ID) for c in codes], np.uint8)
    unknown = tuple(
        (int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255) for c in codes if int(c) not in lookup
    )
    return values[inverse.ravel()].reshape(rgb.shape[:2]), unknown


def read_label(image: Image.Image, path: pathlib.Path, config: FolderConfig):
    """(ids uint8 [H,W], unknown values) of a label image under `config`'s label rules.

    Unknown values are ids outside `known_label_ids` ("ids" format) or (r, g, b) colours outside
    the palette and ignore colours ("palette" format).
    """
    if config.label_format == "palette":
        return colours_to_ids(
            np.asarray(image.convert("RGB")), config.palette, config.ignore_colors
        )
    ids = label_array(image, path)
    return ids, unknown_ids(ids, config.known_label_ids) if config.known_label_ids else ()


# ---------------------------------------------------------------------------------------------
# Checking every pair before writing.


@dataclasses.dataclass(frozen=True)
class _UnknownValues:
    label: pathlib.Path
    values: tuple


def check_pair(pair: Pair, config: FolderConfig) -> _UnknownValues | None:
    """Raises FolderDatasetError if a file is unreadable or the sizes differ; returns the label's
    unknown ids / colours, if any."""
    image = _open_fully(pair.image, "image")
    label = _open_fully(pair.label, "label")
    if image.size != label.size:
        (iw, ih), (lw, lh) = image.size, label.size
        raise FolderDatasetError(
            f"Folder dataset: label {pair.label} is {lh}x{lw} (HxW) but image {pair.image} is "
            f"{ih}x{iw}. Labels must have the size of their image."
        )
    _, unknown = read_label(label, pair.label, config)
    return _UnknownValues(pair.label, unknown) if unknown else None


def _id_ranges(ids: Sequence[int]) -> str:
    """'0-33, 255' for (0, 1, ..., 33, 255)."""
    ids, parts, start = sorted(ids), [], None
    for i, v in enumerate(ids):
        start = v if start is None else start
        if i + 1 == len(ids) or ids[i + 1] != v + 1:
            parts.append(str(v) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _unknown_values_message(config: FolderConfig, problems: list[_UnknownValues]) -> str:
    if config.label_format == "palette":
        what = "colours that are neither class colours nor ignore colours"
    else:
        what = f"ids outside the dataset's label ids ({_id_ranges(config.known_label_ids)})"
    shown = "; ".join(
        f"{p.label} ({', '.join(map(str, p.values[:8]))}{' ...' if len(p.values) > 8 else ''})"
        for p in problems[:10]
    )
    more = f"; ... and {len(problems) - 10} more files" if len(problems) > 10 else ""
    hint = (
        " If they are classes, the class list is too short: add their names."
        if config.label_format != "palette"
        else " If they are classes, add their names and colours to the class list and palette."
    )
    return (
        f"Folder dataset {config.name!r}: {len(problems)} label files hold {what}: {shown}{more}."
        + hint
    )


def check_pairs(pairs: list[Pair], config: FolderConfig) -> None:
    """Checks every pair on a thread pool; unknown label values raise unless configured to be
    ignored (then a warning says how many files had them)."""
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        problems = [p for p in pool.map(lambda pair: check_pair(pair, config), pairs) if p]
    if not problems:
        return
    message = _unknown_values_message(config, problems)
    if config.unknown_label_ids == "ignore":
        logging.warning("%s They are read as ignore (unknown_label_ids='ignore').", message)
        return
    raise FolderDatasetError(
        f"{message} Fix these files, or map the unknown values to ignore: rebuild with "
        "`python -m msc_seg.data.prepare ... --unknown_label_ids=ignore`."
    )


# ---------------------------------------------------------------------------------------------
# The builder.


def _check_config(config: FolderConfig) -> pathlib.Path:
    """The root folder to build from; raises if the config cannot build anything."""
    if not config.root:
        raise FolderDatasetError(
            f"Folder dataset {config.name!r}: no root folder given to build it from "
            "(pass --root=FOLDER to `python -m msc_seg.data.prepare`)."
        )
    if config.unknown_label_ids not in UNKNOWN_LABEL_POLICIES:
        raise ValueError(
            f"unknown_label_ids={config.unknown_label_ids!r}: use one of {UNKNOWN_LABEL_POLICIES}."
        )
    if config.label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format={config.label_format!r}: use one of {LABEL_FORMATS}.")
    return pathlib.Path(config.root).expanduser()


class MscSegFolder(tfds.core.GeneratorBasedBuilder):
    """Images + label files from a local folder; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            # No class names: several datasets may read one build with their own label
            # tables (the CaDIS experiments), so the stored labels are raw ids.
            description=(
                f"Folder dataset {config.name!r} ({config.layout} layout). Labels are raw stored "
                "ids; the registry's DatasetSpec maps them to classes."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Reads local files only.
        config = self.builder_config
        root = _check_config(config)
        splits = find_pairs(
            config.layout,
            root,
            image_dir=config.image_dir,
            label_dir=config.label_dir,
            split_names=config.split_names,
        )
        check_pairs([pair for pairs in splits.values() for pair in pairs], config)
        logging.info(
            "Building %s from %s: %s",
            config.name,
            root,
            listing(f"{split} {len(pairs)}" for split, pairs in splits.items()),
        )
        return {split: self._generate_examples(pairs) for split, pairs in splits.items()}

    def _generate_examples(self, pairs: list[Pair]):
        config = self.builder_config
        for pair in pairs:
            label = Image.open(pair.label)
            if config.label_format == "ids" and label.mode == "L":
                label_value = pair.label.read_bytes()
            else:
                label_value = read_label(label, pair.label, config)[0][..., None]
            image = Image.open(pair.image)
            if image.format in ("JPEG", "PNG") and image.mode in ("RGB", "L", "RGBA", "P"):
                image_value = pair.image.read_bytes()
            else:  # e.g. CMYK JPEG: decode here, stored as PNG.
                image_value = np.asarray(image.convert("RGB"))
            yield pair.key, {"image": image_value, "label": label_value, "name": pair.name}
