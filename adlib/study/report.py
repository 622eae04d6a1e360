"""A study's summaries, Markdown tables and run records, and the committed results the book reads."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from adlib.analysis.claims import best_rows, check_claims, claims_table
from adlib.chapters.registry import PAPERS
from adlib.resources import resource_path
from adlib.study.jsonable import jsonable
from adlib.study.load import load_study
from adlib.study.results import RunRecord, load_run_records
from adlib.study.rows import ROWS_FILE
from adlib.training.evaluation import results_frame

if TYPE_CHECKING:
    from adlib.study.engine import StudyResult


SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1", "final_loss")
METRIC_NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO",
                "f1": "F1", "image_f1_max": "image F1-max", "final_loss": "final loss"}


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with metric column labels (any level) named for readers ("image AUROC")."""
    return frame.rename(columns=METRIC_NAMES)


def side_by_side(results: Mapping[str, Sequence], metrics: Sequence[str] = ("image_auroc",
                 "pixel_auroc", "aupro")) -> pd.DataFrame:
    """Several methods' per-category results of one run (``{method: [CategoryResult]}``) in
    one table: a row per (metric, method), a column per category and the mean, in %. Long
    and narrow, so that it fits the page's column whatever the number of methods."""
    frame = pd.concat({m: pd.concat({name: results_frame(res)[m] for name, res in results.items()},
                                    axis=1) for m in metrics}, axis=1)
    return frame.T.rename_axis(["metric", "method"]).rename(index=METRIC_NAMES)


def breakable(label: Any, mark: str = "\u200b") -> str:
    """``label`` with a line-break opportunity (``mark``; ``"<wbr>"`` in HTML) after each
    ``= + , _ /`` inside a long name ("perturbation=jitter", "a9ebf06,c9c5a2f", "map
    smoothing/none"), neither a sign nor a thousands separator, so that a narrow column wraps
    it there, not mid-word (nor inside a fraction such as 1/16)."""
    return re.sub(r"((?<=\w)/(?!\d)|(?<=\w)[=+_]|(?<=\w),(?!\d{3}\b))(?=[^\s<])",
                  lambda m: m.group(1) + mark, str(label))


def has_folds(frame: pd.DataFrame) -> bool:
    return "fold" in frame and frame["fold"].notna().any()


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (ablation, config, seed) -- per (ablation, config, seed, fold) in a fold
    study, as the paper's mean ± std runs over folds: each metric averaged over the
    categories (the unit the summaries' and plots' mean ± std run over)."""
    metrics = [m for m in SUMMARY_METRICS if m in frame and frame[m].notna().any()]
    keys = ["ablation", "config", "seed"] + (["fold"] if has_folds(frame) else [])
    return frame.groupby(keys, sort=False)[metrics].mean()


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds (x folds) of each seed's category mean, per (ablation, config)."""
    if frame.empty:
        return pd.DataFrame()
    per_seed = seed_means(frame)
    grouped = per_seed.groupby(level=["ablation", "config"], sort=False)
    out = grouped.agg(["mean", "std"])
    by_config = frame.groupby(["ablation", "config"], sort=False)
    out[("n", "seeds")] = by_config["seed"].nunique()
    if has_folds(frame):
        out[("n", "folds")] = by_config["fold"].nunique()
    out[("n", "categories")] = by_config["category"].nunique()
    return out


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """A summary's metric columns as ``mean ± std`` strings (one column per metric, named for
    readers: "image AUROC", "final loss")."""
    out = pd.DataFrame(index=summary.index)
    for metric in [m for m in summary.columns.get_level_values(0).unique() if m != "n"]:
        mean, std = summary[(metric, "mean")], summary[(metric, "std")]
        out[METRIC_NAMES.get(metric, metric)] = [("—" if not math.isfinite(m) else f"{m:.2f} ± {s:.2f}" if math.isfinite(s)
                        else f"{m:.2f}") for m, s in zip(mean, std)]
    out["seeds"] = summary[("n", "seeds")].astype(int)
    if ("n", "folds") in summary:
        out["folds"] = summary[("n", "folds")].astype(int)
    out["categories"] = summary[("n", "categories")].astype(int)
    return out


def learning_sentence(frame: pd.DataFrame, config: str, reference: str, metric: str = "image_auroc",
                      *, what: str = "this run") -> str:
    """Did ``config`` learn? Its ``metric`` (mean over the rows' seeds and categories) against
    its untrained ``reference`` cell's, as one plain sentence for the page: a short run that
    did not learn says so, and points at the committed study."""
    means = frame.groupby("config")[metric].mean()
    if config not in means or reference not in means:
        return f"{what}: no {reference!r} rows to compare {config!r} with; learning not checked."
    ours, ref = float(means[config]), float(means[reference])
    name = METRIC_NAMES.get(metric, metric)
    gap = f"{name} {ours:.2f} against {ref:.2f} for the {reference} reference ({ours - ref:+.2f})"
    # one point on a 0-100 metric (0.01 on a 0-1 one): a smaller gap is one seed's noise
    if ours - ref > (1.0 if max(abs(ours), abs(ref)) > 1.5 else 0.01):
        return f"{what.capitalize()} learned: {gap}."
    return (f"{what.capitalize()} did not learn: {gap}. This short run shows the pipeline, not the "
            "method: the committed study (below) is what the verdicts rest on.")


def results_dir(paper: str) -> Path:
    return resource_path("results", paper)


def committed_records(paper: str, folder: str | os.PathLike | None = None) -> list:
    """The committed study records of ``paper`` (``adlib/resources/results/<paper>/*.json``,
    shipped inside the package)."""
    folder = Path(folder) if folder is not None else results_dir(paper)
    return load_run_records(folder / "*.json", strict=False) if folder.exists() else []


def committed_summary(paper: str, folder: str | os.PathLike | None = None) -> pd.DataFrame | str:
    """The committed studies' summary tables, one block per study run (grid, epochs, time)."""
    tables = {}
    for record in committed_records(paper, folder):
        protocol = record.params.get("protocol", {})
        train = record.params.get("train_seconds") or 0
        name = (f"{record.params.get('grid')} ({protocol.get('epochs')} epochs, "
                f"{train / 60:.0f} min of training)")
        tables[name] = format_summary(summarise(pd.DataFrame(record.ablations)))
    if not tables:
        return f"no committed study records for {paper} (run python -m adlib study {paper})"
    return pd.concat(tables, names=["study run"]).rename(index=breakable)


def committed_rows(paper: str, folder: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every row of the committed study records of ``paper`` (one frame, a ``grid`` column
    naming the record's grid), e.g. for :func:`adlib.training.curves.best_minus_last`."""
    frames = [pd.DataFrame(record.ablations).assign(grid=record.params.get("grid"))
              for record in committed_records(paper, folder) if record.ablations]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def committed_claims(paper: str, folder: str | os.PathLike | None = None) -> list[dict]:
    """The claims rows of the committed study records, the best record's row per check and
    level (the same choice as the scoreboard's: most pairs, then longest training)."""
    return best_rows([record.to_dict() for record in committed_records(paper, folder)])


def judge_record(record: Mapping[str, Any]) -> list[dict]:
    """The claims rows of one committed run record, judged now by :func:`adlib.analysis.claims.check_claims`
    on the record's own rows (nothing is trained): what its ``claims`` should hold."""
    study = load_study(record["paper"])
    frame = pd.DataFrame(record.get("ablations") or [])
    if frame.empty:
        return []
    old = record.get("claims") or []
    revision = (old[0].get("revision") if old else "") or ",".join(
        sorted({str(r) for r in frame.get("revision", pd.Series(dtype=str)).dropna()}))
    return check_claims(record["paper"], study.checks, frame, dataset=record.get("dataset"),
                        profile=record.get("profile"), hardware=record.get("hardware"),
                        revision=revision)


def claims_markdown(claims: list[dict]) -> str:
    """A summary's claims section: the rows as a Markdown table."""
    table = claims_table(claims)[["claim", "check", "level", "paper", "ours", "n_pairs",
                                  "verdict", "note", "adjustment"]]
    return "\n".join(["## Claims", "", table.to_markdown(index=False) if _has_tabulate()
                      else table.to_string(index=False), ""])


def rejudge(paper: str, folder: str | os.PathLike | None = None) -> list[Path]:
    """Judge the claims of every committed record of ``paper`` again from its rows (after a
    change to how claims are judged, which stales no row) and rewrite the records' ``claims``
    and the summaries' claims sections; the rows, times and provenance stay as they were.
    Returns the records rewritten."""
    folder = Path(folder) if folder is not None else results_dir(paper)
    written = []
    for path in sorted(folder.glob("*.json")):
        record = RunRecord.load(path)
        if record.paper != paper or not record.ablations:
            continue
        claims = judge_record(record.to_dict())
        record.claims = claims
        written.append(record.save(folder, name=path.stem))
        summary = path.with_name("summary__" + path.stem.split("__", 2)[-1] + ".md")
        if summary.exists() and claims:
            text = summary.read_text(encoding="utf-8")
            head = text.split("## Claims", 1)[0].rstrip("\n") + "\n\n"
            summary.write_text(head + claims_markdown(claims), encoding="utf-8")
    return written


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (:func:`format_summary`'s mean ± std strings)."""
    if summary.empty:
        return "(no rows)"
    table = format_summary(summary)
    lines = ["| ablation | config | " + " | ".join(table.columns) + " |",
             "|---|---|" + "---|" * len(table.columns)]
    lines += [f"| {ablation} | {config} | " + " | ".join(str(v) for v in row) + " |"
              for (ablation, config), row in zip(table.index, table.itertuples(index=False))]
    return "\n".join(lines)


def write_outputs(result: StudyResult, *, paper: str, grid: str, out: str | os.PathLike,
                  protocol: Mapping[str, Any], seeds: Sequence[int], categories: Sequence[str],
                  dataset: str, command: str, profile: str = "study") -> StudyResult:
    """The summary (Markdown) and the run record (JSON, for the scoreboard) of one grid.

    Both are named by grid and protocol, so rerunning the same command replaces them.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    protocol_text = json.dumps(jsonable(protocol), sort_keys=True)
    tag = f"{grid}__{hashlib.sha256(protocol_text.encode()).hexdigest()[:8]}"
    lines = [f"# {paper}: grid {grid}", "", f"Command: `{command}`", "",
             f"Protocol: `{protocol_text}`", "",
             f"Seeds {', '.join(map(str, seeds))}; categories {', '.join(categories)}; "
             f"revision {result.revision}; {result.ran} tasks run now, {result.skipped} reused; "
             f"{result.missing} rows missing; {len(result.stale)} stale rows (other code) "
             "not reused.", "", ("Mean ± std over (seed, fold) of the category mean:"
                                  if has_folds(result.rows) else
                                  "Mean ± std over seeds of the per-seed category mean:"), "",
             summary_markdown(result.summary), ""]
    if result.claims:
        lines += [claims_markdown(result.claims)]
    summary_path = out / f"summary__{tag}.md"
    summary_path.write_text("\n".join(lines), encoding="utf-8")

    paper_entry = PAPERS.get(paper)
    study = load_study(paper)
    default = study.default
    metrics: dict[str, dict[str, list[float]]] = {}
    frame = result.rows
    if default and not frame.empty and (frame["config"] == default).any():
        part = frame[frame["config"] == default]
        part = part[part["ablation"] == part["ablation"].iloc[0]]
        names = [m for m in ("image_auroc", "pixel_auroc", "aupro", "f1") if m in part]
        for category, sub in part.groupby("category"):
            metrics[str(category)] = {m: sub.sort_values("seed")[m].tolist() for m in names}
        means = part.groupby("seed")[names].mean()
        metrics["mean"] = {m: means[m].tolist() for m in names}
    record = RunRecord(paper=study.paper, notebook=(paper_entry and paper_entry.notebook) or paper,
                       profile=profile,
                       dataset=dataset, data_root=None, categories=list(categories),
                       params={"grid": grid, "protocol": jsonable(protocol), "command": command,
                               "train_seconds": float(frame["train_seconds"].fillna(0).sum())
                               if "train_seconds" in frame else None},
                       seeds=list(seeds), metrics=metrics, ablations=result.record_rows(),
                       claims=result.claims, hardware=result.hardware or {},
                       wall_time_s=result.wall_time_s,
                       adlib_revision=result.revision,
                       notes=f"python -m adlib study; grid {grid}; rows in {ROWS_FILE}")
    name = f"{study.paper}__{profile}__{tag}"
    previous = out / f"{name}.json"
    if not result.ran:  # only summarised: the time the runs took (unknown without a record)
        record.wall_time_s = (json.loads(previous.read_text()).get("wall_time_s")
                              if previous.exists() else None)
    result.record_path = record.save(out, name=name)
    result.summary_path = summary_path
    return result


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401 -- optional: pandas' markdown tables need it
    except ImportError:
        return False
    return True
