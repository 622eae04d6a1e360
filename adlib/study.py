"""One study engine for every chapter: declared grids, one row schema, resumable JSONL rows.

A chapter declares its :class:`Study` once (``adlib/studies/<paper>.py``): named grids of
:class:`Cell` (ablation, config label, overrides of the chapter's defaults), its claim
checks, a tiny fingerprint run, and a ``run(task)`` that trains and evaluates one task. The
code identity of its rows is computed from the study module's imports
(:mod:`adlib.provenance`), never listed by hand. The notebook (``cpu`` / ``smoke`` grids) and ``python -m adlib study``
(``study`` grid) both go through :func:`run_study`::

    python -m adlib study rlr --grid study --seeds 0,1,2 --executor local --workers 2 \\
        --out adlib/resources/results/rlr

Rows. Every finished run appends one row per (cell, seed, category[, fold]) to ``rows.jsonl``
in ``out`` (:data:`ROW_FIELDS`): paper, ablation, config, overrides, seed, category, fold,
metrics, training seconds, final loss, protocol, hardware, revision, model hash, key, and
with ``--test-curve`` the test metrics after every epoch and the training losses per epoch
(``test_curve``, ``train_curve``: for reporting what test-set epoch picking would add,
:mod:`adlib.curves`). The key hashes the paper, the full settings (protocol + overrides), seed, category and fold, so a
rerun skips rows already present for the same protocol *and* model hash, or a hash linked to
it by a verified equivalence (``equivalences.jsonl``, :mod:`adlib.verify`); a study killed at
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
import hashlib
import importlib
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

from adlib.claims import ClaimCheck, check_claims, claims_table
from adlib.provenance import Fingerprint, code_hash, linked_hashes, load_equivalences

EXECUTORS = ("serial", "local", "slurm")
ROWS_FILE = "rows.jsonl"
ROW_FIELDS = ("paper", "ablation", "config", "overrides", "seed", "category", "fold", "metrics",
              "train_seconds", "final_loss", "protocol", "hardware", "revision", "model_hash",
              "fingerprint", "dirty", "key", "created", "test_curve", "train_curve")
#: What a worker hands back of ``run``'s results (the fitted model stays in the worker).
RESULT_FIELDS = ("category", "fold", "metrics", "train_seconds", "final_loss", "test_curve",
                 "train_curve")
SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1", "final_loss")


class StudyError(RuntimeError):
    """A study could not run as asked (unknown grid, failed tasks, bad options)."""


@dataclass(frozen=True)
class Cell:
    """One cell of a grid: the chapter's defaults with ``overrides`` applied."""

    ablation: str
    config: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """What one worker trains and evaluates: one settings x seed x (category or all)."""

    study: str                     # module declaring STUDY, importable in the worker
    paper: str
    ablation: str
    config: str
    overrides: Mapping[str, Any]
    settings: Mapping[str, Any]    # protocol + overrides: everything the run depends on
    seed: int
    categories: tuple[str, ...]
    dataset: str
    data_root: str
    device: str = "auto"
    fold: int | None = None        # unit "fold": the test fold of k-fold cross-validation
    test_curve: bool = False       # run ``study.curve``: the test split scored every epoch too


@dataclass
class Study:
    """A chapter's declared study.

    Args:
        paper: the paper key (:mod:`adlib.papers`).
        grids: grid name -> cells; ``smoke`` / ``cpu`` / ``study`` are the profiles' grids.
        checks: the claim checks (:class:`adlib.claims.ClaimCheck`).
        protocol: ``RunConfig -> dict`` of the chapter's defaults under a profile (image size,
            epochs, backbone, model settings, ...); a cell's overrides change some of them.
        run: ``Task -> [{"category", "metrics", "train_seconds", "final_loss"}, ...]``, each
            optionally with the fitted ``model`` and its loss ``history`` (a fingerprint hashes
            them; rows keep :data:`RESULT_FIELDS` only).
        unit: ``"category"`` (one task per category: separate models), ``"all"`` (one
            task trains on every category: unified models; it returns one row per category),
            or ``"fold"`` (supervised k-fold cross-validation: one task per category and test
            fold, k = the protocol's ``folds``; rows carry the fold, claims pair on it).
        default: the config label of the chapter's main model (the record's metrics).
        titles: a title per ablation, for the notebook's tables and plots.
        curve: optional, ``run`` with the test split also scored after every epoch, for
            reporting what picking the epoch on the test set would add (never for choosing):
            the same rows plus ``test_curve`` = ``{"epoch": [...], <metric>: [...]}``. Its last
            epoch is ``run``'s model (tested per study), so its rows count under ``run``'s
            model hash and replace ``run``'s rows of the same settings.
        fingerprint: the tiny deterministic run whose digest identifies the code's behaviour
            (:class:`adlib.provenance.Fingerprint`); ``--verify`` compares it.
        tolerance: the largest metric change (points) ``--verify`` accepts as equal; 0 unless
            the study says why (``tolerance_why``), e.g. a reduction-order change.
    """

    paper: str
    grids: Mapping[str, Sequence[Cell]]
    checks: Sequence[ClaimCheck]
    protocol: Callable[[Any], dict]
    run: Callable[[Task], list[dict]]
    unit: str = "category"
    default: str | None = None
    titles: Mapping[str, str] = field(default_factory=dict)   # ablation -> table title
    module: str = ""
    curve: Callable[[Task], list[dict]] | None = None
    fingerprint: Fingerprint | None = None
    tolerance: float = 0.0
    tolerance_why: str = ""

    def __post_init__(self) -> None:
        self.module = self.module or self.run.__module__
        if self.tolerance and not self.tolerance_why:
            msg = f"{self.paper}: a verification tolerance needs its reason (tolerance_why)"
            raise StudyError(msg)

    def grid(self, name: str) -> list[Cell]:
        if name not in self.grids:
            msg = f"{self.paper} has no grid {name!r}; its grids are {', '.join(self.grids)}"
            raise StudyError(msg)
        return list(self.grids[name])

    def model_hash(self) -> str:
        """The code identity of the study's rows: :func:`adlib.provenance.code_hash` of its
        module (the normalised import closure; grids and claim checks left out)."""
        return code_hash(self.module)

    def check(self, rows: pd.DataFrame, **context: Any) -> list[dict]:
        """The declared claim checks on ``rows`` (see :func:`adlib.claims.check_claims`)."""
        return check_claims(self.paper, self.checks, rows, **context)


def load_study(paper_or_module: str) -> Study:
    """The :class:`Study` of a paper key (registry) or of a module path declaring ``STUDY``."""
    from adlib.papers import PAPERS

    module_name = paper_or_module
    if paper_or_module in PAPERS:
        module_name = PAPERS[paper_or_module].study
        if module_name is None:
            msg = f"{paper_or_module} has no study yet (its chapter is not written)"
            raise StudyError(msg)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        msg = (f"no study {paper_or_module!r}: not a paper key ({', '.join(PAPERS)}) nor an "
               f"importable module ({err})")
        raise StudyError(msg) from err
    study = module.STUDY
    study.module = module_name
    return study


# ------------------------------------------------------------------------------- rows

def run_key(paper: str, settings: Mapping[str, Any], seed: int, category: str,
            fold: int | None = None) -> str:
    """The identity of one row: paper, full settings, seed, category, fold (16 hex digits)."""
    ident = [paper, dict(settings), int(seed), category] + ([] if fold is None else [int(fold)])
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    from adlib.results import _jsonable as plain

    return plain(value)


class RowStore:
    """The append-only ``rows.jsonl`` of a study folder.

    Each line is written and flushed to disk as its run finishes; a line cut short by a kill
    is skipped on reading (and the next append starts on a fresh line).
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / ROWS_FILE

    def load(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn last line of a killed study
            if isinstance(row, dict) and "key" in row:
                rows.append(row)
        return rows

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(_jsonable(r), allow_nan=False) + "\n" for r in rows)
        with self.path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    text = "\n" + text
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


def rows_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows as a flat table: the metrics become columns (image_auroc, pixel_auroc, ...)."""
    flat = []
    for row in rows:
        item = {k: v for k, v in row.items() if k not in ("metrics", "hardware", "protocol")}
        item.update(row.get("metrics") or {})
        item["final_loss"] = row.get("final_loss")
        flat.append(item)
    frame = pd.DataFrame(flat)
    if "final_loss" in frame:
        frame["final_loss"] = pd.to_numeric(frame["final_loss"], errors="coerce")
    return frame


# --------------------------------------------------------------------------- executors

def execute(task: Task) -> list[dict]:
    """Run one task (in whichever process the executor chose); results carry the hardware."""
    from adlib.results import hardware_info

    study = load_study(task.study)
    results = (study.curve if task.test_curve else study.run)(task)
    hardware = hardware_info(task.device)
    return [{**{k: r[k] for k in RESULT_FIELDS if k in r}, "hardware": hardware} for r in results]


def _die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM when the study process dies, so a killed
    study leaves no orphaned workers behind (a rerun resumes from the rows either way)."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


def _init_worker(gpu_ids: Any, threads: int) -> None:
    _die_with_parent()
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_ids.get())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 -- no torch / no driver: CPU
        return 0


def _collect(task, get_rows, done, failed) -> None:
    try:
        rows = get_rows()
    except Exception as err:  # noqa: BLE001 -- one failed run must not lose the others
        failed(task, err)
        return
    done(task, rows)


def _run_serial(tasks, done, failed):
    for task in tasks:
        _collect(task, lambda t=task: execute(t), done, failed)


def _run_local(tasks, done, failed, workers: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # fresh interpreters: no forked OpenMP / CUDA state
    gpus = _visible_gpus()
    gpu_ids = None
    if gpus > 1:
        gpu_ids = ctx.Manager().Queue()
        for i in range(workers):
            gpu_ids.put(i % gpus)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(gpu_ids, 1)) as pool:
        futures = {pool.submit(execute, t): t for t in tasks}
        for future in as_completed(futures):
            _collect(futures[future], future.result, done, failed)


def _run_slurm(tasks, done, failed, *, folder: Path, cluster: str, partition: str | None,
               time_min: int, gpus: int, cpus: int, workers: int | None, name: str):
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"timeout_min": time_min, "cpus_per_task": cpus,
                              "gpus_per_node": gpus, "name": name}
    if partition:
        params["slurm_partition"] = partition
    if workers:
        params["slurm_array_parallelism"] = workers
    executor.update_parameters(**params)
    jobs = executor.map_array(execute, list(tasks))  # one array job for the whole grid
    task_of = {job.job_id: task for job, task in zip(jobs, tasks)}
    for job in submitit.helpers.as_completed(jobs):
        _collect(task_of[job.job_id], job.result, done, failed)


# ------------------------------------------------------------------------------ engine

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
        :func:`adlib.viz.ablation_bars`, whose error bars run over seeds."""
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


def _settings(protocol: Mapping[str, Any], cell: Cell) -> dict:
    unknown = sorted(set(cell.overrides) - set(protocol))
    if unknown:
        msg = (f"cell {cell.ablation}/{cell.config} overrides {unknown}, which are not "
               f"settings of the protocol ({', '.join(sorted(protocol))})")
        raise StudyError(msg)
    return _jsonable({**protocol, **cell.overrides})


def plan(study: Study, cells: Sequence[Cell], protocol: Mapping[str, Any], seeds: Sequence[int],
         categories: Sequence[str], *, dataset: str, data_root: str, device: str = "auto",
         test_curve: bool = False) -> tuple[list[Task], list[tuple[Cell, int, str, int | None, str]]]:
    """The tasks to run (identical settings once) and every (cell, seed, category, fold, key)."""
    tasks: dict[tuple, Task] = {}
    slots = []
    units = [tuple(categories)] if study.unit == "all" else [(c,) for c in categories]
    for cell in cells:
        settings = _settings(protocol, cell)
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


def _has_folds(frame: pd.DataFrame) -> bool:
    return "fold" in frame and frame["fold"].notna().any()


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (ablation, config, seed) -- per (ablation, config, seed, fold) in a fold
    study, as the paper's mean ± std runs over folds: each metric averaged over the
    categories (the unit the summaries' and plots' mean ± std run over)."""
    metrics = [m for m in SUMMARY_METRICS if m in frame and frame[m].notna().any()]
    keys = ["ablation", "config", "seed"] + (["fold"] if _has_folds(frame) else [])
    return frame.groupby(keys, sort=False)[metrics].mean()


def _summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds (x folds) of each seed's category mean, per (ablation, config)."""
    if frame.empty:
        return pd.DataFrame()
    per_seed = seed_means(frame)
    grouped = per_seed.groupby(level=["ablation", "config"], sort=False)
    out = grouped.agg(["mean", "std"])
    by_config = frame.groupby(["ablation", "config"], sort=False)
    out[("n", "seeds")] = by_config["seed"].nunique()
    if _has_folds(frame):
        out[("n", "folds")] = by_config["fold"].nunique()
    out[("n", "categories")] = by_config["category"].nunique()
    return out


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """A summary's metric columns as ``mean ± std`` strings (one column per metric)."""
    out = pd.DataFrame(index=summary.index)
    for metric in [m for m in summary.columns.get_level_values(0).unique() if m != "n"]:
        mean, std = summary[(metric, "mean")], summary[(metric, "std")]
        out[metric] = [("—" if not math.isfinite(m) else f"{m:.2f} ± {s:.2f}" if math.isfinite(s)
                        else f"{m:.2f}") for m, s in zip(mean, std)]
    out["seeds"] = summary[("n", "seeds")].astype(int)
    if ("n", "folds") in summary:
        out["folds"] = summary[("n", "folds")].astype(int)
    out["categories"] = summary[("n", "categories")].astype(int)
    return out


def _results_dir(paper: str) -> Path:
    from adlib.resources import resource_path

    return resource_path("results", paper)


def committed_records(paper: str, folder: str | os.PathLike | None = None) -> list:
    """The committed study records of ``paper`` (``adlib/resources/results/<paper>/*.json``,
    shipped inside the package)."""
    from adlib.results import load_run_records

    folder = Path(folder) if folder is not None else _results_dir(paper)
    return load_run_records(folder / "*.json", strict=False) if folder.exists() else []


def committed_summary(paper: str, folder: str | os.PathLike | None = None) -> pd.DataFrame | str:
    """The committed studies' summary tables, one block per study run (grid, epochs, time)."""
    tables = {}
    for record in committed_records(paper, folder):
        protocol = record.params.get("protocol", {})
        train = record.params.get("train_seconds") or 0
        name = (f"{record.params.get('grid')} ({protocol.get('epochs')} epochs, "
                f"{train / 60:.0f} min of training)")
        tables[name] = format_summary(_summary(pd.DataFrame(record.ablations)))
    if not tables:
        return f"no committed study records for {paper} (run python -m adlib study {paper})"
    return pd.concat(tables, names=["study run"])


def committed_rows(paper: str, folder: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every row of the committed study records of ``paper`` (one frame, a ``grid`` column
    naming the record's grid), e.g. for :func:`adlib.curves.best_minus_last`."""
    frames = [pd.DataFrame(record.ablations).assign(grid=record.params.get("grid"))
              for record in committed_records(paper, folder) if record.ablations]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def committed_claims(paper: str, folder: str | os.PathLike | None = None) -> list[dict]:
    """The claims rows of the committed study records, the best record's row per check and
    level (the same choice as the scoreboard's: most pairs, then longest training)."""
    from adlib.claims import best_rows

    return best_rows([record.to_dict() for record in committed_records(paper, folder)])


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
    from adlib.progress import progress
    from adlib.results import adlib_revision, hardware_info

    started = time.perf_counter()
    revision = revision or adlib_revision()  # the code that runs, taken when it starts
    if executor not in EXECUTORS:
        msg = f"executor {executor!r}; expected one of {', '.join(EXECUTORS)}"
        raise StudyError(msg)
    study = load_study(paper)
    cells = study.grid(grid) if isinstance(grid, str) else list(grid)
    model_hash = study.model_hash()
    accepted = linked_hashes(model_hash, load_equivalences(out))
    if test_curve and study.curve is None:
        msg = f"{study.paper} declares no curve runner (Study.curve); run it without test_curve"
        raise StudyError(msg)
    store = RowStore(out)
    tasks, slots = plan(study, cells, protocol, seeds, categories, dataset=dataset,
                        data_root=str(data_root), device=device, test_curve=test_curve)

    here = hardware_info(device)  # rows from the workers carry their own

    def provenance(task_like: Mapping[str, Any], result: Mapping[str, Any], seed: int) -> dict:
        settings = _settings(protocol, Cell("", "", task_like["overrides"]))
        category, fold = result["category"], result.get("fold")
        return {"paper": study.paper, "ablation": task_like["ablation"],
                "config": task_like["config"], "overrides": dict(task_like["overrides"]),
                "seed": int(seed), "category": category, "fold": fold,
                "metrics": result["metrics"], "train_seconds": result.get("train_seconds"),
                **{k: result[k] for k in ("test_curve", "train_curve") if result.get(k)},
                "final_loss": result.get("final_loss"),
                "protocol": {k: v for k, v in settings.items() if k not in task_like["overrides"]},
                "hardware": result.get("hardware") or here,
                "revision": revision, "model_hash": model_hash, "fingerprint": printed,
                **({"dirty": True} if dirty else {}),
                "key": run_key(study.paper, settings, seed, category, fold),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    from adlib.provenance import dirty_files, dirty_message

    dirty = dirty_files(study.module)
    printed = None
    existing = store.load()
    valid = {r["key"] for r in existing if r.get("model_hash") in accepted
             and (r.get("test_curve") or not test_curve)}
    new_known = [provenance({"ablation": k.get("ablation", ""), "config": k.get("config", ""),
                             "overrides": k.get("overrides", {})}, k, k["seed"]) for k in known]
    new_known = [r for r in new_known if r["key"] not in valid]
    if new_known:
        store.append(new_known)
        valid |= {r["key"] for r in new_known}

    keys_of = {id(t): [run_key(study.paper, t.settings, t.seed, c, t.fold) for c in t.categories]
               for t in tasks}
    pending = [t for t in tasks if not all(k in valid for k in keys_of[id(t)])]
    skipped = len(tasks) - len(pending)
    failures: list[str] = []
    if run and pending:
        if dirty and refuse_dirty:
            raise StudyError(dirty_message(study.paper, dirty))
        printed = fingerprint() if callable(fingerprint) else fingerprint
        bar = progress(total=len(tasks), initial=skipped, desc=f"{study.paper} runs",
                       disable=not show_progress)

        earlier = {r["key"]: r["metrics"] for r in existing if r.get("model_hash") in accepted}
        remade: list[float] = []

        def done(task: Task, results: list[dict]) -> None:
            meta = {"ablation": task.ablation, "config": task.config, "overrides": task.overrides}
            rows = [provenance(meta, r, task.seed) for r in results]
            for row in rows:  # a curve run must give the metrics of the row it replaces
                if row["key"] in earlier:
                    old = earlier[row["key"]]
                    remade.append(max((abs(v - old.get(k, math.nan)) for k, v in row["metrics"].items()),
                                      default=0.0))
            store.append(rows)
            bar.update(1)

        def failed(task: Task, err: Exception) -> None:
            where = "" if task.fold is None else f" fold {task.fold}"
            failures.append(f"{task.ablation}/{task.config} seed {task.seed}{where}: "
                            f"{type(err).__name__}: {err}")
            bar.update(1)

        try:
            if executor == "serial":
                _run_serial(pending, done, failed)
            elif executor == "local":
                _run_local(pending, done, failed, max(1, int(workers)))
            else:
                opts = dict(slurm or {})
                _run_slurm(pending, done, failed, folder=Path(out) / "slurm",
                           cluster=opts.get("cluster", "slurm"), partition=opts.get("partition"),
                           time_min=int(opts.get("time_min", 120)), gpus=int(opts.get("gpus", 0)),
                           cpus=int(opts.get("cpus", 1)), workers=workers,
                           name=f"adlib-{study.paper}")
        finally:
            bar.close()
        if remade:
            print(f"{study.paper}: {len(remade)} rows made again with their test curves; largest "
                  f"metric change against the rows they replace: {max(remade):.2g} (points)", flush=True)
    if failures:
        msg = (f"{study.paper}: {len(failures)} of {len(pending)} runs failed, the first: "
               f"{failures[0]}. The rows of the runs that finished are in {store.path}; fix "
               "the cause and rerun the same command to run only what is missing.")
        raise StudyError(msg)

    all_rows = store.load()
    by_key = {}
    for row in all_rows:  # the last row of a key wins: a rerun with a curve replaces one without
        if row.get("model_hash") in accepted:
            by_key[row["key"]] = row
    wanted = {key for *_, key in slots}
    # rows of these very settings made by other code: never reused silently, always reported
    stale = [r for r in all_rows if r["key"] in wanted and r.get("model_hash") not in accepted]
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
    frame = rows_frame(labelled)
    hardware = _most_common_hardware(used)
    revisions = sorted({r.get("revision", "?") for r in used}) or [revision]
    claims = study.check(frame, dataset=dataset, profile=profile, hardware=hardware,
                         revision=",".join(revisions)) if not frame.empty else []
    if include_stale and stale:
        for row in claims:
            row["note"] = "; ".join(n for n in (row["note"], "includes rows of older code") if n)
    ran = len(pending) if run else 0
    if not ran and used:  # nothing ran now: the rows' code is the revision to name
        revision = ",".join(revisions)
    return StudyResult(frame, _summary(frame), claims, stale, missing, ran, skipped, revision,
                       hardware, time.perf_counter() - started)


def _most_common_hardware(rows: Sequence[Mapping[str, Any]]) -> dict | None:
    from adlib.results import hardware_label

    if not rows:
        return None
    counts = Counter(hardware_label(r.get("hardware")) for r in rows)
    label = counts.most_common(1)[0][0]
    return next(r.get("hardware") for r in rows if hardware_label(r.get("hardware")) == label)


def write_outputs(result: StudyResult, *, paper: str, grid: str, out: str | os.PathLike,
                  protocol: Mapping[str, Any], seeds: Sequence[int], categories: Sequence[str],
                  dataset: str, command: str, profile: str = "study") -> StudyResult:
    """The summary (Markdown) and the run record (JSON, for the scoreboard) of one grid.

    Both are named by grid and protocol, so rerunning the same command replaces them.
    """
    from adlib.results import RunRecord

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    protocol_text = json.dumps(_jsonable(protocol), sort_keys=True)
    tag = f"{grid}__{hashlib.sha256(protocol_text.encode()).hexdigest()[:8]}"
    lines = [f"# {paper}: grid {grid}", "", f"Command: `{command}`", "",
             f"Protocol: `{protocol_text}`", "",
             f"Seeds {', '.join(map(str, seeds))}; categories {', '.join(categories)}; "
             f"revision {result.revision}; {result.ran} tasks run now, {result.skipped} reused; "
             f"{result.missing} rows missing; {len(result.stale)} stale rows (other code) "
             "not reused.", "", ("Mean ± std over (seed, fold) of the category mean:"
                                  if _has_folds(result.rows) else
                                  "Mean ± std over seeds of the per-seed category mean:"), "",
             summary_markdown(result.summary), ""]
    if result.claims:
        table = claims_table(result.claims)[["claim", "check", "level", "paper", "ours",
                                             "n_pairs", "verdict", "note"]]
        lines += ["## Claims", "", table.to_markdown(index=False) if _has_tabulate()
                  else table.to_string(index=False), ""]
    summary_path = out / f"summary__{tag}.md"
    summary_path.write_text("\n".join(lines), encoding="utf-8")
    from adlib.papers import PAPERS

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
                       params={"grid": grid, "protocol": _jsonable(protocol), "command": command,
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
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def parse_value(text: str) -> Any:
    """A ``--set key=value`` value: JSON when it parses (numbers, lists, true), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
