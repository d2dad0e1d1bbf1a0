"""Remat modes and scanned block chains change nothing but the program.

For a tiny model of each family: outputs, gradients and updated BatchNorm statistics in training
mode are equal (to float tolerance) with remat "none" / "blocks" / "stages", and with the
repeated blocks scanned or unrolled; each setting compiles once per input shape; bad values are
ArgumentErrors naming `remat`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_model_zoo
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models.deeplab import DeepLabV3Segmentor
from msc_seg.models.hrnet import HRNet, HRNetConfig
from msc_seg.models.hrnet_seg import HRNetSegmentor, OCRNetSegmentor
from msc_seg.models.repeat import REMAT_MODES, _runs
from msc_seg.models.resnet import ResNet
from msc_seg.models.segmentor import UPerNetSegmentor, make_segmentor

RTOL, ATOL = 1e-4, 1e-5


def build_random(factory, seed: int = 0):
    """A concrete model with numpy-drawn weights and BN statistics (no initialiser compiles);
    unit-gain kernels (and Swin's bias tables) keep deep unrolled/scanned stacks well scaled."""
    return test_model_zoo.build_random(
        factory, seed, kernel_gain=1.0, kernels=("kernel", "relative_position_bias_table")
    )


def _images(b, h, w, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, h, w, 3)), jnp.float32)


def make_train_step(model, traces: list):
    """A jitted training forward + backward of `model` -> (outputs, grads wrt Params, BatchStats
    after), with `traces` counting how often it is traced; and its (params, rest) inputs."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, images):
        traces.append(1)

        def loss_fn(params, rest):
            m = nnx.merge(graphdef, params, rest, copy=True)
            out = m(images, train=True, return_embeddings=m.projectors is not None)
            loss = jnp.mean(out.logits**2)
            if out.aux_logits is not None:
                loss = loss + 0.4 * jnp.mean(out.aux_logits**2)
            loss = loss + sum(jnp.mean(e**2) for e in out.embeddings)
            return loss, (out, nnx.state(m, nnx.BatchStat))

        (_, (out, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        return out, grads, stats

    return step, params, rest


def assert_trees_close(a, b):
    """Leaf by leaf, with an absolute floor relative to the largest value of the whole tree:
    float32 rounding of differently fused programs is amplified where a BatchNorm sees few
    values (UPerNet's 1x1 pyramid-pooling branch normalises over the batch alone)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and len(la) > 0
    scale = max(float(np.abs(np.asarray(y)).max(initial=0.0)) for y in lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL * scale)


FAMILIES = {
    "upernet": (
        lambda remat, rngs: UPerNetSegmentor(
            num_classes=3,
            backbone="swin_tiny_test",
            decoder_channels=16,
            aux_channels=8,
            embedding_dim=8,
            drop_path_rate=0.3,  # drop-path masks must be redrawn identically when recomputed
            remat=remat,
            rngs=rngs,
        ),
        (64, 64),
    ),
    "deeplabv3": (
        lambda remat, rngs: DeepLabV3Segmentor(
            num_classes=3,
            backbone="resnet_tiny_test",
            aspp_channels=8,
            embedding_dim=8,
            remat=remat,
            rngs=rngs,
        ),
        (64, 64),
    ),
    "hrnet": (
        lambda remat, rngs: HRNetSegmentor(
            num_classes=3, backbone="hrnet_tiny_test", embedding_dim=8, remat=remat, rngs=rngs
        ),
        (64, 64),
    ),
    "ocrnet": (
        lambda remat, rngs: OCRNetSegmentor(
            num_classes=3,
            backbone="hrnet_tiny_test",
            ocr_channels=16,
            key_channels=8,
            embedding_dim=8,
            remat=remat,
            rngs=rngs,
        ),
        (64, 64),
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_remat_modes_give_equal_outputs_gradients_and_statistics(family):
    factory, (h, w) = FAMILIES[family]
    images = _images(4, h, w)
    results = {}
    for remat in REMAT_MODES:
        model = build_random(lambda rngs, remat=remat: factory(remat, rngs))
        traces = []
        step, params, rest = make_train_step(model, traces)
        results[remat] = step(params, rest, images)
        step(params, rest, images + 1.0)  # same shapes: no second trace (one compile)
        assert len(traces) == 1
    for remat in ("blocks", "stages"):
        for got, want in zip(results[remat], results["none"], strict=True):  # outputs, grads, stats
            assert_trees_close(got, want)


def _tiny_resnet(scan, remat, rngs):
    # Repeats to scan: layer2 and layer4 have runs of 2 identical bottlenecks after the first.
    return ResNet(
        (1, 3, 1, 3),
        output_stride=8,
        stem_channels=8,
        planes=(8, 16, 32, 64),
        scan=scan,
        remat=remat,
        rngs=rngs,
    )


_HRNET_REPEATS = HRNetConfig(
    stem_channels=8, stage1_planes=8, stage1_blocks=3, width=4, modules=(1, 2, 3), blocks=2
)


def _tiny_hrnet(scan, remat, rngs):
    return HRNet(_HRNET_REPEATS, scan=scan, remat=remat, rngs=rngs)


@pytest.mark.parametrize(
    "name,remat", [("resnet", "none"), ("resnet", "blocks"), ("hrnet", "blocks")]
)
def test_scanned_repeats_equal_unrolled_blocks(name, remat):
    """Backbones whose layers/stages repeat identical blocks: forward in training mode,
    gradients and the BatchNorm statistics of every block (written back from the scan)."""
    factory = _tiny_resnet if name == "resnet" else _tiny_hrnet
    images = _images(2, 64, 64, seed=1)

    def run(scan):
        model = build_random(lambda rngs: factory(scan, remat, rngs))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        @jax.jit
        def step(params, rest):
            def loss_fn(params, rest):
                m = nnx.merge(graphdef, params, rest, copy=True)
                feats = m(images, train=True)
                return sum(jnp.mean(f**2) for f in feats), (feats, nnx.state(m, nnx.BatchStat))

            return jax.value_and_grad(loss_fn, has_aux=True)(params, rest)

        (_, (feats, stats)), grads = step(params, rest)
        text = step.lower(params, rest).as_text()
        return (feats, grads, stats), text.count("stablehlo.while")

    (unrolled, loops_unrolled), (scanned, loops_scanned) = run(False), run(True)
    assert loops_unrolled == 0 and loops_scanned > 0
    # Same paths (checkpoints do not change with scanning), then the same values.
    assert jax.tree.structure(scanned) == jax.tree.structure(unrolled)
    assert_trees_close(scanned, unrolled)


def test_equal_graphdef_runs():
    assert _runs(["a", "a", "b", "a", "a", "a"]) == [(0, 2), (2, 3), (3, 6)]
    assert _runs(["a"]) == [(0, 1)]


@pytest.mark.parametrize("name", ["upernet", "deeplabv3", "hrnet", "ocrnet"])
def test_bad_remat_is_an_argument_error(name):
    backbone = {"upernet": "swin_tiny_test", "deeplabv3": "resnet_tiny_test"}.get(
        name, "hrnet_tiny_test"
    )
    with pytest.raises(ArgumentError, match="remat") as info:
        nnx.eval_shape(
            lambda: make_segmentor(
                name, num_classes=3, backbone=backbone, remat="layers", rngs=nnx.Rngs(0)
            )
        )
    assert info.value.argument == "remat" and "stages" in str(info.value)
