"""ResNet-50/101 backbones in the torchvision layout, with dilation for output stride 8/16.

Parameter paths map 1:1 to torchvision keys (``layer1.0.downsample.0.weight`` <->
``('layer1', 0, 'downsample', 0, 'kernel')``; BatchNorm ``weight/bias/running_mean/running_var``
<-> ``scale/bias/mean/var``; conv kernels are HWIO here, OIHW in torch). The ``fc`` classifier is
left out. The torch-layout building blocks (:class:`IndexedSequential`, :func:`make_conv`,
:func:`make_batch_norm`, :class:`BasicBlock`, :class:`Bottleneck`) are shared with HRNet and the
CNN heads so that their parameter paths follow the same rules.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models.conv import conv_layer
from msc_seg.models.layers import TORCH_BN_EPS, kaiming_normal_fan_out
from msc_seg.models.repeat import call, check_remat, run_chain


class IndexedSequential(nnx.List):
    """A torch ``nn.Sequential``: layers applied in order, parameter paths ``0, 1, 2, ...``.

    Entries may be ``nnx.Conv``, ``nnx.BatchNorm`` (``use_running_average=not train``),
    ``nnx.Dropout`` (``deterministic=not train``), modules with a ``train`` keyword, or plain
    functions such as ``jax.nn.relu`` (no parameters, but they keep torch's indices aligned).
    """

    def __call__(self, x, *, train: bool = False):
        for layer in self:
            x = apply_layer(layer, x, train=train)
        return x


def apply_layer(layer, x, *, train: bool):
    """Calls one layer of an :class:`IndexedSequential` with the right train switch."""
    if isinstance(layer, nnx.BatchNorm):
        return layer(x, use_running_average=not train)
    if isinstance(layer, nnx.Dropout):
        return layer(x, deterministic=not train)
    if isinstance(layer, nnx.Conv) or not isinstance(layer, nnx.Module):
        return layer(x)
    return layer(x, train=train)


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
    kernel_init: Callable = kaiming_normal_fan_out,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A torch-style ``Conv2d`` on NHWC: symmetric padding ``dilation * (k - 1) // 2``.

    Flax's ``"SAME"`` pads stride-2 convs asymmetrically, which would shift every feature map
    by half a pixel against torch; the explicit padding keeps pretrained weights exact.
    """
    pad = dilation * (kernel_size - 1) // 2
    return conv_layer(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=nnx.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def make_batch_norm(
    channels: int,
    *,
    epsilon: float = TORCH_BN_EPS,
    momentum: float = 0.9,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """``BatchNorm2d(channels)`` with torch defaults (momentum 0.1 -> flax 0.9, eps 1e-5)."""
    return nnx.BatchNorm(
        channels,
        epsilon=epsilon,
        momentum=momentum,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def make_downsample(
    in_channels: int,
    out_channels: int,
    stride: int,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> IndexedSequential:
    """The residual projection ``Sequential(conv1x1(stride), BatchNorm)``."""
    return IndexedSequential(
        [
            make_conv(
                in_channels,
                out_channels,
                1,
                stride=stride,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            ),
            make_batch_norm(out_channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs),
        ]
    )


class Bottleneck(nnx.Module):
    """torchvision ``Bottleneck`` (ResNet v1.5: the stride sits on the 3x3 conv).

    ``[B,H,W,in_channels] -> [B,H/stride,W/stride,4*planes]``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_channels = planes * self.expansion
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = make_conv(in_channels, planes, 1, **kw)
        self.bn1 = make_batch_norm(planes, **kw)
        self.conv2 = make_conv(planes, planes, 3, stride=stride, dilation=dilation, **kw)
        self.bn2 = make_batch_norm(planes, **kw)
        self.conv3 = make_conv(planes, out_channels, 1, **kw)
        self.bn3 = make_batch_norm(out_channels, **kw)
        self.downsample = (
            make_downsample(in_channels, out_channels, stride, **kw)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        ura = not train
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        out = jax.nn.relu(self.bn2(self.conv2(out), use_running_average=ura))
        out = self.bn3(self.conv3(out), use_running_average=ura)
        identity = x if self.downsample is None else self.downsample(x, train=train)
        return jax.nn.relu(out + identity)


class BasicBlock(nnx.Module):
    """torchvision ``BasicBlock`` (two 3x3 convs), as used by HRNet's branches.

    ``[B,H,W,in_channels] -> [B,H/stride,W/stride,planes]``.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = make_conv(in_channels, planes, 3, stride=stride, **kw)
        self.bn1 = make_batch_norm(planes, **kw)
        self.conv2 = make_conv(planes, planes, 3, **kw)
        self.bn2 = make_batch_norm(planes, **kw)
        self.downsample = (
            make_downsample(in_channels, planes, stride, **kw)
            if stride != 1 or in_channels != planes
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        ura = not train
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        out = self.bn2(self.conv2(out), use_running_average=ura)
        identity = x if self.downsample is None else self.downsample(x, train=train)
        return jax.nn.relu(out + identity)


def layer_dilations(output_stride: int) -> tuple[tuple[int, int], ...]:
    """(stride, dilation) of layer1..layer4 for an output stride, as torchvision's
    ``replace_stride_with_dilation`` sets them (8: layer3+4 dilated, 16: layer4, 32: none).
    """
    if output_stride not in (8, 16, 32):
        raise ArgumentError(
            "output_stride", output_stride, "ResNet supports output strides 8, 16 or 32"
        )
    dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
    plan, dilation = [(1, 1)], 1
    for replace in dilate[output_stride]:
        if replace:
            dilation *= 2
            plan.append((1, dilation))
        else:
            plan.append((2, dilation))
    return tuple(plan)


class ResNet(nnx.Module):
    """ResNet backbone: ``[B,H,W,3] -> (layer1, layer2, layer3, layer4)``, finest first.

    Strides of the outputs are ``self.strides`` (OS8: 4, 8, 8, 8; OS16: 4, 8, 16, 16; OS32:
    4, 8, 16, 32) and channels ``self.out_channels`` (ResNet-50/101: 256, 512, 1024, 2048).

    Args:
      block_counts: Bottlenecks per layer, (3, 4, 6, 3) for ResNet-50, (3, 4, 23, 3) for 101.
      output_stride: 8, 16 or 32; layers past it replace their stride by dilation, and, as in
        torchvision, the first block of a dilated layer keeps the previous layer's dilation.
      stem_channels: channels of conv1 (64).
      planes: bottleneck widths of layer1..4 (64, 128, 256, 512); outputs are 4x these.
      scan: run each layer's identical bottlenecks (all but the first) as one `lax.scan`
        (`repeat.run_chain`: one compiled copy; same parameters and numbers). False unrolls.
      remat: "none", "blocks" (recompute each bottleneck in the backward) or "stages" (each
        layer), see `msc_seg.models.repeat`.
    """

    def __init__(
        self,
        block_counts: Sequence[int],
        *,
        output_stride: int = 8,
        stem_channels: int = 64,
        planes: Sequence[int] = (64, 128, 256, 512),
        scan: bool = True,
        remat: str = "none",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.scan = scan
        self.remat = check_remat(remat)
        if len(block_counts) != 4 or len(planes) != 4:
            raise ValueError(
                f"ResNet needs 4 block counts and 4 plane widths, got {block_counts} and {planes}."
            )
        plan = layer_dilations(output_stride)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = make_conv(3, stem_channels, 7, stride=2, **kw)
        self.bn1 = make_batch_norm(stem_channels, **kw)
        in_channels, total_stride, strides = stem_channels, 4, []
        prev_dilation = 1
        for index, ((stride, dilation), count, width) in enumerate(
            zip(plan, block_counts, planes, strict=True)
        ):
            blocks = [Bottleneck(in_channels, width, stride=stride, dilation=prev_dilation, **kw)]
            in_channels = width * Bottleneck.expansion
            blocks += [
                Bottleneck(in_channels, width, dilation=dilation, **kw) for _ in range(count - 1)
            ]
            setattr(self, f"layer{index + 1}", IndexedSequential(blocks))
            prev_dilation = dilation
            total_stride *= stride
            strides.append(total_stride)
        self.out_channels = tuple(w * Bottleneck.expansion for w in planes)
        self.strides = tuple(strides)
        self.output_stride = output_stride

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, ...]:
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = call(
                lambda layer, x: run_chain(
                    layer,
                    x,
                    lambda block, y: block(y, train=train),
                    scan=self.scan,
                    remat=self.remat == "blocks",
                ),
                layer,
                x,
                remat=self.remat == "stages",
            )
            feats.append(x)
        return tuple(feats)


RESNET_BLOCK_COUNTS = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet_tiny_test": (1, 2, 1, 1),
}


def make_resnet(
    name: str,
    *,
    output_stride: int = 8,
    scan: bool = True,
    remat: str = "none",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> ResNet:
    """Builds ``resnet50``, ``resnet101`` or ``resnet_tiny_test`` (8-channel stem, planes
    8/16/32/64, blocks 1/2/1/1: for tests only). scan, remat: see :class:`ResNet`."""
    if name not in RESNET_BLOCK_COUNTS:
        raise ArgumentError(
            "backbone",
            name,
            f"unknown ResNet backbone: choose one of {sorted(RESNET_BLOCK_COUNTS)}",
        )
    tiny = name == "resnet_tiny_test"
    return ResNet(
        RESNET_BLOCK_COUNTS[name],
        output_stride=output_stride,
        stem_channels=8 if tiny else 64,
        planes=(8, 16, 32, 64) if tiny else (64, 128, 256, 512),
        scan=scan,
        remat=remat,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
