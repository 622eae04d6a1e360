"""The book's simple baseline: nearest-neighbour distance on pretrained patch features.

This is PatchCore (Roth et al., CVPR 2022) without its coreset subsampling: every
training patch feature goes into the memory bank (optionally a seeded random subset, for
CPU speed), and a test patch's anomaly score is the L2 distance to its nearest bank
feature. Written from the paper's description; no code copied::

    features  EfficientNet-Lite0 stages 2 and 3 (strides 8 and 16, 40 + 112 channels),
              each averaged over its 3x3 neighbourhood (local aggregation), the stride-16
              map bilinearly upsampled to the stride-8 grid, concatenated (152 channels)
    bank      all training patch features (N_train * h * w rows), or ``max_bank_size`` of
              them drawn at random with a fixed seed
    map       s(p) = min_b ||f(p) - b||_2 on the h x w grid, bilinear upsampling to the
              image size, Gaussian smoothing (sigma = 4 px)
    score     max of the map
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adlib.nn.backbones import FeatureExtractor
from adlib.nn.knn import nearest_neighbour_distance
from adlib.nn.maps import gaussian_smooth
from adlib.training.progress import progress


def _images_of(batch) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch


class KNNBaseline(nn.Module):
    """kNN on pretrained patch features (PatchCore without coreset), see the module docstring.

    Args:
        backbone: timm name for :class:`FeatureExtractor` (Lite0 loads offline).
        layers: backbone feature indices (Lite0: 2 -> stride 8, 3 -> stride 16); the first
            one sets the patch grid.
        image_size: resize inputs to this square size first (None: use them as they come);
            maps come out at the size the backbone saw.
        pool_size: local aggregation window (3 -> 3x3 average, stride 1).
        max_bank_size: keep at most this many training patches (seeded random subset;
            None keeps all).
        sigma: Gaussian smoothing of the upsampled map, in pixels (0 disables).
        k: average distance to the k nearest bank features (1 = PatchCore's score).
        batch_size, seed, device, pretrained, progress: as named; device None picks CUDA
            when available.
    Usage: ``model = KNNBaseline().fit(train_set); scores, maps = model.predict(test_set)``.
    """

    def __init__(self, backbone: str = "tf_efficientnet_lite0", layers: Sequence[int] = (2, 3),
                 image_size: int | None = None, pool_size: int = 3,
                 max_bank_size: int | None = 20_000, sigma: float = 4.0, k: int = 1,
                 batch_size: int = 16, seed: int = 0, device: str | torch.device | None = None,
                 pretrained: bool = True, progress: bool = True):
        super().__init__()
        self.extractor = FeatureExtractor(backbone, out_indices=tuple(layers), pretrained=pretrained)
        self.image_size = image_size
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2)
        self.max_bank_size = max_bank_size
        self.sigma = sigma
        self.k = k
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.register_buffer("memory_bank", torch.empty(0, sum(self.extractor.channels)))
        self.to(self.device)

    @property
    def feature_stride(self) -> int:
        return self.extractor.strides[0]

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_size is None or tuple(images.shape[-2:]) == (self.image_size,) * 2:
            return images
        return F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear",
                             align_corners=False, antialias=True)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``(B, C, h, w)`` of images ``(B, 3, H, W)`` in [0, 1]; ``h = H / 8``."""
        maps = [self.pool(f) for f in self.extractor(images)]
        grid = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                            for f in maps[1:]]
        return torch.cat(maps, dim=1)

    def _batches(self, data, what: str):
        if isinstance(data, torch.Tensor):
            batches = data.split(self.batch_size)
        else:
            batches = DataLoader(data, batch_size=self.batch_size, shuffle=False)
        total = math.ceil(len(data) / self.batch_size)
        for batch in progress(batches, total=total, desc=what, disable=not self.progress, leave=False):
            yield self._resize(_images_of(batch).to(self.device, torch.float32))

    @torch.no_grad()
    def fit(self, train: Dataset | torch.Tensor) -> "KNNBaseline":
        """Fill the memory bank from defect-free images (dataset items or a ``(N,3,H,W)`` tensor)."""
        self.eval()
        rows = []
        for images in self._batches(train, "kNN baseline: train features"):
            feats = self.embed(images)
            rows.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
        bank = torch.cat(rows)
        if self.max_bank_size is not None and len(bank) > self.max_bank_size:
            generator = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(len(bank), generator=generator)[: self.max_bank_size]
            bank = bank[keep.to(bank.device)]
        self.memory_bank = bank.contiguous()
        return self

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """Smoothed anomaly maps ``(B, H, W)`` for images ``(B, 3, H, W)`` (after resizing)."""
        if len(self.memory_bank) == 0:
            msg = "the memory bank is empty: call fit(train_set) on defect-free images before predict()."
            raise RuntimeError(msg)
        feats = self.embed(images)
        b, c, h, w = feats.shape
        dist, _ = nearest_neighbour_distance(feats.permute(0, 2, 3, 1).reshape(-1, c),
                                             self.memory_bank, k=self.k)
        patch_scores = (dist if self.k == 1 else dist.mean(1)).view(b, 1, h, w)
        maps = F.interpolate(patch_scores, size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        return gaussian_smooth(maps, self.sigma)

    @torch.no_grad()
    def predict(self, test: Dataset | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Image scores ``(N,)`` (max of each map) and anomaly maps ``(N, H, W)``, float32."""
        self.eval()
        maps = [self.anomaly_map(images).cpu() for images in self._batches(test, "kNN baseline: test")]
        maps = torch.cat(maps)
        scores = maps.flatten(1).amax(1)
        return scores.numpy(), maps.numpy()
