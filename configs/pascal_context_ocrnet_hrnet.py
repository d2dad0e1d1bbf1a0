"""OCRNet-HRNet-W48 on Pascal Context-59 (no released config).

HRNet-OCR's official PC-59 recipe: batch 16, SGD 1e-3, wd 1e-4, poly 0.9, 200 epochs, 512x512;
CE + 0.4 aux CE + 0.1 x (MS + CS).
Arguments: contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("ocrnet_hrnet", "pascal_context", arg)
