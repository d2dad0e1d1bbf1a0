"""Convert a state dict with its format's Converter, check it against the target model's
abstract tree, and write params.npz + manifest.json.

Every source tensor is accounted for: loaded (flax path <- source keys), or unused with a
reason (classification heads, buffers rebuilt at run time, keys without a counterpart); every
variable of the target tree is loaded or listed as missing with a reason. Tensors are validated
against an abstract model (`nnx.eval_shape`) of the detected (or --backbone) architecture; a
shape mismatch is an error naming the key and both shapes.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from msc_seg.models.pretrained import MANIFEST_FILE, PARAMS_FILE
from msc_seg.tools.weights.common import (
    BN_COUNTER,
    NO_COUNTERPART,
    Canon,
    ConversionError,
    Request,
    first_keys,
    torch_to_flax,
)
from msc_seg.tools.weights.readers import read_checkpoint
from msc_seg.tools.weights.registry import get_converter, resolve_target

NOT_IN_CHECKPOINT = "not in the checkpoint"


@dataclasses.dataclass
class Conversion:
    """The result of converting one checkpoint.

    params: flax path relative to the target root ('layers/0/blocks/1/attn/qkv/kernel') ->
      float32 array in flax layout (nnx.Param and BatchStat values).
    loaded: flax path -> the source keys it was made from.
    missing: flax path of the target tree without a value -> reason.
    unused: source key -> reason it was not loaded.
    architecture: what the weights fit, e.g. {"family": "swin", "backbone": "swin_t",
      "window_size": 7} or the UPerNet constructor arguments for target "model".
    config_overrides: config fields that select that architecture.
    """

    format: str
    source: str
    target: str
    architecture: dict[str, Any]
    config_overrides: dict[str, Any]
    params: dict[str, np.ndarray]
    loaded: dict[str, list[str]]
    missing: dict[str, str]
    unused: dict[str, str]
    notes: list[str]

    def manifest(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "target": self.target,
            "architecture": self.architecture,
            "config_overrides": self.config_overrides,
            "counts": {
                "source_tensors": len(self.unused) + sum(len(v) for v in self.loaded.values()),
                "loaded_arrays": len(self.loaded),
                "missing": len(self.missing),
                "unused": len(self.unused),
            },
            "notes": self.notes,
            "loaded": self.loaded,
            "missing": self.missing,
            "unused": self.unused,
        }


def abstract_shapes(factory: Callable) -> dict[str, tuple[int, ...]]:
    """flax path -> shape of every nnx.Param and BatchStat of `factory(rngs)`, built abstractly
    (`nnx.eval_shape`; RNG counters kept concrete, see docs/MODELS.md)."""
    import jax
    from flax import nnx

    def build(key):
        with jax.ensure_compile_time_eval():
            return factory(nnx.Rngs(key))

    model = nnx.eval_shape(build, jax.random.key(0))
    flat = nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    return {"/".join(map(str, p)): tuple(v.get_value().shape) for p, v in flat}


def convert(
    tensors: Mapping[str, np.ndarray],
    fmt: str,
    *,
    source: str = "<memory>",
    backbone: str | None = None,
    target: str | None = None,
    hf_config: Mapping[str, Any] | None = None,
) -> Conversion:
    """Convert a state dict (source key -> numpy array) of format `fmt` into flax weights.

    backbone: override the detected variant (a name of SWIN_VARIANTS, RESNET_BLOCK_COUNTS or
      HRNET_CONFIGS). target: "backbone" (all formats) or "model" (hf_upernet, its default).
    Raises ConversionError on an unknown format or target, an undetectable architecture, or a
    tensor whose shape does not fit the architecture (naming the key and both shapes).
    """
    converter = get_converter(fmt)
    target = resolve_target(converter, target)
    req = Request(
        fmt=fmt, source=source, target=target, backbone=backbone, hf_config=hf_config, notes=[]
    )
    unused: dict[str, str] = {}
    canon: Canon = {}
    for key, array in tensors.items():
        new, why = converter.canonicalise(key, target)
        if new is None:
            unused[key] = why
        elif new in canon:
            unused[key] = f"duplicate of {canon[new][1][0]} after renaming"
        else:
            canon[new] = (np.asarray(array), [key])
    if converter.postprocess is not None:
        canon = converter.postprocess(canon)

    arch = converter.build(canon, req)
    name = arch.description.get("backbone")
    expected = abstract_shapes(arch.factory)
    params: dict[str, np.ndarray] = {}
    loaded: dict[str, list[str]] = {}
    for key, (array, sources) in canon.items():
        path, value = torch_to_flax(key, array)
        if path is None:
            for s in sources:
                unused[s] = BN_COUNTER
            continue
        if path not in expected:
            for s in sources:
                unused[s] = f"{NO_COUNTERPART} ({name}: no {path})"
            continue
        if value.shape != expected[path]:
            raise ConversionError(
                f"{source}: {' + '.join(sources)} has shape {tuple(array.shape)} (flax layout "
                f"{tuple(value.shape)} at {path}) but {name} expects "
                f"{expected[path]} there; check --backbone / the checkpoint's variant"
            )
        params[path] = value.astype(np.float32)
        loaded[path] = sources
    if not params:
        raise ConversionError(
            f"{source}: nothing converts to {name} with --format {fmt}; "
            f"the file's keys start: {first_keys(tensors)}"
        )
    missing = {
        p: arch.missing_by_design.get(p, NOT_IN_CHECKPOINT) for p in expected if p not in params
    }
    return Conversion(
        format=fmt,
        source=source,
        target=target,
        architecture=arch.description,
        config_overrides=arch.config_overrides,
        params=params,
        loaded=loaded,
        missing=missing,
        unused=dict(sorted(unused.items())),
        notes=req.notes,
    )


def write_conversion(conversion: Conversion, output: str | pathlib.Path) -> pathlib.Path:
    """Write DIR/params.npz and DIR/manifest.json; returns DIR."""
    out = pathlib.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / PARAMS_FILE, **conversion.params)
    (out / MANIFEST_FILE).write_text(json.dumps(conversion.manifest(), indent=1) + "\n")
    return out


def import_weights(
    fmt: str,
    input_path: str | pathlib.Path,
    output: str | pathlib.Path,
    *,
    backbone: str | None = None,
    target: str | None = None,
    strict: bool = False,
    unsafe_pickle: bool = False,
) -> Conversion:
    """Read `input_path`, convert it (see `convert`), write `output`; the CLI's work.

    strict: fail when a source tensor is unused for lack of a counterpart or a target variable
    is missing for a reason other than a known design difference (e.g. a timm ResNet-D stem).
    """
    tensors, hf_config = read_checkpoint(input_path, unsafe_pickle=unsafe_pickle)
    conversion = convert(
        tensors,
        fmt,
        source=str(pathlib.Path(input_path).resolve()),
        backbone=backbone,
        target=target,
        hf_config=hf_config,
    )
    if strict:
        bad_unused = [k for k, why in conversion.unused.items() if why.startswith(NO_COUNTERPART)]
        bad_missing = [k for k, why in conversion.missing.items() if why == NOT_IN_CHECKPOINT]
        if bad_unused or bad_missing:
            raise ConversionError(
                f"{input_path}: --strict and {len(bad_unused)} tensors without a counterpart "
                f"({first_keys(bad_unused)}), {len(bad_missing)} variables not in the "
                f"checkpoint ({first_keys(bad_missing)})"
            )
    write_conversion(conversion, output)
    return conversion


def _tally(reasons) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for why in reasons:
        counts[why] = counts.get(why, 0) + 1
    return sorted(counts.items())


def summarise(conversion: Conversion, output: str | pathlib.Path) -> str:
    """A few lines for the terminal: counts, unused reasons, the config to use."""
    m = conversion.manifest()
    lines = [
        f"{conversion.format}: {m['counts']['source_tensors']} tensors from "
        f"{conversion.source} -> {m['counts']['loaded_arrays']} arrays for the "
        f"{conversion.target} ({conversion.architecture})",
    ]
    lines += [f"  unused: {n} x {why}" for why, n in _tally(conversion.unused.values())]
    lines += [f"  missing: {n} x {why}" for why, n in _tally(conversion.missing.values())]
    lines += [f"  note: {n}" for n in conversion.notes]
    flags = " ".join(f"--config.{k}={v}" for k, v in conversion.config_overrides.items())
    lines.append(f"Train with: {flags} --config.model.pretrained={output}")
    return "\n".join(lines)
