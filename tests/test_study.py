"""The study engine: same rows under every executor, resume after a kill, stale rows reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from adlib.study.rows import ROWS_FILE, RowStore
from adlib.study.load import load_study
from adlib.study.spec import StudyError
from adlib.study.engine import run_study

TOY_MODEL = '''
SCALE = 10.0  # edit me: the model's code changes, its rows become stale
'''

TOY_STUDY = '''
"""A toy study: a 'model' whose score is a deterministic function of settings, seed, category."""
import time
import zlib

from adlib.study.provenance import Fingerprint
from adlib.study.spec import Cell, Study


def protocol(cfg):
    return {"gain": 1.0, "offset": 0.0, "sleep": 0.0}


def _scores(task):
    import toy_model

    s = task.settings
    time.sleep(s["sleep"])
    out = []
    for category in task.categories:
        noise = zlib.crc32(f"{task.seed}/{category}".encode()) % 100 / 100
        score = 50 + toy_model.SCALE * s["gain"] + s["offset"] + noise
        out.append({"category": category, "metrics": {"image_auroc": score},
                    "train_seconds": 0.0, "final_loss": 1 / s["gain"]})
    return out


def run(task):
    """The scores; with ``task.test_curve`` also a 'test curve' whose last epoch is the score
    and whose best is 2 above."""
    rows = _scores(task)
    for row in rows if task.test_curve else ():
        last = row["metrics"]["image_auroc"]
        row["test_curve"] = {"epoch": [0, 1, 2], "image_auroc": [50.0, last + 2.0, last]}
    return rows


run.curves = True   # what DetectorRun declares: run honours Task.test_curve


GRIDS = {"tiny": [Cell("gain", "gain=1", {}), Cell("gain", "gain=2", {"gain": 2.0}),
                  Cell("gain", "gain=3", {"gain": 3.0}), Cell("offset", "offset=0", {}),
                  Cell("offset", "offset=1", {"offset": 1.0})]}
STUDY = Study(paper="toy", grids=GRIDS, checks=(), protocol=protocol,
              run=run, unit="category", fingerprint=Fingerprint(("gain=2",), "a"))
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy study as an importable module (workers and submitit jobs import it too)."""
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "toy_study.py").write_text(TOY_STUDY)
    (pkg / "toy_model.py").write_text(TOY_MODEL)
    monkeypatch.syspath_prepend(str(pkg))
    for name in ("toy_study", "toy_model"):   # each test has its own copy of the files
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(pkg), os.environ.get("PYTHONPATH")])))
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name / "train" / "good").mkdir(parents=True)
    return pkg, data


def _run(out, data, **kwargs):
    study = load_study("toy_study")
    return run_study("toy_study", "tiny", protocol=study.protocol(None), seeds=[0, 1],
                     categories=["a", "b"], dataset="mvtec_ad", data_root=data, out=out,
                     show_progress=False, **kwargs)


def _values(result):
    return sorted(zip(result.rows["config"], result.rows["seed"], result.rows["category"],
                      result.rows["image_auroc"].round(9)))


@pytest.mark.slow
def test_serial_local_and_submitit_give_the_same_rows(toy, tmp_path):
    _, data = toy
    serial = _run(tmp_path / "serial", data)
    local = _run(tmp_path / "local", data, executor="local", workers=2)
    slurm = _run(tmp_path / "slurm", data, executor="slurm", workers=2,
                 slurm={"cluster": "local", "time_min": 5, "cpus": 1})
    assert len(serial.rows) == 5 * 2 * 2 and serial.missing == 0
    # gain=1 and offset=0 are the same settings: 4 distinct x 2 seeds x 2 categories
    assert serial.ran == 16
    assert _values(serial) == _values(local) == _values(slurm)
    for out in ("serial", "local", "slurm"):
        rows = RowStore(tmp_path / out).load()
        assert len(rows) == 16 and len({r["key"] for r in rows}) == 16
        assert {r["hardware"]["cpu_count"] for r in rows} == {os.cpu_count()}


def test_identical_settings_run_once_and_a_rerun_skips_finished_rows(toy, tmp_path):
    _, data = toy
    first = _run(tmp_path / "s", data)
    again = _run(tmp_path / "s", data)
    assert (first.ran, again.ran, again.skipped) == (16, 0, 16)
    assert _values(first) == _values(again)
    same = first.rows[first.rows["config"].isin(["gain=1", "offset=0"])]
    by_config = same.groupby("config")["image_auroc"].apply(sorted)
    assert len(same) == 8 and by_config["gain=1"] == by_config["offset=0"]


def test_a_test_curve_run_remakes_rows_without_curves_and_reports_best_minus_last(toy, tmp_path, capsys):
    from adlib.training.curves import best_minus_last

    _, data = toy
    plain = _run(tmp_path / "s", data)
    assert "test_curve" not in plain.rows or plain.rows["test_curve"].isna().all()
    curved = _run(tmp_path / "s", data, test_curve=True)
    assert curved.ran == 16 and _values(curved) == _values(plain)
    assert "16 rows made again with their test curves; largest metric change against the rows " \
           "they replace: 0" in capsys.readouterr().out
    again = _run(tmp_path / "s", data, test_curve=True)
    assert (again.ran, again.skipped) == (0, 16)
    table = best_minus_last(curved.rows, metrics=("image_auroc",))
    assert list(table.index) == ["gain=1", "gain=2", "gain=3", "offset=0", "offset=1"]
    assert (table["image_auroc: best − last"] == "+2.00 [+2.00, +2.00]").all()
    assert (table["runs"] == 4).all() and (table["image_auroc: best epoch (median)"] == 1).all()


def test_a_test_curve_needs_a_run_that_scores_every_epoch(toy, tmp_path, monkeypatch):
    _, data = toy
    study = load_study("toy_study")
    monkeypatch.setattr(study.run, "curves", False)
    with pytest.raises(StudyError, match="cannot score the test split every epoch"):
        run_study("toy_study", "tiny", protocol=study.protocol(None), seeds=[0],
                  categories=["a"], dataset="mvtec_ad", data_root=data, out=tmp_path / "x",
                  show_progress=False, test_curve=True)


def test_a_killed_study_resumes_without_duplicates_or_gaps(toy, tmp_path):
    pkg, data = toy
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "adlib", "study", "toy_study", "--grid", "tiny",
           "--seeds", "0,1", "--data-root", str(data), "--set", "sleep=0.25", "--out", str(out),
           "--allow-dirty"]   # a developer's tree may be dirty; CI's is clean
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    rows_file = out / ROWS_FILE
    deadline = time.time() + 60
    while time.time() < deadline:
        if rows_file.exists() and len(rows_file.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(RowStore(out).load())
    assert 3 <= before < 16, "the kill should land mid-study"
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    rows = RowStore(out).load()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 16
    last = done.stdout.strip().splitlines()[-1]
    assert last.endswith(".md") and Path(last).exists()  # the summary's path, last
    assert "0 rows missing" in Path(last).read_text()
    record = json.loads(next(out.glob("toy__study__tiny__*.json")).read_text())
    assert len(record["ablations"]) == 20


def test_rows_of_changed_model_code_are_reported_stale_and_rerun(toy, tmp_path):
    pkg, data = toy
    _run(tmp_path / "s", data)
    (pkg / "toy_model.py").write_text(TOY_MODEL.replace("10.0", "20.0"))
    del sys.modules["toy_model"]   # as a new process would: the edited code
    summary_only = _run(tmp_path / "s", data, run=False)
    assert len(summary_only.stale) == 16 and summary_only.missing == 20
    kept = _run(tmp_path / "s", data, run=False, include_stale=True)
    assert kept.missing == 0 and len(kept.rows) == 20
    rerun = _run(tmp_path / "s", data)
    assert rerun.ran == 16 and rerun.missing == 0 and len(rerun.stale) == 16
    assert (rerun.rows["image_auroc"] > 65).all()   # the new code's rows, not the stale ones


def test_bad_grid_and_unknown_study_are_clear_errors(toy, tmp_path):
    _, data = toy
    with pytest.raises(StudyError, match="no grid 'huge'.*tiny"):
        run_study("toy_study", "huge", protocol={}, seeds=[0], categories=["a"],
                  dataset="mvtec_ad", data_root=data, out=tmp_path)
    with pytest.raises(StudyError, match="not a paper key"):
        load_study("no_such_paper")
    from adlib.study.spec import Cell

    with pytest.raises(StudyError, match="overrides \\['gian'\\]"):
        _run(tmp_path / "x", data) if False else run_study(
            "toy_study", [Cell("g", "typo", {"gian": 2})], protocol={"gain": 1.0, "offset": 0.0, "sleep": 0.0},
            seeds=[0], categories=["a"], dataset="mvtec_ad", data_root=data, out=tmp_path)


def test_torn_last_line_is_skipped_and_the_next_row_starts_fresh(tmp_path):
    store = RowStore(tmp_path)
    store.append([{"key": "a", "x": 1}])
    with store.path.open("a") as handle:
        handle.write('{"key": "b", "x"')   # a kill in the middle of a write
    assert [r["key"] for r in store.load()] == ["a"]
    store.append([{"key": "c", "x": 3}])
    assert [r["key"] for r in store.load()] == ["a", "c"]


def test_every_paper_study_declares_valid_grids_and_checks():
    from adlib.chapters.registry import PAPERS
    from adlib.chapters.profiles import resolve
    from adlib.study.results import get_claim

    for paper in PAPERS.values():
        if paper.study is None:
            continue
        study = load_study(paper.key)
        for profile in ("smoke", "cpu", "study"):
            cfg = resolve(paper.key, profile)
            protocol = study.protocol(cfg)
            cells = study.grid(cfg.grid)
            assert cells and all(set(c.overrides) <= set(protocol) for c in cells)
        labels = {c.config for cells in study.grids.values() for c in cells}
        for check in study.checks:
            get_claim(paper.key, check.claim)
            named = [t.strip() for p in (check.order.split(",") if check.order else [])
                     for t in p.replace(">", "|").replace("<", "|").split("|")]
            assert set(named + list(check.configs)) - {""} <= labels, check
            if check.sanity:
                assert check.sanity in labels
        assert len(study.model_hash()) == 16


def test_a_failed_run_is_named_and_the_others_are_kept(toy, tmp_path):
    pkg, data = toy
    study_file = pkg / "toy_study.py"
    study_file.write_text(study_file.read_text().replace(
        '    time.sleep(s["sleep"])', '    time.sleep(s["sleep"])\n    if s["gain"] == 3.0:\n'
        '        raise ValueError("gain 3 is broken")'))
    with pytest.raises(StudyError, match="4 of 16 runs failed.*gain/gain=3 seed 0: ValueError: gain 3 is broken"):
        _run(tmp_path / "s", data)
    assert len(RowStore(tmp_path / "s").load()) == 12


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_local_worker_asks_to_die_with_the_study_process():
    code = ("import ctypes, signal; from adlib.study.executors import _die_with_parent; _die_with_parent(); "
            "v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == signal.SIGTERM


TOY_FOLDS = '''
"""A toy cross-validated study: one task per (category, fold); the score depends on the fold."""
from adlib.study.provenance import Fingerprint
from adlib.study.spec import Cell, Study


def protocol(cfg):
    return {"folds": 3, "gain": 1.0}


def run(task):
    score = 0.5 + 0.1 * task.settings["gain"] + 0.01 * task.fold + 0.001 * task.seed
    return [{"category": c, "fold": task.fold, "metrics": {"f1": score}, "train_seconds": 0.0,
             "final_loss": None} for c in task.categories]


GRIDS = {"tiny": [Cell("gain", "gain=1", {}), Cell("gain", "gain=2", {"gain": 2.0})]}
STUDY = Study(paper="toy", grids=GRIDS, checks=(), protocol=protocol, run=run,
              unit="fold")
'''


def test_a_fold_study_runs_each_fold_once_and_summarises_over_seeds_and_folds(toy, tmp_path):
    pkg, data = toy
    (pkg / "toy_folds.py").write_text(TOY_FOLDS)
    study = load_study("toy_folds")
    args = dict(protocol=study.protocol(None), seeds=[0, 1], categories=["a"], dataset="labelled",
                data_root=data, out=tmp_path / "f", show_progress=False)
    first = run_study("toy_folds", "tiny", **args)
    assert first.ran == 2 * 2 * 3 and first.missing == 0
    rows = RowStore(tmp_path / "f").load()
    assert sorted({r["fold"] for r in rows}) == [0, 1, 2] and len({r["key"] for r in rows}) == 12
    summary = first.summary.loc["gain"]
    assert list(summary[("n", "folds")]) == [3, 3] and list(summary[("n", "seeds")]) == [2, 2]
    # the std runs over the 6 (seed, fold) values, as the paper's over folds does
    values = [0.6 + 0.01 * f + 0.001 * s for s in (0, 1) for f in range(3)]
    assert summary.loc["gain=1", ("f1", "std")] == pytest.approx(float(np.std(values, ddof=1)))
    assert "folds" in first.ablation_table("gain").columns
    again = run_study("toy_folds", "tiny", **args)
    assert (again.ran, again.skipped) == (0, 12)
    with pytest.raises(StudyError, match="folds"):
        run_study("toy_folds", "tiny", **{**args, "protocol": {"folds": 1, "gain": 1.0}})


def test_the_learning_sentence_says_plainly_when_a_run_did_not_learn():
    import pandas as pd

    from adlib.study.report import learning_sentence

    rows = pd.DataFrame({"config": ["A", "A", "untrained", "untrained"],
                         "image_auroc": [80.0, 70.0, 54.08, 54.08], "f1": [0.0, 0.0, 0.3, 0.3]})
    assert learning_sentence(rows, "A", "untrained").startswith("This run learned: image AUROC 75.00")
    flat = rows.assign(image_auroc=[54.5, 54.0, 54.08, 54.08])      # +0.17: not learning
    assert "did not learn" in learning_sentence(flat, "A", "untrained")
    assert "did not learn" in learning_sentence(rows, "A", "untrained", "f1")
    assert "not checked" in learning_sentence(rows, "A", "random init")


def test_a_grid_borrows_the_sanity_reference_its_checks_judge_learning_against():
    """Chapter 1's ``axes`` grid declares no random encoder; its claims 5-7 name one as their
    sanity reference. Without it they said "learning not checked"; the grid now takes that cell
    from the ``study`` grid (its rows are reused: same settings, same key). A grid whose checks
    cannot be judged there (``textures`` has no C-SE+LBR) takes nothing."""
    from adlib.study.engine import with_references

    study = load_study("cse_patch_svdd")
    axes = study.grid("axes")
    borrowed = with_references(study, axes)[len(axes):]
    assert [c.config for c in borrowed] == ["random init +C-SE+LBR"]
    assert borrowed[0] in study.grid("study")
    assert with_references(study, study.grid("textures")) == study.grid("textures")
    assert with_references(study, study.grid("study")) == study.grid("study")
