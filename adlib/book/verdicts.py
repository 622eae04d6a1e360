"""What a reader sees first: a chapter's verdict box, claims tables that fit the column, the
verdict counts and the chapter's deviations from its paper (the same card's, for the chapter and
the appendix), as HTML.

Everything here is rendered from claims rows (:func:`adlib.analysis.claims.check_claims`), picked per
check and level by :func:`adlib.analysis.claims.best_rows`, the same choice the scoreboard makes; the
verdict box reads the chapter's committed study records, so it shows what the chapter's
verdicts rest on whatever profile the page was built with.

Tables for people: a handful of columns (claim, level, the paper's number, ours, verdict), the
verdict coloured, and everything else (pairs, data set, profile, hardware, revision, note) in a
``<details>`` element under each table.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from adlib.analysis.claims import (
    CONTRADICTED,
    DID_NOT_LEARN,
    INCONCLUSIVE,
    NOT_COMPARABLE,
    NOT_RUN,
    NOT_TESTABLE,
    REPRODUCED,
    SMALLER_THAN_PAPER,
    UNDERPOWERED,
    VERDICTS,
    adjust,
    best_rows,
    compare,
)
from adlib.analysis.stats import SMALLEST_EFFECT, paired_estimate
from adlib.chapters.registry import get_chapter
from adlib.study.report import METRIC_NAMES, breakable, committed_records
from adlib.study.results import hardware_label, load_claims
from adlib.study.verify import provenance_table

#: Text and background colour of each verdict (colour-blind safe: green / red / amber / grey,
#: and the word is always written out).
VERDICT_COLOURS = {REPRODUCED: ("#0a5c1e", "#d3f0d9"), CONTRADICTED: ("#8a1c12", "#f9d4cf"),
                   INCONCLUSIVE: ("#6b4e00", "#fff0c2"), UNDERPOWERED: ("#6b4e00", "#fff0c2"),
                   SMALLER_THAN_PAPER: ("#6b4e00", "#fde3bf"), DID_NOT_LEARN: ("#7a3b00", "#fcd9b6"),
                   NOT_COMPARABLE: ("#404040", "#e6e6e6"), NOT_TESTABLE: ("#404040", "#e6e6e6"),
                   NOT_RUN: ("#606060", "#ffffff")}

#: The box's short words for the long verdicts (the legend under it spells them out).
SHORT = {UNDERPOWERED: "too small to tell", SMALLER_THAN_PAPER: "smaller than the paper's",
         DID_NOT_LEARN: "did not learn", NOT_COMPARABLE: "not comparable",
         NOT_TESTABLE: "not testable here"}


#: The verdicts in words, the same on the scoreboard, the introduction and the method appendix.
LEGEND = (
    "A direction (A > B) is judged on the paired differences A − B with the category as the "
    "unit (the seeds of a category are repeats on the same images; LEA-Net's folds get the "
    "Nadeau-Bengio correction), and a chapter's claim checks are adjusted together (Holm): "
    "**reproduced** or **contradicted** when the difference lies on one side of 0 after the "
    "adjustment; **inconclusive** otherwise, split where the paper states the size of its "
    "effect into *could not detect the paper's size* (the interval still holds it) and *smaller "
    "than the paper's* (it lies wholly below it). Beside a verdict: the paper's effect against "
    "ours (same size, larger, smaller), the margin of a non-inferiority check (the book's "
    "declared smallest effect, 2 points of AUROC), and *did not learn* for every compared model "
    "that does not beat its untrained self. *Not comparable here*: a number measured on another "
    "data set; *not testable here*: the claim needs data the embedded default cannot stand for; "
    "*not run yet*: the study has not run it. The method appendix says how and why.")


def beside(row: Mapping[str, Any]) -> str:
    """What stands beside a row's verdict: the margin that decided a non-inferiority check, the
    size of ours against the paper's, the verdict before the chapter's Holm adjustment where
    that differs, and the configs that did not beat their untrained selves."""
    bits = []
    if row.get("margin"):
        bits.append(f"margin −{float(row['margin']):g} points (declared)")
    size = str(row.get("size") or "")
    if size and ";" not in size and row.get("verdict") not in (UNDERPOWERED, SMALLER_THAN_PAPER):
        bits.append(size)
    raw = row.get("raw_verdict")
    if raw and raw != row.get("verdict") and raw in (REPRODUCED, CONTRADICTED):
        bits.append(f"{raw} before the chapter's Holm adjustment")
    out = "".join(f'<br><span style="font-size:0.85em;color:#444">{cell_text(b)}</span>'
                  for b in bits)
    failed = row.get("did_not_learn") or []
    if failed:
        names = ", ".join(failed)
        out += (f'<br>{badge(DID_NOT_LEARN, short=True)}'
                f'<span style="font-size:0.85em;color:#7a3b00"> {cell_text(names)}</span>')
    return out

_TABLE = ("width:100%;table-layout:fixed;border-collapse:collapse;font-size:0.82em;"
          "line-height:1.35;margin:0.4em 0")
_CELL = "padding:4px 6px;border-bottom:1px solid #ddd;vertical-align:top;overflow-wrap:break-word;text-align:left"
_HEAD = _CELL + ";border-bottom:2px solid #999;font-weight:600"


class Html:
    """An HTML fragment that Jupyter renders (``_repr_html_``) and a Markdown page can embed
    (``str``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_html_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


def badge(verdict: str, *, short: bool = False) -> str:
    """A verdict as a coloured label; ``short``: the box's word for it (:data:`SHORT`)."""
    fg, bg = VERDICT_COLOURS.get(verdict, ("#000", "#fff"))
    word = SHORT.get(verdict, verdict) if short else verdict
    return (f'<span class="adlib-verdict" title="{html.escape(verdict)}" style="color:{fg};'
            f'background:{bg};border:1px solid {fg}33;border-radius:3px;padding:0 4px;'
            f'display:inline-block;margin:1px 0">{html.escape(word)}</span>')


def cell_text(value: Any) -> str:
    """A table cell's escaped text, which may wrap inside a long name (:func:`breakable`):
    the tables' fixed columns would otherwise split it mid-word."""
    return "" if value is None else breakable(html.escape(str(value)), "<wbr>")


def html_table(header: list[tuple[str, str]], body: list[list[str]]) -> str:
    """An HTML table with fixed column widths (``(title, width)``); body cells are HTML."""
    cols = "".join(f'<col style="width:{w}">' for _, w in header)
    head = "".join(f'<th style="{_HEAD}">{cell_text(t)}</th>' for t, _ in header)
    rows = "".join("<tr>" + "".join(f'<td style="{_CELL}">{c}</td>' for c in row) + "</tr>"
                   for row in body)
    return (f'<table class="adlib-table" style="{_TABLE}"><colgroup>{cols}</colgroup>'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")


def _level(row: Mapping[str, Any]) -> str:
    return " · ".join(cell_text(x) for x in (row.get("check"), row.get("level")) if x)


def _ours(row: Mapping[str, Any]) -> str:
    """Ours, one relation a line (an order of several configs is several differences)."""
    text = str(row.get("ours") or "—")
    return "<br>".join(cell_text(part.strip()) for part in text.split(";"))


def verdict_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows end in each verdict (every verdict of :data:`VERDICTS`, zeros included)."""
    counts = dict.fromkeys(VERDICTS, 0)
    for row in rows:
        counts[row.get("verdict", NOT_RUN)] = counts.get(row.get("verdict", NOT_RUN), 0) + 1
    return counts


def counts_line(counts: Mapping[str, int]) -> str:
    """``3 reproduced · 1 contradicted · ...`` with coloured verdicts, zeros left out."""
    return " ".join(f"{n}&nbsp;{badge(v, short=True)}" for v, n in counts.items() if n)


def claims_html(rows: Iterable[Mapping[str, Any]], *, caption: str = "",
                skip_not_run: bool = False) -> Html:
    """The claims rows as a table for people: claim, level, the paper's number or order, ours
    with its 95 % interval, the coloured verdict; pairs, data set, profile, hardware, revision
    and notes in a collapsible detail below it."""
    rows = [r for r in rows if not (skip_not_run and r.get("verdict") == NOT_RUN)]
    if not rows:
        return Html(f"<p><em>{cell_text(caption)}</em>: no claim could be checked on these rows.</p>"
                    if caption else "<p>No claim could be checked on these rows.</p>")
    body, detail, previous = [], [], None
    for row in rows:
        first = row.get("claim") != previous
        previous = row.get("claim")
        number = str(row.get("claim", "")).rsplit("#", 1)[-1]
        claim = f"<b>{cell_text(number)}</b> {cell_text(row.get('claim_text'))}" if first else ""
        body.append([claim, _level(row), cell_text(row.get("paper") or "—"), _ours(row),
                     badge(row.get("verdict", NOT_RUN)) + beside(row)])
        epochs = row.get("epochs")
        profile = f"{row.get('profile')}, {epochs} epochs" if epochs else row.get("profile")
        detail.append([cell_text(str(row.get("claim", "")).rsplit("#", 1)[-1]), _level(row), cell_text(row.get("n_pairs")),
                       cell_text(row.get("dataset")), cell_text(profile), cell_text(row.get("hardware")),
                       cell_text(row.get("revision")),
                       cell_text("; ".join(x for x in (row.get("note"), row.get("adjustment"),
                                                       row.get("learning")) if x))])
    main = html_table([("claim", "28%"), ("check · level", "14%"), ("paper", "17%"),
                   ("ours (95 % interval)", "24%"), ("verdict", "17%")], body)
    more = html_table([("claim", "9%"), ("check · level", "13%"), ("pairs", "7%"),
                   ("data set", "12%"), ("profile", "11%"), ("hardware", "14%"),
                   ("revision", "10%"), ("note", "24%")], detail)
    cap = f'<p style="margin:0.2em 0;font-size:0.9em"><em>{cell_text(caption)}</em></p>' if caption else ""
    return Html(f'<div class="adlib-claims">{cap}{main}<details style="font-size:0.9em">'
                "<summary>pairs, data set, profile, hardware, revision and notes</summary>"
                f"{more}</details></div>")


def _paper_claims(paper: str) -> list:
    return load_claims(paper=paper)


def chapter_claim_rows(paper: str, records: list[dict] | None = None,
                       claims: list | None = None) -> list[dict]:
    """Every claim of ``paper`` (``claims``, default its claims of ``claims.md``), one row per
    check and level, from the best record that checked it (``records``: run-record dicts;
    default: the chapter's committed study records); a claim nobody checked gets one
    ``not run yet`` row."""
    if records is None:
        records = [r.to_dict() for r in committed_records(paper)]
    measured: dict[str, list[dict]] = {}
    # the rows may come from several records: the chapter's family is adjusted as one
    for row in adjust(best_rows(records)):
        measured.setdefault(row["claim"], []).append(row)
    out = []
    for claim in claims if claims is not None else _paper_claims(paper):
        out += measured.get(claim.label) or [{"claim": claim.label, "claim_text": claim.summary,
                                              "verdict": NOT_RUN, "paper": "—", "ours": "—"}]
    return out


def _cell_values(records: list[dict], cell: str, metric: str):
    """One ``ablation/config`` (or config) cell's values indexed by (seed, category, fold), for
    the book's interval (:func:`adlib.analysis.stats.paired_estimate`: the category as the unit, or the
    fold correction)."""
    ablation, _, config = cell.rpartition("/")
    values: dict[tuple, list[float]] = {}
    for record in records:
        for row in record.get("ablations") or []:
            if row.get("config") != config or (ablation and row.get("ablation") != ablation):
                continue
            value = row.get(metric)
            if value is not None and math.isfinite(float(value)):
                key = (row.get("seed"), row.get("category"), row.get("fold"))
                values.setdefault(key, []).append(float(value))
    index = pd.MultiIndex.from_tuples(list(values), names=["seed", "category", "fold"])
    return pd.Series([sum(v) / len(v) for v in values.values()], index=index, dtype=float)


def references_line(paper: str, records: list[dict]) -> str:
    """The chapter's model beside its references (untrained, kNN, ...) from the committed rows:
    the chapter's ``headline`` cells with the book's interval (the category as the unit; folds
    corrected), in %."""
    chapter = get_chapter(paper)
    records = [_main_record(records)] if records else []   # one protocol: the main study's
    parts = []
    for metric in chapter.headline_metrics:
        shown = []
        for name, cell in chapter.headline.items():
            values = _cell_values(records, cell, metric)
            if values.empty:
                continue
            est = paired_estimate(values)
            # a percentage cannot leave [0, 100]: the interval is cut at the bounds
            mean, lo, hi = est.mean, max(est.low, 0.0), min(est.high, 100.0)
            span = f" [{lo:.1f}, {hi:.1f}]" if math.isfinite(lo) else ""
            shown.append(f"{cell_text(name)} <b>{mean:.1f}</b>{span}")
        if shown:
            parts.append(f"{cell_text(METRIC_NAMES.get(metric, metric))}: " + " · ".join(shown))
    return "; ".join(parts)




def _main_record(records: list[dict]) -> dict:
    """The record a chapter's box describes: its study with the most rows."""
    return max(records, key=lambda r: len(r.get("ablations") or []))


def measured_on(records: list[dict]) -> str:
    """On what the committed records were measured: data set, image size, seeds x categories,
    epochs, hardware, revision (of the record with most rows)."""
    if not records:
        return ""
    main = _main_record(records)
    protocol = (main.get("params") or {}).get("protocol") or {}
    size = protocol.get("image_size")
    cats = main.get("categories") or []
    seeds = main.get("seeds") or []
    data = "the embedded default" if main.get("dataset") == "embedded" else main.get("dataset")
    bits = [f"{data} ({len(cats)} categories{f', {size} px' if size else ''})",
            f"{len(seeds)} seeds", f"{protocol.get('epochs')} epochs" if protocol.get("epochs") else "",
            f"on {hardware_label(main.get('hardware'))}", f"revision {main.get('adlib_revision')}"]
    return ", ".join(cell_text(b) for b in bits if b)


_DIFF = re.compile(r"([+-−]?\d+\.\d+) \[([+-−]?\d+\.\d+), ([+-−]?\d+\.\d+)\]")


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def _short_ours(row: Mapping[str, Any]) -> str:
    """Ours in a few characters: the interval of a single difference or number; for an order of
    several relations, how many of its differences lie above 0, span it, lie below."""
    text = str(row.get("ours") or "—")
    found = _DIFF.findall(text)
    if len(found) <= 1:
        return cell_text(text.split(": ", 1)[-1]) if ";" not in text else cell_text(text)
    intervals = [(_number(lo), _number(hi)) for _, lo, hi in found]
    above = sum(lo > 0 for lo, _ in intervals)
    below = sum(hi < 0 for _, hi in intervals)
    return (f"{len(intervals)} differences: {above} above 0, {len(intervals) - above - below} "
            f"span 0, {below} below")


def _short_paper(row: Mapping[str, Any]) -> str:
    """The paper's number, its difference ("by +3.1") or its order, shortened."""
    text = str(row.get("paper") or "—")
    if " (by " in text:
        return cell_text("by " + text.rsplit(" (by ", 1)[1].rstrip(")"))
    if len(text) <= 40:
        return cell_text(text)
    return f'<span title="{html.escape(text)}">{cell_text(text[:38])}…</span>'   # the whole order on hover


def stale_warning(paper: str, folder=None) -> str:
    """A sentence when some of the chapter's committed rows are stale (made by code that is no
    longer the book's, or from uncommitted code): its verdicts then await a rerun."""
    try:
        table = provenance_table(paper, folder)
    except (FileNotFoundError, KeyError, ValueError):
        return ""
    if table.empty:
        return ""
    stale = int(table.loc[table["status"] == "stale", "rows"].sum())
    if not stale:
        return ""
    return (f"Stale: {stale} of {int(table['rows'].sum())} committed rows were made by code that "
            "is no longer the book's (or from uncommitted code): the verdicts that rest on them "
            "await a rerun.")


def verdict_box(paper: str, records: list[dict] | None = None) -> Html:
    """The top of a chapter: each claim in one line (the paper's number or difference, ours
    with its 95 % interval, the coloured verdict, one per level), the counts, the chapter's
    model beside its untrained and kNN references, and on what data, size and hardware, from the
    committed study (``records``: run-record dicts, default the committed ones)."""
    warning = ""
    if records is None:
        records = [r.to_dict() for r in committed_records(paper)]
        warning = stale_warning(paper)
    rows = chapter_claim_rows(paper, records)
    lines: dict[tuple, list[dict]] = {}
    for row in rows:
        lines.setdefault((row.get("claim"), row.get("check") or ""), []).append(row)
    body, previous = [], None
    for (claim, check), group in lines.items():
        number = str(claim).rsplit("#", 1)[-1]
        text = cell_text(group[0].get("claim_text")) if claim != previous else ""
        previous = claim
        what = f"<b>{cell_text(number)}</b>&nbsp;{text}" + (f" <em>({cell_text(check)})</em>" if check else "")
        levels = [f'<span style="color:#555">{cell_text(r.get("level"))}</span> ' if r.get("level") else ""
                  for r in group]
        body.append([what, _short_paper(group[0]),
                     "<br>".join(lv + _short_ours(r) for lv, r in zip(levels, group)),
                     "<br>".join((f'<span style="color:#555">{cell_text(r.get("level"))}</span> '
                                  if len(group) > 1 and r.get("level") else "")
                                 + badge(r.get("verdict", NOT_RUN), short=True) + beside(r)
                                 for r in group)])
    table = html_table([("claim", "37%"), ("paper", "18%"), ("ours (95 % interval)", "27%"),
                    ("verdict", "18%")], body)
    counts = counts_line(verdict_counts(rows))
    where = measured_on(records)
    refs = references_line(paper, records)
    foot = [f"Ours: the committed <code>study</code> on {where}." if where else
            "No committed study yet: every claim is <em>not run yet</em>."]
    if warning:
        foot.insert(0, f'<b style="color:#8a1c12">{cell_text(warning)}</b>')
    if refs:
        foot.append(f"The model beside its references, mean over categories [95 % interval], in %: {refs}.")
    foot.append("A direction is judged on paired differences with the category as the unit "
                "(seeds are repeats on the same images): <em>reproduced</em> or "
                "<em>contradicted</em> when the difference lies on one side of 0 after the "
                "chapter's claims are adjusted together (Holm); <em>too small to tell</em>: the "
                "interval spans 0 and still holds the paper's effect; <em>smaller than the "
                "paper's</em>: it spans 0 and lies below the paper's effect; the size of ours "
                "against the paper's stands under the verdict; <em>did not learn</em> names the "
                "configs that do not beat their untrained selves; <em>not comparable</em>: the "
                "paper's number is on another data set; <em>not testable here</em>: the claim "
                "needs data the embedded default cannot stand for. The method appendix says "
                "how and why; every check in full: the claims table at the end of the chapter.")
    style = ("border:1px solid #c8c8c8;border-left:5px solid #4a6fa5;border-radius:4px;"
             "padding:8px 12px;margin:0.5em 0 1em 0;background:#fafbfd;max-width:100%;"
             "box-sizing:border-box")
    return Html(f'<div class="adlib-verdict-box" style="{style}">'
                f'<p style="margin:0 0 0.3em 0"><b>Verdicts</b> ({len(rows)} checks): {counts}</p>'
                f"{table}"
                f'<p style="margin:0.4em 0 0 0;font-size:0.8em;color:#444">{" ".join(foot)}</p></div>')


DEVIATION_COLUMNS = {"topic": "what", "paper": "the paper", "ours": "the book", "why": "why",
                     "kind": "kind", "cell": "measured by"}


def deviations_frame(paper: str):
    """A chapter's declared deviations (its card's ``DEVIATIONS``) as a table: what
    the paper says, what the book does, why, whether it is a guess where the paper is silent,
    and the ablation cell that measures it."""
    rows = [{"topic": d.topic, "paper": d.paper + (f" ({d.source})" if d.source else ""),
             "ours": d.ours, "why": d.why, "kind": "guess" if d.guess else "choice",
             "cell": d.cell or "—"} for d in get_chapter(paper).deviations]
    return pd.DataFrame(rows, columns=list(DEVIATION_COLUMNS)).rename(columns=DEVIATION_COLUMNS)


def deviations_table(paper: str):
    """:func:`deviations_frame` as an HTML table that fits the column (fixed widths, wrapping
    text), for a chapter page and the appendix."""
    frame = deviations_frame(paper)
    widths = ("17%", "18%", "18%", "21%", "9%", "17%")   # "standardisation", "choice" fit
    return Html(html_table(list(zip(frame.columns, widths)),
                           [[cell_text(v) for v in row] for row in frame.to_numpy()]))


def findings_html(paper: str, records: list[dict] | None = None) -> Html:
    """The chapter's reading of its committed study (its ``CHAPTER.findings``), one sentence a
    line, each with the paired difference behind it; a sentence the committed rows no longer
    support is marked, and the chapter's tests fail on it."""
    if records is None:
        records = [r.to_dict() for r in committed_records(paper)]
    frame = pd.DataFrame([{**row, "grid": (r.get("params") or {}).get("grid")}
                          for r in records for row in (r.get("ablations") or [])])
    items = []
    for finding in get_chapter(paper).findings:
        rows = frame[frame["grid"] == finding.grid] if "grid" in frame else frame
        result = compare(rows, finding.order, finding.metric, ablation=finding.ablation)
        name = METRIC_NAMES.get(finding.metric, finding.metric)
        units = (f'{result.get("n_units")} {result.get("unit")} units'
                 if result.get("n_units") else f'{result["n_pairs"]} pairs')
        backing = (f'<span style="color:#444;font-size:0.9em">({cell_text(name)}, {cell_text(result["ours"])}, '
                   f'{cell_text(units)})</span>')
        stale = ("" if result["verdict"] == finding.expect else
                 f' <b style="color:#8a1c12">The committed study now says {cell_text(result["verdict"])}: '
                 "this sentence is out of date.</b>")
        items.append(f"<li>{cell_text(finding.text)} {backing}{stale}</li>")
    if not items:
        return Html("")

    lead = ("<p style=\"font-size:0.9em;color:#444\">The chapter's own readings of its study: "
            "exploratory, each interval on its own (not adjusted for the others). "
            f"<em>Level</em> means the 95 % interval lies inside ±{SMALLEST_EFFECT['auroc']:g} "
            f"points of AUROC (±{SMALLEST_EFFECT['f1']:g} of F1), the book's declared smallest "
            "effect of interest; <em>cannot tell</em> means it spans 0 and reaches past that.</p>")
    return Html(f'{lead}<ul class="adlib-findings">{"".join(items)}</ul>')


def stale_findings(paper: str, records: list[dict] | None = None) -> list[str]:
    """The chapter's findings whose committed rows give another verdict than the sentence's."""
    text = str(findings_html(paper, records))
    # one list item at a time: a lazy match from the first <li> would name the wrong sentence
    return re.findall(r"<li>((?:(?!</li>).)*?) <span[^>]*>(?:(?!</li>).)*?</span> <b[^>]*>The committed study",
                      text)
