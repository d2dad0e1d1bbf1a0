"""The procedural demo dataset's label space: 8 classes, their colours, the stored ignore id.

The scenes themselves are drawn by demo_builder.py (which describes each class).
"""

from __future__ import annotations

IMAGE_SIZE = 128
CLASS_NAMES = (
    "sky",
    "ground",
    "building",
    "window",
    "boulder",
    "pebble",
    "bird",
    "hole",
)
PALETTE = (
    (110, 170, 240),
    (70, 130, 50),
    (150, 140, 130),
    (250, 250, 120),
    (200, 100, 40),
    (250, 170, 90),
    (30, 30, 120),
    (90, 40, 20),
)
NUM_CLASSES = len(CLASS_NAMES)
SKY, GROUND, BUILDING, WINDOW, BOULDER, PEBBLE, BIRD, HOLE = range(NUM_CLASSES)
STORED_IGNORE = 255  # raw id of ignored pixels in the stored label PNGs
