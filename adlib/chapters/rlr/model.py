"""RLR: reconstructing features from a learnable reference (unified multi-class).

Written from the paper (rlr_learnable_reference) and its official code (read, not copied; the
chapter's deviations table says where the book differs). The pipeline, per image::

    features   a frozen ImageNet backbone (EfficientNet-b6 in the paper, Lite0 offline),
               stages 1-3 (strides 4/8/16), each averaged over its 3x3 neighbourhood
               (local aggregation, Eq. 1-2); computed ONCE per image and cached
    level j    tokens F_j (N_j x C_j) -> perturbation (training only) -> input projection
               + 2-D sin-cos position encoding -> K blocks -> output projection -> F_j^out
    reference  R_j: a learnable N_j x C_j parameter, embedded by the same input projection
               and position encoding (R_h)
    block k    Z_k = LN(MLKA(Y_{k-1}, R_h) + alpha * LCA(Y_{k-1}, R_h))     (Eq. 4, no residual)
               Y_k = LN(FFN(Z_k) + Z_k)
    loss       sum over levels of MSE(F_j^out, F_j) + mean(1 - cos(F_j^out, F_j))
    map        per level: channel-mean squared error + (1 - cos), bilinear to the image
               size, averaged over levels, Gaussian smoothing; image score = max

The Table-3 ablation variants are configurations of the same block (:data:`VARIANTS`):
``residual`` adds the input back before the first LayerNorm (the classic encoder), and
``attention`` names the parallel branches among ``self``, ``cross``, ``mlka``, ``lca``.

Typical use (one model for all categories, the paper's unified setting)::

    det = RLRDetector(stages=(1, 2, 3), hidden=(32, 64, 128), epochs=20)
    det.fit({"brick": train_brick, "grass": train_grass})   # or one data set: separate
    scores, maps = det.predict(test_brick)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adlib.nn.maps import gaussian_smooth
from adlib.nn.reference_attention import ReferenceAttention, sincos_position_encoding_2d
from adlib.training.detector import Detector, image_scores, training_sets
from adlib.training.features import CachedFeatures, FeatureCache

#: Table 3 of the paper: name -> (residual, attention branches).
VARIANTS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "Residual+Self Att.": (True, ("self",)),
    "Residual+Cross Att.": (True, ("cross",)),
    "Cross Att.": (False, ("cross",)),
    "MLKA": (False, ("mlka",)),
    "LCA": (False, ("lca",)),
    "Cross Att.+MLKA": (False, ("mlka", "cross")),
    "MLKA+LCA": (False, ("mlka", "lca")),
}

#: What each attention branch reads: (keys, values, mask).
BRANCHES: dict[str, tuple[str, str, str]] = {
    "self": ("tokens", "tokens", "none"),
    "cross": ("reference", "reference", "none"),
    "mlka": ("reference", "tokens", "neighbourhood"),
    "lca": ("reference", "reference", "window"),
}

PERTURBATIONS = ("none", "gaussian", "jitter")


# ------------------------------------------------------------------------------ modules

class FeaturePerturbation(nn.Module):
    """Noise on the input tokens during training (identity in eval mode).

    ``kind``: ``"none"``; ``"gaussian"`` adds N(0, sigma^2) (the paper's text);
    ``"jitter"`` is UniAD's feature jitter (what the official code uses): with probability
    ``prob`` per token, add ``randn * scale * ||token|| / C``. Input/output ``(B, N, C)``.
    """

    def __init__(self, kind: str = "jitter", sigma: float = 0.1, scale: float = 20.0, prob: float = 1.0):
        super().__init__()
        if kind not in PERTURBATIONS:
            msg = f"perturbation {kind!r}; expected one of {PERTURBATIONS}"
            raise ValueError(msg)
        self.kind, self.sigma, self.scale, self.prob = kind, sigma, scale, prob

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.training or self.kind == "none":
            return tokens
        if self.kind == "gaussian":
            return tokens + self.sigma * torch.randn_like(tokens)
        norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
        jitter = torch.randn_like(tokens) * norms * self.scale
        keep = (torch.rand(tokens.shape[:-1] + (1,), device=tokens.device) < self.prob).to(tokens.dtype)
        return tokens + jitter * keep


class ReconstructionBlock(nn.Module):
    """One encoder block of RLR (Eq. 4) or of a Table-3 variant.

    ``forward(Y (B, N, d), R_h (N, d)) -> (B, N, d)``::

        Z  = LN( [Y +] sum_b w_b * A_b(Y, R_h) )      ([Y +] only with residual=True)
        Y' = LN( FFN(Z) + Z )

    Branch weights ``w_b``: ``alpha`` for the branches whose values are the reference
    (``cross``, ``lca``) when another branch runs beside them, else 1, so
    ``("mlka", "lca")`` gives Eq. 4 exactly.
    """

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], window: int, *,
                 attention: Sequence[str] = ("mlka", "lca"), residual: bool = False,
                 alpha: float = 2.0, ffn_ratio: int = 4):
        super().__init__()
        unknown = [a for a in attention if a not in BRANCHES]
        if unknown or not attention:
            msg = f"attention branches {list(attention)}; expected a non-empty subset of {list(BRANCHES)}"
            raise ValueError(msg)
        self.names = tuple(attention)
        self.residual = residual
        self.branches = nn.ModuleDict({
            name: ReferenceAttention(dim, heads, keys=BRANCHES[name][0], values=BRANCHES[name][1],
                                     mask=BRANCHES[name][2], grid=grid, window=window)
            for name in self.names})
        several = len(self.names) > 1
        self.weights = {n: (alpha if several and BRANCHES[n][1] == "reference" else 1.0) for n in self.names}
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Linear(ffn_ratio * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        mixed = sum(self.weights[n] * self.branches[n](tokens, reference) for n in self.names)
        z = self.norm1(tokens + mixed if self.residual else mixed)
        return self.norm2(self.ffn(z) + z)


class LevelReconstructor(nn.Module):
    """Reconstruct one feature level from the learnable reference.

    ``forward(features (B, C, h, w)) -> (B, C, h, w)`` (the reconstruction). The input
    projection and the 2-D sin-cos position encoding embed both the tokens and the
    reference parameter ``(h * w, C)``; ``blocks`` :class:`ReconstructionBlock` follow,
    then a linear output projection back to ``C`` channels.
    """

    def __init__(self, channels: int, dim: int, grid: tuple[int, int], window: int, *,
                 blocks: int = 4, heads: int = 8, alpha: float = 2.0, residual: bool = False,
                 attention: Sequence[str] = ("mlka", "lca"), reference_std: float = 0.02,
                 perturbation: FeaturePerturbation | None = None):
        super().__init__()
        self.channels, self.dim, self.grid, self.window = channels, dim, tuple(grid), window
        n = grid[0] * grid[1]
        self.input_projection = nn.Linear(channels, dim)
        self.reference = nn.Parameter(torch.randn(n, channels) * reference_std)
        self.register_buffer("position", sincos_position_encoding_2d(grid[0], grid[1], dim).clone(),
                             persistent=False)
        self.blocks = nn.ModuleList(
            ReconstructionBlock(dim, heads, grid, window, attention=attention, residual=residual,
                                alpha=alpha) for _ in range(blocks))
        self.output_projection = nn.Linear(dim, channels)
        self.perturbation = perturbation or FeaturePerturbation("none")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.input_projection(tokens) + self.position

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        if (h, w) != self.grid or c != self.channels:
            msg = (f"level built for {self.channels}x{self.grid[0]}x{self.grid[1]} features, got "
                   f"{c}x{h}x{w}; the reference has one token per grid position, so the image "
                   "size and backbone must match those at construction")
            raise ValueError(msg)
        tokens = self.perturbation(features.flatten(2).transpose(1, 2))
        y = self.embed(tokens)
        reference = self.embed(self.reference)
        for block in self.blocks:
            y = block(y, reference)
        return self.output_projection(y).transpose(1, 2).reshape(b, c, h, w)


class RLR(nn.Module):
    """All levels: ``forward(list of (B, C_j, h_j, w_j)) -> list of reconstructions``.

    Args:
        shapes: ``(C_j, h_j, w_j)`` per level.
        hidden: ``d_j`` per level.
        windows: the odd window side per level (MLKA neighbourhood and LCA window alike).
            The other arguments go to every :class:`LevelReconstructor`.
    """

    def __init__(self, shapes: Sequence[tuple[int, int, int]], hidden: Sequence[int],
                 windows: Sequence[int], *, blocks: int = 4, heads: int = 8, alpha: float = 2.0,
                 residual: bool = False, attention: Sequence[str] = ("mlka", "lca"),
                 perturbation: str = "jitter", sigma: float = 0.1, jitter_scale: float = 20.0,
                 jitter_prob: float = 1.0):
        super().__init__()
        if not (len(shapes) == len(hidden) == len(windows)):
            msg = f"one hidden size and window per level: {len(shapes)} levels, {len(hidden)} hidden, {len(windows)} windows"
            raise ValueError(msg)
        noise = FeaturePerturbation(perturbation, sigma, jitter_scale, jitter_prob)
        self.levels = nn.ModuleList(
            LevelReconstructor(c, d, (h, w), k, blocks=blocks, heads=heads, alpha=alpha,
                               residual=residual, attention=attention, perturbation=noise)
            for (c, h, w), d, k in zip(shapes, hidden, windows))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [level(f.float()) for level, f in zip(self.levels, features)]


# ------------------------------------------------------------------------ loss and maps

def rlr_loss(model: RLR, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Training loss (for :func:`adlib.training.train.fit`): sum over levels of MSE + mean(1 - cos)."""
    targets = [f.float() for f in batch]
    recons = model(targets)
    mse = sum(F.mse_loss(r, t) for r, t in zip(recons, targets))
    cos = sum((1 - F.cosine_similarity(r, t, dim=1)).mean() for r, t in zip(recons, targets))
    return {"loss": mse + cos, "mse": mse.detach(), "cos": cos.detach()}


def level_maps(recons: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-level anomaly maps ``(B, h_j, w_j)``: channel-mean squared error + (1 - cos)."""
    return [((r - t) ** 2).mean(1) + (1 - F.cosine_similarity(r, t, dim=1))
            for r, t in zip(recons, targets)]


def anomaly_map(recons, targets, size: int | tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """Smoothed anomaly maps ``(B, H, W)``: level maps bilinearly upsampled, averaged,
    Gaussian-smoothed with ``sigma`` pixels."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    ups = [F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
           for m in level_maps(recons, [t.float() for t in targets])]
    return gaussian_smooth(torch.stack(ups).mean(0), sigma)


# -------------------------------------------------------------------------------- detector

@dataclass
class RLRConfig:
    """Every knob of :class:`RLRDetector` (JSON-ready via ``vars``)."""

    stages: tuple[int, ...] = (1, 2, 3)
    hidden: tuple[int, ...] = (128, 256, 512)    # per stage 1, 2, 3
    windows: tuple[int, ...] = (11, 7, 5)        # per stage 1, 2, 3 (official code's pairing)
    blocks: int = 4
    heads: int = 8
    alpha: float = 2.0
    variant: str = "MLKA+LCA"
    perturbation: str = "jitter"
    sigma: float = 0.1
    jitter_scale: float = 20.0
    jitter_prob: float = 1.0
    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    map_sigma: float = 4.0
    standardize: bool = False                    # guess: per-channel z-score from train features
    seed: int = 0


def build_rlr(shapes_by_stage: Mapping[int, tuple[int, int, int]], config: RLRConfig | None = None,
              **overrides: Any) -> RLR:
    """An (untrained) :class:`RLR` for ``config``'s stages, variant and sizes.

    ``shapes_by_stage`` maps backbone stage -> feature shape ``(C, H, W)`` (e.g. from
    :meth:`FeatureCache.shapes` or ``timm``'s ``feature_info``); keyword arguments override
    :class:`RLRConfig` fields, so ``build_rlr(shapes, variant="Cross Att.")`` gives the
    Table-3 row with everything else at its default.
    """
    c = replace(config or RLRConfig(), **overrides)
    missing = [s for s in c.stages if s not in shapes_by_stage]
    if missing:
        msg = f"no feature shape for stages {missing}; shapes_by_stage has {sorted(shapes_by_stage)}"
        raise ValueError(msg)
    residual, attention = VARIANTS[c.variant]
    return RLR([shapes_by_stage[s] for s in c.stages], [c.hidden[s - 1] for s in c.stages],
               [c.windows[s - 1] for s in c.stages], blocks=c.blocks, heads=c.heads, alpha=c.alpha,
               residual=residual, attention=attention, perturbation=c.perturbation, sigma=c.sigma,
               jitter_scale=c.jitter_scale, jitter_prob=c.jitter_prob)


class RLRDetector(Detector):
    """fit / predict wrapper (:class:`adlib.training.detector.Detector`): cached backbone features +
    :class:`RLR` trained with :func:`adlib.training.train.fit` (Adam, AMP on CUDA).

    ``fit(train)`` takes one data set (separate training) or a mapping / list of data sets
    (unified: one model for all categories, the paper's setting); ``predict(test)`` returns
    image scores ``(N,)`` and maps ``(N, H, W)`` (numpy, float32) at the backbone input size.
    Pass the same :class:`FeatureCache` to several detectors (ablations) so that the
    backbone runs once per image in total. Keyword arguments override :class:`RLRConfig`;
    ``epochs=0`` keeps the model untrained (the sanity reference).
    """

    config_class, name = RLRConfig, "RLR"

    def __init__(self, cache: FeatureCache | None = None, *, device: str | torch.device = "auto",
                 progress: bool | str = True, checkpoint_dir: str | None = None, **config: Any):
        super().__init__(device=device, progress=progress, checkpoint_dir=checkpoint_dir, **config)
        if self.config.variant not in VARIANTS:
            msg = f"variant {self.config.variant!r}; expected one of {list(VARIANTS)} (Table 3)"
            raise ValueError(msg)
        self.cache = cache or FeatureCache(stages=(1, 2, 3))
        missing = [s for s in self.config.stages if s not in self.cache.stages]
        if missing:
            msg = f"stages {missing} are not in the feature cache (it holds {self.cache.stages}); build FeatureCache(stages=...) with them"
            raise ValueError(msg)
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = [feats[self.cache.stages.index(s)] for s in self.config.stages]
        if self.config.standardize and self._stats is not None:
            levels = [((f.float() - m) / s).to(f.dtype) for f, (m, s) in zip(levels, self._stats)]
        return levels

    def build(self, shapes: Sequence[tuple[int, int, int]]) -> RLR:
        torch.manual_seed(self.config.seed)
        return build_rlr(dict(zip(self.config.stages, shapes)), self.config)

    def fit(self, train: Any, val: Any = None) -> "RLRDetector":
        self._stats = None
        feats = [self._levels(self.cache.get(s, "backbone features (train)")) for s in training_sets(train)]
        levels = [torch.cat(parts) for parts in zip(*feats)]
        if self.config.standardize:
            # channel statistics of the TRAINING features only (never the test split)
            self._stats = [(f.float().mean((0, 2, 3), keepdim=True)[0],
                            f.float().std((0, 2, 3), keepdim=True)[0].clamp_min(1e-6)) for f in levels]
            levels = [((f.float() - m) / s).to(f.dtype) for f, (m, s) in zip(levels, self._stats)]
        self.model = self.build([tuple(f.shape[1:]) for f in levels])
        val_data = None
        if val is not None:
            val_data = CachedFeatures(self._levels(self.cache.get(val, "backbone features (val)")))
        if self.config.epochs == 0:  # the untrained model: a sanity reference for the claims
            return self._untrained()
        return self._timed_fit(rlr_loss, CachedFeatures(levels), val_data=val_data,
                               lr=self.config.lr, desc=f"RLR {self.config.variant}")

    @torch.no_grad()
    def reconstruct(self, data: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Cached input features and their reconstructions (CPU, float32), per level."""
        self._require_fitted()
        feats = self._levels(self.cache.get(data, "backbone features (test)"))
        outs = [[] for _ in feats]
        for batch in self._batches(feats):
            for j, r in enumerate(self.model(batch)):
                outs[j].append(r.float().cpu())
        return [f.float() for f in feats], [torch.cat(o) for o in outs]

    def predict(self, test: Any) -> tuple[np.ndarray, np.ndarray]:
        feats, recons = self.reconstruct(test)
        size = self.cache.image_size or (test[0]["image"].shape[-1] if not isinstance(test, torch.Tensor) else test.shape[-1])
        maps = torch.cat([anomaly_map(recons_b, feats_b, size, self.config.map_sigma)
                          for recons_b, feats_b in _chunks(recons, feats, 64)])
        return image_scores(maps), maps.numpy()


def _chunks(recons, feats, n):
    for i in range(0, len(feats[0]), n):
        yield [r[i:i + n] for r in recons], [f[i:i + n] for f in feats]
