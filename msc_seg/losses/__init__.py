"""Losses: segmentation cross-entropy, fixed-shape anchor sampling, MS + CS contrastive.

The names below are imported on first use (PEP 562): `config_lib` reads
`losses.class_weights.SCHEMES` to validate a config, and a command line refused there (a typo,
a missing file) should not first pay for importing JAX (~1.5 s of each refusal).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ContrastiveOptions": "contrastive",
    "contrastive_loss_for_batch": "contrastive",
    "contrastive_loss_for_group": "contrastive",
    "info_nce_loss": "contrastive",
    "multiscale_contrastive_loss": "contrastive",
    "IGNORE_LABEL": "sampling",
    "AnchorSet": "sampling",
    "anchor_key": "sampling",
    "downsample_labels": "sampling",
    "pack_anchors": "sampling",
    "sample_anchors": "sampling",
    "sample_batch_anchors": "sampling",
    "sample_group_anchors": "sampling",
    "split_groups": "sampling",
    "within_scale_info_nce": "within_scale",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
