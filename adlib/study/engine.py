"""The study engine: run (or resume) a declared grid and summarise it: declared grids, one row schema, resumable JSONL rows.

A chapter declares its :class:`Study` once, in its card (``adlib/chapters/<paper>/card.py``):
named grids of :class:`Cell` (ablation, config label, overrides of the chapter's defaults), its
claim checks, a tiny fingerprint run, and the ``run(task)`` of its ``study.py`` that trains and
evaluates one task. The code identity of its rows is computed from that module's imports
(:mod:`adlib.study.provenance`), never listed by hand. The notebook (``cpu`` / ``smoke`` grids) and ``python -m adlib study``
(``study`` grid) both go through :func:`run_study`::

    python -m adlib study rlr --grid study --seeds 0,1,2 --executor local --workers 2 \\
        --out adlib/resources/results/rlr

Rows. Every finished run appends one row per (cell, seed, category[, fold]) to ``rows.jsonl``
in ``out`` (:data:`ROW_FIELDS`): paper, ablation, config, overrides, seed, category, fold,
metrics, training seconds, final loss, protocol, hardware, revision, model hash, key, and
with ``--test-curve`` the test metrics after every epoch and the training losses per epoch
(``test_curve``, ``train_curve``: for reporting what test-set epoch picking would add,
:mod:`adlib.training.curves`). The key hashes the paper, the full settings (protocol + overrides), seed, category and fold, so a
rerun skips rows already present for the same protocol *and* model hash, or a hash linked to
it by a verified equivalence (``equivalences.jsonl``, :mod:`adlib.study.verify`); a study killed at
any point loses at most the runs in flight. Other rows are *stale*: never reused silently,
and listed in the summary. Identical settings reached from two
ablations (the default model sits in every table) run once.

Executors: ``serial`` (in this process), ``local`` (a process pool, each worker pinned to
one torch thread on CPU, or to one GPU through ``CUDA_VISIBLE_DEVICES``), ``slurm``
(submitit: one array job per grid; ``slurm_cluster="local"`` runs the same path on this
machine, as the tests do).
"""


from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from adlib.analysis.claims import check_claims, claims_table, parse_order
from adlib.study.executors import EXECUTORS, run_local, run_serial, run_slurm
from adlib.study.load import load_study
from adlib.study.provenance import (
    dirty_files,
    dirty_message,
    load_equivalences,
    row_status,
)
from adlib.study.report import format_summary, seed_means, summarise
from adlib.study.results import adlib_revision, hardware_info, hardware_label
from adlib.study.rows import COST_FIELDS, RowStore, rows_frame
from adlib.study.spec import (
    Cell,
    Study,
    StudyError,
    Task,
    run_key,
)
from adlib.training.progress import progress


@dataclass
class StudyResult:
    """What :func:`run_study` returns."""

    rows: pd.DataFrame        # one row per cell x seed x category, labelled by the cell
    summary: pd.DataFrame     # mean ± std over seeds of the per-seed category mean
    claims: list[dict]
    stale: list[dict]         # rows of the same settings made by other code (not reused)
    missing: int              # cell x seed x category rows with no result
    ran: int                  # tasks run now
    skipped: int              # tasks whose rows were already there
    revision: str
    hardware: dict | None
    wall_time_s: float
    summary_path: Path | None = None
    record_path: Path | None = None

    def claims_table(self, style: bool = False, compact: bool = False):
        return claims_table(self.claims, style=style, compact=compact)

    def seed_means(self, ablation: str | None = None) -> pd.DataFrame:
        """Flat rows, one per config x seed (category means), e.g. for
        :func:`adlib.book.viz.ablation_bars`, whose error bars run over seeds."""
        if self.rows.empty:
            return pd.DataFrame()
        out = seed_means(self.rows).reset_index()
        return out if ablation is None else out[out["ablation"] == ablation]

    def record_rows(self) -> list[dict]:
        """The rows as a run record keeps them (without keys, hashes and timestamps)."""
        if self.rows.empty:
            return []
        return self.rows.drop(columns=["key", "overrides", "model_hash", "created"],
                              errors="ignore").to_dict("records")

    def ablation_table(self, ablation: str) -> pd.DataFrame:
        """One ablation's configs: each metric's mean ± std over seeds (of category means)."""
        return format_summary(self.summary.loc[ablation]) if not self.summary.empty else pd.DataFrame()


def plan(study: Study, cells: Sequence[Cell], protocol: Mapping[str, Any], seeds: Sequence[int],
         categories: Sequence[str], *, dataset: str, data_root: str, device: str = "auto",
         test_curve: bool = False) -> tuple[list[Task], list[tuple[Cell, int, str, int | None, str]]]:
    """The tasks to run (identical settings once) and every (cell, seed, category, fold, key)."""
    tasks: dict[tuple, Task] = {}
    slots = []
    units = [tuple(categories)] if study.unit == "all" else [(c,) for c in categories]
    for cell in cells:
        settings = study.cell_settings(protocol, cell)
        folds = _folds(study, settings)
        for seed in seeds:
            for unit in units:
                for fold in folds:
                    ident = (json.dumps(settings, sort_keys=True), int(seed), unit, fold)
                    tasks.setdefault(ident, Task(study.module or study.paper, study.paper,
                                                 cell.ablation, cell.config, dict(cell.overrides),
                                                 settings, int(seed), unit, dataset,
                                                 str(data_root), device, fold, test_curve))
                    slots += [(cell, int(seed), c, fold, run_key(study.paper, settings, seed, c, fold))
                              for c in unit]
    return list(tasks.values()), slots


def _folds(study: Study, settings: Mapping[str, Any]) -> list[int | None]:
    """The test folds of a fold study (``settings["folds"]`` of them), else ``[None]``."""
    if study.unit != "fold":
        return [None]
    k = settings.get("folds")
    if not isinstance(k, int) or k < 2:
        msg = f"{study.paper}: a fold study needs an integer protocol setting folds >= 2, got {k!r}"
        raise StudyError(msg)
    return list(range(k))


def with_references(study: Study, cells: Sequence[Cell]) -> list[Cell]:
    """A declared grid's cells and the sanity references that its claim checks name from other
    grids: a check on one of the grid's ablations judges learning against them. Chapter 1's
    ``axes`` grid shares the ``study`` grid's random encoder; without it the axes claims said
    "learning not checked". Such rows are reused where they exist (the same settings give the
    same key), run where they do not."""
    cells = list(cells)
    configs = {c.config for c in cells}
    declared = {c.config: c for grid in study.grids.values() for c in grid}
    for check in study.checks:
        sanity = check.sanity
        if not sanity or sanity in configs or sanity not in declared:
            continue
        # the config judged against the reference: the better side of the check's first relation
        first = parse_order(check.order)[0][0] if check.order else (check.configs or ("",))[0]
        if {name.strip() for name in first.split("|")} <= configs:
            cells.append(declared[sanity])
            configs.add(sanity)
    return cells


def run_study(paper: str, grid: str | Sequence[Cell], *, protocol: Mapping[str, Any],
              seeds: Sequence[int], categories: Sequence[str], dataset: str, data_root: Any,
              out: str | os.PathLike, executor: str = "serial", workers: int = 1,
              device: str = "auto", profile: str = "study", run: bool = True,
              include_stale: bool = False, known: Iterable[Mapping[str, Any]] = (),
              slurm: Mapping[str, Any] | None = None, show_progress: bool = True,
              revision: str | None = None, test_curve: bool = False,
              refuse_dirty: bool = False,
              fingerprint: Callable[[], str] | str | None = None) -> StudyResult:
    """Run (or resume) ``grid`` over ``seeds`` x ``categories`` and summarise it.

    Args:
        grid: a grid name of the paper's study, or a list of cells.
        protocol: the chapter's defaults (``study.protocol(cfg)``, possibly changed).
        out: the study folder (``rows.jsonl`` lives here; the notebook uses a folder under
            its ``output_dir``, the committed studies ``adlib/resources/results/<paper>``).
        run: False only summarises the rows already there (``--summarise``).
        include_stale: summarise rows of other code too (said so in the claims' notes).
        known: finished results to store before running (the notebook's main model), as
            dicts ``{"overrides", "seed", "category", "metrics", "train_seconds",
            "final_loss"}``; their settings are not run again.
        slurm: options of the ``slurm`` executor (cluster, partition, time_min, gpus, cpus).
        test_curve: run the study's ``curve`` (the test split scored after every epoch, for
            reporting only); finished rows without a curve are made again, with one.
        refuse_dirty: refuse to run when a module the study hashes has uncommitted changes
            (``python -m adlib study`` does unless ``--allow-dirty``); rows made from such a
            tree are marked ``dirty`` either way.
        fingerprint: the code's fingerprint digest for the rows (or a function giving it,
            called only when something runs); None in notebooks.

    Rows count when their model hash is the current code's or is linked to it by recorded
    equivalences (``equivalences.jsonl`` in ``out``, written by ``--verify``); others are stale.
    """
    started = time.perf_counter()
    revision = revision or adlib_revision()  # the code that runs, taken when it starts
    if executor not in EXECUTORS:
        msg = f"executor {executor!r}; expected one of {', '.join(EXECUTORS)}"
        raise StudyError(msg)
    study = load_study(paper)
    cells = with_references(study, study.grid(grid)) if isinstance(grid, str) else list(grid)
    model_hash = study.model_hash()
    counts = row_status(model_hash, load_equivalences(out))   # row -> its status, None: stale
    if test_curve and not study.curve:
        msg = (f"{study.paper}'s run cannot score the test split every epoch (its study runs no "
               "DetectorRun); run it without test_curve")
        raise StudyError(msg)
    store = RowStore(out)
    tasks, slots = plan(study, cells, protocol, seeds, categories, dataset=dataset,
                        data_root=str(data_root), device=device, test_curve=test_curve)
    here = hardware_info(device)  # rows from the workers carry their own
    state = _StudyRun(study, protocol, store, counts, revision, model_hash, here,
                      dirty_files(study.code))

    existing = store.load()
    valid = state.store_known(known, existing, test_curve)
    pending = state.pending(tasks, valid)
    skipped = len(tasks) - len(pending)
    if run and pending:
        state.run_pending(pending, existing, len(tasks), skipped, executor=executor,
                          workers=workers, slurm=slurm, out=out, show_progress=show_progress,
                          refuse_dirty=refuse_dirty, fingerprint=fingerprint)
    ran = len(pending) if run else 0
    return state.result(slots, ran, skipped, include_stale=include_stale, dataset=dataset,
                        profile=profile, started=started)


@dataclass
class _StudyRun:
    """One :func:`run_study` call: its study, row store and the provenance its new rows get."""

    study: Study
    protocol: Mapping[str, Any]
    store: RowStore
    counts: Callable[[Mapping[str, Any]], Any]   # row -> its status, None: stale
    revision: str
    model_hash: str
    here: dict
    dirty: list[str]
    printed: str | None = None   # the fingerprint, taken only when something runs

    def provenance(self, task_like: Mapping[str, Any], result: Mapping[str, Any],
                   seed: int) -> dict:
        """The stored row of one result: its labels, metrics and where it comes from."""
        study = self.study
        settings = study.cell_settings(self.protocol, Cell("", "", task_like["overrides"]))
        category, fold = result["category"], result.get("fold")
        return {"paper": study.paper, "ablation": task_like["ablation"],
                "config": task_like["config"], "overrides": dict(task_like["overrides"]),
                "seed": int(seed), "category": category, "fold": fold,
                "metrics": result["metrics"], "train_seconds": result.get("train_seconds"),
                # timings and curves: reported, never compared bit for bit as metrics are
                **{k: result[k] for k in ("test_curve", "train_curve", *COST_FIELDS)
                   if result.get(k)},
                "final_loss": result.get("final_loss"),
                "protocol": {k: v for k, v in settings.items() if k not in task_like["overrides"]},
                "hardware": result.get("hardware") or self.here,
                "revision": self.revision, "model_hash": self.model_hash,
                "fingerprint": self.printed,
                **({"dirty": True} if self.dirty else {}),
                "key": run_key(study.paper, settings, seed, category, fold),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def store_known(self, known: Iterable[Mapping[str, Any]], existing: list[dict],
                    test_curve: bool) -> set[str]:
        """Store the caller's finished results not stored yet; return the keys with a valid row."""
        valid = {r["key"] for r in existing if self.counts(r)
                 and (r.get("test_curve") or not test_curve)}
        new_known = [self.provenance({"ablation": k.get("ablation", ""),
                                      "config": k.get("config", ""),
                                      "overrides": k.get("overrides", {})}, k, k["seed"])
                     for k in known]
        new_known = [r for r in new_known if r["key"] not in valid]
        if new_known:
            self.store.append(new_known)
            valid |= {r["key"] for r in new_known}
        return valid

    def pending(self, tasks: Sequence[Task], valid: set[str]) -> list[Task]:
        """The tasks with a row still missing."""
        paper = self.study.paper
        keys_of = {id(t): [run_key(paper, t.settings, t.seed, c, t.fold) for c in t.categories]
                   for t in tasks}
        return [t for t in tasks if not all(k in valid for k in keys_of[id(t)])]

    def run_pending(self, pending: list[Task], existing: list[dict], total: int, skipped: int,
                    *, executor: str, workers: int, slurm: Mapping[str, Any] | None,
                    out: str | os.PathLike, show_progress: bool, refuse_dirty: bool,
                    fingerprint: Callable[[], str] | str | None) -> None:
        """Run the pending tasks, storing each one's rows as it finishes; raise if any failed."""
        paper = self.study.paper
        if self.dirty and refuse_dirty:
            raise StudyError(dirty_message(paper, self.dirty))
        self.printed = fingerprint() if callable(fingerprint) else fingerprint
        bar = progress(total=total, initial=skipped, desc=f"{paper} runs",
                       disable=not show_progress)
        earlier = {r["key"]: r["metrics"] for r in existing if self.counts(r)}
        recorder = _Recorder(self, earlier, bar)
        try:
            _execute(pending, recorder, executor=executor, workers=workers, slurm=slurm,
                     out=out, paper=paper)
        finally:
            bar.close()
        if recorder.remade:
            print(f"{paper}: {len(recorder.remade)} rows made again with their test curves; "
                  "largest metric change against the rows they replace: "
                  f"{max(recorder.remade):.2g} (points)", flush=True)
        failures = recorder.failures
        if failures:
            msg = (f"{paper}: {len(failures)} of {len(pending)} runs failed, the first: "
                   f"{failures[0]}. The rows of the runs that finished are in {self.store.path}; "
                   "fix the cause and rerun the same command to run only what is missing.")
            raise StudyError(msg)

    def result(self, slots: Sequence[tuple[Cell, int, str, int | None, str]], ran: int,
               skipped: int, *, include_stale: bool, dataset: str, profile: str,
               started: float) -> StudyResult:
        """Label the counted rows of every slot, judge the claims and summarise."""
        study = self.study
        labelled, missing, used, stale = _slot_rows(self.store.load(), slots, self.counts,
                                                    include_stale)
        frame = rows_frame(labelled)
        hardware = _most_common_hardware(used)
        revisions = sorted({r.get("revision", "?") for r in used}) or [self.revision]
        claims = check_claims(study.paper, study.checks, frame, dataset=dataset, profile=profile,
                              hardware=hardware, revision=",".join(revisions)) if not frame.empty else []
        if include_stale and stale:
            for row in claims:
                row["note"] = "; ".join(n for n in (row["note"], "includes rows of older code") if n)
        revision = self.revision
        if not ran and used:  # nothing ran now: the rows' code is the revision to name
            revision = ",".join(revisions)
        return StudyResult(frame, summarise(frame), claims, stale, missing, ran, skipped, revision,
                           hardware, time.perf_counter() - started)


@dataclass
class _Recorder:
    """The executors' callbacks: store a finished task's rows, note a failed one."""

    run: _StudyRun
    earlier: dict[str, dict]   # key -> metrics of the counted rows already stored
    bar: Any
    remade: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def done(self, task: Task, results: list[dict]) -> None:
        """Store the rows of a finished task."""
        meta = {"ablation": task.ablation, "config": task.config, "overrides": task.overrides}
        rows = [self.run.provenance(meta, r, task.seed) for r in results]
        for row in rows:  # a curve run must give the metrics of the row it replaces
            if row["key"] in self.earlier:
                old = self.earlier[row["key"]]
                self.remade.append(max((abs(v - old.get(k, math.nan))
                                        for k, v in row["metrics"].items()), default=0.0))
        self.run.store.append(rows)
        self.bar.update(1)

    def failed(self, task: Task, err: Exception) -> None:
        """Note a failed task (reported after the others have run)."""
        where = "" if task.fold is None else f" fold {task.fold}"
        self.failures.append(f"{task.ablation}/{task.config} seed {task.seed}{where}: "
                             f"{type(err).__name__}: {err}")
        self.bar.update(1)


def _execute(pending: list[Task], recorder: _Recorder, *, executor: str, workers: int,
             slurm: Mapping[str, Any] | None, out: str | os.PathLike, paper: str) -> None:
    """Hand the pending tasks to the chosen executor."""
    done, failed = recorder.done, recorder.failed
    if executor == "serial":
        run_serial(pending, done, failed)
    elif executor == "local":
        run_local(pending, done, failed, max(1, int(workers)))
    else:
        opts = dict(slurm or {})
        run_slurm(pending, done, failed, folder=Path(out) / "slurm",
                  cluster=opts.get("cluster", "slurm"), partition=opts.get("partition"),
                  time_min=int(opts.get("time_min", 120)), gpus=int(opts.get("gpus", 0)),
                  cpus=int(opts.get("cpus", 1)), workers=workers, name=f"adlib-{paper}")


def _slot_rows(all_rows: list[dict], slots: Sequence[tuple[Cell, int, str, int | None, str]],
               counts: Callable[[Mapping[str, Any]], Any], include_stale: bool
               ) -> tuple[list[dict], int, list[dict], list[dict]]:
    """Each slot's row labelled by its cell, the slots without one, the rows used, the stale."""
    by_key = {}
    for row in all_rows:  # the last row of a key wins: a rerun with a curve replaces one without
        if counts(row):
            by_key[row["key"]] = row
    wanted = {key for *_, key in slots}
    # rows of these very settings made by other code: never reused silently, always reported
    stale = [r for r in all_rows if r["key"] in wanted and not counts(r)]
    if include_stale:
        for row in stale:
            by_key.setdefault(row["key"], row)
    labelled, missing, used = [], 0, []
    for cell, seed, category, _fold, key in slots:
        row = by_key.get(key)
        if row is None:
            missing += 1
            continue
        used.append(row)
        labelled.append({**row, "ablation": cell.ablation, "config": cell.config,
                         "overrides": dict(cell.overrides)})
    return labelled, missing, used, stale


def _most_common_hardware(rows: Sequence[Mapping[str, Any]]) -> dict | None:
    if not rows:
        return None
    counts = Counter(hardware_label(r.get("hardware")) for r in rows)
    label = counts.most_common(1)[0][0]
    return next(r.get("hardware") for r in rows if hardware_label(r.get("hardware")) == label)


def parse_value(text: str) -> Any:
    """A ``--set key=value`` value: JSON when it parses (numbers, lists, true), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
