"""RLR (chapter 5): the masks, the reference attentions, the identity shortcut, and a short
unified training on the embedded default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adlib.training.features import FeatureCache
from adlib.chapters.rlr.model import (VARIANTS, LevelReconstructor, RLRConfig, RLRDetector,
                              ReconstructionBlock, anomaly_map, build_rlr)
from adlib.nn import count_parameters
from adlib.nn.reference_attention import (LocalCrossAttention, MaskedLearnableKeyAttention,
                                          attention_weights,
                                          neighbourhood_mask, sincos_position_encoding_2d,
                                          window_mask)

H = W = 6
N = H * W



def _idx(r, c):
    return r * W + c


def _square(r, c, size):
    k = size // 2
    return {_idx(i, j) for i in range(r - k, r + k + 1) for j in range(c - k, c + k + 1)
            if 0 <= i < H and 0 <= j < W}


def test_masks_mark_exactly_the_neighbourhood_and_the_window():
    for r, c in [(0, 0), (2, 3), (5, 5)]:
        near = _square(r, c, 3)
        hidden = set(np.flatnonzero(~neighbourhood_mask(H, W, 3)[_idx(r, c)].numpy()))
        seen = set(np.flatnonzero(window_mask(H, W, 3)[_idx(r, c)].numpy()))
        assert hidden == near and seen == near
        assert _idx(r, c) in hidden  # a token never sees itself in MLKA
    assert neighbourhood_mask(H, W, 5).any(1).all(), "no fully masked row (SDPA would give NaN)"


def test_a_mask_that_would_hide_everything_is_refused():
    with pytest.raises(ValueError, match="window"):
        neighbourhood_mask(4, 4, 5)  # the 5x5 square around (1,1)/(2,2) covers the whole 4x4 grid
    with pytest.raises(ValueError, match="odd"):
        window_mask(6, 6, 4)


def test_mlka_output_ignores_the_tokens_own_neighbourhood():
    torch.manual_seed(0)
    mlka = MaskedLearnableKeyAttention(16, 4, grid=(H, W), window=3).eval()
    tokens, reference = torch.randn(1, N, 16), torch.randn(N, 16)
    p = _idx(2, 3)
    changed = tokens.clone()
    for j in _square(2, 3, 3) - {p}:
        changed[0, j] += 10 * torch.randn(16)  # the neighbours' values, not the token's query
    with torch.no_grad():
        before, after = mlka(tokens, reference), mlka(changed, reference)
        weights = attention_weights(mlka, tokens, reference)
    torch.testing.assert_close(after[0, p], before[0, p])
    far = _idx(5, 0)
    assert not torch.allclose(after[0, far], before[0, far]), "tokens that see the changes must change"
    assert weights[0, :, p, sorted(_square(2, 3, 3))].abs().max() == 0
    assert torch.isfinite(before).all()


def test_lca_sees_only_the_reference_inside_its_window():
    torch.manual_seed(0)
    lca = LocalCrossAttention(16, 4, grid=(H, W), window=3).eval()
    tokens, reference = torch.randn(1, N, 16), torch.randn(N, 16)
    p, window = _idx(2, 3), _square(2, 3, 3)
    outside, inside = reference.clone(), reference.clone()
    for j in set(range(N)) - window:
        outside[j] += 10 * torch.randn(16)
    inside[_idx(1, 2)] += 10 * torch.randn(16)
    with torch.no_grad():
        base = lca(tokens, reference)[0, p]
        torch.testing.assert_close(lca(tokens, outside)[0, p], base)
        assert not torch.allclose(lca(tokens, inside)[0, p], base)
        weights = attention_weights(lca, tokens, reference)[0, :, p]
    assert set(np.flatnonzero(weights.sum(0).numpy() > 0)) == window


def test_position_encoding_is_distinct_per_token():
    pe = sincos_position_encoding_2d(H, W, 32)
    assert pe.shape == (N, 32)
    assert torch.cdist(pe, pe).add(torch.eye(N) * 1e3).min() > 0.1


def _identity_error(variant, steps=150, seed=0):
    """Train one level to reconstruct RANDOM Gaussian tokens (nothing is "normal" about
    them: the identity is the only map that fits them all), then return the relative error
    ||out - x|| / ||x|| on fresh random tokens, i.e. how well unseen tokens pass through."""
    residual, attention = VARIANTS[variant]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two busy ones
    try:
        torch.manual_seed(seed)
        level = LevelReconstructor(8, 32, (H, W), 3, blocks=1, heads=4, residual=residual,
                                   attention=attention)
        opt = torch.optim.Adam(level.parameters(), lr=3e-3)
        for _ in range(steps):
            x = torch.randn(16, 8, H, W)
            loss = torch.nn.functional.mse_loss(level(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        level.eval()
        with torch.no_grad():
            x = torch.randn(64, 8, H, W)
            return float((level(x) - x).norm() / x.norm())
    finally:
        torch.set_num_threads(threads)


def test_residual_learns_the_identity_the_reference_model_cannot():
    """The shortcut of Sec. 3. With a residual connection the encoder learns to copy any
    token, so an anomalous token would come out unchanged (zero anomaly score). MLKA + LCA
    without residual takes its values from the reference and from OTHER tokens only; the
    token itself enters only through its attention weights (a lossy soft code), so with the
    same budget it cannot pass unseen tokens through unchanged."""
    residual = _identity_error("Residual+Self Att.")
    reference = _identity_error("MLKA+LCA")
    assert residual < 0.12, f"residual variant failed to learn the identity (rel. error {residual:.3f})"
    assert reference > 0.15 and reference > 2 * residual, \
        f"MLKA+LCA copied unseen tokens (rel. error {reference:.3f} vs residual {residual:.3f})"


def test_without_residual_the_block_output_does_not_grow_with_the_anomaly():
    """Exact version of the same fact for one block: scale one token by 1000. The residual
    block's pre-norm sum contains the token itself; MLKA + LCA mixes only reference values
    and the values of tokens outside the neighbourhood, so it stays bounded."""
    torch.manual_seed(0)
    tokens, reference = torch.randn(1, N, 16), torch.randn(N, 16)
    p = _idx(3, 3)
    big = tokens.clone()
    big[0, p] *= 1000
    sizes = {}
    for name in ("Residual+Self Att.", "MLKA+LCA"):
        residual, attention = VARIANTS[name]
        block = ReconstructionBlock(16, 4, (H, W), 3, attention=attention, residual=residual).eval()
        with torch.no_grad():
            mixed = sum(block.weights[n] * block.branches[n](big, reference) for n in block.names)
            sizes[name] = float((big[0, p] + mixed[0, p] if residual else mixed[0, p]).norm())
    assert sizes["Residual+Self Att."] > 100 * sizes["MLKA+LCA"]
    bound = 20 * (tokens.abs().max() + reference.abs().max()) * 16
    assert sizes["MLKA+LCA"] < bound


def test_variants_are_configurations_of_one_block():
    shapes = [(8, H, W)]
    params = {}
    for name, (residual, attention) in VARIANTS.items():
        det_model = LevelReconstructor(8, 16, (H, W), 3, blocks=1, heads=4, residual=residual,
                                       attention=attention)
        block = det_model.blocks[0]
        assert block.residual == residual and block.names == attention
        params[name] = sum(p.numel() for p in det_model.parameters())
        x = torch.randn(2, *shapes[0])
        assert det_model(x).shape == x.shape
    assert params["MLKA+LCA"] > params["LCA"]  # two branches, two sets of projections


def test_build_rlr_follows_the_config_and_its_overrides():
    shapes = {1: (8, 16, 16), 2: (16, 8, 8), 3: (24, 4, 4)}
    small = RLRConfig(stages=(2, 3), hidden=(4, 8, 16), windows=(5, 3, 3), blocks=1, heads=2)
    model = build_rlr(shapes, small)
    assert len(model.levels) == 2
    feats = [torch.randn(2, *shapes[s]) for s in (2, 3)]
    assert [r.shape for r in model(feats)] == [f.shape for f in feats]
    # an override changes only what it names: a residual self-attention block has no reference
    # branch pair, so fewer parameters than MLKA + LCA at the same sizes
    assert count_parameters(build_rlr(shapes, small, variant="Residual+Self Att.")) < count_parameters(model)
    assert len(build_rlr(shapes, small, stages=(1, 2, 3)).levels) == 3
    with pytest.raises(ValueError, match="no feature shape for stages"):
        build_rlr({2: shapes[2]}, small)


def test_loss_and_map_are_zero_for_a_perfect_reconstruction():
    feats = [torch.rand(2, 8, 6, 6) + 0.1, torch.rand(2, 16, 3, 3) + 0.1]
    maps = anomaly_map(feats, feats, 24, sigma=0)
    assert maps.shape == (2, 24, 24) and maps.abs().max() < 1e-5
    worse = anomaly_map([f * 0 + 1 for f in feats], feats, 24, sigma=0)
    assert worse.min() > 0


def test_features_are_extracted_once_per_image(embedded_root):
    from adlib.data.sources import open_split

    cache = FeatureCache(stages=(1, 2, 3), image_size=64, show_progress=False)
    train = open_split("embedded", embedded_root, "brick", "train", 64)
    det = RLRDetector(cache, stages=(2, 3), hidden=(8, 16, 32), windows=(5, 3, 3), blocks=1,
                      heads=4, epochs=1, batch_size=32, lr=1e-3, progress=False, device="cpu")
    det.fit(train)
    assert cache.images_extracted == len(train)
    det.fit(open_split("embedded", embedded_root, "brick", "train", 64))  # a new object, same split
    assert cache.images_extracted == len(train), "the backbone ran again on cached images"


@pytest.mark.slow
def test_short_unified_training_ranks_anomalous_images_higher(embedded_root):
    from adlib.training.evaluation import evaluate_unified

    torch.manual_seed(0)
    cache = FeatureCache(stages=(2, 3), image_size=128, show_progress=False)
    det = RLRDetector(cache, stages=(2, 3), hidden=(16, 32, 64), windows=(7, 5, 3), blocks=1,
                      heads=4, epochs=8, batch_size=16, lr=1e-3, standardize=True, map_sigma=2,
                      progress=False, device="cpu")
    results = evaluate_unified(det, "embedded", embedded_root, ["brick", "coins"], 128,
                               show_progress=False)
    aurocs = {r.category: r.metrics["image_auroc"] for r in results}
    assert np.mean(list(aurocs.values())) > 0.6, aurocs
    assert len(det.history) == 8 and det.history["train_loss"].iloc[-1] < det.history["train_loss"].iloc[0]
    # ... and by more than the same model untrained (epochs 0: the study's sanity reference)
    untrained = RLRDetector(cache, stages=(2, 3), hidden=(16, 32, 64), windows=(7, 5, 3), blocks=1,
                            heads=4, epochs=0, standardize=True, map_sigma=2, progress=False,
                            device="cpu")
    before = evaluate_unified(untrained, "embedded", embedded_root, ["brick", "coins"], 128,
                              show_progress=False)
    gain = np.mean(list(aurocs.values())) - np.mean([r.metrics["image_auroc"] for r in before])
    assert gain > 0.05, (aurocs, [r.metrics for r in before])


def test_the_rlr_test_curve_ends_in_the_uninterrupted_run(embedded_root, tmp_path, capsys):
    """The study's curve runner (test split scored after every epoch) gives the rows of its
    plain runner, so curve rows may replace them under the same model hash."""
    from adlib.chapters.profiles import resolve
    from adlib.study.load import load_study
    from adlib.study.spec import Cell
    from adlib.study.engine import run_study

    study = load_study("rlr")
    protocol = study.protocol(resolve("rlr", "smoke"))
    protocol.update(epochs=2, image_size=64)
    kw = dict(protocol=protocol, seeds=[0], categories=["brick", "coins"], dataset="embedded",
              data_root=embedded_root, out=tmp_path, show_progress=False)
    cells = [Cell("Table 3", "MLKA+LCA", {})]
    plain = run_study("rlr", cells, **kw)
    curved = run_study("rlr", cells, test_curve=True, **kw)
    assert curved.ran == 1
    assert "2 rows made again with their test curves; largest metric change against the rows " \
           "they replace: 0 " in capsys.readouterr().out
    for (_, a), (_, b) in zip(plain.rows.iterrows(), curved.rows.iterrows()):
        assert a["image_auroc"] == b["image_auroc"] and a["pixel_auroc"] == b["pixel_auroc"]
        assert b["test_curve"]["epoch"] == [0, 1, 2]
        assert b["test_curve"]["image_auroc"][-1] == pytest.approx(b["image_auroc"])
        assert len(b["train_curve"]["train_loss"]) == 2
