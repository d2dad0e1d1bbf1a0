"""DeepLabV3-ResNet-101 (OS8) on Pascal Context-59 (the reference names an unreleased
`dlv3_contrastive_PC.json`).

The PC schedule of pascal_context_hrnet (batch 16, SGD 4e-3, wd 1e-4, poly 0.9, 62,400 iterations,
512x512); CE + 0.1 x (MS + CS) on layer1 + layer4.
Arguments: taps=2|3, contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("deeplabv3", "pascal_context", arg)
