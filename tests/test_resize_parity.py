"""Bilinear resize and adaptive average pooling against PyTorch (the parity extra).

`resize_bilinear` must equal `F.interpolate(mode="bilinear")` and `adaptive_avg_pool` must equal
`F.adaptive_avg_pool2d` on NHWC data, up to float rounding, in every case the models use and the
awkward ones (non-integer factors, downsampling, output size 1, overlapping pooling bins); the
resize's gradient must equal torch autograd's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msc_seg.models.layers import adaptive_avg_pool, resize_bilinear

torch = pytest.importorskip("torch", reason="parity tests need torch (the parity extra)")
F = torch.nn.functional

pytestmark = pytest.mark.parity

RTOL = 1e-6
ATOL = 1e-6  # absolute floor for values near 0 (data are O(1))


def _data(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_nhwc(fn, x: np.ndarray) -> np.ndarray:
    """Apply a torch NCHW function to NHWC numpy data (contiguous NCHW, the usual layout)."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        return fn(t).permute(0, 2, 3, 1).numpy()


RESIZE_CASES = [
    # (in_hw, out_hw): the models' upsamplings ...
    ((128, 128), (512, 512)),  # logits 4x (UPerNet, HRNet, OCRNet)
    ((64, 64), (512, 512)),  # logits 8x (DeepLabV3 OS8)
    ((16, 16), (128, 128)),  # HRNet fuse / concat 8x
    ((32, 32), (64, 64)),  # 2x
    ((1, 1), (16, 16)),  # a 1x1 pooled map broadcast back (PPM scale 1)
    ((6, 6), (16, 16)),  # PPM scale 6 at a 512 crop (non-integer factor)
    # ... non-integer factors, mixed and downsampling, output size 1
    ((5, 7), (9, 13)),
    ((7, 5), (3, 11)),
    ((17, 23), (8, 5)),
    ((64, 48), (21, 20)),
    ((33, 31), (1, 1)),
    ((9, 12), (1, 5)),
    ((9, 12), (4, 1)),
    ((12, 12), (12, 12)),  # identity
    ((96, 160), (384, 640)),  # non-square 4x
    ((97, 131), (512, 509)),
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_hw,out_hw", RESIZE_CASES)
def test_resize_bilinear_equals_torch_interpolate(in_hw, out_hw, align_corners):
    x = _data((2, *in_hw, 3))
    expected = _torch_nhwc(
        lambda t: F.interpolate(t, size=out_hw, mode="bilinear", align_corners=align_corners), x
    )
    got = np.asarray(jax.jit(lambda v: resize_bilinear(v, out_hw, align_corners=align_corners))(x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "in_hw,out_hw",
    [((16, 16), (64, 64)), ((5, 7), (9, 13)), ((17, 23), (8, 5)), ((9, 12), (1, 5))],
)
def test_resize_bilinear_gradient_equals_torch_autograd(in_hw, out_hw, align_corners):
    x = _data((2, *in_hw, 3), seed=1)
    g = _data((2, *out_hw, 3), seed=2)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    out = F.interpolate(t, size=out_hw, mode="bilinear", align_corners=align_corners)
    (out * torch.from_numpy(g).permute(0, 3, 1, 2)).sum().backward()
    expected = t.grad.permute(0, 2, 3, 1).numpy()

    def loss(v):
        return jnp.sum(resize_bilinear(v, out_hw, align_corners=align_corners) * g)

    got = np.asarray(jax.jit(jax.grad(loss))(x))
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


POOL_CASES = [
    ((16, 16), (1, 1)),  # PPM scales at a 512 crop (Swin stage 4: 16x16)
    ((16, 16), (2, 2)),
    ((16, 16), (3, 3)),  # non-divisible: overlapping bins
    ((16, 16), (6, 6)),
    ((64, 64), (6, 6)),  # DeepLabV3-sized map
    ((7, 7), (6, 6)),
    ((6, 9), (2, 2)),
    ((5, 11), (3, 4)),
    ((13, 10), (5, 7)),
    ((3, 3), (5, 5)),  # output larger than input: bins repeat rows
    ((8, 8), (8, 8)),  # identity
]


@pytest.mark.parametrize("in_hw,out_hw", POOL_CASES)
def test_adaptive_avg_pool_equals_torch(in_hw, out_hw):
    x = _data((2, *in_hw, 4), seed=3)
    expected = _torch_nhwc(lambda t: F.adaptive_avg_pool2d(t, out_hw), x)
    got = np.asarray(jax.jit(lambda v: adaptive_avg_pool(v, out_hw))(x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("in_hw,out_hw", [((16, 16), (3, 3)), ((7, 7), (6, 6))])
def test_adaptive_avg_pool_gradient_equals_torch_autograd(in_hw, out_hw):
    x = _data((2, *in_hw, 4), seed=4)
    g = _data((2, *out_hw, 4), seed=5)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    (F.adaptive_avg_pool2d(t, out_hw) * torch.from_numpy(g).permute(0, 3, 1, 2)).sum().backward()
    expected = t.grad.permute(0, 2, 3, 1).numpy()
    got = np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(adaptive_avg_pool(v, out_hw) * g)))(x))
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_resize_and_pool_lower_without_dense_matmuls():
    """O(output) programs: no dot_general (no [out, in] interpolation matrices), and the
    resize's backward gathers (no scatter-add)."""
    x = jax.ShapeDtypeStruct((2, 128, 128, 150), jnp.float32)

    def up(v):
        return jnp.sum(resize_bilinear(v, (512, 512), align_corners=True))

    def pool(v):
        return jnp.sum(adaptive_avg_pool(v, 6))

    up_text = jax.jit(jax.grad(up)).lower(x).as_text()
    pool_text = jax.jit(jax.grad(pool)).lower(x).as_text()
    assert "dot_general" not in up_text + pool_text
    assert "scatter" not in up_text
