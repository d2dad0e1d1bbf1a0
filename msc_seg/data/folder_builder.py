"""`msc_seg_folder`: a tfds builder for a folder of images and single-channel label PNGs.

Layout under the root (folder names configurable):

    images/<split>/NAME.(jpg|jpeg|png)
    labels/<split>/NAME.png            single-channel raw ids (8-bit gray or palette indices)

Splits are the sub-folders of `images/` (optionally renamed, e.g. ADE's training -> train).
Before anything is written every pair is checked: unpaired files, unreadable or corrupt images
and labels, labels that are not single-channel and label/image size mismatches raise
`FolderDatasetError` naming the files. Encoded bytes are stored as they are (no re-encoding of
JPEGs); only labels that are not 8-bit gray are re-encoded as PNG.
Each dataset is a builder config named after it: data lands in
`<data_dir>/msc_seg_folder/<config name>/<version>/`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIXES = (".png",)
_LABEL_MODES = ("L", "P", "1", "I;16", "I")
_MAX_LISTED = 10


class FolderDatasetError(ValueError):
    """The folder dataset on disk is malformed; the message names the files at fault."""


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    """One folder dataset: `name` (the dataset), its root folder and its class names.

    `root` is only needed to build; reading an already built dataset needs the name only.
    """

    root: str | None = None
    class_names: tuple[str, ...] = ()
    image_dir: str = "images"
    label_dir: str = "labels"
    # (folder name, split name) pairs renaming split folders, e.g. ("training", "train").
    split_names: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class _Pair:
    name: str
    image: pathlib.Path
    label: pathlib.Path


def _listing(paths) -> str:
    paths = sorted(str(p) for p in paths)
    more = f" ... and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return ", ".join(paths[:_MAX_LISTED]) + more


def _files_by_stem(folder: pathlib.Path, suffixes) -> dict[str, pathlib.Path]:
    files: dict[str, pathlib.Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in files:
            raise FolderDatasetError(
                f"Two files share the name {path.stem!r}: {files[path.stem]} and {path}. "
                "Keep one file per example name."
            )
        files[path.stem] = path
    return files


def discover_splits(root: pathlib.Path, image_dir: str, label_dir: str) -> list[str]:
    """Split names (sub-folders of root/image_dir), checked against root/label_dir."""
    images_root, labels_root = root / image_dir, root / label_dir
    for folder in (root, images_root, labels_root):
        if not folder.is_dir():
            raise FolderDatasetError(
                f"Folder dataset: {folder} does not exist or is not a folder. Expected "
                f"{images_root}/<split>/NAME.(jpg|png) and {labels_root}/<split>/NAME.png."
            )
    splits = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    if not splits:
        raise FolderDatasetError(f"Folder dataset: no split folders in {images_root}.")
    label_splits = sorted(p.name for p in labels_root.iterdir() if p.is_dir())
    missing = [labels_root / s for s in splits if s not in label_splits]
    extra = [labels_root / s for s in label_splits if s not in splits]
    if missing or extra:
        raise FolderDatasetError(
            "Folder dataset: image and label split folders differ. "
            + (f"Missing label folders: {_listing(missing)}. " if missing else "")
            + (f"Label folders without images: {_listing(extra)}." if extra else "")
        )
    bad = [s for s in splits if not re.fullmatch(r"\w+", s)]
    if bad:
        raise FolderDatasetError(
            f"Folder dataset: split folder names must be letters, digits or '_': {bad} in "
            f"{images_root}. Rename them (e.g. 'train', 'val')."
        )
    return splits


def pair_files(image_folder: pathlib.Path, label_folder: pathlib.Path) -> list[_Pair]:
    """Image/label pairs by file stem; raises naming every unpaired file."""
    images = _files_by_stem(image_folder, IMAGE_SUFFIXES)
    labels = _files_by_stem(label_folder, LABEL_SUFFIXES)
    lonely_images = [images[n] for n in images if n not in labels]
    lonely_labels = [labels[n] for n in labels if n not in images]
    if lonely_images or lonely_labels:
        raise FolderDatasetError(
            "Folder dataset: unpaired files. "
            + (f"Images without a label: {_listing(lonely_images)}. " if lonely_images else "")
            + (f"Labels without an image: {_listing(lonely_labels)}. " if lonely_labels else "")
            + "Every images/<split>/NAME.* needs a labels/<split>/NAME.png and vice versa."
        )
    if not images:
        raise FolderDatasetError(f"Folder dataset: no images in {image_folder}.")
    return [_Pair(name, images[name], labels[name]) for name in sorted(images)]


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
            "single-channel class ids (8-bit gray or palette). Convert colour-coded labels to ids."
        )
    ids = np.asarray(image)
    if ids.max(initial=0) > 255:
        raise FolderDatasetError(
            f"Folder dataset: label {path} has ids up to {int(ids.max())}; "
            "at most 255 is supported."
        )
    return ids.astype(np.uint8)


def check_pair(pair: _Pair) -> None:
    """Raises FolderDatasetError if either file is unreadable or the sizes differ."""
    image = _open_fully(pair.image, "image")
    label = _open_fully(pair.label, "label")
    label_array(label, pair.label)
    if image.size != label.size:
        (iw, ih), (lw, lh) = image.size, label.size
        raise FolderDatasetError(
            f"Folder dataset: label {pair.label} is {lh}x{lw} (HxW) but image {pair.image} is "
            f"{ih}x{iw}. Labels must have the size of their image."
        )


class MscSegFolder(tfds.core.GeneratorBasedBuilder):
    """Images + single-channel label PNGs from a folder; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Folder dataset {config.name!r}: classes {list(config.class_names)}. "
                "Labels are raw stored ids."
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
        if not config.root:
            raise FolderDatasetError(
                f"Folder dataset {config.name!r}: no root folder given to build it from "
                "(pass --root=FOLDER to `python -m msc_seg.data.prepare`)."
            )
        root = pathlib.Path(config.root).expanduser()
        renames = dict(config.split_names)
        generators = {}
        for folder in discover_splits(root, config.image_dir, config.label_dir):
            pairs = pair_files(root / config.image_dir / folder, root / config.label_dir / folder)
            for pair in pairs:
                check_pair(pair)
            generators[renames.get(folder, folder)] = self._generate_examples(pairs)
        return generators

    def _generate_examples(self, pairs):
        for pair in pairs:
            label = Image.open(pair.label)
            if label.mode == "L":
                label_value = pair.label.read_bytes()
            else:
                label_value = label_array(label, pair.label)[..., None]
            image = Image.open(pair.image)
            if image.format in ("JPEG", "PNG") and image.mode in ("RGB", "L", "RGBA", "P"):
                image_value = pair.image.read_bytes()
            else:  # e.g. CMYK JPEG: decode here, stored as PNG.
                image_value = np.asarray(image.convert("RGB"))
            yield pair.name, {"image": image_value, "label": label_value, "name": pair.name}
