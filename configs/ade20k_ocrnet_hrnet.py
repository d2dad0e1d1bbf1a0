"""The paper's ADE20K recipe for OCRNet on HRNet-W48 (released `hrnetocr_contrastive_ADE20K.json`).

CE + 0.4 CE on the soft object regions + 0.1 x (MS + CS) on the four stage-4 branches; 512x512
crops, batch 16, SGD 0.02 momentum 0.9, weight decay 1e-4 on every parameter, poly 0.9 per
iteration, 151,560 iterations (120 epochs), seed 100, align_corners=True.
Validation: short side 512 (deviation: the reference validates at native size; see recipes.ade20k).
Arguments: contrastive=WEIGHT, pretrained=DIR (hrnetv2_w48_imagenet_pretrained.pth converted with
`python -m msc_seg.tools.import_weights --format=hrnet_official`).
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("ocrnet_hrnet", "ade20k", arg)
