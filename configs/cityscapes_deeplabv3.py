"""DeepLabV3-ResNet-101 (OS8) on Cityscapes (no released config, issue #5 of the reference).

The Cityscapes schedule of the released HRNet config (512x1024, batch 12, SGD 0.01, wd 5e-4,
poly 0.9, 484 epochs), class-weighted CE + 0.1 x (MS + CS) on layer1 + layer4 (`:taps=3` adds
layer3). A shorter schedule used by third-party reproductions: `--config.batch_size=8
--config.total_steps=40000`.
Arguments: taps=2|3, contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("deeplabv3", "cityscapes", arg)
