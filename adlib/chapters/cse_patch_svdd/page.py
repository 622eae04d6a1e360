"""C-SE on Patch SVDD (chapter 1): what the chapter's walk-through shows beside its study.

None of this makes a study row, so it lives outside :mod:`adlib.chapters.cse_patch_svdd.study` and
outside that study's code hash (:mod:`adlib.study.provenance`): a clearer figure stales nothing.
"""

from __future__ import annotations

import contextlib
import io

import matplotlib.pyplot as plt
import numpy as np

from adlib.book.viz import _draw_mask_outline, _hide_ticks, _image_extent
from adlib.chapters.cse_patch_svdd.bench import bench_patchsvdd_embed


def trained_vs_random_figure(trained, random_init, indices):
    """Test images (defect outlined) with the trained model's map and the random encoder's
    map of the same images; each model's maps share one colour scale (their distances live on
    different scales), so within a column hotter means more anomalous to that model."""
    fig, axes = plt.subplots(len(indices), 3, figsize=(7.2, 2.4 * len(indices)), squeeze=False)
    columns = [(trained, f"trained (image AUROC {100 * trained.metrics['image_auroc']:.1f})"),
               (random_init, f"random init ({100 * random_init.metrics['image_auroc']:.1f})")]
    for row, i in zip(axes, indices):
        image = trained.test[i]["image"].permute(1, 2, 0).numpy()
        row[0].imshow(np.clip(image, 0, 1))
        extent = _image_extent(image)
        _draw_mask_outline(row[0], trained.masks[i], extent)
        row[0].set_ylabel(trained.test[i]["defect_type"], fontsize=9)
        for ax, (result, name) in zip(row[1:], columns):
            lo, hi = np.percentile(result.maps[indices], [1, 99.5])
            ax.imshow(result.maps[i], cmap="inferno", vmin=lo, vmax=hi)
            _draw_mask_outline(ax, result.masks[i], extent)
            if i == indices[0]:
                ax.set_title(name, fontsize=9)
        if i == indices[0]:
            row[0].set_title("test image", fontsize=9)
        for ax in row:
            _hide_ticks(ax)
    fig.suptitle(f"{trained.category}: where the maps put the defects", fontsize=11)
    fig.tight_layout()
    return fig


def embedding_table(image_size: int, stride: int, seed: int = 0):
    """Dense K=32 embeddings of one random ``image_size`` image at this run's ``stride``, one
    pass vs patch by patch, for the four encoders of the chapter (random weights):
    :func:`~adlib.chapters.cse_patch_svdd.bench.bench_patchsvdd_embed` with its printed report
    kept quiet, as a table for the page."""
    variants = {"Patch SVDD": ("none", False), "+SE": ("se", False), "+C-SE": ("cse", False),
                "+C-SE+LBR": ("cse", True)}
    with contextlib.redirect_stdout(io.StringIO()):
        table = bench_patchsvdd_embed(image_size=image_size, n_images=1, seed=seed,
                                      grids=((32, stride),), variants=variants, sweep=False)
    table = table.reset_index(level="K", drop=True)
    columns = ["grid", "patch by patch [ms/image]", "one pass [ms/image]", "ratio", "max abs diff"]
    return table[columns].style.format(precision=1).format("{:.1e}", subset=["max abs diff"]).set_caption(
        f"Dense K=32 embeddings of one {image_size}-px image, stride {stride} (random weights)")
