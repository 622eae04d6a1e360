"""RLR: reconstructing features from a learnable reference (unified multi-class).

Written from the paper (rlr_learnable_reference) and the facts collected in the book's
implementation notes; no code copied. The pipeline, per image::

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

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adlib.models.knn_baseline import gaussian_smooth
from adlib.nn.backbones import LITE0, FeatureExtractor
from adlib.nn.reference_attention import ReferenceAttention, sincos_position_encoding_2d
from adlib.progress import progress

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
    """Training loss (for :func:`adlib.train.fit`): sum over levels of MSE + mean(1 - cos)."""
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


# ---------------------------------------------------------------------- feature caching

def _dataset_key(data: Any) -> tuple:
    if isinstance(data, torch.Tensor):
        return ("tensor", id(data), tuple(data.shape))
    parts = tuple(str(getattr(data, a, "")) for a in ("root", "category", "split", "image_size"))
    if all(p == "" for p in parts[:3]):
        return ("object", id(data))
    return (type(data).__name__, *parts, len(data))


class FeatureCache:
    """Frozen-backbone features, computed once per image and kept in memory.

    ``cache.get(dataset)`` returns a list (one per backbone stage in ``stages``) of
    ``(N, C, h, w)`` tensors on the CPU, after 3x3 local aggregation (Eq. 2). The same
    data set object (or one with the same root/category/split/image size) is never
    extracted twice, so every ablation and epoch reuses the features.

    Args:
        backbone: timm name (``tf_efficientnet_lite0`` offline; ``tf_efficientnet_b6`` for
            the paper profile, needs the hub); stages: timm feature indices (1-3 = strides
            4/8/16 for EfficientNets); image_size: resize to this square first; pool_size:
            local aggregation window; dtype: storage type (float16 halves memory for
            full-size data sets); device: where the backbone runs.
    """

    def __init__(self, backbone: str = LITE0, stages: Sequence[int] = (1, 2, 3), image_size: int | None = None,
                 pool_size: int = 3, batch_size: int = 32, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, pretrained: bool = True, show_progress: bool = True):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.stages = tuple(stages)
        self.extractor = FeatureExtractor(backbone, out_indices=self.stages, pretrained=pretrained).to(self.device)
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2)
        self.image_size, self.batch_size, self.dtype = image_size, batch_size, dtype
        self.show_progress = show_progress
        self._store: dict[tuple, list[torch.Tensor]] = {}
        self.seconds = 0.0
        self.images_extracted = 0

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_size is None or tuple(images.shape[-2:]) == (self.image_size,) * 2:
            return images
        return F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear",
                             align_corners=False, antialias=True)

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Aggregated features of one batch of images ``(B, 3, H, W)`` in [0, 1]."""
        feats = self.extractor(self._resize(images.to(self.device, torch.float32)))
        return [self.pool(f).contiguous().to("cpu", self.dtype) for f in feats]

    def get(self, data: Any, desc: str = "backbone features") -> list[torch.Tensor]:
        key = _dataset_key(data)
        if key in self._store:
            return self._store[key]
        start = time.perf_counter()
        self.extractor.eval()
        if isinstance(data, torch.Tensor):
            batches = data.split(self.batch_size)
        else:
            batches = DataLoader(data, batch_size=self.batch_size, shuffle=False)
        parts: list[list[torch.Tensor]] = []
        total = math.ceil(len(data) / self.batch_size)
        for batch in progress(batches, total=total, desc=desc, disable=not self.show_progress, leave=False):
            parts.append(self.extract(batch["image"] if isinstance(batch, dict) else batch))
        out = [torch.cat(level) for level in zip(*parts)]
        self._store[key] = out
        self.seconds += time.perf_counter() - start
        self.images_extracted += len(data)
        return out

    def shapes(self, data: Any) -> list[tuple[int, int, int]]:
        return [tuple(f.shape[1:]) for f in self.get(data)]


class CachedFeatures(Dataset):
    """Map-style view of cached features: item ``i`` is a tuple of per-level tensors."""

    def __init__(self, levels: Sequence[torch.Tensor]):
        self.levels = list(levels)

    def __len__(self) -> int:
        return len(self.levels[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(level[i] for level in self.levels)


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


class RLRDetector:
    """fit / predict wrapper: cached backbone features + :class:`RLR` trained with
    :func:`adlib.train.fit` (Adam, AMP on CUDA).

    ``fit(train)`` takes one data set (separate training) or a mapping / list of data sets
    (unified: one model for all categories, the paper's setting); ``predict(test)`` returns
    image scores ``(N,)`` and maps ``(N, H, W)`` (numpy, float32) at the backbone input size.
    Pass the same :class:`FeatureCache` to several detectors (ablations) so that the
    backbone runs once per image in total. Keyword arguments override :class:`RLRConfig`.
    """

    def __init__(self, cache: FeatureCache | None = None, *, device: str | torch.device = "auto",
                 progress: bool | str = True, checkpoint_dir: str | None = None, **config: Any):
        unknown = set(config) - set(RLRConfig.__dataclass_fields__)
        if unknown:
            msg = f"unknown RLR options {sorted(unknown)}; expected some of {sorted(RLRConfig.__dataclass_fields__)}"
            raise TypeError(msg)
        self.config = RLRConfig(**config)
        if self.config.variant not in VARIANTS:
            msg = f"variant {self.config.variant!r}; expected one of {list(VARIANTS)} (Table 3)"
            raise ValueError(msg)
        self.cache = cache or FeatureCache(stages=(1, 2, 3))
        missing = [s for s in self.config.stages if s not in self.cache.stages]
        if missing:
            msg = f"stages {missing} are not in the feature cache (it holds {self.cache.stages}); build FeatureCache(stages=...) with them"
            raise ValueError(msg)
        self.device, self.progress, self.checkpoint_dir = device, progress, checkpoint_dir
        self.model: RLR | None = None
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.history = None
        self.train_seconds = 0.0

    def _levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = [feats[self.cache.stages.index(s)] for s in self.config.stages]
        if self.config.standardize and self._stats is not None:
            levels = [((f.float() - m) / s).to(f.dtype) for f, (m, s) in zip(levels, self._stats)]
        return levels

    def build(self, shapes: Sequence[tuple[int, int, int]]) -> RLR:
        torch.manual_seed(self.config.seed)
        return build_rlr(dict(zip(self.config.stages, shapes)), self.config)

    def fit(self, train: Any, val: Any = None) -> "RLRDetector":
        from adlib.train import fit as train_fit

        sets = list(train.values()) if isinstance(train, Mapping) else (
            list(train) if isinstance(train, (list, tuple)) else [train])
        self._stats = None
        feats = [self._levels(self.cache.get(s, "backbone features (train)")) for s in sets]
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
        start = time.perf_counter()
        result = train_fit(self.model, rlr_loss, CachedFeatures(levels), val_data=val_data,
                           epochs=self.config.epochs, batch_size=self.config.batch_size,
                           lr=self.config.lr, device=self.device, seed=self.config.seed,
                           checkpoint_dir=self.checkpoint_dir, progress=self.progress,
                           desc=f"RLR {self.config.variant}")
        self.train_seconds = time.perf_counter() - start
        self.model, self.history = result.model.eval(), result.history
        return self

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0

    @torch.no_grad()
    def reconstruct(self, data: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Cached input features and their reconstructions (CPU, float32), per level."""
        if self.model is None:
            msg = "the model is not trained: call fit(train_set) (or fit({cat: train_set, ...})) first"
            raise RuntimeError(msg)
        feats = self._levels(self.cache.get(data, "backbone features (test)"))
        device = next(self.model.parameters()).device
        self.model.eval()
        outs = [[] for _ in feats]
        for i in range(0, len(feats[0]), 64):
            batch = [f[i:i + 64].to(device, torch.float32) for f in feats]
            for j, r in enumerate(self.model(batch)):
                outs[j].append(r.float().cpu())
        return [f.float() for f in feats], [torch.cat(o) for o in outs]

    def predict(self, test: Any) -> tuple[np.ndarray, np.ndarray]:
        feats, recons = self.reconstruct(test)
        size = self.cache.image_size or (test[0]["image"].shape[-1] if not isinstance(test, torch.Tensor) else test.shape[-1])
        maps = torch.cat([anomaly_map(recons_b, feats_b, size, self.config.map_sigma)
                          for recons_b, feats_b in _chunks(recons, feats, 64)])
        return maps.flatten(1).amax(1).numpy(), maps.numpy()


def _chunks(recons, feats, n):
    for i in range(0, len(feats[0]), n):
        yield [r[i:i + n] for r in recons], [f[i:i + n] for f in feats]


# ------------------------------------------------------------------------------ evaluation

def evaluate_unified(detector: RLRDetector, dataset: str, root, categories: Sequence[str],
                     image_size: int, *, show_progress: bool = True):
    """Train ONE detector on the train splits of all ``categories``, then evaluate it on each
    category's test split. Returns :class:`adlib.evaluation.CategoryResult` objects (so
    :func:`adlib.evaluation.results_frame` works); ``seconds`` is the category's share of
    the training time plus its test time."""
    from adlib.data.sources import open_split
    from adlib.evaluation import CategoryResult, masks_of
    from adlib.metrics import evaluate

    trains = {c: open_split(dataset, root, c, "train", image_size) for c in categories}
    start = time.perf_counter()
    detector.fit(trains)
    share = (time.perf_counter() - start) / max(len(categories), 1)
    results = []
    for category in progress(categories, desc="RLR: test categories", disable=not show_progress):
        t0 = time.perf_counter()
        test = open_split(dataset, root, category, "test", image_size)
        scores, maps = detector.predict(test)
        labels, masks = np.asarray(test.labels), masks_of(test)
        if maps.shape[-2:] != masks.shape[-2:]:
            maps = F.interpolate(torch.as_tensor(maps)[:, None], size=masks.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0].numpy()
        metrics = evaluate(scores, labels, maps, masks)
        results.append(CategoryResult(category, metrics, np.asarray(scores), labels, maps, masks, test,
                                      share + time.perf_counter() - t0))
    return results


# ------------------------------------------------------------------------------- ablations

#: The ablation grids of the notebook / study, by profile grid name. ``stages`` and
#: ``alpha`` list the values besides the default; ``separate`` adds per-category training.
ABLATION_GRIDS: dict[str, dict[str, Any]] = {
    "tiny": {"variants": ["Residual+Self Att.", "MLKA+LCA"], "stages": [], "alpha": [],
             "perturbation": [], "separate": False},
    "reduced": {"variants": ["Residual+Self Att.", "Cross Att.", "MLKA+LCA"], "stages": [],
                "alpha": [], "perturbation": ["none"], "separate": False},
    "full": {"variants": list(VARIANTS), "stages": [(1, 2), (2, 3), (1, 2, 3)], "alpha": [1.0, 2.0, 3.0],
             "perturbation": ["none"], "separate": True},
}


def _stage_label(stages: Sequence[int]) -> str:
    return "stages=" + "-".join(str(s) for s in stages)


def ablation_configs(grid: str | Mapping[str, Any], base: Mapping[str, Any]) -> list[tuple[str, str, dict]]:
    """``(ablation, label, overrides)`` triples for one grid; ``base`` is the default config
    (its own row appears once per ablation so every table has its reference row)."""
    spec = ABLATION_GRIDS[grid] if isinstance(grid, str) else grid
    out = [("Table 3", v, {"variant": v}) for v in spec["variants"]]
    for stages in spec["stages"]:
        out.append(("Table 4", _stage_label(stages), {"stages": tuple(stages)}))
    for alpha in spec["alpha"]:
        out.append(("Table 5", f"alpha={alpha:g}", {"alpha": float(alpha)}))
    if spec["perturbation"]:
        out.append(("perturbation", f"perturbation={base['perturbation']}", {}))
        out += [("perturbation", f"perturbation={p}", {"perturbation": p}) for p in spec["perturbation"]]
    if spec["separate"]:
        out += [("training", "unified", {}), ("training", "separate", {"separate": True})]
    return out


def run_ablations(configs, seeds: Sequence[int], cache: FeatureCache, dataset: str, root,
                  categories: Sequence[str], image_size: int, base: Mapping[str, Any], *,
                  device: str = "auto", reuse: Mapping[tuple, Any] | None = None,
                  show_progress: bool = True) -> tuple[list[dict], dict]:
    """Train and evaluate every ``(ablation, label, overrides)`` for every seed.

    Returns ``(rows, results)``: one flat row per config x seed (category means in %, plus
    seconds), and ``{config_key(...): [CategoryResult]}``; identical
    configurations (e.g. the default that appears in several tables) run once. ``reuse``
    passes results already computed under the same key (the notebook's main run)."""
    from adlib.evaluation import evaluate_categories, results_frame

    done: dict = dict(reuse or {})
    rows = []
    jobs = [(a, lab, o, s) for a, lab, o in configs for s in seeds]
    for ablation, label, overrides, seed in progress(jobs, desc="ablations", disable=not show_progress):
        params = {**base, **{k: v for k, v in overrides.items() if k != "separate"}, "seed": seed}
        key = config_key(params, seed, bool(overrides.get("separate")))
        start = time.perf_counter()
        if key not in done:
            if overrides.get("separate"):
                done[key] = evaluate_categories(
                    lambda: RLRDetector(cache, device=device, progress=False, **params),
                    dataset, root, categories, image_size, show_progress=False)
            else:
                det = RLRDetector(cache, device=device, progress=False, **params)
                done[key] = evaluate_unified(det, dataset, root, categories, image_size, show_progress=False)
        mean = results_frame(done[key]).loc["mean"]
        rows.append({"ablation": ablation, "config": label, "seed": seed,
                     **{m: float(mean[m]) for m in ("image_auroc", "pixel_auroc", "aupro") if m in mean},
                     "seconds": round(time.perf_counter() - start, 1)})
    return rows, done


def config_key(params: Mapping[str, Any], seed: int, separate: bool = False) -> tuple:
    """The ``run_ablations`` key of one full configuration (to pass a finished run as
    ``reuse``): the same settings reached from two tables share one key."""
    return (tuple(sorted((k, str(v)) for k, v in params.items() if k != "seed")), separate, seed)
