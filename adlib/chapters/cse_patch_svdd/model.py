"""Patch SVDD (Yi & Yoon, ACCV 2020) with the C-SE channel attention and the LBR classifier.

The pieces, in the paper's words:

* :class:`PatchEncoder32` -- eight 3x3 convolutions without padding; a 32-px patch becomes one
  D-dim embedding (1x1). Channel attention (none / SE / C-SE) after the last ``n`` convs.
* :class:`HierarchicalEncoder64` -- a 64-px patch as four 32-px quadrants through the shared
  32-px encoder, then conv 2x2 and conv 1x1 down to one D-dim embedding.
* :class:`PositionClassifier` -- the self-supervised task: from ``h1 - h2`` predict which of
  the 8 neighbouring positions patch 2 was cut from; ``lbr=True`` uses Linear-BatchNorm-ReLU
  blocks (the C-SE paper's LBR) instead of Linear-LeakyReLU.
* :class:`PatchPairs` -- samples position pairs and SVDD pairs (a patch and a slightly
  jittered copy) from mean-subtracted training images.
* :func:`patch_svdd_loss` -- ``L = CE_64 + CE_32 + lambda * (SVDD'_64 + SVDD'_32)`` with
  ``SVDD' = ||f(p) - f(p')||_2`` averaged over the pairs.
* :func:`dense_embeddings`, :func:`spread_patch_scores` and :class:`PatchSVDD` -- inference:
  every patch on a grid (K=64 stride 16, K=32 stride 4), its L2 distance to the nearest
  training embedding (exact, :func:`adlib.nn.knn.nearest_neighbour_distance`), spread over
  the pixels it covers; maps for 64, 32, their sum and their product (the paper's); image
  score = max of the map.

:class:`PatchSVDD` has ``fit(train_dataset)`` / ``predict(test_dataset) -> (scores, maps)``,
so :func:`adlib.training.evaluation.evaluate_categories` runs it like any other model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from adlib.nn import count_parameters
from adlib.nn.knn import nearest_neighbour_distance
from adlib.nn.squeeze_excite import ATTENTION_KINDS, channel_attention
from adlib.training.detector import image_scores, not_fitted, untrained_history
from adlib.training.train import fit, pick_device, seed_everything

#: Output channels of the eight convolutions of the 32-px encoder (input: 3).
ENCODER_CHANNELS = (32, 64, 128, 128, 64, 32, 32, 64)
#: Offsets (row, column direction) of the 8 neighbour positions of the position task.
NEIGHBOUR_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
#: The four anomaly maps :class:`PatchSVDD` computes; ``"mult"`` is the paper's.
MAP_KINDS = ("64", "32", "sum", "mult")


# --------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------

class PatchEncoder32(nn.Module):
    """The 32-px encoder: 8 convs 3x3, no padding, conv1 stride 2; ``(B,3,32,32) -> (B,D,1,1)``.

    Channels 3-32-64-128-128-64-32-32-D; LeakyReLU(0.1) after convs 1-7, tanh after conv 8.
    ``attention`` ("none", "se", "cse") is inserted after the activation of the last
    ``attention_layers`` convs (the paper: the last six; the first two are too narrow for the
    C/r bottleneck). Larger inputs give a map of embeddings (stride 2); without attention
    that map equals encoding each 32-px window separately.
    """

    def __init__(self, dim: int = 64, attention: str = "none", reduction: int = 16,
                 attention_layers: int = 6) -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            msg = f"attention must be one of {ATTENTION_KINDS}, found {attention!r}."
            raise ValueError(msg)
        if not 0 <= attention_layers <= len(ENCODER_CHANNELS):
            msg = f"attention_layers must be in 0..8 (convs of the encoder), found {attention_layers}."
            raise ValueError(msg)
        self.dim, self.attention, self.reduction = dim, attention, reduction
        self.attention_layers = attention_layers
        channels = (*ENCODER_CHANNELS[:-1], dim)
        first_attended = len(channels) - attention_layers
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate(channels):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=2 if i == 0 else 1))
            layers.append(nn.Tanh() if i == len(channels) - 1 else nn.LeakyReLU(0.1))
            if attention != "none" and i >= first_attended:
                layers.append(channel_attention(attention, c_out, reduction))
            c_in = c_out
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def encoder_table(encoder: PatchEncoder32, patch: int = 32):
    """The 32-px encoder as a table: one row per convolution with its kernel, stride,
    channels, output size for a ``patch``-px input, activation, channel attention and
    parameters (attention included), a readable stand-in for the printed module tree."""
    rows, size = [], patch
    for layer in encoder.layers:
        if isinstance(layer, nn.Conv2d):
            size = (size - layer.kernel_size[0]) // layer.stride[0] + 1
            rows.append({"layer": f"conv{len(rows) + 1}", "kernel": f"{layer.kernel_size[0]}x{layer.kernel_size[1]}",
                         "stride": layer.stride[0], "channels": f"{layer.in_channels} → {layer.out_channels}",
                         "output": f"{size}x{size}", "activation": "", "attention": "—",
                         "parameters": count_parameters(layer)})
        elif isinstance(layer, (nn.LeakyReLU, nn.Tanh)):
            rows[-1]["activation"] = "tanh" if isinstance(layer, nn.Tanh) else "LeakyReLU(0.1)"
        elif not isinstance(layer, nn.Identity):
            rows[-1]["attention"] = "C-SE" if getattr(layer, "long_connection", False) else "SE"
            rows[-1]["parameters"] += count_parameters(layer)
    return pd.DataFrame(rows).set_index("layer")


class HierarchicalEncoder64(nn.Module):
    """The 64-px encoder: four 32-px quadrants through ``encoder32``, tiled 2x2, then
    conv 2x2 (D->128) - LeakyReLU(0.1) - conv 1x1 (128->D) - tanh: ``(B,3,64,64) -> (B,D,1,1)``."""

    def __init__(self, encoder32: PatchEncoder32) -> None:
        super().__init__()
        self.encoder32 = encoder32
        dim = encoder32.dim
        self.head = nn.Sequential(nn.Conv2d(dim, 128, 2), nn.LeakyReLU(0.1),
                                  nn.Conv2d(128, dim, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (64, 64):
            msg = f"HierarchicalEncoder64 encodes 64x64 patches, found {tuple(x.shape)}."
            raise ValueError(msg)
        b = x.shape[0]
        quadrants = torch.cat([x[:, :, :32, :32], x[:, :, :32, 32:],
                               x[:, :, 32:, :32], x[:, :, 32:, 32:]])      # (4B,3,32,32)
        h = self.encoder32(quadrants).view(4, b, -1)                       # (4,B,D)
        tiled = torch.stack([torch.stack([h[0], h[1]], -1),
                             torch.stack([h[2], h[3]], -1)], -2)           # (B,D,2,2)
        return self.head(tiled)


# --------------------------------------------------------------------------------------------
# the position classifier
# --------------------------------------------------------------------------------------------

class NormalizedLinear(nn.Linear):
    """A linear layer whose weight rows are renormalised to unit L2 norm at every call.

    The gradient flows through the normalisation, so the 8 class directions are learnt. The
    official code normalises inside ``torch.no_grad()`` (and over the other axis): its weight
    never receives a gradient, so that layer stays a fixed random projection and only its
    bias trains. Neither paper describes the layer; the book trains it (a classifier whose
    last layer cannot learn is an odd thing to teach), and says so in chapter 1.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1), self.bias)


class PositionClassifier(nn.Module):
    """Which of the 8 neighbour positions? ``(h1 - h2)`` ``(B, D) -> logits (B, 8)``.

    Original: Linear(D,128)-LeakyReLU-Linear(128,128)-LeakyReLU-NormalizedLinear(128,8).
    ``lbr=True``: the hidden blocks become Linear-BatchNorm-ReLU (the C-SE paper's LBR,
    same widths: a guess), the normalised output layer stays.
    """

    def __init__(self, dim: int = 64, hidden: int = 128, lbr: bool = False) -> None:
        super().__init__()
        self.lbr = lbr

        def block(c_in: int) -> list[nn.Module]:
            if lbr:
                return [nn.Linear(c_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            return [nn.Linear(c_in, hidden), nn.LeakyReLU(0.1)]

        self.layers = nn.Sequential(*block(dim), *block(hidden), NormalizedLinear(hidden, 8))

    def forward(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        return self.layers((h1 - h2).flatten(1))


class PatchSVDDNet(nn.Module):
    """The trainable parts together: encoders for K=64 and K=32 and one classifier per K."""

    def __init__(self, dim: int = 64, attention: str = "cse", reduction: int = 16,
                 attention_layers: int = 6, lbr: bool = True,
                 patch_sizes: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        bad = [k for k in patch_sizes if k not in (32, 64)]
        if bad or not patch_sizes:
            msg = f"patch_sizes must be a non-empty subset of (64, 32), found {tuple(patch_sizes)}."
            raise ValueError(msg)
        self.patch_sizes = tuple(sorted(set(patch_sizes), reverse=True))
        self.encoder32 = PatchEncoder32(dim, attention, reduction, attention_layers)
        self.encoder64 = HierarchicalEncoder64(self.encoder32)
        self.classifiers = nn.ModuleDict({str(k): PositionClassifier(dim, lbr=lbr)
                                          for k in self.patch_sizes})

    def encoder(self, k: int) -> nn.Module:
        """The encoder for patch size ``k`` (64 shares the 32-px encoder's weights)."""
        return self.encoder64 if k == 64 else self.encoder32

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, 3, K, K) -> (B, D)`` for K in {32, 64}."""
        return self.encoder(patches.shape[-1])(patches).flatten(1)


# --------------------------------------------------------------------------------------------
# sampling and loss
# --------------------------------------------------------------------------------------------

def _random_corner(size: int, k: int, generator: torch.Generator | None) -> tuple[int, int]:
    hi = size - k + 1
    return (int(torch.randint(hi, (1,), generator=generator)),
            int(torch.randint(hi, (1,), generator=generator)))


def position_pair_coords(size: int, k: int, generator: torch.Generator | None = None
                         ) -> tuple[tuple[int, int], tuple[int, int], int]:
    """Top-left corners of a position pair and its label (0..7) in a ``size``-px image.

    Patch 2 sits in one of the 8 directions at an offset of ``3K/4 + U{0..K/4-1}`` px per
    moved axis, clipped into the image (Patch SVDD's sampling).
    """
    if size < k:
        msg = f"an image of {size} px cannot hold a {k}-px patch; use image_size >= {k}."
        raise ValueError(msg)
    h1, w1 = _random_corner(size, k, generator)
    label = int(torch.randint(8, (1,), generator=generator))
    dh, dw = NEIGHBOUR_DIRECTIONS[label]
    jitter = torch.randint(max(1, k // 4), (2,), generator=generator).tolist()
    h2 = min(max(h1 + dh * (3 * k // 4 + jitter[0]), 0), size - k)
    w2 = min(max(w1 + dw * (3 * k // 4 + jitter[1]), 0), size - k)
    return (h1, w1), (h2, w2), label


def svdd_pair_coords(size: int, k: int, generator: torch.Generator | None = None
                     ) -> tuple[tuple[int, int], tuple[int, int]]:
    """A patch and a neighbour shifted by up to ``K/32`` px per axis (never both 0), clipped."""
    h1, w1 = _random_corner(size, k, generator)
    reach = max(1, k // 32)
    while True:
        dh, dw = (torch.randint(-reach, reach + 1, (2,), generator=generator)).tolist()
        if dh or dw:
            break
    return (h1, w1), (min(max(h1 + dh, 0), size - k), min(max(w1 + dw, 0), size - k))


class PatchPairs(torch.utils.data.Dataset):
    """Training samples of Patch SVDD from mean-subtracted images ``(N, 3, S, S)``.

    Item ``i`` uses image ``i % N`` (``samples_per_image`` items per image and epoch) and holds,
    per patch size K: ``pos{K}_a``, ``pos{K}_b`` (a position pair, each with a small RGB shift
    and pixel noise so the task cannot be solved from colour alone), ``pos{K}_label``, and
    ``svdd{K}_a``, ``svdd{K}_b`` (an SVDD pair). Randomness comes from torch's global
    generator, which :func:`adlib.training.train.fit` seeds.
    """

    def __init__(self, images: torch.Tensor, patch_sizes: Sequence[int] = (64, 32),
                 samples_per_image: int = 100, perturb_std: float = 0.02) -> None:
        self.images, self.patch_sizes = images, tuple(patch_sizes)
        self.samples_per_image, self.perturb_std = samples_per_image, perturb_std
        size = images.shape[-1]
        if images.shape[-2] != size or size < max(self.patch_sizes):
            msg = (f"expected square images of at least {max(self.patch_sizes)} px, found "
                   f"{tuple(images.shape)}; raise image_size or drop K=64 (patch_sizes=(32,)).")
            raise ValueError(msg)

    def __len__(self) -> int:
        return len(self.images) * self.samples_per_image

    def _crop(self, image: torch.Tensor, corner: tuple[int, int], k: int) -> torch.Tensor:
        return image[:, corner[0]:corner[0] + k, corner[1]:corner[1] + k]

    def _perturb(self, patch: torch.Tensor) -> torch.Tensor:
        shift = torch.randn(3, 1, 1) * self.perturb_std
        return patch + shift + torch.randn_like(patch) * self.perturb_std

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index % len(self.images)]
        size = image.shape[-1]
        item: dict[str, torch.Tensor] = {}
        for k in self.patch_sizes:
            a, b, label = position_pair_coords(size, k)
            item[f"pos{k}_a"] = self._perturb(self._crop(image, a, k))
            item[f"pos{k}_b"] = self._perturb(self._crop(image, b, k))
            item[f"pos{k}_label"] = torch.tensor(label)
            a, b = svdd_pair_coords(size, k)
            item[f"svdd{k}_a"] = self._crop(image, a, k)
            item[f"svdd{k}_b"] = self._crop(image, b, k)
        return item


def colour_ramp_images(n: int = 8, size: int = 96) -> torch.Tensor:
    """``(n, 3, size, size)`` copies of one image whose colour encodes position (red: column,
    green: row, from -0.5 to 0.5).

    A patch's position is readable from its colour (a 24-31 px shift changes it by ~0.3, far
    above the 0.02 jitter of :class:`PatchPairs`), so the position task must be learnt here
    within a few dozen steps: a wiring check of the self-supervision, and the easy end of
    chapter 1's "is the position task learning?" plot.
    """
    y, x = torch.meshgrid(torch.linspace(-0.5, 0.5, size), torch.linspace(-0.5, 0.5, size),
                          indexing="ij")
    return torch.stack([x, y, torch.zeros_like(x)]).expand(n, 3, size, size).contiguous()


def svdd_pair_loss(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """SVDD' (Patch SVDD Eq. 3): mean over pairs of the *unsquared* L2 distance ``||h1 - h2||``."""
    return (h1 - h2).flatten(1).norm(dim=1).mean()


def patch_svdd_loss(model: PatchSVDDNet, batch: dict[str, torch.Tensor], lam: float = 1e-3
                    ) -> dict[str, torch.Tensor]:
    """``L = sum_K CE_K + lambda * sum_K SVDD'_K`` (Patch SVDD Eq. 5) on one batch of pairs.

    Returns ``{"loss", "ce64", "svdd64", "ce32", "svdd32"}`` (the K's the model trains);
    :func:`adlib.training.train.fit` logs every term.
    """
    out: dict[str, torch.Tensor] = {}
    total = 0.0
    for k in model.patch_sizes:
        a, b = batch[f"pos{k}_a"], batch[f"pos{k}_b"]
        h = model.encode(torch.cat([a, b]))
        logits = model.classifiers[str(k)](h[: len(a)], h[len(a):])
        ce = F.cross_entropy(logits, batch[f"pos{k}_label"])
        a, b = batch[f"svdd{k}_a"], batch[f"svdd{k}_b"]
        h = model.encode(torch.cat([a, b]))
        svdd = svdd_pair_loss(h[: len(a)], h[len(a):])
        out[f"ce{k}"], out[f"svdd{k}"] = ce.detach(), svdd.detach()
        total = total + ce + lam * svdd
    out["loss"] = total
    return out


# --------------------------------------------------------------------------------------------
# inference: dense embeddings and anomaly maps
# --------------------------------------------------------------------------------------------

def grid_size(image_size: int, k: int, stride: int) -> int:
    """Patches per side: ``(S - K) // stride + 1`` (13 for S=256, K=64, stride 16; 57 for K=32, 4)."""
    return (image_size - k) // stride + 1


@torch.no_grad()
def dense_embeddings_reference(model: PatchSVDDNet, images: torch.Tensor, k: int, stride: int,
                               batch_size: int = 64) -> torch.Tensor:
    """Every ``k``-px patch on a grid of ``stride`` px, each patch cut out and encoded on its
    own: ``(N,3,S,S) -> (N, G, G, D)``. The definition :func:`dense_embeddings` is tested
    against, and its path for odd strides."""
    model.eval()
    device = next(model.parameters()).device
    n, _, size, _ = images.shape
    g = grid_size(size, k, stride)
    encoder = model.encoder(k)
    patches = images.unfold(2, k, stride).unfold(3, k, stride)           # (N,3,G,G,K,K)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * g * g, 3, k, k)
    rows = [encoder(patches[i:i + batch_size].to(device)).flatten(1)
            for i in range(0, len(patches), batch_size)]
    return torch.cat(rows).view(n, g, g, -1)


def _split_at_attention(encoder: PatchEncoder32) -> tuple[nn.Sequential, nn.Sequential]:
    """The encoder's layers before its first channel attention (local operations only, exact
    over a whole image) and from there on (pooling over one patch at a time)."""
    layers = list(encoder.layers)
    first = next((i for i, m in enumerate(layers)
                  if not isinstance(m, (nn.Conv2d, nn.LeakyReLU, nn.Tanh, nn.Identity))), len(layers))
    return nn.Sequential(*layers[:first]), nn.Sequential(*layers[first:])


def _embedding_map32(encoder: PatchEncoder32, images: torch.Tensor, step: int,
                     batch_size: int) -> torch.Tensor:
    """The 32-px embedding of every patch whose corner lies on a ``step``-px grid (``step``
    even): ``(N,3,S,S) -> (N, D, G, G)``, G = (S - 32) // step + 1.

    Conv1 has stride 2 and no conv pads, so the layers before the first attention block, run
    over the whole image, give at position j exactly what the 32-px patch at pixel 2j gives;
    the rest (SE / C-SE pool over the patch) runs per patch on windows of that map.
    """
    trunk, rest = _split_at_attention(encoder)
    g = (images.shape[-1] - 32) // step + 1
    shared = trunk(images)                                                 # (N,C,(S-32)/2+w,..)
    if not len(rest):
        return shared[:, :, ::step // 2, ::step // 2][:, :, :g, :g]
    window = trunk(images.new_zeros(1, 3, 32, 32)).shape[-1]
    windows = shared.unfold(2, window, step // 2).unfold(3, window, step // 2)[:, :, :g, :g]
    rows_per_call = max(1, batch_size // g)   # copy a few grid rows of windows at a time
    out = []
    for image in windows:                                                  # (C,G,G,w,w)
        for r in range(0, g, rows_per_call):
            chunk = image[:, r:r + rows_per_call].permute(1, 2, 0, 3, 4)
            out.append(rest(chunk.reshape(-1, *chunk.shape[2:])).flatten(1))
    return torch.cat(out).view(len(images), g, g, -1).permute(0, 3, 1, 2)


@torch.no_grad()
def dense_embeddings(model: PatchSVDDNet, images: torch.Tensor, k: int, stride: int,
                     batch_size: int = 64, image_batch: int = 8) -> torch.Tensor:
    """Every ``k``-px patch on a grid of ``stride`` px: ``(N,3,S,S) -> (N, G, G, D)``.

    Equal to encoding each patch on its own (:func:`dense_embeddings_reference`) but shares
    the convolutions of overlapping patches: without attention the 32-px encoder runs once
    over each image; with SE / C-SE, up to its first attention block. A 64-px patch's four
    quadrants are 32-px patches 32 px apart, so the hierarchical head runs as a 2x2
    convolution dilated to that distance over the 32-px embedding map. Odd strides (the map
    has stride 2) take the reference path. ``batch_size``: patches per call after the first
    attention block (64 was faster than 512 on a 2-core CPU); ``image_batch``: images per
    whole-image pass.
    """
    if stride % 2:
        return dense_embeddings_reference(model, images, k, stride, batch_size)
    model.eval()
    device = next(model.parameters()).device
    g = grid_size(images.shape[-1], k, stride)
    step = stride if k == 32 else math.gcd(stride, 32)        # 32-px corners needed
    if step % 2:
        return dense_embeddings_reference(model, images, k, stride, batch_size)
    out = []
    for i in range(0, len(images), image_batch):
        h = _embedding_map32(model.encoder32, images[i:i + image_batch].to(device), step, batch_size)
        if k == 64:
            head = model.encoder64.head
            h = F.conv2d(h, head[0].weight, head[0].bias, dilation=32 // step)
            h = head[1:](h)[:, :, ::stride // step, ::stride // step]
        out.append(h[:, :, :g, :g].permute(0, 2, 3, 1))
    return torch.cat(out)


def spread_patch_scores(scores: torch.Tensor, k: int, stride: int, image_size: int) -> torch.Tensor:
    """Spread each patch's score evenly over the pixels it covers: ``(N,G,G) -> (N,S,S)``.

    A pixel's value is the mean score of the patches that contain it (pixels no patch covers,
    at most ``stride - 1`` rows at the far edges, take 0).
    """
    n, g, _ = scores.shape
    cols = scores.reshape(n, 1, g * g).expand(n, k * k, g * g).contiguous()
    summed = F.fold(cols, (image_size, image_size), k, stride=stride)
    count = F.fold(torch.ones_like(cols[:1]), (image_size, image_size), k, stride=stride)
    return (summed / count.clamp_min(1))[:, 0]


def nearest_distances(test_embeddings: torch.Tensor, train_embeddings: torch.Tensor
                      ) -> torch.Tensor:
    """Each test patch's L2 distance to its nearest training patch embedding (any position).

    ``(N, G, G, D)`` and ``(M, G', G', D)`` -> ``(N, G, G)``; exact (see adlib.nn.knn).
    """
    n, g, g2, d = test_embeddings.shape
    dist, _ = nearest_neighbour_distance(test_embeddings.reshape(-1, d),
                                         train_embeddings.reshape(-1, d))
    return dist.view(n, g, g2)


# --------------------------------------------------------------------------------------------
# the model a chapter uses
# --------------------------------------------------------------------------------------------

def _images_of(dataset: Any) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))]).float()


class PatchSVDD:
    """Patch SVDD with optional SE / C-SE and LBR: ``fit(train_ds)`` and ``predict(test_ds)``.

    Args:
        attention: "none" (Patch SVDD), "se" or "cse". reduction: r. attention_layers: C-SE in
            the last n of the 8 convs. lbr: LBR position classifier.
        lam: lambda of the loss. patch_sizes: (64, 32) as the paper; (32,) for images < 64 px.
        epochs, batch_size, lr, samples_per_image: training (paper: 300, 64, 1e-4, 100);
            ``epochs=0`` keeps the random initialisation.
        strides: {K: stride} of the dense grids (paper: 64 -> 16, 32 -> 4).
        anomaly_map: which map ``predict`` returns, one of ``MAP_KINDS`` ("mult": the paper's).
        train_noise_var: variance of Gaussian noise added to the training images (robustness
            ablation, in the [0, 1] image scale; 0 = none).
        device, seed, progress: as in :func:`adlib.training.train.fit`.
        checkpoint_root: where to keep ``last.pt`` per category and settings, so that a run
            killed mid-training resumes (e.g. under the notebook's ``output_dir``).
        checkpoint_dir: this one folder instead (a later ``fit`` with more ``epochs`` continues
            the run there: :mod:`adlib.training.curves` trains one epoch at a time this way).

    After ``fit``: ``net``, ``history`` (loss per epoch), ``mean_image``, ``train_embeddings``.
    After ``predict``: ``maps_by_kind`` holds all four maps ``(N, S, S)`` and
    ``scores_by_kind`` their image scores (max of each map). ``parameter_count``: the trainable
    parameters of ``net``, as every chapter counts them (:mod:`adlib.training.detector`).
    """

    #: A cell's settings that are constructor options as they are (:meth:`options_from`).
    SETTINGS = ("attention", "lbr", "attention_layers", "reduction", "train_noise_var", "lam",
                "epochs", "batch_size", "lr", "samples_per_image")

    def __init__(self, attention: str = "cse", reduction: int = 16, attention_layers: int = 6,
                 lbr: bool = True, lam: float = 1e-3, patch_sizes: Sequence[int] = (64, 32),
                 epochs: int = 300, batch_size: int = 64, lr: float = 1e-4,
                 samples_per_image: int = 100, strides: dict[int, int] | None = None,
                 anomaly_map: str = "mult", train_noise_var: float = 0.0, dim: int = 64,
                 device: str = "auto", seed: int = 0, progress: bool | str = True,
                 desc: str | None = None, checkpoint_root: str | os.PathLike | None = None,
                 checkpoint_dir: str | os.PathLike | None = None) -> None:
        if anomaly_map not in MAP_KINDS:
            msg = f"anomaly_map must be one of {MAP_KINDS}, found {anomaly_map!r}."
            raise ValueError(msg)
        self.attention, self.reduction, self.attention_layers = attention, reduction, attention_layers
        self.lbr, self.lam, self.patch_sizes = lbr, lam, tuple(sorted(set(patch_sizes), reverse=True))
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.samples_per_image = samples_per_image
        self.strides = {64: 16, 32: 4, **(strides or {})}
        self.anomaly_map, self.train_noise_var, self.dim = anomaly_map, train_noise_var, dim
        self.device, self.seed, self.progress = device, seed, progress
        self.checkpoint_root, self.checkpoint_dir = checkpoint_root, checkpoint_dir
        self.desc = desc or f"Patch SVDD ({attention}{'+LBR' if lbr else ''})"
        with torch.random.fork_rng():  # the initial weights depend on the seed only
            torch.manual_seed(seed)
            self.net = PatchSVDDNet(dim, attention, reduction, attention_layers, lbr,
                                    self.patch_sizes)

    @classmethod
    def options_from(cls, settings: Any) -> dict[str, Any]:
        """The constructor options of a cell's ``settings`` (for
        :func:`adlib.training.detector.detector_from_settings`): :data:`SETTINGS` as they are,
        ``patch_sizes`` from its text ("64,32"), ``strides`` from ``stride32`` / ``stride64``."""
        return {**{k: settings[k] for k in cls.SETTINGS},
                "patch_sizes": tuple(int(k) for k in str(settings["patch_sizes"]).split(",")),
                "strides": {32: settings["stride32"], 64: settings["stride64"]}}

    @property
    def parameter_count(self) -> int:
        return count_parameters(self.net)

    def fit(self, train_dataset: Any) -> PatchSVDD:
        """Train on the (defect-free) training images, then embed them all as the memory."""
        seed_everything(self.seed)
        images = _images_of(train_dataset)
        if self.train_noise_var > 0:
            noise = torch.Generator().manual_seed(self.seed + 7919)
            images = images + math.sqrt(self.train_noise_var) * torch.randn(
                images.shape, generator=noise)
        self.mean_image = images.mean(0, keepdim=True)
        images = images - self.mean_image
        pairs = PatchPairs(images, self.patch_sizes, self.samples_per_image)
        self.device_ = pick_device(self.device)
        on_gpu = self.device_.type == "cuda"
        if self.epochs > 0:
            # On a GPU: fp16 autocast (the SVDD' norm runs in fp32 under autocast) and worker
            # processes cropping the patch pairs, so that sampling keeps up with the small
            # encoder; on CPU both are off (autocast is slow there, workers compete for cores).
            ckpt = self._checkpoint_dir(train_dataset, images.shape[-1])
            result = fit(self.net, lambda m, b: patch_svdd_loss(m, b, self.lam), pairs,
                         checkpoint_dir=ckpt,
                         epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                         device=self.device_, seed=self.seed, amp=on_gpu,
                         num_workers=min(4, os.cpu_count() or 1) if on_gpu else 0,
                         drop_last=len(pairs) > self.batch_size, desc=self.desc,
                         progress=self.progress)
            self.history = result.history
            if result.resumed_from is not None and self.progress:
                print(f"{self.desc}: resumed from epoch {result.resumed_from} ({ckpt})", flush=True)
        else:  # epochs=0: the randomly initialised encoder (a reference point)
            self.history = untrained_history()
        self.net.to(self.device_).eval()
        self.train_embeddings = {k: dense_embeddings(self.net, images, k, self.strides[k])
                                 for k in self.patch_sizes}
        return self

    def set_epochs(self, epochs: int, checkpoint_dir: str) -> None:
        """Make the next ``fit`` train up to ``epochs``, resuming from ``checkpoint_dir`` (the
        step of a test curve, :mod:`adlib.training.curves`)."""
        self.epochs, self.checkpoint_dir = epochs, checkpoint_dir

    def _checkpoint_dir(self, train_dataset: Any, image_size: int) -> Path | None:
        """``checkpoint_root/<category>__<hash of every training setting>``: a rerun with the
        same settings resumes from its ``last.pt``, one with other settings starts afresh."""
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        if self.checkpoint_root is None:
            return None

        settings = [self.attention, self.reduction, self.attention_layers, self.lbr, self.lam,
                    self.patch_sizes, self.epochs, self.batch_size, self.lr,
                    self.samples_per_image, self.train_noise_var, self.dim, self.seed, image_size]
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
        category = getattr(train_dataset, "category", None) or "data"
        return Path(self.checkpoint_root) / f"{category}__{digest}"

    def predict(self, test_dataset: Any) -> tuple[np.ndarray, np.ndarray]:
        """Image scores ``(N,)`` and anomaly maps ``(N, S, S)`` (``anomaly_map`` kind)."""
        if not hasattr(self, "train_embeddings"):
            raise not_fitted("Patch SVDD")
        images = _images_of(test_dataset) - self.mean_image
        size = images.shape[-1]
        maps = {}
        for k in self.patch_sizes:
            emb = dense_embeddings(self.net, images, k, self.strides[k])
            dist = nearest_distances(emb, self.train_embeddings[k]).cpu()
            maps[str(k)] = spread_patch_scores(dist, k, self.strides[k], size)
        if len(self.patch_sizes) == 2:
            maps["sum"] = maps["64"] + maps["32"]
            maps["mult"] = maps["64"] * maps["32"]
        else:  # one scale: every combination is that scale's map
            only = maps[str(self.patch_sizes[0])]
            maps.update({kind: only for kind in MAP_KINDS if kind not in maps})
        self.maps_by_kind = {kind: m.numpy() for kind, m in maps.items()}
        self.scores_by_kind = {kind: image_scores(m) for kind, m in self.maps_by_kind.items()}
        return self.scores_by_kind[self.anomaly_map], self.maps_by_kind[self.anomaly_map]
