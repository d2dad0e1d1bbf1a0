"""UPerNet + Swin segmentor: shapes, train/eval behaviour, exact pieces against numpy restatements,
and the full-size parameter count (built abstractly, no memory).

Models are built with `nnx.eval_shape` and filled with numpy values (`_materialize`): running the
real initialisers eagerly costs ~1 s of compilation per distinct shape on CPU, and the tests here
check the forward computation, not the initial distributions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models.layers import adaptive_avg_pool, resize_bilinear
from msc_seg.models.projector import Projector
from msc_seg.models.segmentor import UPerNetSegmentor, count_params, make_segmentor
from msc_seg.models.swin import SwinBlock

K = 5  # classes of the tiny model
D = 8  # embedding dim of the tiny model
TINY = dict(
    num_classes=K,
    backbone="swin_tiny_test",
    decoder_channels=16,
    aux_channels=8,
    embedding_dim=D,
    drop_path_rate=0.3,
)


def _materialize(build, seed=0):
    """Build a module abstractly, then fill every variable with cheap deterministic values:
    kernels ~ N(0, 1/fan_in), LayerNorm/BN scales 1, biases and BN means 0, BN vars 1,
    relative position tables ~ N(0, 0.5) (large enough that a wrong index shows), fresh keys."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    counter = iter(range(10**6))

    def fill(path, leaf):
        name = str([k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1])
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed * 1000 + next(counter))
        if name == "count":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return jnp.asarray(0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
        if name == "relative_position_bias_table":
            return jnp.asarray(0.5 * rng.standard_normal(leaf.shape), leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(fan_in), leaf.dtype)

    state = jax.tree_util.tree_map_with_path(fill, state)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def tiny_model():
    return _materialize(lambda: UPerNetSegmentor(**TINY, rngs=nnx.Rngs(0)))


@nnx.jit(static_argnames=("train", "return_embeddings"))
def _forward(model, images, *, train, return_embeddings):
    return model(images, train=train, return_embeddings=return_embeddings)


def _images(h, w, b=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((b, h, w, 3)), jnp.float32)


def _batch_stats(model):
    return [
        np.asarray(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
    ]


# --------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("hw", [(128, 128), (64, 224)])
def test_outputs_are_at_input_resolution_and_embeddings_finest_first(tiny_model, hw):
    h, w = hw
    out = nnx.eval_shape(
        lambda m, x: m(x, train=False, return_embeddings=True), tiny_model, _images(h, w)
    )
    assert out.logits.shape == (2, h, w, K) and out.logits.dtype == jnp.float32
    assert out.aux_logits.shape == (2, h, w, K) and out.aux_logits.dtype == jnp.float32
    assert [e.shape for e in out.embeddings] == [(2, h // s, w // s, D) for s in (4, 8, 16, 32)]
    assert all(e.dtype == jnp.float32 for e in out.embeddings)


def test_backbone_returns_four_stages_with_doubling_channels(tiny_model):
    feats = nnx.eval_shape(lambda m, x: m.backbone(x), tiny_model, _images(128, 128))
    assert [f.shape for f in feats] == [
        (2, 32, 32, 32),
        (2, 16, 16, 64),
        (2, 8, 8, 128),
        (2, 4, 4, 256),
    ]


def test_backbone_taps_give_backbone_channel_embeddings():
    model = nnx.eval_shape(
        lambda: UPerNetSegmentor(**TINY, projector_position="backbone", rngs=nnx.Rngs(0))
    )
    out = nnx.eval_shape(lambda m, x: m(x, return_embeddings=True), model, _images(64, 64))
    assert [e.shape for e in out.embeddings] == [(2, 64 // s, 64 // s, D) for s in (4, 8, 16, 32)]
    assert [p.conv1.in_features for p in model.projectors] == [32, 64, 128, 256]


def test_embeddings_are_empty_unless_requested(tiny_model):
    out = nnx.eval_shape(lambda m, x: m(x, train=True), tiny_model, _images(64, 64))
    assert out.embeddings == ()


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = nnx.eval_shape(lambda: UPerNetSegmentor(**TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert {v.get_value().dtype for _, v in params} == {jnp.dtype(jnp.float32)}
    out = nnx.eval_shape(lambda m, x: m(x, return_embeddings=True), model, _images(64, 64))
    assert out.logits.dtype == out.aux_logits.dtype == jnp.float32
    assert all(e.dtype == jnp.float32 for e in out.embeddings)


def test_odd_multiple_of_32_input_runs_and_is_finite(tiny_model):
    # 96x160 -> stages 24x40, 12x20, 6x10, 3x5: the last two are padded to the window (4).
    out = _forward(tiny_model, _images(96, 160), train=False, return_embeddings=True)
    assert out.logits.shape == (2, 96, 160, K)
    assert [e.shape[1:3] for e in out.embeddings] == [(24, 40), (12, 20), (6, 10), (3, 5)]
    assert np.isfinite(np.asarray(out.logits)).all()
    assert np.isfinite(np.asarray(out.aux_logits)).all()


# --------------------------------------------------------------------------------------------
# Train / eval


def test_eval_is_deterministic_and_leaves_batch_stats(tiny_model):
    x = _images(96, 160)
    before = _batch_stats(tiny_model)
    a = _forward(tiny_model, x, train=False, return_embeddings=True)
    b = _forward(tiny_model, x, train=False, return_embeddings=True)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    for old, new in zip(before, _batch_stats(tiny_model), strict=True):
        np.testing.assert_array_equal(old, new)


def test_train_updates_batch_stats_and_draws_fresh_dropout():
    model = _materialize(lambda: UPerNetSegmentor(**TINY, rngs=nnx.Rngs(0)), seed=1)
    x = _images(96, 160)
    before = _batch_stats(model)
    a = _forward(model, x, train=True, return_embeddings=True)
    after = _batch_stats(model)
    # every BN (decoder, aux, projectors) moved its running statistics
    assert all(not np.allclose(o, n) for o, n in zip(before, after, strict=True))
    b = _forward(model, x, train=True, return_embeddings=True)
    # new dropout / drop-path masks on the second call
    assert not np.allclose(np.asarray(a.logits), np.asarray(b.logits))


# --------------------------------------------------------------------------------------------
# Exact pieces against independent numpy restatements


def _np_adaptive_avg_pool_1d(x, out):
    n = len(x)
    return np.array(
        [x[math.floor(i * n / out) : math.ceil((i + 1) * n / out)].mean() for i in range(out)]
    )


@pytest.mark.parametrize("in_hw,out_hw", [((16, 16), 3), ((16, 16), 6), ((7, 7), 6), ((6, 9), 2)])
def test_adaptive_avg_pool_matches_pytorch_windows(in_hw, out_hw):
    x = np.random.default_rng(0).standard_normal((2, *in_hw, 3)).astype(np.float32)
    # separable windows: average rows, then columns
    rows = np.apply_along_axis(_np_adaptive_avg_pool_1d, 1, x, out_hw)
    expected = np.apply_along_axis(_np_adaptive_avg_pool_1d, 2, rows, out_hw)
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x), out_hw))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_overlapping_windows_by_hand():
    # 7 -> 6: windows [0,2),[1,3),...,[5,7) overlap, so the means are 0.5, 1.5, ..., 5.5
    x = jnp.broadcast_to(jnp.arange(7.0)[None, :, None, None], (1, 7, 1, 1))
    got = np.asarray(adaptive_avg_pool(x, (6, 1)))[0, :, 0, 0]
    np.testing.assert_allclose(got, np.arange(6) + 0.5)


def _np_bilinear_1d_src(out, n, align_corners):
    if align_corners:
        return [i * (n - 1) / (out - 1) if out > 1 else 0.0 for i in range(out)]
    return [max((i + 0.5) * n / out - 0.5, 0.0) for i in range(out)]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(9, 13), (3, 2)])
def test_resize_bilinear_matches_pytorch_formula(align_corners, size):
    x = np.random.default_rng(0).standard_normal((1, 5, 6, 2))
    expected = np.zeros((1, *size, 2))
    for i, sy in enumerate(_np_bilinear_1d_src(size[0], 5, align_corners)):
        for j, sx in enumerate(_np_bilinear_1d_src(size[1], 6, align_corners)):
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 5)
            ly, lx = sy - y0, sx - x0
            expected[0, i, j] = (
                (1 - ly) * (1 - lx) * x[0, y0, x0]
                + (1 - ly) * lx * x[0, y0, x1]
                + ly * (1 - lx) * x[0, y1, x0]
                + ly * lx * x[0, y1, x1]
            )
    got = resize_bilinear(jnp.asarray(x, jnp.float32), size, align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def _np_layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


_erf = np.vectorize(math.erf)


def _np_swin_block(x, p, *, window, shift, heads):
    """One Swin block on one image x [H,W,C], written token by token: the shifted frame is
    indexed with modular arithmetic, the bias by (dy, dx) offsets, the mask by region labels."""
    h, w, c = x.shape
    hd = c // heads
    hp, wp = h + (-h % window), w + (-w % window)
    y = np.zeros((hp, wp, c))
    y[:h, :w] = _np_layer_norm(x, p["norm1.scale"], p["norm1.bias"])

    def region(r, n):  # label of a row/column of the shifted frame (reference's three slices)
        if shift == 0:
            return 0
        return 0 if r < n - window else (1 if r < n - shift else 2)

    out = np.zeros((hp, wp, c))
    for wr in range(hp // window):
        for wc in range(wp // window):
            toks = [
                (wr * window + i, wc * window + j) for i in range(window) for j in range(window)
            ]
            src = [((r + shift) % hp, (q + shift) % wp) for r, q in toks]
            tokens = np.stack([y[a, b] for a, b in src])
            qkv = tokens @ p["attn.qkv.kernel"] + p["attn.qkv.bias"]
            heads_out = []
            for hh in range(heads):
                q = qkv[:, hh * hd : (hh + 1) * hd] * hd**-0.5
                k = qkv[:, c + hh * hd : c + (hh + 1) * hd]
                v = qkv[:, 2 * c + hh * hd : 2 * c + (hh + 1) * hd]
                logits = q @ k.T
                for a, (ra, qa) in enumerate(toks):
                    for b, (rb, qb) in enumerate(toks):
                        dy, dx = ra - rb, qa - qb
                        idx = (dy + window - 1) * (2 * window - 1) + (dx + window - 1)
                        logits[a, b] += p["attn.relative_position_bias_table"][idx, hh]
                        same = (region(ra, hp), region(qa, wp)) == (region(rb, hp), region(qb, wp))
                        logits[a, b] += 0.0 if same else -100.0
                e = np.exp(logits - logits.max(-1, keepdims=True))
                heads_out.append((e / e.sum(-1, keepdims=True)) @ v)
            o = np.concatenate(heads_out, -1) @ p["attn.proj.kernel"] + p["attn.proj.bias"]
            for (a, b), val in zip(src, o, strict=True):
                out[a, b] = val
    x = x + out[:h, :w]
    z = _np_layer_norm(x, p["norm2.scale"], p["norm2.bias"])
    z = z @ p["mlp.fc1.kernel"] + p["mlp.fc1.bias"]
    z = 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))
    return x + z @ p["mlp.fc2.kernel"] + p["mlp.fc2.bias"]


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_matches_numpy_restatement(shift):
    c, heads, window = 8, 2, 4
    block = _materialize(
        lambda: SwinBlock(
            c,
            heads,
            window_size=window,
            shift_size=shift,
            mlp_ratio=4.0,
            drop_path=0.2,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=nnx.Rngs(0),
        ),
        seed=3,
    )
    params = {
        ".".join(str(k) for k in path): np.asarray(v.get_value(), np.float64)
        for path, v in nnx.to_flat_state(nnx.state(block, nnx.Param))
    }
    # 6x10 is padded to 8x12: padding, the shift and the region mask all take part
    x = np.random.default_rng(1).standard_normal((2, 6, 10, c))
    got = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(block, jnp.asarray(x, jnp.float32)))
    for i in range(2):
        expected = _np_swin_block(x[i], params, window=window, shift=shift, heads=heads)
        np.testing.assert_allclose(got[i], expected, rtol=2e-4, atol=2e-4)


def test_projector_is_conv_relu_bn_conv_with_reference_momentum():
    proj = _materialize(lambda: Projector(4, 3, rngs=nnx.Rngs(0)), seed=2)
    assert proj.norm.momentum == pytest.approx(1.0 - 0.0003)
    p = {
        ".".join(str(k) for k in path): np.asarray(v.get_value(), np.float64)
        for path, v in nnx.to_flat_state(nnx.state(proj, nnx.Param))
    }
    assert "conv1.bias" not in p and "conv2.bias" in p  # first conv has no bias
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    h = np.maximum(x @ p["conv1.kernel"][0, 0], 0.0)
    mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    bn = (h - mean) / np.sqrt(var + 1e-5) * p["norm.scale"] + p["norm.bias"]
    expected = bn @ p["conv2.kernel"][0, 0] + p["conv2.bias"]
    running_before = np.asarray(proj.norm.mean.get_value())
    got = np.asarray(proj(jnp.asarray(x, jnp.float32), train=True))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the other order (BN before ReLU) would give a different result: the test can fail
    pre = x @ p["conv1.kernel"][0, 0]
    bn_first = np.maximum((pre - pre.mean((0, 1, 2))) / np.sqrt(pre.var((0, 1, 2)) + 1e-5), 0)
    assert not np.allclose(bn_first @ p["conv2.kernel"][0, 0] + p["conv2.bias"], got, atol=1e-3)
    # running mean moves by 0.0003 of the way to the batch mean (PyTorch momentum 0.0003)
    np.testing.assert_allclose(
        np.asarray(proj.norm.mean.get_value()),
        0.9997 * running_before + 0.0003 * mean,
        rtol=1e-5,
        atol=1e-7,
    )


# --------------------------------------------------------------------------------------------
# Full-size parameter count and the registry


def _swin_count(embed, depths, heads, window=7, patch=4, mlp=4):
    n = 3 * patch * patch * embed + embed + 2 * embed  # patch_embed.proj + patch_embed.norm
    for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        d = embed * 2**i
        block = (
            2 * d  # norm1
            + d * 3 * d
            + 3 * d  # qkv
            + (2 * window - 1) ** 2 * h  # relative_position_bias_table
            + d * d
            + d  # proj
            + 2 * d  # norm2
            + d * mlp * d
            + mlp * d  # fc1
            + mlp * d * d
            + d  # fc2
        )
        n += depth * block + 2 * d  # blocks + output norm{i}
        if i < len(depths) - 1:
            n += 2 * 4 * d + 4 * d * 2 * d  # downsample.norm + downsample.reduction
    return n


def _conv_module(cin, cout, k):
    return k * k * cin * cout + 2 * cout  # conv without bias + BN scale/bias


def test_full_upernet_swin_t_parameter_count_matches_architecture():
    model = nnx.eval_shape(
        lambda: make_segmentor("upernet", num_classes=150, backbone="swin_t", rngs=nnx.Rngs(0))
    )
    counts = count_params(model)
    c, k, stages = 512, 150, [96, 192, 384, 768]
    backbone = _swin_count(96, (2, 2, 6, 2), (3, 6, 12, 24))
    decode = (
        4 * _conv_module(768, c, 1)  # PPM
        + _conv_module(768 + 4 * c, c, 3)  # bottleneck
        + sum(_conv_module(s, c, 1) for s in stages[:3])  # laterals
        + 3 * _conv_module(c, c, 3)  # fpn convs
        + _conv_module(4 * c, c, 3)  # fpn bottleneck
        + c * k
        + k  # classifier
    )
    aux = _conv_module(384, 256, 3) + 256 * k + k
    projectors = 4 * (c * c + 2 * c + c * 256 + 256)
    expected = dict(
        backbone=backbone,
        decode_head=decode,
        auxiliary_head=aux,
        projectors=projectors,
        total=backbone + decode + aux + projectors,
    )
    print("UPerNet + Swin-T, 150 classes:", counts)
    assert counts == expected
    # docs/METHOD.md §14: the reference Swin-T backbone (with its output norms): 27,520,698 params
    assert counts["backbone"] == 27_520_698


def test_released_upernet_aux_head_reads_stage_3_with_a_conv_bias():
    """The authors' released UPerNet-Swin ADE20K config: aux head on stage index 3 (768
    channels for Swin-T) with a bias on its 3x3 conv; 62,404,838 parameters in training form
    (K=150, aux head, 4 projectors with D=256), 884,992 more than the mmseg/HF variant's
    61,519,846: 3*3*(768-384)*256 = 884,736 kernel weights + 256 conv biases."""
    model = nnx.eval_shape(
        lambda: make_segmentor(
            "upernet",
            num_classes=150,
            backbone="swin_t",
            aux_in_index=3,
            aux_conv_bias=True,
            rngs=nnx.Rngs(0),
        )
    )
    counts = count_params(model)
    assert counts["auxiliary_head"] == _conv_module(768, 256, 3) + 256 + 256 * 150 + 150
    assert counts["total"] == 62_404_838
    assert counts["total"] - 61_519_846 == 3 * 3 * (768 - 384) * 256 + 256
    conv = model.auxiliary_head.convs[0].conv
    assert conv.kernel.shape == (3, 3, 768, 256) and conv.bias.shape == (256,)


def test_aux_head_reads_the_chosen_stage_and_rejects_bad_indices():
    model = _materialize(
        lambda: UPerNetSegmentor(**TINY, aux_in_index=3, aux_conv_bias=True, rngs=nnx.Rngs(0))
    )
    out = _forward(model, _images(64, 64), train=False, return_embeddings=False)
    assert out.aux_logits.shape == (2, 64, 64, K)
    for bad in (4, -5, 1.0):
        with pytest.raises(ArgumentError, match="aux_in_index"):
            nnx.eval_shape(lambda b=bad: UPerNetSegmentor(**TINY, aux_in_index=b, rngs=nnx.Rngs(0)))


def test_make_segmentor_rejects_unknown_names():
    with pytest.raises(ValueError, match="upernet"):
        make_segmentor("segformer", num_classes=3, rngs=nnx.Rngs(0))


def test_unknown_projector_position_is_rejected():
    with pytest.raises(ArgumentError, match="projector_position"):
        nnx.eval_shape(lambda: UPerNetSegmentor(**TINY, projector_position="x", rngs=nnx.Rngs(0)))
