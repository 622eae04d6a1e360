"""Benchmarks behind ``python -m adlib bench ...`` (printed tables, no files written).

    bench_metrics    exact pixel AUROC of adlib.metrics vs scikit-learn on ~50 M pixels
    bench_baseline   the kNN baseline on every category of an MVTec-layout root
    bench_patchsvdd_nn  Patch SVDD nearest-neighbour scoring vs scikit-learn brute force

Imports stay inside the functions so ``import adlib.bench`` is light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def _blob_masks(n_maps: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Bool masks ``(n_maps, size, size)``: a third all normal, the rest 1-3 elliptic blobs."""
    import numpy as np

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
    """Time ``sklearn.metrics.roc_auc_score`` and :func:`adlib.metrics.pixel_auroc`.

    Same data, same run: ``n_maps`` float32 maps of ``size x size`` (Gaussian noise, +1
    inside the defects) and sparse blob masks (a few % anomalous pixels). scikit-learn is
    timed once, ours best of 2; our peak extra memory is taken with tracemalloc (which sees
    numpy's buffers) in a third run. Prints a table; the last line is
    ``pixel_auroc speedup vs sklearn: <ratio>x (max abs diff <d>)``. Returns the numbers.
    """
    import time
    import tracemalloc

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from adlib.metrics import pixel_auroc

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

    The baseline (:class:`adlib.models.knn_baseline.KNNBaseline`: EfficientNet-Lite0 stage 2+3
    patch features, nearest-neighbour distance, PatchCore without coreset) is fitted on
    ``train/good`` and scored on ``test``. data_root None uses the embedded default
    (``ensure_embedded(seed=seed) / "mvtec"``, generated on first use). Returns a DataFrame
    with one row per category: image AUROC, pixel AUROC, image counts, bank size, seconds.
    """
    from pathlib import Path

    import pandas as pd

    from adlib.data import list_categories
    from adlib.evaluation import evaluate_categories
    from adlib.models.knn_baseline import KNNBaseline

    if data_root is None:
        from adlib.data.embedded import ensure_embedded

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


def bench_patchsvdd_nn(image_size: int = 128, category: str = "brick", seed: int = 0,
                       patch_size: int = 32, stride: int = 4, device: str = "auto") -> dict:
    """Patch SVDD's scoring step: nearest training embedding of every test patch.

    Realistic data: the K-px patch embeddings (D=64) of an embedded category's 64 training
    and 48 test images at ``image_size``, on Patch SVDD's dense grid (K=32, stride 4: 25x25
    positions per image at 128 px, 57x57 at 256 px), from a seeded, untrained plain encoder
    (computed fully convolutionally, which equals per-patch encoding without attention), on
    mean-subtracted images.
    scikit-learn ``NearestNeighbors(algorithm="brute")`` and
    :func:`adlib.nn.knn.nearest_neighbour_distance` run in the same process on the same
    float32 arrays, each timed best of 2. ``device="auto"`` runs adlib's search on CUDA when
    there is a GPU (timed from host arrays to host distances, transfers included) and on the
    CPU otherwise; scikit-learn always runs on the CPU. The last line printed is
    ``patchsvdd nn speedup vs sklearn: <ratio>x (max abs diff <d>)``.
    """
    import time

    import numpy as np
    import torch
    from sklearn.neighbors import NearestNeighbors

    from adlib.data.embedded import ensure_embedded
    from adlib.data.sources import open_split
    from adlib.models.patch_svdd import PatchSVDDNet, grid_size
    from adlib.nn.knn import nearest_neighbour_distance

    root = ensure_embedded(seed=seed) / "mvtec"
    torch.manual_seed(seed)
    net = PatchSVDDNet(attention="none", patch_sizes=(32,)).eval()

    def load(split: str) -> torch.Tensor:
        ds = open_split("embedded", root, category, split, image_size)
        return torch.stack([ds[i]["image"] for i in range(len(ds))])

    train_images = load("train")
    mean_image = train_images.mean(0, keepdim=True)  # Patch SVDD's preprocessing

    def embed(split: str) -> np.ndarray:
        images = (train_images if split == "train" else load(split)) - mean_image
        g = grid_size(image_size, patch_size, stride)
        step = stride // 2  # the dense map has stride 2 (conv1)
        with torch.no_grad():
            maps = torch.cat([net.encoder32(images[i:i + 8]) for i in range(0, len(images), 8)])
        maps = maps[:, :, ::step, ::step][:, :, :g, :g]
        return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).contiguous().numpy()

    bank, queries = embed("train"), embed("test")

    def best_of_two(fn):
        best, out = float("inf"), None
        for _ in range(2):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        return best, out

    sk_s, sk = best_of_two(lambda: NearestNeighbors(n_neighbors=1, algorithm="brute")
                           .fit(bank).kneighbors(queries)[0][:, 0])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)

    def ours_fn() -> np.ndarray:
        q, b = torch.from_numpy(queries).to(dev), torch.from_numpy(bank).to(dev)
        return nearest_neighbour_distance(q, b)[0].cpu().numpy()

    ours_fn()  # warm-up (CUDA context, kernels); sklearn needs none
    ours_s, ours = best_of_two(ours_fn)
    diff = float(np.abs(ours.astype(np.float64) - sk.astype(np.float64)).max())
    ratio = sk_s / ours_s
    print(f"Patch SVDD nearest-neighbour scoring, {category} at {image_size} px, K={patch_size} "
          f"stride {stride}: bank {bank.shape[0]:,} x {bank.shape[1]}, queries "
          f"{queries.shape[0]:,} (float32), torch threads {torch.get_num_threads()}, adlib on {dev}")
    print(f"{'method':<44}{'time [s]':>10}")
    print(f"{'sklearn NearestNeighbors(brute) (best/2)':<44}{sk_s:>10.2f}")
    print(f"{'adlib nearest_neighbour_distance (best/2)':<44}{ours_s:>10.2f}")
    print(f"patchsvdd nn speedup vs sklearn: {ratio:.1f}x (max abs diff {diff:.1e})")
    return {"n_bank": bank.shape[0], "n_queries": queries.shape[0], "sklearn_s": sk_s,
            "ours_s": ours_s, "ratio": ratio, "max_abs_diff": diff, "device": str(dev)}
