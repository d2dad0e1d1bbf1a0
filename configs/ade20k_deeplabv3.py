"""DeepLabV3-ResNet-101 (OS8) on ADE20K with the CNN ADE20K recipe (no released config).

SGD 0.02, wd 1e-4, poly 0.9, 151,560 iterations, 512x512, batch 16 (the HRNet-OCR ADE20K
schedule, which the paper says it reuses); projectors on layer1 + layer4 (`:taps=3` adds layer3).
Arguments: taps=2|3, contrastive=WEIGHT, pretrained=DIR (torchvision/timm/HF ResNet-101 converted
with msc_seg.tools.import_weights).
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("deeplabv3", "ade20k", arg)
