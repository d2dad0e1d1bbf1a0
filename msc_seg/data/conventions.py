"""The data conventions every part of the project shares, free of TensorFlow.

One home for: the ignore label, the ImageNet normalisation (numpy here; the tf.data version,
`transforms.normalize`, uses the same constants), the value that padding takes after
normalisation, the evaluation resize rule, and keeping TensorFlow off the accelerators.

Importing this module imports numpy only, so losses/ and metrics.py can use `IGNORE_LABEL`
without loading TensorFlow.
"""

from __future__ import annotations

import numpy as np

# Network label of ignored pixels (datasets' raw ignore ids are mapped to it when labels are read,
# `DatasetSpec.decode_label`); class ids are 0..K-1.
IGNORE_LABEL = -1
# Stored id of ignore (and unknown) colours when a folder dataset's RGB palette labels are turned
# into ids at build time.
PALETTE_IGNORE_ID = 255

# ImageNet statistics of [0, 1] RGB values, as torchvision / mmseg normalise.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
for _a in (IMAGENET_MEAN, IMAGENET_STD):
    _a.setflags(write=False)

# A raw 0 (black) pixel after normalisation: what padding around a normalised image holds, so a
# padded canvas equals padding the raw image with 0 and then normalising.
PAD_VALUE = -IMAGENET_MEAN / IMAGENET_STD
PAD_VALUE.setflags(write=False)


def normalize(image) -> np.ndarray:
    """Raw 0..255 [..., 3] -> float32 (image / 255 - ImageNet mean) / ImageNet std (numpy)."""
    x = np.asarray(image, np.float32) / np.float32(255.0)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def denormalize(image) -> np.ndarray:
    """Inverse of `normalize`, rounded down and clipped to uint8 [..., 3]."""
    x = np.asarray(image, np.float32) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def eval_resize_hw(
    height: int, width: int, short_side: int | None = None, long_side: int | None = None
) -> tuple[int, int]:
    """Target (h, w) of the keep-ratio evaluation resize of an image of (height, width).

    short_side alone: the short side becomes short_side (ADE20K's validation resize); long_side
    alone: the long side becomes long_side (the Cityscapes / Pascal Context test base size); both:
    mmseg's keep-ratio rescale to (long_side, short_side), the largest size with
    short <= short_side and long <= long_side; neither (or 0): unchanged. The factor is the
    smallest of those that apply, and each side becomes int(side * factor + 0.5), mmcv's
    `rescale_size` rounding.

    The tf.data eval pipeline (`transforms.resize_for_eval`) and predict mode both size images
    with this function, so both see the same pixels.
    """
    height, width = int(height), int(width)
    if not short_side and not long_side:
        return height, width
    factors = []
    if short_side:
        factors.append(float(short_side) / min(height, width))
    if long_side:
        factors.append(float(long_side) / max(height, width))
    factor = min(factors)
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)


_accelerators_hidden = False


def hide_accelerators_from_tensorflow() -> None:
    """Makes TensorFlow (used for tf.data only) see no GPU/TPU, so the accelerators stay JAX's.

    Must run before TensorFlow initialises its devices (before its first op); later calls, and
    calls after that point, do nothing. TensorFlow is imported here, not at module import.
    """
    global _accelerators_hidden
    if _accelerators_hidden:
        return
    import tensorflow as tf
    from absl import logging

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError) as e:  # No such device type, or TF already started.
            logging.log_first_n(logging.INFO, "TensorFlow keeps %s devices: %s", 1, kind, e)
    _accelerators_hidden = True
