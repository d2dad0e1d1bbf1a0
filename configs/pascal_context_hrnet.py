"""HRNet-W48 on Pascal Context-59 (no released config; the reference's run is "200 epochs").

HRNet's official PC-59 recipe: batch 16, SGD 4e-3, wd 1e-4, poly 0.9, 200 epochs = 62,400
iterations, 512x512 crops (official 520x520); CE + 0.1 x (MS + CS).
Arguments: contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("hrnet", "pascal_context", arg)
