"""DeepLabV3 on a dilated ResNet, with per-scale projectors on chosen ResNet layers.

Reference: ``models/DeepLabv3.py`` (docs/METHOD.md §3.4). Taps default to the reference's legacy
choice (layer1 + layer4); ``taps=("layer1", "layer3", "layer4")`` is its 3-scale option.
Deviations from the reference (each switchable):
* ASPP rates follow the output stride (12/24/36 at OS8, 6/12/18 at OS16); the reference
  hard-codes 12/24/36 at any OS (pass ``aspp_dilations=(12, 24, 36)``).
* ASPP BN eps 1e-5; the reference's 3e-4 with ``aspp_reference_bn_eps=True``.
* a layer2 tap gets its true 512 channels (the reference would build a 256-channel projector).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models.aspp import REFERENCE_ASPP_BN_EPS, ASPPHead
from msc_seg.models.aspp import aspp_dilations as default_aspp_dilations
from msc_seg.models.layers import TORCH_BN_EPS
from msc_seg.models.outputs import SegOutputs, finish_logits
from msc_seg.models.projector import make_projectors, project_taps
from msc_seg.models.repeat import call, check_remat
from msc_seg.models.resnet import make_resnet

RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _check_taps(taps: Sequence[str]) -> tuple[int, ...]:
    """Layer names -> indices, finest first; raises on unknown or unordered names."""
    if not taps or any(t not in RESNET_LAYERS for t in taps):
        raise ArgumentError(
            "taps",
            tuple(taps),
            f"DeepLabV3Segmentor's taps must be non-empty names from {RESNET_LAYERS}",
        )
    index = tuple(RESNET_LAYERS.index(t) for t in taps)
    if list(index) != sorted(set(index)):
        raise ArgumentError(
            "taps",
            tuple(taps),
            "DeepLabV3Segmentor's taps must be distinct and ordered finest first, e.g. "
            "('layer1', 'layer3', 'layer4')",
        )
    return index


class DeepLabV3Segmentor(nnx.Module):
    """DeepLabV3 (ResNet + ASPP).

    images [B,H,W,3] -> SegOutputs with
      logits float32 [B,H,W,num_classes] (bilinear, ``align_corners``; the reference uses True);
      aux_logits None;
      embeddings: () unless ``return_embeddings``, else one float32 [B,h_s,w_s,D] per tap
      (layer1 at stride 4, layer3/layer4 at the output stride; finest first).

    ``remat``: "none" | "blocks" | "stages": recompute each ResNet bottleneck or each layer in
    the backward pass, and the ASPP head in either case (``msc_seg.models.repeat``).
    ``scan_blocks``: run each layer's identical bottlenecks as one ``lax.scan`` (smaller
    program, faster compile; same parameters and numbers); False unrolls them.

    Submodules: ``backbone`` (ResNet), ``decode_head`` (ASPPHead), ``projectors``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet101",
        output_stride: int = 8,
        aspp_channels: int = 256,
        aspp_dilations: Sequence[int] | None = None,
        aspp_reference_bn_eps: bool = False,
        taps: Sequence[str] = ("layer1", "layer4"),
        align_corners: bool = True,
        embedding_dim: int = 256,
        use_projectors: bool = True,
        remat: str = "none",
        scan_blocks: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.remat = check_remat(remat)
        self.tap_index = _check_taps(taps)
        self.dtype = dtype
        self.align_corners = align_corners
        self.backbone = make_resnet(
            backbone, output_stride=output_stride, remat=remat, scan=scan_blocks, **kw
        )
        channels = self.backbone.out_channels
        dilations = (
            tuple(aspp_dilations)
            if aspp_dilations is not None
            else default_aspp_dilations(output_stride)
        )
        self.decode_head = ASPPHead(
            channels[-1],
            num_classes,
            channels=aspp_channels,
            dilations=dilations,
            bn_epsilon=REFERENCE_ASPP_BN_EPS if aspp_reference_bn_eps else TORCH_BN_EPS,
            **kw,
        )
        self.projectors = make_projectors(
            [channels[i] for i in self.tap_index], embedding_dim, use_projectors, **kw
        )

    def __call__(
        self,
        images: jax.Array,
        *,
        train: bool = False,
        return_embeddings: bool = False,
        upsample_logits: bool = True,
    ) -> SegOutputs:
        size = images.shape[1:3]
        feats = self.backbone(images.astype(self.dtype), train=train)
        logits = call(
            lambda head, x: head(x, train=train),
            self.decode_head,
            feats[-1],
            remat=self.remat != "none",
        )
        logits = finish_logits(
            logits, size, align_corners=self.align_corners, upsample=upsample_logits
        )
        embeddings = project_taps(
            self.projectors, [feats[i] for i in self.tap_index], train, return_embeddings
        )
        return SegOutputs(logits, None, embeddings)
