"""Checkpoint files -> flat numpy state dicts (source key -> array).

Inputs: `.safetensors` (read with safetensors.numpy: no torch), `.pth`/`.pt`/`.bin`/`.ckpt`/
`.tar` (torch.load; torch is imported only for these), or a Hugging Face model folder
(`model.safetensors`, sharded `*.safetensors.index.json` / `pytorch_model.bin.index.json`, or
`pytorch_model.bin`), whose `config.json` is read when present.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from msc_seg.tools.weights.common import ConversionError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
STATE_DICT_KEYS = ("model", "state_dict", "model_state", "module")


def _to_numpy(tensor) -> np.ndarray:
    import torch  # only reached for torch checkpoints

    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()  # bf16/fp16 have no (portable) numpy twin
    return tensor.numpy()


def _unwrap(obj: Any, path: pathlib.Path) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint ({'model': sd}, {'state_dict': sd}, ...)."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in STATE_DICT_KEYS if k in obj), None)
        if not isinstance(inner, Mapping):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def read_torch(path: pathlib.Path, *, unsafe_pickle: bool) -> dict[str, np.ndarray]:
    """A torch.save file -> its (unwrapped) state dict's tensors as numpy arrays.

    unsafe_pickle: torch.load(weights_only=False), which runs the file's pickled code.
    """
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"{path}: reading {path.suffix} files needs torch (pip install 'msc_seg[parity]'), "
            "or convert the file to .safetensors first"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except Exception as e:  # the unpickler raises many types
        if unsafe_pickle:
            raise
        raise ConversionError(
            f"{path}: torch.load(weights_only=True) refused it ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); if you trust the file, pass --unsafe-pickle"
        ) from e
    sd = _unwrap(obj, path)
    return {str(k): _to_numpy(v) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (TypeError, ValueError) as e:  # e.g. bfloat16 tensors, which numpy lacks
        raise ConversionError(
            f"{path}: safetensors.numpy cannot read it ({e}); save it in float32 or pass the "
            "PyTorch .bin instead"
        ) from e


def read_file(path: pathlib.Path, *, unsafe_pickle: bool) -> dict[str, np.ndarray]:
    """One checkpoint file, by its suffix."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return read_torch(path, unsafe_pickle=unsafe_pickle)
    raise ConversionError(
        f"{path}: unknown file type {path.suffix!r}; expected .safetensors or one of "
        f"{TORCH_SUFFIXES}"
    )


def read_hf_config(path: pathlib.Path) -> dict[str, Any] | None:
    """A Hugging Face config.json beside the checkpoint, or None (absent or not such a file)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def read_checkpoint(
    path: str | pathlib.Path, *, unsafe_pickle: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """-> (source key -> numpy array, the Hugging Face config.json beside it or None).

    path: a checkpoint file, or a Hugging Face model folder.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ConversionError(f"--input {path} does not exist")
    folder = path if path.is_dir() else path.parent
    hf_config = read_hf_config(folder / "config.json")
    if not path.is_dir():
        return read_file(path, unsafe_pickle=unsafe_pickle), hf_config
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors: dict[str, np.ndarray] = {}
            for shard in shards:
                tensors.update(read_file(path / shard, unsafe_pickle=unsafe_pickle))
            return tensors, hf_config
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return read_file(path / name, unsafe_pickle=unsafe_pickle), hf_config
    raise ConversionError(
        f"--input {path} is a folder without model.safetensors, pytorch_model.bin or a shard "
        "index; pass the checkpoint file itself"
    )
