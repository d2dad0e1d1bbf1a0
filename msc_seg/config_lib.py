"""The config schema, config-file arguments, renamed fields and the cross-field checks.

A config section holds the keyword arguments of what it configures (the experiment passes it on
as `**section`): `model` = `name` + the segmentor's constructor arguments, `loss.contrastive` =
`weight` + `losses.ContrastiveOptions`, `optimizer` = `name` + `optim.make_optimizer`, `schedule`
= `optim.make_warmup_poly_schedule`, `dataset.train` = `data.pipeline.make_train_iterator`,
`eval.data` = `data.pipeline.make_eval_dataset`, `eval.protocol` = `inference.Protocol`. Each of
those checks its own arguments; `experiment.py` names the config field when one fails. This module
keeps only what spans fields (batch vs devices, crops vs the model stride, windows vs the canvas)
and the table of renamed fields. docs/CONFIGS.md documents every field; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import ml_collections

from msc_seg.errors import ConfigError
from msc_seg.losses.class_weights import SCHEMES as CLASS_WEIGHT_SCHEMES

__all__ = ["ConfigError"]  # re-exported: callers catch config_lib.ConfigError

# Every model's coarsest feature map has stride 32: crops (and eval windows / canvases) must be
# multiples of it so that the contrastive loss's label downsampling lines up with every scale.
MODEL_STRIDE = 32

# Old field -> new field. An old config file that still sets an old field keeps working (the
# value moves, with a note); a command-line override of an old field is refused naming the new.
RENAMED_FIELDS = {
    "dataset.train_split": "dataset.train.split",
    **{
        f"dataset.{k}": f"dataset.train.{k}"
        for k in (
            "crop_size",
            "scale_range",
            "aspect_range",
            "cat_max_ratio",
            "color_jitter",
            "shuffle_buffer",
            "prefetch",
        )
    },
    "dataset.eval_split": "eval.data.split",
    **{
        f"eval.{k}": f"eval.data.{k}"
        for k in ("pad_shape", "resize_short_side", "resize_long_side")
    },
    **{
        f"eval.{k}": f"eval.protocol.{k}"
        for k in ("mode", "window", "stride", "scales", "flip", "average")
    },
    "model.pretrained": "model_init",
    "model.ocr_key_channels": "model.key_channels",
    "optimizer.learning_rate": "schedule.learning_rate",
    "loss.contrastive.min_views_per_class": "loss.contrastive.min_views",
    "loss.contrastive.max_views_per_class": "loss.contrastive.max_views",
    "loss.contrastive.max_features_total": "loss.contrastive.max_total",
}


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


def upernet_model(**overrides) -> ml_collections.ConfigDict:
    """The `model` section of UPerNet (msc_seg.models.segmentor.UPerNetSegmentor's arguments)."""
    return ml_collections.ConfigDict(
        dict(
            name="upernet",
            backbone="swin_t",
            decoder_channels=512,
            aux_channels=256,
            aux_in_index=2,
            aux_conv_bias=False,
            dropout=0.1,
            drop_path_rate=0.3,
            window_size=7,
            projector_position="fpn",
            embedding_dim=256,
            align_corners=False,  # bilinear upsampling of logits (reference: True but UPerNet)
            dtype="float32",  # compute dtype; params and BN statistics stay float32
        )
        | overrides
    )


CPU_SCHEDULERS = ("auto", "memory", "concurrency")
CPU_EMITTERS = ("auto", "fusion", "elemental")


def base_config() -> ml_collections.ConfigDict:
    """Every field an experiment has, with defaults; experiment files override them.

    The `model` section is UPerNet's; a config for another model replaces the whole section
    (`c.model = ml_collections.ConfigDict(dict(name="hrnet", ...))`, see recipes.py).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 16  # global batch over all hosts and devices
    c.total_steps = 160_000
    c.log_every_steps = 50
    c.eval_every_steps = 16_000
    c.checkpoint_every_steps = 4_000
    c.keep_checkpoints = 3  # the last K; the best by val mIoU is kept separately
    # XLA's scheduler of the CPU train step: "memory" (smaller buffer plan for most models),
    # "concurrency" (XLA's default; smaller for UPerNet-Swin-S/B/L) or "auto" ("memory" from
    # one 512x512 crop per device on). docs/CONFIGS.md.
    c.xla_cpu_scheduler = "auto"
    # XLA's emitters of the CPU train step's fusions: "fusion" (MLIR, XLA's default), "elemental"
    # (LLVM IR: tiny steps compile faster, smaller executable; large CNN steps compile far
    # slower) or "auto" ("fusion" from one 512x512 crop per device on). docs/CONFIGS.md.
    c.xla_cpu_emitters = "auto"

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "demo"
    c.dataset.spec_file = ""  # JSON description of your own folder dataset (docs/DATASETS.md)
    c.dataset.data_dir = ""  # "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.dataset.train = ml_collections.ConfigDict()  # data.pipeline.make_train_iterator
    c.dataset.train.split = ""  # "" = the dataset's own (registry), e.g. train
    c.dataset.train.crop_size = (512, 512)  # (height, width) of train crops
    c.dataset.train.scale_range = (0.5, 2.0)
    c.dataset.train.aspect_range = (0.9, 1.1)
    c.dataset.train.cat_max_ratio = 0.75
    c.dataset.train.color_jitter = True
    c.dataset.train.shuffle_buffer = 1000
    c.dataset.train.prefetch = 2

    c.model = upernet_model()
    c.model_init = ""  # a directory written by msc_seg.tools.import_weights (ImageNet weights)

    c.loss = ml_collections.ConfigDict()
    c.loss.aux_weight = 0.4
    # () = unweighted CE; K floats (one per class); or "inverse_freq" / "median_freq" / "enet",
    # computed from the train split's dataset_stats.json (losses/class_weights.py). Any type:
    # a scheme name and a list are both accepted, from config files and --config overrides.
    c.loss.class_weights = ml_collections.FieldReference((), field_type=object)
    c.loss.contrastive = ml_collections.ConfigDict()  # weight + losses.ContrastiveOptions
    c.loss.contrastive.weight = 0.0  # 0 turns the contrastive term (and the projectors) off
    c.loss.contrastive.temperature = 0.1
    c.loss.contrastive.scale_weights = (1.0, 0.7, 0.4, 0.1)
    c.loss.contrastive.cross_scale = True
    c.loss.contrastive.w_high_low = 1.0
    c.loss.contrastive.w_high_mid = 1.0
    c.loss.contrastive.detach_coarse = False
    c.loss.contrastive.min_views = 5  # per class and image
    c.loss.contrastive.max_views = 2500  # per class and image
    c.loss.contrastive.max_total = 10_000  # anchors per group and scale
    c.loss.contrastive.images_per_group = 4
    c.loss.contrastive.gather_all_groups = False

    c.optimizer = ml_collections.ConfigDict()  # name + optim.make_optimizer
    c.optimizer.name = "adamw"
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

    c.schedule = ml_collections.ConfigDict()  # optim.make_warmup_poly_schedule
    c.schedule.learning_rate = 6e-5
    c.schedule.warmup_steps = 1500
    c.schedule.warmup_init_ratio = 1e-6
    c.schedule.poly_power = 1.0
    c.schedule.end_learning_rate = 0.0

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 8  # global
    c.eval.num_images_to_log = 4
    c.eval.max_examples = 0  # 0 = the whole split
    # Contrastive runs only (the projectors exist only then): per-scale 2-D projections of a
    # class-balanced embedding sample and intra/inter-class cosine scalars at every evaluation.
    c.eval.embedding_plots = True
    c.eval.embedding_projection = "pca"  # or "tsne" (needs scikit-learn)
    c.eval.data = ml_collections.ConfigDict()  # data.pipeline.make_eval_dataset
    c.eval.data.split = ""  # "" = the dataset's own, e.g. validation (CamVid: val)
    c.eval.data.pad_shape = (512, 2048)  # every eval image (and label) is padded to this (H, W)
    c.eval.data.resize_short_side = 0  # 0 = native size; ADE20K/UPerNet protocol: 512
    c.eval.data.resize_long_side = 0  # 0 = off; Cityscapes TTA: 2048, PascalContext: 520
    # 0 = every image on the pad_shape canvas; N (a multiple of 32, one process) = each image on
    # its bucket: max(image, label) rounded up to N per side, capped by pad_shape (one compile per
    # bucket). Exact for sliding windows; whole-image models see less padding (docs/CONFIGS.md).
    c.eval.data.bucket_multiple = 0
    c.eval.protocol = ml_collections.ConfigDict()  # inference.Protocol
    c.eval.protocol.mode = "whole"  # "whole" image or "slide" (sliding windows, mmseg placement)
    c.eval.protocol.window = (512, 512)  # slide only: window (H, W), multiples of 32
    c.eval.protocol.stride = (341, 341)  # slide only: stride (H, W), 0 < stride <= window
    c.eval.protocol.scales = (1.0,)  # test-time scales of the (resized) image
    c.eval.protocol.flip = False  # also predict the horizontally flipped image
    c.eval.protocol.average = "logits"  # how views combine: "logits" (reference) or "probs"

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices on the `data` axis; -1 = all
    return c


def _flat(d: Mapping, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node = node[part]
    node[leaf] = value


def _delete(config: ml_collections.ConfigDict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = _get(config, ".".join(parents)) if parents else config
    with node.unlocked():
        del node[leaf]


def upgrade(config: ml_collections.ConfigDict) -> list[str]:
    """Moves renamed fields to their new names (in place) -> one note per field moved.

    Then refuses fields the schema does not know (a typo in a config file), naming them. The
    `model` section is free-form (the segmentor's arguments, checked when the model is built).
    """
    notes = []
    with config.unlocked():
        flat = _flat(config.to_dict())
        for old, new in RENAMED_FIELDS.items():
            if old in flat:
                _set(config, new, flat[old])
                _delete(config, old)
                notes.append(f"config field `{old}` is now `{new}` (moved; update your config)")
    known = set(_flat(base_config().to_dict()))
    for field in _flat(config.to_dict()):
        if field.startswith("model.") or field in known:
            continue
        if any(field.startswith(k + ".") for k in ("loss.class_weights",)):
            continue
        raise ConfigError(
            f"config field `{field}` is not a field of msc_seg configs (a typo?); "
            "docs/CONFIGS.md lists every field"
        )
    return notes


def upgraded_dict(config: Mapping) -> dict:
    """A config dict (e.g. an older run's config.json) with renamed fields at their new names."""
    import copy

    out = copy.deepcopy(dict(config))
    flat = _flat(out)
    for old, new in RENAMED_FIELDS.items():
        if old not in flat:
            continue
        *parents, leaf = old.split(".")
        node = out
        for part in parents:
            node = node[part]
        del node[leaf]
        *parents, leaf = new.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = flat[old]
    return out


@dataclasses.dataclass(frozen=True)
class RuntimeFacts:
    """What validation needs to know about the machine."""

    num_devices: int
    process_count: int = 1


def _err(field: str, value, what_to_do: str) -> ConfigError:
    return ConfigError(f"config field `{field}` = {value!r}: {what_to_do}")


def data_devices(config: ml_collections.ConfigDict, facts: RuntimeFacts) -> int:
    """Devices on the `data` mesh axis (mesh.data, -1 = all), checked against the machine."""
    if config.mesh.data in (-1, 0):
        return facts.num_devices
    if int(config.mesh.data) > facts.num_devices:
        raise _err(
            "mesh.data",
            config.mesh.data,
            f"only {facts.num_devices} devices are visible; use -1 for all of them",
        )
    return int(config.mesh.data)


def _multiple_of_stride(field: str, value) -> tuple[int, int]:
    hw = tuple(int(v) for v in value)
    if len(hw) != 2 or min(hw) <= 0 or any(v % MODEL_STRIDE for v in hw):
        raise _err(
            field, value, f"must be (height, width), both positive multiples of {MODEL_STRIDE}"
        )
    return hw


def validate(config: ml_collections.ConfigDict, facts: RuntimeFacts) -> None:
    """The checks that span several fields or the machine; ConfigError naming the field.

    Single values are checked by the functions that use them (see `experiment.validate`, which
    calls this and builds every object of the run).
    """
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
    if c.get("xla_cpu_scheduler", "auto") not in CPU_SCHEDULERS:
        raise _err("xla_cpu_scheduler", c.xla_cpu_scheduler, f"must be one of {CPU_SCHEDULERS}")
    if c.get("xla_cpu_emitters", "auto") not in CPU_EMITTERS:
        raise _err("xla_cpu_emitters", c.xla_cpu_emitters, f"must be one of {CPU_EMITTERS}")
    n_dev = data_devices(c, facts)
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
    _multiple_of_stride("dataset.train.crop_size", c.dataset.train.crop_size)
    pad = _multiple_of_stride("eval.data.pad_shape", c.eval.data.pad_shape)
    for field in ("resize_short_side", "resize_long_side"):
        if int(c.eval.data[field]) < 0:
            raise _err(f"eval.data.{field}", c.eval.data[field], "must be >= 0 (0 turns it off)")
    bucket = int(c.eval.data.get("bucket_multiple", 0))
    if bucket < 0 or bucket % MODEL_STRIDE:
        raise _err(
            "eval.data.bucket_multiple",
            bucket,
            f"must be 0 (off) or a positive multiple of {MODEL_STRIDE}",
        )
    if bucket and facts.process_count > 1:
        raise _err(
            "eval.data.bucket_multiple",
            bucket,
            f"needs a single process (this run has {facts.process_count}: every host must "
            "evaluate the same shapes); set it to 0",
        )
    p = c.eval.protocol
    if p.mode == "slide":
        window = _multiple_of_stride("eval.protocol.window", p.window)
        if window[0] > pad[0] or window[1] > pad[1]:
            raise _err(
                "eval.protocol.window",
                p.window,
                f"is larger than eval.data.pad_shape {pad}: use a smaller window or a larger "
                "pad_shape",
            )
    cc = c.loss.contrastive
    if cc.weight > 0 and (cc.images_per_group <= 0 or c.batch_size % cc.images_per_group):
        raise _err(
            "loss.contrastive.images_per_group",
            cc.images_per_group,
            f"must divide batch_size ({c.batch_size}): the batch is split into groups "
            "of this many images (the reference's per-GPU batch)",
        )


def class_weight_scheme(value) -> str | None:
    """The scheme name `loss.class_weights` holds ("median_freq", also as the 1-tuple
    ("median_freq",) that an override of a tuple-typed field gives), or None for weights."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return None


def _check_class_weights(config: ml_collections.ConfigDict, spec) -> None:
    value = config.loss.class_weights
    scheme = class_weight_scheme(value)
    if scheme is not None:
        if scheme not in CLASS_WEIGHT_SCHEMES:
            raise _err(
                "loss.class_weights",
                value,
                f"unknown scheme; use one of {', '.join(CLASS_WEIGHT_SCHEMES)}, one weight per "
                "class, or () (docs/DATASETS.md, class weights)",
            )
        return
    try:
        weights = [float(w) for w in value or ()]
    except (TypeError, ValueError):
        weights = None
    if weights is None or (weights and len(weights) != spec.num_classes):
        raise _err(
            "loss.class_weights",
            value,
            f"needs one weight per class ({spec.num_classes} for '{spec.name}'), a scheme "
            f"({', '.join(CLASS_WEIGHT_SCHEMES)}) or ()",
        )


def check_against_dataset(
    config: ml_collections.ConfigDict,
    spec,
    image_shapes: Mapping[str, tuple[int, int] | None] | None = None,
) -> list[str]:
    """Crops and eval canvas against the dataset's largest images; class weights vs classes.

    The image bound is the registry's `spec.max_image_shape` when it has one, else
    `image_shapes` ({"train": (H, W), "eval": (H, W)}: the largest image of the train and eval
    splits, from the prepared dataset's stats; None = unknown). ConfigError naming the field;
    returns one note per check that could not be made (only when `image_shapes` is given: the
    start-up check of a prepared dataset, see experiment.check_prepared_dataset).
    """
    _check_class_weights(config, spec)
    notes = []
    fixed = getattr(spec, "max_image_shape", None)
    for which in ("train", "eval"):
        max_hw = fixed or (image_shapes or {}).get(which)
        if max_hw is None:
            if image_shapes is not None:
                field = "dataset.train.crop_size" if which == "train" else "eval.data.pad_shape"
                notes.append(
                    f"`{field}` not checked against the {which} images of '{spec.name}': their "
                    "size is unknown (no max_image_shape in the dataset description and no "
                    "dataset_stats.json; `python -m msc_seg.data.prepare ... --stats` writes it)"
                )
            continue
        source = "" if fixed else f", the largest {which} image in dataset_stats.json"
        if which == "train":
            _check_crop(config, spec, max_hw, source)
        else:
            _check_canvas(config, spec, max_hw, source)
    return notes


def _check_crop(config, spec, max_hw, source: str) -> None:
    train = config.dataset.train
    crop = tuple(int(v) for v in train.crop_size)
    hi = train.scale_range[1]
    if any(cv > iv * hi for cv, iv in zip(crop, max_hw, strict=True)):
        raise _err(
            "dataset.train.crop_size",
            train.crop_size,
            f"is larger than the images of dataset '{spec.name}' ({max_hw[0]}x{max_hw[1]}"
            f"{source}) even at the largest random scale {hi}; every crop would be mostly "
            "padding. Use a smaller crop_size or a larger scale_range",
        )


def _check_canvas(config, spec, max_hw, source: str) -> None:
    data = config.eval.data
    pad = tuple(int(v) for v in data.pad_shape)
    if not (data.resize_short_side or data.resize_long_side) and (
        pad[0] < max_hw[0] or pad[1] < max_hw[1]
    ):
        need = tuple(-(-v // MODEL_STRIDE) * MODEL_STRIDE for v in max_hw)
        raise _err(
            "eval.data.pad_shape",
            data.pad_shape,
            f"is smaller than the images of dataset '{spec.name}' ({max_hw[0]}x{max_hw[1]}"
            f"{source}); use at least ({need[0]}, {need[1]}), or resize the eval images "
            "(eval.data.resize_short_side / resize_long_side)",
        )


def to_dict(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON-compatible dicts (tuples become lists)."""
    return json.loads(to_json(config))


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as pretty JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


# Model arguments that change neither parameter shapes nor their meaning: every other `model.*`
# field is structural (a resume with a different value is refused).
NON_STRUCTURAL_MODEL_FIELDS = ("dtype", "dropout", "drop_path_rate", "remat", "scan_blocks")
# Fields whose change makes an existing checkpoint unusable (different parameter or optimizer
# state trees) or meaningless to resume (different data/labels).
STRUCTURAL_FIELDS = ("dataset.name", "optimizer.name")


def _structural_facts(config: Mapping) -> dict[str, object]:
    """field -> value of everything that decides the checkpoint's tree or meaning."""
    facts = {f: _lookup(config, f) for f in STRUCTURAL_FIELDS}
    model = _lookup(config, "model") or {}
    for k, v in sorted(model.items()):
        if k not in NON_STRUCTURAL_MODEL_FIELDS:
            facts[f"model.{k}"] = v
    weight = _lookup(config, "loss.contrastive.weight") or 0
    facts["projectors (loss.contrastive.weight > 0)"] = weight > 0
    facts["aux head (loss.aux_weight > 0)"] = (_lookup(config, "loss.aux_weight") or 0) > 0
    clip = _lookup(config, "optimizer.grad_clip_norm") or 0
    facts["gradient clipping (optimizer.grad_clip_norm > 0)"] = clip > 0
    return facts


def _lookup(d: Mapping, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def structural_differences(saved: Mapping, current: Mapping) -> list[str]:
    """The structural settings (see `_structural_facts`) that differ between two config dicts."""
    a, b = _structural_facts(saved), _structural_facts(current)
    diffs = []
    for field in sorted(set(a) | set(b)):
        if json.dumps(a.get(field), default=str) != json.dumps(b.get(field), default=str):
            diffs.append(f"{field}: {a.get(field)!r} in the workdir, {b.get(field)!r} now")
    return diffs


def field_differences(saved: Mapping, current: Mapping) -> list[str]:
    """Every field (structural or not) that differs between two config dicts."""
    a, b = _flat(saved), _flat(current)
    return [
        f"{field}: {a.get(field)!r} in the workdir, {b.get(field)!r} now"
        for field in sorted(set(a) | set(b))
        if json.dumps(a.get(field), default=str) != json.dumps(b.get(field), default=str)
    ]
