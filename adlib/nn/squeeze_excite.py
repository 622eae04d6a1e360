"""Channel attention: the SE block and the C-SE block (Current Squeeze-and-Excitation).

One module, :class:`SqueezeExcitation`, with the C-SE additions as flags; :func:`se_block`
and :func:`cse_block` build the two variants the C-SE paper compares::

    SE   : w = sigmoid(FC(ReLU(FC(GAP(U)))))                 y = w * U
    C-SE : w = agg(sigmoid(FC_a(ReLU(FC_a(GAP(U))))),
                   sigmoid(FC_m(ReLU(FC_m(GMP(U))))))        y = w * U + U

``GAP``/``GMP`` squeeze each channel of ``U`` (B, C, H, W) to one number by its spatial mean /
maximum; each excitation is FC(C -> C/r) - ReLU - FC(C/r -> C) - sigmoid; ``agg`` combines the
two branches' channel weights (``"mean"`` by default, a guess: the paper says "aggregated");
``+ U`` is the paper's *long connection*, which keeps every channel at least at its input
strength, so a channel the attention undervalues early in training is not suppressed for good.
"""

from __future__ import annotations

import torch
from torch import nn

#: The attention kinds Patch SVDD's encoder accepts (``"none"``: plain convolutions).
ATTENTION_KINDS = ("none", "se", "cse")


class Excitation(nn.Module):
    """FC(C -> C/r) - ReLU - FC(C/r -> C) - sigmoid: one weight in (0, 1) per channel.

    Input ``(B, C)`` squeezed descriptors, output ``(B, C)`` weights. ``C/r`` is rounded down
    and kept at least 1, so small layers (C=32, r=32) still work.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.expand(torch.relu(self.reduce(z))))


class SqueezeExcitation(nn.Module):
    """SE (Hu et al. 2018) or C-SE (this paper, Fig. 2 / 4b), chosen by flags.

    Args:
        channels: ``C`` of the feature map ``(B, C, H, W)``; the output has the same shape.
        reduction: ``r``, the bottleneck ratio of the excitation (paper: r=16 best).
        max_branch: add the global-max-pooling branch (C-SE); its excitation has its own
            weights.
        long_connection: add the input back after scaling (C-SE): ``y = w * U + U``.
        aggregate: how the two branches' weights combine, ``"mean"`` or ``"sum"``.
    """

    def __init__(self, channels: int, reduction: int = 16, *, max_branch: bool = False,
                 long_connection: bool = False, aggregate: str = "mean") -> None:
        super().__init__()
        if aggregate not in ("mean", "sum"):
            msg = f"aggregate must be 'mean' or 'sum', found {aggregate!r}."
            raise ValueError(msg)
        self.channels, self.reduction = channels, reduction
        self.avg_excitation = Excitation(channels, reduction)
        self.max_excitation = Excitation(channels, reduction) if max_branch else None
        self.long_connection = long_connection
        self.aggregate = aggregate

    def channel_weights(self, u: torch.Tensor) -> torch.Tensor:
        """The aggregated channel weights ``w`` ``(B, C)`` for a feature map ``(B, C, H, W)``."""
        w = self.avg_excitation(u.mean(dim=(2, 3)))
        if self.max_excitation is not None:
            w_max = self.max_excitation(u.amax(dim=(2, 3)))
            w = w + w_max if self.aggregate == "sum" else 0.5 * (w + w_max)
        return w

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.ndim != 4 or u.shape[1] != self.channels:
            msg = (f"expected a feature map (B, {self.channels}, H, W), found "
                   f"{tuple(u.shape)}; build the block with channels={u.shape[1] if u.ndim == 4 else '?'}.")
            raise ValueError(msg)
        scaled = u * self.channel_weights(u)[:, :, None, None]
        return scaled + u if self.long_connection else scaled

    def extra_repr(self) -> str:
        kind = "C-SE" if self.max_excitation is not None and self.long_connection else "SE"
        return (f"{kind}: channels={self.channels}, r={self.reduction}, "
                f"max_branch={self.max_excitation is not None}, "
                f"long_connection={self.long_connection}")


def se_block(channels: int, reduction: int = 16) -> SqueezeExcitation:
    """The plain SE block: average pooling only, no long connection."""
    return SqueezeExcitation(channels, reduction)


def cse_block(channels: int, reduction: int = 16, aggregate: str = "mean") -> SqueezeExcitation:
    """The C-SE block: average- and max-pooling branches, aggregated, plus the long connection."""
    return SqueezeExcitation(channels, reduction, max_branch=True, long_connection=True,
                             aggregate=aggregate)


def channel_attention(kind: str, channels: int, reduction: int = 16) -> nn.Module:
    """``"none"`` -> identity, ``"se"`` -> :func:`se_block`, ``"cse"`` -> :func:`cse_block`."""
    if kind == "none":
        return nn.Identity()
    if kind == "se":
        return se_block(channels, reduction)
    if kind == "cse":
        return cse_block(channels, reduction)
    msg = f"unknown channel attention {kind!r}; expected one of {ATTENTION_KINDS}."
    raise ValueError(msg)
