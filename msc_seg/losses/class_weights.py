"""Class weights for the cross-entropy from a split's class frequencies (`loss.class_weights` =
"inverse_freq", "median_freq" or "enet"; docs/DATASETS.md).

Notation, over the train split's labelled (non-ignore) pixels, for class c of K:

    n_c   pixels of class c                                  (SplitStats.class_pixels)
    N     sum_c n_c, the labelled pixels                      (ignore pixels are not counted)
    p_c   n_c / N, the class's pixel share
    m_c   labelled pixels of the images that hold class c     (SplitStats.class_image_pixels)

Schemes (each gives weight 0 to a class with n_c = 0: it never occurs as a target, so its weight
is never used, and 0 keeps it from entering any normalisation):

  inverse_freq   w_c = N / (K' n_c) = 1 / (K' p_c), K' = classes with n_c > 0. The "balanced"
                 weights of scikit-learn (`sklearn.utils.class_weight.compute_class_weight`,
                 King & Zeng 2001): each present class carries the same total weight, and the
                 pixel-weighted mean weight sum_c p_c w_c is 1.
  median_freq    w_c = median_k(f_k) / f_c with f_c = n_c / m_c, the median over the present
                 classes (Eigen & Fergus, ICCV 2015, "Predicting depth, surface normals and
                 semantic labels with a common multi-scale convolutional architecture";
                 SegNet's CamVid weights). f_c counts class c only in the images that hold it.
  enet           w_c = 1 / ln(1.02 + p_c) (Paszke et al. 2016, "ENet: a deep neural network
                 architecture for real-time semantic segmentation", with c = 1.02): bounded in
                 (1/ln 2.02, 1/ln 1.02] = (1.42, 50.5], so rare classes are not weighted without
                 limit.

The cross-entropy takes the weighted mean sum_i w[y_i] ce_i / sum_i w[y_i] (PyTorch semantics),
so a common scale of the weights does not change the loss.
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("inverse_freq", "median_freq", "enet")
ENET_C = 1.02


def class_weights(scheme: str, class_pixels, class_image_pixels=None) -> np.ndarray:
    """float64 [K] weights of `scheme` (see the module docstring) from int [K] counts.

    class_pixels: n_c; class_image_pixels: m_c (median_freq only). ValueError for an unknown
    scheme or a split without labelled pixels.
    """
    n = np.asarray(class_pixels, np.float64)
    present = n > 0
    if not present.any():
        raise ValueError("the split has no labelled pixel: class weights are undefined")
    w = np.zeros_like(n)
    if scheme == "inverse_freq":
        w[present] = n.sum() / (present.sum() * n[present])
    elif scheme == "median_freq":
        if class_image_pixels is None:
            raise ValueError("median_freq needs the labelled pixels of the images of each class")
        f = n[present] / np.asarray(class_image_pixels, np.float64)[present]
        w[present] = np.median(f) / f
    elif scheme == "enet":
        w[present] = 1.0 / np.log(ENET_C + n[present] / n.sum())
    else:
        raise ValueError(f"unknown class weight scheme {scheme!r}; use one of {SCHEMES}")
    return w
