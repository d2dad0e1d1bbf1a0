"""The paper's ADE20K recipe: UPerNet + Swin, CE + 0.4 aux CE + 0.1 x (MS + CS) contrastive.

spec/method.md section 12 (released config `upnswin_contrastive_ADE20K.json`):
512x512 crops, global batch 16 (4 images per reference GPU), AdamW 6e-5, weight decay 0.01 with no
decay on norms / position tables, 1500 linear warm-up steps from ratio 1e-6 then poly 1.0,
160k steps, aux CE weight 0.4, contrastive weight 0.1 on the four FPN outputs.

Data: tfds `scene_parse150` (label 0 -> ignore, k -> k-1).
Arguments: `--config=configs/ade20k_upernet.py:backbone=swin_s` (swin_t | swin_s | swin_b | swin_l).
"""

from msc_seg import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(arg, backbone="swin_t")
    c = config_lib.base_config()
    c.seed = 100
    c.batch_size = 16
    c.total_steps = 160_000
    c.log_every_steps = 50
    c.eval_every_steps = 16_000
    c.checkpoint_every_steps = 4_000

    c.dataset.name = "ade20k"
    c.dataset.crop_size = (512, 512)

    c.model.name = "upernet"
    c.model.backbone = args.backbone
    c.model.window_size = 7
    c.model.decoder_channels = 512
    c.model.aux_channels = 256
    c.model.drop_path_rate = 0.3
    c.model.projector_position = "fpn"
    c.model.embedding_dim = 256

    c.loss.aux_weight = 0.4
    c.loss.contrastive.weight = 0.1
    c.loss.contrastive.temperature = 0.1
    c.loss.contrastive.scale_weights = (1.0, 0.7, 0.4, 0.1)
    c.loss.contrastive.cross_scale = True
    c.loss.contrastive.images_per_group = 4

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 6e-5
    c.optimizer.weight_decay = 0.01
    c.optimizer.no_decay_patterns = (
        "absolute_pos_embed",
        "relative_position_bias_table",
        "^backbone/.*norm",
    )
    c.schedule.warmup_steps = 1500
    c.schedule.warmup_init_ratio = 1e-6
    c.schedule.poly_power = 1.0

    # mmseg/reference protocol: short side 512, no long-side cap in the reference; ADE20K images
    # have a long side of at most ~4x the short side after resizing, so pad to 512 x 2048.
    c.eval.batch_size = 8
    c.eval.resize_short_side = 512
    c.eval.pad_shape = (2048, 2048)
    return c
