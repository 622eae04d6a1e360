"""Benchmarks behind ``python -m adlib bench ...`` (printed tables, no files written).

    bench_metrics    exact pixel AUROC of adlib.analysis.metrics vs scikit-learn on ~50 M pixels
    bench_baseline   the kNN baseline on every category of an MVTec-layout root

Chapter 1's Patch SVDD benchmarks live in its own package (``adlib.chapters.cse_patch_svdd.bench``).

Imports stay inside the functions so ``import adlib.analysis.bench`` is light.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from adlib.analysis.metrics import pixel_auroc
from adlib.chapters.data_and_metrics.model import KNNBaseline
from adlib.data import list_categories
from adlib.data.embedded import ensure_embedded
from adlib.training.evaluation import evaluate_categories

if TYPE_CHECKING:
    import numpy as np


def _blob_masks(n_maps: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Bool masks ``(n_maps, size, size)``: a third all normal, the rest 1-3 elliptic blobs."""
    masks = np.zeros((n_maps, size, size), dtype=bool)
    yy, xx = np.ogrid[:size, :size]
    for i in range(n_maps):
        if i % 3 == 0:  # good images, as in MVTec test splits
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(0.03, 0.12, 2) * size
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return masks


def bench_metrics(n_maps: int = 760, size: int = 256, seed: int = 0) -> dict:
    """Time ``sklearn.metrics.roc_auc_score`` and :func:`adlib.analysis.metrics.pixel_auroc`.

    Same data, same run: ``n_maps`` float32 maps of ``size x size`` (Gaussian noise, +1
    inside the defects) and sparse blob masks (a few % anomalous pixels). scikit-learn is
    timed once, ours best of 2; our peak extra memory is taken with tracemalloc (which sees
    numpy's buffers) in a third run. Prints a table; the last line is
    ``pixel_auroc speedup vs sklearn: <ratio>x (max abs diff <d>)``. Returns the numbers.
    """
    rng = np.random.default_rng(seed)
    masks = _blob_masks(n_maps, size, rng)
    maps = rng.standard_normal((n_maps, size, size), dtype=np.float32)
    maps += masks
    n_pixels = maps.size
    mib = 2.0 ** 20

    start = time.perf_counter()
    sklearn_auroc = roc_auc_score(masks.ravel(), maps.ravel())
    sklearn_s = time.perf_counter() - start

    ours_s = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        ours = pixel_auroc(maps, masks)
        ours_s = min(ours_s, time.perf_counter() - start)

    tracemalloc.start()
    pixel_auroc(maps, masks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    ratio = sklearn_s / ours_s
    diff = abs(ours - sklearn_auroc)
    print(f"pixel AUROC on {n_maps} maps of {size}x{size} = {n_pixels:,} pixels "
          f"({100 * masks.mean():.1f}% anomalous); maps float32 {maps.nbytes / mib:.1f} MiB, "
          f"masks bool {masks.nbytes / mib:.1f} MiB")
    print(f"{'method':<28}{'time [s]':>10}{'AUROC':>22}")
    print(f"{'sklearn roc_auc_score':<28}{sklearn_s:>10.2f}{sklearn_auroc:>22.16f}")
    print(f"{'adlib pixel_auroc (best/2)':<28}{ours_s:>10.2f}{ours:>22.16f}")
    print(f"adlib pixel_auroc peak extra memory: {peak / mib:.1f} MiB "
          f"({peak / maps.nbytes:.2f}x the maps)")
    print(f"pixel_auroc speedup vs sklearn: {ratio:.1f}x (max abs diff {diff:.1e})")
    return {"n_pixels": n_pixels, "sklearn_s": sklearn_s, "ours_s": ours_s, "ratio": ratio,
            "max_abs_diff": diff, "peak_bytes": peak, "input_bytes": maps.nbytes}


def bench_baseline(data_root=None, image_size: int = 256, seed: int = 0, *,
                   categories=None, max_bank_size: int | None = 20_000, progress: bool = True):
    """Fit and test the kNN baseline on every category of an MVTec-layout root; print a table.

    The baseline (:class:`adlib.chapters.data_and_metrics.model.KNNBaseline`: EfficientNet-Lite0 stage 2+3
    patch features, nearest-neighbour distance, PatchCore without coreset) is fitted on
    ``train/good`` and scored on ``test``. data_root None uses the embedded default
    (``ensure_embedded(seed=seed) / "mvtec"``, generated on first use). Returns a DataFrame
    with one row per category: image AUROC, pixel AUROC, image counts, bank size, seconds.
    """
    if data_root is None:
        data_root = ensure_embedded(seed=seed) / "mvtec"
    root = Path(data_root)
    banks = []

    def make_model():
        banks.append(KNNBaseline(max_bank_size=max_bank_size, seed=seed, progress=progress))
        return banks[-1]

    results = evaluate_categories(make_model, "mvtec_ad", root, categories or list_categories(root),
                                  image_size, show_progress=progress)
    rows = [{"category": r.category, "image_auroc": r.metrics["image_auroc"],
             "pixel_auroc": r.metrics.get("pixel_auroc", float("nan")), "n_train": r.n_train,
             "n_test": len(r.labels), "n_anomalous": int(r.labels.sum()),
             "bank": len(model.memory_bank), "seconds": r.seconds}
            for r, model in zip(results, banks)]
    table = pd.DataFrame(rows).set_index("category")
    shown = table.copy()
    shown.loc["mean"] = table[["image_auroc", "pixel_auroc", "seconds"]].mean()
    print(f"kNN baseline (EfficientNet-Lite0 stages 2+3, {image_size}px, bank <= {max_bank_size}) on {root}")
    print(shown.to_string(na_rep="", float_format=lambda v: f"{v:.3f}",
                          formatters={c: lambda v: "" if pd.isna(v) else f"{v:.0f}"
                                      for c in ("n_train", "n_test", "n_anomalous", "bank")}))
    return table


def best_of(fn, repeats: int = 2):
    """(best wall time of ``repeats`` calls, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out
