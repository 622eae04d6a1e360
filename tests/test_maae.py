"""MAAE (chapter 2): ANG's noise and the sign of its gradient, the channel attention's
transpose, FFM vs resize-and-concatenate, UniAD's neighbour mask, and a short unified
training on the embedded default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adlib.models.maae import (VARIANTS, MAAEDetector, ang_step, build_maae, channel_statistics,
                               maae_loss, reconstruction_error)
from adlib.nn.mixed_attention import (AdaptiveNoise, ChannelSelfAttention, FeatureFusion,
                                      SpatialSelfAttention)
from adlib.nn.reference_attention import neighbourhood_mask

CHANNELS = (4, 6, 8, 10)          # four levels, finest first
GRID = (4, 4)                     # the coarsest level's grid


def _levels(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, GRID[0] * 2 ** (3 - i), GRID[1] * 2 ** (3 - i), generator=g)
            for i, c in enumerate(CHANNELS)]


def _model(variant="ANG+FFM+MAAE", **kw):
    torch.manual_seed(0)
    return build_maae(CHANNELS, GRID, variant=variant, hidden=16, layers=3, group=3, heads=2,
                      neighbour=3, **kw)


@pytest.fixture(scope="module")
def embedded_root():
    from adlib.data.sources import resolve_root

    return resolve_root("embedded")


def test_ang_noise_has_the_shape_and_scale_of_a_w_eps():
    ang = AdaptiveNoise(64, 32, amplitude=0.5, init=2.0).train()
    x = torch.zeros(200, 64, 32)
    noise = ang(x) - x
    assert noise.shape == x.shape
    assert abs(noise.std().item() - 0.5 * 2.0) < 0.02 and abs(noise.mean().item()) < 0.01
    with torch.no_grad():
        ang.weight[:, :16] = 0.0  # W = 0 on half the channels: no noise there
    noise = ang(x) - x
    assert noise[..., :16].abs().max() == 0 and noise[..., 16:].std() > 0.9
    assert torch.equal(ang.eval()(x), x), "ANG adds noise in training only"
    with pytest.raises(ValueError, match="N x C"):
        ang.train()(torch.zeros(2, 63, 32))


def _error_with_seeded_noise(model, levels, seed=1):
    torch.manual_seed(seed)
    y, x = model(levels)
    return reconstruction_error(y, x).mean()


def test_gradient_reversal_gives_w_the_adversarial_gradient():
    levels = _levels()
    model = _model(ang_mode="reverse", lambda_re=0.0).train()
    w = model.ang.weight
    torch.manual_seed(1)
    plain = torch.autograd.grad(_plain_error(model, levels), [w])[0]  # d L_e / d W
    model.zero_grad()
    torch.manual_seed(1)
    maae_loss(model, levels)["loss"].backward()
    # W descends -lambda_ANG * L_e: its gradient is -0.6 times that of L_e
    assert torch.allclose(w.grad, -0.6 * plain, atol=1e-6)
    # ... so a descent step on W makes the reconstruction worse (same noise draw)
    before = _error_with_seeded_noise(model, levels).item()
    with torch.no_grad():
        w -= 0.5 * w.grad / w.grad.abs().max()
    assert _error_with_seeded_noise(model, levels).item() > before
    # the reconstructor still descends L_e
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.groups.parameters())


def _plain_error(model, levels):
    ang = model.ang
    mode, ang.mode = ang.mode, "alternate"  # no reversal: the plain gradient of L_e
    try:
        y, x = model(levels)
        return reconstruction_error(y, x).mean()
    finally:
        ang.mode = mode


def test_the_alternating_step_raises_the_error_and_touches_only_w():
    levels = _levels()
    model = _model(ang_mode="alternate", lambda_re=0.0).train()
    others = {n: p.detach().clone() for n, p in model.named_parameters() if n != "noise.weight"}
    before = _error_with_seeded_noise(model, levels).item()
    for _ in range(3):
        torch.manual_seed(1)
        ang_step(model, levels, torch.optim.SGD([model.ang.weight], lr=0.5))
    assert _error_with_seeded_noise(model, levels).item() > before
    assert all(torch.equal(p, others[n]) for n, p in model.named_parameters() if n != "noise.weight")
    # and the regulariser alone shrinks W
    model = _model(ang_mode="alternate", lambda_ang=0.0, lambda_re=1.0).train()
    norm = model.ang.weight.norm().item()
    ang_step(model, levels, torch.optim.SGD([model.ang.weight], lr=0.1))
    assert model.ang.weight.norm().item() < norm


def test_in_the_alternating_mode_the_reconstructor_step_leaves_w_alone():
    levels = _levels()
    model = _model(ang_mode="alternate").train()
    model.ang_optimizer = torch.optim.SGD([model.ang.weight], lr=0.1)
    out = maae_loss(model, levels)
    model.ang.weight.grad = None
    out["loss"].backward()
    assert model.ang.weight.grad is None


def test_channel_attention_attends_over_channels():
    torch.manual_seed(0)
    n, c = 12, 12  # N == C: dropping the transpose would still run, and this test would fail
    attention = ChannelSelfAttention(n).eval()
    x = torch.randn(2, n, c)
    assert attention.weights(x).shape == (2, c, c)
    perm = torch.randperm(c)
    # permuting the channels permutes the output's channels the same way ...
    assert torch.allclose(attention(x[..., perm]), attention(x)[..., perm], atol=1e-5)
    # ... while the tokens are not interchangeable (the projections act on the N positions)
    tperm = torch.randperm(n)
    assert not torch.allclose(attention(x[:, tperm]), attention(x)[:, tperm], atol=1e-3)


def test_ffm_and_resize_give_the_same_token_grid():
    levels = _levels()
    ffm, resize = FeatureFusion(list(CHANNELS), "ffm"), FeatureFusion(list(CHANNELS), "resize")
    a, b = ffm(levels), resize(levels)
    assert a.shape == b.shape == (3, sum(CHANNELS), *GRID)
    # the untrained FFM is a box-average pyramid: a constant level stays constant
    const = [torch.ones_like(f) for f in levels]
    assert torch.allclose(ffm(const)[:, :CHANNELS[0], 1:-1, 1:-1], torch.ones(1), atol=1e-6)
    assert not any(p.requires_grad for p in ffm.parameters()), "FFM is fixed unless trainable=True"
    assert all(p.requires_grad for p in FeatureFusion(list(CHANNELS), "ffm", trainable=True).parameters())
    with pytest.raises(ValueError, match="strides double"):
        ffm([levels[0], levels[1], levels[3], levels[3]])


def test_uniad_neighbour_mask_hides_exactly_the_window():
    h = w = 10
    torch.manual_seed(0)
    attention = SpatialSelfAttention(8, 2, (h, w), neighbour=7).eval()
    i = 4 * w + 5                                             # the query token at (4, 5)
    window = {r * w + c for r in range(1, 8) for c in range(2, 9)}
    assert set(np.flatnonzero(~neighbourhood_mask(h, w, 7)[i].numpy())) == window
    x = torch.randn(1, h * w, 8)
    base = attention(x)[0, i]
    for j, hidden in ((4 * w + 6, True), (1 * w + 2, True), (0, False), (9 * w + 9, False)):
        y = x.clone()
        y[0, j] += 5.0
        changed = not torch.allclose(attention(y)[0, i], base, atol=1e-6)
        assert changed != hidden, f"token {j} {'inside' if hidden else 'outside'} the window"


def test_variants_are_configurations_of_one_model():
    sizes = {v: sum(p.numel() for p in _model(v).parameters() if p.requires_grad) for v in VARIANTS}
    assert _model("ANG+FFM+MAAE").ang is not None and _model("MAAE").ang is None
    assert sizes["ANG"] - sizes["none"] == GRID[0] * GRID[1] * sum(CHANNELS)  # W only
    assert sizes["UniAD-like"] == sizes["none"]  # mask and jitter add no parameters
    y, x = _model("UniAD-like").eval()(_levels())
    assert y.shape == x.shape == (3, GRID[0] * GRID[1], sum(CHANNELS))


def test_a_grid_other_than_the_models_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="image size"):
        model([f[..., :f.shape[-2] // 2, :f.shape[-1] // 2] for f in _levels()])  # a 2x2 grid


def test_short_unified_training_ranks_anomalous_images_higher(embedded_root):
    from adlib.evaluation import evaluate_unified
    from adlib.features import FeatureCache

    cache = FeatureCache(stages=(0, 1, 2, 3), image_size=128, show_progress=False)
    kw = dict(hidden=32, layers=3, heads=4, batch_size=16, lr=1e-3, standardize=True,
              map_sigma=2, progress=False, device="cpu")
    cats = ["brick", "coins"]

    def mean_auroc(det):
        res = evaluate_unified(det, "embedded", embedded_root, cats, 128, show_progress=False)
        return np.mean([r.metrics["image_auroc"] for r in res]), det

    trained, det = mean_auroc(MAAEDetector(cache, epochs=8, **kw))
    untrained, _ = mean_auroc(MAAEDetector(cache, epochs=0, **kw))
    assert len(det.history) == 8 and det.history["train_loss"].iloc[-1] < det.history["train_loss"].iloc[0]
    assert trained > untrained + 0.05, (trained, untrained)


def test_channel_statistics_match_the_concatenated_features_and_are_applied_by_the_model():
    parts = [_levels(batch=2, seed=s) for s in (0, 1, 2)]
    stats = channel_statistics(parts)
    for level, (mean, std) in zip(zip(*parts), stats):
        joined = torch.cat(level)
        assert torch.allclose(mean, joined.mean((0, 2, 3)), atol=1e-5)
        assert torch.allclose(std, joined.std((0, 2, 3), unbiased=False), atol=1e-5)
    model = _model("ANG+MAAE").eval()   # resize fusion: the tokens are the standardised levels
    model.set_statistics(stats)
    tokens = model.tokens(parts[0])
    expected = (parts[0][-1] - stats[-1][0].view(1, -1, 1, 1)) / stats[-1][1].view(1, -1, 1, 1)
    assert torch.allclose(tokens[..., -CHANNELS[-1]:], expected.flatten(2).transpose(1, 2), atol=1e-5)
