"""Benchmarks behind ``python -m adlib bench ...`` (printed tables, no files written).

    bench_metrics    exact pixel AUROC of adlib.metrics vs scikit-learn on ~50 M pixels
    bench_baseline   the kNN baseline on every category of an MVTec-layout root
    bench_patchsvdd_nn  Patch SVDD nearest-neighbour scoring vs scikit-learn brute force,
                        the official path (KDTree / NGT) and the sgemm rate
    bench_patchsvdd_embed  dense Patch SVDD embeddings, one pass vs patch by patch

Imports stay inside the functions so ``import adlib.bench`` is light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


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


def _best_of(fn, repeats: int = 2):
    """(best wall time of ``repeats`` calls, the last call's result)."""
    import time

    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _patchsvdd_embeddings(category: str, seed: int, image_size: int, n_bank: int, n_query: int,
                          grids: dict[int, int]):
    """Embeddings ``{K: (bank (M, D), queries (N, G, G, D))}`` of an embedded category's first
    ``n_bank`` training and ``n_query`` test images (mean-subtracted, as Patch SVDD) through a
    seeded, untrained plain encoder, on the grids ``{K: stride}``."""
    import torch

    from adlib.data.embedded import ensure_embedded
    from adlib.data.sources import open_split
    from adlib.models.patch_svdd import PatchSVDDNet, dense_embeddings

    root = ensure_embedded(seed=seed) / "mvtec"
    torch.manual_seed(seed)
    net = PatchSVDDNet(attention="none", patch_sizes=tuple(grids)).eval()

    def load(split: str, n: int) -> torch.Tensor:
        ds = open_split("embedded", root, category, split, image_size)
        return torch.stack([ds[i]["image"] for i in range(min(n, len(ds)))])

    train = load("train", n_bank)
    mean = train.mean(0, keepdim=True)
    test = load("test", n_query) - mean
    out = {}
    for k, stride in grids.items():
        bank = dense_embeddings(net, train - mean, k, stride)
        out[k] = (bank.reshape(-1, bank.shape[-1]).numpy(), dense_embeddings(net, test, k, stride).numpy())
    return out


def _official_kdtree(queries, bank):
    """The official inference path for K=64: a scikit-learn KDTree on the bank, queried one
    row of the patch grid at a time."""
    import numpy as np
    from sklearn.neighbors import KDTree

    tree = KDTree(bank)
    n, g, g2, d = queries.shape
    out = np.empty((n, g, g2), dtype=np.float32)
    for i in range(n):
        for r in range(g):
            out[i, r] = tree.query(queries[i, r], k=1)[0][:, 0]
    return out.ravel()


def _official_ngt(queries, bank):
    """The official inference path for K=32: an NGT graph index (approximate) built on the
    bank, searched one patch at a time, the distance re-measured to the returned neighbour."""
    import shutil
    import tempfile

    import numpy as np
    import ngtpy

    folder = tempfile.mkdtemp(prefix="adlib-ngt-")
    try:
        ngtpy.create(folder + "/index", bank.shape[1])
        index = ngtpy.Index(folder + "/index")
        index.batch_insert(bank)
        flat = queries.reshape(-1, queries.shape[-1])
        out = np.empty(len(flat), dtype=np.float32)
        for i, q in enumerate(flat):
            nearest = index.search(q, 1)[0][0]
            out[i] = np.linalg.norm(q - np.asarray(index.get_object(nearest), dtype=np.float32))
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _matmul_rate(queries, bank, device) -> float:
    """This machine's float32 matrix-product rate (FLOP/s) at the search's shapes: the
    ``queries @ bank.T`` products of adlib's chunking alone, nothing else."""
    import torch

    from adlib.nn import knn

    q, b = torch.from_numpy(queries).to(device), torch.from_numpy(bank).to(device)
    bank_chunk = -(-min(len(b), knn._BANK_CHUNK) // knn._GROUP) * knn._GROUP
    query_chunk = max(1, knn._SCORE_BUDGET // bank_chunk)

    def products():
        for b0 in range(0, len(b), bank_chunk):
            bt = b[b0:b0 + bank_chunk].T.contiguous()
            for q0 in range(0, len(q), query_chunk):
                torch.mm(q[q0:q0 + query_chunk], bt)
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds, _ = _best_of(products, 3)
    return 2.0 * len(q) * len(b) * q.shape[1] / seconds


def bench_patchsvdd_nn(image_size: int = 256, category: str = "brick", seed: int = 0,
                       n_bank: int = 20, n_query: int = 5, device: str = "cpu") -> dict:
    """Patch SVDD's scoring step at the paper's grids: every test patch's nearest training patch.

    Embeddings (D=64) of ``n_bank`` training images (the bank) and ``n_query`` test images
    (the queries) of an embedded category at ``image_size`` on the paper's grids (K=64
    stride 16: 13x13 patches per image at 256 px; K=32 stride 4: 57x57), from a seeded,
    untrained plain encoder. Per K, on the CPU, in one process: adlib's exact search
    (:func:`adlib.nn.knn.nearest_neighbour_distance`), scikit-learn's brute force, and the
    official code's path (K=64: KDTree; K=32: NGT, approximate, so its recall is given:
    the share of queries whose distance equals the exact nearest one), each best of 2; and
    adlib's search as a share of the float32 matrix-product rate measured at its shapes.
    The last line: ``patchsvdd nn: <x>x sklearn brute, <y>x official path, <z>% of sgemm
    peak (max abs diff <d>)`` (ratios: time summed over both K; the peak share and max diff
    over both). NGT needs the ``ngt`` package (``pip install ngt``); without it the K=32
    official path is skipped and said so. ``device="cuda"`` runs adlib's search (host arrays
    to host distances) and the matrix products on the GPU (``gpucheck``).
    """
    import importlib.util

    import numpy as np
    import torch
    from sklearn.neighbors import NearestNeighbors

    from adlib.nn.knn import nearest_neighbour_distance

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    grids = {64: 16, 32: 4}
    data = _patchsvdd_embeddings(category, seed, image_size, n_bank, n_query, grids)
    has_ngt = importlib.util.find_spec("ngtpy") is not None
    print(f"Patch SVDD nearest-neighbour scoring, {category} at {image_size} px: bank = "
          f"{n_bank} training images, queries = {n_query} test images; float32, CPU, torch "
          f"threads {torch.get_num_threads()}, adlib on {dev}")
    print(f"{'K':>3} {'bank':>8} {'queries':>8} {'sklearn brute':>14} {'official':>22} "
          f"{'adlib':>8} {'vs brute':>9} {'vs official':>12} {'% sgemm':>8} {'recall':>7}")
    totals = {"brute": 0.0, "official": 0.0, "ours": 0.0, "ours_with_official": 0.0}
    shares, diffs, rows = [], [], []
    for k, (bank, queries) in data.items():
        flat = queries.reshape(-1, queries.shape[-1])
        brute_s, brute = _best_of(lambda: NearestNeighbors(n_neighbors=1, algorithm="brute")
                                  .fit(bank).kneighbors(flat)[0][:, 0])
        ours_s, ours = _best_of(lambda: nearest_neighbour_distance(
            torch.from_numpy(flat).to(dev), torch.from_numpy(bank).to(dev))[0].cpu().numpy())
        official, recall, official_s = "KDTree", None, None
        if k == 32 and not has_ngt:
            official = "NGT: not installed"
        else:
            fn = _official_kdtree if k == 64 else _official_ngt
            official = "KDTree" if k == 64 else "NGT"
            official_s, found = _best_of(lambda: fn(queries, bank))
            if k == 32:
                recall = float(np.mean(np.abs(found - brute) <= 1e-5 * np.maximum(brute, 1e-6)))
            totals["official"] += official_s
            totals["ours_with_official"] += ours_s
        share = 2.0 * len(flat) * len(bank) * bank.shape[1] / ours_s / _matmul_rate(flat, bank, dev)
        diff = float(np.abs(ours.astype(np.float64) - brute.astype(np.float64)).max())
        totals["brute"] += brute_s
        totals["ours"] += ours_s
        shares.append(share)
        diffs.append(diff)
        rows.append({"K": k, "bank": len(bank), "queries": len(flat), "sklearn_brute_s": brute_s,
                     "official": official, "official_s": official_s, "ours_s": ours_s,
                     "sgemm_share": share, "recall": recall, "max_abs_diff": diff})
        off = f"{official} {official_s:.2f} s" if official_s is not None else official
        print(f"{k:>3} {len(bank):>8,} {len(flat):>8,} {brute_s:>12.2f} s {off:>22} {ours_s:>6.2f} s "
              f"{brute_s / ours_s:>8.1f}x "
              + (f"{official_s / ours_s:>11.1f}x" if official_s else f"{'—':>12}")
              + f" {100 * share:>7.0f}% " + (f"{recall:>7.3f}" if recall is not None else f"{'exact':>7}"))
    x = totals["brute"] / totals["ours"]
    y = totals["official"] / totals["ours_with_official"] if totals["ours_with_official"] else float("nan")
    z = 100 * min(shares)
    d = max(diffs)
    print(f"patchsvdd nn: {x:.1f}x sklearn brute, {y:.1f}x official path, {z:.0f}% of sgemm peak "
          f"(max abs diff {d:.1e})")
    return {"rows": rows, "vs_brute": x, "vs_official": y, "sgemm_share": min(shares),
            "max_abs_diff": d, "device": str(dev)}


def bench_patchsvdd_embed(image_size: int = 256, n_images: int = 2, seed: int = 0) -> "pd.DataFrame":
    """Dense Patch SVDD embeddings at the paper's grids, one pass vs patch by patch.

    For the plain encoder, SE and C-SE (last 6 convs) with random weights, K=32 stride 4 and
    K=64 stride 16 on ``n_images`` random ``image_size`` images: the time per image of
    :func:`adlib.models.patch_svdd.dense_embeddings` (shared convolutions) and of
    :func:`~adlib.models.patch_svdd.dense_embeddings_reference` (each patch encoded on its
    own, batch 64), their ratio and the largest difference; then the patch batch size of the
    part after the first attention block (C-SE, K=32). Prints the tables, returns the first.
    """
    import pandas as pd
    import torch

    from adlib.models.patch_svdd import PatchSVDDNet, dense_embeddings, dense_embeddings_reference

    torch.manual_seed(seed)
    images = torch.randn(n_images, 3, image_size, image_size)
    rows = []
    for name, attention in (("Patch SVDD", "none"), ("+SE", "se"), ("+C-SE", "cse")):
        net = PatchSVDDNet(attention=attention).eval()
        for k, stride in ((32, 4), (64, 16)):
            ref_s, ref = _best_of(lambda: dense_embeddings_reference(net, images, k, stride), 1)
            fast_s, fast = _best_of(lambda: dense_embeddings(net, images, k, stride))
            rows.append({"variant": name, "K": k, "stride": stride, "grid": f"{ref.shape[1]}x{ref.shape[2]}",
                         "patch by patch [ms/image]": 1000 * ref_s / n_images,
                         "one pass [ms/image]": 1000 * fast_s / n_images, "ratio": ref_s / fast_s,
                         "max abs diff": float((fast - ref).abs().max())})
    table = pd.DataFrame(rows).set_index(["variant", "K"])
    print(f"Dense embeddings at {image_size} px, random weights, {n_images} images, torch threads "
          f"{torch.get_num_threads()}")
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    net = PatchSVDDNet(attention="cse").eval()
    sweep = {b: _best_of(lambda: dense_embeddings(net, images[:1], 32, 4, batch_size=b))[0]
             for b in (16, 64, 256, 1024)}
    print("C-SE, K=32: patch batch after the first attention block -> ms/image: "
          + ", ".join(f"{b}: {1000 * t:.0f}" for b, t in sweep.items()))
    for (variant, k), row in table.iterrows():
        print(f"patchsvdd embeddings {variant} K={k}: {row['ratio']:.1f}x patch by patch "
              f"(max abs diff {row['max abs diff']:.1e})")
    return table
