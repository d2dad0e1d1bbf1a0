"""Load converted pretrained weights into a fresh training state or a model. No torch needed.

The weights come from `python -m msc_seg.tools.import_weights` (convert once, with torch where
the source is a `.pth`/`.bin`; train without it). Its output directory holds:

* `params.npz`: flat flax paths `a/b/c` (relative to the manifest's target) -> float32 arrays,
  nnx.Param and BatchStat values together (`.../batch_norm/mean` is a BatchStat);
* `manifest.json`: format, source file, target ("backbone": the arrays belong under the
  segmentor's `backbone/`; "model": under its root), the detected architecture and the
  loaded / missing / unused keys of the conversion.

`apply_pretrained(state, path)` puts each array into `state.params` / `state.batch_stats` (nnx.State
trees), keeping every leaf's dtype and sharding. A shape mismatch raises and names the key and
both shapes. Keys of the model that the file lacks ("missing") and keys of the file that the
model lacks ("unused") are printed; with `strict` (the default) a missing or unused key inside a
subtree the file covers (e.g. `backbone/` for a backbone file) is an error, because it means the
file was converted for another architecture (e.g. a Swin-T file for a Swin-S model). Keys the
converter already reported as missing (e.g. the Swin output norms, absent from ImageNet files)
are expected and only printed.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

PARAMS_FILE = "params.npz"
MANIFEST_FILE = "manifest.json"
TARGETS = ("backbone", "model")
_MAX_LISTED = 20  # keys printed per category before "... and N more"


class PretrainedError(ValueError):
    """A pretrained-weights directory that cannot be applied to the model."""


def read_pretrained(
    path: str | pathlib.Path, *, at: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an import_weights output directory.

    at: where the file's target tree sits in the model, e.g. "" to load a backbone file into a
      bare backbone; None: `backbone/` for backbone files, the root for model files.
    Returns (arrays keyed by their path from the model root, e.g. `backbone/patch_embed/proj/
    kernel` for a backbone file; the manifest dict).
    """
    root = pathlib.Path(path)
    params_file, manifest_file = root / PARAMS_FILE, root / MANIFEST_FILE
    for f in (params_file, manifest_file):
        if not f.is_file():
            raise PretrainedError(
                f"model.pretrained={str(path)!r}: {f} does not exist; the directory must be the "
                "--output of `python -m msc_seg.tools.import_weights`"
            )
    manifest = json.loads(manifest_file.read_text())
    target = manifest.get("target")
    if target not in TARGETS:
        raise PretrainedError(
            f"{manifest_file}: target={target!r} is not one of {TARGETS}; re-run import_weights"
        )
    if at is None:
        at = "" if target == "model" else target
    prefix = f"{at.strip('/')}/" if at.strip("/") else ""
    manifest["applied_at"] = prefix
    with np.load(params_file) as npz:
        arrays = {prefix + k: npz[k] for k in npz.files}
    return arrays, manifest


def _path_key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def _place(array: np.ndarray, like) -> jax.Array:
    """`array` as a jax.Array with the dtype and (if any) the sharding of the leaf `like`."""
    value = np.asarray(array).astype(like.dtype)
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jax.numpy.asarray(value)
    # Every process holds the whole array; each device takes its own slice (multi-host safe).
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _list(keys, limit: int = _MAX_LISTED) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _by_root(keys) -> str:
    """Keys listed one by one when few, else counted per top-level subtree."""
    if len(keys) <= _MAX_LISTED:
        return _list(keys)
    counts: dict[str, int] = {}
    for k in keys:
        counts[k.split("/")[0]] = counts.get(k.split("/")[0], 0) + 1
    return ", ".join(f"{root}/* ({n})" for root, n in sorted(counts.items()))


def _fill(
    tree: nnx.State, arrays: Mapping[str, np.ndarray], source: str, hint: str
) -> tuple[nnx.State, set[str], set[str]]:
    """-> (tree with every key of `arrays` it has replaced, loaded keys, weight keys not loaded).

    Only nnx.Param and nnx.BatchStat leaves count as weights for the missing list (RNG
    state and other bookkeeping variables are never in a weights file).
    """
    new_flat, loaded, missing = [], set(), set()
    for path, var in nnx.to_flat_state(tree):
        key = _path_key(path)
        if key in arrays:
            old = var.get_value()
            new = arrays[key]
            if tuple(new.shape) != tuple(old.shape):
                raise PretrainedError(
                    f"{source}: {key} has shape {tuple(new.shape)} in the file but "
                    f"{tuple(old.shape)} in the model; {hint}"
                )
            var = var.replace(_place(new, old))
            loaded.add(key)
        elif isinstance(var, (nnx.Param, nnx.BatchStat)):
            missing.add(key)
        new_flat.append((path, var))
    return nnx.from_flat_state(new_flat), loaded, missing


def _shape_hint(manifest: Mapping[str, Any]) -> str:
    arch = manifest.get("architecture", {})
    overrides = manifest.get("config_overrides", {})
    hint = (
        f"the file was converted for {arch} (config: "
        + " ".join(f"--config.{k}={v}" for k, v in overrides.items())
        + ")"
    )
    if manifest.get("target") == "model":
        hint += (
            "; to load only its backbone (e.g. another number of classes), re-run "
            "import_weights with --target backbone"
        )
    return hint


def _check(
    arrays: Mapping[str, np.ndarray],
    manifest: Mapping[str, Any],
    loaded: set[str],
    missing: set[str],
    model_roots: set[str],
    *,
    source: str,
    strict: bool,
    log: Callable[[str], None],
) -> None:
    """Report (and in strict mode reject) the keys that did not match."""
    if not loaded:
        raise PretrainedError(
            f"{source}: none of its {len(arrays)} arrays matches a model variable (file: "
            f"{_list(arrays, 5)}; model: {_list(missing, 5)}); {_shape_hint(manifest)}"
        )
    prefix = manifest["applied_at"]
    known_missing = {prefix + k: why for k, why in manifest.get("missing", {}).items()}
    file_roots = {k.split("/")[0] for k in arrays}
    unused = set(arrays) - loaded
    # Inside a subtree the file covers, a key on one side only means another architecture.
    bad_missing = {k for k in missing if k.split("/")[0] in file_roots and k not in known_missing}
    bad_unused = {k for k in unused if k.split("/")[0] in model_roots}
    expected = {k for k in missing if k in known_missing}
    other_missing = missing - bad_missing - expected
    log(f"Pretrained {source}: loaded {len(loaded)} of {len(arrays)} arrays into the model.")
    if expected:
        reasons = sorted({known_missing[k] for k in expected})
        log(f"  missing by design ({len(expected)}): {_list(expected)} [{'; '.join(reasons)}]")
    if other_missing:
        log(f"  not in the file, left at init ({len(other_missing)}): {_by_root(other_missing)}")
    if unused:
        log(f"  in the file but not in the model ({len(unused)}): {_list(unused)}")
    if strict and (bad_missing or bad_unused):
        raise PretrainedError(
            f"{source} does not fit the model: "
            + (f"model variables not in the file: {_list(bad_missing)}; " if bad_missing else "")
            + (f"file arrays the model lacks: {_list(bad_unused)}; " if bad_unused else "")
            + f"{_shape_hint(manifest)}; pass strict=False to load the matching part only"
        )


def apply_pretrained(
    state,
    path: str | pathlib.Path,
    *,
    strict: bool = True,
    log: Callable[[str], None] = print,
):
    """Return `state` with its weights replaced by the converted ones in directory `path`.

    state: any pytree dataclass with nnx.State fields `params` and `batch_stats` and a `replace`
    method (TrainState). Leaves keep their dtype and sharding (jax.Arrays on a mesh, or
    ShapeDtypeStructs with a sharding). Raises PretrainedError on a shape mismatch (naming the
    key and both shapes), when nothing matches, and (strict) when the file fits another
    architecture; prints the missing and unused keys.
    """
    arrays, manifest = read_pretrained(path)
    source = str(path)
    hint = _shape_hint(manifest)
    params, loaded_p, missing_p = _fill(state.params, arrays, source, hint)
    batch_stats, loaded_r, missing_r = _fill(state.batch_stats, arrays, source, hint)
    roots = {
        _path_key(p[:1])
        for tree in (state.params, state.batch_stats)
        for p, _ in nnx.to_flat_state(tree)
    }
    _check(
        arrays,
        manifest,
        loaded_p | loaded_r,
        missing_p | missing_r,
        roots,
        source=source,
        strict=strict,
        log=log,
    )
    return state.replace(params=params, batch_stats=batch_stats)


def load_pretrained_into_model(
    model: nnx.Module,
    path: str | pathlib.Path,
    *,
    at: str | None = None,
    strict: bool = True,
    log: Callable[[str], None] = print,
) -> nnx.Module:
    """Like `apply_pretrained`, for an nnx model (updated in place and returned), e.g. for
    inference or tests. at: see `read_pretrained` ("" loads a backbone file into a bare
    backbone)."""
    arrays, manifest = read_pretrained(path, at=at)
    source = str(path)
    weights = nnx.state(model, (nnx.Param, nnx.BatchStat))
    new, loaded, missing = _fill(weights, arrays, source, _shape_hint(manifest))
    roots = {_path_key(p[:1]) for p, _ in nnx.to_flat_state(weights)}
    _check(arrays, manifest, loaded, missing, roots, source=source, strict=strict, log=log)
    nnx.update(model, new)
    return model
