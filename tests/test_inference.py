"""Inference protocols against numpy restatements: mmseg sliding windows, bilinear resizing,
multi-scale + flip aggregation; plus whole == one-window slide, flip-equivariance and compiles."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msc_seg import config_lib, evaluate, experiment, inference
from msc_seg.inference import Protocol
from msc_seg.models.outputs import SegOutputs
from msc_seg.train_state import ModelDef, TrainState, split_model

PAD = np.array([-2.1, -2.0, -1.8], np.float32)  # a normalised "black", as the eval pipeline pads


# ---------------------------------------------------------------------------------------------
# Test "models": images [b,h,w,3] -> logits [b,h,w,K].


def position_model(x, xp=jnp):
    """Per pixel, but depends on the position inside the window: shows window placement."""
    b, h, w, _ = x.shape
    yy = xp.broadcast_to(xp.arange(h, dtype=np.float32)[None, :, None], (b, h, w))
    xx = xp.broadcast_to(xp.arange(w, dtype=np.float32)[None, None, :], (b, h, w))
    return xp.stack(
        [
            2 * x[..., 0] + 0.01 * yy,
            x[..., 1] - 0.02 * xx,
            xp.sin(x[..., 2]),
            x[..., 0] * x[..., 1],
        ],
        axis=-1,
    )


def make_conv_model(seed=0, symmetric=False, global_context=True):
    """3x3 conv (+ the image mean: a context-dependent model), zero SAME padding."""
    kernel = np.random.default_rng(seed).normal(size=(3, 3, 3, 5)).astype(np.float32)
    if symmetric:  # mirror-symmetric along the width: a flip-equivariant conv
        kernel = (kernel + kernel[:, ::-1]) / 2

    def model(x):
        y = jax.lax.conv_general_dilated(
            x, jnp.asarray(kernel), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if global_context:
            y = y + jnp.mean(x, axis=(1, 2), keepdims=True)[..., :1]
        return y

    return model


def make_pixel_mlp(seed=0):
    """Per-pixel 2-layer MLP: equivariant to any spatial permutation, flips included."""
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    return lambda x: jnp.tanh(x @ w1) @ w2


def padded_batch(hws, shape, seed=0):
    """Random images valid in hws, padded with PAD to `shape` -> (images [B,H,W,3], hw [B,2])."""
    rng = np.random.default_rng(seed)
    images = np.broadcast_to(PAD, (len(hws), *shape, 3)).copy()
    for b, (h, w) in enumerate(hws):
        images[b, :h, :w] = rng.normal(size=(h, w, 3))
    return jnp.asarray(images), jnp.asarray(np.array(hws, np.int32))


def infer(model, images, hw, protocol, **kwargs):
    """inference.infer_logits compiled once (eager dispatch of its many small ops is slower)."""
    out_hw = kwargs.pop("out_hw", None)
    fn = jax.jit(lambda x, h, o: inference.infer_logits(model, x, h, protocol, out_hw=o, **kwargs))
    return np.asarray(fn(images, hw, out_hw))


# ---------------------------------------------------------------------------------------------
# Numpy restatements.


def np_bilinear(x, out_h, out_w):
    """PyTorch F.interpolate(mode='bilinear', align_corners=False) of x [h,w,C], no antialias."""

    def taps(n_in, n_out):
        c = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(c).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (c - i0)

    y0, y1, fy = taps(x.shape[0], out_h)
    x0, x1, fx = taps(x.shape[1], out_w)
    rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def np_mmseg_slide(img, model, window, stride):
    """mmseg EncoderDecoder.slide_inference on one unpadded image [h,w,C] (numpy)."""
    (h_crop, w_crop), (h_stride, w_stride) = window, stride
    h_img, w_img = img.shape[:2]
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds, count = None, np.zeros((h_img, w_img, 1))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            out = model(img[None, y1:y2, x1:x2], xp=np)[0]
            if preds is None:
                preds = np.zeros((h_img, w_img, out.shape[-1]))
            preds[y1:y2, x1:x2] += out
            count[y1:y2, x1:x2] += 1
    assert (count > 0).all()
    return preds / count


def np_canvas(shape, scale, multiple=32):
    return tuple(int(math.ceil(n * scale / multiple - 1e-9) * multiple) for n in shape)


def np_multiscale_flip(model, image, canvas_shape, scales, average, out_hw=None):
    """Reference TTA for one image [h,w,3]: per scale resize, pad, predict (+ flip), crop the
    valid logits, resize them to out_hw (default (h, w)), average logits or softmax."""
    h, w = image.shape[:2]
    out_h, out_w = out_hw or (h, w)
    total = []
    for s in scales:
        hs, ws = int(np.floor(h * s + 0.5)), int(np.floor(w * s + 0.5))
        resized = np_bilinear(image, hs, ws)
        for flip in (False, True):
            src = resized[:, ::-1] if flip else resized
            canvas = np.broadcast_to(PAD, (*np_canvas(canvas_shape, s), 3)).copy()
            canvas[:hs, :ws] = src
            logits = np.asarray(model(jnp.asarray(canvas[None])))[0, :hs, :ws]
            logits = logits[:, ::-1] if flip else logits
            logits = np_bilinear(logits.astype(np.float64), out_h, out_w)
            if average == "probs":
                e = np.exp(logits - logits.max(-1, keepdims=True))
                logits = e / e.sum(-1, keepdims=True)
            total.append(logits)
    return np.mean(total, axis=0)


# ---------------------------------------------------------------------------------------------
# Tests.


def test_slide_with_one_window_covering_the_canvas_equals_whole_image():
    model = make_conv_model()
    images, hw = padded_batch([(64, 96), (40, 70), (17, 9)], (64, 96))
    whole = inference.whole_logits(model, images)
    slide = jax.jit(lambda x, h: inference.slide_logits(model, x, h, (64, 96), (32, 48)))(
        images, hw
    )
    np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), rtol=1e-6, atol=1e-6)
    # The same through the protocol entry point (scale 1, no flip: no resize anywhere).
    out = infer(model, images, hw, Protocol("slide", (64, 96), (64, 96)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(whole), rtol=1e-6, atol=1e-6)


def test_slide_matches_numpy_mmseg_slide_inference_with_overlapping_windows():
    hws = [(64, 80), (45, 61), (20, 30), (33, 48), (64, 49)]
    images, hw = padded_batch(hws, (64, 80), seed=1)
    window, stride = (32, 48), (20, 24)
    slide = jax.jit(lambda x, h: inference.slide_logits(position_model, x, h, window, stride))
    out = np.asarray(slide(images, hw))
    for b, (h, w) in enumerate(hws):
        expected = np_mmseg_slide(np.asarray(images[b, :h, :w]), position_model, window, stride)
        np.testing.assert_allclose(out[b, :h, :w], expected, rtol=1e-5, atol=1e-5)
    # Sanity of the restatement's premise: overlaps really change the result here.
    assert not np.allclose(out[0, :64, :80], np.asarray(position_model(images[:1]))[0])


def test_flip_tta_of_a_flip_equivariant_model_equals_no_tta():
    mlp = make_pixel_mlp()
    images, hw = padded_batch([(64, 64), (40, 50), (23, 61)], (64, 64), seed=2)
    for protocol in (Protocol("whole"), Protocol("slide", (32, 32), (24, 24))):
        plain = infer(mlp, images, hw, protocol)
        flipped = infer(
            mlp, images, hw, Protocol(protocol.mode, protocol.window, protocol.stride, flip=True)
        )
        np.testing.assert_allclose(np.asarray(flipped), np.asarray(plain), rtol=1e-5, atol=1e-5)
    # A mirror-symmetric convolution over a fully valid canvas is flip-equivariant too.
    conv = make_conv_model(symmetric=True, global_context=True)
    images, hw = padded_batch([(32, 64), (32, 64)], (32, 64), seed=3)
    plain = infer(conv, images, hw, Protocol())
    flipped = infer(conv, images, hw, Protocol(flip=True))
    np.testing.assert_allclose(np.asarray(flipped), np.asarray(plain), rtol=1e-5, atol=1e-5)
    # ...and a non-equivariant model is not (the flip really happens).
    conv = make_conv_model(symmetric=False)
    assert not np.allclose(
        infer(conv, images, hw, Protocol(flip=True)),
        infer(conv, images, hw, Protocol()),
        atol=1e-3,
    )


def test_flip_valid_mirrors_the_valid_columns_and_keeps_the_padding():
    images, hw = padded_batch([(4, 6), (4, 3)], (4, 8), seed=4)
    flipped = np.asarray(inference.flip_valid(images, hw[:, 1]))
    x = np.asarray(images)
    np.testing.assert_array_equal(flipped[0, :, :6], x[0, :, 5::-1])
    np.testing.assert_array_equal(flipped[1, :, :3], x[1, :, 2::-1])
    np.testing.assert_array_equal(flipped[0, :, 6:], x[0, :, 6:])
    np.testing.assert_array_equal(flipped[1, :, 3:], x[1, :, 3:])
    np.testing.assert_array_equal(np.asarray(inference.flip_valid(flipped, hw[:, 1])), x)


def test_resize_back_at_scale_one_is_exact():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 32, 48, 7)).astype(np.float32)
    logits[0, 20:] = 1e30  # padding with huge values never leaks into the valid region
    hw = jnp.asarray([[20, 48], [32, 33], [1, 1]], jnp.int32)
    resize = jax.jit(lambda x, h: inference.resize_logits_to_labels(x, h, (32, 48), h))
    out = np.asarray(resize(jnp.asarray(logits), hw))
    for b, (h, w) in enumerate(np.asarray(hw)):
        np.testing.assert_array_equal(out[b, :h, :w], logits[b, :h, :w])
        assert not out[b, h:].any() and not out[b, :, w:].any()
    # Through the protocol: scale 1 onto an explicit label grid gives the model's logits exactly.
    images, hw = padded_batch([(32, 48), (21, 30)], (32, 48), seed=6)
    model = make_conv_model()
    out = infer(model, images, hw, Protocol(), out_shape=(32, 48), out_hw=hw)
    expected = np.asarray(model(images))
    np.testing.assert_array_equal(np.asarray(out)[0], expected[0])
    np.testing.assert_array_equal(np.asarray(out)[1, :21, :30], expected[1, :21, :30])


def test_resize_valid_region_matches_numpy_bilinear_and_never_reads_padding():
    rng = np.random.default_rng(7)
    x = np.full((2, 24, 40, 3), np.nan, np.float32)  # NaN padding: any read would show
    x[0, :17, :29] = rng.normal(size=(17, 29, 3))
    x[1, :24, :11] = rng.normal(size=(24, 11, 3))
    in_hw = jnp.asarray([[17, 29], [24, 11]], jnp.int32)
    out_hw = jnp.asarray([[40, 13], [9, 35]], jnp.int32)  # up and down in each axis
    resize = jax.jit(lambda *a: inference.resize_valid_region(*a, (48, 40), out_hw, -3.0))
    out = np.asarray(resize(jnp.asarray(x), in_hw))
    for b in range(2):
        (h, w), (oh, ow) = np.asarray(in_hw)[b], np.asarray(out_hw)[b]
        expected = np_bilinear(x[b, :h, :w].astype(np.float64), oh, ow)
        np.testing.assert_allclose(out[b, :oh, :ow], expected, rtol=1e-5, atol=1e-5)
        assert np.all(out[b, oh:] == -3.0) and np.all(out[b, :, ow:] == -3.0)


def test_multi_scale_flip_aggregation_matches_a_numpy_restatement():
    model = make_conv_model(seed=8)
    images, hw = padded_batch([(45, 70)], (64, 96), seed=8)
    image = np.asarray(images[0, :45, :70])
    scales = (0.5, 1.0, 1.75)
    # Logits averaged, back onto the input grid.
    out = infer(model, images, hw, Protocol(scales=scales, flip=True), pad_value=PAD)
    expected = np_multiscale_flip(model, image, (64, 96), scales, "logits")
    np.testing.assert_allclose(out[0, :45, :70], expected, rtol=1e-4, atol=1e-4)
    # Probabilities averaged, onto a separate label grid (as under resize_short_side).
    protocol = Protocol(scales=scales, flip=True, average="probs")
    label_hw = jnp.asarray([[60, 77]], jnp.int32)
    out = infer(model, images, hw, protocol, pad_value=PAD, out_shape=(80, 80), out_hw=label_hw)
    expected = np_multiscale_flip(model, image, (64, 96), scales, "probs", out_hw=(60, 77))
    assert out.shape == (1, 80, 80, 5)
    np.testing.assert_allclose(out[0, :60, :77], expected, rtol=1e-4, atol=1e-4)


def test_scaled_canvas_is_a_static_multiple_of_32_at_least_the_window():
    assert inference.scaled_canvas_shape((512, 2048), 0.75, Protocol()) == (384, 1536)
    assert inference.scaled_canvas_shape((520, 520), 1.0, Protocol()) == (520, 520)
    assert inference.scaled_canvas_shape((520, 520), 1.25, Protocol()) == (672, 672)
    assert inference.scaled_canvas_shape((100, 64), 0.5, Protocol("slide", (64, 64), (32, 32))) == (
        64,
        64,
    )
    assert inference.scaled_canvas_shape((64, 96), 1.75, Protocol()) == (128, 192)


def test_one_compile_per_input_shape():
    protocol = Protocol("slide", (32, 32), (20, 20), scales=(0.75, 1.0, 1.25), flip=True)
    fn = jax.jit(
        lambda images, hw: inference.infer_logits(
            make_pixel_mlp(), images, hw, protocol, pad_value=PAD
        )
    )
    a = padded_batch([(64, 64), (10, 20)], (64, 64), seed=9)
    b = padded_batch([(33, 47), (64, 1)], (64, 64), seed=10)
    fn(*a).block_until_ready()
    fn(*b).block_until_ready()
    assert fn._cache_size() == 1
    fn(*padded_batch([(30, 30)], (64, 64))).block_until_ready()  # another batch shape
    assert fn._cache_size() == 2


def test_protocol_rejects_bad_values_naming_them():
    with pytest.raises(ValueError, match="mode"):
        Protocol(mode="tiles")
    with pytest.raises(ValueError, match="stride"):
        Protocol("slide", (32, 32), (40, 32))
    with pytest.raises(ValueError, match="scales"):
        Protocol(scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="larger than the canvas"):
        inference.slide_logits(
            make_pixel_mlp(), *padded_batch([(8, 8)], (16, 16)), (32, 32), (8, 8)
        )


# ---------------------------------------------------------------------------------------------
# The `eval` config section and the eval step that uses it.


def eval_config(**overrides):
    """The base config on the demo dataset (128x128 images); overrides of `eval.protocol` fields,
    or of `eval.data` ones as "data.FIELD"."""
    c = config_lib.base_config()
    c.dataset.train.crop_size = (128, 128)
    c.eval.data.pad_shape = (128, 128)
    for k, v in overrides.items():
        section, _, field = k.rpartition(".")
        c.eval[section or "protocol"][field] = v
    return c


def test_default_eval_config_is_whole_image_scale_one_without_flip():
    protocol = experiment.build_protocol(config_lib.base_config())
    assert protocol == Protocol(mode="whole", window=(512, 512), stride=(341, 341))
    assert protocol.scales == (1.0,) and not protocol.flip
    c = eval_config(mode="slide", window=(32, 64), stride=(16, 48), scales=(0.5, 1.0), flip=True)
    experiment.validate(c, config_lib.RuntimeFacts(8))
    assert experiment.build_protocol(c) == Protocol(
        "slide", (32, 64), (16, 48), (0.5, 1.0), True, "logits"
    )


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"mode": "tiles"}, "eval.protocol.mode"),
        ({"average": "votes"}, "eval.protocol.average"),
        ({"scales": ()}, "eval.protocol.scales"),
        ({"scales": (1.0, -0.5)}, "eval.protocol.scales"),
        ({"data.resize_long_side": -1}, "eval.data.resize_long_side"),
        ({"mode": "slide", "window": (48, 64)}, "eval.protocol.window"),  # not a multiple of 32
        ({"mode": "slide", "window": (32, 32), "stride": (40, 32)}, "eval.protocol.stride"),
        ({"mode": "slide", "window": (32, 32), "stride": (0, 32)}, "eval.protocol.stride"),
        ({"mode": "slide", "window": (160, 32), "stride": (32, 32)}, "eval.protocol.window"),
    ],
)
def test_bad_eval_protocol_fields_are_config_errors_naming_the_field(overrides, field):
    with pytest.raises(config_lib.ConfigError, match=f"`{field}`"):
        experiment.validate(eval_config(**overrides), config_lib.RuntimeFacts(8))


class TinySegmentor(nnx.Module):
    """A 3x3 conv "segmentor" with the segmentors' call signature."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)

    def __call__(self, x, *, train=False):
        return SegOutputs(self.conv(x), None, ())


def tiny_model_state():
    graphdef, params, batch_stats, rng = split_model(TinySegmentor(nnx.Rngs(0)))
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=()
    )
    return ModelDef(graphdef, rng), state


def test_eval_step_scores_the_protocols_prediction_on_the_original_label_grid():
    model_def, state = tiny_model_state()
    model = model_def.apply(state)
    images, hw = padded_batch([(48, 40), (64, 64)], (64, 64), seed=11)
    label_hw = np.array([[60, 50], [64, 64]], np.int32)  # image 0 was resized 60x50 -> 48x40
    rng = np.random.default_rng(11)
    labels = np.full((2, 64, 64), -1, np.int32)
    labels[0, :60, :50] = rng.integers(0, 4, (60, 50))
    labels[1] = rng.integers(0, 4, (64, 64))
    batch = {"image": images, "image_hw": hw, "label": jnp.asarray(labels), "label_hw": label_hw}
    whole = evaluate.make_eval_step(model_def, 4, resize_to_labels=True)
    cm, pred = jax.jit(whole)(state, batch)
    logits = np.asarray(model(images).logits)
    expected = [np.argmax(np_bilinear(logits[0, :48, :40], 60, 50), -1), np.argmax(logits[1], -1)]
    np.testing.assert_array_equal(np.asarray(pred)[0, :60, :50], expected[0])
    np.testing.assert_array_equal(np.asarray(pred)[1], expected[1])
    expected_cm = np.zeros((4, 4), np.int64)
    for b, (h, w) in enumerate(label_hw):
        np.add.at(expected_cm, (labels[b, :h, :w].ravel(), expected[b].ravel()), 1)
    np.testing.assert_array_equal(np.asarray(cm), expected_cm)
    # One window covering the canvas is the whole image, through the eval step too.
    slide = evaluate.make_eval_step(
        model_def, 4, resize_to_labels=True, protocol=Protocol("slide", (64, 64), (32, 32))
    )
    cm_slide, _ = jax.jit(slide)(state, batch)
    np.testing.assert_array_equal(np.asarray(cm_slide), np.asarray(cm))
