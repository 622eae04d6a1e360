"""Blocks of the noise-to-norm M-net (chapter 3): residual attention, pixel-(un)shuffle
resampling, and selective kernel feature fusion (SKFF).

Written from the paper (noise_to_norm_mnet) and its references as the book's implementation
notes summarise them (MPRNet's channel attention, SRMNet's pixel-shuffle resampling, MIRNet's
SKFF); no code copied.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Global average pool, 1x1 reduce, ReLU, 1x1 expand, sigmoid; multiplies the input."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualAttention(nn.Module):
    """The paper's residual attention module (Sec. 3.2.1, Fig. 3): in both pathways a 1x1
    convolution changes the channel count (Identity when it does not change); the attention
    path then runs conv3x3 - PReLU - conv3x3 and channel attention, and the two paths are added.
    ``(B, in, H, W) -> (B, out, H, W)``; ``padding_mode``: the 3x3 convolutions' border
    (``"zeros"``, PyTorch's default, or ``"reflect"``)."""

    def __init__(self, in_channels: int, out_channels: int, padding_mode: str = "zeros"):
        super().__init__()
        self.body = nn.Sequential(channel_change(in_channels, out_channels),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1, padding_mode=padding_mode),
                                  nn.PReLU(),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1, padding_mode=padding_mode),
                                  ChannelAttention(out_channels))
        self.skip = channel_change(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


def channel_change(in_channels: int, out_channels: int) -> nn.Module:
    """A 1x1 convolution from ``in_channels`` to ``out_channels``; Identity when they are equal."""
    return nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)


def merge_block(in_channels: int, out_channels: int, attention: bool = True,
                padding_mode: str = "zeros") -> nn.Module:
    """What follows each concatenation: a residual attention module, or (the paper's ablation)
    a 1x1 convolution that only changes the channel count."""
    if attention:
        return ResidualAttention(in_channels, out_channels, padding_mode)
    return nn.Conv2d(in_channels, out_channels, 1)


class Down(nn.Module):
    """Halve the resolution: PixelUnshuffle(2) (4x the channels, no information lost), 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4 * in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Up(nn.Module):
    """Double the resolution: 1x1 conv to 4x the output channels, PixelShuffle(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4 * out_channels, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SKFF(nn.Module):
    """Selective kernel feature fusion of ``branches`` maps of ``channels`` channels (same size):
    sum, global average pool, 1x1 conv to ``max(C / 8, 4)``, PReLU, one 1x1 conv per branch,
    softmax across the branches, weighted sum."""

    def __init__(self, channels: int, branches: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.PReLU())
        self.select = nn.ModuleList(nn.Conv2d(hidden, channels, 1) for _ in range(branches))

    def weights(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``(B, branches, C)``: each channel's softmax weights over the branches."""
        z = self.squeeze(sum(features))
        return torch.softmax(torch.stack([s(z) for s in self.select], dim=1), dim=1)[..., 0, 0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.select):
            msg = f"SKFF built for {len(self.select)} branches, got {len(features)}"
            raise ValueError(msg)
        w = self.weights(features)
        return sum(w[:, i, :, None, None] * f for i, f in enumerate(features))
