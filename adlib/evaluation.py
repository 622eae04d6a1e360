"""Evaluate a one-class model per category: fit on train/good, score the test split.

Every chapter does the same loop, so it lives here once::

    results = evaluate_categories(lambda: KNNBaseline(image_size=cfg.image_size),
                                  cfg.dataset, root, categories, cfg.image_size)
    results_frame(results)          # one row per category, plus the mean

A model only needs ``fit(train_dataset)`` and ``predict(test_dataset) -> (scores, maps)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from adlib.progress import progress

from adlib.data.sources import open_split
from adlib.metrics import evaluate, roc_points


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

    def roc(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Image-level ROC points and AUROC, for :func:`adlib.viz.roc_curves`."""
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
        scores, maps = model.predict(test)
        labels = np.asarray(test.labels)
        masks = masks_of(test)
        if maps.shape[-2:] != masks.shape[-2:]:
            maps = torch.nn.functional.interpolate(torch.as_tensor(maps)[:, None],
                                                   size=masks.shape[-2:], mode="bilinear",
                                                   align_corners=False)[:, 0].numpy()
        metrics = evaluate(scores, labels, maps, masks)
        results.append(CategoryResult(category, metrics, np.asarray(scores), labels, maps,
                                      masks, test, time.perf_counter() - start, len(train)))
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
    """``{category: {metric: value in %}}`` plus ``mean``, for :class:`adlib.results.RunRecord`."""
    frame = results_frame(results).drop(columns="seconds")
    return {cat: {k: float(v) for k, v in row.items() if pd.notna(v)}
            for cat, row in frame.iterrows()}
