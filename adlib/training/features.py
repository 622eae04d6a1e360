"""Frozen-backbone features, computed once per image and shared by every model that reads them.

A chapter whose model reads a frozen pretrained backbone (RLR, MAAE, ...) asks a
:class:`FeatureCache` for the features of a data set; the backbone runs once per image, and
every epoch, ablation cell and seed reuses the tensors. :func:`shared_feature_cache` keeps one
cache per backbone and image size in the process, so the notebook and the study engine's serial
executor (same process) share it, and each worker of a process pool builds its own once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adlib.nn.backbones import LITE0, FeatureExtractor
from adlib.training.progress import progress


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


_SHARED: dict[tuple, FeatureCache] = {}


def shared_feature_cache(backbone: str = LITE0, stages: Sequence[int] = (1, 2, 3), *,
                         image_size: int | None = None, device: str | torch.device | None = None,
                         dtype: torch.dtype = torch.float32, show_progress: bool = False
                         ) -> FeatureCache:
    """The process-wide cache of ``backbone`` at ``image_size`` holding at least ``stages``.

    A request for stages the cache lacks replaces it by one holding both sets (features are
    then extracted again, once); later requests for fewer stages reuse it.
    """
    key = (backbone, image_size, str(device), dtype)
    cache = _SHARED.get(key)
    if cache is None or not set(stages) <= set(cache.stages):
        wanted = sorted(set(stages) | set(cache.stages if cache else ()))
        cache = FeatureCache(backbone, stages=wanted, image_size=image_size, device=device,
                             dtype=dtype, show_progress=show_progress)
        _SHARED[key] = cache
    return cache
