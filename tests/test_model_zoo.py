"""CNN backbones, heads and segmentors: shapes, strides, numpy restatements, parameter counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msc_seg.models.aspp import ASPP, aspp_dilations
from msc_seg.models.deeplab import DeepLabV3Segmentor
from msc_seg.models.hrnet import HighResolutionModule, make_hrnet
from msc_seg.models.hrnet_head import HRNetHead
from msc_seg.models.hrnet_seg import OCRNetSegmentor
from msc_seg.models.ocr_head import ObjectAttentionBlock, spatial_gather
from msc_seg.models.resnet import Bottleneck, make_resnet
from msc_seg.models.segmentor import count_params, make_segmentor

EPS = 1e-5


# ------------------------------------------------------------------------------------------
# helpers: abstract and random-weight builds, torch key names, numpy restatements


def build_abstract(factory):
    """``nnx.eval_shape`` of ``factory(rngs)``, with the RNG counters kept concrete.

    Tracing the counter updates makes flax build tracer error messages that walk the whole
    jaxpr (quadratic in the model size: ~30 s for HRNet-W48); only the keys need tracing.
    """

    def build(key):
        with jax.ensure_compile_time_eval():
            return factory(nnx.Rngs(key))

    return nnx.eval_shape(build, jax.random.key(0))


def build_random(
    factory, seed: int = 0, *, kernel_gain: float = 2.0, kernels: tuple[str, ...] = ("kernel",)
):
    """A concrete model with numpy-drawn weights and non-trivial BN statistics.

    Variables named in `kernels` are drawn N(0, kernel_gain / fan_in). Skips the XLA compiles of
    the initialisers (one per kernel shape, seconds each on CPU); the real initialisers are
    exercised by ``test_backbone_initialisers_are_torchvision_like``.
    """
    graphdef, state = nnx.split(build_abstract(factory))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(state):
        shape, name = var.get_value().shape, path[-1]
        if isinstance(var, nnx.RngKey):
            value = jax.random.key(seed)
        elif isinstance(var, nnx.RngCount):
            value = jnp.zeros(shape, jnp.uint32)
        elif name in kernels:
            value = rng.normal(size=shape) * np.sqrt(kernel_gain / np.prod(shape[:-1]))
        else:
            bounds = {"scale": (0.5, 1.5), "var": (0.5, 1.5)}.get(name, (-0.3, 0.3))
            value = rng.uniform(*bounds, size=shape)
        var.set_value(jnp.asarray(value, jnp.float32) if isinstance(value, np.ndarray) else value)
    return nnx.merge(graphdef, state)


@functools.partial(nnx.jit, static_argnames=("train", "return_embeddings"))
def run_segmentor(model, images, train=False, return_embeddings=False):
    return model(images, train=train, return_embeddings=return_embeddings)


@nnx.jit
def run_module(module, *args):
    return module(*args)


def torch_keys(model: nnx.Module) -> set[str]:
    """The torch state_dict keys our variables map to (num_batches_tracked has no twin)."""
    rename = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    return {
        ".".join(str(p) for p in path[:-1]) + "." + rename.get(path[-1], path[-1])
        for path, _ in nnx.to_flat_state(nnx.state(model))
    }


def np_conv(x, w, *, stride=1, dilation=1):
    """torch Conv2d with padding dilation*(k-1)//2 on NHWC numpy arrays; w is [kh,kw,in,out]."""
    k = w.shape[0]
    pad = dilation * (k - 1) // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (xp.shape[1] - dilation * (k - 1) - 1) // stride + 1
    wo = (xp.shape[2] - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros(x.shape[:1] + (ho, wo, w.shape[-1]), np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[
                :,
                i * dilation : i * dilation + stride * (ho - 1) + 1 : stride,
                j * dilation : j * dilation + stride * (wo - 1) + 1 : stride,
            ]
            out += patch @ w[i, j]
    return out


def np_bn(x, bn, eps=EPS):
    get = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    return (x - get(bn.mean)) / np.sqrt(get(bn.var) + eps) * get(bn.scale) + get(bn.bias)


def np_conv_bn(x, conv, bn, *, stride=1, dilation=1, eps=EPS):
    return np_bn(
        np_conv(x, np.asarray(conv.kernel[...]), stride=stride, dilation=dilation), bn, eps
    )


def relu(x):
    return np.maximum(x, 0.0)


def np_upsample_bilinear(x, size):
    """torch F.interpolate(mode="bilinear", align_corners=False) as two interpolation matrices."""

    def matrix(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            m[o, i0] += 1.0 - (src - i0)
            m[o, i1] += src - i0
        return m

    return np.einsum(
        "oh,pw,bhwc->bopc", matrix(x.shape[1], size[0]), matrix(x.shape[2], size[1]), x
    )


def rand(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------
# ResNet


@pytest.mark.parametrize(
    "output_stride, strides",
    [(8, (4, 8, 8, 8)), (16, (4, 8, 16, 16)), (32, (4, 8, 16, 32))],
)
def test_resnet_tiny_layers_have_the_output_stride_strides(output_stride, strides):
    model = build_random(
        lambda r: make_resnet("resnet_tiny_test", output_stride=output_stride, rngs=r)
    )
    feats = run_module(model, jnp.zeros((2, 64, 96, 3)))
    assert model.strides == strides
    assert [f.shape for f in feats] == [
        (2, 64 // s, 96 // s, c) for s, c in zip(strides, (32, 64, 128, 256), strict=True)
    ]


def test_resnet_dilated_layers_keep_previous_dilation_in_first_block():
    """torchvision replace_stride_with_dilation: at OS8 layer3 = (1st block d1, rest d2),
    layer4 = (1st block d2, rest d4), and no stride after layer2."""
    model = build_abstract(lambda r: make_resnet("resnet101", output_stride=8, rngs=r))
    dilations = [
        [b.conv2.kernel_dilation[0] for b in layer] for layer in (model.layer3, model.layer4)
    ]
    assert dilations == [[1] + [2] * 22, [2, 4, 4]]
    assert [layer[0].conv2.strides[0] for layer in (model.layer2, model.layer3, model.layer4)] == [
        2,
        1,
        1,
    ]
    os16 = build_abstract(lambda r: make_resnet("resnet50", output_stride=16, rngs=r))
    assert [b.conv2.kernel_dilation[0] for b in os16.layer4] == [1, 2, 2]
    assert os16.layer3[0].conv2.strides == (2, 2)


def test_bottleneck_with_dilation_and_projection_matches_numpy():
    block = build_random(lambda r: Bottleneck(8, 4, stride=1, dilation=2, rngs=r), seed=1)
    x = rand((2, 9, 7, 8))
    got = np.asarray(run_module(block, jnp.asarray(x)))

    out = relu(np_conv_bn(x, block.conv1, block.bn1))
    out = relu(np_conv_bn(out, block.conv2, block.bn2, dilation=2))
    out = np_conv_bn(out, block.conv3, block.bn3)
    identity = np_conv_bn(x, block.downsample[0], block.downsample[1])
    want = relu(out + identity)
    assert got.shape == (2, 9, 7, 16)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resnet50_parameter_paths_are_torchvision_keys():
    model = build_abstract(lambda r: make_resnet("resnet50", rngs=r))
    keys = torch_keys(model)
    # torchvision resnet50 state_dict: 320 keys; minus fc (2) and num_batches_tracked (53).
    assert len(keys) == 320 - 2 - 53
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer3.5.conv2.weight",
        "layer4.2.bn3.bias",
    ):
        assert key in keys
    assert not any(k.startswith("fc.") for k in keys)


# ------------------------------------------------------------------------------------------
# HRNet


def test_hrnet_tiny_returns_four_branches_at_strides_4_to_32():
    model = build_random(lambda r: make_hrnet("hrnet_tiny_test", rngs=r))
    feats = run_module(model, jnp.zeros((2, 64, 96, 3)))
    assert model.out_channels == (8, 16, 32, 64) and model.strides == (4, 8, 16, 32)
    assert [f.shape for f in feats] == [
        (2, 64 // s, 96 // s, c) for s, c in zip((4, 8, 16, 32), (8, 16, 32, 64), strict=True)
    ]


def test_hrnet_fuse_step_with_bilinear_upsampling_matches_numpy():
    """A 3-branch module with no residual blocks is exactly the exchange unit. Odd sizes
    (11x10 -> 6x5 -> 3x3) make the align_corners=False upsampling non-trivial."""
    module = build_random(lambda r: HighResolutionModule((4, 8, 16), blocks=0, rngs=r), seed=2)
    xs = [rand((2, 11, 10, 4), 0), rand((2, 6, 5, 8), 1), rand((2, 3, 3, 16), 2)]
    got = [np.asarray(y) for y in run_module(module, [jnp.asarray(x) for x in xs])]
    f = module.fuse_layers

    def up(i, j):
        seq = f[i][j]
        return np_upsample_bilinear(np_conv_bn(xs[j], seq[0], seq[1]), xs[i].shape[1:3])

    def down(seq, x):
        return np_conv_bn(x, seq[0], seq[1], stride=2)

    want0 = relu(xs[0] + up(0, 1) + up(0, 2))
    want1 = relu(down(f[1][0][0], xs[0]) + xs[1] + up(1, 2))
    two_steps = down(f[2][0][1], relu(down(f[2][0][0], xs[0])))
    want2 = relu(two_steps + down(f[2][1][0], xs[1]) + xs[2])
    for g, w in zip(got, (want0, want1, want2), strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_hrnet_w48_parameter_paths_are_the_official_checkpoint_keys():
    """docs/METHOD.md §14: 1830 backbone keys in hrnetv2_w48_imagenet_pretrained.pth, 305 of them
    num_batches_tracked (one per BN), which has no flax twin."""
    model = build_abstract(lambda r: make_hrnet("hrnet_w48", rngs=r))
    keys = torch_keys(model)
    assert len(keys) == 1830 - 305
    for key in (
        "conv2.weight",
        "layer1.0.downsample.1.running_var",
        "transition1.0.0.weight",
        "transition1.1.0.0.weight",
        "transition3.3.0.1.bias",
        "stage2.0.branches.1.3.bn2.running_mean",
        "stage3.3.fuse_layers.0.2.1.weight",
        "stage4.2.fuse_layers.3.0.2.0.weight",
    ):
        assert key in keys
    assert count_params(model)["total"] == 65_325_120


# ------------------------------------------------------------------------------------------
# heads


def test_aspp_rates_follow_output_stride():
    assert aspp_dilations(8) == (12, 24, 36)
    assert aspp_dilations(16) == (6, 12, 18)


def test_aspp_image_pooling_branch_matches_numpy():
    aspp = build_random(lambda r: ASPP(6, 5, (1, 2, 3), bn_epsilon=3e-4, rngs=r), seed=3)
    x = rand((2, 5, 7, 6))
    got = np.asarray(nnx.jit(lambda m, v: m.image_pooling(v))(aspp, jnp.asarray(x)))
    pooled = x.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    branch = relu(np_conv_bn(pooled, aspp.aspp5, aspp.aspp5_bn, eps=3e-4))
    want = np.broadcast_to(branch, (2, 5, 7, 5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert run_module(aspp, jnp.asarray(x)).shape == (2, 5, 7, 5)


def test_object_attention_step_matches_numpy():
    block = build_random(lambda r: ObjectAttentionBlock(6, 4, rngs=r), seed=4)
    feats = rand((2, 5, 3, 6), seed=1)
    logits = rand((2, 5, 3, 7), seed=2)
    proxy = nnx.jit(spatial_gather)(jnp.asarray(feats), jnp.asarray(logits))
    got = np.asarray(run_module(block, jnp.asarray(feats), proxy))

    # spatial gather: softmax over the 15 pixels per class, then weighted feature sums.
    lg = logits.reshape(2, 15, 7).astype(np.float64)
    probs = np.exp(lg - lg.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    want_proxy = np.einsum("bnk,bnc->bkc", probs, feats.reshape(2, 15, 6))
    np.testing.assert_allclose(np.asarray(proxy), want_proxy, rtol=1e-5, atol=1e-5)

    def chain(seq, x):  # [conv, bn, relu] * n
        for i in range(0, len(seq), 3):
            x = relu(np_conv_bn(x, seq[i], seq[i + 1]))
        return x

    pimg = want_proxy[:, :, None, :]
    query = chain(block.f_pixel, feats).reshape(2, 15, 4)
    key = chain(block.f_object, pimg)[:, :, 0]
    value = chain(block.f_down, pimg)[:, :, 0]
    sim = np.einsum("bnd,bkd->bnk", query, key) / 2.0  # key_channels ** 0.5
    attn = np.exp(sim - sim.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    context = np.einsum("bnk,bkd->bnd", attn, value).reshape(2, 5, 3, 4)
    want = chain(block.f_up, context)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------
# segmentors

TINY_DEEPLAB = dict(backbone="resnet_tiny_test", aspp_channels=8)
TINY_OCR = dict(backbone="hrnet_tiny_test", ocr_channels=16, key_channels=8)

SEGMENTOR_CASES = [
    ("deeplabv3", TINY_DEEPLAB, False, [(16, 16), (8, 8)]),
    (
        "deeplabv3",
        dict(TINY_DEEPLAB, output_stride=16, taps=("layer1", "layer3", "layer4")),
        False,
        [(16, 16), (4, 4), (4, 4)],
    ),
    ("hrnet", dict(backbone="hrnet_tiny_test"), False, [(16, 16), (8, 8), (4, 4), (2, 2)]),
    (
        "hrnet",
        dict(backbone="hrnet_tiny_test", reference_head=True, num_scales=2),
        False,
        [(16, 16), (8, 8)],
    ),
    ("ocrnet", TINY_OCR, True, [(16, 16), (8, 8), (4, 4), (2, 2)]),
]


@pytest.mark.parametrize("name, kwargs, has_aux, tap_sizes", SEGMENTOR_CASES)
def test_segmentor_outputs_have_input_size_logits_and_per_scale_embeddings(
    name, kwargs, has_aux, tap_sizes
):
    model = build_random(
        lambda r: make_segmentor(name, num_classes=5, embedding_dim=6, rngs=r, **kwargs)
    )
    stem_mean = np.asarray(model.backbone.bn1.mean[...])
    images = jnp.asarray(rand((2, 64, 64, 3)))
    out = run_segmentor(model, images, train=True, return_embeddings=True)
    assert out.logits.shape == (2, 64, 64, 5) and out.logits.dtype == jnp.float32
    assert (out.aux_logits is not None) == has_aux
    if has_aux:
        assert out.aux_logits.shape == (2, 64, 64, 5)
    assert [e.shape for e in out.embeddings] == [(2, h, w, 6) for h, w in tap_sizes]
    assert all(e.dtype == jnp.float32 and bool(jnp.isfinite(e).all()) for e in out.embeddings)
    assert bool(jnp.isfinite(out.logits).all())
    # train=True uses batch statistics and moves the running averages.
    assert not np.allclose(np.asarray(model.backbone.bn1.mean[...]), stem_mean)


def test_segmentor_embeddings_are_empty_unless_requested():
    model = build_random(lambda r: DeepLabV3Segmentor(num_classes=3, rngs=r, **TINY_DEEPLAB))
    out = run_segmentor(model, jnp.zeros((1, 32, 32, 3)))
    assert out.embeddings == () and out.logits.shape == (1, 32, 32, 3)


def test_segmentor_without_projectors_refuses_embeddings():
    model = build_random(
        lambda r: DeepLabV3Segmentor(num_classes=3, use_projectors=False, rngs=r, **TINY_DEEPLAB)
    )
    assert model.projectors is None
    with pytest.raises(ValueError, match="use_projectors=False"):
        run_segmentor(model, jnp.zeros((1, 32, 32, 3)), return_embeddings=True)


def test_segmentors_reject_bad_taps_scales_and_strides():
    with pytest.raises(ValueError, match="taps"):
        DeepLabV3Segmentor(num_classes=3, taps=("layer4", "layer1"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_scales"):
        OCRNetSegmentor(num_classes=3, num_scales=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="output_stride"):
        make_resnet("resnet_tiny_test", output_stride=4, rngs=nnx.Rngs(0))


def test_backbone_initialisers_are_torchvision_like():
    # A cheap-to-compile PRNG: threefry initialisers compile for seconds per kernel shape on CPU.
    rngs = nnx.Rngs(jax.random.key(0, impl="unsafe_rbg"))
    model = make_resnet("resnet_tiny_test", rngs=rngs)
    kernel = model.layer4[0].conv2.kernel[...]  # 3x3x64x64: kaiming_normal_(fan_out, relu)
    want_std = np.sqrt(2.0 / (9 * 64))
    assert abs(float(kernel.std()) - want_std) < 0.15 * want_std
    assert abs(float(kernel.mean())) < 0.1 * want_std
    bn = model.layer4[0].bn3
    assert bool((bn.scale[...] == 1).all() and (bn.bias[...] == 0).all())
    assert bool((bn.var[...] == 1).all() and (bn.mean[...] == 0).all())
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5


# ------------------------------------------------------------------------------------------
# full-size parameter counts (abstract builds, 150 classes)


def test_ocrnet_hrnet_w48_parameter_counts_match_the_reference():
    """docs/METHOD.md §14: backbone 65,325,120; decode 4,580,502; aux 3,396,246; projectors
    382,624; total 73,684,492."""
    model = build_abstract(lambda r: OCRNetSegmentor(num_classes=150, rngs=r))
    assert count_params(model) == {
        "backbone": 65_325_120,
        "decode_head": 4_580_502,
        "auxiliary_head": 3_396_246,
        "projectors": 382_624,
        "total": 73_684_492,
    }


def test_hrnet_heads_parameter_counts():
    """Official 1x1-BN-ReLU-1x1 head vs the reference's 3x3-BN-1x1 on 720 channels."""
    official = build_abstract(lambda r: HRNetHead(720, 150, rngs=r))
    reference = build_abstract(lambda r: HRNetHead(720, 150, reference_head=True, rngs=r))
    assert count_params(official)["total"] == 720 * 720 + 720 + 2 * 720 + 720 * 150 + 150
    assert count_params(reference)["total"] == 720 * 720 * 9 + 720 + 2 * 720 + 720 * 150


def test_deeplabv3_resnet101_parameter_counts():
    model = build_abstract(
        lambda r: DeepLabV3Segmentor(num_classes=150, taps=("layer1", "layer3", "layer4"), rngs=r)
    )
    proj = lambda c: c * c + 2 * c + c * 256 + 256  # noqa: E731
    projectors = proj(256) + proj(1024) + proj(2048)
    assert count_params(model) == {
        "backbone": 42_500_160,  # torchvision resnet101 without fc
        "decode_head": 15_573_654,
        "projectors": projectors,
        "total": 42_500_160 + 15_573_654 + projectors,
    }
