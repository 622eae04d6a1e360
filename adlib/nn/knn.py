"""Exact k-nearest-neighbour L2 distances between feature sets, chunked for memory.

Used wherever an anomaly score is "distance to the nearest normal feature": Patch SVDD
(each patch embedding against all training embeddings) and the kNN baseline (PatchCore
without coreset). Exactness matters there (scores are compared against scikit-learn), so
the fast matrix-product expansion only *selects* candidates; the reported distances are
recomputed directly, and a rounding-error bound proves the selection (rows it cannot prove
are redone by brute force in float64).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Elements of one (query chunk x bank chunk) score matrix: 2**22 float32 = 16 MiB, small
# enough to stay in the CPU's last-level cache between the product and the top-k.
_SCORE_BUDGET = 2**22
_BANK_CHUNK = 2**13
# Extra candidates beyond k, re-ranked exactly: near-ties within float32 rounding.
_EXTRA_CANDIDATES = 4
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# Columns per group in the two-stage top-k of a score tile (see _smallest_in_tile).
_GROUP = 32


def _as_tensor(x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(x, device=device)
    return x if x.is_floating_point() else x.float()


def _merge_top_k(best_val: torch.Tensor | None, best_idx: torch.Tensor | None,
                 val: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-k (smallest) per row after one more bank chunk's candidates."""
    if best_val is None:
        return val, idx
    val = torch.cat([best_val, val], 1)
    val, pos = val.topk(min(k, val.shape[1]), 1, largest=False)
    return val, torch.cat([best_idx, idx], 1).gather(1, pos)


def _exact_top_k(q: torch.Tensor, bank: torch.Tensor, k: int, bank_chunk: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force float64 top-k (direct differences, no expansion); the fallback."""
    best_val = best_idx = None
    for b0 in range(0, bank.shape[0], bank_chunk):
        dist = torch.cdist(q, bank[b0:b0 + bank_chunk], compute_mode="donot_use_mm_for_euclid_dist")
        val, idx = dist.topk(min(k, dist.shape[1]), dim=1, largest=False)
        best_val, best_idx = _merge_top_k(best_val, best_idx, val, idx + b0, k)
    return best_val, best_idx


def _smallest_in_tile(score: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` smallest entries (values, column indices) of each row of a ``(Q, B)`` tile.

    ``B`` is a multiple of 32. A plain ``topk`` over the tile costs as much as the matrix
    product; instead the minima of groups of 32 columns (a fast vectorised reduction) pick
    the ``n`` best groups, and ``topk`` runs over their ``32 n`` entries only. The ``n``
    smallest entries lie in at most ``n`` groups whose minima are <= the n-th smallest
    value, so no entry outside the chosen groups can beat them.
    """
    rows, cols = score.shape
    groups = score.view(rows, cols // _GROUP, _GROUP)
    _, group_idx = groups.amin(2).topk(min(n, groups.shape[1]), dim=1, largest=False)
    members = groups.gather(1, group_idx[:, :, None].expand(-1, -1, _GROUP)).flatten(1)
    val, pos = members.topk(min(n, members.shape[1]), dim=1, largest=False)
    return val, group_idx.gather(1, pos // _GROUP) * _GROUP + pos % _GROUP


def nearest_neighbour_distance(queries: torch.Tensor | np.ndarray, bank: torch.Tensor | np.ndarray,
                               *, k: int = 1, chunk_size: int | None = None,
                               bank_chunk_size: int | None = None,
                               device: torch.device | str | None = None,
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact L2 distance from every query row to its ``k`` nearest bank rows.

    dist(q, b) = ||q - b||_2. Candidates come from the expansion
    ||q - b||^2 = ||q||^2 - 2 q.b + ||b||^2 in float32 (one matrix product per chunk), after
    both sets are centred on the bank's mean so that a large common offset does not cancel
    away float32 precision. The best ``k + 4`` candidates are re-measured directly as
    ``||q - b||`` in float64 and re-ranked. A standard bound on the float32 rounding error
    of the expansion then checks that no other bank row can be closer than the k-th; the
    rare rows where it cannot be shown (near-ties, queries far outside the bank) are redone
    by direct float64 brute force. Distances therefore equal a brute-force reference
    (scikit-learn ``NearestNeighbors(algorithm="brute")``) up to the output's float rounding.

    Args:
        queries: ``(M, D)`` tensor or array.
        bank: ``(N, D)`` tensor or array (the "normal" features), ``N >= k``.
        k: number of neighbours.
        chunk_size: queries per chunk (default: a 16 MiB score matrix per chunk).
        bank_chunk_size: bank rows per chunk (default 8192; a running top-k merges chunks).
        device: where to compute (default: the queries' device; numpy input: CPU).
    Returns:
        ``(distances, indices)``: ``(M,)`` each when ``k == 1``, else ``(M, k)`` sorted by
        increasing distance; distances in the queries' float dtype (float32 for integer
        input), indices int64 into ``bank``; both on ``device``.
    """
    if device is None:
        device = queries.device if isinstance(queries, torch.Tensor) else torch.device("cpu")
    queries, bank = _as_tensor(queries, device), _as_tensor(bank, device)
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        msg = (f"expected queries (M, D) and bank (N, D) with the same D, got "
               f"{tuple(queries.shape)} and {tuple(bank.shape)}; flatten feature maps to rows first.")
        raise ValueError(msg)
    n_bank, dim = bank.shape
    if not 1 <= k <= n_bank:
        msg = f"k={k} neighbours asked for but the bank has {n_bank} rows; expected 1 <= k <= N."
        raise ValueError(msg)
    out_dtype = queries.dtype
    n_candidates = min(n_bank, k + _EXTRA_CANDIDATES)
    n_padded = -(-n_bank // _GROUP) * _GROUP
    bank_chunk = -(-min(n_padded, bank_chunk_size or _BANK_CHUNK) // _GROUP) * _GROUP
    query_chunk = chunk_size or max(1, _SCORE_BUDGET // bank_chunk)

    bank_exact = bank.double()
    centre = bank_exact.mean(0)
    bank_c = (bank_exact - centre).float()
    bank_radius = bank_c.norm(dim=1).max().double()
    # pad to whole groups with rows that score +inf (never closer than a real row)
    padding = n_padded - n_bank
    bank_sq = F.pad(bank_c.pow(2).sum(1), (0, padding), value=float("inf"))
    bank_c = F.pad(bank_c, (0, 0, 0, padding))
    bank_gather = F.pad(bank_exact, (0, 0, 0, padding), value=float("inf"))
    # |float32 error| of ||b||^2 - 2 q.b <= (D + 2) u (||q|| + ||b||)^2; 4x covers the
    # rounding of the centred inputs too.
    error_scale = 4 * (dim + 4) * _FLOAT32_UNIT_ROUNDOFF

    # one score buffer for all tiles: a fresh 16 MiB tensor per tile costs page faults
    buffer = torch.empty(min(query_chunk, queries.shape[0]) * bank_chunk, device=device)
    distances, indices = [], []
    for start in range(0, queries.shape[0], query_chunk):
        q_exact = queries[start:start + query_chunk].double()
        q_c = (q_exact - centre).float()
        best_val = best_idx = None
        for b0 in range(0, n_padded, bank_chunk):
            b_c = bank_c[b0:b0 + bank_chunk]
            score = buffer[: len(q_c) * len(b_c)].view(len(q_c), len(b_c))
            # ||b||^2 - 2 q.b: ||q||^2 is constant per row and does not change the ranking.
            torch.addmm(bank_sq[b0:b0 + bank_chunk], q_c, b_c.T, beta=1.0, alpha=-2.0, out=score)
            val, idx = _smallest_in_tile(score, n_candidates)
            best_val, best_idx = _merge_top_k(best_val, best_idx, val, idx + b0, n_candidates)
        exact = (q_exact[:, None, :] - bank_gather[best_idx]).pow(2).sum(-1).sqrt()
        exact, order = exact.topk(k, dim=1, largest=False)
        top_idx = best_idx.gather(1, order)
        if n_candidates < n_bank:
            # Every non-candidate j has score_j >= best_val[:, -1] (float32), so its squared
            # distance is >= best_val[:, -1] + ||q||^2 - tol: proven if that exceeds d_k^2.
            q_sq = q_c.double().pow(2).sum(1)
            tol = error_scale * (q_sq.sqrt() + bank_radius) ** 2
            unproven = best_val[:, -1].double() + q_sq - tol <= exact[:, -1] ** 2
            if unproven.any():
                rows = unproven.nonzero()[:, 0]
                exact[rows], top_idx[rows] = _exact_top_k(q_exact[rows], bank_exact, k, bank_chunk)
        distances.append(exact.to(out_dtype))
        indices.append(top_idx)
    distances, indices = torch.cat(distances), torch.cat(indices)
    if k == 1:
        return distances[:, 0], indices[:, 0]
    return distances, indices
