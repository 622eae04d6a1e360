"""Exact nearest-neighbour distances (vs scikit-learn) and the kNN patch-feature baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

import adlib.nn.knn as knn
from adlib.nn.maps import gaussian_smooth
from adlib.chapters.data_and_metrics.model import KNNBaseline
from adlib.nn.knn import nearest_neighbour_distance

torch.set_num_threads(2)


def sklearn_brute(queries, bank, k):
    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank).kneighbors(queries)


def float64_brute(queries, bank, k):
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize("k, chunk_size, bank_chunk_size", [(1, None, None), (3, 97, 113), (3, 150, 90)])
def test_equals_sklearn_brute_force(k, chunk_size, bank_chunk_size):
    rng = np.random.default_rng(k)
    queries = rng.normal(size=(600, 24)).astype(np.float32)
    bank = rng.normal(size=(400, 24)).astype(np.float32)
    dist, idx = nearest_neighbour_distance(torch.from_numpy(queries), torch.from_numpy(bank), k=k,
                                           chunk_size=chunk_size, bank_chunk_size=bank_chunk_size)
    ref_dist, ref_idx = sklearn_brute(queries, bank, k)
    assert dist.shape == idx.shape == ((600,) if k == 1 else (600, k))
    np.testing.assert_allclose(dist.numpy().reshape(600, k), ref_dist, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(idx.numpy().reshape(600, k), ref_idx)  # no ties in random data
    np.testing.assert_allclose(dist.numpy().reshape(600, k), float64_brute(queries, bank, k), atol=1e-5)


@pytest.mark.parametrize("n_bank, k", [(1, 1), (5, 5), (33, 3), (70, 7), (100, 60)])
def test_small_banks_and_large_k(n_bank, k):
    """Banks that are not whole groups of 32 (padded inside), k close to N, tiny chunks."""
    rng = np.random.default_rng(n_bank)
    queries = rng.normal(size=(90, 8)).astype(np.float32)
    bank = rng.normal(size=(n_bank, 8)).astype(np.float32)
    ref_dist, ref_idx = sklearn_brute(queries, bank, k)
    for bank_chunk_size in (None, 31):
        dist, idx = nearest_neighbour_distance(queries, bank, k=k, chunk_size=37,
                                               bank_chunk_size=bank_chunk_size)
        np.testing.assert_allclose(dist.numpy().reshape(90, k), ref_dist, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(idx.numpy().reshape(90, k), ref_idx)


def test_large_offset_does_not_cancel_precision():
    """||q||^2 ~ 3e7 here: the plain float32 expansion is off by ~1; ours is exact."""
    rng = np.random.default_rng(1)
    queries = (rng.normal(size=(500, 32)) + 1000).astype(np.float32)
    bank = (rng.normal(size=(700, 32)) + 1000).astype(np.float32)
    q, b = torch.from_numpy(queries), torch.from_numpy(bank)
    naive = (q.pow(2).sum(1, keepdim=True) - 2 * q @ b.T + b.pow(2).sum(1)).clamp_min(0).sqrt().amin(1)
    reference = float64_brute(queries, bank, 3)
    assert np.abs(naive.numpy() - reference[:, 0]).max() > 1e-2  # the trap is real
    dist, idx = nearest_neighbour_distance(q, b, k=3, chunk_size=64)
    np.testing.assert_allclose(dist.numpy(), reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(dist.numpy(), sklearn_brute(queries, bank, 3)[0], atol=1e-5, rtol=0)


def test_ties_are_settled_by_the_exact_fallback(monkeypatch):
    """All 2D bank rows (+-e_i) are equally far from the origin: the bound cannot prove the
    top-k from float32 scores, so those rows are redone by float64 brute force."""
    dim = 16
    bank = torch.cat([torch.eye(dim), -torch.eye(dim), torch.full((1, dim), 3.0)])
    queries = torch.stack([torch.zeros(dim), torch.linspace(0.05, 0.8, dim)])  # 2nd: no ties
    calls = []
    exact_top_k = knn._exact_top_k
    monkeypatch.setattr(knn, "_exact_top_k", lambda q, *a: calls.append(len(q)) or exact_top_k(q, *a))
    dist, idx = nearest_neighbour_distance(queries, bank, k=2)
    assert calls == [1]  # only the tied query needed the fallback
    np.testing.assert_allclose(dist[0].numpy(), [1.0, 1.0], atol=1e-6)
    assert idx[1].tolist() == [dim - 1, dim - 2]  # +e_i nearest where q_i is largest


def test_returned_indices_point_at_the_distances_and_numpy_input_works():
    rng = np.random.default_rng(2)
    queries, bank = rng.normal(size=(50, 8)), rng.normal(size=(30, 8))  # float64 numpy
    dist, idx = nearest_neighbour_distance(queries, bank, k=2)
    assert dist.dtype == torch.float64
    np.testing.assert_allclose(np.linalg.norm(queries[:, None] - bank[idx.numpy()], axis=-1),
                               dist.numpy(), atol=1e-12)


def test_bad_shapes_and_k_raise():
    with pytest.raises(ValueError, match="same D"):
        nearest_neighbour_distance(torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="k=6 neighbours"):
        nearest_neighbour_distance(torch.zeros(3, 4), torch.zeros(5, 4), k=6)


def test_gaussian_smooth_equals_scipy():
    maps = torch.rand(2, 40, 48, dtype=torch.float64)
    ours = gaussian_smooth(maps, sigma=4.0).numpy()
    # torch's "reflect" padding is scipy's "mirror"; radius int(4 sigma + 0.5) in both
    reference = np.stack([ndimage.gaussian_filter(m, sigma=4.0, mode="mirror", truncate=4.0)
                          for m in maps.numpy()])
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def textures(rng, n, size=64):
    """Smooth random texture with mild noise, (n, 3, size, size) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        base = np.stack([0.5 + 0.2 * np.sin(6 * np.pi * (xx + yy) + p) for p in phase])
        images.append(base + rng.normal(0, 0.03, size=base.shape))
    return torch.from_numpy(np.clip(np.stack(images), 0, 1).astype(np.float32))


@pytest.fixture(scope="module")
def synthetic_set():
    rng = np.random.default_rng(0)
    train, good, bad = textures(rng, 12), textures(rng, 8), textures(rng, 8)
    masks = torch.zeros(16, 64, 64)
    for i in range(8):
        top, left = rng.integers(4, 48, size=2)
        bad[i, :, top:top + 12, left:left + 12] = 1.0  # bright square defect
        masks[8 + i, top:top + 12, left:left + 12] = 1
    return train, torch.cat([good, bad]), np.r_[np.zeros(8), np.ones(8)], masks


def test_baseline_ranks_anomalies_above_normals(synthetic_set):
    train, test, labels, masks = synthetic_set
    model = KNNBaseline(progress=False, batch_size=8).fit(train)
    assert tuple(model.memory_bank.shape) == (12 * 8 * 8, 40 + 112)  # stride-8 grid, stages 2+3
    scores, maps = model.predict(test)
    assert scores.shape == (16,) and maps.shape == (16, 64, 64)
    assert scores.dtype == np.float32 and maps.dtype == np.float32
    np.testing.assert_allclose(scores, maps.reshape(16, -1).max(1))
    assert roc_auc_score(labels, scores) > 0.9
    assert roc_auc_score(masks.numpy().ravel(), maps.ravel()) > 0.9


def test_baseline_accepts_dataset_items_and_subsamples_the_bank(synthetic_set):
    train, test, _, _ = synthetic_set
    items = [{"image": img, "label": 0, "mask": torch.zeros(64, 64), "defect_type": "good",
              "path": f"{i}.png"} for i, img in enumerate(train)]
    a = KNNBaseline(progress=False, max_bank_size=100, seed=3, image_size=32).fit(items)
    b = KNNBaseline(progress=False, max_bank_size=100, seed=3, image_size=32).fit(train)
    assert tuple(a.memory_bank.shape) == (100, 152)
    torch.testing.assert_close(a.memory_bank, b.memory_bank)  # same seed, same subset
    scores, maps = a.predict(test[:3])
    assert scores.shape == (3,) and maps.shape == (3, 32, 32)  # maps at image_size


def test_predict_before_fit_says_what_to_do():
    with pytest.raises(RuntimeError, match="call fit"):
        KNNBaseline(progress=False).predict(torch.rand(1, 3, 64, 64))


def test_bench_baseline_table_on_a_tiny_mvtec_tree(tmp_path, capsys):
    from conftest import build_mvtec_tree

    from adlib.analysis.bench import bench_baseline

    root = build_mvtec_tree(tmp_path / "mvtec", size=64)
    table = bench_baseline(root, image_size=64, progress=False)
    assert list(table.index) == ["bottle", "grid"]
    assert {"image_auroc", "pixel_auroc", "seconds", "n_test"} <= set(table.columns)
    assert table.loc["bottle", "n_test"] == 5 and table.loc["grid", "n_anomalous"] == 2
    assert (table["image_auroc"] > 0.9).all() and (table["pixel_auroc"] > 0.9).all()  # bright squares
    printed = capsys.readouterr().out
    assert "bottle" in printed and "mean" in printed
