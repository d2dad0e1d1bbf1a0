"""models/conv.py: the CPU convolution equals lax.conv_general_dilated in value and gradients,
and leaves XLA:CPU no convolution in a non-canonical form (no loop-emitter fallback)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msc_seg.models import conv as conv_lib


@pytest.fixture(autouse=True)
def rewrite_every_convolution(monkeypatch):
    """These shapes are tiny: lower the size threshold so that the rewrite is what runs."""
    monkeypatch.setattr(conv_lib, "MIN_REWRITE_FLOPS", 0)


CASES = [  # (kernel, stride, dilation, padding, in, out)
    (3, 1, 1, 1, 5, 7),
    (3, 2, 1, 1, 5, 7),
    (3, 1, 2, 2, 4, 6),
    (3, 1, 3, 1, 4, 6),  # padding smaller than the reach
    (7, 2, 1, 3, 3, 8),  # a stem
    (1, 1, 1, 0, 6, 5),
    (1, 2, 1, 0, 6, 5),
    (4, 4, 1, 0, 3, 8),  # a patch embedding
    (3, 2, 1, 0, 4, 4),  # no padding, odd size
    (3, 1, 1, 5, 4, 4),  # padding wider than the kernel (a chunk of padding rows only)
    (3, 1, 1, "SAME", 4, 4),
    (1, 1, 1, "SAME", 4, 4),  # the projectors
    # in > out at stride 1: the weight gradient shifts the output gradient, not the input
    (3, 1, 1, 1, 9, 4),  # UPerNet's fpn_bottleneck
    (3, 1, 2, 2, 8, 3),
    (3, 1, 3, 1, 8, 3),  # padding smaller than the reach
    (3, 1, 1, 0, 8, 3),  # no padding
    (3, 1, 1, 5, 8, 3),  # padding wider than the kernel: shifts the input
]


def _pads(padding):
    return padding if isinstance(padding, str) else ((padding, padding), (padding, padding))


def _reference(x, w, stride, dilation, padding):
    return jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        _pads(padding),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )


def _ours(x, w, stride, dilation, padding):
    return conv_lib.conv_general_dilated(
        x,
        w,
        (stride, stride),
        _pads(padding),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=jax.lax.conv_dimension_numbers(
            x.shape, w.shape, ("NHWC", "HWIO", "NHWC")
        ),
        precision="highest",
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "row_chunks"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{}s{}d{}p{}".format(*c[:4]))
def test_cpu_convolution_equals_lax_in_value_and_both_gradients(case, chunked, monkeypatch):
    """row_chunks: every stride-1 undilated convolution (forward and input gradient) runs as row
    chunks of uneven sizes (13 rows in chunks of 3), as large ones do at paper size."""
    if chunked:
        monkeypatch.setattr(conv_lib, "CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(conv_lib, "MAX_CHUNKS", 5)
    k, stride, dilation, padding, cin, cout = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 13, 11, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
    y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, stride, dilation, padding), x, w)
    y, vjp = jax.vjp(lambda x, w: _ours(x, w, stride, dilation, padding), x, w)
    g = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", [1, 3])
def test_scan_body_gradients_leave_no_convolution_to_the_loop_emitter(kernel):
    """In a lax.scan body, autodiff's conv gradients were non-canonical and XLA:CPU ran them in
    its generic loop emitter (backend_config outer_dimension_partitions); ours are not. At this
    shape (16 channels, 16x16) jax 0.10's lax.conv_general_dilated leaves 2 such convolutions
    for either kernel size; at 4 channels, 8x8 it leaves none, so a smaller test proves nothing."""
    pad = kernel // 2

    def body(x, w):
        y = conv_lib.conv_general_dilated(
            x, w, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.tanh(y), None

    def loss(x, ws):
        return jax.lax.scan(body, x, ws)[0].sum()

    x = jnp.ones((2, 16, 16, 16))
    ws = jnp.ones((3, kernel, kernel, 16, 16)) * 0.1
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, ws).compile().as_text()
    convs = [line for line in hlo.splitlines() if " convolution(" in line]
    assert kernel == 1 or convs, "expected the forward convolution in the program"
    assert not [c for c in convs if "outer_dimension_partitions" in c], convs


def test_nnx_conv_with_the_cpu_convolution_keeps_its_parameters_and_values():
    plain = nnx.Conv(4, 6, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    ours = nnx.Conv(
        4,
        6,
        (3, 3),
        padding=((1, 1), (1, 1)),
        conv_general_dilated=conv_lib.conv_general_dilated,
        rngs=nnx.Rngs(0),  # the same seed: the same kernel, so the outputs must agree
    )
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 9, 9, 4), np.float32))
    assert jax.tree.map(jnp.shape, nnx.state(plain)) == jax.tree.map(jnp.shape, nnx.state(ours))
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-5, atol=1e-5)


def test_small_convolutions_stay_lax_and_large_ones_are_rewritten(monkeypatch):
    """Below MIN_REWRITE_FLOPS the program is lax's own (no custom VJP, fast to compile)."""
    monkeypatch.setattr(conv_lib, "MIN_REWRITE_FLOPS", 2 * 2 * 8 * 8 * 9 * 4 * 4)
    w = jnp.ones((3, 3, 4, 4))

    def jaxpr(x):
        return str(jax.make_jaxpr(lambda x: _ours(x, w, 1, 1, 1))(x))

    assert "custom_vjp" not in jaxpr(jnp.ones((2, 8, 7, 4)))  # one row short of the threshold
    assert "custom_vjp" in jaxpr(jnp.ones((2, 8, 8, 4)))


def test_large_stride1_convolutions_run_as_row_chunks_and_dilated_ones_whole(monkeypatch):
    """XLA:CPU's convolution is faster on <= CHUNK_ELEMENTS-value input slabs (conv.py); the
    chunks must cover the output exactly once (values are checked above)."""
    # 4 rows of the [2, 11 + 2 padding, 4] input per chunk
    monkeypatch.setattr(conv_lib, "CHUNK_ELEMENTS", 4 * 2 * 13 * 4)
    x = jnp.ones((2, 13, 11, 4), jnp.float32)
    w = jnp.ones((3, 3, 4, 4), jnp.float32)

    def count(dilation):
        f = lambda x, w: _ours(x, w, 1, dilation, dilation)
        return jax.jit(f).lower(x, w).as_text().count("stablehlo.convolution")

    assert count(1) == 4  # 13 output rows in chunks of 4, 4, 4, 1
    assert count(2) == 1
