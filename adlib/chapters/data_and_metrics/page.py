"""Small constructed examples that show what each metric rewards and misses (chapter 0).

:func:`region_size_example` builds test maps where defects come in two sizes and two
detectors disagree: one outlines the large defects sharply but never sees the small ones,
the other finds every defect, coarsely. Pixel AUROC counts pixels, so the large defects
dominate it; AUPRO averages over defect *regions*, so every small defect counts as much as
a large one; image AUROC only sees each map's maximum.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def region_size_example(n_images: int = 24, size: int = 64, seed: int = 0):
    """Masks ``(N,H,W)`` and two detectors' maps for a large-vs-small-defect comparison.

    Half of the images hold one large square defect (24 px side), a quarter one small
    (4 px side), a quarter none. Returns ``(masks, labels, maps)`` where ``maps`` is
    ``{"sharp, misses small": ..., "coarse, finds all": ...}``, each ``(N,H,W)`` float32.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    kinds = np.array(["large"] * (n_images // 2) + ["small"] * (n_images // 4)
                     + ["none"] * (n_images - n_images // 2 - n_images // 4))
    for i, kind in enumerate(kinds):
        if kind == "none":
            continue
        side = 24 if kind == "large" else 4
        y, x = rng.integers(2, size - side - 2, size=2)
        masks[i, y:y + side, x:x + side] = True
    noise = rng.normal(0.0, 0.15, masks.shape).astype(np.float32)
    large = masks & (kinds == "large")[:, None, None]
    sharp = noise + 1.0 * large
    # The coarse detector lights up a blurred halo around every defect, small ones too.
    halo = ndi.gaussian_filter(masks.astype(np.float32), sigma=(0, 6, 6))
    halo /= halo.reshape(len(halo), -1).max(1).clip(1e-6)[:, None, None]
    coarse = noise + 0.9 * halo
    labels = (kinds != "none").astype(int)
    return masks, labels, {"sharp, misses small": sharp.astype(np.float32),
                           "coarse, finds all": coarse.astype(np.float32)}
