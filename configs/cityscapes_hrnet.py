"""The paper's Cityscapes recipe for HRNet-W48 (released `hrnet_contrastive_CTS.json`).

Class-weighted CE (HRNet's official weights) + 0.1 x (MS + CS) on the four stage-4 branches;
512x1024 crops, batch 12 (3 per reference GPU = one contrastive group), SGD 0.01 momentum 0.9,
weight decay 5e-4 on every parameter (the code default; the paper's Table 9 reportedly says 5e-5:
`--config.optimizer.weight_decay=5e-5`), poly 0.9, 484 epochs = 120,032 iterations, seed 0.
ImageNet init is required (the released config's `pretrained: false` is a bug, per the author).
Validation: full 1024x2048 single scale.
Arguments: contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("hrnet", "cityscapes", arg)
