"""Every method side by side (adlib.analysis.compare): paired differences, ranks, winners, cost fronts."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from adlib.analysis.compare import (  # noqa: E402
    cd_figure, cliques, critical_difference, nemenyi_q, pareto, pareto_figure, pairwise, ranks,
    winners)
from adlib.book.figures import smallest_shown_pt  # noqa: E402

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid")
LEVELS = dict(zip(CATEGORIES, (95.0, 62.0, 78.0, 88.0, 55.0)))   # categories far apart
MANY = CATEGORIES + tuple(f"extra{i}" for i in range(15))         # 20: room to tell 3 apart
LEVELS.update({name: 50.0 + 2.5 * i for i, name in enumerate(MANY[5:])})


def _rows(offsets, seeds=range(3), categories=CATEGORIES, noise=0.0, rng_seed=0):
    """One row per method x seed x category: the category's level plus the method's offset
    (a number, or a function of (seed, category)) plus noise."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for method, offset in offsets.items():
        for seed in seeds:
            for category in categories:
                shift = offset(seed, category) if callable(offset) else offset
                rows.append({"config": method, "seed": seed, "category": category,
                             "image_auroc": LEVELS[category] + shift + noise * rng.normal()})
    return rows


def _shuffled(rows, seed=1):
    return pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)


# --- Nemenyi and Friedman against their references --------------------------------------------

DEMSAR_5A = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102,
             10: 3.164}


@pytest.mark.parametrize("k", sorted(DEMSAR_5A))
def test_nemenyi_q_matches_demsar_table_5a(k):
    """Demsar divided a three-decimal table of the studentized range by sqrt(2), so his third
    decimal is off by one where that rounding bites (k = 3: 2.3437 printed 2.343; k = 7:
    2.9483 printed 2.949): within 0.001 of ours, and equal once ours is rounded his way."""
    q = nemenyi_q(k, 0.05)
    assert abs(q - DEMSAR_5A[k]) <= 1e-3 + 1e-12
    assert round(round(q * math.sqrt(2), 3) / math.sqrt(2), 3) == DEMSAR_5A[k]


def test_critical_difference_is_demsars_formula():
    assert critical_difference(4, 14) == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 14)), abs=1e-3)


def test_friedman_statistic_and_p_equal_scipys_on_a_random_block_design_with_ties():
    """Values rounded to whole points so that some blocks hold tied ranks (scipy's tie
    correction is what has to match)."""
    from scipy.stats import friedmanchisquare

    from adlib.analysis.compare import friedman

    rng = np.random.default_rng(3)
    table = pd.DataFrame(np.round(rng.normal(0, 3, size=(20, 4)) + [0.0, 1.0, 2.0, 2.5]),
                         columns=list("ABCD"))
    assert table.rank(axis=1).apply(lambda r: r.duplicated().any(), axis=1).any()
    expected = friedmanchisquare(*(table[m].to_numpy() for m in "ABCD"))
    statistic, p_value = friedman(table.rank(axis=1))
    assert statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_methods_are_ranked_over_categories_with_seeds_averaged_within_each():
    """Seeds are repeats on a category's images: the blocks are the 5 categories, not the 20
    (seed, category) pairs, and the critical difference is autorank's."""
    import autorank

    rng = np.random.default_rng(4)
    offsets = {m: (lambda s, c, d=d: d + 3 * rng.normal()) for m, d in zip("ABCD", (0, 1, 2, 3))}
    rows = _shuffled(_rows(offsets, seeds=range(4)))
    ranked = ranks(rows, "image_auroc")
    assert ranked["n_blocks"] == 5 and ranked["dropped"] == 0
    means = rows.pivot_table(index="category", columns="config", values="image_auroc")
    assert ranked["block_ranks"].equals(means.rank(axis=1, ascending=False)[ranked["block_ranks"].columns])
    result = autorank.autorank(means, alpha=0.05, force_mode="nonparametric", verbose=False)
    assert ranked["cd"] == pytest.approx(result.cd, rel=1e-4)   # autorank's q is tabulated


def test_wilcoxon_holm_matches_scipy_and_statsmodels_and_six_categories_cannot_reach_it():
    from scipy.stats import wilcoxon
    from statsmodels.stats.multitest import multipletests

    from adlib.analysis.compare import power_note, wilcoxon_holm

    categories = ("bottle", "cable", "capsule", "carpet", "grid")
    rows = _rows({"A": lambda s, c: 2.0 + categories.index(c), "B": 0.0,
                  "C": lambda s, c: (-1) ** categories.index(c) * 0.5}, seeds=range(2))
    table = wilcoxon_holm(rows, "image_auroc")
    ab = table[(table["A"] == "A") & (table["B"] == "B")].iloc[0]
    d = np.array([2.0, 3.0, 4.0, 5.0, 6.0])
    assert ab["p"] == pytest.approx(wilcoxon(d, zero_method="zsplit").pvalue)
    assert list(table["p (Holm)"]) == pytest.approx(list(multipletests(table["p"], method="holm")[1]))
    assert ab["A wins"] == 5 and (table["verdict"] == "tied").all()   # 5 categories: p >= 1/16
    assert "no single pair can be told apart" in power_note(6, 8)


# --- pairwise ---------------------------------------------------------------------------------

def test_a_method_five_points_better_on_every_block_is_better_and_noise_alone_is_tied():
    rows = _rows({"A": 5.0, "B": 0.0, "C": 0.0}, noise=0.3)
    # C - B: exactly symmetric differences (mean 0), so no interval can exclude 0
    for i, row in enumerate(r for r in rows if r["config"] == "C"):
        row["image_auroc"] = LEVELS[row["category"]] + (1.0 if i % 2 else -1.0) * (1 + i % 3)
    for row in (r for r in rows if r["config"] == "B"):
        row["image_auroc"] = LEVELS[row["category"]]
    table = pairwise(_shuffled(rows), "image_auroc").set_index(["A", "B"])
    assert table.loc[("A", "B"), "verdict"] == "A better"
    assert table.loc[("A", "B"), "low"] > 0 and table.loc[("A", "B"), "n_pairs"] == 15
    assert table.loc[("A", "B"), "difference"] == pytest.approx(5.0, abs=0.5)
    between = table.loc[("B", "C")] if ("B", "C") in table.index else table.loc[("C", "B")]
    assert between["verdict"] == "tied" and between["low"] < 0 < between["high"]
    assert len(table) == 3   # every unordered pair once, the better-ranked first


def test_pairs_are_matched_on_seed_and_category_not_averaged_first():
    """A ran one extra, easy category that B did not and is one point worse on every block
    both ran. Averaged first, A is ahead; paired, B is better, over the 15 shared pairs only."""
    rows = _rows({"A": -1.0, "B": 0.0}, noise=0.05)
    rows += [{"config": "A", "seed": s, "category": "easy", "image_auroc": 99.9} for s in range(3)]
    frame = _shuffled(rows)
    means = frame.groupby("config")["image_auroc"].mean()
    assert means["A"] > means["B"]          # what averaging first would say
    row = pairwise(frame, "image_auroc").iloc[0]
    assert (row["A"], row["B"]) == ("A", "B")    # ranked by mean: A first
    assert row["verdict"] == "B better" and row["high"] < 0
    assert row["n_pairs"] == 15 and row["difference"] == pytest.approx(-1.0, abs=0.1)


def test_pairing_sees_a_small_steady_lead_that_unpaired_means_cannot():
    """A = B + 1 on every block; the categories lie 40 points apart, so the two methods' sets
    of values overlap almost entirely and an unpaired interval spans 0."""
    from adlib.analysis.metrics import bootstrap_interval

    rows = _rows({"A": 1.0, "B": 0.0}, noise=0.1)
    frame = pd.DataFrame(rows)
    a = frame.loc[frame["config"] == "A", "image_auroc"].to_numpy()
    b = frame.loc[frame["config"] == "B", "image_auroc"].to_numpy()
    _, a_lo, a_hi = bootstrap_interval(a)
    _, b_lo, b_hi = bootstrap_interval(b)
    assert a_lo < b_hi and b_lo < a_hi      # unpaired: the intervals overlap
    assert pairwise(_shuffled(rows), "image_auroc").iloc[0]["verdict"] == "A better"


def test_the_pairwise_interval_counts_categories_not_seed_pairs():
    """A's lead differs from category to category (+3, -1, +4, 0, +2) and hardly from seed to
    seed: 15 pairs, but 5 categories, whose spread makes the interval span 0."""
    lead = dict(zip(CATEGORIES, (3.0, -1.0, 4.0, 0.0, 2.0)))
    rows = _rows({"A": lambda s, c: lead[c], "B": 0.0}, noise=0.2)
    row = pairwise(rows, "image_auroc").iloc[0]
    assert row["n_pairs"] == 15 and row["low"] < 0 < row["high"] and row["verdict"] == "tied"


def test_an_unknown_method_is_named_in_the_error():
    with pytest.raises(KeyError, match="Z"):
        pairwise(_rows({"A": 1.0, "B": 0.0}), "image_auroc", methods=["A", "Z"])


# --- ranks and cliques ------------------------------------------------------------------------

def test_three_clearly_separated_methods_are_three_cliques_of_one():
    ranked = ranks(_shuffled(_rows({"C": 0.0, "A": 20.0, "B": 10.0}, categories=MANY, noise=0.5)),
                   "image_auroc")
    assert list(ranked["mean_ranks"].index) == ["A", "B", "C"]
    assert ranked["mean_ranks"].tolist() == [1.0, 2.0, 3.0]
    assert ranked["cd"] == pytest.approx(2.3437 * math.sqrt(3 * 4 / (6 * 20)), abs=1e-3)
    assert ranked["cliques"] == [["A"], ["B"], ["C"]]
    assert ranked["p_value"] < 1e-4


def test_two_nearly_equal_methods_and_one_far_are_one_clique_of_two_and_blocks_missing_one_drop():
    """A and B trade first place category by category; C is last everywhere. A category that C
    did not run is dropped from the ranking, and said to be."""
    rows = _rows({"A": lambda s, c: 0.5 if MANY.index(c) % 2 else -0.5, "B": 0.0,
                  "C": -15.0}, categories=MANY)
    rows += [{"config": m, "seed": s, "category": "easy", "image_auroc": 50.0}
             for m in "AB" for s in range(3)]
    ranked = ranks(rows, "image_auroc")
    assert ranked["n_blocks"] == 20 and ranked["dropped"] == 1 and "1 of 21" in ranked["note"]
    assert sorted(ranked["mean_ranks"].index[:2]) == ["A", "B"]
    assert ranked["mean_ranks"]["C"] == 3.0
    groups = ranked["cliques"]
    assert [sorted(g) for g in groups if len(g) > 1] == [["A", "B"]]
    assert ["C"] in groups and len(groups) == 2


def test_cliques_chain_when_neighbours_overlap():
    mean_ranks = pd.Series({"a": 1.0, "b": 1.8, "c": 2.6, "d": 3.4, "e": 5.0})
    assert cliques(mean_ranks, 1.0) == [["a", "b"], ["b", "c"], ["c", "d"], ["e"]]


# --- winners per category ---------------------------------------------------------------------

def test_a_category_winner_leads_for_real_only_with_enough_seeds():
    many = _rows({"A": 5.0, "B": 0.0}, seeds=range(8), categories=["bottle"], noise=0.3)
    few = _rows({"A": 5.0, "B": 0.0}, seeds=range(3), categories=["cable"], noise=0.3)
    # A - B alternates +-1, +-2, +-3 over the seeds: a mean of 0, no lead to find
    noise = _rows({"A": lambda s, c: (1 + s % 3) * (1 if s % 2 else -1) + 0.01, "B": 0.0},
                  seeds=range(8), categories=["grid"])
    alone = _rows({"A": 0.0}, seeds=range(3), categories=["carpet"])
    table = winners(_shuffled(many + few + noise + alone), "image_auroc").set_index("category")
    assert table.loc["bottle", "winner"] == "A" and table.loc["bottle", "verdict"] == "winner better"
    assert table.loc["bottle", "low"] > 0 and table.loc["bottle", "n_pairs"] == 8
    assert table.loc["cable", "winner"] == "A" and table.loc["cable", "verdict"] == "tied"
    assert table.loc["grid", "winner"] == "A" and table.loc["grid", "verdict"] == "tied"
    assert table.loc["carpet", "verdict"] == "only method" and table.loc["carpet", "methods"] == 1


# --- Pareto front -----------------------------------------------------------------------------

COSTS = pd.DataFrame({"config": ["tiny", "mid", "dominated", "big", "unmeasured"],
                      "params_m": [0.5, 5.0, 20.0, 80.0, np.nan],
                      "image_auroc": [80.0, 92.0, 90.0, 96.0, 99.0]})


def test_a_dominated_method_is_off_the_front_and_a_cheaper_worse_one_is_on_it():
    front = pareto(COSTS, "params_m", "image_auroc").set_index("config")["pareto"]
    assert front.to_dict() == {"tiny": True, "mid": True, "dominated": False, "big": True,
                               "unmeasured": False}
    assert "pareto" not in COSTS    # the caller's table is left as it was


def test_an_equal_cost_and_lower_accuracy_is_dominated_but_an_exact_twin_is_not():
    table = pd.DataFrame({"cost": [1.0, 1.0, 1.0], "acc": [90.0, 85.0, 90.0]})
    assert pareto(table, "cost", "acc")["pareto"].tolist() == [True, False, True]


# --- figures ----------------------------------------------------------------------------------

def _texts(fig):
    from matplotlib.text import Text

    return " ".join(t.get_text() for t in fig.findobj(Text))


def test_the_cd_diagram_fits_the_column_and_shows_every_method_and_the_tied_groups():
    import matplotlib.pyplot as plt

    rows = _rows({"Patch SVDD + C-SE + LBR": 6.0, "MAAE": 5.8, "noise-to-norm": 3.0,
                  "LEA-Net": 2.7, "RLR": 0.0, "kNN baseline": -4.0}, seeds=range(2), noise=1.5)
    ranked = ranks(rows, "image_auroc")
    fig = cd_figure(ranked)
    assert smallest_shown_pt(fig) >= 8 - 1e-9
    assert fig.get_size_inches()[0] <= 7
    text = _texts(fig)
    assert all(name in text for name in ranked["mean_ranks"].index) and "CD =" in text
    thick = [line for line in fig.axes[0].lines if line.get_linewidth() >= 4]
    assert len(thick) == sum(len(g) > 1 for g in ranked["cliques"]) > 0
    plt.close(fig)


def test_the_pareto_figure_fits_the_column_with_every_point_labelled():
    import matplotlib.pyplot as plt

    fig = pareto_figure(COSTS, "params_m", "image_auroc")
    assert smallest_shown_pt(fig) >= 8 - 1e-9
    assert fig.get_size_inches()[0] <= 7
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert all(name in _texts(fig) for name in ("tiny", "mid", "dominated", "big"))
    front = [line for line in ax.lines if line.get_drawstyle() == "steps-post"][0]
    assert list(front.get_xdata()) == [0.5, 5.0, 80.0]
    plt.close(fig)
