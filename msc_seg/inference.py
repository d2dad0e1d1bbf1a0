"""Fixed-shape inference protocols: whole image, sliding window, multi-scale + flip, resize back.

Every function here is pure and jit-able with one compile per input shape: images arrive padded
bottom/right to a fixed canvas [B,H,W,3], and each example's valid size `image_hw[b] = (h, w)` is a
traced value, never a shape. The model is an `apply_fn(images [b,h,w,3]) -> logits [b,h,w,K]` (the
segmentor's logits at the input resolution), so these functions know nothing of configs or models.

Conventions (docs/METHOD.md §12, mmsegmentation):
  * sliding windows follow mmseg's `slide_inference`: `n = max(ceil((size - window) / stride), 0)
    + 1` windows per axis, the last one aligned to the image end, logits averaged per pixel over
    the windows that cover it;
  * resizing is bilinear with half-pixel centres and edge clamping (PyTorch `align_corners=False`,
    `tf.image.resize`), without antialiasing, and only ever reads an example's valid region;
  * flipping is horizontal and mirrors the valid region only (padding stays bottom/right);
  * test-time augmentations average logits (the reference's ADE20K TTA) or softmax
    probabilities (mmseg's `aug_test`), chosen by `Protocol.average`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from msc_seg.errors import ArgumentError

ApplyFn = Callable[[jax.Array], jax.Array]  # images [b,h,w,3] -> logits [b,h,w,K]

MODES = ("whole", "slide")
AVERAGES = ("logits", "probs")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How an image batch becomes logits; static (hashable), part of the compiled program.

    mode: "whole" (the model sees the whole padded canvas) or "slide" (windows of `window`
      (H, W) every `stride` (H, W), mmseg placement).
    scales: test-time scale factors applied to the (already resized) input image; 1.0 = as is.
    flip: also predict on the horizontally flipped image and flip the result back.
    average: "logits" (mean of logits over scales x flips) or "probs" (mean of softmax).
    canvas_multiple: a rescaled canvas is rounded up to a multiple of this (the model stride).
    """

    mode: str = "whole"
    window: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    average: str = "logits"
    canvas_multiple: int = 32

    def __post_init__(self):
        if self.mode not in MODES:
            raise ArgumentError("mode", self.mode, f"must be one of {list(MODES)}")
        if self.average not in AVERAGES:
            raise ArgumentError("average", self.average, f"must be one of {list(AVERAGES)}")
        if not isinstance(self.flip, bool):
            raise ArgumentError("flip", self.flip, "must be True or False")
        if not self.scales or min(self.scales) <= 0:
            raise ArgumentError(
                "scales", self.scales, "must be a non-empty tuple of positive factors"
            )
        if self.mode != "slide":
            return
        if len(self.window) != 2 or any(w <= 0 or w % self.canvas_multiple for w in self.window):
            raise ArgumentError(
                "window",
                self.window,
                f"must be (height, width), positive multiples of {self.canvas_multiple}",
            )
        if len(self.stride) != 2 or not all(
            0 < s <= w for s, w in zip(self.stride, self.window, strict=True)
        ):
            raise ArgumentError(
                "stride",
                self.stride,
                f"must be (height, width) with 0 < stride <= window {tuple(self.window)} "
                "(a larger stride would leave pixels without a window)",
            )


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def num_windows(size: int, window: int, stride: int) -> int:
    """mmseg's window count along one axis of static length `size`."""
    return max(size - window + stride - 1, 0) // stride + 1


def _num_windows_traced(size: jax.Array, window: int, stride: int) -> jax.Array:
    return jnp.maximum(size - window + stride - 1, 0) // stride + 1


def scaled_canvas_shape(shape: Sequence[int], scale: float, protocol: Protocol) -> tuple[int, int]:
    """Static (H, W) of the canvas holding a `shape` canvas rescaled by `scale`.

    ceil(shape * scale) rounded up to `canvas_multiple` (scale 1 keeps the canvas as it is); for
    sliding windows at least the window.
    """
    out = []
    for i, n in enumerate(shape):
        size = int(n)
        if scale != 1.0:
            size = round_up(math.ceil(round(n * scale, 6)), protocol.canvas_multiple)
        if protocol.mode == "slide":
            size = max(size, protocol.window[i])
        out.append(size)
    return out[0], out[1]


def scaled_hw(hw: jax.Array, scale: float) -> jax.Array:
    """int32 [B,2] valid sizes rescaled by `scale`, rounded half up (mmseg's keep-ratio resize)."""
    return jnp.floor(hw.astype(jnp.float32) * scale + 0.5).astype(jnp.int32)


def _bilinear_taps(in_size: jax.Array, out_size: jax.Array, length: int):
    """Source rows of `length` output rows mapping [0, out_size) onto [0, in_size) (traced sizes).

    Returns (i0, i1 int32 [length], frac float32 [length]): out[o] = (1-frac) in[i0] + frac in[i1],
    half-pixel centres, source coordinates clamped into the valid input (PyTorch bilinear,
    align_corners=False). Rows o >= out_size get clamped, meaningless taps.
    """
    in_size = jnp.maximum(in_size, 1).astype(jnp.float32)
    out_size = jnp.maximum(out_size, 1).astype(jnp.float32)
    coord = (jnp.arange(length, dtype=jnp.float32) + 0.5) * (in_size / out_size) - 0.5
    coord = jnp.clip(coord, 0.0, in_size - 1.0)
    i0 = jnp.floor(coord)
    i1 = jnp.minimum(i0 + 1.0, in_size - 1.0)
    return i0.astype(jnp.int32), i1.astype(jnp.int32), coord - i0


def _resize_one(x, in_hw, out_shape, out_hw, fill):
    """x [H,W,C] valid in in_hw -> [*out_shape,C] valid in out_hw, `fill` elsewhere."""
    y0, y1, fy = _bilinear_taps(in_hw[0], out_hw[0], out_shape[0])
    x0, x1, fx = _bilinear_taps(in_hw[1], out_hw[1], out_shape[1])
    rows = x[y0] * (1.0 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    out = rows[:, x0] * (1.0 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    inside = (jnp.arange(out_shape[0])[:, None] < out_hw[0]) & (
        jnp.arange(out_shape[1])[None, :] < out_hw[1]
    )
    return jnp.where(inside[..., None], out, jnp.asarray(fill, out.dtype))


def resize_valid_region(
    x: jax.Array,
    in_hw: jax.Array,
    out_shape: Sequence[int],
    out_hw: jax.Array,
    fill: float | jax.Array = 0.0,
) -> jax.Array:
    """Bilinearly maps each example's valid region onto the top-left of a fixed output canvas.

    x: float [B,H,W,C], valid in in_hw[b] = (h, w) (int32 [B,2]); out_hw[b]: the target size.
    Returns float32 [B,*out_shape,C]: the valid region resized to out_hw[b] (only pixels inside
    in_hw are ever read, so padding never leaks in), `fill` ([C] or scalar) elsewhere. Equal
    sizes give the valid region back exactly. Gather-based: O(output) work, no weight matrices.
    """
    out_shape = (int(out_shape[0]), int(out_shape[1]))
    fill = jnp.asarray(fill, jnp.float32)
    return jax.vmap(lambda a, i, o: _resize_one(a, i, out_shape, o, fill))(
        x.astype(jnp.float32), in_hw, out_hw
    )


def resize_logits_to_labels(
    logits: jax.Array, image_hw: jax.Array, label_shape: tuple[int, int], label_hw: jax.Array
) -> jax.Array:
    """Maps each image's valid logits region onto its label's valid region (bilinear).

    logits: [B,Hp,Wp,K] predicted on a padded (possibly resized) image whose valid part is
    image_hw[b] = (h, w); labels are padded to label_shape and valid in label_hw[b] = (H0, W0).
    Returns float32 [B,*label_shape,K]; outside the valid label region the values are 0 and must
    be masked by the label's ignore padding. Fixed shapes: one compile.
    """
    return resize_valid_region(logits, image_hw, label_shape, label_hw, 0.0)


def flip_valid(x: jax.Array, width: jax.Array) -> jax.Array:
    """Mirrors columns [0, width[b]) of each example of x [B,H,W,C]; padding columns stay put.

    An involution: flip_valid(flip_valid(x, w), w) == x.
    """
    cols = jnp.arange(x.shape[2])

    def one(xi, wi):
        return jnp.take(xi, jnp.where(cols < wi, wi - 1 - cols, cols), axis=1)

    return jax.vmap(one)(x, width)


def whole_logits(apply_fn: ApplyFn, images: jax.Array) -> jax.Array:
    """float32 [B,H,W,K]: the model on the whole padded canvas."""
    return apply_fn(images).astype(jnp.float32)


def _add_window(canvas, window, y, x):
    """canvas [H,W,K] += window [h,w,K] at (y, x)."""
    start = (y, x, jnp.zeros((), y.dtype))
    current = jax.lax.dynamic_slice(canvas, start, window.shape)
    return jax.lax.dynamic_update_slice(canvas, current + window, start)


def slide_logits(
    apply_fn: ApplyFn,
    images: jax.Array,
    image_hw: jax.Array,
    window: Sequence[int],
    stride: Sequence[int],
) -> jax.Array:
    """float32 [B,H,W,K]: mmseg sliding-window logits over each example's valid region.

    images [B,H,W,C] with H >= window[0], W >= window[1]; image_hw int32 [B,2]. The scan runs over
    the windows of the largest grid (that of the whole canvas); for example b, window (i, j) starts
    at (min(i*sh, max(h-ch, 0)), min(j*sw, max(w-cw, 0))) and counts only if i and j are below
    b's own mmseg grid size, so each example gets exactly mmseg's windows and average. A valid
    region smaller than the window is covered by one window that includes padding (as the
    reference's TTA, which pads to the crop). Pixels no window covers are 0. One model call per
    window (all examples at once), so memory is that of one window batch.
    """
    b, height, width, channels = images.shape
    (ch, cw), (sh, sw) = (int(v) for v in window), (int(v) for v in stride)
    if ch > height or cw > width:
        raise ValueError(f"window {(ch, cw)} is larger than the canvas {(height, width)}")
    nh, nw = num_windows(height, ch, sh), num_windows(width, cw, sw)
    h, w = jnp.maximum(image_hw[:, 0], 1), jnp.maximum(image_hw[:, 1], 1)
    nh_b, nw_b = _num_windows_traced(h, ch, sh), _num_windows_traced(w, cw, sw)
    num_classes = jax.eval_shape(apply_fn, images[:, :ch, :cw]).shape[-1]
    crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (ch, cw, channels)))

    def add_window(carry, k):
        acc, count = carry
        i, j = k // nw, k % nw
        y = jnp.minimum(i * sh, jnp.maximum(h - ch, 0)).astype(jnp.int32)
        x = jnp.minimum(j * sw, jnp.maximum(w - cw, 0)).astype(jnp.int32)
        active = ((i < nh_b) & (j < nw_b)).astype(jnp.float32)[:, None, None, None]
        logits = apply_fn(crop(images, y, x)).astype(jnp.float32)
        logits = jnp.where(active > 0, logits, 0.0)  # inactive windows may hold anything
        acc = jax.vmap(_add_window)(acc, logits, y, x)
        count = jax.vmap(_add_window)(count, jnp.broadcast_to(active, (b, ch, cw, 1)), y, x)
        return (acc, count), None

    init = (
        jnp.zeros((b, height, width, num_classes), jnp.float32),
        jnp.zeros((b, height, width, 1), jnp.float32),
    )
    (acc, count), _ = jax.lax.scan(add_window, init, jnp.arange(nh * nw, dtype=jnp.int32))
    return acc / jnp.maximum(count, 1.0)


def single_pass_logits(
    apply_fn: ApplyFn, images: jax.Array, image_hw: jax.Array, protocol: Protocol
) -> jax.Array:
    """float32 [B,H,W,K]: one whole-image or sliding-window pass, no test-time augmentation."""
    if protocol.mode == "slide":
        return slide_logits(apply_fn, images, image_hw, protocol.window, protocol.stride)
    return whole_logits(apply_fn, images)


def _flip_views(apply_fn, images, image_hw, protocol) -> list[jax.Array]:
    """Logits of the plain and (with protocol.flip) the flipped-and-back view, each [B,H,W,K]."""
    if not protocol.flip:
        return [single_pass_logits(apply_fn, images, image_hw, protocol)]
    views = jnp.stack([images, flip_valid(images, image_hw[:, 1])])
    # lax.map runs the two views one after the other with one traced copy of the model.
    logits = jax.lax.map(lambda v: single_pass_logits(apply_fn, v, image_hw, protocol), views)
    return [logits[0], flip_valid(logits[1], image_hw[:, 1])]


def infer_logits(
    apply_fn: ApplyFn,
    images: jax.Array,
    image_hw: jax.Array,
    protocol: Protocol,
    *,
    pad_value: float | jax.Array = 0.0,
    out_shape: Sequence[int] | None = None,
    out_hw: jax.Array | None = None,
) -> jax.Array:
    """The protocol's scores for a padded batch: float32 [B,*out_shape,K].

    images: float32 [B,H,W,3] normalised, valid in image_hw (int32 [B,2]), padded with
    `pad_value` ([3] or scalar: the normalised padding colour, used for rescaled canvases too).
    For each scale s the valid image is resized to round(image_hw * s) on a static canvas
    (`scaled_canvas_shape`), predicted whole or by windows, with and without flip; each view's
    logits are resized onto the output grid and averaged as logits or softmax probabilities.
    out_shape / out_hw: the output grid and each example's valid size on it (e.g. the original
    label size); None = the input grid and image_hw, where scale 1 needs no resize at all.
    """
    in_shape = tuple(images.shape[1:3])
    on_input_grid = out_shape is None
    if on_input_grid:
        out_shape, out_hw = in_shape, image_hw
    elif out_hw is None:
        raise ValueError("infer_logits: out_hw is required with out_shape")
    out_shape = (int(out_shape[0]), int(out_shape[1]))
    pad_value = jnp.asarray(pad_value, jnp.float32)
    total, count = None, 0
    for scale in protocol.scales:
        canvas = scaled_canvas_shape(in_shape, scale, protocol)
        same_grid = scale == 1.0 and canvas == in_shape
        hw = image_hw if scale == 1.0 else scaled_hw(image_hw, scale)
        x = images if same_grid else resize_valid_region(images, image_hw, canvas, hw, pad_value)
        for logits in _flip_views(apply_fn, x, hw, protocol):
            if not (same_grid and on_input_grid):
                logits = resize_valid_region(logits, hw, out_shape, out_hw, 0.0)
            if protocol.average == "probs":
                logits = jax.nn.softmax(logits, axis=-1)
            total = logits if total is None else total + logits
            count += 1
    return total if count == 1 else total / count
