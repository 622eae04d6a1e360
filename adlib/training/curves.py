"""The test split scored after every epoch: what picking the epoch on the test set is worth.

The official code of Patch SVDD scores the test set after every epoch and keeps the best, and
RLR's keeps the best image and the best pixel AUROC of any epoch (possibly two epochs). Our
numbers are always the last epoch's; the curves here only *report* how much that selection
would add. A model is trained one epoch at a time from its checkpoint (a resumed run is the
same run: :func:`adlib.training.train.fit` restores weights, optimiser and every RNG), scored on the
test split after each, and the last epoch's scores are exactly those of an uninterrupted run.

    results, curves = separate_curves(make_model, set_epochs, "mvtec_ad", root, cats, 96, epochs=20)
    rows = curve_rows(results, curves)          # the study engine's rows + "test_curve"
    best_minus_last(frame)                       # per config: mean best - last, 95 % interval
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from adlib.analysis.metrics import bootstrap_interval
from adlib.data.sources import open_split
from adlib.training.evaluation import CategoryResult, _score, study_results
from adlib.training.progress import progress

#: Metrics a curve keeps per epoch (AUROC in %, as the study rows).
CURVE_METRICS = ("image_auroc", "pixel_auroc")
SetEpochs = Callable[[Any, int, str], None]


def train_with_test_curve(detector: Any, train: Any, tests: Mapping[str, Any], *, epochs: int,
                          set_epochs: SetEpochs, n_train: Mapping[str, int] | None = None,
                          ) -> tuple[list[CategoryResult], dict[str, dict[str, list]]]:
    """Train ``detector`` for ``epochs`` epochs, one at a time, scoring every test split after
    each (epoch 0 = the untrained model, shown but never a candidate for "best").

    ``set_epochs(detector, e, checkpoint_dir)`` makes the next ``detector.fit(train)`` train
    up to epoch ``e``, resuming from ``checkpoint_dir``. Returns the last epoch's results
    (one per test split, as :func:`adlib.training.evaluation.evaluate_categories` gives them) and
    ``{category: {"epoch": [...], "image_auroc": [...], "pixel_auroc": [...]}}``.
    """
    curves = {c: {"epoch": [], **{m: [] for m in CURVE_METRICS}} for c in tests}
    fit_seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="adlib-curve-") as folder:
        for epoch in range(epochs + 1):
            set_epochs(detector, epoch, folder)
            start = time.perf_counter()
            detector.fit(train)
            fit_seconds += time.perf_counter() - start
            share = fit_seconds / len(tests)
            results = []
            for category, test in tests.items():
                t0 = time.perf_counter()
                result = _score(detector, test, category, share, (n_train or {}).get(category, 0),
                                t0, share)
                results.append(result)
                curves[category]["epoch"].append(epoch)
                for m in CURVE_METRICS:
                    curves[category][m].append(100.0 * result.metrics.get(m, np.nan))
    return results, curves


def separate_curves(make_model: Callable[[], Any], set_epochs: SetEpochs, dataset: str, root,
                    categories: Sequence[str], image_size: int, *, epochs: int,
                    show_progress: bool = False) -> tuple[list[CategoryResult], dict]:
    """:func:`train_with_test_curve` for one model per category."""
    results, curves = [], {}
    for category in progress(categories, desc="categories", disable=not show_progress):
        train = open_split(dataset, root, category, "train", image_size)
        test = open_split(dataset, root, category, "test", image_size)
        last, curve = train_with_test_curve(make_model(), train, {category: test}, epochs=epochs,
                                            set_epochs=set_epochs, n_train={category: len(train)})
        results += last
        curves.update(curve)
    return results, curves


def unified_curves(detector: Any, set_epochs: SetEpochs, dataset: str, root,
                   categories: Sequence[str], image_size: int, *, epochs: int
                   ) -> tuple[list[CategoryResult], dict]:
    """:func:`train_with_test_curve` for ONE model trained on every category's train split."""
    trains = {c: open_split(dataset, root, c, "train", image_size) for c in categories}
    tests = {c: open_split(dataset, root, c, "test", image_size) for c in categories}
    return train_with_test_curve(detector, trains, tests, epochs=epochs, set_epochs=set_epochs,
                                 n_train={c: len(t) for c, t in trains.items()})


def curve_rows(results: list[CategoryResult], curves: Mapping[str, Mapping[str, list]]) -> list[dict]:
    """The study engine's rows of ``results`` with each category's ``test_curve`` and its
    model's ``train_curve`` (every ``train_*`` loss term per epoch, e.g. the position task's
    cross-entropy ``train_ce32``)."""
    rows = []
    for result, row in zip(results, study_results(results)):
        history = result.history if result.history is not None else pd.DataFrame()
        train = {c: [int(x) if c == "epoch" else float(x) for x in history[c]] for c in history.columns
                 if c == "epoch" or c.startswith("train_")}
        test = {k: [int(x) if k == "epoch" else float(x) for x in v]
                for k, v in curves[row["category"]].items()}
        rows.append({**row, "test_curve": test, **({"train_curve": train} if len(history) else {})})
    return rows


def curve_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (config, seed, category, fold, epoch) of the rows that carry a test curve."""
    out = []
    for row in frame.itertuples(index=False):
        curve = getattr(row, "test_curve", None)
        if not isinstance(curve, Mapping):
            continue
        base = {"ablation": row.ablation, "config": row.config, "seed": row.seed,
                "category": row.category, "fold": getattr(row, "fold", None)}
        for i, epoch in enumerate(curve["epoch"]):
            out.append({**base, "epoch": epoch, **{m: curve[m][i] for m in CURVE_METRICS if m in curve}})
    return pd.DataFrame(out)


def best_minus_last(frame: pd.DataFrame, metrics: Sequence[str] = CURVE_METRICS) -> pd.DataFrame:
    """Per config: the best test AUROC of any trained epoch minus the last epoch's, each metric
    on its own (the official RLR code's choice: best image and best pixel AUROC may come from
    two epochs), mean over (seed, category) runs with its 95 % bootstrap interval."""
    curves = curve_frame(frame)
    if curves.empty:
        return pd.DataFrame()
    trained = curves[curves["epoch"] > 0]
    rows = []
    keys = ["config", "seed", "category", "fold"]
    for config, part in trained.groupby("config", sort=False):
        row: dict[str, Any] = {"config": config, "runs": part.groupby(keys, dropna=False).ngroups,
                               "epochs": int(part["epoch"].max())}
        for m in metrics:
            per_run = part.groupby(keys, dropna=False)[m]
            diffs = (per_run.max() - per_run.last()).dropna().to_numpy()
            if not len(diffs):
                continue
            mean, lo, hi = bootstrap_interval(diffs)
            best_epoch = part.loc[per_run.idxmax().dropna()]["epoch"]
            row[f"{m}: best − last"] = f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            row[f"{m}: best epoch (median)"] = int(best_epoch.median())
        rows.append(row)
    return pd.DataFrame(rows).set_index("config")


def curve_figure(frame: pd.DataFrame, configs: Sequence[str] | None = None,
                 metric: str = "image_auroc", title: str | None = None):
    """Test AUROC per epoch, one panel per config: the mean over (seed, category) runs (line)
    with each run faint, the last epoch marked (what we report) and each run's best epoch
    (what test-set picking would report)."""
    curves = curve_frame(frame)
    configs = list(configs or dict.fromkeys(curves["config"]))
    fig, axes = plt.subplots(1, len(configs), figsize=(3.6 * len(configs), 3.2), sharey=True,
                             squeeze=False)
    keys = ["seed", "category", "fold"]
    for ax, config in zip(axes[0], configs):
        part = curves[curves["config"] == config]
        for _, run in part.groupby(keys, dropna=False):
            ax.plot(run["epoch"], run[metric], color="0.8", lw=0.7)
            trained = run[run["epoch"] > 0]
            best = trained.loc[trained[metric].idxmax()]
            ax.scatter(best["epoch"], best[metric], marker="^", s=14, color="tab:orange", zorder=3)
        mean = part.groupby("epoch")[metric].mean()
        ax.plot(mean.index, mean.values, color="tab:blue", lw=2, label="mean")
        ax.scatter(mean.index[-1], mean.values[-1], s=40, color="tab:blue", zorder=4,
                   label=f"last (ours) {mean.values[-1]:.1f}")
        best_mean = part[part["epoch"] > 0].groupby(keys, dropna=False)[metric].max().mean()
        ax.axhline(best_mean, color="tab:orange", ls="--", lw=1,
                   label=f"mean of each run's best {best_mean:.1f}")
        ax.set_title(config, fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel(f"test {metric.replace('_', ' ')} (%)")
    fig.suptitle(title or f"Test {metric.replace('_auroc', '')} AUROC after every epoch "
                 "(reporting only: ours is the last epoch)", fontsize=11)
    fig.tight_layout()
    return fig


def category_curves(frame: pd.DataFrame, config: str, *, curve: str = "test_curve",
                    column: str = "image_auroc", ax=None, reference: float | None = None):
    """One line per category: ``column`` of the rows' ``curve`` ("test_curve" or
    "train_curve") per epoch for ``config``, mean over seeds (each seed faint). In a test
    curve epoch 0 is the randomly initialised model. ``reference`` draws a horizontal line
    (e.g. ln 8, the position task's chance level)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    rows = frame[(frame["config"] == config) & frame[curve].map(lambda c: isinstance(c, Mapping))]
    for i, (category, part) in enumerate(rows.groupby("category", sort=False)):
        colour = f"C{i}"
        runs = [pd.Series(c[column], index=c["epoch"]) for c in part[curve] if column in c]
        for run in runs:
            ax.plot(run.index, run.values, color=colour, lw=0.6, alpha=0.35)
        mean = pd.concat(runs, axis=1).mean(axis=1)
        ax.plot(mean.index, mean.values, color=colour, lw=2, label=category)
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", lw=1)
    ax.set_xlabel("epoch")
    ax.set_title(config, fontsize=10)
    ax.legend(fontsize=7)
    return ax


def config_curves(frame: pd.DataFrame, configs: Sequence[str], *, curve: str = "train_curve",
                  column: str = "train_loss", ax=None):
    """One line per config: ``column`` of the rows' ``curve`` per epoch, mean over every
    (seed, category) run, with the spread (min to max of the runs' values) shaded."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    for i, config in enumerate(configs):
        part = frame[(frame["config"] == config) & frame[curve].map(lambda c: isinstance(c, Mapping))]
        runs = pd.concat([pd.Series(c[column], index=c["epoch"]) for c in part[curve] if column in c],
                         axis=1)
        if runs.empty:
            continue
        ax.plot(runs.index, runs.mean(axis=1), color=f"C{i}", lw=2, label=f"{config} ({runs.shape[1]} runs)")
        ax.fill_between(runs.index, runs.min(axis=1), runs.max(axis=1), color=f"C{i}", alpha=0.15)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    return ax
