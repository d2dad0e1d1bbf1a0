"""Where the image/label files of a folder dataset are: one function per on-disk layout.

Each layout function takes the dataset's root folder and returns {split name: [Pair, ...]},
every image paired with its label file. Nothing is decoded here; missing folders, unpaired files,
duplicate names and empty splits raise `FolderDatasetError` naming the folders and files.

Layouts:
  split_folders   ROOT/<image_dir>/<split>/NAME.(jpg|jpeg|png) + ROOT/<label_dir>/<split>/NAME.png
  cityscapes      ROOT/leftImg8bit/<split>/<city>/ID_leftImg8bit.png
                  + ROOT/gtFine/<split>/<city>/ID_gtFine_labelIds.png
  pascal_context  ROOT/JPEGImages/NAME.jpg + ROOT/SegmentationClassContext/NAME.png, split members
                  listed in ROOT/ImageSets/SegmentationContext/{train,val}.txt (ROOT = VOC2010)
  cadis           ROOT/VideoNN/Images/NAME.png + ROOT/VideoNN/Labels/NAME.png, split by video
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re
from collections.abc import Callable, Iterable, Sequence

from absl import logging

from msc_seg.data import cadis, cityscapes, pascal_context

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIXES = (".png",)
_MAX_LISTED = 10


class FolderDatasetError(ValueError):
    """The folder dataset on disk is malformed; the message names the files at fault."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One example: `key` is unique within its split, `name` is the example's file name stem."""

    key: str
    name: str
    image: pathlib.Path
    label: pathlib.Path


Splits = dict[str, list[Pair]]


def listing(items: Iterable) -> str:
    """At most 10 items, sorted, comma-separated, with a count of the rest."""
    items = sorted(str(p) for p in items)
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _require_folder(folder: pathlib.Path, expected: str) -> pathlib.Path:
    if not folder.is_dir():
        raise FolderDatasetError(
            f"Folder dataset: {folder} does not exist or is not a folder. Expected {expected}."
        )
    return folder


def _files_by_stem(folder: pathlib.Path, suffixes: Sequence[str]) -> dict[str, pathlib.Path]:
    """{stem: path} of the files of `folder` with one of `suffixes` (case-insensitive)."""
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


def _files_by_id(folder: pathlib.Path, ending: str) -> dict[str, pathlib.Path]:
    """{ID: path} of the files folder/<sub>/ID<ending> (Cityscapes' per-city folders)."""
    return {
        path.name[: -len(ending)]: path
        for path in sorted(folder.glob(f"*/*{ending}"))
        if path.is_file()
    }


def pair_by_key(
    images: dict[str, pathlib.Path],
    labels: dict[str, pathlib.Path],
    *,
    where: pathlib.Path,
    expected: str,
    key_prefix: str = "",
) -> list[Pair]:
    """Pairs images and labels with the same key; raises naming every unpaired file and, when
    there is nothing at all, the folder `where` (an empty split)."""
    lonely_images = [images[k] for k in images if k not in labels]
    lonely_labels = [labels[k] for k in labels if k not in images]
    if lonely_images or lonely_labels:
        raise FolderDatasetError(
            "Folder dataset: unpaired files. "
            + (f"Images without a label: {listing(lonely_images)}. " if lonely_images else "")
            + (f"Labels without an image: {listing(lonely_labels)}. " if lonely_labels else "")
            + f"Expected {expected}."
        )
    if not images:
        raise FolderDatasetError(
            f"Folder dataset: no images in {where} (an empty split). Expected {expected}."
        )
    return [
        Pair(key=key_prefix + k, name=images[k].stem, image=images[k], label=labels[k])
        for k in sorted(images)
    ]


# ---------------------------------------------------------------------------------------------
# Layouts.


def split_folder_pairs(
    root: pathlib.Path,
    *,
    image_dir: str = "images",
    label_dir: str = "labels",
    split_names: Sequence[tuple[str, str]] = (),
) -> Splits:
    """images/<split>/NAME.* + labels/<split>/NAME.png; split folders renamed by `split_names`."""
    images_root, labels_root = root / image_dir, root / label_dir
    expected = f"{images_root}/<split>/NAME.(jpg|png) and {labels_root}/<split>/NAME.png"
    for folder in (root, images_root, labels_root):
        _require_folder(folder, expected)
    folders = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    if not folders:
        raise FolderDatasetError(f"Folder dataset: no split folders in {images_root}.")
    label_folders = sorted(p.name for p in labels_root.iterdir() if p.is_dir())
    missing = [labels_root / s for s in folders if s not in label_folders]
    extra = [labels_root / s for s in label_folders if s not in folders]
    if missing or extra:
        raise FolderDatasetError(
            "Folder dataset: image and label split folders differ. "
            + (f"Missing label folders: {listing(missing)}. " if missing else "")
            + (f"Label folders without images: {listing(extra)}." if extra else "")
        )
    bad = [s for s in folders if not re.fullmatch(r"\w+", s)]
    if bad:
        raise FolderDatasetError(
            f"Folder dataset: split folder names must be letters, digits or '_': {bad} in "
            f"{images_root}. Rename them (e.g. 'train', 'val')."
        )
    renames = dict(split_names)
    return {
        renames.get(folder, folder): pair_by_key(
            _files_by_stem(images_root / folder, IMAGE_SUFFIXES),
            _files_by_stem(labels_root / folder, LABEL_SUFFIXES),
            where=images_root / folder,
            expected=f"{images_root / folder}/NAME.* and {labels_root / folder}/NAME.png",
        )
        for folder in folders
    }


def cityscapes_pairs(root: pathlib.Path) -> Splits:
    """leftImg8bit/<split>/<city>/ID_leftImg8bit.png + gtFine/<split>/<city>/ID_gtFine_labelIds.png.

    Split folders train / val / test become train / validation / test; absent ones are skipped.
    """
    expected = (
        f"{root}/leftImg8bit/{{train,val,test}}/CITY/ID_leftImg8bit.png and "
        f"{root}/gtFine/{{train,val,test}}/CITY/ID_gtFine_labelIds.png (unzip "
        "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into one folder)"
    )
    images_root = _require_folder(root / "leftImg8bit", expected)
    labels_root = _require_folder(root / "gtFine", expected)
    splits = {}
    for folder, split in cityscapes.SPLIT_FOLDERS:
        if not (images_root / folder).is_dir():
            continue
        label_folder = _require_folder(labels_root / folder, expected)
        splits[split] = pair_by_key(
            _files_by_id(images_root / folder, "_leftImg8bit.png"),
            _files_by_id(label_folder, "_gtFine_labelIds.png"),
            where=images_root / folder,
            expected=expected,
        )
    if not splits:
        raise FolderDatasetError(
            f"Cityscapes: no split folder (train, val, test) in {images_root}. Expected {expected}."
        )
    return splits


def _pascal_context_root(root: pathlib.Path) -> pathlib.Path:
    """The VOC2010 folder, also when `root` is the VOCdevkit folder above it."""
    if not (root / "JPEGImages").is_dir() and (root / "VOC2010").is_dir():
        return root / "VOC2010"
    return root


def _read_split_list(list_file: pathlib.Path, expected: str) -> list[str]:
    if not list_file.is_file():
        raise FolderDatasetError(
            f"Pascal Context: split list {list_file} is missing. Expected {expected}."
        )
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise FolderDatasetError(
            f"Pascal Context: split list {list_file} names no image (an empty split)."
        )
    repeated = [n for n, count in collections.Counter(names).items() if count > 1]
    if repeated:
        raise FolderDatasetError(
            f"Pascal Context: split list {list_file} names these images more than once: "
            f"{listing(repeated)}. Keep each name once."
        )
    return names


def pascal_context_pairs(root: pathlib.Path) -> Splits:
    """VOC2010/JPEGImages/NAME.jpg + VOC2010/SegmentationClassContext/NAME.png, splits listed in
    VOC2010/ImageSets/SegmentationContext/{train,val}.txt (-> train / validation)."""
    root = _pascal_context_root(root)
    expected = (
        f"{root}/JPEGImages/NAME.jpg, {root}/SegmentationClassContext/NAME.png and "
        f"{root}/ImageSets/SegmentationContext/{{train,val}}.txt (the layout mmsegmentation's "
        "tools/dataset_converters/pascal_context.py writes)"
    )
    image_folder = _require_folder(root / "JPEGImages", expected)
    label_folder = _require_folder(root / "SegmentationClassContext", expected)
    list_folder = _require_folder(root / "ImageSets" / "SegmentationContext", expected)
    splits = {}
    for split, list_name in pascal_context.SPLIT_LISTS:
        names = _read_split_list(list_folder / list_name, expected)
        pairs = [
            Pair(key=n, name=n, image=image_folder / f"{n}.jpg", label=label_folder / f"{n}.png")
            for n in names
        ]
        missing = [p for pair in pairs for p in (pair.image, pair.label) if not p.is_file()]
        if missing:
            raise FolderDatasetError(
                f"Pascal Context: {len(missing)} files listed by {list_folder / list_name} are "
                f"missing: {listing(missing)}. Expected {expected}."
            )
        splits[split] = pairs
    return splits


def _cadis_videos(root: pathlib.Path, expected: str) -> dict[int, pathlib.Path]:
    """{video number: folder} for the Video1 / Video01 ... folders of `root`."""
    videos: dict[int, pathlib.Path] = {}
    for path in sorted(_require_folder(root, expected).iterdir()):
        match = re.fullmatch(r"Video(\d+)", path.name)
        if not (match and path.is_dir()):
            continue
        number = int(match[1])
        if number in videos:
            raise FolderDatasetError(
                f"CaDIS: {videos[number]} and {path} are the same video {number}. Keep one."
            )
        videos[number] = path
    if not videos:
        raise FolderDatasetError(f"CaDIS: no Video* folder in {root}. Expected {expected}.")
    in_splits = {n for _, numbers in cadis.VIDEO_SPLITS for n in numbers}
    strangers = [videos[n] for n in sorted(set(videos) - in_splits)]
    if strangers:
        raise FolderDatasetError(
            f"CaDIS: {listing(strangers)} belong to no split of the paper (videos 1..25). "
            "Remove them from the root folder."
        )
    return videos


def cadis_pairs(root: pathlib.Path) -> Splits:
    """VideoNN/Images/NAME.png + VideoNN/Labels/NAME.png, split by video (`cadis.VIDEO_SPLITS`)."""
    expected = (
        f"{root}/Video01..Video25 (or Video1..Video25), each with Images/NAME.png and "
        "Labels/NAME.png (the CaDIS release)"
    )
    videos = _cadis_videos(root, expected)
    splits = {}
    for split, numbers in cadis.VIDEO_SPLITS:
        present = [n for n in numbers if n in videos]
        absent = [n for n in numbers if n not in videos]
        if not present:
            raise FolderDatasetError(
                f"CaDIS: none of the {split} videos {list(numbers)} is in {root} (an empty "
                f"split). Expected {expected}."
            )
        if absent:
            logging.warning(
                "CaDIS: %s split built without videos %s (not in %s).", split, absent, root
            )
        pairs = []
        for number in present:
            video = videos[number]
            image_folder = _require_folder(video / "Images", expected)
            label_folder = _require_folder(video / "Labels", expected)
            pairs += pair_by_key(
                _files_by_stem(image_folder, IMAGE_SUFFIXES),
                _files_by_stem(label_folder, LABEL_SUFFIXES),
                where=image_folder,
                expected=f"{image_folder}/NAME.png and {label_folder}/NAME.png",
                key_prefix=f"{video.name}/",
            )
        splits[split] = pairs
    return splits


LAYOUTS: dict[str, Callable[..., Splits]] = {
    "split_folders": split_folder_pairs,
    "cityscapes": cityscapes_pairs,
    "pascal_context": pascal_context_pairs,
    "cadis": cadis_pairs,
}


def find_pairs(
    layout: str,
    root: pathlib.Path,
    *,
    image_dir: str = "images",
    label_dir: str = "labels",
    split_names: Sequence[tuple[str, str]] = (),
) -> Splits:
    """{split: pairs} of the dataset under `root` stored in `layout` (a key of `LAYOUTS`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown folder layout {layout!r}; known layouts: {list(LAYOUTS)}.")
    if layout == "split_folders":
        return split_folder_pairs(
            root, image_dir=image_dir, label_dir=label_dir, split_names=split_names
        )
    return LAYOUTS[layout](root)
