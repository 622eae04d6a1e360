"""Every method side by side: paired differences, ranks, per-category winners and cost fronts.

Pure functions over study rows (one row per config x seed x category, as
:func:`adlib.study.report.committed_rows` returns them; ``config`` names the method, the
metrics are in %, higher is better); nothing here trains.

Two methods are compared the way :mod:`adlib.analysis.claims` judges a finding: the difference A - B on
every (seed, category[, fold]) pair both ran, never on averages first (averaging first lets a
category one method skipped move its mean), and the book's interval of its mean with the
category as the unit (:func:`adlib.analysis.stats.paired_estimate`).

Many methods at once are ranked per category, seeds averaged within it (Demsar 2006,
"Statistical comparisons of classifiers over multiple data sets", JMLR 7): the seeds of a
category are repeats on the same images, so a (seed, category) block is no new data set. The
Friedman test (scipy) says whether the ranks differ at all, the Nemenyi critical difference says
which mean ranks are too close to tell apart, which a critical-difference diagram
(:func:`cd_figure`) draws, and pairwise Wilcoxon signed-rank tests over the categories with
Holm's adjustment (:func:`wilcoxon_holm`) give the evidence for each pair. With six categories
these tests can detect only very large differences: :func:`power_note` says how large.

Pass one grid's rows: the same config measured by two grids (``committed_rows`` has a
``grid`` column) would be averaged into one value per pair. No study module imports this
one, so changing it stales no committed row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import chi2, friedmanchisquare, studentized_range, wilcoxon

from adlib.analysis.claims import MIN_PAIRS, term_values, with_pair_columns
from adlib.analysis.stats import LEVEL, holm, paired_estimate
from adlib.book.figures import fit_column
from adlib.study.report import METRIC_NAMES

A_BETTER, B_BETTER, TIED = "A better", "B better", "tied"
"""The verdicts of :func:`pairwise`: A's interval above 0, below 0, or spanning it."""

_FONT_PT = 9.0   # the column shows a 6.8-inch figure at full size: 9 pt stays 9 pt


# --- rows to a (block x method) table ---------------------------------------------------------

def _methods(frame: pd.DataFrame, metric: str, methods: Sequence[str] | None) -> list[str]:
    """The methods to compare: the ones asked for, or every config with a ``metric`` value."""
    if metric not in frame:
        msg = f"no {metric!r} column in the rows; they have {list(frame.columns)}"
        raise KeyError(msg)
    present = list(dict.fromkeys(frame.loc[frame[metric].notna(), "config"]))
    if methods is None:
        return present
    missing = [m for m in methods if m not in present]
    if missing:
        msg = f"no {metric} rows for {missing}; the rows have {present}"
        raise KeyError(msg)
    return list(dict.fromkeys(methods))


def _values(frame: pd.DataFrame, metric: str, methods: Sequence[str]) -> pd.DataFrame:
    """One column per method, one row per (seed, category, fold) block, NaN where a method did
    not run the block: the values the claim checks pair (same ablation choice, same means of
    repeated rows)."""
    columns = {m: term_values(frame, m, metric, None, True) for m in methods}
    return pd.concat(columns, axis=1)


def _by_mean(values: pd.DataFrame) -> list[str]:
    """The methods best first by their mean over the blocks each one ran (ties keep order)."""
    return list(values.mean().sort_values(ascending=False, kind="stable").index)


def _paired(a: pd.Series, b: pd.Series) -> tuple[float, float, float, int, str]:
    """Mean, 95 % interval and number of the differences a - b over the blocks both ran, and
    the verdict of that interval as a word of :func:`pairwise`."""
    both = pd.concat([a, b], axis=1).dropna()
    est = paired_estimate(both.iloc[:, 0] - both.iloc[:, 1])
    word = TIED
    if est.finite and est.p < 1 - LEVEL:
        word = A_BETTER if est.mean > 0 else B_BETTER
    return est.mean, est.low, est.high, len(both), word


# --- two at a time ----------------------------------------------------------------------------

def pairwise(rows: pd.DataFrame | Iterable[Mapping], metric: str,
             methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Every pair of methods, the better-ranked one (by mean) as A, judged on paired differences.

    One row per pair: ``A``, ``B``, their means (each over the blocks it ran: the order the
    reader sees in a summary table), ``difference`` (mean of A - B over the (seed, category)
    pairs both ran), ``low``/``high`` (its 95 % interval, the category as the unit),
    ``n_pairs`` and ``verdict``: ``"A better"`` (interval above 0), ``"B better"`` (below 0:
    A's higher mean came from blocks B did not run) or ``"tied"`` (spans 0). Each interval is
    for its own pair, not adjusted for the others; for all methods at once use :func:`ranks`
    and :func:`wilcoxon_holm`.
    """
    frame = with_pair_columns(rows)
    values = _values(frame, metric, _methods(frame, metric, methods))
    order = _by_mean(values)
    means = values.mean()
    out = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            diff, lo, hi, n, word = _paired(values[a], values[b])
            out.append({"A": a, "B": b, "mean_A": means[a], "mean_B": means[b],
                        "difference": diff, "low": lo, "high": hi, "n_pairs": n, "verdict": word})
    columns = ["A", "B", "mean_A", "mean_B", "difference", "low", "high", "n_pairs", "verdict"]
    return pd.DataFrame(out, columns=columns)


def difference(rows: pd.DataFrame | Iterable[Mapping], metric: str, a: str, b: str) -> dict:
    """A - B for two named methods, as :func:`pairwise` judges a pair but with A fixed (a
    model against its untrained self): ``mean_A``, ``mean_B``, ``difference``, ``low``,
    ``high``, ``n_pairs`` and ``verdict``."""
    frame = with_pair_columns(rows)
    values = _values(frame, metric, _methods(frame, metric, [a, b]))
    diff, lo, hi, n, word = _paired(values[a], values[b])
    return {"A": a, "B": b, "mean_A": values[a].mean(), "mean_B": values[b].mean(),
            "difference": diff, "low": lo, "high": hi, "n_pairs": n, "verdict": word}


# --- all at once: ranks, Friedman, Nemenyi ----------------------------------------------------

def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """The Nemenyi test's q_alpha for ``k`` methods: the studentized range's 1 - alpha quantile
    with infinite degrees of freedom over sqrt(2) (Demsar 2006, Table 5a)."""
    return float(studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """The smallest gap between two of ``k`` mean ranks over ``n_blocks`` blocks that the
    Nemenyi test calls a difference: q_alpha * sqrt(k (k + 1) / (6 N))."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n_blocks))


def friedman(block_ranks: pd.DataFrame) -> tuple[float, float]:
    """Friedman's chi-square statistic and p-value (scipy's, with its tie correction) from the
    methods' values or ranks per block (rows blocks, columns methods); for two methods, which
    scipy refuses, the same statistic by its formula (it is then the sign test's)."""
    r = block_ranks.to_numpy(dtype=float)
    n, k = r.shape
    if (r == r[:, :1]).all():     # every method tied in every block: no ranking to test
        return math.nan, math.nan
    if k >= 3:
        result = friedmanchisquare(*r.T)
        return float(result.statistic), float(result.pvalue)
    ranked = pd.DataFrame(r).rank(axis=1).to_numpy()
    ties = sum(float((c ** 3 - c).sum())
               for c in (np.unique(row, return_counts=True)[1] for row in ranked))
    correction = 1 - ties / (k * (k * k - 1) * n)
    statistic = (12 / (n * k * (k + 1)) * float((ranked.sum(0) ** 2).sum())
                 - 3 * n * (k + 1)) / correction
    return statistic, float(chi2.sf(statistic, k - 1))


def cliques(mean_ranks: pd.Series, cd: float) -> list[list[str]]:
    """The maximal runs of methods (best first) whose mean ranks all lie within less than
    ``cd`` of each other: the groups a critical-difference diagram joins. A method no other
    is tied with is a group of its own, so every method is in at least one group."""
    order = mean_ranks.sort_values(kind="stable")
    names, r = list(order.index), order.to_numpy()
    groups, last = [], -1
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] < cd:
            j += 1
        if j > last:        # a run ending where the previous one ended lies inside it
            groups.append(names[i:j + 1])
            last = j
    return groups


def ranks(rows: pd.DataFrame | Iterable[Mapping], metric: str,
          methods: Sequence[str] | None = None, alpha: float = 0.05) -> dict[str, Any]:
    """The methods ranked in every category where all of them ran (each method's mean over the
    seeds it ran there; 1 = best, ties share their average rank), and whether the mean ranks
    differ.

    Returns a dict: ``metric``, ``alpha``, ``block_ranks`` (categories x methods),
    ``mean_ranks`` (best first), ``k``, ``n_blocks``, ``dropped`` (categories that some but not
    all methods ran: a rank there would compare a method with absent ones), ``note``,
    ``statistic`` and ``p_value`` (Friedman), ``q_alpha`` and ``cd`` (Nemenyi) and ``cliques``
    (:func:`cliques`: the methods the test cannot tell apart).
    """
    frame = with_pair_columns(rows)
    chosen = _methods(frame, metric, methods)
    if len(chosen) < 2:
        msg = f"ranking needs two methods or more; {metric} rows have {chosen}"
        raise ValueError(msg)
    values = _values(frame, metric, chosen).groupby(level="category").mean()
    complete = values.dropna()
    dropped = len(values) - len(complete)
    if complete.empty:
        msg = f"no category where all of {chosen} have {metric} ({dropped} categories)"
        raise ValueError(msg)
    block_ranks = complete.rank(axis=1, ascending=False, method="average")
    mean_ranks = block_ranks.mean().sort_values(kind="stable")
    k, n = len(chosen), len(complete)
    statistic, p_value = friedman(block_ranks)
    cd = critical_difference(k, n, alpha)
    note = (f"{dropped} of {len(values)} categories dropped: not every method ran them"
            if dropped else f"all {n} categories ranked, seeds averaged within each")
    return {"metric": metric, "alpha": alpha, "block_ranks": block_ranks, "mean_ranks": mean_ranks,
            "k": k, "n_blocks": n, "dropped": dropped, "note": note, "statistic": statistic,
            "p_value": p_value, "q_alpha": nemenyi_q(k, alpha), "cd": cd,
            "cliques": cliques(mean_ranks, cd)}


def wilcoxon_holm(rows: pd.DataFrame | Iterable[Mapping], metric: str,
                  methods: Sequence[str] | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of methods compared over the categories (each method's seed mean per category)
    by the Wilcoxon signed-rank test (scipy; exact for small samples), the p-values adjusted
    together by Holm's method (statsmodels): the pairwise evidence beside the Nemenyi groups.

    One row per pair, the better mean rank first: ``A``, ``B``, ``categories``, ``A wins``
    (categories where A's mean is higher), ``median difference``, ``p``, ``p (Holm)`` and
    ``verdict`` (``A better`` when the adjusted p is below ``alpha``, else ``tied``).
    """
    frame = with_pair_columns(rows)
    chosen = _methods(frame, metric, methods)
    per_category = _values(frame, metric, chosen).groupby(level="category").mean().dropna()
    order = list(per_category.rank(axis=1, ascending=False).mean().sort_values(kind="stable").index)
    out = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            d = (per_category[a] - per_category[b]).to_numpy()
            p = 1.0 if not np.any(d) else float(wilcoxon(d, zero_method="zsplit").pvalue)
            out.append({"A": a, "B": b, "categories": len(d), "A wins": int((d > 0).sum()),
                        "median difference": float(np.median(d)), "p": p})
    table = pd.DataFrame(out, columns=["A", "B", "categories", "A wins", "median difference", "p"])
    table["p (Holm)"] = holm(table["p"].tolist(), alpha) if len(table) else []
    table["verdict"] = np.where(table["p (Holm)"] < alpha,
                                np.where(table["median difference"] > 0, A_BETTER, B_BETTER), TIED)
    return table


def power_note(n_categories: int, k: int, alpha: float = 0.05) -> str:
    """What a ranking over ``n_categories`` categories of ``k`` methods can detect, in words:
    the Nemenyi critical difference in mean ranks, and the smallest p-value a Wilcoxon test over
    that many categories can reach against the Holm threshold of the first of its pairs."""
    pairs = k * (k - 1) // 2
    smallest = 2 / 2 ** n_categories          # every category on one side, exact two-sided
    cd = critical_difference(k, n_categories, alpha)
    reach = ("so no single pair can be told apart after the adjustment, however large its lead"
             if smallest >= alpha / pairs else
             "so only a pair that wins almost every category can be told apart")
    return (f"{n_categories} categories is a small sample. Two of {k} methods differ by the "
            f"Nemenyi test only when their mean ranks are {cd:.2f} apart or more (of {k - 1} "
            f"possible). The Wilcoxon test over {n_categories} categories cannot give a p-value "
            f"below {smallest:.3f} (one method ahead in every category), and Holm's first "
            f"threshold over {pairs} pairs is {alpha / pairs:.4f}, {reach}.")


def cd_figure(ranked: Mapping[str, Any]):
    """A critical-difference diagram of :func:`ranks`' result, drawn for the book's column.

    The axis runs over the ranks, best (1) on the left; each method's name hangs from its
    mean rank, the better half on the left, the rest on the right; a bar above the axis is CD
    long, and a thick line joins each group the Nemenyi test cannot tell apart.
    """
    mean_ranks: pd.Series = ranked["mean_ranks"].sort_values(kind="stable")
    k, cd = int(ranked["k"]), float(ranked["cd"])
    tied = [g for g in ranked["cliques"] if len(g) > 1]
    left = math.ceil(k / 2)
    clique_y = [-0.35 - 0.22 * i for i in range(len(tied))]
    first_y = min(clique_y, default=-0.2) - 0.45
    rows = max(left, k - left)
    fig, ax = plt.subplots(figsize=(6.8, 1.5 + 0.3 * (rows + len(tied))))
    edge = 0.1 * (k - 1) + 0.1
    lo_x, hi_x = 1 - edge, max(k, 1 + cd) + edge

    ax.plot([1, k], [0, 0], color="black", lw=1)
    for tick in range(1, k + 1):
        ax.plot([tick, tick], [0, 0.12], color="black", lw=1)
        ax.text(tick, 0.2, str(tick), ha="center", va="bottom", fontsize=_FONT_PT)
    ax.plot([1, 1 + cd], [0.85, 0.85], color="black", lw=1.5)
    for end in (1, 1 + cd):
        ax.plot([end, end], [0.78, 0.92], color="black", lw=1.5)
    ax.text(1 + cd / 2, 0.97, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=_FONT_PT)

    names = list(mean_ranks.index)
    # lines of the left half end further down the further right they start, and the
    # right half's mirror that, so no line crosses another
    for row, name in enumerate(names[:left]):
        _hang(ax, name, mean_ranks[name], first_y - 0.4 * row, lo_x, "right")
    for row, name in enumerate(reversed(names[left:])):
        _hang(ax, name, mean_ranks[name], first_y - 0.4 * row, hi_x, "left")
    for y, group in zip(clique_y, tied):
        ax.plot([mean_ranks[group[0]] - 0.04, mean_ranks[group[-1]] + 0.04], [y, y],
                color="black", lw=4, solid_capstyle="round")

    ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(first_y - 0.4 * rows, 1.35)
    ax.axis("off")
    what = METRIC_NAMES.get(ranked["metric"], ranked["metric"])
    ax.set_title(f"Mean rank on {what} over {ranked['n_blocks']} categories; "
                 f"Friedman p = {ranked['p_value']:.2g}", fontsize=_FONT_PT)
    return fit_column(fig)


def _hang(ax, name: str, rank: float, y: float, x_end: float, side: str) -> None:
    """One method's line, from its rank on the axis down to ``y`` and out to ``x_end``, and its
    name with its mean rank beyond the end."""
    ax.plot([rank, rank, x_end], [0, y, y], color="black", lw=0.8)
    ha, pad = ("right", -0.03) if side == "right" else ("left", 0.03)
    ax.text(x_end + pad, y, f"{name} ({rank:.2f})", ha=ha, va="center", fontsize=_FONT_PT,
            clip_on=False)


# --- per category -----------------------------------------------------------------------------

def winners(rows: pd.DataFrame | Iterable[Mapping], metric: str,
            methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per category, the method with the best mean over seeds and whether its lead over the
    runner-up is real.

    The lead is paired over the seeds (and folds) both ran in that category, as
    :func:`pairwise` pairs: ``verdict`` is ``"winner better"`` when its interval lies above
    0, ``"runner-up better"`` below, and ``"tied"`` otherwise, which is what a category with
    fewer than :data:`adlib.analysis.claims.MIN_PAIRS` seeds always says: a handful of seeds cannot
    make one category's winner more than the best mean. ``"only method"`` when one ran.
    The winner is picked on the same seeds its lead is then judged on, which favours it: with
    many methods and nothing between them, some category will still show a "real" lead.
    """
    frame = with_pair_columns(rows)
    values = _values(frame, metric, _methods(frame, metric, methods))
    words = {A_BETTER: "winner better", B_BETTER: "runner-up better", TIED: TIED}
    out = []
    for category, block in values.groupby(level="category", sort=True):
        block = block.dropna(axis=1, how="all")
        order = _by_mean(block)
        row = {"category": category, "methods": len(order), "winner": order[0],
               "winner_mean": block[order[0]].mean()}
        if len(order) == 1:
            out.append({**row, "n_pairs": 0, "verdict": "only method"})
            continue
        lead, lo, hi, n, word = _paired(block[order[0]], block[order[1]])
        if n < MIN_PAIRS:     # a t interval of three seeds says little about one category
            word = TIED
        out.append({**row, "runner_up": order[1], "runner_up_mean": block[order[1]].mean(),
                    "lead": lead, "low": lo, "high": hi, "n_pairs": n, "verdict": words[word]})
    columns = ["category", "methods", "winner", "winner_mean", "runner_up", "runner_up_mean",
               "lead", "low", "high", "n_pairs", "verdict"]
    return pd.DataFrame(out, columns=columns)


# --- cost against accuracy --------------------------------------------------------------------

def pareto(table: pd.DataFrame, cost: str, accuracy: str) -> pd.DataFrame:
    """``table`` (one row per method) with a boolean ``pareto`` column: True where no other
    method is at least as cheap and at least as accurate and strictly better in one, i.e. the
    methods worth their cost. A row missing either number is never on the front."""
    c = table[cost].to_numpy(dtype=float)
    a = table[accuracy].to_numpy(dtype=float)
    known = np.isfinite(c) & np.isfinite(a)
    # dominated[i, j]: method j beats method i on one axis and loses on neither
    dominated = ((c[None, :] <= c[:, None]) & (a[None, :] >= a[:, None])
                 & ((c[None, :] < c[:, None]) | (a[None, :] > a[:, None])) & known[None, :])
    return table.assign(pareto=known & ~dominated.any(axis=1))


def pareto_figure(table: pd.DataFrame, cost: str, accuracy: str, log_cost: bool = True, *,
                  label: str | None = None):
    """Accuracy against cost, one labelled point per method, the front (:func:`pareto`) drawn
    dark and joined by a staircase (the best accuracy each budget buys), for the book's column.

    ``label`` names the column of method names (default ``config`` if the table has one, else
    its index); ``log_cost`` draws the cost axis on a log scale (costs spanning orders of
    magnitude, as parameter counts and milliseconds do), unless a cost is not positive.
    """
    marked = pareto(table, cost, accuracy)
    names = marked[label] if label else marked["config"] if "config" in marked else marked.index
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    off = marked[~marked["pareto"]]
    on = marked[marked["pareto"]].sort_values(cost)
    ax.scatter(off[cost], off[accuracy], color="0.6", zorder=2, label="dominated")
    ax.scatter(on[cost], on[accuracy], color="black", zorder=3, label="Pareto front")
    ax.plot(on[cost], on[accuracy], color="black", lw=1, drawstyle="steps-post", zorder=1)
    for name, x, y in zip(names, marked[cost], marked[accuracy]):
        if np.isfinite(x) and np.isfinite(y):
            ax.annotate(str(name), (x, y), xytext=(4, 4), textcoords="offset points",
                        fontsize=_FONT_PT)
    if log_cost and (marked[cost].dropna() > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(cost, fontsize=_FONT_PT)
    ax.set_ylabel(METRIC_NAMES.get(accuracy, accuracy), fontsize=_FONT_PT)
    ax.tick_params(labelsize=_FONT_PT)
    ax.legend(fontsize=_FONT_PT, loc="best")
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.12)      # room for the labels of the outermost points
    return fit_column(fig)
