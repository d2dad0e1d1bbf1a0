"""The paper's training recipes as reusable config blocks (docs/METHOD.md lists them).

Every file in `configs/` is `paper_config(model, dataset, arg)` plus its own docstring: one model
block (`MODELS`), one dataset block (`DATASETS`) and the contrastive block, so that a recipe is
written once and reads the same in every config that uses it.

Released by the authors (exact): HRNet-W48 / Cityscapes, OCRNet-HRNet-W48 / ADE20K,
UPerNet-Swin-T / ADE20K. Not released (the paper's Table 9 has their numbers only): DeepLabV3
anywhere, OCRNet / Cityscapes (the author: "the same training schedule from the OCRNet paper"),
every Pascal Context and CaDIS recipe. For those the blocks below follow the closest official
recipe (HRNet / HRNet-OCR official configs, which the released ones reproduce) and say so.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from msc_seg import config_lib

# HRNet's official Cityscapes CE class weights; the reference applies them to every CE term
# whenever the dataset is Cityscapes.
CITYSCAPES_CLASS_WEIGHTS = (
    0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
    0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507,
)  # fmt: skip

PAPER_SCALE_WEIGHTS = (1.0, 0.7, 0.4, 0.1)  # s4, s8, s16, s32 (the paper's scale weights)


def _sgd_poly(
    c: ml_collections.ConfigDict,
    *,
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    batch_size: int,
    poly_power: float = 0.9,
) -> None:
    """SGD momentum 0.9, poly decay per iteration, no warm-up, decay on every parameter.

    The reference decays everything (BN scales and biases included): no_decay_patterns = ().
    """
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.optimizer.name = "sgd"
    c.schedule.learning_rate = learning_rate
    c.optimizer.weight_decay = weight_decay
    c.optimizer.momentum = 0.9
    c.optimizer.no_decay_patterns = ()
    c.schedule.warmup_steps = 0
    c.schedule.poly_power = poly_power
    c.schedule.end_learning_rate = 0.0


def _contrastive(c: ml_collections.ConfigDict, scale_weights, images_per_group: int) -> None:
    """0.1 x (multi-scale + cross-scale), sampling caps of the released configs."""
    cc = c.loss.contrastive
    cc.weight = 0.1
    cc.temperature = 0.1
    cc.scale_weights = tuple(scale_weights)
    cc.cross_scale = True
    cc.w_high_low = 1.0
    cc.w_high_mid = 1.0
    cc.min_views = 5
    cc.max_views = 2500
    cc.max_total = 10_000
    cc.images_per_group = images_per_group


# ------------------------------------------------------------------------------------------------
# Models. Each sets the `model` section (the segmentor's arguments), loss.aux_weight and the
# contrastive scale weights.

_COMMON_MODEL_ARGS = dict(embedding_dim=256, dtype="float32")


def hrnet_w48(c: ml_collections.ConfigDict, args) -> None:
    """HRNet-W48 + concat head; projectors on the 4 stage-4 branches; CE only (no aux head)."""
    c.model = ml_collections.ConfigDict(
        dict(name="hrnet", backbone="hrnet_w48", align_corners=True, **_COMMON_MODEL_ARGS)
    )
    c.loss.aux_weight = 0.0
    c.loss.contrastive.scale_weights = PAPER_SCALE_WEIGHTS


def ocrnet_hrnet_w48(c: ml_collections.ConfigDict, args) -> None:
    """OCRNet on HRNet-W48; CE + 0.4 CE on the soft object regions; OCR dropout 0."""
    c.model = ml_collections.ConfigDict(
        dict(
            name="ocrnet",
            backbone="hrnet_w48",
            align_corners=True,
            dropout=0.0,
            ocr_channels=512,
            key_channels=256,
            **_COMMON_MODEL_ARGS,
        )
    )
    c.loss.aux_weight = 0.4
    c.loss.contrastive.scale_weights = PAPER_SCALE_WEIGHTS


def deeplabv3_resnet101(c: ml_collections.ConfigDict, args) -> None:
    """DeepLabV3-ResNet-101 at output stride 8, ASPP 12/24/36; taps layer1 + layer4 (S = 2).

    `:taps=3` uses the reference's 3-scale option layer1 + layer3 + layer4. Scale weights are the
    reference code's default for an unconfigured DeepLabV3 (1.0 per scale).
    """
    c.model = ml_collections.ConfigDict(
        dict(
            name="deeplabv3",
            backbone="resnet101",
            output_stride=8,
            aspp_channels=256,
            aspp_dilations=(),  # () = by output stride: 12/24/36 at OS8
            align_corners=True,
            taps=("layer1", "layer3", "layer4") if args.taps == 3 else ("layer1", "layer4"),
            **_COMMON_MODEL_ARGS,
        )
    )
    c.loss.aux_weight = 0.0
    c.loss.contrastive.scale_weights = (1.0,) * len(c.model.taps)


# UPerNet's auxiliary FCN head: the authors' released config reads Swin stage 3 with a biased
# 3x3 conv (62,404,838 training parameters for Swin-T at 150 classes); mmseg / HF read stage 2
# without a bias (61,519,846).
UPERNET_AUX_HEADS = {
    "released": dict(aux_in_index=3, aux_conv_bias=True),
    "mmseg": dict(aux_in_index=2, aux_conv_bias=False),
}


def upernet_swin(c: ml_collections.ConfigDict, args) -> None:
    """UPerNet + Swin (args.backbone): decoder 512, aux FCN 256 (x0.4) on the `args.aux` variant
    (default: the released one), drop path 0.3, FPN taps."""
    if args.aux not in UPERNET_AUX_HEADS:
        raise config_lib.ConfigError(
            f"config argument aux={args.aux!r}: one of {sorted(UPERNET_AUX_HEADS)} "
            "(released: the authors' stage-3 aux head with bias; mmseg: stage 2, no bias)"
        )
    c.model = config_lib.upernet_model(
        backbone=args.backbone,
        window_size=7,
        decoder_channels=512,
        aux_channels=256,
        dropout=0.1,
        drop_path_rate=0.3,
        align_corners=False,
        projector_position="fpn",
        **UPERNET_AUX_HEADS[args.aux],
        **_COMMON_MODEL_ARGS,
    )
    c.loss.aux_weight = 0.4
    c.loss.contrastive.scale_weights = PAPER_SCALE_WEIGHTS
    # XLA's buffer plan of the 512x512 batch-2 step is smaller with the memory-optimised
    # scheduler for Swin-T (3.85 -> 3.75 GiB) but larger for Swin-S/B/L (5.02/6.38/9.57 ->
    # 5.09/6.57/9.98): benchmarks/README.md, "Scheduler".
    c.xla_cpu_scheduler = "auto" if args.backbone == "swin_t" else "concurrency"
    # XLA:CPU's elemental emitters leave Swin-T's compiled step 0.11-0.16 GiB smaller (its peak
    # against PyTorch's 1.02 -> 0.99-1.00); its compile measured 40.5-64.8 s with them on one
    # kind of machine on different days, 44 s with the fusion emitters ("Emitters", models.py).
    c.xla_cpu_emitters = "elemental" if args.backbone == "swin_t" else "auto"


MODELS: dict[str, Callable] = {
    "hrnet": hrnet_w48,
    "ocrnet_hrnet": ocrnet_hrnet_w48,
    "deeplabv3": deeplabv3_resnet101,
    "upernet": upernet_swin,
}

# ------------------------------------------------------------------------------------------------
# Datasets x optimisation. Each sets dataset.*, the schedule, the batch, eval.* and the seed.


def cityscapes(c: ml_collections.ConfigDict, args) -> None:
    """Released HRNet-W48 Cityscapes recipe: 512x1024 crops, batch 12 (3 per reference GPU),
    SGD 0.01, wd 5e-4, poly 0.9, 484 epochs = 484 x 248 iterations, class-weighted CE; validation
    at full 1024x2048 resolution."""
    c.seed = 0
    c.dataset.name = "cityscapes"
    c.dataset.train.crop_size = (512, 1024)
    _sgd_poly(c, learning_rate=0.01, weight_decay=5e-4, total_steps=484 * 248, batch_size=12)
    c.loss.class_weights = CITYSCAPES_CLASS_WEIGHTS
    c.loss.contrastive.images_per_group = 3
    c.eval.batch_size = 4
    c.eval.data.pad_shape = (1024, 2048)
    c.eval.data.resize_short_side = 0


def ade20k(c: ml_collections.ConfigDict, args) -> None:
    """Released HRNet-OCR ADE20K recipe (CNNs): 512x512, batch 16, SGD 0.02, wd 1e-4, poly 0.9,
    120 epochs = 151,560 iterations. Validation: short side 512 (the reference validates HRNet-OCR
    at native size, which needs a 2048x2048 canvas per image at HRNet-W48 memory cost)."""
    c.seed = 100
    c.dataset.name = "ade20k"
    c.dataset.train.crop_size = (512, 512)
    _sgd_poly(c, learning_rate=0.02, weight_decay=1e-4, total_steps=151_560, batch_size=16)
    c.loss.contrastive.images_per_group = 4
    c.eval.batch_size = 8
    c.eval.data.resize_short_side = 512
    c.eval.data.pad_shape = (2048, 2048)


def ade20k_swin(c: ml_collections.ConfigDict, args) -> None:
    """Released UPerNet-Swin ADE20K recipe: 512x512, batch 16, AdamW 6e-5 (0.9, 0.999), wd 0.01
    without decay on position tables and backbone norms, 1500 warm-up iterations from 1e-6 then
    poly 1.0, 160,401 iterations (127 epochs); validation short side 512, padded to 32."""
    c.seed = 100
    c.dataset.name = "ade20k"
    c.dataset.train.crop_size = (512, 512)
    c.batch_size = 16
    c.total_steps = 160_401
    c.optimizer.name = "adamw"
    c.schedule.learning_rate = 6e-5
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
    c.optimizer.no_decay_patterns = (
        "absolute_pos_embed",
        "relative_position_bias_table",
        "^backbone/.*norm",
    )
    c.schedule.warmup_steps = 1500
    c.schedule.warmup_init_ratio = 1e-6
    c.schedule.poly_power = 1.0
    c.loss.contrastive.images_per_group = 4
    c.eval.batch_size = 8
    c.eval.data.resize_short_side = 512
    c.eval.data.pad_shape = (2048, 2048)


def pascal_context(c: ml_collections.ConfigDict, args) -> None:
    """HRNet's official Pascal Context-59 recipe (the reference's PC HRNet run is '200 epochs'):
    batch 16, SGD, wd 1e-4, poly 0.9, 200 epochs = 200 x 312 iterations; lr 4e-3 (HRNet) or 1e-3
    (HRNet-OCR official). Crops 512x512 (official 520x520; crops here are multiples of 32).
    Validation at native size (PC images are at most 500x500)."""
    c.seed = 0
    c.dataset.name = "pascal_context"
    c.dataset.train.crop_size = (512, 512)
    lr = 1e-3 if c.model.name == "ocrnet" else 4e-3
    _sgd_poly(c, learning_rate=lr, weight_decay=1e-4, total_steps=200 * 312, batch_size=16)
    c.loss.contrastive.images_per_group = 4
    c.eval.batch_size = 8
    c.eval.data.pad_shape = (512, 512)
    c.eval.data.resize_short_side = 0


def cadis(c: ml_collections.ConfigDict, args) -> None:
    """CaDIS experiment `args.exp` (1, 2 or 3; 8 / 17 / 25 classes), paper video split (train 19
    videos, validation 5/7/16). No recipe was released: SGD 0.01, wd 5e-4, poly 0.9, batch 8,
    40k iterations, 512x512 crops of the 540x960 frames; validation at native size. TO VERIFY
    against the paper's Table 9."""
    if args.exp not in (1, 2, 3):
        raise config_lib.ConfigError(
            f"config argument exp={args.exp!r}: CaDIS experiments are 1, 2 or 3 "
            "(e.g. --config=configs/cadis_hrnet.py:exp=2)"
        )
    c.seed = 0
    c.dataset.name = f"cadis_exp{args.exp}"
    c.dataset.train.crop_size = (512, 512)
    _sgd_poly(c, learning_rate=0.01, weight_decay=5e-4, total_steps=40_000, batch_size=8)
    c.loss.contrastive.images_per_group = 4
    c.eval.batch_size = 8
    c.eval.data.pad_shape = (544, 960)
    c.eval.data.resize_short_side = 0


DATASETS: dict[str, Callable] = {
    "cityscapes": cityscapes,
    "ade20k": ade20k,
    "ade20k_swin": ade20k_swin,
    "pascal_context": pascal_context,
    "cadis": cadis,
}

# Arguments every paper config accepts (`--config=configs/FILE.py:key=value,...`).
DEFAULT_ARGS = dict(
    backbone="swin_t",  # UPerNet only: swin_t | swin_s | swin_b | swin_l
    aux="released",  # UPerNet only: released (stage 3, biased conv) | mmseg (stage 2, no bias)
    taps=2,  # DeepLabV3 only: 2 (layer1+layer4) or 3 (layer1+layer3+layer4)
    exp=1,  # CaDIS only: experiment 1, 2 or 3
    contrastive=0.1,  # weight of the contrastive term; 0 = the CE baseline
    pretrained="",  # directory written by msc_seg.tools.import_weights (ImageNet weights)
)


# Arguments that only mean something for some models / datasets: giving one elsewhere is an error
# (a silently ignored `:exp=2` on a Cityscapes config would run the wrong experiment unnoticed).
_ARG_USED_BY = {
    "backbone": ("upernet",),
    "aux": ("upernet",),
    "taps": ("deeplabv3",),
    "exp": ("cadis",),
}


def _check_args_apply(model: str, dataset: str, arg: str | None) -> None:
    given = [item.split("=", 1)[0] for item in filter(None, (arg or "").split(","))]
    for key in given:
        users = _ARG_USED_BY.get(key)
        if users is not None and model not in users and dataset not in users:
            raise config_lib.ConfigError(
                f"config argument {key!r} does not apply to this config ({model} on {dataset}); "
                f"it is for {', '.join(users)} configs only"
            )


def paper_config(model: str, dataset: str, arg: str | None) -> ml_collections.ConfigDict:
    """base_config() + the model block + the dataset block + the contrastive block.

    model: a key of MODELS; dataset: a key of DATASETS; arg: the `:key=value,...` of --config.
    The dataset block runs after the model block, so it may depend on the model (e.g. Pascal
    Context's learning rate); the contrastive weight is applied last.
    """
    args = config_lib.parse_arg(arg, **DEFAULT_ARGS)
    _check_args_apply(model, dataset, arg)
    c = config_lib.base_config()
    c.log_every_steps = 50
    c.checkpoint_every_steps = 4_000
    _contrastive(c, PAPER_SCALE_WEIGHTS, images_per_group=4)
    MODELS[model](c, args)
    DATASETS[dataset](c, args)
    c.eval_every_steps = max(c.total_steps // 10, 1)
    c.loss.contrastive.weight = float(args.contrastive)
    c.model_init = args.pretrained
    return c
