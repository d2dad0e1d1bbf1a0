"""models/winograd.py: the F(2x2, 3x3) convolution equals a direct one in value and both
gradients (numpy restatement and lax), and models/conv.py sends only the convolutions it pays
for to it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msc_seg.models import conv as conv_lib
from msc_seg.models import winograd


def _direct_numpy(x, w):
    """y[b,h,w,o] = sum_{i,j,c} xpad[b,h+i,w+j,c] w[i,j,c,o], float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    b, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((b, h, wd, w.shape[-1]))
    for i in range(3):
        for j in range(3):
            y += np.einsum("bhwc,co->bhwo", xp[:, i : i + h, j : j + wd], w[i, j])
    return y


def _lax(x, w):
    return jax.lax.conv_general_dilated(
        x,
        w,
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )


SHAPES = [  # (batch, height, width, in, out, chunk elements)
    (2, 8, 8, 5, 6, winograd.CHUNK_ELEMENTS),  # even map, one chunk
    (2, 7, 5, 3, 4, winograd.CHUNK_ELEMENTS),  # odd sides: a cropped row and column of tiles
    (2, 13, 9, 4, 3, 1),  # one tile row per chunk, 7 chunks, the last half padding
    (1, 12, 11, 6, 5, 16 * 6 * 6 * 3),  # 2 tile rows per chunk (3 chunks)
    (1, 1, 1, 2, 2, winograd.CHUNK_ELEMENTS),  # a single pixel: all taps but the centre padding
    (1, 2, 3, 3, 2, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}h{}w{}i{}o{}_chunk{}".format(*s))
def test_winograd_equals_the_direct_convolution_in_value_and_both_gradients(shape, monkeypatch):
    b, h, wd, cin, cout, chunk = shape
    monkeypatch.setattr(winograd, "CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, h, wd, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((b, h, wd, cout)), jnp.float32)
    y, vjp = jax.vjp(lambda x, w: winograd.conv3x3(x, w, "highest"), x, w)
    np.testing.assert_allclose(y, _direct_numpy(x, w), rtol=1e-5, atol=2e-5)
    _, vjp_ref = jax.vjp(_lax, x, w)
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)


def test_winograd_compiles_once_per_shape():
    f = jax.jit(jax.grad(lambda x, w: winograd.conv3x3(x, w).sum(), argnums=(0, 1)))
    w = jnp.ones((3, 3, 3, 2))
    for _ in range(2):
        f(jnp.ones((1, 6, 6, 3)), w)
    assert f._cache_size() == 1


def _dispatch(monkeypatch, x, w, **kwargs):
    """Whether conv.py's convolution of x with w ran as Winograd."""
    calls = []
    real = winograd.conv3x3

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(conv_lib.winograd, "conv3x3", spy)
    args = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), rhs_dilation=(1, 1))
    args.update(kwargs)
    conv_lib.conv_general_dilated(x, w, dimension_numbers=("NHWC", "HWIO", "NHWC"), **args)
    return bool(calls)


def test_only_wide_float32_3x3_same_convolutions_on_large_maps_run_as_winograd():
    """The thresholds are conv.py's (measured: narrower or smaller ones got slower)."""

    def dispatch(x, w, **kwargs):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(conv_lib, "MIN_REWRITE_FLOPS", 0)
            patch.setattr(conv_lib, "WINOGRAD_MIN_CHANNELS", 4)
            patch.setattr(conv_lib, "WINOGRAD_MIN_TILES", 2 * 4 * 4)
            return _dispatch(patch, x, w, **kwargs)

    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    assert dispatch(x, w)
    assert not dispatch(jnp.ones((2, 8, 6, 4)), w)  # 24 tiles < 32
    assert not dispatch(x[..., :3], w[:, :, :3])  # 3 input channels
    assert not dispatch(x, w[..., :3])  # 3 output channels
    assert not dispatch(x, w, window_strides=(2, 2))
    assert not dispatch(x, w, rhs_dilation=(2, 2), padding=((2, 2), (2, 2)))
    assert not dispatch(x, w, padding=((0, 0), (0, 0)))
    assert not dispatch(x, jnp.ones((5, 5, 4, 4)), padding=((2, 2), (2, 2)))
    assert not dispatch(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
