"""Run a study's fingerprint and verify its committed rows against the current code.

:mod:`adlib.provenance` says which code made a row; this module proves or refutes that other
code makes the same rows (``python -m adlib study <paper> --verify``). It is kept apart so no
study module imports it: the profiles and executors it needs stay out of every code hash.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adlib.provenance import (EQUIVALENCES_FILE, WORKER_THREADS, Fingerprint, ProvenanceError,
                              dirty_files, dirty_message, here, is_dirty, linked_hashes,
                              load_equivalences)


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
    import numpy as np
    import torch

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
    import torch

    from adlib.study import Cell, Task, _settings

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
            settings = _settings(protocol, Cell(cell.ablation, cell.config, cell.overrides))
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
    from adlib.data.sources import resolve_root
    from adlib.profiles import resolve

    cfg = resolve(study.paper, spec.profile, dataset="embedded", data_root=data_root)
    protocol = study.protocol(cfg)
    unknown = sorted(set(spec.overrides) - set(protocol))
    if unknown:
        msg = f"{study.paper}: fingerprint overrides {unknown} are not protocol settings"
        raise ProvenanceError(msg)
    return {**protocol, **spec.overrides}, str(resolve_root("embedded", data_root))


def _settings_of(row: Mapping[str, Any]) -> dict:
    return {**row.get("protocol", {}), **row.get("overrides", {})}


def _tasks_of(study, rows: Sequence[Mapping[str, Any]], data_root: str) -> list[tuple[Any, list]]:
    """The tasks that made ``rows`` (a unified task made one row per category), each with its
    rows; the reconstruction is checked against every row's key."""
    from adlib.study import Task, run_key

    groups: dict[tuple, list] = {}
    for row in rows:
        settings = _settings_of(row)
        if run_key(study.paper, settings, row["seed"], row["category"], row.get("fold")) != row["key"]:
            msg = (f"{study.paper}: row {row['key']} cannot be rebuilt from its protocol and "
                   "overrides (its key differs), so it cannot be rerun")
            raise ProvenanceError(msg)
        unit = () if study.unit == "all" else (row["category"],)
        ident = (json.dumps(settings, sort_keys=True), row["seed"], unit, row.get("fold"))
        groups.setdefault(ident, []).append(row)
    tasks = []
    for (_, seed, _unit, fold), members in groups.items():
        settings = _settings_of(members[0])
        categories = tuple(dict.fromkeys(r["category"] for r in members))
        tasks.append((Task(study.module, study.paper, members[0]["ablation"], members[0]["config"],
                           dict(members[0].get("overrides", {})), settings, int(seed), categories,
                           settings.get("dataset", "embedded"), data_root, "cpu", fold), members))
    return tasks


def _draw(tasks: list, budget_s: float, workers: int, seed_text: str) -> list:
    """A seeded draw of tasks whose recorded training time fits the budget (at least one)."""
    rng = random.Random(hashlib.sha256(seed_text.encode()).hexdigest())
    order = list(tasks)
    rng.shuffle(order)
    chosen, spent = [], 0.0
    for task, members in order:
        cost = 1.5 * max(float(members[0].get("train_seconds") or 0.0), 1.0) + 5.0
        if chosen and spent + cost > budget_s * workers:
            continue
        chosen.append((task, members))
        spent += cost
    return chosen


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
            worst, where = max(worst, change), name if change >= worst else where
    return worst, where


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


def verify(paper: str, *, folder: str | os.PathLike | None = None, budget_s: float = 600.0,
           workers: int = 1, data_root: str | os.PathLike | None = None,
           revision: str | None = None, allow_dirty: bool = False,
           echo: Callable[[str], None] = print) -> list[Verification]:
    """Link the committed rows of ``paper`` to the current code, or say why they are stale.

    For each code hash of the rows that is not the current one (nor linked to it already):
    compare the fingerprint the rows record with the current code's, rerun a seeded draw of
    their tasks (about ``budget_s`` seconds of recorded training per worker), and append an
    equivalence record when the fingerprint matches and no metric moved beyond the study's
    declared ``tolerance``. Rows are never rewritten. Refused from a tree with uncommitted
    changes to hashed code (an equivalence must name code others can check out) unless
    ``allow_dirty`` (tests).
    """
    from adlib.data.sources import resolve_root
    from adlib.results import adlib_revision, hardware_info
    from adlib.study import RowStore, _results_dir, _run_local, _run_serial, load_study

    study = load_study(paper)
    folder = Path(folder) if folder is not None else _results_dir(study.paper)
    rows = RowStore(folder).load()
    current = study.model_hash()
    accepted = linked_hashes(current, load_equivalences(folder))
    latest: dict[str, dict] = {}
    for row in rows:
        latest[row["key"]] = row
    old = {}
    for row in latest.values():
        if row.get("model_hash") not in accepted:
            old.setdefault(row.get("model_hash"), []).append(row)
    if not old:
        echo(f"{study.paper}: all {len(latest)} rows are current or linked to code "
             f"{current} by recorded equivalences; nothing to verify")
        return []
    dirty = dirty_files(study.module)
    if dirty and not allow_dirty:
        raise ProvenanceError(dirty_message(study.paper, dirty).replace("run the", "verify the"))
    revision = revision or adlib_revision()
    root = str(resolve_root("embedded", data_root))
    printed = fingerprint(study, data_root=root)
    echo(f"{study.paper}: code {current}; fingerprint {printed['digest']} "
         f"({printed['seconds']:.1f} s)")
    out = []
    for old_hash, group in old.items():
        started = time.perf_counter()
        recorded = {r.get("fingerprint") for r in group} - {None}
        match = None if not recorded else printed["digest"] in recorded
        tasks = _draw(_tasks_of(study, group, root), budget_s, workers, f"{old_hash}->{current}")
        echo(f"{study.paper}: {len(group)} rows of code {old_hash}; rerunning {len(tasks)} of "
             f"their tasks ({sum(len(m) for _, m in tasks)} rows), {workers} worker(s)")
        results: dict[int, list] = {}
        failures: list[str] = []
        lookup = {id(task): members for task, members in tasks}
        if workers > 1:
            _run_local([t for t, _ in tasks], lambda t, r: results.__setitem__(id(t), r),
                       lambda t, e: failures.append(f"{t.config}: {e}"), workers)
        else:
            _run_serial([t for t, _ in tasks], lambda t, r: results.__setitem__(id(t), r),
                        lambda t, e: failures.append(f"{t.config}: {e}"))
        worst, metric, sampled = 0.0, "", []
        for task, _members in tasks:
            made = {(r["category"], r.get("fold")): r for r in results.get(id(task), [])}
            for row in lookup[id(task)]:
                sampled.append(row["key"])
                new = made.get((row["category"], row.get("fold")))
                change, name = (math.inf, "missing") if new is None else _largest_change(row, new)
                if change > worst or not metric:
                    worst, metric = max(change, worst), f"{row['config']} / {row['category']}: {name}"
        tolerance = float(getattr(study, "tolerance", 0.0) or 0.0)
        equivalent = not failures and match is not False and worst <= tolerance
        seconds = time.perf_counter() - started
        if failures:
            note = f"{len(failures)} reruns failed, the first: {failures[0]}"
        elif match is False:
            note = (f"the fingerprint moved ({sorted(recorded)} -> {printed['digest']}): "
                    "the code trains a different model")
        elif worst > tolerance:
            note = f"{metric} moved by {worst:.6g} (tolerance {tolerance:g})"
        else:
            note = ("equal to the last bit" if worst == 0 else f"within tolerance {tolerance:g}")
        verdict = Verification(old_hash, current, len(group), sampled, worst, metric, match,
                               equivalent, seconds, note)
        out.append(verdict)
        echo(f"{study.paper}: {old_hash} -> {current}: "
             f"{'EQUIVALENT' if equivalent else 'STALE'} -- {note}; largest change {worst:.3g} "
             f"at {metric}; {len(sampled)} rows sampled; {seconds:.0f} s")
        if equivalent:
            env = here()
            record = {"old_hash": old_hash, "new_hash": current, "fingerprint": printed["digest"],
                      "fingerprint_recorded": sorted(recorded) or None, "rows": len(group),
                      "sampled_keys": sampled, "largest_change": worst, "where": metric,
                      "tolerance": tolerance, "torch": env["torch"], "threads": env["threads"],
                      "cpu": hardware_info("cpu").get("cpu"), "revision": revision,
                      **({"dirty": True} if dirty else {}),
                      "seconds": round(seconds, 1),
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            with (folder / EQUIVALENCES_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
    return out


def provenance_table(paper: str, folder: str | os.PathLike | None = None):
    """One line per code hash of the committed rows: rows, status (current / verified /
    unverified here / stale), dirty rows."""
    import pandas as pd

    from adlib.study import RowStore, _results_dir, load_study

    study = load_study(paper)
    folder = Path(folder) if folder is not None else _results_dir(study.paper)
    latest = {r["key"]: r for r in RowStore(folder).load()}
    status = linked_hashes(study.model_hash(), load_equivalences(folder))
    counts: dict[str, dict] = {}
    for row in latest.values():
        h = row.get("model_hash")
        entry = counts.setdefault(h, {"code hash": h, "rows": 0, "dirty rows": 0,
                                      "status": status.get(h, "stale")})
        entry["rows"] += 1
        entry["dirty rows"] += int(is_dirty(row))
    return pd.DataFrame(list(counts.values()))


