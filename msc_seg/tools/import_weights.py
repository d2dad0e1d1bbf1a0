"""Convert PyTorch / Hugging Face checkpoints into msc_seg weights (params.npz + manifest.json).

    python -m msc_seg.tools.import_weights --format F --input FILE_OR_DIR --output DIR
        [--backbone NAME] [--target backbone|model] [--strict] [--unsafe-pickle]

Then train with `--config.model.pretrained=DIR` (msc_seg.models.pretrained loads DIR without
torch). Formats:

* `swin_official` (target backbone): Microsoft `swin_{tiny,small,base,large}_patch4_window*.pth`
  (`{'model': sd}`), and the reference's segmentation Swin state dicts (same keys + norm0..3);
* `hf_swin` (backbone): transformers SwinModel / SwinBackbone / SwinForImageClassification;
* `hf_upernet` (model, or backbone with `--target backbone`): transformers
  UperNetForSemanticSegmentation with a Swin backbone (backbone + decode head + aux head);
* `hf_resnet` (backbone): transformers ResNetModel / ResNetBackbone / ResNetForImageClassification;
* `torchvision_resnet` (backbone): torchvision or timm ResNet-50/101 (same keys);
* `hrnet_official` (backbone): `hrnetv2_w48_imagenet_pretrained.pth` (and W18).

Inputs: `.safetensors` (read with safetensors.numpy: no torch), `.pth`/`.pt`/`.bin`/`.ckpt`
(torch.load, imported here only), or a Hugging Face folder (`model.safetensors`, sharded
`*.safetensors.index.json`, or `pytorch_model.bin`; its `config.json` is read when present).

Every source tensor is accounted for: loaded (flax path <- source keys), or unused with a
reason (classification heads, buffers rebuilt at run time, keys without a counterpart); every
variable of the target tree is loaded or listed as missing with a reason. Tensors are validated
against an abstract model (`nnx.eval_shape`) of the detected (or `--backbone`) architecture; a
shape mismatch is an error naming the key and both shapes.

Layout rules: conv kernels OIHW -> HWIO, linear weights [out,in] -> [in,out], norm `weight` ->
`scale`, BatchNorm `running_mean`/`running_var` -> BatchStat `mean`/`var`, `num_batches_tracked`
dropped; Hugging Face Swin q/k/v projections are concatenated into the fused `qkv` of the
official layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from msc_seg.models.pretrained import MANIFEST_FILE, PARAMS_FILE

FORMATS = (
    "swin_official",
    "hf_swin",
    "hf_upernet",
    "hf_resnet",
    "torchvision_resnet",
    "hrnet_official",
)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
NO_COUNTERPART = "no counterpart in the target model"


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as asked (the message says what to change)."""


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


# --------------------------------------------------------------------------------------------
# Reading checkpoints


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
        inner = next(
            (obj[k] for k in ("model", "state_dict", "model_state", "module") if k in obj), None
        )
        if not isinstance(inner, Mapping):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def _read_torch(path: pathlib.Path, *, unsafe_pickle: bool) -> dict[str, np.ndarray]:
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


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (TypeError, ValueError) as e:  # e.g. bfloat16 tensors, which numpy lacks
        raise ConversionError(
            f"{path}: safetensors.numpy cannot read it ({e}); save it in float32 or pass the "
            "PyTorch .bin instead"
        ) from e


def _read_file(path: pathlib.Path, *, unsafe_pickle: bool) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path, unsafe_pickle=unsafe_pickle)
    raise ConversionError(
        f"{path}: unknown file type {path.suffix!r}; expected .safetensors or one of "
        f"{TORCH_SUFFIXES}"
    )


def _read_hf_config(path: pathlib.Path) -> dict[str, Any] | None:
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
    hf_config = _read_hf_config(folder / "config.json")
    if not path.is_dir():
        return _read_file(path, unsafe_pickle=unsafe_pickle), hf_config
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors: dict[str, np.ndarray] = {}
            for shard in shards:
                tensors.update(_read_file(path / shard, unsafe_pickle=unsafe_pickle))
            return tensors, hf_config
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return _read_file(path / name, unsafe_pickle=unsafe_pickle), hf_config
    raise ConversionError(
        f"--input {path} is a folder without model.safetensors, pytorch_model.bin or a shard "
        "index; pass the checkpoint file itself"
    )


# --------------------------------------------------------------------------------------------
# Key mapping: source key -> key in our torch-style layout ("canonical"), or a reason to drop it


Rule = tuple[str, str | Callable[[re.Match], str]]


def _strip(key: str, prefixes: Sequence[str]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _apply_rules(key: str, rules: Sequence[Rule]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _ignored(key: str, ignores: Sequence[tuple[str, str]]) -> str | None:
    return next((why for pattern, why in ignores if re.search(pattern, key)), None)


BUFFER_INDEX = "constant buffer (relative_position_index): derived from the window size"
BN_COUNTER = "BatchNorm num_batches_tracked counter: flax keeps none"

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


def _canon_hf_swin(key: str) -> tuple[str | None, str]:
    key = _strip(key, ("backbone.", "swin.", "model."))
    why = _ignored(key, HF_SWIN_IGNORES)
    if why:
        return None, why
    key = _apply_rules(key, HF_SWIN_RULES)
    m = re.match(r"^(layers\.\d+\.blocks\.\d+\.)(.*)$", key)
    if m:
        head, tail = m.groups()
        for old, new in HF_SWIN_BLOCK:
            if tail.startswith(old):
                return head + new + tail[len(old) :], ""
    return key, ""


def _canon_swin_official(key: str) -> tuple[str | None, str]:
    key = _strip(key, ("module.", "backbone."))
    why = _ignored(key, SWIN_OFFICIAL_IGNORES)
    return (None, why) if why else (key, "")


def _canon_hf_upernet(key: str, target: str) -> tuple[str | None, str]:
    if key.startswith("backbone."):
        canon, why = _canon_hf_swin(key[len("backbone.") :])
        if canon is None or target == "backbone":
            return canon, why
        return "backbone." + canon, ""
    if not key.startswith(("decode_head.", "auxiliary_head.")):
        return key, ""
    if target == "backbone":
        return None, "decode/auxiliary head: not converted with --target backbone"
    # HF wraps each PPM branch as Sequential(AdaptiveAvgPool2d, ConvModule).
    return re.sub(r"^decode_head\.psp_modules\.(\d+)\.1\.", r"decode_head.psp_modules.\1.", key), ""


HF_RESNET_RULES: tuple[Rule, ...] = (
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.",
    ),
    (
        r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
        lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.",
    ),
)
CLASSIFIER = "ImageNet classification head"


def _canon_hf_resnet(key: str) -> tuple[str | None, str]:
    key = _strip(key, ("resnet.", "backbone.", "model."))
    if key.startswith("classifier."):
        return None, CLASSIFIER
    return _apply_rules(key, HF_RESNET_RULES), ""


def _canon_torchvision_resnet(key: str) -> tuple[str | None, str]:
    key = _strip(key, ("module.", "backbone."))
    if key.startswith("fc."):
        return None, CLASSIFIER
    return key, ""


HRNET_HEAD = (
    "ImageNet classification head of HRNetV2 (incre_modules, downsamp_modules, final_layer, "
    "classifier): the segmentation backbone ends at stage4"
)


def _canon_hrnet_official(key: str) -> tuple[str | None, str]:
    key = _strip(key, ("module.", "backbone."))
    if re.match(r"^(incre_modules|downsamp_modules|final_layer|classifier)\.", key):
        return None, HRNET_HEAD
    return key, ""


# --------------------------------------------------------------------------------------------
# Canonical (torch-style) keys -> flax paths


def _merge_qkv(
    canon: dict[str, tuple[np.ndarray, list[str]]],
) -> dict[str, tuple[np.ndarray, list[str]]]:
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


# --------------------------------------------------------------------------------------------
# Architecture detection and abstract target trees


def _first_keys(keys, n: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")


def _require(canon: Mapping[str, Any], key: str, what: str, source: str, fmt: str) -> np.ndarray:
    if key not in canon:
        raise ConversionError(
            f"{source}: no {what} ({key}) found for --format {fmt}; is the format right? "
            f"The file's keys start: {_first_keys(canon)}"
        )
    return canon[key][0]


def _count(canon: Mapping[str, Any], pattern: str) -> int:
    n = 0
    while pattern.format(n) in canon:
        n += 1
    return n


def detect_swin(canon: Mapping[str, Any], source: str, fmt: str) -> tuple[str, int]:
    """-> (variant name of msc_seg.models.swin.SWIN_VARIANTS, window size) from the shapes."""
    from msc_seg.models.swin import SWIN_VARIANTS

    proj = _require(canon, "patch_embed.proj.weight", "Swin patch embedding", source, fmt)
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    num_stages = _count(canon, "layers.{}.blocks.0.norm1.weight")
    depths = tuple(_count(canon, f"layers.{i}.blocks.{{}}.norm1.weight") for i in range(num_stages))
    tables = [
        _require(
            canon,
            f"layers.{i}.blocks.0.attn.relative_position_bias_table",
            "Swin bias table",
            source,
            fmt,
        )
        for i in range(num_stages)
    ]
    heads = tuple(int(t.shape[1]) for t in tables)
    window = (math.isqrt(int(tables[0].shape[0])) + 1) // 2
    for name, v in SWIN_VARIANTS.items():
        if (v.embed_dim, v.depths, v.num_heads, v.patch_size) == (embed_dim, depths, heads, patch):
            return name, window
    raise ConversionError(
        f"{source}: Swin with embed_dim={embed_dim}, depths={depths}, heads={heads}, "
        f"patch={patch} matches no known variant ({sorted(SWIN_VARIANTS)}); add it to "
        "msc_seg.models.swin.SWIN_VARIANTS or pass --backbone"
    )


def detect_resnet(canon: Mapping[str, Any], source: str, fmt: str) -> str:
    """-> name of msc_seg.models.resnet.RESNET_BLOCK_COUNTS from the block counts and widths."""
    from msc_seg.models.resnet import RESNET_BLOCK_COUNTS

    stem = int(_require(canon, "conv1.weight", "ResNet stem conv", source, fmt).shape[0])
    blocks = tuple(_count(canon, f"layer{i}.{{}}.conv1.weight") for i in range(1, 5))
    if "layer1.0.conv3.weight" not in canon:
        raise ConversionError(
            f"{source}: a ResNet with basic blocks (ResNet-18/34); only bottleneck ResNets "
            "(50/101) are supported"
        )
    planes = tuple(int(canon[f"layer{i}.0.conv1.weight"][0].shape[0]) for i in range(1, 5))
    tiny = stem == 8 and planes == (8, 16, 32, 64)
    for name, counts in RESNET_BLOCK_COUNTS.items():
        if counts == blocks and tiny == (name == "resnet_tiny_test"):
            return name
    raise ConversionError(
        f"{source}: ResNet with blocks {blocks}, stem {stem}, widths {planes} matches none of "
        f"{sorted(RESNET_BLOCK_COUNTS)}; pass --backbone"
    )


def detect_hrnet(canon: Mapping[str, Any], source: str, fmt: str) -> str:
    """-> name of msc_seg.models.hrnet.HRNET_CONFIGS from the stem, stage-1 and branch widths."""
    from msc_seg.models.hrnet import HRNET_CONFIGS

    stem = int(_require(canon, "conv1.weight", "HRNet stem conv", source, fmt).shape[0])
    width = int(_require(canon, "transition1.0.0.weight", "HRNet transition", source, fmt).shape[0])
    stage1_blocks = _count(canon, "layer1.{}.conv1.weight")
    stage1_planes = int(canon["layer1.0.conv1.weight"][0].shape[0]) if stage1_blocks else -1
    key = (stem, width, stage1_blocks, stage1_planes)
    for name, c in HRNET_CONFIGS.items():
        if (c.stem_channels, c.width, c.stage1_blocks, c.stage1_planes) == key:
            return name
    raise ConversionError(
        f"{source}: HRNet with stem {stem}, width {width}, stage-1 blocks {stage1_blocks} "
        f"matches none of {sorted(HRNET_CONFIGS)}; pass --backbone"
    )


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


def _swin_factory(name: str, window: int):
    from msc_seg.models.swin import make_swin

    return lambda rngs: make_swin(name, window_size=window, drop_path_rate=0.0, rngs=rngs)


def _upernet_kwargs(
    canon: Mapping[str, Any],
    name: str,
    window: int,
    hf_config: Mapping[str, Any] | None,
    source: str,
    notes: list[str],
) -> dict[str, Any]:
    """UPerNetSegmentor arguments that fit an HF UperNet checkpoint's head shapes."""
    cls = _require(
        canon, "decode_head.classifier.weight", "UPerNet classifier", source, "hf_upernet"
    )
    num_psp = _count(canon, "decode_head.psp_modules.{}.conv.weight")
    pool_scales = tuple((hf_config or {}).get("pool_scales") or ())
    if len(pool_scales) != num_psp:
        if num_psp != 4:
            raise ConversionError(
                f"{source}: {num_psp} PPM branches but no config.json with pool_scales beside "
                "it; put the model's config.json next to the checkpoint"
            )
        pool_scales = (1, 2, 3, 6)
        notes.append("pool_scales (1, 2, 3, 6) assumed: no config.json gives them")
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


# --------------------------------------------------------------------------------------------
# Conversion


CANONICALISERS: dict[str, Callable[[str], tuple[str | None, str]]] = {
    "swin_official": _canon_swin_official,
    "hf_swin": _canon_hf_swin,
    "hf_resnet": _canon_hf_resnet,
    "torchvision_resnet": _canon_torchvision_resnet,
    "hrnet_official": _canon_hrnet_official,
}


def _check_hf_resnet_config(hf_config: Mapping[str, Any] | None, source: str, notes: list[str]):
    if hf_config is None:
        notes.append(
            "no config.json beside the checkpoint: assumed the torchvision-like layout "
            "(downsample_in_bottleneck=False, downsample_in_first_stage=False, relu)"
        )
        return
    checks = {
        "downsample_in_bottleneck": False,
        "downsample_in_first_stage": False,
        "layer_type": "bottleneck",
        "hidden_act": "relu",
    }
    for field, ours in checks.items():
        if field in hf_config and hf_config[field] != ours:
            raise ConversionError(
                f"{source}: config.json has {field}={hf_config[field]!r}; msc_seg's ResNet "
                f"(torchvision v1.5 layout) needs {field}={ours!r}"
            )


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
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r} is not one of {FORMATS}")
    default_target = "model" if fmt == "hf_upernet" else "backbone"
    target = target or default_target
    if target not in ("backbone", "model") or (target == "model" and fmt != "hf_upernet"):
        raise ConversionError(
            f"--target {target!r} is not available for --format {fmt}; use "
            f"{'backbone or model' if fmt == 'hf_upernet' else 'backbone'}"
        )
    notes: list[str] = []
    unused: dict[str, str] = {}
    canon: dict[str, tuple[np.ndarray, list[str]]] = {}
    for key, array in tensors.items():
        if fmt == "hf_upernet":
            new, why = _canon_hf_upernet(key, target)
        else:
            new, why = CANONICALISERS[fmt](key)
        if new is None:
            unused[key] = why
        elif new in canon:
            unused[key] = f"duplicate of {canon[new][1][0]} after renaming"
        else:
            canon[new] = (np.asarray(array), [key])
    if fmt in ("hf_swin", "hf_upernet"):
        canon = _merge_qkv(canon)

    # Architecture and the abstract tree the weights must fit.
    backbone_canon = canon
    if fmt == "hf_upernet" and target == "model":
        backbone_canon = {
            k[len("backbone.") :]: v for k, v in canon.items() if k.startswith("backbone.")
        }
    missing_by_design: dict[str, str] = {}
    if fmt in ("swin_official", "hf_swin", "hf_upernet"):
        name, window = detect_swin(backbone_canon, source, fmt)
        name = backbone or name
        arch: dict[str, Any] = {"family": "swin", "backbone": name, "window_size": window}
        overrides: dict[str, Any] = {"model.backbone": name, "model.window_size": window}
        factory = _swin_factory(name, window)
        norm_reason = (
            SWIN_OUTPUT_NORM_MISSING if fmt == "swin_official" else HF_SWIN_OUTPUT_NORM_MISSING
        )
        prefix = "backbone/" if target == "model" else ""
        missing_by_design = {
            f"{prefix}norm{i}/{p}": norm_reason for i in range(4) for p in ("scale", "bias")
        }
        if target == "model":
            from msc_seg.models.segmentor import UPerNetSegmentor

            kwargs = _upernet_kwargs(canon, name, window, hf_config, source, notes)
            arch = {"family": "upernet", **kwargs}
            overrides = {
                "model.name": "upernet",
                "model.backbone": name,
                "model.window_size": window,
                "model.decoder_channels": kwargs["decoder_channels"],
                "model.aux_channels": kwargs.get("aux_channels", 0),
                "model.aux_in_index": kwargs["aux_in_index"],
            }
            notes.append(f"num_classes {kwargs['num_classes']}: the dataset must have as many")
            factory = lambda rngs: UPerNetSegmentor(  # noqa: E731
                **kwargs, drop_path_rate=0.0, use_projectors=False, rngs=rngs
            )
    elif fmt in ("hf_resnet", "torchvision_resnet"):
        if fmt == "hf_resnet":
            _check_hf_resnet_config(hf_config, source, notes)
        from msc_seg.models.resnet import make_resnet

        name = backbone or detect_resnet(canon, source, fmt)
        arch = {"family": "resnet", "backbone": name}
        overrides = {"model.backbone": name}
        notes.append("ResNet weights fit every output stride (dilation has no parameters)")
        factory = lambda rngs: make_resnet(name, output_stride=32, rngs=rngs)  # noqa: E731
    else:
        from msc_seg.models.hrnet import make_hrnet

        name = backbone or detect_hrnet(canon, source, fmt)
        arch = {"family": "hrnet", "backbone": name}
        overrides = {"model.backbone": name}
        factory = lambda rngs: make_hrnet(name, rngs=rngs)  # noqa: E731
    expected = abstract_shapes(factory)

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
                unused[s] = f"{NO_COUNTERPART} ({arch.get('backbone')}: no {path})"
            continue
        if value.shape != expected[path]:
            raise ConversionError(
                f"{source}: {' + '.join(sources)} has shape {tuple(array.shape)} (flax layout "
                f"{tuple(value.shape)} at {path}) but {arch.get('backbone')} expects "
                f"{expected[path]} there; check --backbone / the checkpoint's variant"
            )
        params[path] = value.astype(np.float32)
        loaded[path] = sources
    if not params:
        raise ConversionError(
            f"{source}: nothing converts to {arch.get('backbone')} with --format {fmt}; "
            f"the file's keys start: {_first_keys(tensors)}"
        )
    missing = {
        p: missing_by_design.get(p, "not in the checkpoint") for p in expected if p not in params
    }
    return Conversion(
        format=fmt,
        source=source,
        target=target,
        architecture=arch,
        config_overrides=overrides,
        params=params,
        loaded=loaded,
        missing=missing,
        unused=dict(sorted(unused.items())),
        notes=notes,
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
        bad_missing = [k for k, why in conversion.missing.items() if why == "not in the checkpoint"]
        if bad_unused or bad_missing:
            raise ConversionError(
                f"{input_path}: --strict and {len(bad_unused)} tensors without a counterpart "
                f"({_first_keys(bad_unused)}), {len(bad_missing)} variables not in the "
                f"checkpoint ({_first_keys(bad_missing)})"
            )
    write_conversion(conversion, output)
    return conversion


def summarise(conversion: Conversion, output: str | pathlib.Path) -> str:
    """A few lines for the terminal: counts, unused reasons, the config to use."""
    m = conversion.manifest()
    lines = [
        f"{conversion.format}: {m['counts']['source_tensors']} tensors from "
        f"{conversion.source} -> {m['counts']['loaded_arrays']} arrays for the "
        f"{conversion.target} ({conversion.architecture})",
    ]
    reasons: dict[str, int] = {}
    for why in conversion.unused.values():
        reasons[why] = reasons.get(why, 0) + 1
    lines += [f"  unused: {n} x {why}" for why, n in sorted(reasons.items())]
    missing: dict[str, int] = {}
    for why in conversion.missing.values():
        missing[why] = missing.get(why, 0) + 1
    lines += [f"  missing: {n} x {why}" for why, n in sorted(missing.items())]
    lines += [f"  note: {n}" for n in conversion.notes]
    flags = " ".join(f"--config.{k}={v}" for k, v in conversion.config_overrides.items())
    lines.append(f"Train with: {flags} --config.model.pretrained={output}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msc_seg.tools.import_weights",
        description="Convert PyTorch / Hugging Face checkpoints into msc_seg weights.",
    )
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True, help="checkpoint file or Hugging Face folder")
    parser.add_argument("--output", required=True, help="directory for params.npz + manifest")
    parser.add_argument("--backbone", help="architecture name instead of the detected one")
    parser.add_argument(
        "--target",
        choices=("backbone", "model"),
        help="hf_upernet only: 'model' (default, backbone + heads) or 'backbone'",
    )
    parser.add_argument("--strict", action="store_true", help="fail on unexplained keys")
    parser.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="torch.load(weights_only=False): only for files you trust",
    )
    args = parser.parse_args(argv)
    try:
        conversion = import_weights(
            args.format,
            args.input,
            args.output,
            backbone=args.backbone,
            target=args.target,
            strict=args.strict,
            unsafe_pickle=args.unsafe_pickle,
        )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summarise(conversion, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
