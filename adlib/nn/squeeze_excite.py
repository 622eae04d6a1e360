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

import matplotlib.pyplot as plt
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


def block_diagram():
    """Draw SE (left) and C-SE (right) side by side as box-and-arrow charts; returns the Figure."""
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 5.2), layout="constrained")

    def box(ax, x, y, text, colour="#e8f0fa"):
        ax.text(x, y, text, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round,pad=0.35", "fc": colour, "ec": "#4d4d4d"})

    def arrow(ax, start, end, style="-|>"):
        ax.annotate("", end, start, arrowprops={"arrowstyle": style, "color": "#4d4d4d",
                                                 "shrinkA": 11, "shrinkB": 11})

    # SE: one column
    ax = axes[0]
    steps = ["U (B,C,H,W)", "global avg pool", "FC C->C/r, ReLU", "FC C/r->C, sigmoid",
             "scale: w * U", "output"]
    ys = [5.5 - i for i in range(len(steps))]
    for text, y in zip(steps, ys):
        box(ax, 1.0, y, text)
    for y0, y1 in zip(ys, ys[1:]):
        arrow(ax, (1.0, y0), (1.0, y1))
    # U also feeds the scale: a line beside the column
    ax.plot([1.45, 1.75, 1.75, 1.45], [ys[0], ys[0], ys[4], ys[4]], color="#4d4d4d", lw=1.2)
    ax.text(1.79, (ys[0] + ys[4]) / 2, "U", fontsize=10)
    ax.set_title("SE")
    # C-SE: two branches, aggregation, scale, long connection
    ax = axes[1]
    box(ax, 1.0, 5.5, "U (B,C,H,W)")
    box(ax, 0.45, 4.5, "global avg pool")
    box(ax, 1.55, 4.5, "global max pool", "#fdeede")
    box(ax, 0.45, 3.5, "FC-ReLU-FC-sigmoid")
    box(ax, 1.55, 3.5, "FC-ReLU-FC-sigmoid", "#fdeede")
    box(ax, 1.0, 2.5, "aggregate weights w")
    box(ax, 1.0, 1.5, "scale: w * U")
    box(ax, 1.0, 0.5, "w * U + U  (long connection)", "#e3f4ea")
    for x in (0.45, 1.55):
        arrow(ax, (1.0, 5.5), (x, 4.5))
        arrow(ax, (x, 4.5), (x, 3.5))
        arrow(ax, (x, 3.5), (1.0, 2.5))
    arrow(ax, (1.0, 2.5), (1.0, 1.5))
    arrow(ax, (1.0, 1.5), (1.0, 0.5))
    ax.annotate("", (1.95, 0.5), (1.95, 5.5), arrowprops={"arrowstyle": "-|>", "color": "#009E73",
                                                         "connectionstyle": "arc3,rad=0"})
    ax.text(1.99, 3.0, "U", color="#009E73", fontsize=10)
    ax.set_title("C-SE")
    for ax in axes:
        ax.set_xlim(-0.1, 2.15)
        ax.set_ylim(0.0, 6.0)
        ax.axis("off")
    return fig
