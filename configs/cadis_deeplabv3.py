"""DeepLabV3-ResNet-101 (OS8) on CaDIS, experiment 1, 2 or 3 (`:exp=`).

The CaDIS schedule of cadis_hrnet (not released; TO VERIFY), CE + 0.1 x (MS + CS) on layer1 +
layer4 (`:taps=3` adds layer3).
Arguments: exp=1|2|3, taps=2|3, contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("deeplabv3", "cadis", arg)
