"""Every method side by side (chapter 6): the comparison's rows as the page shows them.

:mod:`adlib.compare` does the statistics (paired intervals, ranks, fronts); this module picks
the rows, joins the costs and each chapter's verdicts, and writes the answer box. None of it
makes a row, so it stays out of the comparison's code hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from adlib import compare
from adlib.verdicts import Html, html_table

TRAINED, UNTRAINED = "methods", "untrained"
"""The comparison grid's two ablations: each method as its chapter trains it, and untrained."""

VERDICT_GROUPS = {"reproduced": ("reproduced",), "contradicted": ("contradicted",),
                  "inconclusive": ("inconclusive", "inconclusive: could not detect the paper's size",
                                   "inconclusive: smaller than the paper's"),
                  "did not learn": ("did not learn",), "not comparable": ("not comparable",),
                  "not run yet": ("not run yet",)}
"""The scoreboard's verdicts, the three inconclusive ones together: the paper table's columns."""


def trained(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the methods as their chapters train them."""
    return rows[rows["ablation"] == TRAINED]


def learned(rows: pd.DataFrame, metric: str = "image_auroc") -> pd.DataFrame:
    """Each trainable method against its untrained self, paired over (seed, category):
    ``method``, ``trained``, ``untrained`` (means), ``difference`` [``low``, ``high``],
    ``n_pairs`` and ``learned`` (the interval lies above 0)."""
    out = []
    for name in trained(rows)["config"].unique():
        reference = f"untrained {name}"
        if not (rows["config"] == reference).any():
            continue
        d = compare.difference(rows, metric, name, reference)
        out.append({"method": name, "trained": d["mean_A"], "untrained": d["mean_B"],
                    "difference": d["difference"], "low": d["low"], "high": d["high"],
                    "n_pairs": d["n_pairs"], "learned": d["verdict"] == compare.A_BETTER})
    return pd.DataFrame(out, columns=["method", "trained", "untrained", "difference", "low",
                                      "high", "n_pairs", "learned"])


def group_letters(cliques: Sequence[Sequence[str]]) -> dict[str, str]:
    """Each method's letters (a, b, ...): two methods share a letter when the Nemenyi test
    cannot tell their ranks apart (the compact letter display of a CD diagram's bars)."""
    letters: dict[str, str] = {}
    for i, group in enumerate(cliques):
        for name in group:
            letters[name] = letters.get(name, "") + chr(ord("a") + i)
    return letters


def ranking_table(rows: pd.DataFrame, metric: str = "image_auroc") -> pd.DataFrame:
    """The trained methods best first by mean rank over the (seed, category) blocks:
    ``mean rank``, ``group`` (:func:`group_letters`), the metric's mean over the blocks and
    whether the method beats its untrained self (``learned``; empty for kNN, which trains
    nothing)."""
    ranked = compare.ranks(trained(rows), metric)
    letters = group_letters(ranked["cliques"])
    values = trained(rows).groupby("config")[metric].mean()
    beats = learned(rows, metric).set_index("method")["learned"]
    out = [{"method": name, "mean rank": rank, "group": letters.get(name, ""),
            metric: values[name], "learned": beats.get(name)}
           for name, rank in ranked["mean_ranks"].items()]
    return pd.DataFrame(out)


def cost_table(rows: pd.DataFrame, train_images: Mapping[str, int],
               unified: Sequence[str] = ()) -> pd.DataFrame:
    """Per trained method: trainable ``parameters``, training seconds per training image
    (a separate model's time over its category's images; a unified model's over all of them),
    inference milliseconds per test image, the largest ``peak MB`` of a task, and the mean
    image and pixel AUROC; ``train_images``: the training images per category."""
    frame = trained(rows).copy()
    total = sum(train_images[c] for c in frame["category"].unique())
    per_image = [t / (total if m in unified else train_images[c])
                 for t, m, c in zip(frame["train_seconds"].fillna(0.0), frame["config"],
                                    frame["category"])]
    frame = frame.assign(train_per_image=per_image)
    out = []
    for name, group in frame.groupby("config", sort=False):
        out.append({"method": name, "parameters": group["parameters"].max(),
                    "train s / image": group["train_per_image"].mean(),
                    "inference ms / image": 1000 * group["inference_seconds"].mean()
                    if "inference_seconds" in group else float("nan"),
                    "peak MB": group["peak_memory_mb"].max()
                    if "peak_memory_mb" in group else float("nan"),
                    "image_auroc": group["image_auroc"].mean(),
                    "pixel_auroc": group["pixel_auroc"].mean()})
    return pd.DataFrame(out)


def papers_table(ranking: pd.DataFrame, chapters: Mapping[str, Sequence[str]],
                 claim_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Per paper: where its method(s) rank here (``chapters``: paper key -> method names) and
    its chapter's verdict counts (``claim_rows``: paper key -> the scoreboard's claim rows)."""
    from adlib.verdicts import verdict_counts

    position = {name: i + 1 for i, name in enumerate(ranking["method"])}
    out = []
    for paper, names in chapters.items():
        counts = verdict_counts(claim_rows.get(paper, ()))
        row = {"paper": paper,
               "rank here": ", ".join(f"{n} {position[n]}" for n in names if n in position)}
        for column, verdicts in VERDICT_GROUPS.items():
            row[column] = sum(counts.get(v, 0) for v in verdicts)
        out.append(row)
    return pd.DataFrame(out)


def answer_box(ranking: pd.DataFrame, front: Sequence[str], *, metric: str = "image_auroc",
               where: str = "") -> Html:
    """The chapter's first screen: the ranking with its tied groups, who learned, and which
    methods are worth their cost (``front``: the Pareto front's methods)."""
    body = []
    for row in ranking.itertuples(index=False):
        name, rank, group, value, beat = row
        learned_word = "trains nothing" if beat is None or pd.isna(beat) else (
            "yes" if beat else '<b style="color:#8a1c12">no</b>')
        body.append([f"<b>{name}</b>", f"{rank:.2f}", group, f"{value:.1f}", learned_word,
                     "yes" if name in front else ""])
    table = html_table([("method", "30%"), ("mean rank", "14%"), ("tied group", "14%"),
                        (f"mean {compare.METRIC_NAMES.get(metric, metric)}", "16%"),
                        ("beats its untrained self", "14%"), ("worth its cost", "12%")], body)
    foot = ("Methods sharing a letter in <em>tied group</em> have mean ranks the Nemenyi test "
            "cannot tell apart (95 %); <em>worth its cost</em>: on the Pareto front of training "
            "time per image against image AUROC." + (f" Measured on {where}." if where else ""))
    style = ("border:1px solid #c8c8c8;border-left:5px solid #4a6fa5;border-radius:4px;"
             "padding:8px 12px;margin:0.5em 0 1em 0;background:#fafbfd;max-width:100%;"
             "box-sizing:border-box")
    return Html(f'<div class="adlib-verdict-box" style="{style}">'
                f'<p style="margin:0 0 0.3em 0"><b>The ranking</b> ({len(ranking)} methods)</p>'
                f'{table}<p style="margin:0.4em 0 0 0;font-size:0.8em;color:#444">{foot}</p></div>')
