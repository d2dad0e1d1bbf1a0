"""UPerNet with a Swin backbone from Hugging Face transformers (`hf_upernet`):
UperNetForSemanticSegmentation, e.g. openmmlab/upernet-swin-*.

Target "model" (the default) converts the backbone, the decode head and the auxiliary FCN head
into msc_seg.models.segmentor.UPerNetSegmentor; target "backbone" keeps only the Swin backbone
(e.g. to fine-tune on another class set). The head sizes (classes, channels, pool scales) are
read from the tensors and config.json.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from msc_seg.tools.weights.common import Architecture, Canon, ConversionError, Converter, Request
from msc_seg.tools.weights.detect import count, require
from msc_seg.tools.weights.swin import build_hf_swin, canon_hf_swin, merge_qkv

HEADS = ("decode_head.", "auxiliary_head.")
DEFAULT_POOL_SCALES = (1, 2, 3, 6)


def canon_hf_upernet(key: str, target: str) -> tuple[str | None, str]:
    if key.startswith("backbone."):
        canon, why = canon_hf_swin(key[len("backbone.") :])
        if canon is None or target == "backbone":
            return canon, why
        return "backbone." + canon, ""
    if not key.startswith(HEADS):
        return key, ""
    if target == "backbone":
        return None, "decode/auxiliary head: not converted with --target backbone"
    # HF wraps each PPM branch as Sequential(AdaptiveAvgPool2d, ConvModule).
    return re.sub(r"^decode_head\.psp_modules\.(\d+)\.1\.", r"decode_head.psp_modules.\1.", key), ""


def upernet_kwargs(
    canon: Mapping[str, Any],
    name: str,
    window: int,
    hf_config: Mapping[str, Any] | None,
    source: str,
    notes: list[str],
) -> dict[str, Any]:
    """UPerNetSegmentor arguments that fit an HF UperNet checkpoint's head shapes."""
    cls = require(
        canon, "decode_head.classifier.weight", "UPerNet classifier", source, "hf_upernet"
    )
    num_psp = count(canon, "decode_head.psp_modules.{}.conv.weight")
    pool_scales = tuple((hf_config or {}).get("pool_scales") or ())
    if len(pool_scales) != num_psp:
        if num_psp != len(DEFAULT_POOL_SCALES):
            raise ConversionError(
                f"{source}: {num_psp} PPM branches but no config.json with pool_scales beside "
                "it; put the model's config.json next to the checkpoint"
            )
        pool_scales = DEFAULT_POOL_SCALES
        notes.append(f"pool_scales {DEFAULT_POOL_SCALES} assumed: no config.json gives them")
    kwargs = dict(
        num_classes=int(cls.shape[0]),
        backbone=name,
        window_size=window,
        decoder_channels=int(cls.shape[1]),
        pool_scales=pool_scales,
        use_aux="auxiliary_head.classifier.weight" in canon,
        aux_in_index=2,  # HF's UperNetFCNHead always reads backbone stage 2
        align_corners=False,
    )
    if kwargs["use_aux"]:
        kwargs["aux_channels"] = int(canon["auxiliary_head.classifier.weight"][0].shape[1])
    return kwargs


def build_upernet(canon: Canon, req: Request) -> Architecture:
    if req.target == "backbone":  # the canonical keys are the backbone's, without `backbone.`
        return build_hf_swin(canon, req)
    from msc_seg.models.segmentor import UPerNetSegmentor

    n = len("backbone.")
    swin = build_hf_swin({k[n:]: v for k, v in canon.items() if k.startswith("backbone.")}, req)
    name, window = swin.description["backbone"], swin.description["window_size"]
    kwargs = upernet_kwargs(canon, name, window, req.hf_config, req.source, req.notes)
    req.notes.append(f"num_classes {kwargs['num_classes']}: the dataset must have as many")
    return Architecture(
        description={"family": "upernet", **kwargs},
        config_overrides={
            "model.name": "upernet",
            "model.backbone": name,
            "model.window_size": window,
            "model.decoder_channels": kwargs["decoder_channels"],
            "model.aux_channels": kwargs.get("aux_channels", 0),
            "model.aux_in_index": kwargs["aux_in_index"],
        },
        factory=lambda rngs: UPerNetSegmentor(
            **kwargs, drop_path_rate=0.0, use_projectors=False, rngs=rngs
        ),
        missing_by_design={f"backbone/{p}": why for p, why in swin.missing_by_design.items()},
    )


HF_UPERNET = Converter(
    format="hf_upernet",
    family="upernet",
    summary="transformers UperNetForSemanticSegmentation with a Swin backbone (backbone + "
    "decode head + aux head; --target backbone keeps the backbone only)",
    canonicalise=canon_hf_upernet,
    build=build_upernet,
    targets=("model", "backbone"),
    postprocess=merge_qkv,
)
