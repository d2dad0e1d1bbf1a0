"""The demo-sized UPerNet (tiny ResNet backbone, from scratch) on CamVid (11 classes, 360x480).

CE + 0.4 aux CE, plus `contrastive` x (MS + CS) when the weight is > 0 (cross-scale on, 4 images per
contrastive group, at most 2000 anchors per group, as configs/demo.py). Sized for a CPU-only
comparison of CE against CE + MS + CS (benchmarks/camvid.py): short runs at a small crop, evaluated
at full resolution (every 360x480 image is padded to eval.pad_shape). Prepare the data first:
    python -m msc_seg.data.prepare --dataset=camvid --data_dir=DIR --root=/path/to/camvid
    python -m msc_seg.main --config=configs/camvid.py:contrastive=0 --workdir=runs/camvid_ce
Arguments (`--config=configs/camvid.py:steps=300,contrastive=0.1`): steps (total_steps; warmup,
checkpoint and eval cadence follow it) and contrastive (the weight of MS + CS; 0 = CE only).
The eval split is the registry's `val`; use `--config.eval.data.split=test` for test numbers.
"""

from msc_seg import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(arg, steps=300, contrastive=0.1)
    c = config_lib.base_config()
    c.seed = 0
    c.batch_size = 8
    c.total_steps = args.steps
    c.log_every_steps = 25
    # One evaluation (the one at the end of training) and a mid-run checkpoint: on a CPU an
    # evaluation of the split costs as much as tens of training steps.
    c.eval_every_steps = args.steps
    c.checkpoint_every_steps = max(1, args.steps // 2)
    c.keep_checkpoints = 2

    c.dataset.name = "camvid"
    # A fifth of the area of a 360x480 frame: more steps per CPU minute than full frames (the
    # measured choice of benchmarks/camvid.py); the scale range keeps train objects around their
    # test-time (native) size.
    c.dataset.train.crop_size = (160, 224)
    c.dataset.train.scale_range = (0.75, 1.5)
    c.dataset.train.shuffle_buffer = 400  # more than the 367 train images: a full shuffle

    c.model.name = "upernet"
    c.model.backbone = "resnet_tiny_test"
    c.model.window_size = 4  # used by swin_* backbones only
    c.model.decoder_channels = 64
    c.model.aux_channels = 32
    c.model.drop_path_rate = 0.1
    c.model.embedding_dim = 64

    c.loss.contrastive.weight = args.contrastive
    c.loss.contrastive.cross_scale = True
    c.loss.contrastive.images_per_group = 4
    c.loss.contrastive.max_total = 2000

    c.optimizer.name = "adamw"
    c.schedule.learning_rate = 4e-3
    c.optimizer.weight_decay = 0.01
    c.schedule.warmup_steps = min(50, args.steps // 10)
    c.schedule.poly_power = 1.0

    c.eval.batch_size = 8
    c.eval.data.pad_shape = (384, 480)  # 360x480 frames padded to a multiple of the stride 32
    c.eval.num_images_to_log = 4
    return c
