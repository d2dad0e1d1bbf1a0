"""HRNetV2 and OCRNet segmentors on an HRNet backbone (docs/METHOD.md §3.1, §3.2).

Both tap the 4 stage-4 branches (before the concatenation and, for OCR, before the context
module) for the per-scale projectors: channels [C, 2C, 4C, 8C] at strides 4, 8, 16, 32.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from msc_seg.errors import ArgumentError
from msc_seg.models.hrnet import make_hrnet
from msc_seg.models.hrnet_head import HRNetHead, concat_branches
from msc_seg.models.ocr_head import OCRHead, SoftRegionHead
from msc_seg.models.outputs import SegOutputs, finish_logits
from msc_seg.models.projector import make_projectors, project_taps
from msc_seg.models.repeat import call, check_remat


def _check_scales(num_scales: int, name: str) -> None:
    if num_scales not in (1, 2, 3, 4):
        raise ArgumentError(
            "num_scales",
            num_scales,
            f"{name} taps 1..4 scales (the reference allows 2, 3 or 4)",
        )


class HRNetSegmentor(nnx.Module):
    """HRNetV2-W48/W18 segmentor.

    images [B,H,W,3] (H, W multiples of 32) -> SegOutputs with
      logits float32 [B,H,W,num_classes] (head at stride 4, bilinear with ``align_corners``);
      aux_logits None;
      embeddings: () unless ``return_embeddings``, else ``num_scales`` float32 maps
      [B,H/2^(s+2),W/2^(s+2),D], s = 0.. (finest first).

    ``align_corners`` (True in the reference configs) applies to the branch concatenation and
    the logits upsampling; the backbone's fuse layers always use False, as in the reference.
    ``reference_head``: the reference's 3x3-BN-1x1 head without ReLU instead of the official
    1x1-BN-ReLU-1x1 (see :mod:`msc_seg.models.hrnet_head`).
    ``remat``: "none" | "blocks" | "stages": recompute each HighResolutionModule or each stage
    in the backward pass, and the branch concatenation + head in either case
    (``msc_seg.models.repeat``).
    ``scan_blocks``: run identical repeats (a stage's modules, a branch's blocks) as one
    ``lax.scan`` each (smaller program, faster compile; same parameters and numbers); False
    unrolls them.

    Submodules: ``backbone``, ``decode_head``, ``projectors``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "hrnet_w48",
        reference_head: bool = False,
        num_scales: int = 4,
        align_corners: bool = True,
        embedding_dim: int = 256,
        use_projectors: bool = True,
        remat: str = "none",
        scan_blocks: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_scales(num_scales, "HRNetSegmentor")
        self.remat = check_remat(remat)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.align_corners = align_corners
        self.num_scales = num_scales
        self.backbone = make_hrnet(backbone, remat=remat, scan=scan_blocks, **kw)
        channels = self.backbone.out_channels
        self.decode_head = HRNetHead(
            sum(channels), num_classes, reference_head=reference_head, **kw
        )
        self.projectors = make_projectors(
            channels[:num_scales], embedding_dim, use_projectors, **kw
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

        def head(decode_head, feats):
            x = concat_branches(feats, align_corners=self.align_corners)
            return decode_head(x, train=train)

        logits = call(head, self.decode_head, feats, remat=self.remat != "none")
        logits = finish_logits(
            logits, size, align_corners=self.align_corners, upsample=upsample_logits
        )
        embeddings = project_taps(
            self.projectors, feats[: self.num_scales], train, return_embeddings
        )
        return SegOutputs(logits, None, embeddings)


class OCRNetSegmentor(nnx.Module):
    """OCRNet on HRNetV2 (HRNet-W48 + OCR in the paper).

    images [B,H,W,3] (H, W multiples of 32) -> SegOutputs with
      logits float32 [B,H,W,num_classes]: the OCR head's output, upsampled;
      aux_logits float32 [B,H,W,num_classes]: the soft object regions, upsampled;
      embeddings: as :class:`HRNetSegmentor` (taps before the context module).

    ``official_aux_head``: the official HRNet-OCR 1x1 aux head instead of the reference's
    3x3(720->512) one (see :mod:`msc_seg.models.ocr_head`). ``dropout``: the reference's
    Dropout2d rate in both heads (0.0 in its configs). ``remat``: as :class:`HRNetSegmentor`
    (both heads are recomputed with the concatenation); ``scan_blocks`` as there too.

    Submodules: ``backbone``, ``decode_head`` (OCRHead), ``auxiliary_head`` (SoftRegionHead),
    ``projectors``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "hrnet_w48",
        ocr_channels: int = 512,
        key_channels: int = 256,
        dropout: float = 0.0,
        official_aux_head: bool = False,
        num_scales: int = 4,
        align_corners: bool = True,
        embedding_dim: int = 256,
        use_projectors: bool = True,
        remat: str = "none",
        scan_blocks: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_scales(num_scales, "OCRNetSegmentor")
        self.remat = check_remat(remat)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.align_corners = align_corners
        self.num_scales = num_scales
        self.backbone = make_hrnet(backbone, remat=remat, scan=scan_blocks, **kw)
        channels = self.backbone.out_channels
        self.decode_head = OCRHead(
            sum(channels),
            num_classes,
            ocr_channels=ocr_channels,
            key_channels=key_channels,
            dropout=dropout,
            **kw,
        )
        self.auxiliary_head = SoftRegionHead(
            sum(channels),
            num_classes,
            channels=ocr_channels,
            dropout=dropout,
            official=official_aux_head,
            **kw,
        )
        self.projectors = make_projectors(
            channels[:num_scales], embedding_dim, use_projectors, **kw
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

        def heads(decode_head, auxiliary_head, feats):
            x = concat_branches(feats, align_corners=self.align_corners)
            region_logits = auxiliary_head(x, train=train)
            return decode_head(x, region_logits, train=train), region_logits

        logits, region_logits = call(
            heads, self.decode_head, self.auxiliary_head, feats, remat=self.remat != "none"
        )
        logits, region_logits = (
            finish_logits(t, size, align_corners=self.align_corners, upsample=upsample_logits)
            for t in (logits, region_logits)
        )
        embeddings = project_taps(
            self.projectors, feats[: self.num_scales], train, return_embeddings
        )
        return SegOutputs(logits, region_logits, embeddings)
