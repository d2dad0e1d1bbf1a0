"""Training and evaluation transforms in pure TensorFlow (graph-compatible, for tf.data).

Conventions shared by every function here:
  * image: float32 [H,W,3] with raw pixel values in 0..255 (until `normalize`);
  * label: int32 [H,W] with `IGNORE_LABEL` (-1) for ignored pixels;
  * seed: int32/int64 [2] tensor for TF's stateless random ops, so every transform is a pure
    function of its inputs: the same seed gives the same output, eagerly or inside tf.data.

The random transforms follow the reference (the authors') training pipeline: flip, random
scale + aspect, pad to the crop, crop with a class-ratio cap, colour jitter, normalise. The eval
resize (`resize_for_eval`) sizes images with `conventions.eval_resize_hw`, the rule predict mode
uses too.
Labels are only ever moved by nearest-neighbour resampling, padding and slicing: label values are
never interpolated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from msc_seg.data.conventions import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD, eval_resize_hw

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), used by contrast and saturation.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _uniform(seed, minval: float, maxval: float, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def _split(seed, num: int) -> tf.Tensor:
    """[num, 2] independent seeds derived from `seed`."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)


def random_flip(image, label, seed, *, prob: float = 0.5):
    """Horizontal flip of image [H,W,3] and label [H,W] together with probability `prob`."""
    flip = _uniform(seed, 0.0, 1.0) < prob
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, axis=[1]), lambda: label)
    return image, label


def random_scale(
    image,
    label,
    seed,
    *,
    scale_range: Sequence[float] = (0.5, 2.0),
    aspect_range: Sequence[float] = (0.9, 1.1),
):
    """Resize by s ~ U(scale_range) with aspect a ~ U(aspect_range) (reference RandomResize).

    Output size: w' = int(w * sqrt(a) * s), h' = int(h * s / sqrt(a)). The image is resampled
    bilinearly (half-pixel centres, no antialiasing), the label with nearest neighbour.
    Returns image [h',w',3] float32 and label [h',w'] int32.
    """
    scale_seed, aspect_seed = tf.unstack(_split(seed, 2))
    s = _uniform(scale_seed, scale_range[0], scale_range[1])
    a = _uniform(aspect_seed, aspect_range[0], aspect_range[1])
    hw = tf.cast(tf.shape(label)[:2], tf.float32)
    new_h = tf.maximum(tf.cast(tf.floor(hw[0] * s / tf.sqrt(a)), tf.int32), 1)
    new_w = tf.maximum(tf.cast(tf.floor(hw[1] * s * tf.sqrt(a)), tf.int32), 1)
    size = tf.stack([new_h, new_w])
    image = tf.image.resize(image, size, method="bilinear", antialias=False)
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    return image, label


def pad_to_size(image, label, size: Sequence[int], seed=None):
    """Pads image (value 0) and label (value -1) so both are at least `size` = (h, w).

    With a seed, the original content lands at a uniformly random offset inside the padded canvas
    (training, as the reference); without one it stays at the top-left (padding bottom/right, for
    evaluation). Dimensions already >= `size` are left alone.
    """
    hw = tf.shape(label)[:2]
    pad_h = tf.maximum(size[0] - hw[0], 0)
    pad_w = tf.maximum(size[1] - hw[1], 0)
    if seed is None:
        top = left = tf.constant(0, tf.int32)
    else:
        top_seed, left_seed = tf.unstack(_split(seed, 2))
        top = tf.random.stateless_uniform([], top_seed, 0, pad_h + 1, dtype=tf.int32)
        left = tf.random.stateless_uniform([], left_seed, 0, pad_w + 1, dtype=tf.int32)
    paddings = tf.stack([[top, pad_h - top], [left, pad_w - left]])
    image = tf.pad(image, tf.concat([paddings, [[0, 0]]], axis=0), constant_values=0)
    label = tf.pad(label, paddings, constant_values=IGNORE_LABEL)
    return image, label


def _crop_is_balanced(label_crop, cat_max_ratio: float) -> tf.Tensor:
    """True if the non-ignore pixels hold >= 2 classes and none covers >= cat_max_ratio."""
    valid = tf.boolean_mask(label_crop, tf.not_equal(label_crop, IGNORE_LABEL))
    counts = tf.cast(tf.unique_with_counts(valid).count, tf.float32)
    ratio = tf.math.divide_no_nan(tf.reduce_max(counts), tf.reduce_sum(counts))
    return tf.logical_and(tf.size(counts) >= 2, ratio < cat_max_ratio)


def random_crop_with_cat_max_ratio(
    image,
    label,
    seed,
    *,
    crop_size: Sequence[int],
    cat_max_ratio: float = 0.75,
    max_tries: int = 10,
):
    """Random crop of `crop_size` = (h, w) that avoids crops dominated by one class.

    Up to `max_tries` random crops are drawn in turn; the first whose non-ignore pixels contain
    >= 2 classes with the largest class fraction < `cat_max_ratio` is used, otherwise the last one
    (reference RandomCropImgLbl / mmseg RandomCrop). `cat_max_ratio >= 1` disables the check.
    Inputs must be at least `crop_size` (use `pad_to_size` first).
    Returns image [h,w,3] and label [h,w] with static shapes.
    """
    ch, cw = int(crop_size[0]), int(crop_size[1])
    hw = tf.shape(label)[:2]
    tf.debugging.assert_greater_equal(
        hw, tf.constant([ch, cw]), message="random_crop_with_cat_max_ratio: input smaller than crop"
    )
    seed = tf.cast(seed, tf.int64)

    def draw(i):
        y_seed, x_seed = tf.unstack(_split(tf.random.experimental.stateless_fold_in(seed, i), 2))
        y = tf.random.stateless_uniform([], y_seed, 0, hw[0] - ch + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], x_seed, 0, hw[1] - cw + 1, dtype=tf.int32)
        return y, x

    tries = 1 if cat_max_ratio >= 1.0 else max_tries

    def cond(i, found, y, x):
        return tf.logical_and(i < tries, tf.logical_not(found))

    def body(i, found, y, x):
        y, x = draw(i)
        found = _crop_is_balanced(label[y : y + ch, x : x + cw], cat_max_ratio)
        return i + 1, found, y, x

    zero = tf.constant(0, tf.int32)
    _, _, y, x = tf.while_loop(cond, body, (zero, tf.constant(False), zero, zero))
    image = tf.ensure_shape(image[y : y + ch, x : x + cw], [ch, cw, 3])
    label = tf.ensure_shape(label[y : y + ch, x : x + cw], [ch, cw])
    return image, label


def _grayscale(x):
    return tf.tensordot(x, tf.constant(_GRAY_WEIGHTS, x.dtype), axes=[[-1], [0]])[..., None]


def color_jitter(
    image,
    label,
    seed,
    *,
    brightness: Sequence[float] = (2 / 3, 1.5),
    contrast: Sequence[float] = (2 / 3, 1.5),
    saturation: Sequence[float] = (2 / 3, 1.5),
    hue: Sequence[float] = (-0.05, 0.05),
):
    """torchvision ColorJitter: brightness, contrast, saturation, hue in a random order.

    Factors are drawn uniformly from the given ranges, as torchvision does; each op works on
    [0,1] values and clips to [0,1]. The label is returned unchanged.
    """
    seeds = tf.unstack(_split(seed, 5))
    b = _uniform(seeds[0], *brightness)
    c = _uniform(seeds[1], *contrast)
    s = _uniform(seeds[2], *saturation)
    h = _uniform(seeds[3], *hue)
    order = tf.argsort(_uniform(seeds[4], 0.0, 1.0, shape=[4]))

    def clip(x):
        return tf.clip_by_value(x, 0.0, 1.0)

    ops = [
        lambda x: clip(x * b),
        lambda x: clip(x * c + tf.reduce_mean(_grayscale(x)) * (1.0 - c)),
        lambda x: clip(x * s + _grayscale(x) * (1.0 - s)),
        lambda x: clip(tf.image.adjust_hue(x, h)),
    ]
    x = image / 255.0
    for step in range(4):
        x = tf.switch_case(order[step], [lambda f=f, x=x: f(x) for f in ops])
    return x * 255.0, label


def normalize(image):
    """Raw 0..255 image -> (image / 255 - ImageNet mean) / ImageNet std, float32 [..., 3].

    The tf.data twin of `conventions.normalize` (numpy), with the same constants.
    """
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def apply_train_transforms(
    image,
    label,
    seed,
    *,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    aspect_range: Sequence[float] = (0.9, 1.1),
    cat_max_ratio: float = 0.75,
    jitter: bool = True,
):
    """The reference training chain for one example.

    image: uint8 or float32 [H,W,3] raw pixels; label: int32 [H,W]; seed: [2].
    Returns image float32 [h,w,3] normalised and label int32 [h,w], (h, w) = crop_size.
    """
    seeds = tf.unstack(_split(seed, 5))
    image = tf.cast(image, tf.float32)
    image, label = random_flip(image, label, seeds[0])
    if tuple(scale_range) != (1.0, 1.0) or tuple(aspect_range) != (1.0, 1.0):
        image, label = random_scale(
            image, label, seeds[1], scale_range=scale_range, aspect_range=aspect_range
        )
    image, label = pad_to_size(image, label, crop_size, seeds[2])
    image, label = random_crop_with_cat_max_ratio(
        image, label, seeds[3], crop_size=crop_size, cat_max_ratio=cat_max_ratio
    )
    if jitter:
        image, label = color_jitter(image, label, seeds[4])
    return normalize(image), label


def resize_for_eval(image, short_side: int | None = None, long_side: int | None = None):
    """Bilinear keep-ratio resize of image [H,W,3] (raw 0..255) -> float32 [h,w,3].

    (h, w) = `conventions.eval_resize_hw(H, W, short_side, long_side)` (short side, long side or
    mmseg's keep-ratio rule; neither: unchanged). Half-pixel centres, no antialiasing. Works
    eagerly (numpy or tensor input, as predict mode calls it) and inside tf.data.
    """
    image = tf.cast(image, tf.float32)
    if not short_side and not long_side:
        return image

    def target(hw):
        return np.array(eval_resize_hw(hw[0], hw[1], short_side, long_side), np.int32)

    size = tf.numpy_function(target, [tf.shape(image)[:2]], tf.int32, stateful=False)
    size = tf.ensure_shape(size, [2])
    return tf.image.resize(image, size, method="bilinear", antialias=False)


__all__ = [
    "apply_train_transforms",
    "color_jitter",
    "normalize",
    "pad_to_size",
    "random_crop_with_cat_max_ratio",
    "random_flip",
    "random_scale",
    "resize_for_eval",
]
