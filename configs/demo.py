"""CPU-sized demo: a tiny UPerNet on the built-in procedurally generated dataset, CE + 0.4 aux CE +
0.1 x (MS + CS) contrastive, as the paper's recipe.

Trains in a few minutes on a 2-core CPU (val mIoU ~0.7 after 300-400 steps). The backbone is a tiny
ResNet (`resnet_tiny_test`, output stride 32): a tiny Swin trained from scratch learns the demo's
large classes as fast but its small ones (windows, pebbles, birds, holes) far more slowly, so it
does not fit a few-minute budget (`--config.model.backbone=swin_tiny_test` to try it).
    python -m msc_seg.main --config=configs/demo.py --workdir=runs/demo
Arguments (`--config=configs/demo.py:steps=200,contrastive=0`): steps, contrastive (the weight).
"""

from msc_seg import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(arg, steps=400, contrastive=0.1)
    c = config_lib.base_config()
    c.seed = 0
    c.batch_size = 8
    c.total_steps = args.steps
    c.log_every_steps = 25
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2

    c.dataset.name = "demo"
    c.dataset.train.crop_size = (128, 128)
    c.dataset.train.shuffle_buffer = 512
    c.dataset.train.scale_range = (0.75, 1.5)

    c.model.name = "upernet"
    c.model.backbone = "resnet_tiny_test"
    c.model.window_size = 4  # used by swin_* backbones only
    c.model.decoder_channels = 64
    c.model.aux_channels = 32
    c.model.drop_path_rate = 0.1
    c.model.embedding_dim = 64

    c.loss.contrastive.weight = args.contrastive
    c.loss.contrastive.images_per_group = 4
    c.loss.contrastive.max_total = 2000

    c.optimizer.name = "adamw"
    c.schedule.learning_rate = 4e-3
    c.optimizer.weight_decay = 0.01
    c.schedule.warmup_steps = 50
    c.schedule.poly_power = 1.0

    c.eval.batch_size = 16
    c.eval.data.pad_shape = (128, 128)
    c.eval.num_images_to_log = 4
    return c
