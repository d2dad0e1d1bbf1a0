"""OCRNet-HRNet-W48 on Cityscapes (no released config; "the OCRNet paper's schedule").

The official HRNet-OCR Cityscapes schedule, identical to the released HRNet one: 512x1024, batch 12,
SGD 0.01, wd 5e-4, poly 0.9, 484 epochs; class-weighted CE + 0.4 aux CE + 0.1 x (MS + CS).
Arguments: contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("ocrnet_hrnet", "cityscapes", arg)
