"""HRNet-W48 on CaDIS (cataract surgery), experiment 1, 2 or 3 (`:exp=`; 8 / 17 / 25 classes).

No CaDIS recipe was released (docs/METHOD.md §11.4): SGD 0.01, wd 5e-4, poly 0.9, batch 8, 40k
iterations, 512x512 crops, paper video split (validation videos 5, 7, 16). Experiment 1 has no
ignore class: the reference's sampler never samples its last class ("Instrument"), a bug this
implementation does not reproduce (every class can be sampled).
Arguments: exp=1|2|3, contrastive=WEIGHT, pretrained=DIR.
"""

from msc_seg import recipes


def get_config(arg=None):
    return recipes.paper_config("hrnet", "cadis", arg)
