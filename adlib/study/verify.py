"""Run a study's fingerprint and verify its committed rows against the current code.

:mod:`adlib.study.provenance` says which code made a row; this module proves or refutes that other
code makes the same rows (``python -m adlib study <paper> --verify``). It is kept apart so no
study module imports it: the profiles and executors it needs stay out of every code hash.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from adlib.chapters.profiles import resolve
from adlib.data.sources import resolve_root
from adlib.study.executors import run_local
from adlib.study.load import load_study
from adlib.study.provenance import (
    EQUIVALENCES_FILE,
    WORKER_THREADS,
    Fingerprint,
    ProvenanceError,
    _module_file,
    dirty_files,
    dirty_message,
    here,
    is_dirty,
    load_equivalences,
    row_status,
)
from adlib.study.report import results_dir
from adlib.study.results import adlib_revision, hardware_info
from adlib.study.rows import RowStore
from adlib.study.spec import Task, run_key


def _hex(value: Any) -> Any:
    if isinstance(value, float):
        return value.hex() if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): _hex(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hex(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _hex(value.item())
    return value


def weights_digest(model: Any) -> str | None:
    """SHA-256 of the tensors a fitted model holds: its own state dict when it is a module,
    else every module, tensor and array among its attributes (sorted by name); None: none."""
    digest, found = hashlib.sha256(), False

    def add(name: str, value: Any) -> None:
        nonlocal found
        if isinstance(value, torch.nn.Module):
            for key, tensor in value.state_dict().items():
                add(f"{name}.{key}", tensor)
        elif isinstance(value, torch.Tensor):
            found = True
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(value, np.ndarray) and value.dtype != object:
            found = True
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value).tobytes())

    if isinstance(model, torch.nn.Module):
        add("", model)
    elif model is not None:
        for name in sorted(vars(model)):
            add(name, vars(model)[name])
    return digest.hexdigest()[:16] if found else None


def result_digest(results: Sequence[Mapping[str, Any]]) -> dict:
    """What a fingerprint compares of ``run``'s results: metrics and losses to the last bit and
    the final weights (``result["model"]``, when ``run`` hands the fitted model back)."""
    out = []
    for r in results:
        history = r.get("history")
        losses = ([float(v) for v in history["train_loss"]] if history is not None
                  and "train_loss" in getattr(history, "columns", ()) else None)
        out.append({"category": r.get("category"), "fold": r.get("fold"),
                    "metrics": _hex(dict(r.get("metrics") or {})),
                    "final_loss": _hex(r.get("final_loss")), "losses": _hex(losses),
                    "weights": weights_digest(r.get("model"))})
    return {"results": out}


def fingerprint(study, *, data_root: str | os.PathLike | None = None) -> dict:
    """Run ``study.fingerprint`` and return ``{"digest", "seconds", "detail"}``."""
    spec = study.fingerprint
    if spec is None:
        msg = (f"{study.paper} declares no fingerprint (Study.fingerprint): declare one tiny "
               "run of its real `run` so changed code can be checked against its rows")
        raise ProvenanceError(msg)
    protocol, root = _fingerprint_protocol(study, spec, data_root)
    cells = {c.config: c for cells in study.grids.values() for c in cells}
    unknown = [c for c in spec.cells if c not in cells]
    if unknown:
        msg = f"{study.paper}: fingerprint cells {unknown} are not configs of its grids"
        raise ProvenanceError(msg)
    threads = torch.get_num_threads()
    torch.set_num_threads(WORKER_THREADS)
    started = time.perf_counter()
    detail = []
    try:
        for config in spec.cells:
            cell = cells[config]
            settings = study.cell_settings(protocol, cell)
            task = Task(study.module, study.paper, cell.ablation, cell.config,
                        dict(cell.overrides), settings, spec.seed, (spec.category,),
                        settings.get("dataset", "embedded"), root, "cpu", spec.fold)
            detail.append({"config": config, **result_digest(study.run(task))})
    finally:
        torch.set_num_threads(threads)
    text = json.dumps(detail, sort_keys=True)
    return {"digest": hashlib.sha256(text.encode()).hexdigest()[:16],
            "seconds": time.perf_counter() - started, "detail": detail}


def _fingerprint_protocol(study, spec: Fingerprint, data_root) -> tuple[dict, str]:
    """The fingerprint's protocol (the profile's, with its overrides) and its data root."""
    cfg = resolve(study.paper, spec.profile, dataset="embedded", data_root=data_root)
    protocol = study.protocol(cfg)
    unknown = sorted(set(spec.overrides) - set(protocol))
    if unknown:
        msg = f"{study.paper}: fingerprint overrides {unknown} are not protocol settings"
        raise ProvenanceError(msg)
    return {**protocol, **spec.overrides}, str(resolve_root("embedded", data_root))


def _settings_of(row: Mapping[str, Any]) -> dict:
    return {**row.get("protocol", {}), **row.get("overrides", {})}


def _resolved_cells(study) -> list[dict]:
    """Every cell's settings of ``study`` under the embedded profiles, as its ``resolve`` gives
    them: what a row of a resolving study (chapter 6) ran with, where an override such as its
    ``epochs = 0`` means something else than the setting of the same name it resolves to."""
    out: list[dict] = []
    for profile in ("smoke", "cpu", "study"):
        protocol = study.protocol(resolve(study.paper, profile))
        for grid in study.grids:
            out += [study.cell_settings(protocol, cell) for cell in study.grid(grid)]
    return out


def _rebuilt_settings(study, row: Mapping[str, Any], resolved: list[dict]) -> dict | None:
    """The settings that made ``row`` (its key checks them): its protocol and overrides, or,
    for a resolving study, the resolved cell of its key; None: neither."""
    candidates = [_settings_of(row)]
    if study.resolve is not None:
        if not resolved:
            resolved += _resolved_cells(study)
        candidates += resolved
    return next((s for s in candidates if run_key(study.paper, s, row["seed"], row["category"],
                                                  row.get("fold")) == row["key"]), None)


def _tasks_of(study, rows: Sequence[Mapping[str, Any]], data_root: str) -> list[tuple[Any, list]]:
    """The tasks that made ``rows`` (a unified task made one row per category), each with its
    rows, with ``test_curve`` where a row has a test curve (made by the curve run); the
    reconstruction is checked against every row's key."""
    groups: dict[tuple, list] = {}
    found: dict[tuple, dict] = {}
    resolved: list[dict] = []
    for row in rows:
        settings = _rebuilt_settings(study, row, resolved)
        if settings is None:
            msg = (f"{study.paper}: row {row['key']} cannot be rebuilt from its protocol and "
                   "overrides (its key differs), so it cannot be rerun")
            raise ProvenanceError(msg)
        unit = () if study.unit == "all" else (row["category"],)
        ident = (json.dumps(settings, sort_keys=True), row["seed"], unit, row.get("fold"))
        groups.setdefault(ident, []).append(row)
        found[ident] = settings
    tasks = []
    for ident, members in groups.items():
        _, seed, _unit, fold = ident
        settings = found[ident]
        categories = tuple(dict.fromkeys(r["category"] for r in members))
        tasks.append((Task(study.module, study.paper, members[0]["ablation"], members[0]["config"],
                           dict(members[0].get("overrides", {})), settings, int(seed), categories,
                           settings.get("dataset", "embedded"), data_root, "cpu", fold,
                           # rows made with --test-curve were made by the study's curve runner
                           test_curve=any(m.get("test_curve") for m in members)), members))
    return tasks


def _draw(tasks: list, budget_s: float, workers: int, seed_text: str) -> list:
    """A seeded draw of tasks whose recorded training time fits the budget (at least one)."""
    rng = random.Random(hashlib.sha256(seed_text.encode()).hexdigest())
    order = list(tasks)
    rng.shuffle(order)
    chosen, spent = [], 0.0
    for task, members in order:
        cost = 1.5 * max(sum(float(m.get("train_seconds") or 0.0) for m in members), 1.0) + 5.0
        if chosen and spent + cost > budget_s * workers:
            continue
        chosen.append((task, members))
        spent += cost
    return chosen


def _baselines(paper: str, tasks: list, workers: int, echo) -> list[list[dict] | None]:
    """Per drawn task, its rows' own revision rerun here (None: a dirty or unknown revision,
    compared with the committed rows as they are)."""
    out: list[list[dict] | None] = [None] * len(tasks)
    by_revision: dict[str, list[int]] = {}
    for i, (_task, members) in enumerate(tasks):
        revisions = {clean_revision(m) for m in members}
        if len(revisions) == 1 and None not in revisions:
            by_revision.setdefault(revisions.pop(), []).append(i)
    for revision, indices in by_revision.items():
        echo(f"{paper}: rerunning {len(indices)} tasks with the rows' own revision {revision}")
        for i, results in zip(indices, rerun_at_revision(paper, revision,
                                                         [tasks[i][0] for i in indices],
                                                         workers, echo)):
            out[i] = results
    return out


def _largest_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[float, str]:
    worst, where = 0.0, ""
    keys = sorted(set(old.get("metrics", {})) | set(new.get("metrics", {})))
    pairs = [(k, old.get("metrics", {}).get(k), new.get("metrics", {}).get(k)) for k in keys]
    pairs.append(("final_loss", old.get("final_loss"), new.get("final_loss")))
    for name, a, b in pairs:
        if a is None and b is None:
            continue
        change = math.inf if a is None or b is None else abs(float(a) - float(b))
        if math.isnan(change):
            change = 0.0 if (a != a and b != b) else math.inf
        if change > worst or not where:
            worst, where = change, name
    return worst, where


REVISION_SCRIPT = r"""
import dataclasses, json, sys
import torch
torch.set_num_threads(1)
try:
    from adlib.study.load import load_study
    from adlib.study.spec import Task
except ImportError:                      # revisions before load_study moved
    try:
        from adlib.study.spec import Task, load_study
    except ImportError:                  # revisions before the engine was split
        from adlib.study import Task, load_study
from adlib.data.sources import resolve_root
jobs = json.load(sys.stdin)
names = {f.name for f in dataclasses.fields(Task)}
study = load_study(jobs["paper"])
out = []
for job in jobs["tasks"]:
    job = dict(job, data_root=str(resolve_root(job["dataset"])), categories=tuple(job["categories"]))
    # a row made by the curve runner is remade by it (revisions before the curve became a flag
    # of run declared it apart; later ones read Task.test_curve in run itself)
    runner = study.run
    if job.get("test_curve") and callable(getattr(study, "curve", None)):
        runner = study.curve
    results = runner(Task(**{k: v for k, v in job.items() if k in names}))
    out.append([{k: r.get(k) for k in ("category", "fold", "metrics", "final_loss")} for r in results])
print("RESULTS " + json.dumps(out))
"""


def clean_revision(row: Mapping[str, Any]) -> str | None:
    """The git revision that made ``row`` when it names committed code (not ``-dirty``)."""
    revision = str(row.get("revision") or "")
    return None if not revision or is_dirty(row) or not _git_has(revision) else revision


@functools.lru_cache(maxsize=1)
def _repo_top() -> Path | None:
    package = _module_file("adlib").parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=package, text=True,
                             capture_output=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(top) if (Path(top) / "adlib").resolve() == package.resolve() else None


@functools.lru_cache(maxsize=None)
def _git_has(revision: str) -> bool:
    top = _repo_top()
    return top is not None and subprocess.run(
        ["git", "cat-file", "-e", f"{revision}^{{commit}}"], cwd=top, capture_output=True,
        timeout=30).returncode == 0


def rerun_at_revision(paper: str, revision: str, tasks: Sequence[Any], workers: int = 1,
                      echo: Callable[[str], None] = print) -> list[list[dict] | None]:
    """Run ``tasks`` with the code of ``revision`` here (a temporary git worktree, its own
    embedded data set, one thread per process): what the rows' own code gives in today's
    environment, so a change of library versions is not mistaken for a change of code."""
    top = _repo_top()
    folder = Path(tempfile.mkdtemp(prefix=f"adlib-{revision}-"))
    tree = folder / "tree"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), revision], cwd=top,
                   check=True, capture_output=True, timeout=300)
    # the environment of a local study worker: torch on one thread (set by the script), the
    # rest as inherited (a worker sets OMP_NUM_THREADS only after numpy is loaded)
    env = {**os.environ, "PYTHONPATH": str(tree), "ADLIB_EMBEDDED": str(folder / "embedded"),
           "ADLIB_PROGRESS": "summary"}
    env.pop("OMP_NUM_THREADS", None)
    try:
        prepare = "from adlib.data.sources import resolve_root; resolve_root('embedded')"
        subprocess.run([sys.executable, "-c", prepare], cwd=tree, env=env, check=True,
                       capture_output=True, timeout=1800)
        jobs = [dataclasses.asdict(t) for t in tasks]
        shares = [list(range(len(jobs)))[i::max(1, workers)] for i in range(max(1, workers))]
        procs = []
        for share in shares:
            if not share:
                continue
            proc = subprocess.Popen([sys.executable, "-c", REVISION_SCRIPT], cwd=tree, env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            payload = json.dumps({"paper": paper, "tasks": [jobs[i] for i in share]})
            procs.append((share, proc, payload))
        out: list[list[dict] | None] = [None] * len(jobs)
        for share, proc, payload in procs:
            stdout, stderr = proc.communicate(payload)
            line = next((x for x in stdout.splitlines() if x.startswith("RESULTS ")), None)
            if proc.returncode or line is None:
                echo(f"{paper}: rerun at {revision} failed: {stderr.strip()[-400:]}")
                continue
            for i, results in zip(share, json.loads(line[len("RESULTS "):])):
                out[i] = results
        return out
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=top,
                       capture_output=True, timeout=300)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Verification:
    """What :func:`verify` found for one old code hash."""

    old_hash: str
    new_hash: str
    rows: int                 # committed rows under the old hash
    sampled: list[str]        # keys of the rows rerun
    largest_change: float
    metric: str               # where the largest change is
    fingerprint_match: bool | None   # None: the old rows record no fingerprint
    equivalent: bool
    seconds: float
    message: str = ""
    revision_reruns: int = 0        # sampled rows compared with their own revision rerun here
    environment_drift: float = 0.0  # committed rows vs that rerun: the environment's share


def code_identity(row: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """What identifies the code of a row: its code hash, and for rows made before provenance
    v2 (no fingerprint field: their hash left modules out) also its revision."""
    return row.get("model_hash"), row.get("revision") if "fingerprint" not in row else None


def _groups(rows: Sequence[Mapping[str, Any]], counts) -> dict[tuple, list]:
    """The stale rows by :func:`code_identity`."""
    groups: dict[tuple, list] = {}
    for row in rows:
        if not counts(row):
            groups.setdefault(code_identity(row), []).append(row)
    return groups


def verify(paper: str, *, folder: str | os.PathLike | None = None, budget_s: float = 600.0,
           workers: int = 1, data_root: str | os.PathLike | None = None,
           revision: str | None = None, allow_dirty: bool = False,
           echo: Callable[[str], None] = print) -> list[Verification]:
    """Link the committed rows of ``paper`` to the current code, or say why they are stale.

    For each group of stale rows (:func:`_groups`): compare the fingerprint they record with the
    current code's, rerun a seeded draw of their tasks (``budget_s`` seconds of recorded
    training per worker in all, shared by the groups by their row counts) with the current
    code and, where the rows name a clean revision, with that revision too (so a change of
    library versions is measured apart from a change of code), and append an equivalence
    record when the fingerprint matches and no metric moved beyond the study's declared
    ``tolerance``. Rows are never rewritten. Refused from a tree with uncommitted changes to
    hashed code (an equivalence must name code others can check out) unless ``allow_dirty``.
    """
    study = load_study(paper)
    folder = Path(folder) if folder is not None else results_dir(study.paper)
    latest = {row["key"]: row for row in RowStore(folder).load()}   # the last row of a key wins
    current = study.model_hash()
    groups = _groups(list(latest.values()), row_status(current, load_equivalences(folder)))
    if not groups:
        echo(f"{study.paper}: all {len(latest)} rows are current or linked to code "
             f"{current} by recorded equivalences; nothing to verify")
        return []
    dirty = dirty_files(study.code)
    if dirty and not allow_dirty:
        raise ProvenanceError(dirty_message(study.paper, dirty).replace("run the", "verify the"))
    root = str(resolve_root("embedded", data_root))
    printed = fingerprint(study, data_root=root)
    echo(f"{study.paper}: code {current}; fingerprint {printed['digest']} "
         f"({printed['seconds']:.1f} s)")
    total = sum(len(g) for g in groups.values())
    out = []
    for (old_hash, old_revision), group in groups.items():
        verdict = _verify_group(study, old_hash, old_revision, group, current, printed, root,
                                budget_s * len(group) / total, workers, echo)
        out.append(verdict)
        if verdict.equivalent:
            _record(folder, verdict, printed, old_revision, revision or adlib_revision(), dirty)
    return out


def _verify_group(study, old_hash, old_revision, group, current, printed, root, budget_s,
                  workers, echo) -> Verification:
    started = time.perf_counter()
    recorded = {r.get("fingerprint") for r in group} - {None}
    match = None if not recorded else printed["digest"] in recorded
    seed_text = f"{old_hash}/{old_revision or ''}->{current}"
    tasks = _draw(_tasks_of(study, group, root), budget_s, workers, seed_text)
    label = old_hash + (f" (revision {old_revision})" if old_revision else "")
    echo(f"{study.paper}: {len(group)} rows of code {label}; rerunning {len(tasks)} of their "
         f"tasks ({sum(len(m) for _, m in tasks)} rows), {workers} worker(s)")
    results: dict[int, list] = {}
    failures: list[str] = []
    # always in worker processes pinned to one thread, as the study's rows were made
    run_local([t for t, _ in tasks], lambda t, r: results.__setitem__(id(t), r),
              lambda t, e: failures.append(f"{t.config}: {e}"), max(1, workers))
    baselines = _baselines(study.paper, tasks, workers, echo)
    worst, metric, sampled, drift, rerun_rows = 0.0, "", [], 0.0, 0
    for i, (task, members) in enumerate(tasks):
        made = {(r["category"], r.get("fold")): r for r in results.get(id(task), [])}
        base = {(r["category"], r.get("fold")): r for r in baselines[i] or []}
        for row in members:
            sampled.append(row["key"])
            where = (row["category"], row.get("fold"))
            new, reference = made.get(where), base.get(where, row)
            if where in base:   # the rows' own code rerun here: the environment's share
                rerun_rows += 1
                drift = max(drift, _largest_change(row, reference)[0])
            change, name = (math.inf, "missing") if new is None else _largest_change(reference, new)
            if change > worst or not metric:
                worst, metric = change, f"{row['config']} / {row['category']}: {name}"
    tolerance = float(getattr(study, "tolerance", 0.0) or 0.0)
    # The fingerprint is a cheap proxy for "same code, same model". When every sampled row's own
    # revision was rerun here and the current code gives those numbers, the code did not change
    # what it computes: the fingerprint moved with the environment (torch, BLAS, CPU) since the
    # rows were made, as MAAE's did between 50bc52a and today.
    environment_moved = (match is False and rerun_rows == len(sampled) > 0
                         and worst <= tolerance)
    equivalent = not failures and (match is not False or environment_moved) and worst <= tolerance
    if failures:
        note = f"{len(failures)} reruns failed, the first: {failures[0]}"
    elif environment_moved:
        note = (f"the fingerprint moved ({sorted(recorded)} -> {printed['digest']}) but the rows' "
                "own revision, rerun here, gives what this code gives for every sampled row: "
                "the move is the environment's, not the code's")
    elif match is False:
        note = (f"the fingerprint moved ({sorted(recorded)} -> {printed['digest']}): "
                "the code trains a different model")
    elif worst > tolerance:
        note = f"{metric} moved by {worst:.6g} (tolerance {tolerance:g})"
        if not rerun_rows:
            note += ("; compared with the committed rows as they are (a dirty or unknown "
                     "revision cannot be rerun), so part of the change may be the environment's")
    else:
        note = "equal to the last bit" if worst == 0 else f"within tolerance {tolerance:g}"
    if rerun_rows:
        note += (f"; compared with the rows' own revision rerun here for {rerun_rows} of "
                 f"{len(sampled)} rows (committed rows vs that rerun: {drift:.3g}, the "
                 "environment's share)")
    seconds = time.perf_counter() - started
    echo(f"{study.paper}: {label} -> {current}: {'EQUIVALENT' if equivalent else 'STALE'} -- "
         f"{note}; largest change {worst:.3g} at {metric}; {len(sampled)} rows sampled; "
         f"{seconds:.0f} s")
    return Verification(old_hash, current, len(group), sampled, worst, metric, match, equivalent,
                        seconds, note, rerun_rows, drift)


def _record(folder: Path, verdict: Verification, printed: Mapping[str, Any],
            old_revision: str | None, revision: str, dirty: Sequence[str]) -> None:
    env = here()
    record = {"old_hash": verdict.old_hash, "new_hash": verdict.new_hash,
              **({"revisions": [old_revision]} if old_revision else {}),
              "fingerprint": printed["digest"], "rows": verdict.rows,
              "sampled_keys": verdict.sampled, "largest_change": verdict.largest_change,
              "where": verdict.metric, "revision_reruns": verdict.revision_reruns,
              "environment_drift": verdict.environment_drift, "torch": env["torch"],
              "threads": env["threads"], "libraries": env["libraries"],
              "cpu": hardware_info("cpu").get("cpu"), "revision": revision,
              **({"dirty": True} if dirty else {}), "seconds": round(verdict.seconds, 1),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with (folder / EQUIVALENCES_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def provenance_table(paper: str, folder: str | os.PathLike | None = None):
    """One line per code hash (and, for rows before provenance v2, revision) of the committed
    rows: rows, dirty rows, status (current / verified / unverified here / stale) and, for
    verified ones, how far the rows' own code rerun here lies from the committed numbers (the
    environment's drift, in points)."""
    study = load_study(paper)
    folder = Path(folder) if folder is not None else results_dir(study.paper)
    latest = {r["key"]: r for r in RowStore(folder).load()}
    records = load_equivalences(folder)
    status = row_status(study.model_hash(), records)
    drift = {(r["old_hash"], rev): r.get("environment_drift") for r in records
             for rev in (r.get("revisions") or [None])}
    counts: dict[tuple, dict] = {}
    for row in latest.values():
        key = code_identity(row)
        entry = counts.setdefault(key, {"code hash": key[0], "revision": key[1] or "(any)",
                                        "rows": 0, "dirty rows": 0,
                                        "status": status(row) or "stale",
                                        "environment drift": drift.get(key) if status(row) else None})
        entry["rows"] += 1
        entry["dirty rows"] += int(is_dirty(row))
    return pd.DataFrame(list(counts.values()))
