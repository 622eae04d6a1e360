"""Noise-to-norm reconstruction with an M-net (separate per-category models).

Written from the paper (noise_to_norm_mnet); the chapter's deviations table says where the book
differs from it or guesses. The paper has no public code and none was copied. Per image::

    normalise  x0 = (image - 0.5) / 0.5                           (mean 0.5, std 0.5 per channel)
    noise      x = (1 - lam) * x0 + lam * eps,  eps ~ N(0.5, 0.5)  (Eq. 1; lam = 0.3)
    M-net      a U-Net with 4 down-samplings (sides divisible by 16); every encoder depth also
               receives x bilinearly downsampled to it; PixelUnshuffle / PixelShuffle + 1x1
               convolutions resample; a residual attention module after every concatenation
               (1x1 convolutions change the channels in both its paths; or, the paper's
               ablation, only a 1x1 convolution); the decoder's four finest scales, upsampled,
               fused by SKFF, then a 3x3 convolution to the image; 3x3 convolutions pad by
               reflection
    loss       alpha * (1 - MS-SSIM) + (1 - alpha) * G_sigma * L1   (Eq. 9; alpha 0.84; MS-SSIM
               from pytorch-msssim, below 176 px with a smaller Gaussian window than 11, which its
               five scales need; or the paper's Eq. 7: msssim="eq7")
    map        alpha * (1 - SSIM) averaged over Gaussian windows sigma = 0.5 ... 8 (or Eq. 7 per
               pixel), plus (1 - alpha) * |x0 - y|, per pixel; Gaussian smoothing; image score =
               max (a guess), optionally without a border strip (``score_border``)

Where this differs from the paper, and the guesses where it is silent, are declared as data in
``adlib.chapters.noise_to_norm.study.DEVIATIONS`` (the chapter's deviations table). 20 % of the
training images are held out for early stopping (never the test split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from skimage.metrics import structural_similarity
from torch import nn
from torch.utils.data import TensorDataset

from adlib.nn.maps import gaussian_smooth
from adlib.nn.mnet import SKFF, Down, Up, merge_block
from adlib.training.detector import Detector, image_scores, not_fitted

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)   # Wang et al.'s five scales
MAP_SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0)                       # Zhao et al.'s Gaussian windows


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> mean 0.5, std 0.5 per channel, i.e. [-1, 1]."""
    return (images - 0.5) / 0.5


def add_noise(x0: torch.Tensor, lam: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 1: ``(1 - lam) * x0 + lam * eps`` with ``eps ~ N(0.5, 0.5)`` (std 0.5)."""
    if lam == 0:
        return x0
    eps = 0.5 + 0.5 * torch.randn(x0.shape, generator=generator, device=x0.device if generator is None
                                  else generator.device, dtype=x0.dtype).to(x0.device)
    return (1 - lam) * x0 + lam * eps


class MNet(nn.Module):
    """The reconstruction network: ``forward(x (B, 3, H, W)) -> (B, 3, H, W)``.

    Args:
        width: channels at full resolution; ``widths`` doubles per depth up to ``8 * width``.
        attention: residual attention modules after each concatenation (False: 1x1 convolutions).
        image_channels: inputs' channels (3).
        padding: the 3x3 convolutions' border, ``"reflect"`` (the book's choice: a zero frame
            is something the network must learn to undo, and its error is read as an anomaly)
            or ``"zeros"`` (PyTorch's default); the paper does not say.
    """

    depth = 4  # down-samplings: sides must be divisible by 2 ** depth

    def __init__(self, width: int = 32, attention: bool = True, image_channels: int = 3,
                 padding: str = "reflect"):
        super().__init__()
        pad = {"padding": 1, "padding_mode": padding}
        w = [width * min(2 ** k, 8) for k in range(self.depth + 1)]
        self.widths, self.padding = w, padding
        feed = max(width // 2, 4)  # channels the downsampled image brings to each depth
        self.inputs = nn.ModuleList(nn.Conv2d(image_channels, feed, 3, **pad) for _ in w)
        self.encoder = nn.ModuleList(
            [merge_block(feed, w[0], attention, padding)]
            + [merge_block(w[k] + feed, w[k], attention, padding) for k in range(1, len(w))])
        self.down = nn.ModuleList(Down(w[k], w[k + 1]) for k in range(self.depth))
        self.up = nn.ModuleList(Up(w[k + 1], w[k]) for k in range(self.depth))
        self.decoder = nn.ModuleList(merge_block(2 * w[k], w[k], attention, padding) for k in range(self.depth))
        self.to_fused = nn.ModuleList(nn.Conv2d(w[k], width, 1) for k in range(4))
        self.skff = SKFF(width, 4)
        self.head = nn.Conv2d(width, image_channels, 3, **pad)

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        step = 2 ** self.depth
        if h % step or w % step:
            msg = (f"the M-net halves the image {self.depth} times, so its sides must be divisible "
                   f"by {step}; got {h}x{w}. Resize to e.g. {h // step * step or step}x"
                   f"{w // step * step or step} (image_size) first")
            raise ValueError(msg)
        if self.padding == "reflect" and min(h, w) < 2 * step:
            msg = (f"reflect padding needs at least 2x2 pixels at the M-net's bottom, so sides of "
                   f"at least {2 * step}; got {h}x{w}. Use a larger image_size, or padding='zeros'")
            raise ValueError(msg)

    def scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The decoder's four finest outputs (full, 1/2, 1/4, 1/8 resolution), finest first."""
        self.check_size(x)
        feats = []
        for k, (inp, enc) in enumerate(zip(self.inputs, self.encoder)):
            image = x if k == 0 else F.interpolate(x, scale_factor=0.5 ** k, mode="bilinear",
                                                   align_corners=False)
            fed = inp(image)
            feats.append(enc(fed if k == 0 else torch.cat([self.down[k - 1](feats[-1]), fed], 1)))
        y, outs = feats[-1], []
        for k in reversed(range(self.depth)):
            y = self.decoder[k](torch.cat([self.up[k](y), feats[k]], 1))
            outs.append(y)
        return outs[::-1]

    def fuse(self, scales: list[torch.Tensor]) -> list[torch.Tensor]:
        size = scales[0].shape[-2:]
        return [F.interpolate(p(s), size=size, mode="bilinear", align_corners=False) if i else p(s)
                for i, (p, s) in enumerate(zip(self.to_fused, scales))]

    def skff_weights(self, x: torch.Tensor) -> torch.Tensor:
        """SKFF's weights ``(B, 4, width)`` for the scales full, 1/2, 1/4, 1/8."""
        return self.skff.weights(self.fuse(self.scales(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.skff(self.fuse(self.scales(x))))


# ------------------------------------------------------------------------ loss and maps

def msssim_window(size: int) -> int:
    """The largest odd Gaussian window (at most the standard 11) that pytorch-msssim accepts for
    an image side ``size``: it needs ``size > (win_size - 1) * 16`` for its five scales."""
    win = 11
    while win > 1 and size <= (win - 1) * 16:
        win -= 2
    return win


def msssim_l1_loss(y: torch.Tensor, x0: torch.Tensor, alpha: float = 0.84,
                   sigma: float = MAP_SIGMAS[-1], form: str = "pyramid") -> torch.Tensor:
    """Eq. 9: ``alpha * (1 - MS-SSIM) + (1 - alpha) * G_sigma * L1`` on normalised images.

    ``form="pyramid"``: pytorch-msssim's MS-SSIM (Wang et al.: five scales of a halving image
    pyramid, each scale's mean contrast-structure term multiplied); ``"eq7"``: the paper's
    Eq. 7-8, the mean over pixels of :func:`msssim_map` (Gaussian windows sigma 0.5 ... 8 at full
    resolution, multiplied per pixel)."""
    a, b = (y.float() + 1) / 2, (x0.float() + 1) / 2
    if form == "pyramid":
        structural = 1 - ms_ssim(a, b, data_range=1.0, win_size=msssim_window(min(a.shape[-2:])))
    elif form == "eq7":
        structural = 1 - msssim_map(a, b).mean()
    else:
        msg = f"MS-SSIM form {form!r}: expected 'pyramid' (pytorch-msssim) or 'eq7' (the paper's Eq. 7)"
        raise ValueError(msg)
    l1 = gaussian_smooth((a - b).abs().mean(1), sigma).mean()
    return alpha * structural + (1 - alpha) * l1


def msssim_map(a: torch.Tensor, b: torch.Tensor, sigmas: Sequence[float] = MAP_SIGMAS,
               k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Eq. 7 per pixel: ``l_M(p) * prod_j cs_j(p)`` with Gaussian windows ``sigmas`` at full
    resolution (Zhao et al.'s form), Eqs. 2-6 for the means, variances and covariance.

    ``(B, C, H, W)`` images in [0, 1] -> ``(B, H, W)``, channels averaged. ``C1 = k1 ** 2``,
    ``C2 = k2 ** 2`` (SSIM's constants for a data range of 1; the paper prints 0.01 and 0.03,
    SSIM's K1 and K2). Windows reach past the border by reflection (:func:`gaussian_smooth`);
    a negative ``cs`` is set to 0, as pytorch-msssim does, so that two negatives cannot
    multiply into a match."""
    n, c, h, w = a.shape
    x, y = a.reshape(n * c, h, w), b.reshape(n * c, h, w)
    product = torch.ones_like(x)
    for s in sigmas:
        mx, my = gaussian_smooth(x, s), gaussian_smooth(y, s)
        vx = gaussian_smooth(x * x, s) - mx ** 2
        vy = gaussian_smooth(y * y, s) - my ** 2
        cov = gaussian_smooth(x * y, s) - mx * my
        product = product * ((2 * cov + k2 ** 2) / (vx + vy + k2 ** 2)).clamp(min=0)
    luminance = (2 * mx * my + k1 ** 2) / (mx ** 2 + my ** 2 + k1 ** 2)   # at the largest window
    return (luminance * product).reshape(n, c, h, w).mean(1)


def error_maps(y: torch.Tensor, x0: torch.Tensor, alpha: float = 0.84,
               sigmas: Sequence[float] = MAP_SIGMAS, form: str = "pyramid") -> np.ndarray:
    """Per-pixel ``alpha * (1 - SSIM) + (1 - alpha) * L1`` maps ``(B, H, W)`` (numpy), channels
    averaged. ``form="pyramid"``: SSIM maps from scikit-image at each Gaussian window ``sigma``,
    averaged; ``"eq7"``: the paper's per-pixel MS-SSIM, :func:`msssim_map`."""
    a, b = (y.float().cpu() + 1) / 2, (x0.float().cpu() + 1) / 2
    l1 = (a - b).abs().mean(1).numpy()
    if form == "eq7":
        return (alpha * (1 - msssim_map(a, b, sigmas).numpy()) + (1 - alpha) * l1).astype(np.float32)

    a, b = a.permute(0, 2, 3, 1).numpy(), b.permute(0, 2, 3, 1).numpy()
    ssim = np.stack([np.mean([structural_similarity(ai, bi, data_range=1.0, channel_axis=-1,
                                                    gaussian_weights=True, sigma=s,
                                                    use_sample_covariance=False, full=True)[1].mean(-1)
                              for s in sigmas], axis=0) for ai, bi in zip(a, b)])
    return (alpha * (1 - ssim) + (1 - alpha) * l1).astype(np.float32)


def inner(maps: torch.Tensor, border: int | str) -> torch.Tensor:
    """``(B, H, W)`` maps without a strip of ``border`` pixels on each side (0: all of them;
    ``"window"``: as wide as the loss's SSIM window at this size, :func:`msssim_window`)."""
    if border == "window":
        border = msssim_window(min(maps.shape[-2:]))
    if not isinstance(border, int) or border < 0:
        msg = f"score_border {border!r}: expected a number of pixels (0 for none) or 'window'"
        raise ValueError(msg)
    if border == 0:
        return maps
    if 2 * border >= min(maps.shape[-2:]):
        msg = (f"score_border {border} leaves nothing of a {maps.shape[-2]}x{maps.shape[-1]} map; "
               f"use fewer than {min(maps.shape[-2:]) // 2} pixels")
        raise ValueError(msg)
    return maps[..., border:-border, border:-border]


# -------------------------------------------------------------------------------- detector

@dataclass
class NoiseToNormConfig:
    """Every knob of :class:`NoiseToNormDetector` (JSON-ready); defaults = the paper's."""

    lam: float = 0.3
    width: int = 32
    attention: bool = True
    alpha: float = 0.84
    epochs: int = 500
    batch_size: int = 8
    lr: float = 1e-4              # the paper's "1e-6 = eta_min" reads like a typo: a parameter
    eta_min: float = 1e-6
    t_max: int = 100
    patience: int = 20
    val_fraction: float = 0.2
    test_noise: bool = True       # corrupt test images like training ones (a guess; seeded)
    map_sigma: float = 4.0
    padding: str = "reflect"      # the 3x3 convolutions' border (a choice: the paper is silent)
    score_border: int | str = 0   # pixels ignored before the maximum ("window": the SSIM window)
    msssim: str = "pyramid"       # "eq7": the paper's Eq. 7 in the loss and the map
    seed: int = 0


def images_of(data: Any) -> torch.Tensor:
    """All images of a data set (items ``{"image": (3, H, W)}`` in [0, 1]) as one tensor."""
    if isinstance(data, torch.Tensor):
        return data
    return torch.stack([data[i]["image"] for i in range(len(data))])


def _loss(lam: float, alpha: float, form: str = "pyramid"):
    def loss(model: MNet, batch) -> dict[str, torch.Tensor]:
        x0 = normalise(batch[0] if isinstance(batch, (list, tuple)) else batch)
        return {"loss": msssim_l1_loss(model(add_noise(x0, lam)), x0, alpha, form=form)}
    loss.__qualname__ = "msssim_l1_loss"
    return loss


class NoiseToNormDetector(Detector):
    """fit / predict wrapper for one category (:class:`adlib.training.detector.Detector`): an
    :class:`MNet` trained on noisy normal images with :func:`adlib.training.train.fit` (AdamW betas
    (0.5, 0.999), cosine schedule, early stopping on the held-out 20 %, AMP on CUDA,
    checkpoints). ``predict(test)`` returns image scores and maps ``(N, H, W)`` (numpy).
    Keyword arguments override :class:`NoiseToNormConfig`; ``epochs=0`` keeps the model
    untrained (the sanity reference)."""

    config_class, name, fit_call = NoiseToNormConfig, "noise-to-norm", "fit(train_set)"

    def __init__(self, *, device: str | torch.device = "auto", progress: bool | str = True,
                 checkpoint_dir: str | None = None, **config: Any):
        super().__init__(device=device, progress=progress, checkpoint_dir=checkpoint_dir, **config)
        self.validation_size = 0

    def split(self, n: int) -> tuple[list[int], list[int]]:
        """Seeded train / validation indices of ``n`` training images (validation: 20 %)."""
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed)).tolist()
        k = max(1, round(self.config.val_fraction * n)) if self.config.val_fraction > 0 else 0
        return sorted(order[k:]), sorted(order[:k])

    def fit(self, train: Any) -> "NoiseToNormDetector":
        c = self.config
        images = images_of(train)
        torch.manual_seed(c.seed)
        self.model = MNet(c.width, c.attention, images.shape[1], c.padding)
        self.model.check_size(images)
        if c.epochs == 0:  # the untrained model: a sanity reference for the claims
            return self._untrained()
        fit_idx, val_idx = self.split(len(images))
        self.validation_size = len(val_idx)
        return self._timed_fit(
            _loss(c.lam, c.alpha, c.msssim), TensorDataset(images[fit_idx]),
            val_data=TensorDataset(images[val_idx]) if val_idx else None,
            optimizer=lambda p: torch.optim.AdamW(p, lr=c.lr, betas=(0.5, 0.999)),
            scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=c.t_max, eta_min=c.eta_min),
            patience=c.patience if val_idx else None, desc=f"M-net lam={c.lam:g}")

    @torch.no_grad()
    def reconstruct(self, data: Any, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0, noisy input, reconstruction)`` of every image, normalised, on the CPU."""
        self._require_fitted()
        x0 = normalise(images_of(data))
        generator = torch.Generator().manual_seed(10_000 + self.config.seed)  # same noise every call
        noisy = add_noise(x0, self.config.lam, generator) if self.config.test_noise else x0
        out = [self.model(x).float().cpu() for (x,) in self._batches([noisy], batch_size, dtype=None)]
        return x0, noisy, torch.cat(out)

    def anomaly_maps(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The smoothed maps ``(B, H, W)`` of images ``x0`` and their reconstructions ``y``
        (normalised, as :meth:`reconstruct` returns them)."""
        maps = torch.from_numpy(error_maps(y, x0, self.config.alpha, form=self.config.msssim))
        return gaussian_smooth(maps, self.config.map_sigma)

    def predict(self, test: Any) -> tuple[np.ndarray, np.ndarray]:
        x0, _, y = self.reconstruct(test)
        maps = self.anomaly_maps(x0, y)
        return image_scores(inner(maps, self.config.score_border)), maps.numpy()

    def pixel_threshold(self, train: Any, quantile: float = 0.99) -> float:
        """A map threshold from the held-out *normal* training images (never the test split):
        the ``quantile`` of their map values, for a thresholded prediction like the paper's Fig. 4."""
        images = images_of(train)
        _, val_idx = self.split(len(images))
        _, maps = self.predict(images[val_idx or list(range(len(images)))])
        return float(np.quantile(maps, quantile))


class MeanImageBaseline:
    """The trivial reference: a pixel's score is its distance to the mean training image
    (channel-averaged absolute difference, smoothed); image score = max."""

    def __init__(self, map_sigma: float = 4.0):
        self.map_sigma, self.mean, self.history, self.train_seconds = map_sigma, None, None, 0.0

    def fit(self, train: Any) -> "MeanImageBaseline":
        self.mean = images_of(train).mean(0)
        return self

    def predict(self, test: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None:
            raise not_fitted("mean-image reference")
        maps = gaussian_smooth((images_of(test) - self.mean).abs().mean(1), self.map_sigma)
        return image_scores(maps), maps.numpy()
