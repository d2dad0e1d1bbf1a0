"""OCRNet-HRNet-W48 on CaDIS, experiment 1, 2 or 3 (`:exp=`).

The CaDIS schedule of cadis_hrnet (not released; TO VERIFY), CE + 0.4 aux CE + 0.1 x (MS + CS).
Arguments: exp=1|2|3, contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("ocrnet_hrnet", "cadis", arg)
