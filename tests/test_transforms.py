"""Tests of msc_seg.data.transforms: alignment, label values, crop policy, determinism."""

import numpy as np
import pytest
import tensorflow as tf

from msc_seg.data import conventions, transforms
from msc_seg.data.conventions import IGNORE_LABEL

CROP = (40, 48)


def _seed(i):
    return tf.constant([17, i], tf.int64)


def _encoded_scene(h=72, w=96, block=12, seed=0):
    """Label of constant blocks (classes 0..5 and some ignore) and an image encoding it.

    Every channel of the image holds 30 * (label + 1), so ignore (-1) is 0 like the image padding.
    """
    rng = np.random.default_rng(seed)
    blocks = rng.integers(-1, 6, size=(h // block, w // block))
    label = np.kron(blocks, np.ones((block, block), np.int64)).astype(np.int32)
    image = np.repeat((30.0 * (label + 1))[..., None], 3, axis=-1).astype(np.float32)
    return image, label


def _geometric_chain(image, label, seed, scale_range=(0.5, 2.0)):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    image, label = transforms.random_flip(image, label, seeds[0])
    image, label = transforms.random_scale(image, label, seeds[1], scale_range=scale_range)
    image, label = transforms.pad_to_size(image, label, CROP, seeds[2])
    return transforms.random_crop_with_cat_max_ratio(image, label, seeds[3], crop_size=CROP)


def _interior(label, radius):
    """Pixels whose (2r+1)^2 neighbourhood has one label value.

    Bilinear resampling by a factor f mixes source pixels within about max(1, f) output pixels of
    a label edge, so with radius >= ceil(f) the image value must equal the label's code exactly.
    """
    # Pixels near the crop's edge are left out: what lies beyond the edge is unknown.
    padded = np.pad(label, radius, constant_values=-99)
    same = np.ones(label.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


# (scale range, interior radius): upscaling by up to 2 * sqrt(1.1) blurs up to 3 pixels.
SCALE_CASES = [((0.5, 1.0), 1), ((1.0, 2.0), 3)]


def _assert_aligned(image_out, label_out, label_in, radius):
    image_out, label_out = np.asarray(image_out), np.asarray(label_out)
    assert set(np.unique(label_out)) <= set(np.unique(label_in)) | {IGNORE_LABEL}
    inside = _interior(label_out, radius)
    assert inside.mean() > 0.15  # the check below must cover a good part of the crop
    expected = 30.0 * (label_out + 1)
    np.testing.assert_allclose(image_out[..., 0][inside], expected[inside], atol=0.5)


@pytest.mark.parametrize("scale_range,radius", SCALE_CASES)
def test_geometric_transforms_keep_image_and_label_aligned_eagerly(scale_range, radius):
    image, label = _encoded_scene()
    for i in range(6):
        image_out, label_out = _geometric_chain(image, label, _seed(i), scale_range)
        assert image_out.shape == (*CROP, 3) and label_out.shape == CROP
        assert label_out.dtype == tf.int32
        _assert_aligned(image_out, label_out, label, radius)


@pytest.mark.parametrize("scale_range,radius", SCALE_CASES)
def test_geometric_transforms_keep_image_and_label_aligned_inside_tf_data_map(scale_range, radius):
    image, label = _encoded_scene(seed=1)
    ds = tf.data.Dataset.range(6).map(
        lambda i: _geometric_chain(
            image, label, tf.stack([tf.constant(17, tf.int64), i]), scale_range
        ),
        num_parallel_calls=2,
    )
    count = 0
    for image_out, label_out in ds:
        _assert_aligned(image_out, label_out, label, radius)
        count += 1
    assert count == 6


def test_random_scale_never_interpolates_label_values_when_downscaling():
    image, label = _encoded_scene(seed=2)
    for i in range(4):
        _, label_out = transforms.random_scale(image, label, _seed(i), scale_range=(0.3, 0.4))
        assert set(np.unique(label_out.numpy())) <= set(np.unique(label))


def test_random_scale_output_size_follows_reference_formula():
    image, label = _encoded_scene()
    s, a = 1.3, 1.08
    image_out, label_out = transforms.random_scale(
        image, label, _seed(0), scale_range=(s, s), aspect_range=(a, a)
    )
    expected = (int(72 * s / np.sqrt(a)), int(96 * np.sqrt(a) * s))
    assert tuple(label_out.shape) == expected
    assert tuple(image_out.shape) == (*expected, 3)


def test_random_flip_with_probability_one_mirrors_both():
    image, label = _encoded_scene()
    image_out, label_out = transforms.random_flip(image, label, _seed(0), prob=1.0)
    np.testing.assert_array_equal(label_out.numpy(), label[:, ::-1])
    np.testing.assert_array_equal(image_out.numpy(), image[:, ::-1])


def test_pad_to_size_eval_pads_bottom_right_with_zero_and_ignore():
    image, label = _encoded_scene(h=16, w=24, block=4)
    image_out, label_out = transforms.pad_to_size(image, label, (20, 30))
    np.testing.assert_array_equal(label_out[:16, :24].numpy(), label)
    assert np.all(label_out.numpy()[16:] == IGNORE_LABEL)
    assert np.all(label_out.numpy()[:, 24:] == IGNORE_LABEL)
    assert np.all(image_out.numpy()[16:] == 0) and np.all(image_out.numpy()[:, 24:] == 0)


def test_pad_to_size_train_places_content_at_random_offsets_and_keeps_large_inputs():
    image, label = _encoded_scene(h=16, w=24, block=4)
    offsets = set()
    for i in range(6):
        _, label_out = transforms.pad_to_size(image, label, (32, 40), _seed(i))
        rows = np.where((label_out.numpy() != IGNORE_LABEL).any(1))[0]
        offsets.add(int(rows[0]))
        assert (label_out.numpy() != IGNORE_LABEL).sum() == (label != IGNORE_LABEL).sum()
    assert len(offsets) > 1
    image_out, label_out = transforms.pad_to_size(image, label, (8, 8), _seed(0))
    assert label_out.shape == label.shape and image_out.shape == image.shape


def _two_region_label():
    """32x32 label: left half class 0, right half class 1."""
    label = np.zeros((32, 32), np.int32)
    label[:, 16:] = 1
    return label


def _max_class_fraction(label):
    values, counts = np.unique(label[label != IGNORE_LABEL], return_counts=True)
    return (counts.max() / counts.sum()) if len(values) >= 2 else 1.0


def test_crop_with_cat_max_ratio_prefers_balanced_crops():
    label = _two_region_label()
    image = np.zeros((32, 32, 3), np.float32)
    checked, unchecked = [], []
    for i in range(20):
        _, crop = transforms.random_crop_with_cat_max_ratio(
            image, label, _seed(i), crop_size=(16, 16), cat_max_ratio=0.75
        )
        checked.append(_max_class_fraction(crop.numpy()))
        _, crop = transforms.random_crop_with_cat_max_ratio(
            image, label, _seed(i), crop_size=(16, 16), cat_max_ratio=1.0
        )
        unchecked.append(_max_class_fraction(crop.numpy()))
    assert max(checked) < 0.75
    assert max(unchecked) >= 0.75  # without the check some crops are dominated by one class


def test_crop_with_cat_max_ratio_falls_back_when_no_crop_qualifies():
    label = np.full((24, 24), IGNORE_LABEL, np.int32)
    label[:4, :4] = 2
    image = np.ones((24, 24, 3), np.float32)
    image_out, label_out = transforms.random_crop_with_cat_max_ratio(
        image, label, _seed(0), crop_size=(12, 12), cat_max_ratio=0.75
    )
    assert image_out.shape == (12, 12, 3) and label_out.shape == (12, 12)


def test_train_transforms_are_deterministic_given_seed():
    image, label = _encoded_scene(seed=3)
    kwargs = dict(crop_size=CROP)
    a = transforms.apply_train_transforms(image, label, _seed(5), **kwargs)
    b = transforms.apply_train_transforms(image, label, _seed(5), **kwargs)
    c = transforms.apply_train_transforms(image, label, _seed(6), **kwargs)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_train_transforms_output_normalised_crop_with_original_label_values():
    image, label = _encoded_scene(seed=4)
    image_out, label_out = transforms.apply_train_transforms(
        image.astype(np.uint8), label, _seed(0), crop_size=CROP
    )
    assert image_out.dtype == tf.float32 and image_out.shape == (*CROP, 3)
    assert set(np.unique(label_out.numpy())) <= set(np.unique(label)) | {IGNORE_LABEL}
    lo = (0 - np.array(conventions.IMAGENET_MEAN)) / np.array(conventions.IMAGENET_STD)
    hi = (1 - np.array(conventions.IMAGENET_MEAN)) / np.array(conventions.IMAGENET_STD)
    assert np.all(image_out.numpy() >= lo - 1e-5) and np.all(image_out.numpy() <= hi + 1e-5)


def test_color_jitter_changes_colours_only_and_identity_ranges_are_identity():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    label = rng.integers(-1, 4, (16, 16)).astype(np.int32)
    out, label_out = transforms.color_jitter(image, label, _seed(0))
    np.testing.assert_array_equal(label_out, label)
    assert not np.allclose(out.numpy(), image, atol=1.0)
    assert out.numpy().min() >= 0 and out.numpy().max() <= 255.0 + 1e-3
    same, _ = transforms.color_jitter(
        image, label, _seed(0), brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(0, 0)
    )
    np.testing.assert_allclose(same.numpy(), image, atol=0.05)


@pytest.mark.parametrize("factor", [0.7, 1.4])
def test_color_jitter_brightness_scales_pixels_like_torchvision(factor):
    image = np.full((4, 4, 3), 100.0, np.float32)
    out, _ = transforms.color_jitter(
        image,
        np.zeros((4, 4), np.int32),
        _seed(0),
        brightness=(factor, factor),
        contrast=(1, 1),
        saturation=(1, 1),
        hue=(0, 0),
    )
    np.testing.assert_allclose(out.numpy(), 100.0 * factor, rtol=1e-4)


def test_normalize_uses_imagenet_statistics():
    out = transforms.normalize(tf.constant([[[255.0, 0.0, 127.5]]]))
    expected = (np.array([1.0, 0.0, 0.5]) - conventions.IMAGENET_MEAN) / conventions.IMAGENET_STD
    np.testing.assert_allclose(out.numpy()[0, 0], expected, rtol=1e-5)


def test_numpy_and_tf_normalisation_agree_and_pad_value_is_normalised_black():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    np.testing.assert_allclose(
        conventions.normalize(image), transforms.normalize(image).numpy(), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        conventions.PAD_VALUE, conventions.normalize(np.zeros(3, np.uint8)), rtol=1e-6
    )
    back = conventions.denormalize(conventions.normalize(image))  # truncates: off by <= 1
    assert back.dtype == np.uint8 and np.abs(back.astype(int) - image).max() <= 1


def test_resize_for_eval_short_side_keeps_aspect():
    out = transforms.resize_for_eval(tf.zeros([100, 150, 3]), 50)
    assert tuple(out.shape) == (50, 75, 3)
    out = transforms.resize_for_eval(tf.zeros([90, 60, 3]), 40)
    assert tuple(out.shape) == (60, 40, 3)


@pytest.mark.parametrize(
    "hw, short, long, expected",
    [
        ((100, 150), None, None, (100, 150)),  # neither: unchanged
        ((100, 150), 50, None, (50, 75)),  # short side -> 50
        ((150, 100), None, 300, (300, 200)),  # long side -> 300
        ((512, 1024), 512, 2048, (512, 1024)),  # both: short bound binds, size kept
        ((500, 1500), 512, 1024, (341, 1024)),  # both: long bound binds (mmseg keep-ratio)
        ((3, 5), 5, None, (5, 8)),  # 8.33 rounds to 8
        ((2, 5), 3, None, (3, 8)),  # 7.5 rounds half up (mmcv), not to even
    ],
)
def test_eval_resize_rule(hw, short, long, expected):
    assert conventions.eval_resize_hw(*hw, short, long) == expected
    out = transforms.resize_for_eval(tf.zeros([*hw, 3]), short, long)  # the TF path uses it
    assert tuple(out.shape) == (*expected, 3)


def test_resize_for_eval_inside_tf_data_matches_the_rule():
    ds = tf.data.Dataset.from_tensor_slices(tf.zeros([2, 90, 60, 3], tf.uint8))
    ds = ds.map(lambda x: tf.shape(transforms.resize_for_eval(x, 40, 50)))
    assert [tuple(s) for s in ds.as_numpy_iterator()] == [(50, 33, 3)] * 2
    assert conventions.eval_resize_hw(90, 60, 40, 50) == (50, 33)
