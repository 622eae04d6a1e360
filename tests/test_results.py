"""adlib.study.results: run records, paper tables, claims, and the paper-vs-us verdicts."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adlib.study import results as R
from adlib.study.results import RunRecord, RunRecordError



def _record(**overrides) -> RunRecord:
    fields = {
        "paper": "cse_patch_svdd",
        "notebook": "notebooks/cse_patch_svdd.ipynb",
        "profile": "smoke",
        "dataset": "embedded",
        "data_root": None,
        "categories": ("bottle", "cable"),
        "params": {"image_size": 64, "epochs": np.int64(2), "lambda_": np.float32(0.5),
                   "r": 16, "layers": (5, 6)},
        "seeds": [0, 1],
        "metrics": {"bottle": {"image_auroc": 91.25, "pixel_auroc": [88.0, 90.0]},
                    "cable": {"image_auroc": np.float64(80.5), "pixel_auroc": float("nan")},
                    "mean": {"image_auroc": 85.875}},
        "ablations": [{"attention": "C-SE", "seed": 0, "image_auroc": 91.0}],
        "hardware": {"cpu": "Test CPU", "cpu_count": 2},
        "wall_time_s": 12.5,
        "adlib_revision": "abc1234",
        "created": "2025-01-02T03:04:05+00:00",
        "notes": "unit test",
    }
    fields.update(overrides)
    return RunRecord(**fields)


# ---------------------------------------------------------------------------- run records


def test_a_saved_record_is_readable_by_everyone_the_umask_allows(tmp_path):
    """mkstemp's temporary file is private (0600); the record it becomes is not."""
    import os

    mask = os.umask(0o022)
    try:
        path = _record().save(tmp_path)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644

def test_run_record_round_trip(tmp_path):
    record = _record()
    path = record.save(tmp_path)
    assert path.name == "cse_patch_svdd__smoke__20250102T030405Z.json"
    loaded = RunRecord.load(path)
    assert loaded == record
    # JSON-native types after construction: tuples -> lists, numpy -> float/int, NaN -> null
    assert loaded.categories == ["bottle", "cable"]
    assert loaded.params["layers"] == [5, 6]
    assert type(loaded.params["epochs"]) is int
    assert loaded.metrics["cable"]["pixel_auroc"] is None
    raw = json.loads(path.read_text())
    assert raw["metrics"]["bottle"]["pixel_auroc"] == [88.0, 90.0]
    assert "NaN" not in path.read_text()


def test_save_never_overwrites_and_leaves_no_temp_files(tmp_path):
    record = _record()
    first, second = record.save(tmp_path), record.save(tmp_path)
    assert first != second and second.name.endswith("-2.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])


def test_defaults_fill_provenance():
    record = RunRecord(paper="rlr", notebook="nb", profile="smoke", dataset="embedded",
                       data_root="/data/mvtec", categories=["bottle"], params={}, seeds=0,
                       metrics={"bottle": {"image_auroc": 50.0}})
    assert record.seeds == [0]
    assert record.hardware["cpu_count"] == os.cpu_count()
    assert record.adlib_revision
    assert record.created.endswith("+00:00")


def test_load_bad_json_and_missing_keys(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"paper": "rlr", ')
    with pytest.raises(RunRecordError, match="not valid JSON"):
        RunRecord.load(broken)

    data = _record().to_dict()
    del data["metrics"], data["seeds"]
    data["colour"] = "blue"
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(data))
    with pytest.raises(RunRecordError) as err:
        RunRecord.load(partial)
    assert "missing keys ['seeds', 'metrics']" in str(err.value)
    assert "unexpected keys ['colour']" in str(err.value)
    assert "partial.json" in str(err.value)

    with pytest.raises(RunRecordError, match="JSON object"):
        RunRecord.from_json("[1, 2]")
    with pytest.raises(RunRecordError, match="cannot read"):
        RunRecord.load(tmp_path / "absent.json")


def test_bad_metric_values_are_rejected():
    with pytest.raises(RunRecordError, match=r"metrics\['bottle'\]\['image_auroc'\]"):
        _record(metrics={"bottle": {"image_auroc": "high"}})
    with pytest.raises(RunRecordError, match="must be a dict"):
        _record(metrics={"bottle": 0.9})
    with pytest.raises(RunRecordError, match="paper"):
        _record(paper="")


def test_load_run_records_and_frame(tmp_path):
    _record(created="2025-01-02T03:04:05+00:00").save(tmp_path / "cse")
    _record(paper="rlr", profile="cpu", created="2025-01-01T00:00:00+00:00",
            metrics={"mean": {"image_auroc": 70.0}}).save(tmp_path / "rlr")
    (tmp_path / "rlr" / "history.json").write_text("[]")  # not a run record

    with pytest.raises(RunRecordError):
        R.load_run_records(tmp_path)
    records = R.load_run_records(tmp_path, strict=False)
    assert [r.paper for r in records] == ["rlr", "cse_patch_svdd"]  # sorted by created
    assert len(R.load_run_records(str(tmp_path / "cse" / "*.json"))) == 1

    frame = R.records_frame(records)
    assert len(frame) == 1 + 5  # rlr: 1 metric; cse: 2 + 2 + 1 metrics
    pixel = frame[(frame.category == "bottle") & (frame.metric == "pixel_auroc")].iloc[0]
    assert pixel["value"] == 89.0
    assert pixel["std"] == pytest.approx(np.std([88.0, 90.0], ddof=1))
    assert pixel["n"] == 2
    undefined = frame[(frame.category == "cable") & (frame.metric == "pixel_auroc")].iloc[0]
    assert math.isnan(undefined["value"]) and undefined["n"] == 0
    assert frame["hardware"].iloc[0] == "2× Test CPU (cpu)"


# ---------------------------------------------------------------------------- provenance

def test_hardware_info_and_label():
    info = R.hardware_info("cpu")
    for key in ("cpu", "cpu_count", "python", "platform", "torch", "gpu", "device"):
        assert key in info
    assert info["cpu_count"] == os.cpu_count()
    assert info["device"] == "cpu"
    assert R.hardware_label({"gpu": "NVIDIA H100", "device": "cuda"}) == "NVIDIA H100 (cuda)"
    assert R.hardware_label({"gpu": "NVIDIA H100", "cpu": "EPYC", "cpu_count": 16,
                             "device": "cpu"}) == "16× EPYC (cpu)"
    assert R.hardware_label("Colab T4") == "Colab T4"


def test_adlib_revision_never_fails(monkeypatch):
    revision = R.adlib_revision()
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", revision) or revision == R._package_version()
    monkeypatch.setenv("PATH", "")  # no git at all
    assert R.adlib_revision() == R._package_version()


# ---------------------------------------------------------------------------- paper tables

def test_paper_tables_loader():
    tables = R.load_paper_tables()
    assert len(tables) == 1351
    assert list(tables.columns) == list(R.PAPER_TABLE_COLUMNS)
    assert set(tables["paper"]) == {"maae", "noise_to_norm", "lea_net", "rlr"}
    # a folder path finds the CSV inside it
    assert R.load_paper_tables(R.PAPER_TABLES_DIR).equals(tables)


def test_known_paper_numbers():
    rows = R.paper_numbers("rlr", table="Table 1", method="Ours", category="mean")
    assert sorted(rows["metric"]) == ["image_auroc", "pixel_auroc"]
    value = R.paper_value("rlr", table=1, method="Ours", metric="image_auroc",
                          category="mean", dataset="mvtec_ad")
    assert value == 98.6
    # and the claims file states the same number for the same claim
    assert "98.6/98.5" in R.get_claim("rlr", 1).text
    # LEA-Net keeps the 5-fold std beside the mean
    retina = R.paper_numbers("lea_net", table=3, method="ResNet18", category="retina")
    assert retina[["value", "std"]].iloc[0].tolist() == [64.2, 9.7]   # the paper prints 0.642 ± 0.097: F1 in % here


def test_paper_numbers_errors_name_the_fix():
    with pytest.raises(LookupError, match="available: .*'Ours'"):
        R.paper_numbers("rlr", table=1, method="ours")
    with pytest.raises(LookupError, match="missing in the paper text"):
        R.paper_numbers("cse_patch_svdd")
    with pytest.raises(LookupError, match="exactly one"):
        R.paper_value("rlr", table=1, method="Ours", category="mean")
    with pytest.raises(KeyError, match="unknown paper"):
        R.paper_key("patchcore")


def test_one_key_per_paper_and_no_guessing():
    assert R.PAPERS == ("cse_patch_svdd", "maae", "noise_to_norm", "lea_net", "rlr")
    assert set(R.load_paper_tables()["paper"]) <= set(R.PAPERS)
    assert {c.paper for c in R.load_claims()} == set(R.PAPERS)
    for near_miss in ("cse_patchsvdd", "leanet", "rlr_learnable_reference"):
        with pytest.raises(KeyError, match="the paper keys are cse_patch_svdd, maae"):
            R.paper_key(near_miss)


# ---------------------------------------------------------------------------- claims

def test_load_claims_counts_and_text():
    claims = R.load_claims()
    counts = {p: sum(c.paper == p for c in claims) for p in R.PAPERS}
    assert counts == {"cse_patch_svdd": 7, "maae": 6, "noise_to_norm": 6, "lea_net": 6, "rlr": 7}
    for paper in R.PAPERS:
        numbers = [c.number for c in claims if c.paper == paper]
        assert numbers == list(range(1, counts[paper] + 1))
    # sub-bullets and tables stay with their claim
    assert "+22.28/+9.55" in R.get_claim("noise_to_norm", 5).text
    leanet = R.get_claim("lea_net", 1)
    assert "| Wood | 0.560 | 0.719 | 0.652 | 0.762 |" in leanet.text
    assert leanet.summary.startswith("Layer-wise external attention")
    assert "Dataset" not in leanet.summary
    assert R.get_claim("lea_net", 2).text.startswith("The biggest gain is Potato")
    assert [c.number for c in R.load_claims(paper="cse_patch_svdd")] == list(range(1, 8))
    assert R.get_claim("rlr", 3).label == "rlr #3"


def test_study_results_being_written_do_not_make_the_revision_dirty(tmp_path):
    """A study appends rows to adlib/resources/results/ as it runs; those are output, so a tree
    whose only changes are there still names its commit. Any code change does make it dirty."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    shutil.copytree(Path(R.__file__).parents[1], repo / "adlib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.jsonl"))
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    code = f"import sys; sys.path.insert(0, {str(repo)!r}); import adlib.study.results as r; print(r.adlib_revision())"
    revision = lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                      check=True).stdout.strip()
    clean = revision()
    assert re.fullmatch(r"[0-9a-f]{7,40}", clean)
    (repo / "adlib" / "resources" / "results" / "README.md").write_text("rows appended\n")
    assert revision() == clean
    (repo / "adlib" / "analysis" / "metrics.py").write_text("# changed\n")
    assert revision() == clean + "-dirty"
