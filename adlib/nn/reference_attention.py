"""Attention against a learnable reference: the two attention modules of RLR.

RLR (reconstructing features from a learnable reference) replaces the self-attention of a
Transformer encoder by two attentions whose *keys* come from a learnable reference
``R`` (one ``N x C`` parameter per feature level, embedded like the input tokens)::

    MLKA(Y, R) = softmax(Q(Y) K(R)^T / sqrt(d) + M_nei) V(Y)      (Eq. 5, Masked Learnable Key Attention)
    LCA(Y, R)  = softmax(Q(Y) K(R)^T / sqrt(d) + M_loc) V(R)      (Eq. 6, Local Cross Attention)

``M_nei`` hides each token's own ``k x k`` neighbourhood (so MLKA can never copy the token
it reconstructs), ``M_loc`` shows each token only the reference tokens inside its ``k x k``
window (a locality prior that matches the local receptive fields of CNN features).

Both are one module, :class:`ReferenceAttention`, configured by where keys and values come
from and which mask applies; the Table-3 baselines (plain self-attention, plain cross
attention with the reference) are the same module with other flags. Masks are boolean,
``True`` = may attend, the convention of
:func:`torch.nn.functional.scaled_dot_product_attention`; they are built once per
(grid, window, device) and cached.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

KEY_SOURCES = ("tokens", "reference")
MASKS = ("none", "neighbourhood", "window")


def _check_window(h: int, w: int, size: int, what: str) -> None:
    if size < 1 or size % 2 == 0:
        msg = f"{what} size must be an odd positive number (a k x k square centred on a token), found {size}"
        raise ValueError(msg)


def _chebyshev_within(h: int, w: int, size: int) -> torch.Tensor:
    """``(N, N)`` boolean: token j lies inside the ``size x size`` square centred on token i."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    radius = size // 2
    near_r = (rows[:, None] - rows[None, :]).abs() <= radius
    near_c = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_r & near_c


@functools.lru_cache(maxsize=64)
def neighbourhood_mask(h: int, w: int, size: int) -> torch.Tensor:
    """MLKA's mask ``M_nei`` as booleans ``(N, N)``, ``N = h * w``, row-major tokens.

    ``mask[i, j]`` is ``True`` (may attend) when token j is *outside* the ``size x size``
    neighbourhood of token i; the token itself and its neighbours are hidden.

    Raises ``ValueError`` when some token would see nothing (its neighbourhood covers the
    whole grid): softmax over an empty row gives NaN.
    """
    _check_window(h, w, size, "neighbourhood")
    mask = ~_chebyshev_within(h, w, size)
    if not bool(mask.any(1).all()):
        msg = (f"a {size}x{size} neighbourhood mask on a {h}x{w} grid hides every token from "
               f"some token (its attention row would be all -inf, giving NaN). Expected a "
               f"neighbourhood that leaves every token something to see; fix: use a window "
               f"below {max(h, w)} (e.g. 3) or a larger image size (a larger grid).")
        raise ValueError(msg)
    return mask


@functools.lru_cache(maxsize=64)
def window_mask(h: int, w: int, size: int) -> torch.Tensor:
    """LCA's mask ``M_loc`` as booleans ``(N, N)``: ``True`` only inside the ``size x size``
    window around each token (the token's own position included), so no row is empty."""
    _check_window(h, w, size, "window")
    return _chebyshev_within(h, w, size)


@functools.lru_cache(maxsize=16)
def sincos_position_encoding_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position encoding ``(h * w, dim)`` (row-major tokens).

    Half the channels encode the row, half the column, each with the 1-D Transformer
    encoding (sin and cos at geometric frequencies). ``dim`` must be divisible by 4.
    """
    if dim % 4:
        msg = f"2-D sin-cos position encoding needs dim divisible by 4, found {dim}; pick a hidden size like 64 or 128"
        raise ValueError(msg)
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    ang_y = ys.reshape(-1, 1) * omega
    ang_x = xs.reshape(-1, 1) * omega
    enc = torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=1)
    return enc.float()


class ReferenceAttention(nn.Module):
    """Multi-head attention whose keys / values come from the tokens or the reference.

    ``forward(tokens, reference)``: ``tokens (B, N, d)``, ``reference (N, d)`` or
    ``(B, N, d)`` (the embedded reference, same grid), returns ``(B, N, d)``. Queries always
    come from the tokens. Without residual connection (the block decides that).

    Args:
        dim: token width ``d``; heads: number of heads (``d`` divisible by it).
        keys, values: ``"tokens"`` or ``"reference"``.
        mask: ``"none"``, ``"neighbourhood"`` (hide the token's own ``window x window``
            neighbourhood: MLKA) or ``"window"`` (see only the ``window x window`` square:
            LCA).
        grid: ``(h, w)`` of the token grid (needed for a mask).
        window: odd side of the square, in tokens.

    Named configurations (Table 3)::

        self attention        keys=tokens,    values=tokens,    mask=none
        cross attention       keys=reference, values=reference, mask=none
        MLKA  (Eq. 5)         keys=reference, values=tokens,    mask=neighbourhood
        LCA   (Eq. 6)         keys=reference, values=reference, mask=window
    """

    def __init__(self, dim: int, heads: int = 8, *, keys: str = "reference", values: str = "reference",
                 mask: str = "none", grid: tuple[int, int] | None = None, window: int = 3):
        super().__init__()
        if dim % heads:
            msg = f"attention width {dim} is not divisible by {heads} heads; pick heads dividing {dim}"
            raise ValueError(msg)
        for name, value in (("keys", keys), ("values", values)):
            if value not in KEY_SOURCES:
                msg = f"{name}={value!r}; expected one of {KEY_SOURCES}"
                raise ValueError(msg)
        if mask not in MASKS:
            msg = f"mask={mask!r}; expected one of {MASKS}"
            raise ValueError(msg)
        if mask != "none" and grid is None:
            msg = f"mask={mask!r} needs the token grid (h, w); pass grid=(h, w)"
            raise ValueError(msg)
        self.dim, self.heads = dim, heads
        self.keys, self.values, self.mask_kind = keys, values, mask
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.window = int(window)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self._masks: dict[torch.device, torch.Tensor] = {}
        if mask != "none":
            self.attn_mask(torch.device("cpu"))  # validate now: a bad window fails at construction

    def attn_mask(self, device: torch.device) -> torch.Tensor | None:
        """The boolean ``(N, N)`` mask on ``device`` (``None`` without a mask); built once."""
        if self.mask_kind == "none":
            return None
        cached = self._masks.get(device)
        if cached is None:
            h, w = self.grid
            build = neighbourhood_mask if self.mask_kind == "neighbourhood" else window_mask
            cached = self._masks[device] = build(h, w, self.window).to(device)
        return cached

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = tokens.shape
        if reference is None and "reference" in (self.keys, self.values):
            msg = f"this attention takes keys={self.keys}, values={self.values}: pass the embedded reference"
            raise ValueError(msg)
        if reference is not None and reference.dim() == 2:
            reference = reference.unsqueeze(0).expand(b, -1, -1)
        key_src = tokens if self.keys == "tokens" else reference
        val_src = tokens if self.values == "tokens" else reference
        q = self._split(self.q(tokens))
        k = self._split(self.k(key_src))
        v = self._split(self.v(val_src))
        mask = self.attn_mask(tokens.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class MaskedLearnableKeyAttention(ReferenceAttention):
    """MLKA (Eq. 5): queries from the tokens, keys from the reference, values from the
    tokens, each token's own ``window x window`` neighbourhood hidden. See
    :class:`ReferenceAttention`."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], window: int):
        super().__init__(dim, heads, keys="reference", values="tokens", mask="neighbourhood",
                         grid=grid, window=window)


class LocalCrossAttention(ReferenceAttention):
    """LCA (Eq. 6): queries from the tokens, keys and values from the reference, attention
    only inside the ``window x window`` square around each token. See
    :class:`ReferenceAttention`."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], window: int):
        super().__init__(dim, heads, keys="reference", values="reference", mask="window",
                         grid=grid, window=window)


def attention_weights(module: ReferenceAttention, tokens: torch.Tensor,
                      reference: torch.Tensor | None = None) -> torch.Tensor:
    """The softmax attention map ``(B, heads, N, N)`` the module uses (for pictures and
    tests; the forward pass itself uses fused SDPA and never materialises it)."""
    b = tokens.shape[0]
    if reference is not None and reference.dim() == 2:
        reference = reference.unsqueeze(0).expand(b, -1, -1)
    key_src = tokens if module.keys == "tokens" else reference
    q = module._split(module.q(tokens))
    k = module._split(module.k(key_src))
    logits = q @ k.transpose(-1, -2) / math.sqrt(module.dim // module.heads)
    mask = module.attn_mask(tokens.device)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1)
