"""CaDIS (Cataract Dataset for Image Segmentation): raw classes, experiments 1-3, video splits.

The release stores every frame's label with the 36 raw ids below. The three experiments of
Grammatikopoulou et al. (2021) merge them into 8, 17 or 25 classes; the tables are those of the
authors' MICCAI 2021 code (`utils/defaults.py`) and the CaDIS toolkit's `remap_experiment*`.
One built dataset (raw labels) backs all three experiments: the merge is a lookup table applied
when labels are read (`DatasetSpec.decode_label`).
"""

from __future__ import annotations

import dataclasses

RAW_CLASS_NAMES = (
    "Pupil", "Surgical Tape", "Hand", "Eye Retractors", "Iris", "Skin", "Cornea",
    "Hydro. Cannula", "Visc. Cannula", "Cap. Cystotome", "Rycroft Cannula", "Bonn Forceps",
    "Primary Knife", "Ph. Handpiece", "Lens Injector", "I/A Handpiece", "Secondary Knife",
    "Micromanipulator", "I/A Handpiece Handle", "Cap. Forceps", "R. Cannula Handle",
    "Ph. Handpiece Handle", "Cap. Cystotome Handle", "Sec. Knife Handle", "Lens Injector Handle",
    "Suture Needle", "Needle Holder", "Charleux Cannula", "Primary Knife Handle",
    "Vitrectomy Handpiece", "Mendez Ring", "Marker", "Hydro. Cannula Handle", "Troutman Forceps",
    "Cotton", "Iris Hooks",
)  # fmt: skip
NUM_RAW_IDS = len(RAW_CLASS_NAMES)  # 36: raw ids 0..35

# The paper's video split (the reference code's CADIS.py DATA_SPLITS "split 5").
# The reference's "split 1" trains on the same videos and validates on validation + test.
VIDEO_SPLITS = (
    ("train", (1, 3, 4, 6, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21, 23, 24, 25)),
    ("validation", (5, 7, 16)),
    ("test", (2, 12, 22)),
)

_ANATOMY = (0, 4, 5, 6)
_OTHERS = (1, 2, 3)
_COMMON = ("Pupil", "Surgical Tape", "Hand", "Eye Retractors", "Iris", "Skin", "Cornea")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One CaDIS experiment.

    Attributes:
      class_names: K class names in network label order.
      raw_ids: for class k, the raw ids merged into it.
      categories: (category name, class ids) pairs the CaDIS papers report mIoU over.
    """

    class_names: tuple[str, ...]
    raw_ids: tuple[tuple[int, ...], ...]
    categories: tuple[tuple[str, tuple[int, ...]], ...]

    def raw_to_class(self) -> tuple[int, ...]:
        """[36] table: raw id -> class id, -1 for raw ids the experiment ignores."""
        table = [-1] * NUM_RAW_IDS
        for class_id, raw_ids in enumerate(self.raw_ids):
            for raw in raw_ids:
                table[raw] = class_id
        return tuple(table)


EXPERIMENTS = {
    # 8 classes, nothing ignored: every instrument (raw 7..35) is "Instrument".
    1: Experiment(
        class_names=(*_COMMON, "Instrument"),
        raw_ids=(*((i,) for i in range(7)), tuple(range(7, NUM_RAW_IDS))),
        categories=(
            ("anatomies", _ANATOMY),
            ("instruments", (7,)),
            ("others", _OTHERS),
            ("rare", (2,)),
        ),
    ),
    # 17 classes: instruments and their handles merged into 10 tool classes; raw 25, 26, 29, 30,
    # 31, 34, 35 ignored.
    2: Experiment(
        class_names=(
            *_COMMON,
            "Cannula",
            "Cap. Cystotome",
            "Tissue Forceps",
            "Primary Knife",
            "Ph. Handpiece",
            "Lens Injector",
            "I/A Handpiece",
            "Secondary Knife",
            "Micromanipulator",
            "Cap. Forceps",
        ),
        raw_ids=(
            *((i,) for i in range(7)),
            (7, 8, 10, 27, 20, 32),
            (9, 22),
            (11, 33),
            (12, 28),
            (13, 21),
            (14, 24),
            (15, 18),
            (16, 23),
            (17,),
            (19,),
        ),
        categories=(
            ("anatomies", _ANATOMY),
            ("instruments", tuple(range(7, 17))),
            ("others", _OTHERS),
            ("rare", (16, 10, 9, 12, 14)),
        ),
    ),  # fmt: skip
    # 25 classes: raw 0..24 kept, raw 25..35 ignored.
    3: Experiment(
        class_names=RAW_CLASS_NAMES[:25],
        raw_ids=tuple((i,) for i in range(25)),
        categories=(
            ("anatomies", _ANATOMY),
            ("instruments", tuple(range(7, 25))),
            ("others", _OTHERS),
            ("rare", (24, 20, 21, 22, 18, 23, 19, 16, 12, 11, 14)),
        ),
    ),
}
