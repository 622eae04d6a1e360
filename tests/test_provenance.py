"""Provenance v2: the code hash follows imports and ignores docs, a fingerprint that moves makes
rows stale, a verified equivalence keeps them, a dirty tree is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adlib.study.provenance import EQUIVALENCES_FILE, linked_hashes
from adlib.study.load import load_study
from adlib.study.spec import StudyError
from adlib.study.engine import run_study
from adlib.study.verify import fingerprint, verify

REPO = Path(__file__).resolve().parents[1]

HASH_SCRIPT = textwrap.dedent('''
    import json, subprocess, sys
    from pathlib import Path
    import adlib
    from adlib.study import provenance as p
    assert Path(adlib.__file__).resolve().is_relative_to(Path.cwd().resolve()), adlib.__file__
    study, comparison = "adlib.chapters.rlr.study", "adlib.chapters.comparison.study"
    out = {"closure": p.import_closure(study), "clean": p.dirty_files(study),
           "c0": p.code_hash(comparison)}

    def edit(path, old, new):
        text = Path(path).read_text()
        assert old in text, (path, old)
        Path(path).write_text(text.replace(old, new, 1))
        p._parsed.cache_clear()

    out["h0"] = p.code_hash(study)
    edit("adlib/data/folders.py", '"""', '"""A docstring edit. ')       # module docstring
    edit("adlib/data/folders.py", "\\nimport ", "\\n# a comment edit\\nimport ")
    out["h_doc"] = p.code_hash(study)
    out["dirty"] = p.dirty_files(study)
    edit("adlib/data/sources.py", "\\ndef resolve_root", "\\nEXTRA = 1\\n\\n\\ndef resolve_root")
    out["h_data"] = p.code_hash(study)
    subprocess.run(["git", "checkout", "-q", "--", "."], check=True)
    edit("adlib/chapters/rlr/card.py", "\\nGRIDS = {", "\\nGRIDS = {\\n    \\"extra\\": REFERENCE,")
    edit("adlib/chapters/rlr/card.py", "One model per category beats", "A model per category beats")
    out["h_grid"] = p.code_hash(study)
    out["c_grid"] = p.code_hash(comparison)     # it imports rlr's study module for its detector
    subprocess.run(["git", "checkout", "-q", "--", "."], check=True)
    edit("adlib/chapters/rlr/study.py", "\\nMODEL_KEYS = (", "\\nMODEL_KEYS = (\\"extra\\", ")
    out["c_code"] = p.code_hash(comparison)
    subprocess.run(["git", "checkout", "-q", "--", "."], check=True)
    edit("adlib/analysis/claims.py", "\\nMIN_PAIRS = 6", "\\nMIN_PAIRS = 7")     # how rows are judged
    out["h_claims"] = p.code_hash(study)
    edit("adlib/study/provenance.py", "\\ndef code_hash", "\\nEXTRA = 1\\n\\n\\ndef code_hash")
    out["h_provenance"] = p.code_hash(study)    # how code is named, not how rows are made
    print(json.dumps(out))
''')


def test_the_hash_ignores_docs_and_grids_and_follows_an_imported_data_module(tmp_path):
    """A copy of adlib in its own git checkout: a docstring or comment edit keeps the hash
    (and is still a dirty file), an edit to adlib.data.sources changes it, a new grid does not,
    in the study's own module or in another chapter's study module that a study imports."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "adlib", repo / "adlib",
                    ignore=shutil.ignore_patterns("__pycache__", "results", "paper_tables"))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=repo, check=True)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-c", HASH_SCRIPT], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for module in ("adlib.data.folders", "adlib.data.sources", "adlib.data.embedded", "adlib.nn",
                   "adlib.chapters.rlr.model", "adlib.training.train", "adlib.training.evaluation"):
        assert module in out["closure"], module
    assert not any(m.startswith(("adlib.chapters.maae.study", "adlib.chapters.lea_net.model", "adlib.chapters.gpucheck"))
                   for m in out["closure"]), "another chapter's code must not enter RLR's hash"
    assert out["clean"] == []
    assert out["h_doc"] == out["h0"], "a docstring or comment edit changed the code hash"
    assert out["dirty"] == ["adlib/data/folders.py"]
    assert out["h_data"] != out["h0"], "an edit to adlib.data.sources left the hash unchanged"
    assert out["h_grid"] == out["h0"], "declaring another grid changed the code hash"
    # a study that imports another chapter's study module hashes its code, not its card
    assert out["c_grid"] == out["c0"], "another chapter's new grid changed the comparison's hash"
    assert out["c_code"] != out["c0"], "another chapter's code edit left the comparison's hash"
    # the claim checks, the registry and the run records judge and show rows; they make none
    assert not {"adlib.analysis.claims", "adlib.chapters.base", "adlib.chapters.registry",
                "adlib.study.results", "adlib.chapters.rlr.card"} & set(out["closure"])
    assert out["h_claims"] == out["h0"], "changing how claims are judged changed the code hash"
    assert "adlib.study.provenance" not in out["closure"]
    assert out["h_provenance"] == out["h0"], "an edit to the hashing code changed the code hash"


TOY_MODEL = "SCALE = 10.0\n"

TOY_STUDY = '''
import zlib

from adlib.study.provenance import Fingerprint
from adlib.study.spec import Cell, Study


def protocol(cfg):
    return {"gain": 1.0}


def run(task):
    import toyfp_model

    return [{"category": c, "final_loss": 1 / task.settings["gain"],
             "metrics": {"image_auroc": 50 + toyfp_model.SCALE * task.settings["gain"]
                         + zlib.crc32(f"{task.seed}/{c}".encode()) % 100 / 100}}
            for c in task.categories]


GRIDS = {"tiny": [Cell("gain", "gain=1", {}), Cell("gain", "gain=2", {"gain": 2.0})]}
STUDY = Study(paper="toyfp", grids=GRIDS, checks=(), protocol=protocol, run=run,
              fingerprint=Fingerprint(("gain=2",), "a"))
'''


@pytest.fixture
def toyfp(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "toyfp_study.py").write_text(TOY_STUDY)
    (pkg / "toyfp_model.py").write_text(TOY_MODEL)
    monkeypatch.syspath_prepend(str(pkg))
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name / "train" / "good").mkdir(parents=True)

    def reload():
        for name in ("toyfp_study", "toyfp_model"):
            sys.modules.pop(name, None)
        return load_study("toyfp_study")

    yield pkg, data, reload
    for name in ("toyfp_study", "toyfp_model"):
        sys.modules.pop(name, None)


def _study(out, data, **kwargs):
    return run_study("toyfp_study", "tiny", protocol={"gain": 1.0}, seeds=[0, 1],
                     categories=["a", "b"], dataset="embedded", data_root=data, out=out,
                     show_progress=False, **kwargs)


def test_a_verified_equivalence_keeps_rows_and_a_moved_fingerprint_makes_them_stale(toyfp, tmp_path):
    pkg, data, reload = toyfp
    out = tmp_path / "rows"
    study = reload()
    first = _study(out, data, fingerprint=fingerprint(study, data_root=data)["digest"])
    assert first.ran == 8 and all(r["fingerprint"] for r in map(json.loads, (out / "rows.jsonl").open()))

    # a refactor that changes the code but not what it computes: stale until verified
    (pkg / "toyfp_study.py").write_text(TOY_STUDY + "\n\ndef helper():\n    return 1\n")
    study = reload()
    assert len(_study(out, data, run=False).stale) == 8
    found = verify("toyfp_study", folder=out, data_root=data, allow_dirty=True, echo=lambda s: None)
    assert [v.equivalent for v in found] == [True] and found[0].largest_change == 0
    assert found[0].fingerprint_match is True and len(found[0].sampled) == 8
    record = json.loads((out / EQUIVALENCES_FILE).read_text())
    assert record["old_hash"] == first.rows["model_hash"].iloc[0] and record["new_hash"] == study.model_hash()
    linked = _study(out, data, run=False)
    assert linked.missing == 0 and not linked.stale

    # a change of what it computes: the fingerprint moves, verify says so, the rows stay stale
    (pkg / "toyfp_model.py").write_text("SCALE = 10.5\n")
    study = reload()
    lines = []
    moved = verify("toyfp_study", folder=out, data_root=data, allow_dirty=True, echo=lines.append)
    assert [v.equivalent for v in moved] == [False] and moved[0].fingerprint_match is False
    assert moved[0].largest_change == pytest.approx(1.0)   # gain 2 x 0.5
    assert any("STALE" in line and "fingerprint moved" in line for line in lines)
    assert len((out / EQUIVALENCES_FILE).read_text().splitlines()) == 1   # nothing appended
    stale = _study(out, data, run=False)
    assert stale.missing == 8 and len(stale.stale) == 8


def test_a_fingerprint_moved_by_the_environment_is_equivalent_when_the_old_revision_agrees(
        toyfp, tmp_path, monkeypatch):
    """MAAE's fingerprint at its rows' own revision, printed today, differs from the one its rows
    recorded: the environment moved it. When that revision, rerun here, gives the current code's
    numbers for every sampled row, the rows hold; without such reruns a moved fingerprint is
    still STALE (the test above)."""
    import adlib.study.verify as verify_module

    pkg, data, reload = toyfp
    out = tmp_path / "rows"
    reload()
    _study(out, data, fingerprint="printed-elsewhere-long-ago")
    (pkg / "toyfp_study.py").write_text(TOY_STUDY + "\n\ndef helper():\n    return 1\n")
    study = reload()
    rerun_here = lambda paper, tasks, workers, echo: [  # noqa: E731  the old revision, rerun here
        load_study("toyfp_study").run(task) for task, _ in tasks]
    monkeypatch.setattr(verify_module, "_baselines", rerun_here)
    lines = []
    found = verify("toyfp_study", folder=out, data_root=data, allow_dirty=True, echo=lines.append)
    assert [v.equivalent for v in found] == [True] and found[0].fingerprint_match is False
    assert any("EQUIVALENT" in line and "the environment's, not the code's" in line for line in lines)
    assert json.loads((out / EQUIVALENCES_FILE).read_text())["new_hash"] == study.model_hash()

    # the same moved fingerprint where the old revision gives other numbers: STALE
    (out / EQUIVALENCES_FILE).unlink()
    shifted = lambda paper, tasks, workers, echo: [  # noqa: E731
        [dict(r, metrics={k: v + 1 for k, v in r["metrics"].items()}) for r in rows]
        for rows in rerun_here(paper, tasks, workers, echo)]
    monkeypatch.setattr(verify_module, "_baselines", shifted)
    assert [v.equivalent for v in verify("toyfp_study", folder=out, data_root=data,
                                         allow_dirty=True, echo=lambda s: None)] == [False]


def test_an_equivalence_from_another_torch_reads_unverified_here_not_stale():
    import torch

    records = [{"old_hash": "a", "new_hash": "b", "torch": torch.__version__, "threads": 1},
               {"old_hash": "z", "new_hash": "a", "torch": "0.0.1", "threads": 1}]
    assert linked_hashes("b", records) == {"b": "current", "a": "verified", "z": "unverified here"}
    assert linked_hashes("c", records) == {"c": "current"}


def test_a_study_from_a_dirty_tree_is_refused_and_allowed_rows_are_marked(toyfp, tmp_path, monkeypatch):
    _, data, reload = toyfp
    reload()
    monkeypatch.setattr("adlib.study.engine.dirty_files", lambda module: ["adlib/chapters/rlr/model.py"])
    with pytest.raises(StudyError, match=r"uncommitted changes.*adlib/chapters/rlr/model.py.*--allow-dirty"):
        _study(tmp_path / "refused", data, refuse_dirty=True)
    assert not (tmp_path / "refused" / "rows.jsonl").exists()
    allowed = _study(tmp_path / "allowed", data)
    assert allowed.ran == 8 and allowed.rows["dirty"].all()


def test_every_paper_declares_a_fingerprint_whose_cells_exist():
    from adlib.chapters.registry import PAPERS

    for key in PAPERS:
        study = load_study(key)
        assert study.fingerprint is not None, key
        configs = {c.config for cells in study.grids.values() for c in cells}
        assert set(study.fingerprint.cells) <= configs, key


def test_a_legacy_equivalence_links_only_the_revisions_it_checked():
    """Rows from before provenance v2 (no fingerprint field) are grouped by hash and revision:
    their hash left modules out, so one revision's check says nothing of another's rows."""
    import torch

    from adlib.study.provenance import here, row_status
    from adlib.study.verify import _groups

    env = here()
    record = {"old_hash": "old", "new_hash": "new", "revisions": ["abc1234"],
              "torch": torch.__version__, "threads": 1, "libraries": env["libraries"]}
    status = row_status("new", [record])
    checked = {"key": "1", "model_hash": "old", "revision": "abc1234"}
    other = {"key": "2", "model_hash": "old", "revision": "abc1234-dirty"}
    fresh = {"key": "3", "model_hash": "old", "revision": "abc1234", "fingerprint": None}
    assert status(checked) == "verified" and status(other) is None
    assert status({"model_hash": "new"}) == "current"
    groups = _groups([checked, other, fresh], row_status("new", []))
    assert set(groups) == {("old", "abc1234"), ("old", "abc1234-dirty"), ("old", None)}


CURVE_RUNNER = '''

def run_with_curve(task):
    """Scored after every epoch when the task asks: training epoch by epoch ends a little away
    from one fit."""
    rows = run(task)
    if task.test_curve:
        for row in rows:
            row["metrics"]["image_auroc"] += 0.5
            row["test_curve"] = {"epoch": [0, 1], "image_auroc": [50.0, row["metrics"]["image_auroc"]]}
    return rows


run_with_curve.curves = True   # what DetectorRun declares: run honours Task.test_curve

'''


def test_verify_remakes_rows_made_with_test_curves_by_the_curve_runner(toyfp, tmp_path):
    """Rows made with a test curve are rerun with one: rerun without it they would move
    (chapter 1's rows moved 12.7 points so and were rerun bit for bit with the curve)."""
    pkg, data, reload = toyfp
    source = (TOY_STUDY.replace("\nGRIDS = ", CURVE_RUNNER + "\nGRIDS = ")
              .replace("run=run,", "run=run_with_curve,"))
    (pkg / "toyfp_study.py").write_text(source)
    out = tmp_path / "rows"
    reload()
    assert _study(out, data, test_curve=True).ran == 8
    (pkg / "toyfp_study.py").write_text(source + "\n\ndef helper():\n    return 1\n")
    reload()
    found = verify("toyfp_study", folder=out, data_root=data, allow_dirty=True, echo=lambda s: None)
    assert [v.equivalent for v in found] == [True] and found[0].largest_change == 0
