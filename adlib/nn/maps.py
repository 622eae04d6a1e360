"""Anomaly maps: smoothing and resizing, the same for every chapter."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_smooth(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, H, W)`` maps; kernel radius 4 sigma, reflect padding."""
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]
    # reflect padding needs pad < size; tiny maps fall back to edge replication
    mode = "reflect" if min(maps.shape[-2:]) > radius else "replicate"
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def resize_maps(maps: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(N, h, w)`` maps bilinearly resized to ``size`` (the masks' size); numpy out."""
    maps_t = torch.as_tensor(maps)
    if tuple(maps_t.shape[-2:]) == tuple(size):
        return maps_t.numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    return F.interpolate(maps_t[:, None].float(), size=tuple(size), mode="bilinear",
                         align_corners=False)[:, 0].numpy()
