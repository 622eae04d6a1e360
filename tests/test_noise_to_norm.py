"""Noise-to-norm M-net (chapter 3): shapes at several sizes, SKFF's weights, the noise formula,
the size check, the residual-attention ablation flag, the MS-SSIM window."""

from __future__ import annotations

import pytest
import torch

from adlib.models.noise_to_norm import (MNet, add_noise, msssim_l1_loss, msssim_window,
                                        normalise)
from adlib.nn.mnet import SKFF, ResidualAttention


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (48, 80), (16, 16)])
def test_mnet_reconstructs_at_the_input_size_square_or_not(size):
    torch.manual_seed(0)
    model = MNet(width=8).eval()
    x = torch.randn(2, 3, *size)
    assert model(x).shape == x.shape
    scales = model.scales(x)
    assert [s.shape[-2:] for s in scales] == [(size[0] // 2 ** k, size[1] // 2 ** k) for k in range(4)]


def test_a_size_not_divisible_by_16_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="divisible by 16.*64x48"):
        MNet(width=8)(torch.zeros(1, 3, 72, 50))


def test_skff_weights_sum_to_one_over_the_branches():
    torch.manual_seed(0)
    skff = SKFF(16, 4)
    feats = [torch.randn(3, 16, 8, 8) * (k + 1) for k in range(4)]
    w = skff.weights(feats)
    assert w.shape == (3, 4, 16)
    assert torch.allclose(w.sum(1), torch.ones(3, 16), atol=1e-6) and (w > 0).all()
    # equal branches: the fusion returns that branch whatever the weights
    same = [feats[0]] * 4
    assert torch.allclose(skff(same), feats[0], atol=1e-5)
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(MNet(width=8).skff_weights(x).sum(1), torch.ones(1, 8), atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.6])
def test_noise_blends_the_image_with_gaussian_noise_of_mean_and_std_one_half(lam):
    x0 = torch.full((64, 3, 64, 64), -0.4)
    x = add_noise(x0, lam, torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - ((1 - lam) * -0.4 + lam * 0.5)) < 3e-3
    assert abs(x.std().item() - lam * 0.5) < 3e-3
    assert torch.equal(normalise(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_residual_attention_or_a_1x1_convolution_after_each_concatenation():
    full, plain = MNet(width=8, attention=True), MNet(width=8, attention=False)
    assert all(isinstance(m, ResidualAttention) for m in (*full.encoder, *full.decoder))
    assert all(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in (*plain.encoder, *plain.decoder))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(plain) < n(full)


def test_the_loss_is_zero_for_a_perfect_reconstruction_and_the_window_fits_the_size():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert msssim_l1_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert msssim_l1_loss(torch.zeros_like(x), x).item() > 0.1
    assert msssim_window(256) == 11 and msssim_window(128) == 7 and msssim_window(64) == 3


@pytest.mark.slow
def test_short_training_ranks_anomalous_images_above_the_untrained_model():
    import numpy as np

    from adlib.data.sources import open_split, resolve_root
    from adlib.evaluation import evaluate_categories
    from adlib.models.noise_to_norm import NoiseToNormDetector

    root = resolve_root("embedded")
    kw = dict(width=8, lam=0.3, lr=2e-3, batch_size=8, map_sigma=2, device="cpu", progress=False)

    def auroc(epochs):
        det = NoiseToNormDetector(epochs=epochs, t_max=max(epochs, 1), **kw)
        res = evaluate_categories(lambda: det, "embedded", root, ["brick"], 64, show_progress=False)
        return res[0].metrics["image_auroc"], res[0].metrics["pixel_auroc"], det

    trained_image, trained_pixel, det = auroc(40)
    untrained_image, untrained_pixel, _ = auroc(0)
    assert det.validation_size == round(0.2 * len(open_split("embedded", root, "brick", "train", 64)))
    assert "val_loss" in det.history and np.isfinite(det.history["val_loss"]).all()
    assert trained_image > untrained_image + 0.03, (trained_image, untrained_image)
    assert trained_pixel > untrained_pixel + 0.1, (trained_pixel, untrained_pixel)
