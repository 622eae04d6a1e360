"""Claims, declared once per paper and checked on study rows with paired intervals.

A paper declares its checks as data (:class:`ClaimCheck`) next to its grid; the notebook and
``python -m adlib study <paper> --summarise`` (or ``--rejudge``, which re-judges committed rows
without running anything) both call :func:`check_claims` on the same rows (one row per ablation
cell x seed x category, see :mod:`adlib.study`).

How a direction is judged. For ``A > B`` on a metric, take the difference ``A - B`` for every
(seed, category) pair that both configs ran -- (seed, category, fold) in a cross-validated
study -- and the book's interval of its mean (:func:`adlib.analysis.stats.paired_estimate`): the
category is the unit (seeds are repeats on the same test images), folds get the Nadeau-Bengio
correction. The papers' claims are confirmatory: each check has one p-value (an order of several
relations the largest of theirs, :func:`row_p`), a chapter's checks are Holm-adjusted together
(:func:`adjust`), and a verdict is decisive only when its adjusted p is below 0.05:

* ``reproduced``    the difference lies above 0 (after adjustment);
* ``contradicted``  it lies below 0;
* ``inconclusive``  otherwise. Where the paper states the size of the effect (``effect``, or the
  gap in the paper's ``table``), the interval tells power apart: it still holds the paper's
  size (``inconclusive: could not detect the paper's size``) or lies wholly below it
  (``inconclusive: smaller than the paper's``);
* beside the verdict, the size of ours against the paper's (:func:`size_tag`): the
  paper's inside our interval ("same size"), our interval wholly above it ("larger than the
  paper's"; at 3x or more the baseline may be handicapped) or wholly below it ("smaller");
* ``margin=True`` (non-inferiority, "A loses nothing against B"): reproduced when A - B lies
  above minus the book's declared smallest effect (:data:`adlib.analysis.stats.SMALLEST_EFFECT`),
  contradicted when it lies below it; the margin is never taken from the rows;
* ``wins`` (the paper's count, "A beats B on 10 of 15 classes"): the categories where A's
  seed mean beats B's, with a Wilson 95 % interval of that share and a binomial p-value;
* an order of three or more configs is reproduced only when every adjacent pair is, and
  contradicted when any pair is;
* "did not learn" is reported beside the verdict, never instead of it: every config a check
  compares (both sides of each difference) is tested against the check's sanity reference
  (e.g. the same model untrained), and those that do not beat it are named in
  ``did_not_learn``;
* ``not comparable here`` for an absolute number measured on another data set; an absolute
  number on the same data set is reproduced when it lies inside our interval, contradicted when
  it lies outside on either side;
* ``not testable here`` for a check that needs data the embedded default cannot stand for
  (``needs``), on any other data set;
* ``not run yet`` when a config the check needs has no rows.

:func:`compare` judges a chapter's own findings the same way without adjustment (they are
exploratory), and says ``level`` only when the interval lies inside the declared equivalence
bound (:func:`adlib.analysis.stats.within_bound`), ``could not tell`` otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from scipy.stats import binomtest

from adlib.analysis import stats
from adlib.study.results import get_claim, hardware_label, paper_numbers, paper_value

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
DID_NOT_LEARN = "inconclusive: the model did not learn"
NOT_COMPARABLE = "not comparable here"
UNDERPOWERED = "inconclusive: could not detect the paper's size"
SMALLER_THAN_PAPER = "inconclusive: smaller than the paper's"
NOT_RUN = "not run yet"
NOT_TESTABLE = "not testable here"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, UNDERPOWERED, SMALLER_THAN_PAPER,
            DID_NOT_LEARN, NOT_COMPARABLE, NOT_TESTABLE, NOT_RUN)
"""Every verdict a row can carry. ``DID_NOT_LEARN`` is no longer given as a row's verdict (a
model that did not learn is named beside the verdict, in ``did_not_learn``); it stays so that a
record judged by older code still renders."""
LEVEL, COULD_NOT_TELL = "level", "could not tell"
"""A finding's two readings of an interval that spans 0: inside the equivalence bound, or not."""

SAME_SIZE, LARGER, SMALLER = "same size as the paper's", "larger than the paper's", "smaller than the paper's"
HANDICAP_RATIO = 3.0
"""Ours at this multiple of the paper's effect or more: the baseline may be handicapped."""
ALPHA = 1 - stats.LEVEL

LEVELS = {"image_auroc": "image", "pixel_auroc": "pixel", "aupro": "pixel (AUPRO)",
          "image_f1_max": "image (F1-max)", "f1": "image (F1)", "final_loss": "training loss"}
MIN_PAIRS = 6
"""Fewer seeds than this in one category give no verdict on that category alone (chapter 6's
per-category winners): a t interval of three seeds says little."""
PAIR_KEYS = ("seed", "category", "fold")
"""What a pair shares; ``fold`` is empty (None) outside cross-validated studies."""


@dataclass(frozen=True)
class ClaimCheck:
    """One testable statement of a paper's claim, as data.

    Args:
        claim: the claim's number in ``adlib/resources/paper_tables/claims.md``.
        order: configs (the grid's config labels) joined by ``>`` / ``<``, best first for
            ``>``; ``A | B`` is "the better of A and B" per pair; a comma separates
            relations that must all hold (``"x > a, x > b"``: x beats each). Empty with
            ``table`` set: the paper table's own order of ``configs`` for each metric.
        configs: the configs whose order the paper's ``table`` gives (with empty ``order``).
        table: the paper table that prints these configs' numbers (shown beside ours).
        absolute: paper-table filters of an absolute number (e.g. ``{"table": 1, "method":
            "Ours", "category": "mean"}``); ``config`` is then our config to compare, and
            ``dataset`` the data set the paper measured it on.
        metrics: one verdict row per metric (the levels: image, pixel, ...).
        ablation: where to look up config labels first (labels may repeat across ablations).
        sanity: a config the claim's first config must beat (e.g. the untrained model).
        higher_is_better: False for losses.
        label: a short name when a claim has several checks.
        effect: the size of the difference the paper reports (points, better minus worse), one
            per relation or one for all, or a dict of those per metric (``{"image_auroc": 3.0,
            "pixel_auroc": 0.7}``); a ``table`` check reads it from the table.
        margin: True for a non-inferiority check: the order's first config may be worse by less
            than the book's declared smallest effect of the metric
            (:func:`adlib.analysis.stats.smallest_effect`), never a margin chosen for the study.
        wins: the paper's count ``(k, n)``: the first config beats the second on k of n
            categories (cells); ours counts categories by their seed means.
        needs: the data the check needs that the embedded default cannot stand for (e.g.
            "MPDD's tubes category"); on the embedded default the check reads ``not testable
            here`` with this in its note (and everywhere, when it states no order, table or
            absolute number to compute).
    """

    claim: int
    order: str = ""
    configs: tuple[str, ...] = ()
    table: int | str | None = None
    absolute: Mapping[str, Any] | None = None
    config: str | None = None
    dataset: str = "mvtec_ad"
    metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc")
    ablation: str | None = None
    sanity: str | None = None
    higher_is_better: bool = True
    label: str = ""
    note: str = ""
    effect: float | tuple[float, ...] | Mapping[str, float | tuple[float, ...]] | None = None
    margin: bool = False
    wins: tuple[int, int] | None = None
    needs: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.margin, bool):
            msg = (f"claim {self.claim}: margin={self.margin!r}; a non-inferiority margin comes "
                   "from the book's declaration (adlib.analysis.stats.SMALLEST_EFFECT), never from the "
                   "study: write margin=True")
            raise ValueError(msg)
        if self.wins is not None and not 0 <= self.wins[0] <= self.wins[1]:
            msg = f"claim {self.claim}: wins {self.wins} should be (k, n) with 0 <= k <= n"
            raise ValueError(msg)

    def effects(self, paper: str, metric: str, pairs: list[tuple[str, str]]) -> list[float | None]:
        """The paper's size of each relation's difference (None: the paper gives none)."""
        effect = self.effect.get(metric) if isinstance(self.effect, Mapping) else self.effect
        if effect is not None:
            sizes = (effect,) * len(pairs) if isinstance(effect, (int, float)) else effect
            if len(sizes) != len(pairs):
                msg = (f"claim {self.claim}: {len(sizes)} effects for {len(pairs)} relations "
                       f"({self.order}); give one per relation or one for all")
                raise ValueError(msg)
            return [float(s) for s in sizes]
        if self.table is None or self.order:
            return [None] * len(pairs)
        try:
            ref = table_values(paper, self.table, metric)
            return [float(ref[a]) - float(ref[b]) for a, b in pairs]
        except (LookupError, KeyError):
            return [None] * len(pairs)

    def relations(self, paper: str, metric: str) -> list[tuple[str, str]]:
        """``(better, worse)`` term pairs; a term is a config or ``"A | B"``."""
        if self.order:
            return parse_order(self.order)
        ref = table_values(paper, self.table, metric)
        missing = [c for c in self.configs if c not in ref.index]
        if missing:
            msg = f"{paper} table {self.table} has no {metric} for {missing}; it lists {list(ref.index)}"
            raise KeyError(msg)
        # configs the table ties make no claim between them: compare adjacent value groups
        groups = [[c for c in self.configs if float(ref[c]) == v]
                  for v in sorted({float(ref[c]) for c in self.configs}, reverse=True)]
        return [(a, b) for high, low in zip(groups, groups[1:]) for a in high for b in low]


def table_values(paper: str, table: int | str, metric: str) -> pd.Series:
    """A paper table's value per setting; a table printed per category gives its ``mean`` row."""
    rows = paper_numbers(paper, table=table, metric=metric)
    if rows["setting"].duplicated().any() and (rows["category"] == "mean").any():
        rows = rows[rows["category"] == "mean"]
    return rows.set_index("setting")["value"]


_RELATION = re.compile(r"\s*(>|<)\s*")


def _chains(order: str) -> list[str]:
    """The comma-separated chains of ``order``; a piece with no ``>`` / ``<`` is part of a config
    name that holds a comma ("CAAN (4), learned gate"), so it joins its neighbour."""
    chains: list[str] = []
    pending = ""
    for piece in order.split(","):
        if _RELATION.search(piece):
            chains.append(pending + piece)
            pending = ""
        elif chains and not pending:
            chains[-1] += "," + piece
        else:
            pending += piece + ","
    if pending:
        chains.append(pending.rstrip(","))
    return chains


def parse_order(order: str) -> list[tuple[str, str]]:
    """``"A > B > C, A > D"`` -> ``[(A, B), (B, C), (A, D)]`` (better first); ``<`` flips. A
    config name may hold a comma when one side of it states no relation (:func:`_chains`)."""
    pairs = []
    for chain in _chains(order):
        parts = _RELATION.split(chain.strip())
        names, rels = parts[0::2], parts[1::2]
        for left, rel, right in zip(names, rels, names[1:]):
            pairs.append((left.strip(), right.strip()) if rel == ">" else (right.strip(), left.strip()))
    if not pairs:
        msg = f"order {order!r} states no relation; write e.g. 'MLKA+LCA > Cross Att.'"
        raise ValueError(msg)
    return pairs


def term_values(rows: pd.DataFrame, term: str, metric: str, ablation: str | None,
                higher_is_better: bool) -> pd.Series | None:
    """Per (seed, category) values of a config, or of the better of ``A | B``; None if absent."""
    parts = []
    for name in (t.strip() for t in term.split("|")):
        hit = rows[rows["config"] == name]
        if ablation is not None and (hit["ablation"] == ablation).any():
            hit = hit[hit["ablation"] == ablation]
        hit = hit.dropna(subset=[metric])
        if hit.empty:
            return None
        first = hit["ablation"].iloc[0]  # same settings in two tables: one copy of each pair
        hit = hit[hit["ablation"] == first]
        parts.append(hit.groupby(list(PAIR_KEYS), dropna=False)[metric].mean())
    joined = pd.concat(parts, axis=1).dropna()
    return joined.max(axis=1) if higher_is_better else joined.min(axis=1)


def _fmt(x: float) -> str:
    return f"{x:+.2f}" if math.isfinite(x) else "—"


def _interval(est: stats.Estimate) -> str:
    if not math.isfinite(est.mean):
        return "— (no pairs)"
    if not est.finite:
        return f"{_fmt(est.mean)} (one {est.unit}, no interval)"
    return f"{_fmt(est.mean)} [{_fmt(est.low)}, {_fmt(est.high)}]"


def _paper_text(check: ClaimCheck, paper: str, metric: str, pairs: list[tuple[str, str]]) -> str:
    if check.table is None:
        return check.order or ""
    names = list(dict.fromkeys(n.strip() for p in pairs for t in p for n in t.split("|")))
    try:
        ref = table_values(paper, check.table, metric)
        ranked = sorted(names, key=lambda n: -float(ref[n]))
        text = f"{ranked[0]} {float(ref[ranked[0]]):g}"
        for prev, name in zip(ranked, ranked[1:]):
            tie = float(ref[prev]) == float(ref[name])
            text += f" {'=' if tie else '>'} {name} {float(ref[name]):g}"
        return text
    except (LookupError, KeyError):
        return check.order


def _absolute_row(check: ClaimCheck, paper: str, rows: pd.DataFrame, metric: str,
                  context: Mapping[str, Any]) -> dict[str, Any]:
    try:
        number = paper_value(paper, metric=metric, **dict(check.absolute or {}))
    except LookupError:
        number = math.nan
    values = term_values(rows, check.config or "", metric, check.ablation, check.higher_is_better)
    out: dict[str, Any] = {"paper": f"{number:g}" if math.isfinite(number) else "—",
                           "paper_value": number}
    if values is None:
        return {**out, "ours": "—", "verdict": NOT_RUN, "n_pairs": 0,
                "note": f"no rows for {check.config!r}"}
    category = (check.absolute or {}).get("category")
    if category not in (None, "mean"):   # a number of one category: compare that category
        values = values[values.index.get_level_values("category") == category]
        if values.empty:
            return {**out, "ours": "—", "verdict": NOT_RUN, "n_pairs": 0,
                    "note": f"no rows of category {category!r}"}
    est = stats.paired_estimate(values)
    ours = f"{est.mean:.2f}" if not est.finite else f"{est.mean:.2f} [{est.low:.2f}, {est.high:.2f}]"
    out.update(ours=ours, ours_mean=est.mean, ours_low=est.low, ours_high=est.high,
               n_pairs=int(values.size), n_units=est.n, unit=est.unit, method=est.method)
    if context.get("dataset") != check.dataset:
        return {**out, "verdict": NOT_COMPARABLE,
                "note": f"paper: {check.dataset}; ours: {context.get('dataset')}"}
    if not (est.finite and math.isfinite(number)):
        return {**out, "verdict": INCONCLUSIVE, "note": "no interval to hold the paper's number"}
    if est.low <= number <= est.high:
        return {**out, "verdict": REPRODUCED, "note": "the paper's number lies inside our interval"}
    side = "above" if number > est.high else "below"
    return {**out, "verdict": CONTRADICTED, "note": f"the paper's number lies {side} our interval"}


def size_tag(est: stats.Estimate, effect: float | None) -> str:
    """Ours against the paper's effect (both signed so that > 0 favours the claim): the paper's
    inside our interval, our interval wholly above it, or wholly below; "" without a size."""
    if effect is None or not est.finite or effect <= 0:
        return ""
    if est.low > effect:
        ratio = est.mean / effect
        tag = f"{LARGER} ({_fmt(est.mean)} vs {_fmt(effect)}, {ratio:.0f}×)"
        if ratio >= HANDICAP_RATIO:
            tag += ": the baseline may be handicapped"
        return tag
    if est.high < effect:
        return f"{SMALLER} ({_fmt(est.mean)} vs {_fmt(effect)})"
    return f"{SAME_SIZE} ({_fmt(effect)} inside our interval)"


def relation_verdict(est: stats.Estimate, p: float, effect: float | None,
                     margin: float | None) -> str:
    """One relation's verdict from its interval of (better - worse), signed so that > 0 favours
    the claim, and the p-value it is judged at (1.0: only the inconclusive reading, by power);
    ``effect`` the paper's size, ``margin`` a non-inferiority margin (points)."""
    if not est.finite:
        return INCONCLUSIVE
    null = -margin if margin is not None else 0.0
    if math.isfinite(p) and p < ALPHA:
        return REPRODUCED if est.mean > null else CONTRADICTED
    if margin is None and effect is not None and effect > 0:
        return UNDERPOWERED if est.high >= effect else SMALLER_THAN_PAPER
    return INCONCLUSIVE


def _combined(verdicts: list[str]) -> str:
    """An order of several relations: reproduced when all are; contradicted when any is."""
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    open_ = [v for v in verdicts if v != REPRODUCED]
    if UNDERPOWERED in open_:
        return UNDERPOWERED
    return SMALLER_THAN_PAPER if all(v == SMALLER_THAN_PAPER for v in open_) else INCONCLUSIVE


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a share k/n (95 % by default); (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _wins_row(check: ClaimCheck, pairs, values, sign: float, out: dict) -> dict[str, Any]:
    """A count claim ("beats B on 10 of 15 classes"): categories (per relation) where the
    better config's seed mean beats the worse one's."""
    won = total = 0
    for better, worse in pairs:
        both = pd.concat([values[better], values[worse]], axis=1).dropna()
        means = both.groupby(level="category").mean()
        won += int((sign * (means.iloc[:, 0] - means.iloc[:, 1]) > 0).sum())
        total += len(means)
    lo, hi = wilson_interval(won, total)
    k, n = check.wins or (0, 0)
    # the share as a difference from one half, so the verdict reads like a direction's
    est = stats.Estimate(won / total - 0.5 if total else math.nan, lo - 0.5, hi - 0.5,
                         binomtest(won, total).pvalue if total else math.nan, total,
                         "category", "Wilson interval")
    effect = k / n - 0.5 if n and k / n > 0.5 else None
    return {**out, "paper": f"{out['paper']} on {k}/{n}", "n_pairs": total, "n_units": total,
            "unit": "category", "method": "Wilson interval, binomial test",
            "ours": f"{won}/{total} [{lo:.2f}, {hi:.2f}]" if total else "—",
            "_relations": [(est, effect, None)],
            "note": "share of categories won, Wilson 95 % interval; reproduced above 1/2"}


def _difference(values: Mapping[str, pd.Series | None], a: str, b: str, sign: float,
                null: float = 0.0) -> tuple[stats.Estimate, int]:
    both = pd.concat([values[a], values[b]], axis=1).dropna()
    return stats.paired_estimate(sign * (both.iloc[:, 0] - both.iloc[:, 1]), null=null), len(both)


def _order_row(check: ClaimCheck, paper: str, rows: pd.DataFrame, metric: str) -> dict[str, Any]:
    """A direction check's row, not yet judged: its relations' estimates in ``_relations``
    (:func:`_judge` gives its unadjusted verdict, :func:`adjust` the chapter's)."""
    pairs = check.relations(paper, metric)
    effects = check.effects(paper, metric, pairs)
    sign = 1.0 if check.higher_is_better else -1.0
    out: dict[str, Any] = {"paper": _paper_text(check, paper, metric, pairs)}
    if check.order and check.wins is None and any(e is not None for e in effects):
        sizes = ", ".join(f"{e:+.2f}" for e in effects if e is not None)
        out["paper"] += f" (by {sizes})"
    terms = {t for p in pairs for t in p} | ({check.sanity} if check.sanity else set())
    values = {t: term_values(rows, t, metric, check.ablation, check.higher_is_better) for t in terms}
    missing = sorted(t for t, v in values.items() if v is None and t != check.sanity)
    if missing:
        return {**out, "ours": "—", "verdict": NOT_RUN, "n_pairs": 0,
                "note": f"no rows for {', '.join(missing)}"}
    notes: list[str] = []
    if check.sanity and values[check.sanity] is None:
        notes.append(f"sanity reference {check.sanity!r} not run: learning not checked")
    elif check.sanity:
        out.update(_learning(check, pairs, values, sign, metric, rows))
    if check.wins is not None:
        row = _wins_row(check, pairs, values, sign, out)
        row["note"] = "; ".join([*notes, row["note"]])
        return row
    margin = stats.smallest_effect(metric) if check.margin else None
    relations, parts, n_pairs = [], [], []
    for (better, worse), effect in zip(pairs, effects):
        est, n = _difference(values, better, worse, sign, -margin if margin else 0.0)
        relations.append((est, effect, margin))
        n_pairs.append(n)
        shown = f"{better} − {worse}" if sign > 0 else f"{worse} − {better}"
        parts.append(f"{shown}: {_interval(est)}")
    first = relations[0][0]
    if margin is not None:
        notes.append(f"non-inferiority margin {margin:g} points (the book's declared smallest "
                     f"effect): reproduced when the interval lies above −{margin:g}")
    notes.append(f"{first.method} over {first.n} {first.unit} units")
    if sign < 0:
        notes.append("lower is better: the differences are worse − better")
    return {**out, "ours": "; ".join(parts), "n_pairs": min(n_pairs), "n_units": first.n,
            "unit": first.unit, "method": first.method, "margin": margin,
            "_relations": relations, "note": "; ".join(notes)}


def _learning(check: ClaimCheck, pairs, values, sign: float, metric: str,
              rows: pd.DataFrame) -> dict[str, Any]:
    """Every config the check compares that trains (both sides of each relation; each half of
    ``A | B``; not a reference with no training loss, such as the mean training image) against
    the sanity reference: ``did_not_learn`` names those whose interval does not lie above 0,
    ``learning`` gives each difference."""
    names = list(dict.fromkeys(n.strip() for p in pairs for t in p for n in t.split("|")))
    # a config that trains nothing (the mean training image, a threshold, kNN) has nothing to
    # learn: its rows carry no training loss
    if "final_loss" in rows:
        trains = set(rows.loc[rows["final_loss"].notna(), "config"])
        names = [n for n in names if n in trains]
    failed, shown = [], []
    for name in names:
        own = term_values(rows, name, metric, check.ablation, check.higher_is_better)
        if own is None:
            continue
        est, n = _difference({name: own, check.sanity: values[check.sanity]}, name,
                             check.sanity, sign)
        if not (est.finite and est.low > 0):
            failed.append(name)
        shown.append(f"{name} − {check.sanity}: {_interval(est)}")
    return {"did_not_learn": failed, "learning": "; ".join(shown)}


def row_p(relations: list[tuple[stats.Estimate, float | None, float | None]]) -> tuple[float, str]:
    """One check's p-value and the direction it would decide: an order holds only when every
    relation does (an intersection-union test: the largest p, no adjustment within it); it is
    contradicted when any relation is reversed (the smallest reversed p, Bonferroni within)."""
    def favours(est: stats.Estimate, margin: float | None) -> bool:
        return est.mean > (-margin if margin is not None else 0.0)

    ps = [est.p if math.isfinite(est.p) else 1.0 for est, _, _ in relations]
    if all(favours(est, m) for est, _, m in relations):
        return max(ps), REPRODUCED
    reversed_ = [p for p, (est, _, m) in zip(ps, relations) if not favours(est, m)]
    return min(1.0, min(reversed_) * len(relations)), CONTRADICTED


def _judge(row: dict[str, Any]) -> dict[str, Any]:
    """A row's unadjusted verdict from its relations (``raw_verdict``, and ``verdict`` until
    :func:`adjust` adjusts it), its p-value and the paper's size beside ours."""
    relations = row.pop("_relations", None)
    if relations is None:
        return row
    p, direction = row_p(relations)
    decisive = (math.isfinite(p) and p < ALPHA and all(est.finite for est, _, _ in relations))
    # an interval that spans 0 tells power apart (the paper's size inside it or above it)
    open_ = _combined([relation_verdict(est, 1.0, e, m) for est, e, m in relations])
    row["verdict"] = row["raw_verdict"] = direction if decisive else open_
    row["p"] = p
    sizes = [size_tag(est, effect) for est, effect, margin in relations
             if margin is None and est.method != "Wilson interval"]
    row["size"] = "; ".join(s for s in sizes if s)
    if len(relations) > 1:   # each relation on its own, unadjusted: which one holds the order up
        each = [relation_verdict(est, est.p, e, m) for est, e, m in relations]
        row["note"] = "; ".join(n for n in (f"pairs: {', '.join(each)}", row.get("note")) if n)
    row["relations"] = [{"mean": est.mean, "low": est.low, "high": est.high, "p": est.p,
                         "effect": effect} for est, effect, _ in relations]
    return row


def p_text(p: float) -> str:
    """A p-value for readers: three decimals, or "< 0.001"."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def adjust(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The verdicts of one chapter's claim rows, Holm-adjusted together: every row with a
    p-value is one test of the family; a row decisive on its own (``raw_verdict``) stays so only
    when its adjusted p is below 0.05, else it reads ``inconclusive``. ``p_adjusted`` and
    ``adjustment`` (in words) are set; rows are changed in place and returned. Applied once
    per study record (:func:`check_claims`) and again over the rows a chapter shows, which may
    come from several records (:func:`adlib.book.verdicts.chapter_claim_rows`)."""
    tested = [r for r in rows if r.get("raw_verdict") is not None
              and isinstance(r.get("p"), (int, float)) and math.isfinite(r["p"])]
    family = f"{len(tested)} claim check{'s' if len(tested) != 1 else ''}"
    for row, p in zip(tested, stats.holm([r["p"] for r in tested])):
        raw = row["raw_verdict"]
        row["p_adjusted"] = p
        row["verdict"] = INCONCLUSIVE if raw in (REPRODUCED, CONTRADICTED) and not p < ALPHA else raw
        row["adjustment"] = (f"p = {p_text(row['p'])}, Holm-adjusted over the chapter's "
                             f"{family}: {p_text(p)}" + (f"; {raw} before the adjustment"
                                                         if raw != row["verdict"] else ""))
    return rows


def with_pair_columns(rows: pd.DataFrame | Iterable[Mapping]) -> pd.DataFrame:
    """``rows`` as a frame with every column a check pairs on; a missing ablation reads as ""
    (rows are kept by equality with their config's ablation, and NaN equals nothing)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for column in ("ablation", "config", *PAIR_KEYS):
        if column not in frame:
            frame = frame.assign(**{column: pd.Series(dtype=object, index=frame.index)})
    return frame.assign(ablation=frame["ablation"].fillna(""))


def compare(rows: pd.DataFrame | Iterable[Mapping], order: str, metric: str = "image_auroc", *,
            ablation: str | None = None) -> dict[str, Any]:
    """One direction on study rows, judged as a claim's is (paired differences, the book's
    interval) but without adjustment, for a chapter's own findings (exploratory): ``ours``,
    ``verdict`` (``reproduced``, ``contradicted``, ``level`` when every interval lies inside the
    declared equivalence bound, else ``could not tell``), ``n_pairs``, ``note``, ``bound``."""
    frame = with_pair_columns(rows)
    check = ClaimCheck(0, order=order, ablation=ablation, metrics=(metric,))
    if metric not in frame:
        return {"ours": "—", "verdict": NOT_RUN, "n_pairs": 0, "note": f"no {metric} in the rows"}
    row = _order_row(check, "", frame, metric)
    relations = list(row.get("_relations") or [])
    row = _judge(row)
    bound = stats.smallest_effect(metric)
    row["bound"] = bound
    if row["verdict"] in (INCONCLUSIVE, UNDERPOWERED, SMALLER_THAN_PAPER):
        inside = relations and all(stats.within_bound(est.low, est.high, bound)
                                   for est, _, _ in relations)
        row["verdict"] = LEVEL if inside else COULD_NOT_TELL
    return row


def check_claims(paper: str, checks: Iterable[ClaimCheck], rows: pd.DataFrame | Iterable[Mapping],
                 *, dataset: str, profile: str, hardware: Any = None, revision: str = "",
                 ) -> list[dict[str, Any]]:
    """One row per check and metric: the paper's number or direction, ours with its interval,
    the number of (seed, category) pairs and of independent units, data set, profile,
    hardware, revision, verdict, the size of ours against the paper's, and the configs that
    did not beat the sanity reference.

    ``rows`` has columns ablation, config, seed, category and the metrics (the study rows,
    :func:`adlib.study.rows.rows_frame`). The rows are what the notebook or the study ran: a
    check whose configs are not among them says ``not run yet``. Each check with a p-value is
    one test of the chapter's family, Holm-adjusted together (:func:`adjust`).
    """
    frame = with_pair_columns(rows)
    context = {"dataset": dataset, "profile": profile}
    out = []
    for check in checks:
        claim = get_claim(paper, check.claim)
        for metric in check.metrics:
            if check.needs and (dataset == "embedded" or not (check.order or check.table
                                                               or check.absolute)):
                result = {"paper": check.order or "—", "ours": "—", "verdict": NOT_TESTABLE,
                          "n_pairs": 0, "note": f"needs {check.needs}"}
            elif metric not in frame:
                result = {"paper": check.order, "ours": "—", "verdict": NOT_RUN, "n_pairs": 0,
                          "note": f"no {metric} in the rows"}
            elif check.absolute is not None:
                result = _absolute_row(check, paper, frame, metric, context)
            else:
                result = _order_row(check, paper, frame, metric)
            out.append({"claim": claim.label, "claim_text": claim.summary, "check": check.label,
                        "level": LEVELS.get(metric, metric), "metric": metric, **result,
                        "paper_dataset": check.dataset, "dataset": dataset, "profile": profile,
                        "hardware": hardware_label(hardware), "revision": revision,
                        "_check_note": check.note})
    for row in out:
        _judge(row)
    adjust(out)
    for row in out:
        row["note"] = "; ".join(x for x in (row.pop("note", ""), row.pop("_check_note")) if x)
    return out


def best_rows(records: list[dict]) -> list[dict]:
    """Each claim's rows, one per check and level, from the best record that checked it.

    ``records`` are run-record dicts (JSON); a record lists its checked claims under ``"claims"`` (rows of
    :func:`adlib.analysis.claims.check_claims`). For each (claim, check, level) the row kept is the
    one measured on the claim's own data set, then of the best-ranked profile (``study``
    first), then the one with most (seed, category) pairs, then the longest training
    (epochs), then the newest; rows that could not run (``not run yet``, ``not testable
    here``) lose to any measured one.
    """
    rank = {"study": 0, "paper": 1, "cpu": 2, "smoke": 3}
    best: dict[tuple, tuple] = {}
    for rec in records:
        for row in rec.get("claims", []) or []:
            if not row.get("claim"):
                continue
            row = {**row, "profile": row.get("profile") or rec.get("profile"),
                   "dataset": row.get("dataset") or rec.get("dataset"),
                   "hardware": row.get("hardware") or hardware_label(rec.get("hardware")),
                   "revision": row.get("revision") or rec.get("adlib_revision")}
            params = rec.get("params") or {}
            epochs = (params.get("protocol") or {}).get("epochs", params.get("epochs")) or 0
            # a number measured on another data set says less, for every kind of check
            elsewhere = (row.get("verdict") == NOT_COMPARABLE
                         or row.get("dataset") != row.get("paper_dataset", row.get("dataset")))
            score = (row.get("verdict") in (NOT_RUN, NOT_TESTABLE), elsewhere,
                     rank.get(row["profile"], 9),
                     -(row.get("n_pairs") or 0), -epochs, _negated(rec.get("created", "")))
            row["epochs"] = epochs
            key = (row["claim"], row.get("check", ""), row.get("level", ""))
            if key not in best or score < best[key][0]:
                best[key] = (score, row)
    rows = [row for _, row in best.values()]
    return sorted(rows, key=lambda r: int(str(r["claim"]).rsplit("#", 1)[-1] or 0)
                  if str(r["claim"]).rsplit("#", 1)[-1].isdigit() else 0)


def _negated(text: str) -> tuple:
    return tuple(-ord(c) for c in text)  # newest first when sorting ascending


DISPLAY_COLUMNS = ("claim", "check", "level", "paper", "ours", "n_pairs", "verdict", "dataset",
                   "profile", "hardware", "revision", "note", "adjustment")
VERDICT_COLOURS = {REPRODUCED: "#d9f0d3", CONTRADICTED: "#f8d5d0", INCONCLUSIVE: "#fff2cc",
                   UNDERPOWERED: "#fff2cc", SMALLER_THAN_PAPER: "#fbe7c6", DID_NOT_LEARN: "#fde0c5",
                   NOT_COMPARABLE: "#e8e8e8", NOT_TESTABLE: "#e8e8e8", NOT_RUN: "#ffffff"}


COMPACT_COLUMNS = ("claim", "check", "level", "paper", "ours", "n_pairs", "epochs", "verdict", "note")


def claims_table(rows: Iterable[Mapping[str, Any]], *, style: bool = False,
                 compact: bool = False) -> pd.DataFrame | Any:
    """The claims-check rows as a table (``style=True``: verdict cells coloured, for notebooks).

    ``compact=True`` (a notebook's table, whose data set, profile and hardware go in its
    caption) keeps :data:`COMPACT_COLUMNS` and leaves out the checks this run could not make.
    """
    frame = pd.DataFrame(list(rows))
    columns = COMPACT_COLUMNS if compact else DISPLAY_COLUMNS
    for column in DISPLAY_COLUMNS:
        if column not in frame:
            frame[column] = ""
    if compact:
        frame = frame[frame["verdict"] != NOT_RUN]
        if "epochs" not in frame:   # a single run's rows: its epochs are in the caption
            columns = tuple(c for c in columns if c != "epochs")
    frame = frame[list(columns)]
    bad = sorted(set(frame["verdict"]) - set(VERDICTS))
    if bad:
        msg = f"unknown verdicts {bad}; expected {VERDICTS} (build rows with check_claims())."
        raise ValueError(msg)
    if not style:
        return frame
    styler = frame.style.hide(axis="index").set_properties(**{"text-align": "left"})
    cell_map = getattr(styler, "map", None) or styler.applymap  # pandas < 2.1: applymap
    return cell_map(lambda v: f"background-color: {VERDICT_COLOURS.get(v, '')}", subset=["verdict"])
