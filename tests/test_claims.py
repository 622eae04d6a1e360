"""Declared claim checks: paired differences, intervals with the category as the unit, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from adlib.analysis import stats
from adlib.analysis.claims import (CONTRADICTED, COULD_NOT_TELL, INCONCLUSIVE, LEVEL, NOT_COMPARABLE,
                          NOT_RUN, NOT_TESTABLE, REPRODUCED, ClaimCheck, best_rows, check_claims,
                          claims_table, compare, parse_order)

CTX = {"dataset": "embedded", "profile": "study", "hardware": "2x cpu", "revision": "abc123"}


def _rows(means: dict[str, float], noise: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """3 seeds x 6 categories per config; a shared per-pair offset plus independent noise."""
    rng = np.random.default_rng(seed)
    pairs = [(s, c) for s in range(3) for c in "abcdef"]
    base = {p: rng.normal(0, 5) for p in pairs}   # category / seed difficulty, shared by configs
    rows = []
    for config, mean in means.items():
        for s, c in pairs:
            value = mean + base[(s, c)] + rng.normal(0, noise)
            rows.append({"ablation": "T", "config": config, "seed": s, "category": c,
                         "image_auroc": value, "pixel_auroc": value, "final_loss": -value})
    return pd.DataFrame(rows)


def _verdict(check, rows):
    return check_claims("rlr", [check], rows, **CTX)


def test_interval_above_zero_is_reproduced_below_is_contradicted():
    rows = _rows({"A": 80.0, "B": 75.0})
    up = _verdict(ClaimCheck(3, order="A > B"), rows)
    assert [r["verdict"] for r in up] == [REPRODUCED, REPRODUCED]     # image and pixel
    assert up[0]["level"] == "image" and up[1]["level"] == "pixel"
    assert up[0]["n_pairs"] == 18 and up[0]["ours"].startswith("A − B: +4.")
    assert up[0]["revision"] == "abc123" and up[0]["hardware"] == "2x cpu"
    down = _verdict(ClaimCheck(3, order="B > A", metrics=("image_auroc",)), rows)
    assert down[0]["verdict"] == CONTRADICTED
    # "<" reads the other way round
    assert _verdict(ClaimCheck(3, order="B < A", metrics=("image_auroc",)), rows)[0]["verdict"] == REPRODUCED


def test_interval_spanning_zero_is_inconclusive_even_when_the_means_are_ordered():
    rows = _rows({"A": 80.3, "B": 80.0}, noise=3.0)
    row = _verdict(ClaimCheck(3, order="A > B", metrics=("image_auroc",)), rows)[0]
    a = rows[rows.config == "A"].set_index(["seed", "category"]).image_auroc
    b = rows[rows.config == "B"].set_index(["seed", "category"]).image_auroc
    est = stats.paired_estimate(a - b)
    lo, hi = est.low, est.high
    assert lo < 0 < hi and est.n == 6 and est.unit == "category"
    assert row["verdict"] == INCONCLUSIVE and f"[{lo:+.2f}, {hi:+.2f}]" in row["ours"]


def test_paired_differences_remove_the_shared_category_offset():
    # unpaired, a 1-point gap is nothing against a per-category spread of 5; paired it is clear
    rows = _rows({"A": 81.0, "B": 80.0}, noise=0.3)
    assert rows.groupby("config").image_auroc.std().min() > 3
    assert _verdict(ClaimCheck(3, order="A > B", metrics=("image_auroc",)), rows)[0]["verdict"] == REPRODUCED


def test_an_order_of_three_needs_every_adjacent_pair():
    rows = _rows({"A": 90.0, "B": 80.0, "C": 0.0})
    b = rows.config == "B"
    wiggle = np.where(np.arange(b.sum()) % 2, 2.0, -2.0)        # B − C = ∓2: mean 0
    rows.loc[rows.config == "C", "image_auroc"] = rows.loc[b, "image_auroc"].to_numpy() + wiggle
    row = _verdict(ClaimCheck(3, order="A > B > C", metrics=("image_auroc",)), rows)[0]
    assert row["verdict"] == INCONCLUSIVE and "pairs: reproduced, inconclusive" in row["note"]
    rows = _rows({"A": 90.0, "B": 70.0, "C": 80.0})
    assert _verdict(ClaimCheck(3, order="A > B > C", metrics=("image_auroc",)), rows)[0]["verdict"] == CONTRADICTED


def test_did_not_learn_stands_beside_the_verdict_and_is_checked_on_every_config():
    rows = _rows({"A": 80.0, "B": 70.0, "untrained": 80.5})
    row = _verdict(ClaimCheck(3, order="A > B", sanity="untrained", metrics=("image_auroc",)), rows)[0]
    assert row["verdict"] == REPRODUCED                 # the order holds, whatever learned
    assert row["did_not_learn"] == ["A", "B"] and "A − untrained" in row["learning"]
    # the first config learns, the second does not: the second is reported
    rows = _rows({"A": 80.0, "B": 60.0, "untrained": 70.0})
    row = _verdict(ClaimCheck(3, order="A > B", sanity="untrained", metrics=("image_auroc",)), rows)[0]
    assert row["verdict"] == REPRODUCED and row["did_not_learn"] == ["B"]
    rows = _rows({"A": 80.0, "B": 70.0, "untrained": 50.0})
    row = _verdict(ClaimCheck(3, order="A > B", sanity="untrained", metrics=("image_auroc",)), rows)[0]
    assert row["verdict"] == REPRODUCED and row["did_not_learn"] == []
    # a reference beside the sanity one (the mean training image) trains nothing: not named
    rows = _rows({"A": 80.0, "mean image": 40.0, "untrained": 50.0})
    rows.loc[rows.config.isin(["mean image", "untrained"]), "final_loss"] = np.nan
    row = _verdict(ClaimCheck(3, order="A > mean image", sanity="untrained",
                              metrics=("image_auroc",)), rows)[0]
    assert row["did_not_learn"] == [] and "mean image − untrained" not in row["learning"]


def test_groups_lower_is_better_missing_configs_and_absolute_numbers():
    rows = _rows({"A": 80.0, "B": 60.0, "C": 70.0, "D": 71.0})
    best_of = _verdict(ClaimCheck(6, order="A | B > C | D", metrics=("image_auroc",)), rows)[0]
    assert best_of["verdict"] == REPRODUCED            # best of A,B (A) beats best of C,D (D)
    loss = _verdict(ClaimCheck(7, order="A > B", metrics=("final_loss",), higher_is_better=False), rows)[0]
    assert loss["verdict"] == REPRODUCED and loss["level"] == "training loss"   # A's loss is lower
    assert _verdict(ClaimCheck(7, order="B > A", metrics=("final_loss",), higher_is_better=False),
                    rows)[0]["verdict"] == CONTRADICTED
    assert _verdict(ClaimCheck(3, order="A > Z", metrics=("image_auroc",)), rows)[0]["verdict"] == NOT_RUN
    absolute = _verdict(ClaimCheck(1, absolute={"table": 1, "method": "Ours", "category": "mean"},
                                   config="A"), rows)
    assert [r["verdict"] for r in absolute] == [NOT_COMPARABLE, NOT_COMPARABLE]
    assert absolute[0]["paper"] == "98.6" and absolute[1]["paper"] == "98.5"
    same_data = check_claims("rlr", [ClaimCheck(1, absolute={"table": 1, "method": "Ours",
                                                             "category": "mean"}, config="A",
                                                dataset="embedded", metrics=("image_auroc",))],
                             rows, **CTX)[0]
    assert same_data["verdict"] == CONTRADICTED     # 80 is far below 98.6
    assert "below our interval" not in same_data["note"] and "above our interval" in same_data["note"]
    # two-sided: ours far above the paper's number is no reproduction either
    high = rows.assign(image_auroc=rows["image_auroc"] + 40)
    above = check_claims("rlr", [ClaimCheck(1, absolute={"table": 1, "method": "Ours",
                                                         "category": "mean"}, config="A",
                                            dataset="embedded", metrics=("image_auroc",))],
                         high, **CTX)[0]
    assert above["verdict"] == CONTRADICTED and "below our interval" in above["note"]


def test_paper_table_order_skips_ties_and_reads_the_numbers():
    rows = pd.DataFrame([{"ablation": "Table 5", "config": c, "seed": s, "category": k,
                          "image_auroc": 1.0, "pixel_auroc": 1.0}
                         for c in ("alpha=1", "alpha=2", "alpha=3") for s in range(2) for k in "ab"])
    pixel = ClaimCheck(6, configs=("alpha=1", "alpha=2", "alpha=3"), table=5)
    # Table 5 pixel: alpha=2 98.5 > alpha=1 98.4 = alpha=3 98.4: no claim between 1 and 3
    assert pixel.relations("rlr", "pixel_auroc") == [("alpha=2", "alpha=1"), ("alpha=2", "alpha=3")]
    row = check_claims("rlr", [pixel], rows, **CTX)[1]
    assert row["paper"].startswith("alpha=2 98.5")
    assert parse_order("a > b > c, a > d") == [("a", "b"), ("b", "c"), ("a", "d")]
    with pytest.raises(ValueError, match="no relation"):
        parse_order("a")


def test_one_pair_has_no_interval_and_the_table_rejects_unknown_verdicts():
    rows = _rows({"A": 80.0, "B": 70.0})
    one = rows[(rows.seed == 0) & (rows.category == "a")]
    row = _verdict(ClaimCheck(3, order="A > B", metrics=("image_auroc",)), one)[0]
    assert row["verdict"] == INCONCLUSIVE and "no interval" in row["ours"]
    table = claims_table([row])
    assert list(table.columns)[:4] == ["claim", "check", "level", "paper"]
    with pytest.raises(ValueError, match="unknown verdicts"):
        claims_table([{**row, "verdict": "maybe"}])
    assert "background-color" in claims_table([row], style=True).to_html()


def test_two_categories_give_a_t_interval_with_one_degree_of_freedom():
    # 3 seeds of 2 categories: six pairs, but two units; a clear per-pair gap is no general claim
    rows = _rows({"A": 80.0, "B": 77.0}, noise=2.0)
    two = rows[rows.category.isin(["a", "b"])]
    row = _verdict(ClaimCheck(3, order="A > B", metrics=("image_auroc",)), two)[0]
    assert row["n_pairs"] == 6 and row["n_units"] == 2 and row["unit"] == "category"
    assert row["verdict"] != REPRODUCED and "t on category means" in row["note"]
    compact = claims_table([row, {**row, "verdict": NOT_RUN}], compact=True)
    assert len(compact) == 1 and "dataset" not in compact.columns


def test_a_margin_is_the_declared_smallest_effect_never_a_number_of_the_study(monkeypatch):
    with pytest.raises(ValueError, match="declaration"):
        ClaimCheck(4, order="A > B", margin=1.0)
    rows = _rows({"A": 79.0, "B": 80.0}, noise=0.3)          # A loses 1 point, steadily
    check = ClaimCheck(4, order="A > B", margin=True, metrics=("image_auroc",))
    row = _verdict(check, rows)[0]
    assert row["verdict"] == REPRODUCED and row["margin"] == stats.SMALLEST_EFFECT["auroc"]
    monkeypatch.setitem(stats.SMALLEST_EFFECT, "auroc", 0.5)  # a stricter declaration
    row = _verdict(check, rows)[0]
    assert row["verdict"] == CONTRADICTED and row["margin"] == 0.5


def test_a_level_finding_needs_its_interval_inside_the_declared_bound():
    tight = _rows({"A": 80.2, "B": 80.0}, noise=0.3)
    assert compare(tight, "A > B")["verdict"] == LEVEL
    wide = _rows({"A": 80.2, "B": 80.0}, noise=6.0)       # spans 0, and reaches past ±2
    result = compare(wide, "A > B")
    assert result["verdict"] == COULD_NOT_TELL
    assert not stats.within_bound(*map(float, result["ours"].split("[")[1].rstrip("]").split(",")),
                                  stats.SMALLEST_EFFECT["auroc"])


def test_the_papers_size_is_tagged_beside_a_reproduced_verdict():
    rows = _rows({"A": 90.0, "B": 80.0}, noise=0.5)
    same = _verdict(ClaimCheck(3, order="A > B", effect=10.0, metrics=("image_auroc",)), rows)[0]
    assert same["verdict"] == REPRODUCED and same["size"].startswith("same size")
    larger = _verdict(ClaimCheck(3, order="A > B", effect=2.0, metrics=("image_auroc",)), rows)[0]
    assert larger["size"].startswith("larger") and "handicapped" in larger["size"]   # 5x
    smaller = _verdict(ClaimCheck(3, order="A > B", effect=30.0, metrics=("image_auroc",)), rows)[0]
    assert smaller["verdict"] == REPRODUCED and smaller["size"].startswith("smaller")


def test_the_chapters_claims_are_adjusted_together():
    rows = _rows({"A": 81.0, "B": 80.0}, noise=1.2, seed=3)
    alone = _verdict(ClaimCheck(3, order="A > B", metrics=("image_auroc",)), rows)[0]
    many = check_claims("rlr", [ClaimCheck(3, order="A > B", metrics=("image_auroc",))]
                        + [ClaimCheck(3, order="B > A", label=f"x{i}", metrics=("image_auroc",))
                           for i in range(10)], rows, **CTX)[0]
    assert alone["p_adjusted"] < many["p_adjusted"]
    assert alone["verdict"] == REPRODUCED and many["verdict"] == INCONCLUSIVE
    assert "reproduced before the adjustment" in many["adjustment"]


def test_a_check_that_needs_other_data_is_not_testable_here():
    rows = _rows({"A": 80.0, "B": 70.0})
    row = _verdict(ClaimCheck(3, order="A > B", needs="MPDD's tubes", metrics=("image_auroc",)),
                   rows)[0]
    assert row["verdict"] == NOT_TESTABLE and "MPDD's tubes" in row["note"]


def test_the_scoreboard_prefers_the_claims_own_data_set_for_an_order_check_too():
    row = {"claim": "rlr #3", "check": "", "level": "image", "paper_dataset": "mvtec_ad"}
    ours = {"dataset": "embedded", "profile": "study", "claims": [
        {**row, "dataset": "embedded", "verdict": REPRODUCED, "n_pairs": 18}]}
    theirs = {"dataset": "mvtec_ad", "profile": "paper", "claims": [
        {**row, "dataset": "mvtec_ad", "verdict": CONTRADICTED, "n_pairs": 15}]}
    assert best_rows([ours, theirs])[0]["verdict"] == CONTRADICTED


def test_a_table_printed_per_category_gives_its_mean_row_for_an_order():
    from adlib.analysis.claims import table_values

    ref = table_values("noise_to_norm", 4, "image_auroc")
    assert ref.index.is_unique and ref["lambda=0.3"] == 94.94 and ref["lambda=0"] == 73.16
    assert table_values("maae", 3, "pixel_auroc")["ANG+FFM+MAAE"] == 96.9  # one row per setting


def test_cross_validated_rows_pair_on_seed_and_fold():
    """A fold study: 3 seeds x 5 folds of one category are 15 pairs, each fold's difficulty
    shared by both configs (unpaired the fold spread would hide the gap)."""
    rng = np.random.default_rng(1)
    rows = []
    for s in range(3):
        for f in range(5):
            hard = rng.normal(0, 0.1)
            for config, gain in (("A", 0.03), ("B", 0.0)):
                rows.append({"ablation": "T", "config": config, "seed": s, "category": "ihc",
                             "fold": f, "f1": 0.6 + hard + gain + rng.normal(0, 0.005)})
    row = check_claims("lea_net", [ClaimCheck(1, order="A > B", metrics=("f1",))],
                       pd.DataFrame(rows), **CTX)[0]
    assert row["n_pairs"] == 15 and row["verdict"] == REPRODUCED and row["level"] == "image (F1)"
    few = pd.DataFrame(rows)
    few = few[(few.seed == 0) & (few.fold < 2)]
    row = check_claims("lea_net", [ClaimCheck(1, order="A > B", metrics=("f1",))], few, **CTX)[0]
    assert row["n_units"] == 2 and row["unit"] == "(seed, fold)" and "Nadeau-Bengio" in row["note"]


def test_the_fold_correction_widens_the_interval_of_folds_that_share_training_images():
    rng = np.random.default_rng(2)
    index = pd.MultiIndex.from_product([range(3), ["ihc"], range(5)],
                                       names=["seed", "category", "fold"])
    diffs = pd.Series(1.0 + rng.normal(0, 2.0, 15), index=index)
    corrected = stats.paired_estimate(diffs)
    naive = stats.t_interval(diffs.to_numpy())
    # (1/J + 1/(k-1)) / (1/J) = (1/15 + 1/4) * 15 = 4.75 times the variance
    ratio = (corrected.high - corrected.low) / (naive.high - naive.low)
    assert corrected.method.startswith("Nadeau-Bengio") and ratio == pytest.approx(4.75 ** 0.5)


def _per_category(values: dict[str, float], config: str = "A") -> pd.DataFrame:
    """3 seeds of one config, each category at its own value (no noise)."""
    return pd.DataFrame([{"ablation": "T", "config": config, "seed": s, "category": c,
                          "image_auroc": v, "pixel_auroc": v} for s in range(3)
                         for c, v in values.items()])


def test_an_absolute_claim_about_one_category_is_checked_on_that_category(monkeypatch):
    """noise-to-norm's *tubes* 94.16 against our tubes, not against the mean of every category
    (the audit's synthetic MPDD table with tubes = 95 read "contradicted")."""
    import adlib.analysis.claims

    monkeypatch.setattr(adlib.analysis.claims, "paper_value", lambda paper, **f: 94.16)
    rows = _per_category({"tubes": 95.0, "bracket_black": 60.0, "metal_plate": 70.0})
    rows.loc[rows.category == "tubes", "image_auroc"] += [-1.0, 0.0, 1.0]   # three seeds
    check = ClaimCheck(2, absolute={"table": 1, "category": "tubes"}, config="A", dataset="mpdd",
                       metrics=("image_auroc",))
    row = check_claims("noise_to_norm", [check], rows, **{**CTX, "dataset": "mpdd"})[0]
    assert row["verdict"] == REPRODUCED and row["ours"].startswith("95.00")
    missing = ClaimCheck(2, absolute={"table": 1, "category": "screws"}, config="A", dataset="mpdd",
                         metrics=("image_auroc",))
    row = check_claims("noise_to_norm", [missing], rows, **{**CTX, "dataset": "mpdd"})[0]
    assert row["verdict"] == NOT_RUN and "screws" in row["note"]


def test_the_scoreboard_prefers_a_record_on_the_claims_data_set_for_an_absolute_check():
    from adlib.analysis.claims import best_rows

    study = {"profile": "study", "dataset": "embedded", "created": "2026-12-01",
             "claims": [{"claim": "maae #1", "check": "", "level": "image", "n_pairs": 30,
                         "verdict": NOT_COMPARABLE, "dataset": "embedded", "profile": "study"}]}
    paper = {"profile": "paper", "dataset": "mvtec_ad", "created": "2026-11-01",
             "claims": [{"claim": "maae #1", "check": "", "level": "image", "n_pairs": 15,
                         "verdict": REPRODUCED, "dataset": "mvtec_ad", "profile": "paper"}]}
    assert [r["verdict"] for r in best_rows([study, paper])] == [REPRODUCED]
    assert [r["verdict"] for r in best_rows([study])] == [NOT_COMPARABLE]


def test_power_tells_an_interval_too_wide_from_one_that_rules_the_papers_size_out():
    from adlib.analysis.claims import SMALLER_THAN_PAPER, UNDERPOWERED

    wide = _rows({"A": 84.0, "B": 80.0}, noise=8.0)   # this draw: +0.02 [-4.2, +4.3]
    row = _verdict(ClaimCheck(1, order="A > B", effect=3.0, metrics=("image_auroc",)), wide)[0]
    assert row["verdict"] == UNDERPOWERED and "+3.00" in row["paper"]
    tight = _rows({"A": 80.05, "B": 80.0}, noise=0.3)
    row = _verdict(ClaimCheck(1, order="A > B", effect=3.0, metrics=("image_auroc",)), tight)[0]
    assert row["verdict"] == SMALLER_THAN_PAPER
    assert _verdict(ClaimCheck(1, order="A > B", metrics=("image_auroc",)), tight)[0]["verdict"] == INCONCLUSIVE
    per_metric = _verdict(ClaimCheck(1, order="A > B", effect={"image_auroc": 3.0}), tight)
    assert [r["verdict"] for r in per_metric] == [SMALLER_THAN_PAPER, INCONCLUSIVE]   # no pixel size


def test_a_table_claim_takes_the_papers_size_from_the_table():
    from adlib.analysis.claims import SMALLER_THAN_PAPER

    # Table 5 image: alpha=2 > alpha=1, alpha=2 > alpha=3 by the table's own gaps
    rows = pd.DataFrame([{"ablation": "Table 5", "config": c, "seed": s, "category": k,
                          "image_auroc": 90.0 + 0.01 * ((s + ord(k)) % 3), "pixel_auroc": 90.0}
                         for c in ("alpha=1", "alpha=2", "alpha=3") for s in range(3) for k in "abcdef"])
    row = check_claims("rlr", [ClaimCheck(6, configs=("alpha=1", "alpha=2", "alpha=3"), table=5,
                                          metrics=("image_auroc",))], rows, **CTX)[0]
    assert row["verdict"] == SMALLER_THAN_PAPER, row


def test_non_inferiority_passes_a_small_loss_inside_the_margin_and_fails_a_large_one():
    close = _rows({"unified": 79.7, "separate": 80.0}, noise=0.2)
    check = ClaimCheck(4, order="unified > separate", margin=True, metrics=("image_auroc",))
    row = _verdict(check, close)[0]
    assert row["verdict"] == REPRODUCED and "margin" in row["note"]
    assert _verdict(ClaimCheck(4, order="unified > separate", metrics=("image_auroc",)),
                    close)[0]["verdict"] == CONTRADICTED       # as superiority it fails
    far = _rows({"unified": 75.0, "separate": 80.0}, noise=0.2)
    assert _verdict(check, far)[0]["verdict"] == CONTRADICTED


def test_a_wins_count_is_judged_on_categories_with_an_interval():
    # A beats B on 14 of 15 categories (seed means): a clear majority, as the paper's 10 of 15
    values = {f"c{i}": (81.0 if i else 79.0) for i in range(15)}
    rows = pd.concat([_per_category(values, "A"), _per_category(dict.fromkeys(values, 80.0), "B")])
    row = _verdict(ClaimCheck(2, order="A > B", wins=(10, 15), metrics=("image_auroc",)), rows)[0]
    assert row["verdict"] == REPRODUCED and row["ours"].startswith("14/15") and "10/15" in row["paper"]
    few = rows[rows.category.isin(["c0", "c1", "c2", "c3"])]      # 3 of 4: interval spans 1/2
    row = _verdict(ClaimCheck(2, order="A > B", wins=(10, 15), metrics=("image_auroc",)), few)[0]
    assert row["verdict"].startswith(INCONCLUSIVE) and row["ours"].startswith("3/4")


def test_compare_pairs_rows_that_carry_no_ablation_column():
    """Rows of a grid without ablations (a comparison of methods) pair on (seed, category)
    as any others: before, the missing column became NaN, NaN equals nothing, and every row
    was dropped (0 pairs, inconclusive)."""
    from adlib.analysis.claims import compare

    rows = [{"config": name, "seed": seed, "category": cat, "image_auroc": 70 + seed + (5 if name == "A" else 0)}
            for name in ("A", "B") for seed in range(3) for cat in ("x", "y", "z")]
    out = compare(rows, "A > B")
    assert out["n_pairs"] == 9 and out["verdict"] == "reproduced", out


def test_an_order_names_configs_that_hold_a_comma():
    """LEA-Net's deviation cells are named "ResNet18 + ResNet-based CAAN (4), learned gate
    (official code)": split on every comma, such an order compared nothing ("not run yet", or
    a config with itself)."""
    from adlib.analysis.claims import parse_order

    gate, caan = "R + C (4), learned gate (official code)", "R + C (4)"
    assert parse_order(f"{gate} > {caan}") == [(gate, caan)]
    assert parse_order(f"{caan} > {caan}, running statistics") == [(caan, f"{caan}, running statistics")]
    assert parse_order("A > B > C, A > D") == [("A", "B"), ("B", "C"), ("A", "D")]
