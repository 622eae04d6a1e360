"""Figures legible in the book's column (adlib.book.figures)."""

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")

from adlib.training.curves import curve_figure  # noqa: E402
from adlib.book.figures import COLUMN_IN, MIN_PT, fit_column, smallest_shown_pt  # noqa: E402


def _curve_rows(configs=("Patch SVDD", "+SE", "+C-SE", "+C-SE+LBR")):
    rng = np.random.default_rng(0)
    rows = []
    for config in configs:
        for seed in range(2):
            auroc = list(50 + np.cumsum(rng.uniform(0, 3, 6)))
            rows.append({"ablation": "variant", "config": config, "seed": seed, "category": "coins",
                         "fold": None, "test_curve": {"epoch": list(range(6)), "image_auroc": auroc}})
    return pd.DataFrame(rows)


def test_a_row_of_four_curve_panels_is_shown_below_legibility_until_it_is_fitted():
    """The chapter 1 and 5 best-epoch figure: four 3.6-inch panels in one row are scaled to
    the column at 0.48, its 7 pt legends shown at 3.3 pt. Wrapped two by two and its small
    text raised, every text is shown at 8 pt or more, the figure no wider than 7.2 inches,
    and the panels keep their curves and a y label in each left column."""
    fig = curve_figure(_curve_rows())
    assert smallest_shown_pt(fig) < 4
    fitted = fit_column(fig, ncols=2)
    assert fitted is fig
    width, height = fig.get_size_inches()
    assert width <= 7.3 and height > 6
    assert smallest_shown_pt(fig) >= MIN_PT - 1e-9
    spec = [ax.get_subplotspec() for ax in fig.axes]
    assert sorted((s.rowspan.start, s.colspan.start) for s in spec) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(ax.lines) >= 2 for ax in fig.axes)
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_subplotspec().colspan.start == 0] == \
        ["test image auroc (%)"] * 2


def test_a_figure_that_fits_the_column_is_left_as_it_is():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(COLUMN_IN - 1, 3))
    ax.set_title("title", fontsize=9)
    ax.plot([0, 1], [0, 1])
    fit_column(fig)
    assert ax.title.get_fontsize() == 9 and tuple(fig.get_size_inches()) == (COLUMN_IN - 1, 3)
    plt.close(fig)


def test_the_fine_grain_figure_fits_the_column_with_its_pictures_readable():
    """Chapter 3's limitation figure (two experiments, five pictures and a bar chart each) was
    15 inches wide, its labels shown at 3-4 pt. Now it is drawn for the column: every text at
    8 pt or more as shown, and its pictures at least an inch wide."""
    import matplotlib.pyplot as plt
    import torch

    from adlib.chapters.noise_to_norm import page as walk

    def experiment():
        masks = np.zeros((2, 64, 64))
        masks[0, 20:30, 20:30] = 1
        return {"images": torch.rand(2, 3, 64, 64), "masks": masks, "grain_kept": 0.04,
                "reconstructions": torch.rand(2, 3, 64, 64),
                "maps": {k: np.random.default_rng(0).random((2, 64, 64)) for k in ("ours", "Eq. 7 + L1", "kNN")},
                "pixel_auroc": {k: 50.0 for k in walk.GRAIN_MAPS}}

    fig = walk.grain_figure({"grey": experiment(), "RGB": experiment()})
    fig.canvas.draw()
    assert fig.get_size_inches()[0] <= COLUMN_IN + 0.5
    assert smallest_shown_pt(fig) >= MIN_PT - 1e-9
    pictures = [ax for ax in fig.axes if ax.images]
    assert len(pictures) == 10
    assert min(ax.get_window_extent().width for ax in pictures) / fig.dpi >= 1.0
    plt.close(fig)
