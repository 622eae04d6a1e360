"""Blocks of MAAE (chapter 2): feature fusion, adaptive noise, mixed attention.

Written from the paper (maae_mixed_attention_autoencoder) and the book's implementation
notes; the paper has no public code and none was copied. Tokens are ``(B, N, C)`` with
``N = h * w`` grid positions in row-major order.

* :class:`FeatureFusion`: FFM (strided 3x3 convolutions carry a lower level down one octave,
  concatenate with the next level, repeat) or UniAD's baseline (bilinear resize of every
  level to the coarsest grid, concatenate). Both give the same grid and channel count.
* :class:`AdaptiveNoise`: ANG, a learnable ``W`` (N x C); noise ``A * W * eps``,
  ``eps ~ N(0, 1)``, added to the input tokens and trained *against* the reconstructor
  (Eq. 1, ``-lambda_ANG * L_e + lambda_re * ||W||_2``), by gradient reversal or by its own
  alternating step (:func:`ang_step`).
* :class:`FeatureJitter`: UniAD's fixed noise, ``eps * scale * ||token|| / C``.
* :class:`SpatialSelfAttention` (over the N tokens, optionally with UniAD's neighbour mask)
  and :class:`ChannelSelfAttention` (over the C channels of the transposed tokens: a C x C
  attention), summed and followed by a dilated 3x3 convolution in
  :class:`MixedAttentionBlock` (Eq. 2); :class:`TransformerLayer` is the plain
  self-attention layer the ablation puts in its place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adlib.nn.reference_attention import neighbourhood_mask

FUSIONS = ("ffm", "resize")


class FeatureFusion(nn.Module):
    """Fuse backbone levels (finest first) onto the coarsest level's grid.

    ``forward(list of (B, C_j, h_j, w_j)) -> (B, sum C_j, h_last, w_last)``.

    ``kind="ffm"``: the running fused map goes through a channel-preserving 3x3 stride-2
    convolution, is concatenated with the next level, and so on (the levels' strides must
    double from one to the next). The convolutions start as a 3x3 box average per channel (a
    guess: the paper gives no initialisation), so an untrained FFM is an overlapping,
    anti-aliased downsampling; with ``trainable=True`` training then adapts them.
    ``kind="resize"``: bilinear resize of every level to the last one's grid, then
    concatenation (UniAD).
    """

    def __init__(self, channels: list[int] | tuple[int, ...], kind: str = "ffm", trainable: bool = False):
        super().__init__()
        if kind not in FUSIONS:
            msg = f"fusion {kind!r}; expected one of {FUSIONS} (FFM or UniAD's resize-and-concatenate)"
            raise ValueError(msg)
        self.kind, self.channels = kind, tuple(channels)
        self.down = nn.ModuleList()
        if kind == "ffm":
            running = 0
            for c in self.channels[:-1]:
                running += c
                conv = nn.Conv2d(running, running, 3, stride=2, padding=1)
                with torch.no_grad():
                    conv.weight.zero_()
                    conv.weight[torch.arange(running), torch.arange(running)] = 1.0 / 9.0
                    conv.bias.zero_()
                conv.requires_grad_(trainable)
                self.down.append(conv)

    @property
    def out_channels(self) -> int:
        return sum(self.channels)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        if len(levels) != len(self.channels):
            msg = f"fusion built for {len(self.channels)} levels, got {len(levels)}"
            raise ValueError(msg)
        size = levels[-1].shape[-2:]
        if self.kind == "resize":
            return torch.cat([f if f.shape[-2:] == size else
                              F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                              for f in levels], dim=1)
        fused = levels[0]
        for conv, nxt in zip(self.down, levels[1:]):
            fused = conv(fused)
            if fused.shape[-2:] != nxt.shape[-2:]:
                msg = (f"FFM halves the grid once per level: {tuple(fused.shape[-2:])} after the "
                       f"strided convolution vs the next level's {tuple(nxt.shape[-2:])}; use "
                       "backbone stages whose strides double (e.g. EfficientNet stages 0-3) or "
                       "fusion='resize'")
                raise ValueError(msg)
            fused = torch.cat([fused, nxt], dim=1)
        return fused


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the gradient by ``-coeff``."""
    return _Reverse.apply(x, coeff)


class AdaptiveNoise(nn.Module):
    """ANG: ``X* = X + A * W * eps`` in training (identity in eval mode).

    ``W`` is an ``(N, C)`` parameter (one weight per grid position and channel), initialised to
    ``init``; ``A`` (``amplitude``) sets the intensity. With ``mode="reverse"`` the gradient
    that reaches ``W`` through the reconstruction loss is multiplied by ``-lambda_ang``, so one
    optimiser step on ``L_e + lambda_re * ||W||_2`` descends Eq. 1 for ``W`` and ``L_e`` for
    the reconstructor; ``mode="alternate"`` leaves ``W`` out of that loss and
    :func:`ang_step` updates it on its own (the reconstructor fixed) before each
    reconstructor step.
    """

    def __init__(self, tokens: int, channels: int, *, amplitude: float = 1.0, init: float = 1.0,
                 mode: str = "alternate", lambda_ang: float = 0.6, lambda_re: float = 1.0):
        super().__init__()
        if mode not in ("alternate", "reverse"):
            msg = f"ANG mode {mode!r}; expected 'alternate' (own optimiser step) or 'reverse' (gradient reversal)"
            raise ValueError(msg)
        self.weight = nn.Parameter(torch.full((tokens, channels), float(init)))
        self.amplitude, self.mode = amplitude, mode
        self.lambda_ang, self.lambda_re = lambda_ang, lambda_re
        self.detach_weight = False  # set by the reconstructor step of mode "alternate"

    def noise(self, tokens: torch.Tensor) -> torch.Tensor:
        if tuple(tokens.shape[1:]) != tuple(self.weight.shape):
            msg = (f"ANG's W is {tuple(self.weight.shape)} (N x C) but the tokens are "
                   f"{tuple(tokens.shape[1:])}; W has one weight per grid position, so the image "
                   "size and backbone must match those at construction")
            raise ValueError(msg)
        w = self.weight
        if self.detach_weight:
            w = w.detach()
        elif self.mode == "reverse":
            w = reverse_gradient(w, self.lambda_ang)
        return self.amplitude * w * torch.randn_like(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.noise(tokens) if self.training else tokens

    def regulariser(self) -> torch.Tensor:
        """``lambda_re * ||W||_2`` (Frobenius norm), the term that keeps the noise bounded."""
        return self.lambda_re * self.weight.norm()


class FeatureJitter(nn.Module):
    """UniAD's feature jitter in training: ``X + eps * scale * ||x_i|| / C`` per token."""

    def __init__(self, scale: float = 20.0, prob: float = 1.0):
        super().__init__()
        self.scale, self.prob = scale, prob

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return tokens
        norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
        keep = (torch.rand(tokens.shape[:-1] + (1,), device=tokens.device) < self.prob).to(tokens.dtype)
        return tokens + torch.randn_like(tokens) * norms * self.scale * keep


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the N tokens; ``neighbour`` (an odd window side, or 0)
    hides each token's own ``k x k`` neighbourhood, itself included (UniAD's neighbour mask)."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], neighbour: int = 0):
        super().__init__()
        if dim % heads:
            msg = f"hidden size {dim} is not divisible by {heads} heads"
            raise ValueError(msg)
        self.heads, self.grid, self.neighbour = heads, tuple(grid), neighbour
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        if neighbour:
            neighbourhood_mask(grid[0], grid[1], neighbour)  # refuse an empty row now, not mid-run

    def mask(self, device: torch.device) -> torch.Tensor | None:
        return neighbourhood_mask(*self.grid, self.neighbour).to(device) if self.neighbour else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(x.device))
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class ChannelSelfAttention(nn.Module):
    """Self-attention over the *channels*: the tokens ``(B, N, C)`` are transposed to ``C``
    tokens of length ``N``, attend to each other (a ``C x C`` attention), and are transposed
    back. The projections act on the N grid positions, so the module is built for one grid."""

    def __init__(self, tokens: int):
        super().__init__()
        self.qkv = nn.Linear(tokens, 3 * tokens)
        self.out = nn.Linear(tokens, tokens)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention ``(B, C, C)``: row i says how channel i mixes the channels."""
        q, k, _ = self.qkv(x.transpose(1, 2)).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x.transpose(1, 2)).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y).transpose(1, 2)


class MixedAttentionBlock(nn.Module):
    """Eq. 2: ``Y = DC(SA(X) + SA(X^T)^T)`` on the layer-normalised tokens, then GELU; ``DC`` is
    a 3x3 convolution with dilation ``dilation`` on the token grid. ``channel=False`` drops the
    channel branch (spatial attention and the dilated convolution only)."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], *, dilation: int = 4,
                 neighbour: int = 0, channel: bool = True):
        super().__init__()
        self.grid = tuple(grid)
        self.norm = nn.LayerNorm(dim)
        self.spatial = SpatialSelfAttention(dim, heads, grid, neighbour)
        self.channel = ChannelSelfAttention(grid[0] * grid[1]) if channel else None
        self.conv = nn.Conv2d(dim, dim, 3, padding=dilation, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        y = self.spatial(h)
        if self.channel is not None:
            y = y + self.channel(h)
        b, n, d = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, d, *self.grid))
        return F.gelu(y).flatten(2).transpose(1, 2)


class TransformerLayer(nn.Module):
    """The plain self-attention layer (pre-norm): ``x + SA(LN x)``, then ``x + FFN(LN x)``."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], *, neighbour: int = 0,
                 ffn_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SpatialSelfAttention(dim, heads, grid, neighbour)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Linear(ffn_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.ffn(self.norm2(x))
