"""Claims, declared once per paper and checked on study rows with paired confidence intervals.

A paper declares its checks as data (:class:`ClaimCheck`) next to its grid; the notebook and
``python -m adlib study <paper> --summarise`` both call :func:`check_claims` on the same rows
(one row per ablation cell x seed x category, see :mod:`adlib.study`).

How a direction is judged. For ``A > B`` on a metric, take the difference ``A - B`` for every
(seed, category) pair that both configs ran -- (seed, category, fold) in a cross-validated
study, whose folds share seed and data -- its mean, and a seeded 95 % bootstrap interval of
that mean:

* ``reproduced``    the interval lies above 0;
* ``contradicted``  the interval lies below 0;
* ``inconclusive``  the interval spans 0, or there are fewer than :data:`MIN_PAIRS` pairs (a
  bootstrap of two or three differences only spans the values themselves). Where the paper
  states the size of the effect (``effect``, or the gap in the paper's ``table``), an interval
  that spans 0 is told apart by power: it still holds the paper's size (``inconclusive: could
  not detect the paper's size``: this study was too small to see it) or lies wholly below it
  (``inconclusive: smaller than the paper's``: the study rules the paper's size out);
* ``margin`` (non-inferiority, "A loses nothing against B"): reproduced when the interval of
  A - B lies above -margin, contradicted when it lies below;
* ``wins`` (the paper's count, "A beats B on 10 of 15 classes"): the categories where A's
  seed mean beats B's, with a Wilson 95 % interval of that share; reproduced when the interval
  lies above one half, contradicted when below;
* an order of three or more configs is reproduced only when every adjacent pair is, and
  contradicted when any pair is;
* ``inconclusive: the model did not learn`` when the check names a sanity reference (e.g. the
  same model untrained) and the claim's first config does not beat it, whatever the order;
* ``not comparable here`` for an absolute number measured on another data set;
* ``not run yet`` when a config the check needs has no rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from adlib.metrics import bootstrap_interval

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
DID_NOT_LEARN = "inconclusive: the model did not learn"
NOT_COMPARABLE = "not comparable here"
UNDERPOWERED = "inconclusive: could not detect the paper's size"
SMALLER_THAN_PAPER = "inconclusive: smaller than the paper's"
NOT_RUN = "not run yet"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, UNDERPOWERED, SMALLER_THAN_PAPER,
            DID_NOT_LEARN, NOT_COMPARABLE, NOT_RUN)

LEVELS = {"image_auroc": "image", "pixel_auroc": "pixel", "aupro": "pixel (AUPRO)",
          "image_f1_max": "image (F1-max)", "f1": "image (F1)", "final_loss": "training loss"}
MIN_PAIRS = 6
"""Fewer (seed, category[, fold]) pairs than this give no direction verdict: inconclusive."""
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
        margin: a non-inferiority check: the order's first config may be worse by less than
            this (points); say why this margin in ``note``.
        wins: the paper's count ``(k, n)``: the first config beats the second on k of n
            categories (cells); ours counts categories by their seed means.
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
    margin: float | None = None
    wins: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.margin is not None and self.margin < 0:
            msg = f"claim {self.claim}: margin {self.margin} must be >= 0 (points A may lose)"
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
    from adlib.results import paper_numbers

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


def _direction(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if lo > 0:
        return REPRODUCED
    if hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE


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


def _interval(mean: float, lo: float, hi: float) -> str:
    if not math.isfinite(mean):
        return "— (no pairs)"
    if not math.isfinite(lo):
        return f"{_fmt(mean)} (one pair, no interval)"
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


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
    from adlib.results import paper_value

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
    # one number per seed (the category mean), as the paper reports a category mean
    per_seed = values.groupby(level="seed").mean()
    mean, lo, hi = bootstrap_interval(per_seed.to_numpy())
    out.update(ours=(f"{mean:.2f}" if not math.isfinite(lo) else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"),
               ours_mean=mean, ours_low=lo, ours_high=hi, n_pairs=int(values.size))
    if context.get("dataset") != check.dataset:
        return {**out, "verdict": NOT_COMPARABLE,
                "note": f"paper: {check.dataset}; ours: {context.get('dataset')}"}
    top = hi if math.isfinite(hi) else mean
    ok = top >= number if check.higher_is_better else (lo if math.isfinite(lo) else mean) <= number
    return {**out, "verdict": REPRODUCED if ok else CONTRADICTED,
            "note": "paper number inside or below our interval" if ok else "paper number outside our interval"}


def pair_verdict(lo: float, hi: float, n: int, effect: float | None,
                 margin: float | None) -> str:
    """One relation's verdict from the interval of (better - worse), signed so that > 0 favours
    the claim; ``effect`` the paper's size, ``margin`` a non-inferiority margin."""
    if n < MIN_PAIRS:
        return INCONCLUSIVE
    if margin is not None:
        return _direction(lo + margin, hi + margin)
    verdict = _direction(lo, hi)
    if verdict == INCONCLUSIVE and effect is not None and effect > 0 and math.isfinite(hi):
        return UNDERPOWERED if hi >= effect else SMALLER_THAN_PAPER
    return verdict


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
    verdict = _direction(lo - 0.5, hi - 0.5) if total else INCONCLUSIVE
    if verdict == INCONCLUSIVE and n and k / n > 0.5 and math.isfinite(hi):
        verdict = UNDERPOWERED if hi >= k / n else SMALLER_THAN_PAPER
    return {**out, "paper": f"{out['paper']} on {k}/{n}", "n_pairs": total,
            "ours": f"{won}/{total} [{lo:.2f}, {hi:.2f}]" if total else "—", "verdict": verdict,
            "note": "share of categories won, Wilson 95 % interval; reproduced above 1/2"}


def _order_row(check: ClaimCheck, paper: str, rows: pd.DataFrame, metric: str) -> dict[str, Any]:
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
    if check.wins is not None:
        return _wins_row(check, pairs, values, sign, out)
    verdicts, parts, n_pairs = [], [], []
    for (better, worse), effect in zip(pairs, effects):
        both = pd.concat([values[better], values[worse]], axis=1).dropna()
        mean, lo, hi = bootstrap_interval(sign * (both.iloc[:, 0] - both.iloc[:, 1]).to_numpy())
        verdicts.append(pair_verdict(lo, hi, len(both), effect, check.margin))
        n_pairs.append(len(both))
        shown = f"{better} − {worse}" if sign > 0 else f"{worse} − {better}"
        parts.append(f"{shown}: {_interval(mean, lo, hi)}")
    verdict = _combined(verdicts)
    notes = [] if len(pairs) == 1 else [f"pairs: {', '.join(verdicts)}"]
    if check.margin is not None:
        notes.append(f"non-inferiority: reproduced when the interval lies above −{check.margin:g} "
                     "(the margin)")
    if check.sanity and values[check.sanity] is None:
        notes.insert(0, f"sanity reference {check.sanity!r} not run: learning not checked")
    elif check.sanity:
        first = pairs[0][0]
        both = pd.concat([values[first], values[check.sanity]], axis=1).dropna()
        mean, lo, hi = bootstrap_interval(sign * (both.iloc[:, 0] - both.iloc[:, 1]).to_numpy())
        if _direction(lo, hi) != REPRODUCED and len(both) >= MIN_PAIRS:
            verdict = DID_NOT_LEARN
            notes.insert(0, f"{first} − {check.sanity} (the sanity reference): {_interval(mean, lo, hi)}")
    if min(n_pairs) < MIN_PAIRS:
        unit = "(seed, category, fold)" if rows["fold"].notna().any() else "(seed, category)"
        notes.append(f"{min(n_pairs)} {unit} pairs, fewer than {MIN_PAIRS}: no verdict")
    if sign < 0:
        notes.append("lower is better: the differences are worse − better")
    return {**out, "ours": "; ".join(parts), "verdict": verdict, "n_pairs": min(n_pairs),
            "note": "; ".join(notes)}


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
    """One direction on study rows, judged as a claim's is (paired differences, 95 % bootstrap
    interval): ``ours``, ``verdict``, ``n_pairs``, ``note``. For a chapter's own findings, which
    are no paper's claim."""
    frame = with_pair_columns(rows)
    check = ClaimCheck(0, order=order, ablation=ablation, metrics=(metric,))
    if metric not in frame:
        return {"ours": "—", "verdict": NOT_RUN, "n_pairs": 0, "note": f"no {metric} in the rows"}
    return _order_row(check, "", frame, metric)


def check_claims(paper: str, checks: Iterable[ClaimCheck], rows: pd.DataFrame | Iterable[Mapping],
                 *, dataset: str, profile: str, hardware: Any = None, revision: str = "",
                 ) -> list[dict[str, Any]]:
    """One row per check and metric: the paper's number or direction, ours with its interval,
    the number of (seed, category) pairs, data set, profile, hardware, revision, verdict.

    ``rows`` has columns ablation, config, seed, category and the metrics (the study rows,
    :func:`adlib.study.rows.rows_frame`). The rows are what the notebook or the study ran: a
    check whose configs are not among them says ``not run yet``.
    """
    from adlib.results import get_claim, hardware_label

    frame = with_pair_columns(rows)
    context = {"dataset": dataset, "profile": profile}
    out = []
    for check in checks:
        claim = get_claim(paper, check.claim)
        for metric in check.metrics:
            if metric not in frame:
                result = {"paper": check.order, "ours": "—", "verdict": NOT_RUN, "n_pairs": 0,
                          "note": f"no {metric} in the rows"}
            elif check.absolute is not None:
                result = _absolute_row(check, paper, frame, metric, context)
            else:
                result = _order_row(check, paper, frame, metric)
            note = "; ".join(n for n in (result.pop("note", ""), check.note) if n)
            out.append({"claim": claim.label, "claim_text": claim.summary, "check": check.label,
                        "level": LEVELS.get(metric, metric), "metric": metric, **result,
                        "dataset": dataset, "profile": profile,
                        "hardware": hardware_label(hardware), "revision": revision, "note": note})
    return out


def best_rows(records: list[dict]) -> list[dict]:
    """Each claim's rows, one per check and level, from the best record that checked it.

    ``records`` are run-record dicts (JSON); a record lists its checked claims under ``"claims"`` (rows of
    :func:`adlib.claims.check_claims`). For each (claim, check, level) the row kept is the
    one of the best-ranked profile (``study`` first), then the one with most (seed,
    category) pairs, then the longest training (epochs), then the newest; rows that could not
    run (``not run yet``) lose to any measured one.
    """
    from adlib.results import hardware_label

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
            # a number measured on another data set says nothing: any comparable row wins
            score = (row.get("verdict") == NOT_RUN, row.get("verdict") == NOT_COMPARABLE,
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
                   "profile", "hardware", "revision", "note")
VERDICT_COLOURS = {REPRODUCED: "#d9f0d3", CONTRADICTED: "#f8d5d0", INCONCLUSIVE: "#fff2cc",
                   UNDERPOWERED: "#fff2cc", SMALLER_THAN_PAPER: "#fbe7c6", DID_NOT_LEARN: "#fde0c5", NOT_COMPARABLE: "#e8e8e8", NOT_RUN: "#ffffff"}


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
