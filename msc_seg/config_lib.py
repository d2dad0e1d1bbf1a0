"""Shared config blocks, argument parsing and validation.

Every experiment file in `configs/` builds its `ml_collections.ConfigDict` from `base_config()` and
overrides fields; `validate()` fails fast with a message that names the field and says what to do.
The field list (and its documentation) lives in docs/CONFIGS.md; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping

import ml_collections

KNOWN_MODELS = ("upernet", "deeplabv3", "hrnet", "ocrnet")
KNOWN_OPTIMIZERS = ("sgd", "adamw")
KNOWN_DTYPES = ("float32", "bfloat16")
KNOWN_PROJECTOR_POSITIONS = ("fpn", "backbone")
# Output stride of every model's coarsest feature map: crops must be multiples of it so that the
# label downsampling of the contrastive loss (label[:, ::s, ::s]) lines up with every feature map.
MODEL_STRIDE = 32
# Number of projected feature scales (contrastive taps) per model; DeepLabV3's depends on its taps.
MODEL_NUM_SCALES = {"upernet": 4, "hrnet": 4, "ocrnet": 4}
DEEPLAB_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def model_num_scales(model: ml_collections.ConfigDict) -> int:
    """Number of projected scales (contrastive taps) of the configured model."""
    if model.name == "deeplabv3":
        return len(model.taps)
    return MODEL_NUM_SCALES[model.name]


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and what to do."""


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `key=value,key2=value2` (the `:arg` of `--config=file.py:arg`) over `defaults`.

    Values are converted to the type of the default. Unknown keys are errors naming the key.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ConfigError(f"config argument {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key not in defaults:
            raise ConfigError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
    """Every field an experiment has, with defaults; experiment files override them."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 16  # global batch over all hosts and devices
    c.total_steps = 160_000
    c.log_every_steps = 50
    c.eval_every_steps = 16_000
    c.checkpoint_every_steps = 4_000
    c.keep_checkpoints = 3  # the last K; the best by val mIoU is kept separately

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "demo"
    c.dataset.spec_file = ""  # JSON description of your own folder dataset (docs/DATASETS.md)
    c.dataset.data_dir = ""  # "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.dataset.train_split = ""  # "" = the dataset's own (registry), e.g. train
    c.dataset.eval_split = ""  # "" = the dataset's own, e.g. validation (CamVid: val)
    c.dataset.crop_size = (512, 512)  # (height, width) of train crops
    c.dataset.scale_range = (0.5, 2.0)
    c.dataset.aspect_range = (0.9, 1.1)
    c.dataset.cat_max_ratio = 0.75
    c.dataset.color_jitter = True
    c.dataset.shuffle_buffer = 1000
    c.dataset.prefetch = 2

    c.model = ml_collections.ConfigDict()
    c.model.name = "upernet"
    c.model.backbone = "swin_t"
    c.model.decoder_channels = 512
    c.model.aux_channels = 256
    c.model.aux_in_index = 2
    c.model.dropout = 0.1
    c.model.drop_path_rate = 0.3
    c.model.window_size = 7
    c.model.projector_position = "fpn"
    c.model.embedding_dim = 256
    c.model.align_corners = False  # bilinear upsampling of logits (reference: True except UPerNet)
    # DeepLabV3 only
    c.model.output_stride = 8
    c.model.aspp_channels = 256
    c.model.aspp_dilations = ()  # () = by output stride: 12/24/36 at OS8, 6/12/18 at OS16
    c.model.taps = ("layer1", "layer4")  # ResNet layers fed to the projectors, finest first
    # HRNet / OCRNet only
    c.model.ocr_channels = 512
    c.model.ocr_key_channels = 256
    c.model.reference_head = False  # HRNet: the reference's head variant (see docs/MODELS.md)
    c.model.official_aux_head = False  # OCRNet: official HRNet-OCR 1x1 aux head
    c.model.dtype = "float32"  # compute dtype; params and BN statistics stay float32
    c.model.pretrained = ""  # a directory written by msc_seg.tools.import_weights

    c.loss = ml_collections.ConfigDict()
    c.loss.aux_weight = 0.4
    c.loss.class_weights = ()  # () = unweighted CE; else one weight per class
    c.loss.contrastive = ml_collections.ConfigDict()
    c.loss.contrastive.weight = 0.0  # 0 turns the contrastive term (and the projectors) off
    c.loss.contrastive.temperature = 0.1
    c.loss.contrastive.scale_weights = (1.0, 0.7, 0.4, 0.1)
    c.loss.contrastive.cross_scale = True
    c.loss.contrastive.w_high_low = 1.0
    c.loss.contrastive.w_high_mid = 1.0
    c.loss.contrastive.detach_coarse = False
    c.loss.contrastive.min_views_per_class = 5
    c.loss.contrastive.max_views_per_class = 2500
    c.loss.contrastive.max_features_total = 10_000
    c.loss.contrastive.images_per_group = 4
    c.loss.contrastive.gather_all_groups = False

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 6e-5
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.momentum = 0.9  # SGD only
    c.optimizer.no_decay_patterns = (
        "absolute_pos_embed",
        "relative_position_bias_table",
        "^backbone/.*norm",
    )
    c.optimizer.grad_clip_norm = 0.0  # 0 = no clipping (the reference clips nothing)

    c.schedule = ml_collections.ConfigDict()
    c.schedule.warmup_steps = 1500
    c.schedule.warmup_init_ratio = 1e-6
    c.schedule.poly_power = 1.0
    c.schedule.end_learning_rate = 0.0

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 8  # global
    c.eval.pad_shape = (512, 2048)  # every eval image (and label) is padded to this (H, W)
    c.eval.resize_short_side = 0  # 0 = native size; ADE20K/UPerNet protocol: 512
    c.eval.resize_long_side = 0  # 0 = off; Cityscapes TTA: 2048, PascalContext: 520
    c.eval.mode = "whole"  # "whole" image or "slide" (sliding windows, mmseg placement)
    c.eval.window = (512, 512)  # slide only: window (H, W), multiples of 32
    c.eval.stride = (341, 341)  # slide only: stride (H, W), 0 < stride <= window
    c.eval.scales = (1.0,)  # test-time scales of the (resized) image; e.g. (0.5, 0.75, ..., 1.75)
    c.eval.flip = False  # also predict the horizontally flipped image (test-time augmentation)
    c.eval.average = "logits"  # how augmentations combine: "logits" (reference) or "probs" (mmseg)
    c.eval.num_images_to_log = 4
    c.eval.max_examples = 0  # 0 = the whole split

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the `data` axis; -1 = all
    return c


@dataclasses.dataclass(frozen=True)
class RuntimeFacts:
    """What validation needs to know about the machine."""

    num_devices: int
    process_count: int = 1


def _err(field: str, value, what_to_do: str) -> ConfigError:
    return ConfigError(f"config field `{field}` = {value!r}: {what_to_do}")


KNOWN_EVAL_MODES = ("whole", "slide")
KNOWN_EVAL_AVERAGES = ("logits", "probs")


def _validate_eval_protocol(e: ml_collections.ConfigDict, pad: tuple[int, int]) -> None:
    """The inference protocol fields of `eval` (mode, windows, scales, flip, resizes)."""
    for field in ("resize_short_side", "resize_long_side"):
        if int(e[field]) < 0:
            raise _err(f"eval.{field}", e[field], "must be >= 0 (0 turns it off)")
    if e.mode not in KNOWN_EVAL_MODES:
        raise _err("eval.mode", e.mode, f"must be one of {list(KNOWN_EVAL_MODES)}")
    if e.average not in KNOWN_EVAL_AVERAGES:
        raise _err("eval.average", e.average, f"must be one of {list(KNOWN_EVAL_AVERAGES)}")
    if not isinstance(e.flip, bool):
        raise _err("eval.flip", e.flip, "must be True or False")
    scales = tuple(e.scales)
    if not scales or any(not isinstance(s, int | float) or s <= 0 for s in scales):
        raise _err("eval.scales", e.scales, "must be a non-empty tuple of positive factors")
    if e.mode != "slide":
        return
    window, stride = tuple(e.window), tuple(e.stride)
    if len(window) != 2 or any(int(v) <= 0 or int(v) % MODEL_STRIDE for v in window):
        raise _err(
            "eval.window",
            e.window,
            f"must be (height, width), positive multiples of {MODEL_STRIDE}",
        )
    if len(stride) != 2 or not all(0 < s <= w for s, w in zip(stride, window, strict=True)):
        raise _err(
            "eval.stride",
            e.stride,
            f"must be (height, width) with 0 < stride <= eval.window {tuple(window)} "
            "(a larger stride would leave pixels without a window)",
        )
    if window[0] > pad[0] or window[1] > pad[1]:
        raise _err(
            "eval.window",
            e.window,
            f"is larger than eval.pad_shape {pad}: use a smaller window or a larger pad_shape",
        )


def validate(config: ml_collections.ConfigDict, facts: RuntimeFacts) -> None:
    """Raises ConfigError naming the first field that cannot work, and what to do about it."""
    from msc_seg.data import registry  # late import: keeps config parsing free of TensorFlow

    c = config
    for field in (
        "batch_size",
        "total_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
    ):
        if int(c[field]) <= 0:
            raise _err(field, c[field], "must be a positive integer")

    n_dev = facts.num_devices if c.mesh.data in (-1, 0) else int(c.mesh.data)
    if n_dev > facts.num_devices:
        raise _err(
            "mesh.data",
            c.mesh.data,
            f"only {facts.num_devices} devices are visible; use -1 for all of them",
        )
    if c.batch_size % facts.process_count:
        raise _err(
            "batch_size",
            c.batch_size,
            f"must be divisible by the {facts.process_count} "
            "processes (each host loads batch_size / process_count images)",
        )
    if c.batch_size % n_dev:
        raise _err(
            "batch_size",
            c.batch_size,
            f"must be divisible by the {n_dev} devices of the "
            f"`data` mesh axis; use a multiple of {n_dev} or set mesh.data",
        )
    if c.eval.batch_size % n_dev or c.eval.batch_size <= 0:
        raise _err(
            "eval.batch_size",
            c.eval.batch_size,
            f"must be a positive multiple of the {n_dev} devices of the `data` mesh axis",
        )

    if c.dataset.spec_file:
        try:
            described = registry.register_dataset_file(c.dataset.spec_file).name
        except ValueError as e:
            raise _err("dataset.spec_file", c.dataset.spec_file, str(e)) from None
        if described != c.dataset.name:
            raise _err(
                "dataset.name",
                c.dataset.name,
                f"differs from the dataset {described!r} that dataset.spec_file describes; "
                f"set dataset.name={described}",
            )
    try:
        spec = registry.get_dataset_spec(c.dataset.name)
    except ValueError as e:
        raise _err("dataset.name", c.dataset.name, str(e)) from None
    crop = tuple(int(v) for v in c.dataset.crop_size)
    if len(crop) != 2 or min(crop) <= 0 or any(v % MODEL_STRIDE for v in crop):
        raise _err(
            "dataset.crop_size",
            c.dataset.crop_size,
            f"must be (height, width), both positive multiples of {MODEL_STRIDE}",
        )
    lo, hi = c.dataset.scale_range
    if not 0 < lo <= hi:
        raise _err(
            "dataset.scale_range", c.dataset.scale_range, "must be (low, high), 0 < low <= high"
        )
    max_hw = getattr(spec, "max_image_shape", None)
    if max_hw is not None and any(cv > iv * hi for cv, iv in zip(crop, max_hw, strict=True)):
        raise _err(
            "dataset.crop_size",
            c.dataset.crop_size,
            f"is larger than the images of dataset '{spec.name}' ({max_hw[0]}x{max_hw[1]}) "
            f"even at the largest random scale {hi}; every crop would be mostly padding. "
            "Use a smaller crop_size or a larger scale_range",
        )
    if not 0 < c.dataset.cat_max_ratio <= 1:
        raise _err("dataset.cat_max_ratio", c.dataset.cat_max_ratio, "must be in (0, 1]")
    pad = tuple(int(v) for v in c.eval.pad_shape)
    if len(pad) != 2 or any(v % MODEL_STRIDE for v in pad) or min(pad) <= 0:
        raise _err(
            "eval.pad_shape",
            c.eval.pad_shape,
            f"must be (height, width), both positive multiples of {MODEL_STRIDE}",
        )
    if (
        max_hw is not None
        and not (c.eval.resize_short_side or c.eval.resize_long_side)
        and (pad[0] < max_hw[0] or pad[1] < max_hw[1])
    ):
        raise _err(
            "eval.pad_shape",
            c.eval.pad_shape,
            f"is smaller than the images of dataset '{spec.name}' ({max_hw[0]}x{max_hw[1]})",
        )
    _validate_eval_protocol(c.eval, pad)

    if c.model.name not in KNOWN_MODELS:
        raise _err("model.name", c.model.name, f"unknown model; known: {list(KNOWN_MODELS)}")
    if c.model.dtype not in KNOWN_DTYPES:
        raise _err("model.dtype", c.model.dtype, f"must be one of {list(KNOWN_DTYPES)}")
    if c.model.projector_position not in KNOWN_PROJECTOR_POSITIONS:
        raise _err(
            "model.projector_position",
            c.model.projector_position,
            f"must be one of {list(KNOWN_PROJECTOR_POSITIONS)}",
        )
    if c.model.name == "deeplabv3":
        taps = tuple(c.model.taps)
        known = all(t in DEEPLAB_LAYERS for t in taps)
        if not taps or not known or list(taps) != sorted(set(taps), key=DEEPLAB_LAYERS.index):
            raise _err(
                "model.taps",
                c.model.taps,
                f"must be distinct names from {list(DEEPLAB_LAYERS)}, finest first, "
                "e.g. ('layer1', 'layer4') or ('layer1', 'layer3', 'layer4')",
            )
        if c.model.output_stride not in (8, 16, 32):
            raise _err("model.output_stride", c.model.output_stride, "must be 8, 16 or 32")
    if c.model.pretrained and not pathlib.Path(c.model.pretrained).exists():
        raise _err(
            "model.pretrained",
            c.model.pretrained,
            "does not exist; write it with `python -m msc_seg.tools.import_weights` "
            "or set model.pretrained=''",
        )

    if c.loss.aux_weight < 0:
        raise _err("loss.aux_weight", c.loss.aux_weight, "must be >= 0")
    if c.loss.class_weights and len(c.loss.class_weights) != spec.num_classes:
        raise _err(
            "loss.class_weights",
            c.loss.class_weights,
            f"needs one weight per class ({spec.num_classes} for '{spec.name}') or ()",
        )
    cc = c.loss.contrastive
    if cc.weight < 0:
        raise _err("loss.contrastive.weight", cc.weight, "must be >= 0 (0 turns it off)")
    if cc.weight > 0:
        if cc.temperature <= 0:
            raise _err("loss.contrastive.temperature", cc.temperature, "must be > 0")
        scales = model_num_scales(c.model)
        if len(cc.scale_weights) != scales:
            raise _err(
                "loss.contrastive.scale_weights",
                cc.scale_weights,
                f"needs one weight per projected scale ({scales} for model "
                f"'{c.model.name}'), finest first",
            )
        if cc.images_per_group <= 0 or c.batch_size % cc.images_per_group:
            raise _err(
                "loss.contrastive.images_per_group",
                cc.images_per_group,
                f"must divide batch_size ({c.batch_size}): the batch is split into groups "
                "of this many images (the reference's per-GPU batch)",
            )
        if cc.min_views_per_class < 1 or cc.max_features_total < 1:
            raise _err(
                "loss.contrastive.min_views_per_class",
                cc.min_views_per_class,
                "min_views_per_class and max_features_total must be >= 1",
            )
        if cc.max_views_per_class < 1:
            raise _err(
                "loss.contrastive.max_views_per_class", cc.max_views_per_class, "must be >= 1"
            )

    if c.optimizer.name not in KNOWN_OPTIMIZERS:
        raise _err("optimizer.name", c.optimizer.name, f"must be one of {list(KNOWN_OPTIMIZERS)}")
    if c.optimizer.learning_rate <= 0:
        raise _err("optimizer.learning_rate", c.optimizer.learning_rate, "must be > 0")
    if c.schedule.warmup_steps < 0 or c.schedule.warmup_steps >= c.total_steps:
        raise _err(
            "schedule.warmup_steps",
            c.schedule.warmup_steps,
            f"must be in [0, total_steps={c.total_steps})",
        )


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as pretty JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


# Fields whose change makes an existing checkpoint unusable (different parameter or optimizer
# state shapes) or meaningless to resume (different data/labels).
STRUCTURAL_FIELDS = (
    "dataset.name",
    "model.name",
    "model.backbone",
    "model.decoder_channels",
    "model.aux_channels",
    "model.aux_in_index",
    "model.window_size",
    "model.projector_position",
    "model.embedding_dim",
    "model.taps",
    "model.aspp_channels",
    "model.ocr_channels",
    "model.ocr_key_channels",
    "model.reference_head",
    "model.official_aux_head",
    "optimizer.name",
)


def _lookup(d: Mapping, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def structural_differences(saved: Mapping, current: Mapping) -> list[str]:
    """Fields of STRUCTURAL_FIELDS whose values differ between two config dicts."""
    diffs = []
    for field in STRUCTURAL_FIELDS:
        a, b = _lookup(saved, field), _lookup(current, field)
        if json.dumps(a, default=str) != json.dumps(b, default=str):
            diffs.append(f"{field}: {a!r} in the workdir, {b!r} now")
    return diffs
