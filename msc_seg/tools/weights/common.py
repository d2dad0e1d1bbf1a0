"""What every weight converter shares: the error type, the record of one checkpoint format
(`Converter`), key-renaming helpers, and the torch -> flax tensor layout."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

NO_COUNTERPART = "no counterpart in the target model"
BN_COUNTER = "BatchNorm num_batches_tracked counter: flax keeps none"
CLASSIFIER = "ImageNet classification head"
# Prefixes of wrapped torch models (DataParallel `module.`, mmseg segmentors' `backbone.`).
WRAPPER_PREFIXES = ("module.", "backbone.")

# Canonical (torch-layout, our module names) key -> (array, the source keys it was made from).
Canon = dict[str, tuple[np.ndarray, list[str]]]
# A regex rewrite of a key: (pattern, replacement string or function of the match).
Rule = tuple[str, str | Callable[[re.Match], str]]


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as asked (the message says what to change)."""


@dataclasses.dataclass
class Request:
    """What `convert` was asked for, as a converter's `build` step sees it.

    fmt: the --format. source: the checkpoint's path (for messages). target: "backbone" or
    "model". backbone: a variant name that overrides the detected one, or None. hf_config: the
    Hugging Face config.json beside the checkpoint, or None. notes: remarks for the manifest;
    `build` appends to it.
    """

    fmt: str
    source: str
    target: str
    backbone: str | None
    hf_config: Mapping[str, Any] | None
    notes: list[str]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The architecture a checkpoint's weights fit, as a converter's `build` step decides it.

    description: written to the manifest as "architecture", e.g. {"family": "swin",
      "backbone": "swin_t", "window_size": 7}, or the UPerNet constructor arguments.
    config_overrides: config fields that select that architecture.
    factory: rngs -> the nnx module whose Param/BatchStat tree the weights must fill.
    missing_by_design: flax paths the checkpoint never holds -> why (kept at init).
    """

    description: dict[str, Any]
    config_overrides: dict[str, Any]
    factory: Callable[[Any], Any]
    missing_by_design: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Converter:
    """One checkpoint format: how its keys are renamed and which architecture they fit.

    format: the --format name. family: the model family the default target belongs to.
    summary: one line for --help. canonicalise: (source key, target) -> (canonical key, "") or
    (None, why the key is not loaded). build: (canonical tensors, request) -> Architecture;
    detects the variant and raises ConversionError when the tensors fit none. targets: the
    --target values it supports, the default first. postprocess: canonical tensors -> canonical
    tensors, run after renaming (e.g. fusing separate q/k/v projections).
    """

    format: str
    family: str
    summary: str
    canonicalise: Callable[[str, str], tuple[str | None, str]]
    build: Callable[[Canon, Request], Architecture]
    targets: tuple[str, ...] = ("backbone",)
    postprocess: Callable[[Canon], Canon] | None = None


def strip_prefixes(key: str, prefixes: Sequence[str]) -> str:
    """Remove any of `prefixes` from the start of `key`, repeatedly ('module.backbone.x' -> 'x')."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def apply_rules(key: str, rules: Sequence[Rule]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def ignored(key: str, ignores: Sequence[tuple[str, str]]) -> str | None:
    """The reason of the first (pattern, reason) whose pattern is found in `key`, else None."""
    return next((why for pattern, why in ignores if re.search(pattern, key)), None)


def first_keys(keys, n: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")


def torch_to_flax(key: str, array: np.ndarray) -> tuple[str | None, np.ndarray | None]:
    """One torch-layout tensor -> (flax path 'a/b/c', array in flax layout), or (None, None)
    for a BatchNorm step counter.

    weight: 4-D conv OIHW -> `kernel` HWIO; 2-D linear [out,in] -> `kernel` [in,out]; 1-D
    (BatchNorm / LayerNorm) -> `scale`. running_mean/var -> `mean`/`var`. Other names (e.g.
    `relative_position_bias_table`) keep name and layout.
    """
    *parents, leaf = key.split(".")
    if leaf == "num_batches_tracked":
        return None, None
    if leaf == "weight" and array.ndim == 4:
        leaf, array = "kernel", array.transpose(2, 3, 1, 0)
    elif leaf == "weight" and array.ndim == 2:
        leaf, array = "kernel", array.T
    elif leaf == "weight" and array.ndim == 1:
        leaf = "scale"
    else:
        leaf = {"running_mean": "mean", "running_var": "var"}.get(leaf, leaf)
    return "/".join([*parents, leaf]), np.ascontiguousarray(array)
