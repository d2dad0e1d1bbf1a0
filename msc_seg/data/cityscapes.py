"""Cityscapes: the 19 evaluated classes, their colours and the labelIds -> trainIds table.

Source: cityscapesScripts `helpers/labels.py` (the `trainId` column) and mmsegmentation's palette.
The released `*_gtFine_labelIds.png` files hold labelIds 0..33 (classes with id -1, the licence
plate, are never drawn); the 19 evaluated labelIds become trainIds 0..18, every other id is
ignored.
"""

from __future__ import annotations

CLASS_NAMES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# labelId of trainId 0, 1, ..., 18.
EVALUATED_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
NUM_LABEL_IDS = 34  # labelIds 0 (unlabeled) .. 33 (bicycle)
# Some converted releases store "no label" as 255 (e.g. the licence plate's -1 as uint8).
EXTRA_IGNORED_IDS = (255,)

SPLIT_FOLDERS = (("train", "train"), ("val", "validation"), ("test", "test"))


def label_id_to_train_id() -> tuple[int, ...]:
    """[34] table: labelId -> trainId (0..18), -1 for labelIds that are not evaluated."""
    table = [-1] * NUM_LABEL_IDS
    for train_id, label_id in enumerate(EVALUATED_LABEL_IDS):
        table[label_id] = train_id
    return tuple(table)
