"""MAAE: the mixed-attention autoencoder with ANG and FFM (unified multi-class detection).

Written from the paper (maae_mixed_attention_autoencoder); the paper has no public code and
none was copied. What the paper leaves out or we do differently is in the chapter's deviations
table (``DEVIATIONS`` in :mod:`adlib.chapters.maae.study`). Per image::

    features   a frozen ImageNet EfficientNet (b4 in the paper, Lite0 offline), four levels
               (strides 2, 4, 8, 16), computed ONCE per image and cached
    fusion     FFM (strided 3x3 convolutions, concatenate, repeat) or resize-and-concatenate
               -> tokens X (N x C) on the stride-16 grid; X is also the target
    noise      ANG: X* = X + A * W * eps (learned W, adversarial), or UniAD's feature jitter
    encoder    input projection + 2-D sin-cos position, L blocks, output projection -> Y
               mixed: Y = DC(SA(X) + SA(X^T)^T), a residual around every M blocks (Eq. 2)
               self:  plain pre-norm Transformer layers (the ablation's self-attention)
    loss       L_e = ||Y - X||_2 / N per image (Eq. 3); ANG's W: -lambda_ANG L_e + lambda_re ||W||_2
    map        ||Y - X||_2 over channels per token, bilinear to the image, Gaussian
               smoothing; image score = max (Eq. 4-5)

Two readings of the text, named here and in the chapter: Eq. 3 compares Y with "the original
feature X*", but X* is defined as the noisy input; we reconstruct the clean X (a denoising
target, as UniAD does; reconstructing the noise itself would be impossible and pointless).
FFM's convolutions are trained with the encoder, so the target X is detached: otherwise the
cheapest way to lower L_e is to shrink the fused features.

The Table-3 rows and the UniAD baseline are configurations (:data:`VARIANTS`). UniAD (You et
al., NeurIPS 2022) is built as its official code (github.com/zhiyuanyou/UniAD) builds it, read
there and written anew here: resize-and-concatenate, feature jitter, input projection, a post-norm
Transformer encoder and a decoder whose every layer has its own learned queries (ReLU, dropout
0.1), UniAD's 7x7 neighbour mask in every attention, a learned position embedding added to the
queries and keys of every attention (never to the values), a final LayerNorm, output
projection; Linear weights Xavier-uniform, biases zero. "UniAD encoder-only" is the book's first,
simpler baseline (pre-norm encoder layers only, GELU, no dropout, sin-cos position added once).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset

from adlib.nn.maps import gaussian_smooth
from adlib.nn.mixed_attention import (
    AdaptiveNoise,
    FeatureFusion,
    FeatureJitter,
    MixedAttentionBlock,
    TransformerLayer,
)
from adlib.nn.reference_attention import neighbourhood_mask, sincos_position_encoding_2d
from adlib.training.detector import Detector, image_scores, training_sets
from adlib.training.features import CachedFeatures, FeatureCache

#: Table 3 of the paper (its labels: the column "MAAE" is the mixed-attention block) and the
#: UniAD baselines -> (noise, fusion, block, neighbour mask). ``uniad``: UniAD's depth
#: (:func:`uniad_depth`) instead of ``layers``; the encoder-only variant puts all of it in
#: the encoder.
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"noise": "none", "fusion": "resize", "block": "self", "masked": False},
    "ANG": {"noise": "ang", "fusion": "resize", "block": "self", "masked": False},
    "MAAE": {"noise": "none", "fusion": "resize", "block": "mixed", "masked": False},
    "ANG+FFM": {"noise": "ang", "fusion": "ffm", "block": "self", "masked": False},
    "ANG+MAAE": {"noise": "ang", "fusion": "resize", "block": "mixed", "masked": False},
    "ANG+FFM+MAAE": {"noise": "ang", "fusion": "ffm", "block": "mixed", "masked": False},
    "UniAD": {"noise": "jitter", "fusion": "resize", "block": "uniad", "masked": True, "uniad": True},
    "UniAD encoder-only": {"noise": "jitter", "fusion": "resize", "block": "self", "masked": True,
                           "uniad": True},
}
FULL = "ANG+FFM+MAAE"
NOISES = ("none", "ang", "jitter")
BLOCKS = ("mixed", "self", "uniad")


class MAAE(nn.Module):
    """Fusion, noise and encoder: ``forward(levels) -> (Y, X)``, both ``(B, N, C)``.

    Args:
        channels: backbone channels per level (finest first); grid: the coarsest level's
            ``(h, w)``, the token grid. hidden: the encoder width; block: ``mixed`` (Eq. 2),
            ``self`` (pre-norm Transformer layers) or ``uniad`` (UniAD's encoder and query
            decoder); layers: blocks, Transformer layers or UniAD's encoder layers;
            decoder_layers: UniAD's decoder layers (``uniad`` only); group: M, the blocks under
            one residual; neighbour: UniAD's mask window (0 = no mask). The rest as
            :class:`MAAEConfig`.
    """

    def __init__(self, channels: Sequence[int], grid: tuple[int, int], *, fusion: str = "ffm",
                 noise: str = "ang", block: str = "mixed", hidden: int = 256, layers: int = 18,
                 decoder_layers: int = 4, group: int = 3, heads: int = 8, dilation: int = 4,
                 neighbour: int = 0, amplitude: float = 1.0, ang_mode: str = "alternate",
                 lambda_ang: float = 0.6, lambda_re: float = 1.0, jitter_scale: float = 20.0,
                 ffm_train: bool = False):
        super().__init__()
        if noise not in NOISES or block not in BLOCKS:
            msg = f"noise {noise!r}, block {block!r}; expected noise in {NOISES} and block in {BLOCKS}"
            raise ValueError(msg)
        if block == "mixed" and layers % group:
            msg = f"{layers} mixed-attention blocks do not split into residual groups of M={group}"
            raise ValueError(msg)
        self.grid, self.block = tuple(grid), block
        for i, ch in enumerate(channels):  # per-level channel statistics (identity until set)
            self.register_buffer(f"mean{i}", torch.zeros(1, ch, 1, 1))
            self.register_buffer(f"std{i}", torch.ones(1, ch, 1, 1))
        self.fusion = FeatureFusion(list(channels), fusion, trainable=ffm_train)
        c, n = self.fusion.out_channels, grid[0] * grid[1]
        self.noise = {"ang": lambda: AdaptiveNoise(n, c, amplitude=amplitude, mode=ang_mode,
                                                   lambda_ang=lambda_ang, lambda_re=lambda_re),
                      "jitter": lambda: FeatureJitter(jitter_scale),
                      "none": nn.Identity}[noise]()
        self.input_projection = nn.Linear(c, hidden)
        if block == "uniad":
            self.position = LearnedPosition(grid, hidden)
            self.groups = nn.ModuleList(UniADEncoderLayer(hidden, heads, grid, neighbour=neighbour)
                                        for _ in range(layers))
            self.decoder = nn.ModuleList(UniADDecoderLayer(hidden, heads, grid, neighbour=neighbour)
                                         for _ in range(decoder_layers))
        else:
            self.register_buffer("position", sincos_position_encoding_2d(grid[0], grid[1], hidden).clone(),
                                 persistent=False)
        if block == "mixed":
            self.groups = nn.ModuleList(
                nn.Sequential(*(MixedAttentionBlock(hidden, heads, grid, dilation=dilation,
                                                    neighbour=neighbour) for _ in range(group)))
                for _ in range(layers // group))
        elif block == "self":
            self.groups = nn.ModuleList(TransformerLayer(hidden, heads, grid, neighbour=neighbour)
                                        for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.output_projection = nn.Linear(hidden, c)
        if block == "uniad":  # UniAD's initialiser: every Linear Xavier-uniform, biases zero
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    @property
    def ang(self) -> AdaptiveNoise | None:
        return self.noise if isinstance(self.noise, AdaptiveNoise) else None

    def set_statistics(self, stats: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Standardise each level's channels with ``(mean, std)`` of the training features."""
        for i, (mean, std) in enumerate(stats):
            getattr(self, f"mean{i}").copy_(mean.view(1, -1, 1, 1))
            getattr(self, f"std{i}").copy_(std.view(1, -1, 1, 1))

    def tokens(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fused features as tokens ``(B, N, C)`` (the reconstruction target)."""
        fused = self.fusion([(f.float() - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
                             for i, f in enumerate(levels)])
        if tuple(fused.shape[-2:]) != self.grid:
            msg = (f"model built for a {self.grid[0]}x{self.grid[1]} token grid, the features give "
                   f"{tuple(fused.shape[-2:])}; W, the position encoding and the channel attention "
                   "have one entry per grid position: keep the image size of construction")
            raise ValueError(msg)
        return fused.flatten(2).transpose(1, 2)

    def forward(self, levels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tokens(levels)
        y = self.input_projection(self.noise(x))
        if self.block == "uniad":
            # the position enters the queries and keys of every attention, never the values
            position = self.position()
            memory = y
            for layer in self.groups:
                memory = layer(memory, position)
            y = memory
            for layer in self.decoder:  # each layer: its own queries, the encoder's output, y
                y = layer(y, memory, position)
        else:
            y = y + self.position
            for g in self.groups:
                # mixed: a residual around every M blocks; self: each layer has its own residuals
                y = y + g(y) if self.block == "mixed" else g(y)
        return self.output_projection(self.norm(y)), x.detach()


# ------------------------------------------------------------------------ UniAD's layers

class LearnedPosition(nn.Module):
    """UniAD's learned position ``() -> (N, dim)``: per grid position its column's and its row's
    embedding (``dim / 2`` each, column first), both started uniform in [0, 1)."""

    def __init__(self, grid: tuple[int, int], dim: int):
        super().__init__()
        if dim % 2:
            msg = f"a learned position of width {dim}: expected an even width (half rows, half columns)"
            raise ValueError(msg)
        self.grid = tuple(grid)
        self.rows = nn.Parameter(torch.rand(grid[0], dim // 2))
        self.cols = nn.Parameter(torch.rand(grid[1], dim // 2))

    def forward(self) -> torch.Tensor:
        h, w = self.grid
        return torch.cat([self.cols[None].expand(h, w, -1), self.rows[:, None].expand(h, w, -1)],
                         dim=-1).reshape(h * w, -1)


class MaskedAttention(nn.Module):
    """Multi-head attention ``(query, key, value) -> (B, N, D)`` with attention dropout; with
    ``neighbour`` each query token is hidden its own ``k x k`` window (UniAD's mask)."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], *, neighbour: int = 0,
                 dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            msg = f"hidden size {dim} is not divisible by {heads} heads"
            raise ValueError(msg)
        self.grid, self.neighbour = tuple(grid), neighbour
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        if neighbour:
            neighbourhood_mask(grid[0], grid[1], neighbour)  # refuse an empty row now, not mid-run

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        # nn.MultiheadAttention's boolean mask is True where a token may NOT attend
        hidden = ~neighbourhood_mask(*self.grid, self.neighbour).to(query.device) if self.neighbour else None
        return self.attention(query, key, value, attn_mask=hidden, need_weights=False)[0]


def _feed_forward(dim: int, ratio: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, ratio * dim), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(ratio * dim, dim))


class UniADEncoderLayer(nn.Module):
    """UniAD's post-norm encoder layer ``(x (B, N, D), position (N, D)) -> (B, N, D)``.

    Per layer::

        x = LN(x + drop(attention(q = k = x + position, v = x)))
        x = LN(x + drop(FFN(x)))            FFN = Linear, ReLU, dropout, Linear
    """

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], *, neighbour: int = 0,
                 dropout: float = 0.1, ffn_ratio: int = 4):
        super().__init__()
        self.attention = MaskedAttention(dim, heads, grid, neighbour=neighbour, dropout=dropout)
        self.ffn = _feed_forward(dim, ffn_ratio, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        qk = x + position
        x = self.norm1(x + self.drop1(self.attention(qk, qk, x)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class UniADDecoderLayer(nn.Module):
    """UniAD's post-norm decoder layer with its own learned queries ``Q`` (N x D), the
    "layer-wise query embedding": ``(out, memory, position) -> (B, N, D)``, ``memory`` the
    encoder's output, ``out`` the previous decoder layer's (the encoder's for the first)::

        t = LN(Q + drop(attention(Q + position, memory + position, memory)))
        t = LN(t + drop(attention(t + position, out + position, out)))
        t = LN(t + drop(FFN(t)))
    """

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], *, neighbour: int = 0,
                 dropout: float = 0.1, ffn_ratio: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.randn(grid[0] * grid[1], dim))  # as nn.Embedding starts
        self.memory_attention = MaskedAttention(dim, heads, grid, neighbour=neighbour, dropout=dropout)
        self.output_attention = MaskedAttention(dim, heads, grid, neighbour=neighbour, dropout=dropout)
        self.ffn = _feed_forward(dim, ffn_ratio, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, out: torch.Tensor, memory: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        q = self.query.expand(out.shape[0], -1, -1)
        t = self.norm1(q + self.drop1(self.memory_attention(q + position, memory + position, memory)))
        t = self.norm2(t + self.drop2(self.output_attention(t + position, out + position, out)))
        return self.norm3(t + self.drop3(self.ffn(t)))


# ------------------------------------------------------------------------ loss and maps

def reconstruction_error(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3 per image: ``||Y - X||_2 / N`` (Frobenius norm over tokens and channels), ``(B,)``."""
    return (y.float() - x.float()).flatten(1).norm(dim=1) / x.shape[1]


def ang_step(model: MAAE, batch: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One step of ANG's ``W`` alone on Eq. 1, ``-lambda_ANG * L_e + lambda_re * ||W||_2``,
    against the current reconstructor (whose weights it does not touch). Returns Eq. 1."""
    ang = model.ang
    y, x = model(batch)
    objective = -ang.lambda_ang * reconstruction_error(y, x).mean() + ang.regulariser()
    (grad,) = torch.autograd.grad(objective, [ang.weight])
    ang.weight.grad = grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return objective.detach()


def maae_loss(model: MAAE, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Training loss for :func:`adlib.training.train.fit`: ``L_e`` for the reconstructor; ANG's ``W``
    moves by gradient reversal inside this loss, or by :func:`ang_step` first (alternating,
    with ``model.ang_optimizer``) and is then held fixed."""
    ang = model.ang
    alternate = ang is not None and ang.mode == "alternate" and model.training
    if alternate:
        ang_step(model, batch, model.ang_optimizer)
        ang.detach_weight = True
    try:
        y, x = model(batch)
    finally:
        if ang is not None:
            ang.detach_weight = False
    error = reconstruction_error(y, x).mean()
    out = {"loss": error, "reconstruction": error.detach()}
    if ang is not None:
        if ang.mode == "reverse":
            # W's regulariser moves W only; logged as L_e alone, comparable across variants
            reg = ang.regulariser()
            out["loss"] = error + (reg - reg.detach())
        out["noise_w"] = ang.weight.detach().abs().mean()
    return out


def channel_statistics(parts: Sequence[Sequence[torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level, the channel mean and standard deviation over every image and position of
    ``parts`` (lists of levels, e.g. one per category), accumulated without concatenating."""
    out = []
    for level in zip(*parts):
        n = sum(f.shape[0] * f.shape[2] * f.shape[3] for f in level)
        total = sum(f.double().sum((0, 2, 3)) for f in level)
        squares = sum((f.double() ** 2).sum((0, 2, 3)) for f in level)
        mean = total / n
        std = (squares / n - mean ** 2).clamp_min(0).sqrt().clamp_min(1e-6)
        out.append((mean.float(), std.float()))
    return out


def token_maps(y: torch.Tensor, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``||Y - X||_2`` over channels, per token, as ``(B, h, w)`` maps."""
    return (y.float() - x.float()).norm(dim=-1).view(-1, *grid)


def anomaly_map(y, x, grid, size: int | tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """Eq. 4: token maps bilinearly upsampled to ``size`` and Gaussian-smoothed, ``(B, H, W)``."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    up = F.interpolate(token_maps(y, x, grid)[:, None], size=size, mode="bilinear", align_corners=False)
    return gaussian_smooth(up[:, 0], sigma)


# -------------------------------------------------------------------------------- detector

@dataclass
class MAAEConfig:
    """Every knob of :class:`MAAEDetector` (JSON-ready via ``vars``). Defaults: the paper's
    where it states them (stages 1-4, 18 blocks, M = 3, dilation 4, lambda_ANG 0.6, lambda_re 1,
    Adam 1e-4, batch 64); UniAD's official code where the paper is silent (width 256, 8 heads,
    input/output projections, jitter, neighbour mask); marked guesses otherwise. Each departure
    is a row of the chapter's deviations table (``adlib.chapters.maae.study.DEVIATIONS``)."""

    variant: str = FULL
    stages: tuple[int, ...] = (0, 1, 2, 3)   # timm indices: strides 2, 4, 8, 16
    hidden: int = 256             # not in the paper: UniAD's
    layers: int = 18
    group: int = 3                # M: a residual every M mixed-attention blocks
    heads: int = 8                # not in the paper: UniAD's
    dilation: int = 4
    uniad_layers: tuple[int, int] | None = None  # UniAD's (encoder, decoder); None: uniad_depth
    neighbour: int = 7            # UniAD's mask window (used by variants with masked=True)
    amplitude: float = 1.0        # A (not given in the paper: a guess)
    ang_mode: str = "alternate"   # or "reverse" (gradient reversal); not given: a guess
    lambda_ang: float = 0.6
    lambda_re: float = 1.0
    jitter_scale: float = 20.0    # UniAD's feature jitter
    ffm_train: bool = False       # train FFM's convolutions (they start as a 3x3 box average)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    map_sigma: float = 4.0        # Gaussian smoothing of the map, px (0: none, as Eq. 4)
    standardize: bool = False     # per-channel z-score from the training features (a guess)
    feature_dtype: str = "float32"  # how the cache stores features (float16 halves the memory)
    seed: int = 0


def uniad_depth(config: MAAEConfig) -> tuple[int, int]:
    """UniAD's (encoder, decoder) layers: ``config.uniad_layers``, or by default the official
    4 + 4, cut to MAAE's own depth when it has fewer than 8 blocks (3 + 3 for the chapter's 6)."""
    if config.uniad_layers is not None:
        encoder, decoder = config.uniad_layers
        return int(encoder), int(decoder)
    half = max(1, min(config.layers, 8) // 2)
    return half, half


def build_maae(channels: Sequence[int], grid: tuple[int, int], config: MAAEConfig | None = None,
               **overrides: Any) -> MAAE:
    """An untrained :class:`MAAE` for ``config``'s variant and sizes (keyword arguments
    override :class:`MAAEConfig` fields, e.g. ``variant="UniAD"``)."""
    c = replace(config or MAAEConfig(), **overrides)
    if c.variant not in VARIANTS:
        msg = f"variant {c.variant!r}; expected one of {list(VARIANTS)} (Table 3 and the UniAD baselines)"
        raise ValueError(msg)
    v = VARIANTS[c.variant]
    layers, decoder_layers = c.layers, 0
    if v.get("uniad"):
        encoder, decoder = uniad_depth(c)
        layers, decoder_layers = (encoder, decoder) if v["block"] == "uniad" else (encoder + decoder, 0)
    return MAAE(channels, grid, fusion=v["fusion"], noise=v["noise"], block=v["block"],
                hidden=c.hidden, layers=layers, decoder_layers=decoder_layers, group=c.group,
                heads=c.heads, dilation=c.dilation, neighbour=c.neighbour if v["masked"] else 0,
                amplitude=c.amplitude, ang_mode=c.ang_mode, lambda_ang=c.lambda_ang,
                lambda_re=c.lambda_re, jitter_scale=c.jitter_scale, ffm_train=c.ffm_train)


class MAAEDetector(Detector):
    """fit / predict wrapper (:class:`adlib.training.detector.Detector`): cached backbone features +
    :class:`MAAE` trained with :func:`adlib.training.train.fit` (Adam, AMP on CUDA, checkpoints, resume).

    ``fit(train)`` takes one data set (separate training) or a mapping / list of data sets
    (unified: one model for all categories); ``predict(test)`` returns image scores ``(N,)``
    and maps ``(N, H, W)`` (numpy) at the backbone input size. Keyword arguments override
    :class:`MAAEConfig`; ``epochs=0`` keeps the model untrained (the sanity reference).
    ``parameter_count`` leaves FFM's fixed convolutions out unless ``ffm_train``.
    """

    config_class, name = MAAEConfig, "MAAE"

    def __init__(self, cache: FeatureCache | None = None, *, device: str | torch.device = "auto",
                 progress: bool | str = True, checkpoint_dir: str | None = None, **config: Any):
        super().__init__(device=device, progress=progress, checkpoint_dir=checkpoint_dir, **config)
        if self.config.variant not in VARIANTS:
            msg = f"variant {self.config.variant!r}; expected one of {list(VARIANTS)}"
            raise ValueError(msg)
        self.cache = cache or FeatureCache(stages=self.config.stages)
        missing = [s for s in self.config.stages if s not in self.cache.stages]
        if missing:
            msg = f"stages {missing} are not in the feature cache (it holds {self.cache.stages}); build FeatureCache(stages=...) with them"
            raise ValueError(msg)

    def levels(self, data: Any, desc: str = "backbone features") -> list[torch.Tensor]:
        """The cached backbone levels of a data set, as stored (the model standardises them)."""
        feats = self.cache.get(data, desc)
        return [feats[self.cache.stages.index(s)] for s in self.config.stages]

    def fit(self, train: Any) -> "MAAEDetector":
        parts = [self.levels(s, "backbone features (train)") for s in training_sets(train)]
        torch.manual_seed(self.config.seed)
        first = parts[0]
        self.model = build_maae([f.shape[1] for f in first], tuple(first[-1].shape[-2:]), self.config)
        if self.config.standardize:
            # channel statistics of the TRAINING features only (never the test split)
            self.model.set_statistics(channel_statistics(parts))
        # the cached tensors themselves, no standardised copy: a paper-size cache is gigabytes
        data = ConcatDataset([CachedFeatures(p) for p in parts]) if len(parts) > 1 else CachedFeatures(first)
        if self.config.epochs == 0:  # the untrained model: a sanity reference for the claims
            return self._untrained()
        ang, extra = self.model.ang, {}
        lr = self.config.lr

        def adam_without_w(params):
            # alternating steps: W has its own optimiser (checkpointed as extra state)
            return torch.optim.Adam([p for p in params if ang is None or p is not ang.weight], lr=lr)

        def adam_with_reversed_w(params):
            # gradient reversal: W is stepped with the reconstructor; maae_loss gives it the
            # gradient of Eq. 1, -lambda_ANG dL_e/dW + lambda_re d||W||_2/dW
            return torch.optim.Adam(list(params), lr=lr)

        optimizer = adam_without_w
        if ang is not None and ang.mode == "alternate":
            self.model.ang_optimizer = torch.optim.Adam([ang.weight], lr=lr)
            extra = {"ang_optimizer": self.model.ang_optimizer}
        elif ang is not None:
            optimizer = adam_with_reversed_w
        return self._timed_fit(maae_loss, data, optimizer=optimizer, lr=lr, extra_state=extra,
                               desc=f"MAAE {self.config.variant}")

    @torch.no_grad()
    def reconstruct(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructions ``Y`` and targets ``X`` ``(n, N, C)`` of a data set (CPU, float32)."""
        self._require_fitted()
        ys, xs = [], []
        for batch in self._batches(self.levels(data, "backbone features (test)")):
            y, x = self.model(batch)
            ys.append(y.float().cpu())
            xs.append(x.float().cpu())
        return torch.cat(ys), torch.cat(xs)

    def predict(self, test: Any) -> tuple[np.ndarray, np.ndarray]:
        y, x = self.reconstruct(test)
        size = self.cache.image_size or test[0]["image"].shape[-1]
        maps = anomaly_map(y, x, self.model.grid, size, self.config.map_sigma)
        return image_scores(maps), maps.numpy()
