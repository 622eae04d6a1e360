"""RLR (chapter 5): what the chapter's walk-through shows beside its study: figures and
tables of its rows.

None of this makes a study row, so it lives outside :mod:`adlib.chapters.rlr.study` and outside that
study's code hash (:mod:`adlib.study.provenance`): a clearer figure stales nothing.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import timm
import torch

from adlib.book.figures import fit_column
from adlib.chapters.rlr.model import VARIANTS, RLRConfig, build_rlr
from adlib.chapters.rlr.study import MODEL_KEYS
from adlib.nn import count_parameters
from adlib.nn.reference_attention import neighbourhood_mask, window_mask


def mask_figure(shapes: dict, settings: dict):
    """MLKA's and LCA's masks for one query token of the first reconstructed level."""
    stage = settings["stages"][0]
    _, h, w = shapes[stage]
    k = settings["windows"][stage - 1]
    token = (h // 2 - 1) * w + (w // 2)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    for ax, mask, name in zip(axes, (neighbourhood_mask(h, w, k), window_mask(h, w, k)),
                              (f"MLKA: neighbourhood {k}x{k} hidden", f"LCA: only the {k}x{k} window")):
        ax.imshow(mask[token].view(h, w).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.scatter([token % w], [token // w], marker="x", color="red")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"stage {stage}: {h}x{w} tokens, the red cross is the query token")
    return fit_column(fig)


def variant_parameters(shapes: dict, settings: dict):
    """Parameters of every Table-3 variant on this run's grids, and of the paper-size model
    (EfficientNet-b6 at 256 px, stages 1-3, hidden 128/256/512, 4 blocks; built without weights)."""
    config = RLRConfig(**{k: settings[k] for k in MODEL_KEYS})
    rows = [{"variant": v, "residual": VARIANTS[v][0], "branches": " + ".join(VARIANTS[v][1]),
             "params, this run": count_parameters(build_rlr(shapes, config, variant=v))}
            for v in VARIANTS]
    b6 = timm.create_model("tf_efficientnet_b6", features_only=True, pretrained=False, out_indices=(1, 2, 3))
    b6_shapes = {s: (c, 256 // r, 256 // r) for s, c, r in
                 zip((1, 2, 3), b6.feature_info.channels(), b6.feature_info.reduction())}
    paper = build_rlr(b6_shapes)  # RLRConfig's defaults are the paper's
    reference = sum(level.reference.numel() for level in paper.levels)
    return pd.DataFrame(rows).set_index("variant"), count_parameters(paper), reference


def reconstruction_figure(detector, train, result, index: int):
    """An anomalous image, its first-level features and their reconstruction as colours (a PCA
    fitted on the category's *training* features), and its anomaly map."""
    train_feats, _ = detector.reconstruct(train)
    level_in, level_out = (x[0][index:index + 1] for x in detector.reconstruct(result.test))
    c = level_in.shape[1]
    flat = train_feats[0].permute(0, 2, 3, 1).reshape(-1, c)
    mean = flat.mean(0)
    _, _, v = torch.pca_lowrank(flat - mean, q=3, center=False)
    projected = (flat - mean) @ v
    lo, hi = projected.quantile(0.01, 0), projected.quantile(0.99, 0)  # colours of normal features

    def to_rgb(f):
        x = (f[0].permute(1, 2, 0).reshape(-1, c) - mean) @ v
        return ((x - lo) / (hi - lo)).clamp(0, 1).reshape(f.shape[2], f.shape[3], 3).numpy()

    fig, axes = plt.subplots(2, 2, figsize=(6.9, 7.0))
    panels = [(result.test[index]["image"].permute(1, 2, 0).numpy(), "image"),
              (to_rgb(level_in), "input features (PCA)"), (to_rgb(level_out), "reconstruction (PCA)"),
              (result.maps[index], "anomaly map")]
    for ax, (img, name) in zip(axes.flat, panels):
        ax.imshow(img)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    spread = [float(((f[0].permute(1, 2, 0).reshape(-1, c) - mean) @ v).std(0).mean())
              for f in (level_in, level_out)]
    fig.suptitle(f"{result.category}: {result.test[index]['defect_type']}. The reconstruction's\n"
                 f"spread across tokens is {100 * spread[1] / spread[0]:.0f} % of the input's\n"
                 "(colours: the normal training features' range)")
    fig.tight_layout()
    return fit_column(fig)
