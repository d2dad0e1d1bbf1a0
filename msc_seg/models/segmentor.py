"""Segmentors: backbone + decode head (+ aux head) (+ per-scale projectors) -> SegOutputs.

`make_segmentor(name, ...)` builds one by registry name. The heads compute logits at their own
stride; the segmentor upsamples them bilinearly to the input size and returns float32.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models import ordering
from msc_seg.models.fcn_head import FCNHead
from msc_seg.models.outputs import SegOutputs, finish_logits
from msc_seg.models.projector import make_projectors, project_taps
from msc_seg.models.repeat import call, check_remat
from msc_seg.models.swin import make_swin
from msc_seg.models.uper_head import UPerHead

PROJECTOR_POSITIONS = ("fpn", "backbone")


def make_uper_backbone(
    name: str,
    *,
    drop_path_rate: float,
    window_size: int | None,
    remat: str = "none",
    scan_blocks: bool = True,
    **kw,
):
    """A 4-stage backbone at strides 4-32 for UPerNet: Swin (`swin_*`) or ResNet (`resnet*`,
    output stride 32, the classic mmseg UPerNet-R50/R101)."""
    if name.startswith("resnet"):
        from msc_seg.models.resnet import make_resnet

        return make_resnet(name, output_stride=32, remat=remat, scan=scan_blocks, **kw)
    return make_swin(
        name,
        drop_path_rate=drop_path_rate,
        window_size=window_size,
        remat=remat,
        scan=scan_blocks,
        **kw,
    )


class UPerNetSegmentor(nnx.Module):
    """UPerNet (mmseg/HF style) on a Swin (or ResNet, `make_uper_backbone`) backbone.

    images [B,H,W,3] (H, W multiples of 32) -> SegOutputs with
      logits / aux_logits float32 [B,H,W,num_classes];
      embeddings: () unless `return_embeddings`, else 4 float32 maps [B,H/2^(s+2),W/2^(s+2),D],
      finest first, projected from the FPN outputs [P2..P5] (`projector_position="fpn"`, the
      released ADE20K config) or from the raw backbone stages (`"backbone"`).

    Submodules (parameter path roots): `backbone`, `decode_head`, `auxiliary_head` (when
    use_aux), `projectors` (when use_projectors).
    aux_in_index: backbone stage fed to the aux head (mmseg/HF 2; the reference uses 3).
    aux_conv_bias: a bias on the aux head's 3x3 conv (before its BN). False is mmseg/HF (their
      weights map); the authors' released UPerNet-Swin ADE20K config is
      `aux_in_index=3, aux_conv_bias=True` (Swin-T, K=150, with projectors: 62,404,838
      parameters against mmseg's 61,519,846: the 3x3 conv reads 768 instead of 384 channels,
      +884,736, and has 256 biases).
    remat: "none" | "blocks" | "stages": recompute each backbone block (Swin block / ResNet
      bottleneck) or each stage in the backward pass, and the decode head in either case; same
      outputs and gradients, less activation memory, about one more forward of compute
      (`msc_seg.models.repeat`).
    scan_blocks: run repeated identical backbone blocks as one `lax.scan` (smaller program,
      faster compile; same parameters and numbers). False unrolls them.
    dtype: compute dtype (bfloat16 allowed); parameters stay in param_dtype.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "swin_t",
        decoder_channels: int = 512,
        aux_channels: int = 256,
        aux_in_index: int = 2,
        aux_conv_bias: bool = False,
        dropout: float = 0.1,
        drop_path_rate: float = 0.3,
        window_size: int | None = None,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        align_corners: bool = False,
        projector_position: str = "fpn",
        embedding_dim: int = 256,
        use_aux: bool = True,
        use_projectors: bool = True,
        remat: str = "none",
        scan_blocks: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.remat = check_remat(remat)
        if projector_position not in PROJECTOR_POSITIONS:
            raise ArgumentError(
                "projector_position",
                projector_position,
                f"UPerNetSegmentor's projector position must be one of {PROJECTOR_POSITIONS}",
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.align_corners = align_corners
        self.projector_position = projector_position
        self.aux_in_index = aux_in_index
        self.backbone = make_uper_backbone(
            backbone,
            drop_path_rate=drop_path_rate,
            window_size=window_size,
            remat=remat,
            scan_blocks=scan_blocks,
            **kw,
        )
        stage_channels = self.backbone.out_channels
        n = len(stage_channels)
        if not isinstance(aux_in_index, (int, np.integer)) or not -n <= aux_in_index < n:
            raise ArgumentError(
                "aux_in_index",
                aux_in_index,
                f"out of range for the {n} backbone stages of UPerNetSegmentor: use 0..{n - 1}",
            )
        self.decode_head = UPerHead(
            stage_channels,
            num_classes,
            channels=decoder_channels,
            pool_scales=pool_scales,
            dropout=dropout,
            align_corners=align_corners,
            **kw,
        )
        self.auxiliary_head = (
            FCNHead(
                stage_channels[aux_in_index],
                num_classes,
                channels=aux_channels,
                dropout=dropout,
                conv_bias=aux_conv_bias,
                **kw,
            )
            if use_aux
            else None
        )
        tap_channels = (
            (decoder_channels,) * len(stage_channels)
            if projector_position == "fpn"
            else stage_channels
        )
        self.projectors = make_projectors(tap_channels, embedding_dim, use_projectors, **kw)

    def __call__(
        self,
        images: jax.Array,
        *,
        train: bool = False,
        return_embeddings: bool = False,
        upsample_logits: bool = True,
    ) -> SegOutputs:
        size = images.shape[1:3]
        finish = functools.partial(
            finish_logits, size=size, align_corners=self.align_corners, upsample=upsample_logits
        )
        feats = self.backbone(images.astype(self.dtype), train=train)

        def head_and_projectors(head, projectors, feats):
            fpn_outs, fused = head.features(feats, train=train)
            taps = fpn_outs if self.projector_position == "fpn" else feats
            # Memory: the projectors' backward would otherwise run at the forward pass's end
            # (the peak); recomputed and tied to the fused map's gradient, it runs once the
            # head's backward has freed its largest buffers (Swin-T step: see benchmarks/
            # README, "projectors after the head").
            embeddings = project_taps(
                projectors, taps, train, return_embeddings, recompute_late=train
            )
            if embeddings:
                embeddings, fused = ordering.backward_after(embeddings, fused)
            return head.classify(fused, train=train), embeddings

        logits, embeddings = call(
            head_and_projectors,
            self.decode_head,
            self.projectors,
            feats,
            remat=self.remat != "none",
        )
        aux = None
        if self.auxiliary_head is not None:
            aux = finish(self.auxiliary_head(feats[self.aux_in_index], train=train))
        return SegOutputs(finish(logits), aux, embeddings)


# name -> factory(*, num_classes, rngs, **kwargs), or "module:attribute" imported on first use
# (lazy, so that model files can import this package without an import cycle).
SEGMENTORS: dict[str, Callable[..., nnx.Module] | str] = {
    "upernet": UPerNetSegmentor,
    "deeplabv3": "msc_seg.models.deeplab:DeepLabV3Segmentor",
    "hrnet": "msc_seg.models.hrnet_seg:HRNetSegmentor",
    "ocrnet": "msc_seg.models.hrnet_seg:OCRNetSegmentor",
}


def register_segmentor(name: str, factory: Callable[..., nnx.Module] | str) -> None:
    """Add a segmentor factory `factory(*, num_classes, rngs, **kwargs)` (or its
    "module:attribute" path) under `name`."""
    SEGMENTORS[name] = factory


def resolve_segmentor(name: str) -> Callable[..., nnx.Module]:
    factory = SEGMENTORS[name]
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        SEGMENTORS[name] = factory
    return factory


def make_segmentor(name: str, *, num_classes: int, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """Build the segmentor registered as `name` (e.g. "upernet"); kwargs go to its constructor."""
    if name not in SEGMENTORS:
        raise ArgumentError("name", name, f"unknown segmentor: choose one of {sorted(SEGMENTORS)}")
    return resolve_segmentor(name)(num_classes=num_classes, rngs=rngs, **kwargs)


def count_params(model: nnx.Module) -> dict[str, int]:
    """Number of nnx.Param scalars per top-level submodule, plus "total".

    Works on abstract models from `nnx.eval_shape` (only shapes are read)."""
    counts: dict[str, int] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        n = int(np.prod(var.get_value().shape))
        counts[str(path[0])] = counts.get(str(path[0]), 0) + n
    counts["total"] = sum(counts.values())
    return counts
