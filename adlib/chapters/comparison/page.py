"""Every method side by side (chapter 6): the comparison's rows as the page shows them.

:mod:`adlib.analysis.compare` does the statistics (paired intervals, ranks, fronts); this module picks
the rows, joins the costs and each chapter's verdicts, and writes the answer box. None of it
makes a row, so it stays out of the comparison's code hash.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pandas as pd

from adlib.analysis import compare
from adlib.analysis.claims import (
    CONTRADICTED,
    DID_NOT_LEARN,
    INCONCLUSIVE,
    MIN_PAIRS,
    NOT_COMPARABLE,
    NOT_RUN,
    NOT_TESTABLE,
    REPRODUCED,
    SMALLER_THAN_PAPER,
    UNDERPOWERED,
    p_text,
)
from adlib.book.verdicts import (
    Html,
    chapter_claim_rows,
    findings_html,
    html_table,
    verdict_counts,
)
from adlib.chapters.comparison import card as C
from adlib.chapters.comparison.card import methods
from adlib.chapters.lea_net import card as lea_net
from adlib.chapters.registry import get_chapter
from adlib.data.sources import open_split, resolve_root
from adlib.study.report import committed_rows

TRAINED, UNTRAINED = "methods", "untrained"
"""The comparison grid's two ablations: each method as its chapter trains it, and untrained."""

VERDICT_GROUPS = {"reproduced": (REPRODUCED,), "contradicted": (CONTRADICTED,),
                  "inconclusive": (INCONCLUSIVE, UNDERPOWERED, SMALLER_THAN_PAPER, DID_NOT_LEARN),
                  "not comparable": (NOT_COMPARABLE, NOT_TESTABLE), "not run yet": (NOT_RUN,)}
"""The scoreboard's verdicts, the three inconclusive ones together (and a record judged by older
code, whose "did not learn" replaced the verdict): the paper table's columns; ``did not learn``
counts the checks that name a config which does not beat its untrained self, beside them."""


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
    """The trained methods best first by mean rank over the categories (seeds averaged within
    each): ``mean rank``, ``group`` (:func:`group_letters`), the metric's mean and
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
    (a separate model's time over its category's images; a unified model's, whose rows each
    carry a category's share of its one training, over all of them),
    inference milliseconds per test image, the largest ``peak MB`` of a task, and the mean
    image and pixel AUROC; ``train_images``: the training images per category."""
    frame = trained(rows).copy()
    categories = frame["category"].unique()
    total = sum(train_images[c] for c in categories)
    # a unified row carries its category's share of the one training (evaluate_unified), so
    # the whole training is the share times the categories
    per_image = [t * len(categories) / total if m in unified else t / train_images[c]
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
    position = {name: i + 1 for i, name in enumerate(ranking["method"])}
    out = []
    for paper, names in chapters.items():
        counts = verdict_counts(claim_rows.get(paper, ()))
        row = {"paper": paper,
               "rank here": ", ".join(f"{n} {position[n]}" for n in names if n in position)}
        for column, verdicts in VERDICT_GROUPS.items():
            row[column] = sum(counts.get(v, 0) for v in verdicts)
        row["did not learn"] = sum(bool(r.get("did_not_learn")) or r.get("verdict") == DID_NOT_LEARN
                                   for r in claim_rows.get(paper, ()))
        out.append(row)
    return pd.DataFrame(out)


def answer_box(ranking: pd.DataFrame, front: Sequence[str], *, metric: str = "image_auroc",
               where: str = "", power: str = "") -> Html:
    """The chapter's first screen: the ranking with its tied groups, who learned, and which
    methods are worth their cost (``front``: the Pareto front's methods)."""
    body, found = [], methods()
    for row in ranking.itertuples(index=False):
        name, rank, group, value, beat = row
        trains = name in found and found[name].untrained is not None
        missing = "untrained self not run" if trains else "trains nothing"
        learned_word = missing if beat is None or pd.isna(beat) else (
            "yes" if beat else '<b style="color:#8a1c12">no</b>')
        body.append([f"<b>{name}</b>", f"{rank:.2f}", group, f"{value:.1f}", learned_word,
                     "yes" if name in front else ""])
    table = html_table([("method", "24%"), ("mean rank", "13%"), ("tied group", "13%"),
                        (f"mean {compare.METRIC_NAMES.get(metric, metric)}", "16%"),
                        ("beats its untrained self", "20%"), ("worth its cost", "14%")], body)
    foot = ("Methods sharing a letter in <em>tied group</em> have mean ranks the Nemenyi test "
            "cannot tell apart (95 %); <em>worth its cost</em>: on the Pareto front of training "
            "time per image against image AUROC." + (f" Measured on {where}." if where else "")
            + (f" {power}" if power else ""))
    style = ("border:1px solid #c8c8c8;border-left:5px solid #4a6fa5;border-radius:4px;"
             "padding:8px 12px;margin:0.5em 0 1em 0;background:#fafbfd;max-width:100%;"
             "box-sizing:border-box")
    return Html(f'<div class="adlib-verdict-box" style="{style}">'
                f'<p style="margin:0 0 0.3em 0"><b>The ranking</b> ({len(ranking)} methods)</p>'
                f'{table}<p style="margin:0.4em 0 0 0;font-size:0.8em;color:#444">{foot}</p></div>')


def train_counts(dataset: str, root: Any, categories: Sequence[str], image_size: int) -> dict:
    """The training images per category (the denominators of training seconds per image)."""
    return {c: len(open_split(dataset, root, c, "train", image_size)) for c in categories}


def unified_methods() -> list[str]:
    """The methods that train one model for all categories (their chapters' ``separate``)."""
    cfg = SimpleNamespace(profile="study", dataset="embedded", image_size=C.IMAGE_SIZE)
    protocol = C.protocol(cfg)
    return [c.config for c in C.GRIDS["study"] if c.ablation == "methods"
            and C.STUDY.cell_settings(protocol, c).get("separate") is False]


STUDY_HOURS = "4.5 h"   # the committed run's wall time (its README gives the sittings)
NOT_RUN_YET = ("The committed comparison has not been run yet: <code>python -m adlib study comparison "
           "--grid study --seeds 0,1,2 --workers 2 --out adlib/resources/results/comparison</code> "
           "makes it (about {hours} on 2 CPU cores).")


class Page:
    """The committed comparison as the chapter shows it; every part says so when there are no
    committed rows yet, so the page builds before the study has run."""

    def __init__(self, rows: pd.DataFrame, train_images: Mapping[str, int] | None = None,
                 unified: Sequence[str] = (), metric: str = "image_auroc"):
        self.rows, self.metric = rows, metric
        self.empty = rows.empty or not (rows.get("ablation") == TRAINED).any()
        self.train_images, self.unified = dict(train_images or {}), list(unified)

    @functools.cached_property
    def ranked(self) -> dict[str, Any]:
        """The trained methods' ranks over the categories (:func:`adlib.analysis.compare.ranks`), once
        for the box, the diagram and the sentence on what they can detect."""
        return compare.ranks(trained(self.rows), self.metric)

    @classmethod
    def committed(cls, root: Any = None, folder: Any = None) -> Page:
        """The committed ``study`` grid's rows (``root``: the embedded default's folder, for
        the training-image counts)."""
        rows = committed_rows("comparison", folder)
        if not rows.empty:
            rows = rows[rows["grid"] == "study"]
        if rows.empty:
            return cls(rows)
        root = resolve_root("embedded", root)
        counts = train_counts("embedded", root, sorted(rows["category"].unique()), C.IMAGE_SIZE)
        return cls(rows, counts, unified_methods())

    def _missing(self) -> Html:
        return Html(f"<p><em>{NOT_RUN_YET.format(hours=STUDY_HOURS)}</em></p>")

    def ranking(self) -> pd.DataFrame:
        return ranking_table(self.rows, self.metric)

    def costs(self) -> pd.DataFrame:
        table = cost_table(self.rows, self.train_images, self.unified)
        return compare.pareto(table, "train s / image", self.metric)

    def where(self) -> str:
        seeds = self.rows["seed"].nunique()
        cats = self.rows["category"].nunique()
        return (f"the embedded default, {cats} categories at {C.IMAGE_SIZE} px, {seeds} seeds, "
                "one CPU core per task")

    def answer(self) -> Html:
        if self.empty:
            return self._missing()
        costs = self.costs()
        return answer_box(self.ranking(), list(costs.loc[costs["pareto"], "method"]),
                          metric=self.metric, where=self.where(),
                          power=compare.power_note(self.ranked["n_blocks"], self.ranked["k"]))

    def rank_figure(self):
        """The critical-difference diagram of the trained methods (None: not run yet)."""
        return None if self.empty else compare.cd_figure(self.ranked)

    def cost_figure(self):
        """Image AUROC against training seconds per image, the front marked (None: not run)."""
        if self.empty:
            return None
        return compare.pareto_figure(self.costs(), "train s / image", self.metric, label="method")

    def learned_table(self):
        if self.empty:
            return self._missing()
        return _styled(learned(self.rows, self.metric), "Each method against its untrained self "
                       f"({compare.METRIC_NAMES.get(self.metric, self.metric)}, %), paired over "
                       "(seed, category), 95 % interval with the category as the unit")

    def category_table(self):
        """Per category: each method's mean over seeds, and the winner's lead over the
        runner-up with its interval (over seeds only: too few to call a lead real)."""
        if self.empty:
            return [self._missing()]
        means = trained(self.rows).pivot_table(index="config", columns="category",
                                               values=self.metric, aggfunc="mean")
        means = means.loc[self.ranking()["method"]]
        won = compare.winners(trained(self.rows), self.metric)
        # a t interval over three seeds of one category says little about that category: the
        # lead is shown without a verdict below MIN_PAIRS seeds
        few = won["n_pairs"] < MIN_PAIRS
        won["verdict"] = won["verdict"].where(~few, f"no verdict (< {MIN_PAIRS} seeds)")
        columns = ["category", "winner", "runner_up", "lead", "n_pairs", "verdict"]
        if not few.all():
            columns[4:4] = ["low", "high"]
        means = means.rename_axis(None, axis=1).rename_axis("method").reset_index()
        return [_styled(means,
                        "Mean over seeds per category (%), methods in rank order"), _styled(
            won[columns], "Per category: the winner's lead over the runner-up, paired over seeds")]

    def wilcoxon_table(self):
        """Every pair over the categories: Wilcoxon signed-rank, Holm-adjusted."""
        if self.empty:
            return self._missing()

        table = compare.wilcoxon_holm(trained(self.rows), self.metric)
        table[["p", "p (Holm)"]] = table[["p", "p (Holm)"]].map(p_text)
        return _styled(table, "Every pair over the categories (seed means): Wilcoxon "
                       "signed-rank test, p adjusted over all pairs by Holm's method")

    def power(self) -> Html:
        """What the ranking over this many categories can detect, in a sentence."""
        if self.empty:
            return self._missing()
        return Html(f"<p>{compare.power_note(self.ranked['n_blocks'], self.ranked['k'])}</p>")

    def pairwise_table(self):
        if self.empty:
            return self._missing()
        table = compare.pairwise(trained(self.rows), self.metric)
        return _styled(table[["A", "B", "difference", "low", "high", "n_pairs", "verdict"]],
                       "Every pair, A the higher mean: A - B paired over (seed, category), 95 % "
                       "interval with the category as the unit, each pair on its own")

    def cost_table(self):
        if self.empty:
            return self._missing()
        return _styled(self.costs(), "What each method costs on one CPU core per task "
                       "(peak MB: above the worker's start, a lower bound)")

    def findings(self) -> Html:
        """The chapter's reading of the committed comparison (its declared findings, each
        with the paired difference behind it; :func:`adlib.book.verdicts.findings_html`)."""
        return self._missing() if self.empty else findings_html("comparison")

    def papers_table(self):
        """Each paper's chapter verdicts beside where its method ranks here."""
        if self.empty:
            return self._missing()
        chapters: dict[str, list[str]] = {}
        for name, method in C.methods().items():
            if get_chapter(method.chapter).paper:
                chapters.setdefault(method.chapter, []).append(name)
        claims = {key: chapter_claim_rows(key) for key in chapters}
        return _styled(papers_table(self.ranking(), chapters, claims),
                       "Each paper's verdicts in its own chapter, and where its method ranks here")


def supervised_table(folder: Any = None):
    """Chapter 4's supervised LEA-Net (trained on anomalous images too) beside its colour map's
    maximum and the always-anomalous answer, from that chapter's committed study: F1 and image
    AUROC, and each network's AUROC minus the map maximum's, paired over (seed, fold)."""
    rows = committed_rows("lea_net", folder)
    if rows.empty:
        return Html("<p><em>Chapter 4's study has no committed rows.</em></p>")
    rows = rows[rows["grid"] == "study"]
    out = []
    for name in (lea_net.DEFAULT, "ResNet18", "map maximum", "always anomalous"):
        mine = rows[rows["config"] == name]
        entry = {"model": name, "F1": mine["f1"].mean(), "image AUROC": mine["image_auroc"].mean()}
        if name != "map maximum" and name != "always anomalous":
            d = compare.difference(rows, "image_auroc", name, "map maximum")
            entry.update({"AUROC - map maximum": d["difference"], "low": d["low"],
                          "high": d["high"], "n_pairs": d["n_pairs"]})
        out.append(entry)
    categories = ", ".join(sorted(rows["category"].unique()))
    return _styled(pd.DataFrame(out), f"Chapter 4's committed study ({categories}, "
                   "cross-validated folds): the supervised network and its references (%)")


def _styled(frame: pd.DataFrame, caption: str):
    """A table for the page: readable headers, one decimal for percentages, counts with
    thousands separators, costs to about three figures (:func:`_cost`), yes/no for booleans."""
    frame = frame.rename(columns=HEADERS)
    formats: dict[str, Any] = {}
    for column in frame.columns:
        values = frame[column]
        if column in ("pairs", "parameters"):
            formats[column] = "{:,.0f}"
        elif column == "mean rank":
            formats[column] = "{:.2f}"
        elif column in ("train s / image", "inference ms / image", "peak MB"):
            formats[column] = _cost
        elif values.dtype == bool or column in BOOLEAN_WORDS:
            formats[column] = BOOLEAN_WORDS.get(column, _yes_no)
        elif pd.api.types.is_float_dtype(values):
            formats[column] = "{:.1f}"
    return (frame.style.format(formats, na_rep="—").hide(axis="index").set_caption(caption))


def _cost(value: float) -> str:
    """About three significant figures, never more than three decimals (0.012, 5.53, 18.3)."""
    if value is None or pd.isna(value):
        return "—"
    places = 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3
    return f"{value:,.{places}f}"


def _yes_no(value: Any) -> str:
    return "—" if value is None or pd.isna(value) else "yes" if value else "no"


#: The page's column headers for the frames' names.
HEADERS = {**compare.METRIC_NAMES, "n_pairs": "pairs", "runner_up": "runner-up",
           "pareto": "worth its cost"}
#: Boolean columns that read better as a word than as yes/no.
BOOLEAN_WORDS = {"worth its cost": lambda v: "yes" if v else "", "learned": _yes_no}


def contestants() -> Any:
    """Each method: the chapter it comes from, its config there, how it trains and for how
    many epochs under the comparison's ``study`` profile."""
    protocol = C.protocol(SimpleNamespace(profile="study", dataset="embedded",
                                          image_size=C.IMAGE_SIZE))
    out = []
    found = C.methods()
    for cell in (c for c in C.GRIDS["study"] if c.ablation == "methods"):
        method = found[cell.config]
        settings = C.STUDY.cell_settings(protocol, cell)
        chapter = get_chapter(method.chapter)
        epochs = settings.get("colouriser_epochs", settings.get("epochs"))
        out.append({"method": cell.config, "chapter": chapter.title,
                    "as its chapter names it": method.config or "(the chapter's protocol)",
                    "trains": "nothing (a feature bank)" if method.untrained is None else
                    "one model for all categories" if settings.get("separate") is False
                    else "one model per category",
                    "epochs": "—" if method.untrained is None else str(epochs)})
    return pd.DataFrame(out).style.hide(axis="index").set_caption(
        f"The contestants, each at {C.IMAGE_SIZE} px on the same images and seeds")


def run_table(rows: pd.DataFrame):
    """This run's rows: each method and category, the three metrics and the costs (headers
    and precision as every table of the chapter, :func:`_styled`)."""
    frame = rows[[c for c in RUN_COLUMNS if c in rows]].rename(
        columns={"config": "method", "train_seconds": "train s"})
    if "inference_seconds" in frame:
        frame["inference ms / image"] = 1000 * frame.pop("inference_seconds")
    return _styled(frame, "This run: one seed, no intervals (%)")


RUN_COLUMNS = ("config", "category", "image_auroc", "pixel_auroc", "aupro", "train_seconds",
               "inference_seconds")


def record_metrics(rows: pd.DataFrame) -> dict:
    """``{category: {metric: value}}`` of this run's trained method with the best mean image
    AUROC: the run record's main metrics (the chapter has no one model of its own)."""
    first = trained(rows)
    if first.empty:
        return {}
    name = first.groupby("config")["image_auroc"].mean().idxmax()
    metrics = ("image_auroc", "pixel_auroc", "aupro")
    return {row.category: {m: float(getattr(row, m)) for m in metrics}
            for row in first[first["config"] == name].itertuples()}


def describe(run: Any) -> str:
    """This run in one line; the epochs are each method's chapter's, so the profile's are not
    shown."""
    c = run.cfg

    cells = ", ".join(cell.config for cell in C.GRIDS[c.grid])
    return (f"profile {c.profile}: {c.dataset} at {c.image_size} px, categories "
            f"{', '.join(run.categories)}, seeds {c.seeds}, device {run.device}; grid {c.grid}: "
            f"{cells}; each method's epochs are its chapter's")
