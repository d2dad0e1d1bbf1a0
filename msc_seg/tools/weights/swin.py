"""Swin backbones: Microsoft's official checkpoints (`swin_official`) and Hugging Face
transformers Swin models (`hf_swin`).

Both are renamed to the official layout, which msc_seg.models.swin mirrors. Hugging Face keeps
q, k and v as separate projections; `merge_qkv` concatenates them into the official fused
`qkv`. Neither ImageNet layout has the segmentation backbone's per-stage output norms
(norm0..norm3): those stay at init (weight 1, bias 0), as in the reference implementation.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from msc_seg.tools.weights.common import (
    WRAPPER_PREFIXES,
    Architecture,
    Canon,
    Converter,
    Request,
    Rule,
    apply_rules,
    ignored,
    strip_prefixes,
)
from msc_seg.tools.weights.detect import detect_swin

BUFFER_INDEX = "constant buffer (relative_position_index): derived from the window size"

SWIN_OFFICIAL_IGNORES = (
    (
        r"^norm\.",
        "final LayerNorm of the ImageNet classifier (the segmentation backbone has "
        "per-stage output norms norm0..norm3 instead)",
    ),
    (r"^head\.", "ImageNet classification head"),
    (
        r"\.attn_mask$",
        "shifted-window attention mask buffer: rebuilt for the padded feature size at run time",
    ),
    (r"\.relative_position_index$", BUFFER_INDEX),
)
SWIN_OUTPUT_NORM_MISSING = (
    "per-stage output LayerNorm of the segmentation backbone: not in ImageNet checkpoints, "
    "kept at init (weight 1, bias 0) as in the reference"
)

# Block-relative HF name prefix -> official name prefix (legacy and transformers-5 names).
HF_SWIN_BLOCK = (
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("attention.self.query.", "attn.q."),
    ("attention.q_proj.", "attn.q."),
    ("attention.self.key.", "attn.k."),
    ("attention.k_proj.", "attn.k."),
    ("attention.self.value.", "attn.v."),
    ("attention.v_proj.", "attn.v."),
    ("attention.output.dense.", "attn.proj."),
    ("attention.o_proj.", "attn.proj."),
    ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
    (
        "attention.relative_position_bias.relative_position_bias_table",
        "attn.relative_position_bias_table",
    ),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
HF_SWIN_RULES: tuple[Rule, ...] = (
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.(\d+)\.", r"layers.\1."),
    (r"^hidden_states_norms\.stage(\d+)\.", lambda m: f"norm{int(m[1]) - 1}."),
)
HF_SWIN_IGNORES = (
    (r"relative_position_index$", BUFFER_INDEX),
    (
        r"^layernorm\.",
        "SwinModel's final LayerNorm after the last stage (for classification): "
        "the backbone's outputs use the per-stage norms (hidden_states_norms) instead",
    ),
    (r"^classifier\.", "ImageNet classification head"),
    (r"^embeddings\.mask_token$", "masked-image-modelling token"),
)
HF_SWIN_OUTPUT_NORM_MISSING = (
    "per-stage output LayerNorm: HF SwinModel has none (SwinBackbone stores them as "
    "hidden_states_norms), kept at init (weight 1, bias 0)"
)


def canon_swin_official(key: str, target: str = "backbone") -> tuple[str | None, str]:
    del target  # backbone only
    key = strip_prefixes(key, WRAPPER_PREFIXES)
    why = ignored(key, SWIN_OFFICIAL_IGNORES)
    return (None, why) if why else (key, "")


def canon_hf_swin(key: str, target: str = "backbone") -> tuple[str | None, str]:
    del target  # backbone only
    key = strip_prefixes(key, ("backbone.", "swin.", "model."))
    why = ignored(key, HF_SWIN_IGNORES)
    if why:
        return None, why
    key = apply_rules(key, HF_SWIN_RULES)
    m = re.match(r"^(layers\.\d+\.blocks\.\d+\.)(.*)$", key)
    if m:
        head, tail = m.groups()
        for old, new in HF_SWIN_BLOCK:
            if tail.startswith(old):
                return head + new + tail[len(old) :], ""
    return key, ""


def merge_qkv(canon: Canon) -> Canon:
    """Concatenate HF's separate q/k/v projections (rows [3*C]) into the official fused `qkv`."""
    out = dict(canon)
    for key in list(canon):
        m = re.match(r"^(.*\.attn)\.q\.(weight|bias)$", key)
        if not m:
            continue
        base, kind = m.groups()
        parts = [f"{base}.{n}.{kind}" for n in ("q", "k", "v")]
        if all(p in canon for p in parts):
            out[f"{base}.qkv.{kind}"] = (
                np.concatenate([canon[p][0] for p in parts], axis=0),
                [s for p in parts for s in canon[p][1]],
            )
            for p in parts:
                del out[p]
    return out


def swin_factory(name: str, window: int):
    from msc_seg.models.swin import make_swin

    return lambda rngs: make_swin(name, window_size=window, drop_path_rate=0.0, rngs=rngs)


def build_swin(canon: Canon, req: Request, *, norm_reason: str) -> Architecture:
    """A Swin backbone of the detected (or --backbone) variant and window size.

    norm_reason: why the per-stage output norms are missing (they are in no ImageNet file).
    """
    name, window = detect_swin(canon, req.source, req.fmt)
    name = req.backbone or name
    return Architecture(
        description={"family": "swin", "backbone": name, "window_size": window},
        config_overrides={"model.backbone": name, "model.window_size": window},
        factory=swin_factory(name, window),
        missing_by_design={
            f"norm{i}/{p}": norm_reason for i in range(4) for p in ("scale", "bias")
        },
    )


build_hf_swin = functools.partial(build_swin, norm_reason=HF_SWIN_OUTPUT_NORM_MISSING)

SWIN_OFFICIAL = Converter(
    format="swin_official",
    family="swin",
    summary="Microsoft swin_{tiny,small,base,large}_patch4_window*.pth ({'model': sd}) and the "
    "reference's segmentation Swin state dicts (same keys + norm0..3)",
    canonicalise=canon_swin_official,
    build=functools.partial(build_swin, norm_reason=SWIN_OUTPUT_NORM_MISSING),
)
HF_SWIN = Converter(
    format="hf_swin",
    family="swin",
    summary="transformers SwinModel / SwinBackbone / SwinForImageClassification",
    canonicalise=canon_hf_swin,
    build=build_hf_swin,
    postprocess=merge_qkv,
)
