"""Evaluate a one-class model: fit on train/good, score the test split, per category.

Every chapter does the same loops, so they live here once::

    results = evaluate_categories(lambda: KNNBaseline(image_size=cfg.image_size),
                                  cfg.dataset, root, categories, cfg.image_size)   # separate
    results = evaluate_unified(detector, cfg.dataset, root, categories, cfg.image_size)  # unified
    results_frame(results)          # one row per category, plus the mean
    rows = evaluate_task(make_model, task)   # a study cell: either loop, rows for the engine

A model only needs ``fit(train_dataset)`` (unified: ``fit({category: train_dataset})``) and
``predict(test_dataset) -> (scores, maps)``; a ``history`` attribute (loss per epoch), when it
has one, is kept in the :class:`CategoryResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from adlib.analysis.metrics import evaluate, roc_points
from adlib.data.sources import open_split
from adlib.nn.maps import resize_maps
from adlib.training.progress import progress


@dataclass
class CategoryResult:
    """What one category's evaluation produced (maps at the evaluation resolution)."""

    category: str
    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    test: Any = field(repr=False)
    seconds: float = 0.0
    n_train: int = 0
    history: pd.DataFrame | None = field(default=None, repr=False)  # the model's loss per epoch
    train_seconds: float = 0.0   # fitting only (unified: the category's share)
    model: Any = field(default=None, repr=False)   # the fitted model that made these scores

    def roc(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Image-level ROC points and AUROC, for :func:`adlib.book.viz.roc_curves`."""
        fpr, tpr, _ = roc_points(self.scores, self.labels)
        return fpr, tpr, self.metrics["image_auroc"]

    def examples(self, n_good: int = 1, n_bad: int = 3) -> list[int]:
        """Indices of the first good and the most clearly scored anomalous test images."""
        good = np.flatnonzero(self.labels == 0)[:n_good]
        bad = np.flatnonzero(self.labels == 1)
        bad = bad[np.argsort(-self.scores[bad])][:n_bad]
        return [int(i) for i in np.concatenate([good, bad])]


def masks_of(dataset) -> np.ndarray:
    """All ground-truth masks of a test split ``(N,H,W)`` as booleans."""
    return np.stack([dataset[i]["mask"].numpy() > 0.5 for i in range(len(dataset))])


def _score(model, test, category: str, seconds_before: float, n_train: int, start: float,
           train_seconds: float) -> CategoryResult:
    scores, maps = model.predict(test)
    labels, masks = np.asarray(test.labels), masks_of(test)
    maps = resize_maps(maps, masks.shape[-2:])
    metrics = evaluate(scores, labels, maps, masks)
    return CategoryResult(category, metrics, np.asarray(scores), labels, maps, masks, test,
                          seconds_before + time.perf_counter() - start, n_train,
                          getattr(model, "history", None), train_seconds, model)


def evaluate_categories(make_model: Callable[[], Any], dataset: str, root, categories,
                        image_size: int, *, show_progress: bool = True) -> list[CategoryResult]:
    """Fit a fresh model per category and evaluate it on that category's test split."""
    results = []
    for category in progress(categories, desc="categories", disable=not show_progress):
        start = time.perf_counter()
        train = open_split(dataset, root, category, "train", image_size)
        test = open_split(dataset, root, category, "test", image_size)
        model = make_model()
        model.fit(train)
        fitted = time.perf_counter() - start
        results.append(_score(model, test, category, 0.0, len(train), start, fitted))
    return results


def evaluate_unified(model: Any, dataset: str, root, categories, image_size: int, *,
                     show_progress: bool = True) -> list[CategoryResult]:
    """Train ONE model on the train splits of all ``categories`` (``model.fit({category:
    train})``), then evaluate it on each category's test split; ``seconds`` is the
    category's share of the training time plus its test time."""
    trains = {c: open_split(dataset, root, c, "train", image_size) for c in categories}
    start = time.perf_counter()
    model.fit(trains)
    share = (time.perf_counter() - start) / max(len(categories), 1)
    results = []
    for category in progress(categories, desc="test categories", disable=not show_progress):
        t0 = time.perf_counter()
        test = open_split(dataset, root, category, "test", image_size)
        results.append(_score(model, test, category, share, len(trains[category]), t0, share))
    return results


def results_frame(results: list[CategoryResult], percent: bool = True) -> pd.DataFrame:
    """One row per category (and a ``mean`` row), metrics in % by default (as the papers)."""
    scale = 100.0 if percent else 1.0
    rows = [{"category": r.category, **{k: v * scale for k, v in r.metrics.items()},
             "seconds": round(r.seconds, 1)} for r in results]
    frame = pd.DataFrame(rows).set_index("category")
    frame.loc["mean"] = frame.mean(numeric_only=True)
    return frame.round(2)


def metrics_for_record(results: list[CategoryResult]) -> dict[str, dict[str, float]]:
    """``{category: {metric: value in %}}`` plus ``mean``, for :class:`adlib.study.results.RunRecord`."""
    frame = results_frame(results).drop(columns="seconds")
    return {cat: {k: float(v) for k, v in row.items() if pd.notna(v)}
            for cat, row in frame.iterrows()}


def study_results(results: list[CategoryResult], **labels) -> list[dict]:
    """Per-category results in the study engine's form (metrics in %, training seconds, final
    loss, and the fitted ``model`` with its loss ``history``, which the engine keeps out of the
    rows but a fingerprint hashes); ``labels`` (seed, overrides, ablation, config) are added to
    each, so a notebook can hand its main run to :func:`adlib.study.engine.run_study` as ``known``."""
    out = []
    for r in results:
        history = r.history if r.history is not None and len(r.history) else None
        final = float(history["train_loss"].iloc[-1]) if history is not None else None
        out.append({**labels, "category": r.category,
                    "metrics": {k: 100.0 * v for k, v in r.metrics.items() if v is not None},
                    "train_seconds": round(r.train_seconds, 3), "final_loss": final,
                    "model": r.model, "history": history})
    return out
