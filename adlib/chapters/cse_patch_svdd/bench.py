"""Chapter 1's benchmarks behind ``python -m adlib bench patchsvdd-nn`` and ``patchsvdd-embed``.

    bench_patchsvdd_nn     Patch SVDD nearest-neighbour scoring vs scikit-learn brute force,
                           the official path (KDTree / NGT) and the sgemm rate
    bench_patchsvdd_embed  dense Patch SVDD embeddings, one pass vs patch by patch

Imports stay inside the functions so importing the module is light (the official path's NGT is
an optional dependency).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import KDTree, NearestNeighbors

from adlib.analysis.bench import best_of
from adlib.chapters.cse_patch_svdd.model import (
    PatchSVDDNet,
    dense_embeddings,
    dense_embeddings_reference,
)
from adlib.data.embedded import ensure_embedded
from adlib.data.sources import open_split
from adlib.nn import knn
from adlib.nn.knn import nearest_neighbour_distance

if TYPE_CHECKING:
    import pandas as pd

def _patchsvdd_embeddings(category: str, seed: int, image_size: int, n_bank: int, n_query: int,
                          grids: dict[int, int]):
    """Embeddings ``{K: (bank (M, D), queries (N, G, G, D))}`` of an embedded category's first
    ``n_bank`` training and ``n_query`` test images (mean-subtracted, as Patch SVDD) through a
    seeded, untrained plain encoder, on the grids ``{K: stride}``."""
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
    # optional: the official code's NGT, needed by this benchmark only
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

    seconds, _ = best_of(products, 3)
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
        brute_s, brute = best_of(lambda: NearestNeighbors(n_neighbors=1, algorithm="brute")
                                  .fit(bank).kneighbors(flat)[0][:, 0])
        ours_s, ours = best_of(lambda: nearest_neighbour_distance(
            torch.from_numpy(flat).to(dev), torch.from_numpy(bank).to(dev))[0].cpu().numpy())
        official, recall, official_s = "KDTree", None, None
        if k == 32 and not has_ngt:
            official = "NGT: not installed"
        else:
            fn = _official_kdtree if k == 64 else _official_ngt
            official = "KDTree" if k == 64 else "NGT"
            official_s, found = best_of(lambda: fn(queries, bank))
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


#: The encoders :func:`bench_patchsvdd_embed` times by default: name -> (attention, LBR).
EMBED_VARIANTS = {"Patch SVDD": ("none", False), "+SE": ("se", False), "+C-SE": ("cse", False)}


def bench_patchsvdd_embed(image_size: int = 256, n_images: int = 2, seed: int = 0, *,
                          grids: tuple[tuple[int, int], ...] = ((32, 4), (64, 16)),
                          variants: dict[str, tuple[str, bool]] | None = None,
                          sweep: bool = True) -> "pd.DataFrame":
    """Dense Patch SVDD embeddings, one pass vs patch by patch.

    For each encoder of ``variants`` (default :data:`EMBED_VARIANTS`: the plain encoder, SE and
    C-SE in the last 6 convs) with random weights and each ``(K, stride)`` of ``grids`` (default
    the paper's: K=32 stride 4, K=64 stride 16) on ``n_images`` random ``image_size`` images:
    the time per image of :func:`adlib.chapters.cse_patch_svdd.model.dense_embeddings` (shared
    convolutions) and of :func:`~adlib.chapters.cse_patch_svdd.model.dense_embeddings_reference`
    (each patch encoded on its own, batch 64), their ratio and the largest difference; with
    ``sweep`` also the patch batch size of the part after the first attention block (C-SE,
    K=32). Prints the tables, returns the first.
    """
    torch.manual_seed(seed)
    images = torch.randn(n_images, 3, image_size, image_size)
    rows = []
    for name, (attention, lbr) in (variants or EMBED_VARIANTS).items():
        net = PatchSVDDNet(attention=attention, lbr=lbr).eval()
        for k, stride in grids:
            ref_s, ref = best_of(lambda: dense_embeddings_reference(net, images, k, stride), 1)
            fast_s, fast = best_of(lambda: dense_embeddings(net, images, k, stride))
            rows.append({"variant": name, "K": k, "stride": stride, "grid": f"{ref.shape[1]}x{ref.shape[2]}",
                         "patch by patch [ms/image]": 1000 * ref_s / n_images,
                         "one pass [ms/image]": 1000 * fast_s / n_images, "ratio": ref_s / fast_s,
                         "max abs diff": float((fast - ref).abs().max())})
    table = pd.DataFrame(rows).set_index(["variant", "K"])
    print(f"Dense embeddings at {image_size} px, random weights, {n_images} images, torch threads "
          f"{torch.get_num_threads()}")
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    if sweep:
        net = PatchSVDDNet(attention="cse").eval()
        timed = {b: best_of(lambda: dense_embeddings(net, images[:1], 32, 4, batch_size=b))[0]
                 for b in (16, 64, 256, 1024)}
        print("C-SE, K=32: patch batch after the first attention block -> ms/image: "
              + ", ".join(f"{b}: {1000 * t:.0f}" for b, t in timed.items()))
    for (variant, k), row in table.iterrows():
        print(f"patchsvdd embeddings {variant} K={k}: {row['ratio']:.1f}x patch by patch "
              f"(max abs diff {row['max abs diff']:.1e})")
    return table
