"""HRNetV2 backbones (W48, W18) in the layout of the official ImageNet checkpoints.

Parameter paths map 1:1 to ``hrnetv2_w48_imagenet_pretrained.pth`` keys (``conv1, bn1, conv2,
bn2, layer1, transition1..3, stage2..4`` with ``branches`` and ``fuse_layers``), by the same
rules as :mod:`msc_seg.models.resnet`. The checkpoint's classification keys (``incre_modules``,
``downsamp_modules``, ``final_layer``, ``classifier``) have no counterpart here.

As in the paper's reference code, the fuse layers upsample bilinearly with
``align_corners=False`` (the classification HRNet uses nearest); the 4-branch concatenation of the
segmentation heads lives in :mod:`msc_seg.models.hrnet_head`.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models.layers import resize_bilinear
from msc_seg.models.repeat import call, check_remat, run_chain
from msc_seg.models.resnet import (
    BasicBlock,
    Bottleneck,
    IndexedSequential,
    make_batch_norm,
    make_conv,
)


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
    """Sizes of an HRNetV2 backbone.

    stem_channels: channels of the two stride-2 stem convs (64).
    stage1_planes, stage1_blocks: Bottleneck width and count of stage 1 (64 -> 256 out, 4 blocks).
    width: C; branches of stages 2-4 have [C, 2C, 4C, 8C] channels.
    modules: HighResolutionModules in stages 2, 3, 4 (1, 4, 3).
    blocks: BasicBlocks per branch in every module (4).
    """

    stem_channels: int = 64
    stage1_planes: int = 64
    stage1_blocks: int = 4
    width: int = 48
    modules: tuple[int, int, int] = (1, 4, 3)
    blocks: int = 4

    @property
    def branch_channels(self) -> tuple[int, int, int, int]:
        return tuple(self.width * 2**i for i in range(4))


HRNET_CONFIGS = {
    "hrnet_w48": HRNetConfig(width=48),
    "hrnet_w18": HRNetConfig(width=18),
    "hrnet_tiny_test": HRNetConfig(
        stem_channels=16, stage1_planes=8, stage1_blocks=1, width=8, modules=(1, 1, 1), blocks=1
    ),
}


def _conv_bn(in_channels, out_channels, kernel_size, *, stride=1, relu, kw) -> IndexedSequential:
    """``Sequential(conv, BN[, ReLU])``: the unit every transition and fuse path is made of."""
    layers = [
        make_conv(in_channels, out_channels, kernel_size, stride=stride, **kw),
        make_batch_norm(out_channels, **kw),
    ]
    if relu:
        layers.append(jax.nn.relu)
    return IndexedSequential(layers)


class HighResolutionModule(nnx.Module):
    """One multi-resolution module: a BasicBlock chain per branch, then the exchange unit.

    ``list of [B,H/2^i*s,W/2^i*s,C_i] -> list of the same shapes``. Fuse output i sums branch j
    after: 1x1 conv + BN + bilinear upsampling (j > i), identity (j == i), or i - j stride-2
    3x3 conv + BN steps, ReLU on all but the last (j < i); then ReLU.
    """

    def __init__(
        self,
        channels: Sequence[int],
        blocks: int,
        *,
        scan: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.scan = scan
        n = len(channels)
        self.branches = nnx.List(
            [IndexedSequential([BasicBlock(c, c, **kw) for _ in range(blocks)]) for c in channels]
        )
        fuse_layers = []
        for i in range(n):
            row = []
            for j in range(n):
                if j > i:
                    row.append(_conv_bn(channels[j], channels[i], 1, relu=False, kw=kw))
                elif j == i:
                    row.append(None)
                else:
                    steps = [
                        _conv_bn(channels[j], channels[j], 3, stride=2, relu=True, kw=kw)
                        for _ in range(i - j - 1)
                    ]
                    steps.append(_conv_bn(channels[j], channels[i], 3, stride=2, relu=False, kw=kw))
                    row.append(IndexedSequential(steps))
            fuse_layers.append(nnx.List(row))
        self.fuse_layers = nnx.List(fuse_layers) if n > 1 else None

    def __call__(self, xs: Sequence[jax.Array], *, train: bool = False) -> list[jax.Array]:
        xs = [
            run_chain(branch, x, lambda block, y: block(y, train=train), scan=self.scan)
            for branch, x in zip(self.branches, xs, strict=True)
        ]
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            # Summation order as in the reference (branch 0 first), for float parity.
            y = xs[0] if i == 0 else row[0](xs[0], train=train)
            for j in range(1, len(xs)):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    z = row[j](xs[j], train=train)
                    y = y + resize_bilinear(z, xs[i].shape[1:3], align_corners=False)
                else:
                    y = y + row[j](xs[j], train=train)
            fused.append(jax.nn.relu(y))
        return fused


def _make_transition(prev: Sequence[int], cur: Sequence[int], kw) -> nnx.List:
    """``transitionN``: adapts stage outputs to the next stage's branches; new branches come
    from the coarsest previous branch through stride-2 3x3 convs."""
    layers = []
    for i, c in enumerate(cur):
        if i < len(prev):
            layers.append(_conv_bn(prev[i], c, 3, relu=True, kw=kw) if prev[i] != c else None)
        else:
            steps = [
                _conv_bn(
                    prev[-1],
                    c if k == i - len(prev) else prev[-1],
                    3,
                    stride=2,
                    relu=True,
                    kw=kw,
                )
                for k in range(i + 1 - len(prev))
            ]
            layers.append(IndexedSequential(steps))
    return nnx.List(layers)


class HRNet(nnx.Module):
    """HRNetV2 backbone: ``[B,H,W,3] -> (x4, x8, x16, x32)``, the 4 branches of stage 4.

    Output channels ``self.out_channels`` = [C, 2C, 4C, 8C] (W48: 48, 96, 192, 384) at strides
    ``self.strides`` = (4, 8, 16, 32).

    scan: run identical repeats (a stage's modules, a branch's BasicBlocks, layer1's
    bottlenecks after the first) as one ``lax.scan`` each (``repeat.run_chain``: one compiled
    copy; same parameters and numbers). False unrolls.
    remat: "none", "blocks" (recompute each HighResolutionModule and layer1 bottleneck in the
    backward) or "stages" (layer1 and each transition + stage), see ``msc_seg.models.repeat``.
    """

    def __init__(
        self,
        arch: HRNetConfig,
        *,
        scan: bool = True,
        remat: str = "none",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.scan = scan
        self.remat = check_remat(remat)
        stem = arch.stem_channels
        self.conv1 = make_conv(3, stem, 3, stride=2, **kw)
        self.bn1 = make_batch_norm(stem, **kw)
        self.conv2 = make_conv(stem, stem, 3, stride=2, **kw)
        self.bn2 = make_batch_norm(stem, **kw)
        planes = arch.stage1_planes
        stage1_out = planes * Bottleneck.expansion
        self.layer1 = IndexedSequential(
            [Bottleneck(stem, planes, **kw)]
            + [Bottleneck(stage1_out, planes, **kw) for _ in range(arch.stage1_blocks - 1)]
        )
        prev = [stage1_out]
        for stage, num_modules in zip((2, 3, 4), arch.modules, strict=True):
            cur = arch.branch_channels[:stage]
            setattr(self, f"transition{stage - 1}", _make_transition(prev, cur, kw))
            setattr(
                self,
                f"stage{stage}",
                IndexedSequential(
                    [
                        HighResolutionModule(cur, arch.blocks, scan=scan, **kw)
                        for _ in range(num_modules)
                    ]
                ),
            )
            prev = cur
        self.out_channels = arch.branch_channels
        self.strides = (4, 8, 16, 32)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, ...]:
        ura = not train
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        x = jax.nn.relu(self.bn2(self.conv2(x), use_running_average=ura))
        blocks, stages = self.remat == "blocks", self.remat == "stages"

        def apply(module, y):
            return module(y, train=train)

        def run_layer1(layer, y):
            return run_chain(layer, y, apply, scan=self.scan, remat=blocks)

        def run_stage(transition, stage, xs):
            inputs = []
            for i, t in enumerate(transition):
                # New branches grow from the coarsest existing one.
                src = xs[min(i, len(xs) - 1)]
                inputs.append(src if t is None else t(src, train=train))
            return run_chain(stage, inputs, apply, scan=self.scan, remat=blocks)

        xs = [call(run_layer1, self.layer1, x, remat=stages)]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            xs = call(run_stage, transition, stage, xs, remat=stages)
        return tuple(xs)


def make_hrnet(
    name: str,
    *,
    scan: bool = True,
    remat: str = "none",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> HRNet:
    """Builds ``hrnet_w48``, ``hrnet_w18`` or ``hrnet_tiny_test`` (C=8, one module per stage,
    one block per branch: for tests only). scan, remat: see :class:`HRNet`."""
    if name not in HRNET_CONFIGS:
        raise ArgumentError(
            "backbone", name, f"unknown HRNet backbone: choose one of {sorted(HRNET_CONFIGS)}"
        )
    return HRNet(
        HRNET_CONFIGS[name],
        scan=scan,
        remat=remat,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
