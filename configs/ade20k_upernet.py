"""The paper's ADE20K recipe: UPerNet + Swin, CE + 0.4 aux CE + 0.1 x (MS + CS) contrastive.

Released config `upnswin_contrastive_ADE20K.json` (docs/METHOD.md §11.1): 512x512 crops, global
batch 16 (4 images per reference GPU = one contrastive group), AdamW 6e-5, weight decay 0.01 with no
decay on norms / position tables, 1500 linear warm-up steps from ratio 1e-6 then poly 1.0,
160,401 steps, aux CE weight 0.4 on the released aux head (FCN on Swin stage 3, biased 3x3 conv:
62,404,838 training parameters for Swin-T, as the reference), contrastive weight 0.1 on the four
FPN outputs. Validation: short side 512, padded to the stride, logits resized back to the label.

Data: `ade20k` (ADEChallengeData2016 folder; label 0 -> ignore, k -> k-1), see docs/DATASETS.md.
Arguments: backbone=swin_t|swin_s|swin_b|swin_l, aux=released|mmseg (mmseg / HF: the aux head on
stage 2 without the conv bias, 61,519,846 parameters), contrastive=WEIGHT (0 = CE baseline),
pretrained=DIR (official Swin ImageNet weights converted by msc_seg.tools.import_weights).
    python -m msc_seg.main --config=configs/ade20k_upernet.py:backbone=swin_s --workdir=runs/x
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("upernet", "ade20k_swin", arg)
