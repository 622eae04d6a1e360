"""adlib.book.viz: every plot returns a Figure with the panels, lines and titles it promises.

Set ADLIB_VIZ_EXAMPLES=/some/dir to also keep the PNGs for a look by eye.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # tests only: the package itself never picks a backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from adlib.book import viz  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _save(fig: Figure, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.stat().st_size > 5_000  # a real raster, not an empty canvas
    examples = os.environ.get("ADLIB_VIZ_EXAMPLES")
    if examples:
        Path(examples).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(examples) / f"{name}.png")
    return path


def _samples(n: int = 3, size: int = 48):
    """n (image 3xHxW tensor, mask HxW tensor, map hxw numpy at a quarter resolution)."""
    rng = np.random.default_rng(0)
    images, masks, maps = [], [], []
    for i in range(n):
        image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(i))
        mask = torch.zeros(size, size)
        if i % 2 == 0:
            mask[10:30, 12:28] = 1.0
        amap = rng.normal(0.0, 0.2, (size // 4, size // 4))
        amap[2:8, 3:7] += 2.0 * (i % 2 == 0)
        images.append(image), masks.append(mask), maps.append(amap)
    return images, masks, maps


def test_style_is_applied_on_import_and_sets_no_backend():
    viz.set_style()
    assert matplotlib.rcParams["axes.grid"] is True
    assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0] == viz.PALETTE[0]
    assert matplotlib.get_backend().lower() == "agg"


def test_heatmap_grid_has_four_panels_per_sample(tmp_path):
    images, masks, maps = _samples(3)
    fig = viz.heatmap_grid(images, masks, maps, titles=["a", "b", "c"], colorbar=False)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "image", "ground truth", "anomaly map", "overlay"]
    assert [fig.axes[4 * i].get_ylabel() for i in range(3)] == ["a", "b", "c"]
    assert fig.get_suptitle() == "Anomaly maps"
    # the overlay carries the mask outline only where a mask has a defect
    assert len(fig.axes[3].collections) == 1
    assert len(fig.axes[7].collections) == 0
    # all maps share one colour scale
    limits = {fig.axes[4 * i + 2].images[0].get_clim() for i in range(3)}
    assert len(limits) == 1
    _save(fig, tmp_path, "heatmap_grid_nocbar")


def test_heatmap_grid_n_colorbar_batched_numpy_and_no_masks(tmp_path):
    images, masks, maps = _samples(4)
    batch = torch.stack(images)  # N x 3 x H x W tensor
    fig = viz.heatmap_grid(batch, torch.stack(masks), np.stack(maps), n=2, vmax=1.0)
    assert len(fig.axes) == 2 * 4 + 1  # + the shared colour bar
    assert fig.axes[2].images[0].get_clim()[1] == 1.0
    _save(fig, tmp_path, "heatmap_grid")
    fig = viz.heatmap_grid(images[:1], None, maps[:1], colorbar=False)
    assert len(fig.axes) == 4


def test_heatmap_grid_rejects_mismatched_lengths():
    images, masks, maps = _samples(3)
    with pytest.raises(ValueError, match="as many masks and maps"):
        viz.heatmap_grid(images, masks, maps[:2])


def test_roc_curves_one_line_per_curve_plus_diagonal(tmp_path):
    fpr = np.linspace(0, 1, 50)
    curves = {"ours": (fpr, np.sqrt(fpr), 0.667), "baseline": (fpr, fpr**0.8, None)}
    fig = viz.roc_curves(curves, title="Image-level ROC")
    ax = fig.axes[0]
    assert len(ax.lines) == len(curves) + 1
    assert ax.get_title() == "Image-level ROC"
    assert ax.get_xlabel() and ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "ours (AUC = 0.667)"
    # auc=None: the trapezoid area under the given points, as scikit-learn computes it
    from sklearn.metrics import auc

    assert legend[1] == f"baseline (AUC = {auc(fpr, fpr**0.8):.3f})"
    assert legend[2] == "chance"
    _save(fig, tmp_path, "roc_curves")


def test_roc_curves_draws_into_a_given_axis():
    fig, (left, right) = plt.subplots(1, 2)
    out = viz.roc_curves({"x": ([0, 0.5, 1], [0, 0.9, 1], 0.7)}, ax=right)
    assert out is fig
    assert len(right.lines) == 2 and len(left.lines) == 0


def _ablation_frame(seeds: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [{"attention": cfg, "seed": s, "image_auroc": base + rng.normal(0, 0.5)}
            for cfg, base in (("none", 80.0), ("SE", 78.0), ("C-SE", 85.0))
            for s in range(seeds)]
    return pd.DataFrame(rows)


def test_ablation_bars_means_errors_and_paper_bars(tmp_path):
    df = _ablation_frame()
    paper = {"none": 90.0, "SE": 88.5, "C-SE": 93.7}
    fig = viz.ablation_bars(df, "attention", "image_auroc", paper_values=paper,
                            title="C-SE ablation",
                            ours_label="ours (embedded default, cpu profile)")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 6  # 3 ours + 3 paper
    means = df.groupby("attention", sort=False)["image_auroc"].mean()
    np.testing.assert_allclose(heights[:3], means.to_numpy())
    np.testing.assert_allclose(heights[3:], list(paper.values()))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "SE", "C-SE"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["ours (embedded default, cpu profile)", "paper"]
    assert ax.get_title() == "C-SE ablation"
    assert "3 seeds" in ax.get_ylabel()
    # one error bar per ours bar; its half-length is the sample std over seeds
    segments = ax.collections[0].get_segments()
    stds = df.groupby("attention", sort=False)["image_auroc"].std(ddof=1).to_numpy()
    np.testing.assert_allclose([abs(s[1, 1] - s[0, 1]) / 2 for s in segments], stds)
    _save(fig, tmp_path, "ablation_bars")


def test_ablation_bars_with_hue_and_paper_markers(tmp_path):
    df = pd.concat([_ablation_frame().assign(category=c) for c in ("bottle", "cable")])
    fig = viz.ablation_bars(df, "category", "image_auroc", hue="attention", err="sem",
                            paper_values={("bottle", "C-SE"): 95.0, ("cable", "C-SE"): 90.0})
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 3
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["none", "SE", "C-SE", "paper"]
    assert "s.e.m." in ax.get_ylabel()
    _save(fig, tmp_path, "ablation_bars_hue")


def test_ablation_bars_unknown_column():
    with pytest.raises(KeyError, match="pixel_auroc"):
        viz.ablation_bars(_ablation_frame(), "attention", "pixel_auroc")


def test_loss_curves_one_line_per_run(tmp_path):
    epochs = np.arange(1, 31)
    histories = {
        "with LBR": pd.DataFrame({"epoch": epochs, "train_loss": 1.0 / epochs}),
        "without LBR": pd.DataFrame({"epoch": epochs, "train_loss": 1.5 / np.sqrt(epochs)}),
    }
    fig = viz.loss_curves(histories, logy=True, title="Loss with and without LBR")
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "epoch" and "train_loss" in ax.get_ylabel()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 1.0 / epochs)
    _save(fig, tmp_path, "loss_curves")
    with pytest.raises(KeyError, match="val_loss"):
        viz.loss_curves(histories, y="val_loss")


def test_loss_curves_several_columns():
    history = pd.DataFrame({"train_loss": [3.0, 2.0, 1.0], "val_loss": [3.5, 2.5, 2.0]})
    fig = viz.loss_curves({"run": history}, y=["train_loss", "val_loss"])
    assert len(fig.axes[0].lines) == 2


def test_sample_grid_one_axis_per_item(tmp_path):
    images, masks, _ = _samples(5)
    items = [{"image": im, "mask": m, "label": int(m.max() > 0),
              "defect_type": "scratch" if m.max() > 0 else "good", "path": f"{i}.png"}
             for i, (im, m) in enumerate(zip(images, masks))]
    fig = viz.sample_grid(items, ncols=3, title="Embedded default: bottle")
    assert len(fig.axes) == 5  # the sixth, empty cell is removed
    assert [ax.get_title() for ax in fig.axes] == ["scratch", "good", "scratch", "good",
                                                   "scratch"]
    assert fig.get_suptitle() == "Embedded default: bottle"
    _save(fig, tmp_path, "sample_grid")


def test_paper_vs_ours_from_claim_rows(tmp_path):
    rows = [
        {"claim": "rlr #1", "paper_value": 98.6, "ours_mean": 98.2, "verdict": "reproduced",
         "dataset": "mvtec_ad"},
        {"claim": "maae #1", "paper_value": 97.2, "ours_mean": 80.5, "verdict": "contradicted",
         "dataset": "mvtec_ad"},
        {"claim": "noise_to_norm #1", "paper_value": 94.94, "ours_mean": 90.5,
         "verdict": "not comparable here", "dataset": "embedded"},
        {"claim": "cse_patch_svdd #3", "paper_value": float("nan"), "ours_mean": float("nan"),
         "verdict": "inconclusive", "dataset": "embedded"},
    ]
    fig = viz.paper_vs_ours(rows, title="Claims")
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == 3  # the order claim has no paper number to draw
    assert ax.get_title() == "Claims"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["paper", "ours: reproduced", "ours: contradicted",
                      "ours: not comparable here"]
    _save(fig, tmp_path, "paper_vs_ours")
    with pytest.raises(KeyError, match="paper_value"):
        viz.paper_vs_ours(pd.DataFrame({"claim": ["x"]}))
