"""adlib.analysis.metrics against scikit-learn and against plain, slow reference implementations."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score, roc_curve

from adlib.analysis import metrics
from adlib.analysis.metrics import (
    aupro,
    evaluate,
    f1_at_threshold,
    f1_max,
    image_auroc,
    pixel_auroc,
    roc_points,
)

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------ helpers
def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, good_every: int = 3) -> np.ndarray:
    """uint8 masks (n, h, w): every ``good_every``-th image normal, others 1-3 discs."""
    masks = np.zeros((n, h, w), dtype=np.uint8)
    yy, xx = np.ogrid[:h, :w]
    for i in range(n):
        if i % good_every == 0:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, max(2, h // 6))
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return masks


def random_maps(rng: np.random.Generator, masks: np.ndarray, ties: bool) -> np.ndarray:
    maps = rng.random(masks.shape) + 0.4 * masks
    return np.round(maps, 1) if ties else maps


def slow_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """The PRO curve threshold by threshold, straight from the definition."""
    regions = []
    for i in range(len(masks)):
        labelled, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, n + 1)]
    normal = masks == 0
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        detected = maps >= t
        fpr.append((detected & normal).sum() / normal.sum())
        pro.append(np.mean([detected[i][region].mean() for i, region in regions]))
    area = 0.0
    for j in range(1, len(fpr)):
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # interpolate the curve exactly at the limit
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


@pytest.fixture
def parallel_paths(monkeypatch):
    """Send small inputs through the large-input code (threads, chunks, buckets)."""
    monkeypatch.setattr(metrics, "_PARALLEL_MIN", 1000)
    monkeypatch.setattr(metrics, "_SORT_CHUNK", 3000)
    monkeypatch.setattr(metrics, "_BUCKET_CHUNK", 2500)
    monkeypatch.setattr(metrics, "_num_threads", lambda: 2)
    monkeypatch.setattr(metrics, "_SHARED_MAX", 1.01)  # bucket even crowded scores


# -------------------------------------------------------------------------- AUROC
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_image_auroc_matches_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    labels = rng.random(301) < 0.4
    scores = rng.normal(size=301) + labels
    if ties:
        scores = np.round(scores, 1)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    # integer labels and scores, torch tensors
    assert image_auroc(torch.from_numpy(scores), torch.from_numpy(labels.astype(np.int64))) == \
        pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", [False, True])
def test_pixel_auroc_matches_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 6, 40, 48)
    maps = random_maps(rng, masks, ties)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-9)
    assert pixel_auroc(maps.astype(np.float32), masks.astype(bool)) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel()), abs=1e-9)
    # (N,1,H,W) torch tensors, float masks
    maps_t = torch.from_numpy(maps)[:, None]
    masks_t = torch.from_numpy(masks.astype(np.float32))[:, None]
    assert pixel_auroc(maps_t, masks_t) == pytest.approx(expected, abs=1e-9)
    assert pixel_auroc(maps_t, masks) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_pixel_auroc_parallel_paths_match_sklearn(parallel_paths, ties, dtype):
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, 9, 48, 40)
    maps = random_maps(rng, masks, ties)
    maps = (maps * 100).astype(dtype) if dtype == np.int16 else maps.astype(dtype)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-9)
    # more anomalous than normal pixels: the normal class is counted instead
    assert pixel_auroc(maps, 1 - masks) == pytest.approx(1 - expected, abs=1e-9)


def test_count_below_paths_agree_with_brute_force(parallel_paths):
    rng = np.random.default_rng(3)
    haystack = np.round(rng.normal(size=20_000), 2).astype(np.float32)
    haystack[:50] = 1e30  # outliers far outside the query range
    queries = np.unique(rng.choice(haystack[50:], 700))
    less_b, equal_b = metrics._count_below_bucketed(haystack, queries)
    less_s, equal_s = metrics._count_below_sorted(haystack, queries)
    brute_less = (haystack[None, :] < queries[:, None]).sum(1)
    brute_equal = (haystack[None, :] == queries[:, None]).sum(1)
    np.testing.assert_array_equal(less_b, brute_less)
    np.testing.assert_array_equal(equal_b, brute_equal)
    np.testing.assert_array_equal(less_s, brute_less)
    np.testing.assert_array_equal(equal_s, brute_equal)


def test_crowded_scores_fall_back_to_sorting(monkeypatch):
    monkeypatch.setattr(metrics, "_PARALLEL_MIN", 1000)
    calls = []
    sorted_path = metrics._count_below_sorted
    monkeypatch.setattr(metrics, "_count_below_sorted",
                        lambda *args: calls.append(1) or sorted_path(*args))
    rng = np.random.default_rng(0)
    masks = blob_masks(rng, 8, 32, 32)
    maps = np.exp(8 * random_maps(rng, masks, ties=False))  # heavy tail: one crowded bucket
    assert pixel_auroc(maps, masks) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert calls, "heavy-tailed scores should have been counted by sorting"


def test_auroc_degenerate_inputs():
    scores = np.linspace(0, 1, 10)
    with pytest.raises(ValueError, match="only normal"):
        image_auroc(scores, np.zeros(10))
    with pytest.raises(ValueError, match="only anomalous"):
        pixel_auroc(np.ones((2, 4, 4)), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="pixel AUROC needs both .*missing anomalies or masks"):
        pixel_auroc(np.ones((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="1 NaN"):
        image_auroc(np.r_[scores[:-1], np.nan], np.arange(10) % 2)
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(np.ones((2, 4, 4)), np.ones((2, 8, 8)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        pixel_auroc(np.ones((1, 4, 4)), np.full((1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="10 scores but 9 labels"):
        image_auroc(scores, np.arange(9) % 2)
    # constant scores with both classes: chance, as scikit-learn
    assert image_auroc(np.ones(10), np.arange(10) % 2) == 0.5


# -------------------------------------------------------------------------- AUPRO
@pytest.mark.parametrize("seed", range(4))
def test_aupro_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 5, 20, 24)
    maps = random_maps(rng, masks, ties=seed % 2 == 1)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(
            slow_aupro(maps, masks, limit), abs=1e-6)


def test_aupro_parallel_path_matches_slow_reference(parallel_paths):
    rng = np.random.default_rng(11)
    masks = blob_masks(rng, 6, 32, 32)
    maps = random_maps(rng, masks, ties=False).astype(np.float32)
    assert aupro(torch.from_numpy(maps)[:, None], masks[:, None]) == pytest.approx(
        slow_aupro(maps, masks), abs=1e-6)


def test_aupro_counts_regions_not_pixels():
    # one large region found, one small region missed: PRO = 1/2 although 96% of the
    # anomalous pixels are found (pixel AUROC would call this nearly perfect)
    masks = np.zeros((2, 20, 20), dtype=np.uint8)
    masks[0, 2:12, 2:12] = 1   # 100 pixels
    masks[1, 5:7, 5:7] = 1     # 4 pixels
    maps = np.where(masks[0:1] == 1, 2.0, 0.0).repeat(2, 0)
    maps[1] = 0.0
    maps += np.random.default_rng(0).random(maps.shape) * 0.1
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=1e-9)
    assert 0.45 < aupro(maps, masks) < 0.55


def test_aupro_uses_8_connectivity():
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, 2, 2] = masks[0, 3, 3] = 1  # diagonal neighbours: one region with 8-connectivity
    masks[0, 6, 6:8] = 1                 # a second region, never found
    maps = np.zeros((1, 8, 8))
    maps[0, 2, 2] = 1.0
    # at FPR 0: PRO = mean(1/2, 0) = 1/4 (4-connectivity would give mean(1, 0, 0) = 1/3),
    # then a straight line to (1, 1): PRO = 1/4 + 3/4 FPR
    expected = (0.3 * 0.25 + 0.75 * 0.3 ** 2 / 2) / 0.3
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=1e-12)


def test_aupro_extremes():
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 4, 24, 24)
    perfect = masks + 0.5 * rng.random(masks.shape)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    inverted = -masks.astype(float) + 0.5 * rng.random(masks.shape)
    assert aupro(inverted, masks) < 1e-12
    assert aupro(np.zeros(masks.shape), masks) == pytest.approx(0.15, abs=1e-12)
    assert aupro(np.zeros(masks.shape), masks, fpr_limit=0.2) == pytest.approx(0.1, abs=1e-12)


def test_aupro_binned_is_close_to_exact():
    rng = np.random.default_rng(2)
    masks = blob_masks(rng, 5, 24, 24)
    maps = random_maps(rng, masks, ties=False)
    exact = aupro(maps, masks)
    assert aupro(maps, masks, num_thresholds=2000) == pytest.approx(exact, abs=0.01)
    assert aupro(maps, masks, num_thresholds=2000) != exact


def test_aupro_degenerate_inputs():
    with pytest.raises(ValueError, match="at least one anomalous pixel"):
        aupro(np.random.default_rng(0).random((2, 8, 8)), np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="normal pixels"):
        aupro(np.random.default_rng(0).random((2, 8, 8)), np.ones((2, 8, 8)))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.zeros((1, 4, 4)), np.eye(4)[None], fpr_limit=0.0)


# ----------------------------------------------------------------------------- F1
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", [False, True])
def test_f1_max_matches_brute_force(seed, ties):
    rng = np.random.default_rng(seed)
    labels = (rng.random(200) < 0.3).astype(int)
    scores = rng.normal(size=200) + 1.2 * labels
    if ties:
        scores = np.round(scores, 1)
    best, threshold = f1_max(scores, labels)
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert best == pytest.approx(brute, abs=1e-12)
    assert f1_score(labels, scores >= threshold) == pytest.approx(best, abs=1e-12)
    assert f1_at_threshold(scores, labels, threshold) == pytest.approx(best, abs=1e-12)


def test_f1_max_parallel_path(parallel_paths):
    rng = np.random.default_rng(4)
    labels = rng.random(5000) < 0.1
    scores = (rng.normal(size=5000) + labels).astype(np.float32)
    best, _ = f1_max(scores, labels)
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores[labels]))
    assert best == pytest.approx(brute, abs=1e-12)


def test_f1_at_threshold_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.random(100) < 0.5
    scores = rng.random(100)
    for t in (0.0, 0.3, 0.9, 2.0):
        assert f1_at_threshold(scores, labels, t) == pytest.approx(
            f1_score(labels, scores >= t, zero_division=0.0), abs=1e-12)
    with pytest.raises(ValueError, match="at least one anomalous"):
        f1_max(scores, np.zeros(100))


# ---------------------------------------------------------------------------- ROC
@pytest.mark.parametrize("ties", [False, True])
def test_roc_points_match_sklearn(ties):
    rng = np.random.default_rng(1)
    labels = rng.random(400) < 0.3
    scores = rng.normal(size=400) + labels
    if ties:
        scores = np.round(scores, 1)
    fpr, tpr, thresholds = roc_points(scores, labels)
    fpr_ref, tpr_ref, thr_ref = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_ref, atol=1e-12)
    np.testing.assert_allclose(tpr, tpr_ref, atol=1e-12)
    np.testing.assert_allclose(thresholds[1:], thr_ref[1:])
    assert thresholds[0] == np.inf


def test_roc_points_subsampled_are_exact_points():
    rng = np.random.default_rng(2)
    labels = rng.random(20_000) < 0.2
    scores = rng.normal(size=20_000) + labels
    fpr, tpr, thresholds = roc_points(scores, labels, max_points=101)
    assert len(fpr) <= 101
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    for f, t, thr in zip(fpr[1::10], tpr[1::10], thresholds[1::10]):
        assert f == pytest.approx(np.mean(scores[~labels] >= thr))
        assert t == pytest.approx(np.mean(scores[labels] >= thr))
    assert np.trapezoid(tpr, fpr) == pytest.approx(image_auroc(scores, labels), abs=2e-3)


# ----------------------------------------------------------------------- evaluate
def test_evaluate_keys():
    rng = np.random.default_rng(0)
    masks = blob_masks(rng, 6, 16, 16)
    labels = masks.reshape(6, -1).any(1)
    maps = random_maps(rng, masks, ties=False)
    scores = maps.reshape(6, -1).max(1)
    full = evaluate(scores, labels, maps, masks)
    assert set(full) == {"image_auroc", "image_f1_max", "pixel_auroc", "aupro"}
    assert full["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert all(0.0 <= v <= 1.0 for v in full.values())
    assert set(evaluate(scores, labels)) == {"image_auroc", "image_f1_max"}
    # labelled folders: masks all zero -> image metrics only
    assert set(evaluate(scores, labels, maps, np.zeros_like(masks))) == {"image_auroc",
                                                                         "image_f1_max"}


# -------------------------------------------------------------------------- speed
def _speedup(n_maps: int, size: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    masks = np.zeros((n_maps, size, size), dtype=bool)
    masks[1::3, size // 4:size // 2, size // 3:size // 2] = True
    maps = rng.standard_normal(masks.shape, dtype=np.float32) + masks
    start = time.perf_counter()
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    sklearn_s = time.perf_counter() - start
    ours_s = np.inf
    for _ in range(2):
        start = time.perf_counter()
        ours = pixel_auroc(maps, masks)
        ours_s = min(ours_s, time.perf_counter() - start)
    return sklearn_s / ours_s, ours, expected


def test_pixel_auroc_faster_than_sklearn():
    ratio, ours, expected = _speedup(32, 256)  # 2.1 M pixels
    assert ours == pytest.approx(expected, abs=1e-9)
    assert ratio > 2.0, f"pixel_auroc only {ratio:.1f}x faster than scikit-learn on 2 M pixels"


@pytest.mark.slow
def test_pixel_auroc_10x_faster_than_sklearn_on_50m_pixels():
    ratio, ours, expected = _speedup(760, 256)
    assert ours == pytest.approx(expected, abs=1e-9)
    assert ratio >= 10.0, f"pixel_auroc only {ratio:.1f}x faster than scikit-learn on 50 M pixels"
