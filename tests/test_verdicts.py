"""The verdict box and the claims tables a reader sees: generated from claims rows by the
scoreboard's code, every claim present, verdicts coloured, references from the study rows."""

import importlib
import re

import pytest

from adlib.analysis.claims import ClaimCheck, check_claims
from adlib.chapters.registry import chapters
from adlib.study.results import RunRecord, load_claims
from adlib.book.verdicts import VERDICT_COLOURS, badge, chapter_claim_rows, claims_html, verdict_box


def _study_record(shift: float) -> dict:
    """A study record of RLR: MLKA+LCA beats the untrained model by ``shift`` points."""
    rows = [{"ablation": a, "config": c, "seed": s, "category": k,
             "image_auroc": 70.0 + bump + s + i, "pixel_auroc": 85.0 + bump}
            for a, c, bump in (("Table 3", "MLKA+LCA", shift), ("reference", "untrained", 0.0),
                               ("perturbation", "perturbation=none", shift - 4.0))
            for s in (0, 1, 2) for i, k in enumerate(("brick", "grass", "coins"))]
    checks = [ClaimCheck(7, order="MLKA+LCA > perturbation=none", sanity="untrained",
                         label="perturbation")]
    claims = check_claims("rlr", checks, rows, dataset="embedded", profile="study",
                          hardware="2x cpu", revision="abc1234")
    return RunRecord(paper="rlr", notebook="05_rlr.ipynb", profile="study", dataset="embedded",
                     data_root=None, categories=["brick", "grass", "coins"],
                     params={"grid": "study", "protocol": {"image_size": 128, "epochs": 12}},
                     seeds=[0, 1, 2], metrics={}, ablations=rows, claims=claims,
                     hardware={"cpu": "Test CPU", "cpu_count": 2}).to_dict()


def test_the_box_lists_every_claim_with_coloured_verdicts_and_the_references():
    box = str(verdict_box("rlr", [_study_record(10.0)]))
    claims = load_claims(paper="rlr")
    body = box.split("<tbody>")[1]
    numbers = re.findall(r"<td[^>]*><b>(\d+)</b>", body)
    assert sorted(set(map(int, numbers))) == sorted(c.number for c in claims)
    # claim 7 measured: reproduced (the +4 gap over 9 pairs), coloured; the rest not run yet
    seven = [row for row in body.split("<tr>") if re.search(r"<b>7</b>", row)][0]
    assert seven.count(VERDICT_COLOURS["reproduced"][1]) == 2 and "+4.00" in seven
    assert body.count(">not run yet<") == len(claims) - 1
    counts = box.split("<table")[0]   # the line above the table: 2 reproduced, 6 not run yet
    assert re.search(r"2&nbsp;<span[^>]*>reproduced<", counts)
    assert re.search(rf"{len(claims) - 1}&nbsp;<span[^>]*>not run yet<", counts)
    # the model beside its untrained self, from the rows: 80.0 vs 70.0 (+1 per seed, +1 per category)
    assert "RLR <b>82.0</b>" in box and "untrained <b>72.0</b>" in box
    assert "128 px" in box and "3 seeds" in box and "12 epochs" in box and "Test CPU" in box


def test_a_model_that_did_not_learn_is_flagged_in_the_box():
    box = str(verdict_box("rlr", [_study_record(0.0)]))
    assert ">did not learn<" in box and VERDICT_COLOURS["inconclusive: the model did not learn"][1] in box


def test_the_box_without_a_study_says_so():
    box = str(verdict_box("rlr", []))
    assert "No committed study yet" in box
    body = box.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count(">not run yet<") == len(load_claims(paper="rlr"))


def test_claims_table_keeps_five_columns_and_moves_the_details_into_a_dropdown():
    record = _study_record(10.0)
    table = str(claims_html(record["claims"], caption="this run"))
    main, detail = table.split("<details")
    assert main.count("<th style") == 5 and "abc1234" not in main and "abc1234" in detail
    assert "this run" in main
    empty = str(claims_html([r for r in record["claims"] if r["verdict"] == "not run yet"],
                            caption="this run", skip_not_run=True))
    assert "<table" not in empty and "no claim could be checked" in empty


def test_every_verdict_has_its_own_colour():
    backgrounds = {v: bg for v, (_, bg) in VERDICT_COLOURS.items()}
    assert backgrounds["reproduced"] != backgrounds["contradicted"] != backgrounds["inconclusive"]
    assert "not comparable" in badge("not comparable here", short=True)


@pytest.mark.parametrize("chapter", [c for c in chapters() if c.paper], ids=lambda c: c.key)
def test_the_box_names_cells_the_chapter_declares(chapter):
    """A renamed cell must not leave the box's references empty without a word."""
    assert chapter.headline, f"{chapter.key}: declare headline= in its CHAPTER"
    grids = importlib.import_module(chapter.module).GRIDS
    declared = {f"{cell.ablation}/{cell.config}" for cells in grids.values() for cell in cells}
    missing = [c for c in chapter.headline.values() if c not in declared]
    assert not missing, f"{chapter.key}: headline cells {missing} are in none of its grids"


# every chapter, the comparison (no paper) included
@pytest.mark.parametrize("chapter", chapters(), ids=lambda c: c.key)
def test_every_finding_a_chapter_states_still_holds_on_its_committed_study(chapter):
    from adlib.book.verdicts import stale_findings

    stale = stale_findings(chapter.key)
    assert not stale, (f"{chapter.key}: the committed study no longer supports {stale}; "
                       "rewrite these findings in its CHAPTER (and the prose around them)")


def test_a_finding_the_rows_contradict_is_marked_stale(monkeypatch):
    from dataclasses import replace

    import adlib.book.verdicts
    import adlib.chapters.registry
    from adlib.chapters.base import Finding
    from adlib.book.verdicts import findings_html, stale_findings

    rlr = adlib.chapters.registry.get_chapter("rlr")
    # the out-of-date sentence second: each list item is read on its own
    wrong = replace(rlr, findings=(Finding("Jitter helps.", "MLKA+LCA > perturbation=none"),
                                   Finding("Jitter hurts.", "perturbation=none > MLKA+LCA")))
    monkeypatch.setattr(adlib.book.verdicts, "get_chapter", lambda key: wrong)
    record = _study_record(10.0)
    record["params"]["grid"] = "study"
    assert stale_findings("rlr", [record]) == ["Jitter hurts."]
    assert str(findings_html("rlr", [record])).count("now says contradicted") == 1


def test_the_box_warns_when_the_committed_rows_are_stale(tmp_path):
    import json

    from adlib.study.report import results_dir
    from adlib.book.verdicts import stale_warning

    rows = [json.loads(line) for line in (results_dir("rlr") / "rows.jsonl").read_text().splitlines()[:3]]
    for i, row in enumerate(rows):
        row["key"] = f"k{i}"
    rows[0]["model_hash"] = "0000000000000000"   # made by code that is not the book's
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert stale_warning("rlr", tmp_path).startswith("Stale: ")
    rows = rows[1:]
    from adlib.study.load import load_study

    for row in rows:
        row["model_hash"] = load_study("rlr").model_hash()
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert stale_warning("rlr", tmp_path) == ""


def test_long_names_get_break_points_but_numbers_signs_and_fractions_do_not():
    """A fixed-width column wraps "perturbation=jitter" after its "=", not mid-word; a number
    (a sign, thousands separators, a fraction) stays whole."""
    from adlib.study.report import breakable

    assert breakable("perturbation=jitter", "|") == "perturbation=|jitter"
    assert breakable("a9ebf06,c9c5a2f", "|") == "a9ebf06,|c9c5a2f"
    assert breakable("ResNet18/ResNet18 + x", "|") == "ResNet18/|ResNet18 + x"
    assert breakable("ANG+FFM_MAAE", "|") == "ANG+|FFM_|MAAE"
    for whole in ("+1.25", "1,374,642", "1/16", "x = 3", "[+0.1, 2.3]"):
        assert breakable(whole, "|") == whole


def test_several_methods_per_category_read_as_a_long_table():
    """A row per (metric, method) and a column per category and the mean: as many columns as
    categories whatever the number of methods (12 columns once overflowed the page)."""
    import numpy as np

    from adlib.training.evaluation import CategoryResult
    from adlib.study.report import side_by_side

    def results(value):
        metrics = {"image_auroc": value, "pixel_auroc": value / 2}
        return [CategoryResult(cat, metrics, *[np.zeros(1)] * 4, test=None)
                for cat in ("brick", "coins")]

    table = side_by_side({"A": results(0.8), "B": results(0.6)}, ("image_auroc", "pixel_auroc"))
    assert list(table.columns) == ["brick", "coins", "mean"]
    assert list(table.index) == [("image AUROC", "A"), ("image AUROC", "B"),
                                 ("pixel AUROC", "A"), ("pixel AUROC", "B")]
    assert table.loc[("pixel AUROC", "B"), "mean"] == 30.0


@pytest.mark.parametrize("chapter", [c for c in chapters() if c.paper], ids=lambda c: c.key)
def test_the_committed_claims_are_judged_by_todays_code(chapter):
    """A record's claims are judged from its rows; after a change to how claims are judged,
    ``python -m adlib study <paper> --rejudge`` brings them up to date without training."""
    import json

    from adlib.study.jsonable import jsonable
    from adlib.study.report import committed_records, judge_record

    for record in committed_records(chapter.key):
        data = record.to_dict()
        fresh = json.loads(json.dumps(jsonable(judge_record(data))))
        stored = [(r["claim"], r.get("check"), r["level"], r["verdict"], r.get("ours"))
                  for r in data["claims"]]
        now = [(r["claim"], r.get("check"), r["level"], r["verdict"], r.get("ours")) for r in fresh]
        assert stored == now, (f"{chapter.key}: the committed claims are out of date; run "
                               f"python -m adlib study {chapter.key} --rejudge")


def test_rejudging_rewrites_the_claims_and_nothing_else(tmp_path):
    import json
    import shutil

    from adlib.resources import resource_path
    from adlib.study.report import rejudge

    folder = tmp_path / "rlr"
    shutil.copytree(resource_path("results", "rlr"), folder)
    path = next(folder.glob("rlr__study__study__*.json"))
    before = json.loads(path.read_text())
    before_claims = before["claims"]
    before["claims"] = [{**r, "verdict": "reproduced"} for r in before_claims]   # stale
    path.write_text(json.dumps(before))
    rejudge("rlr", folder)
    after = json.loads(path.read_text())
    assert [r["verdict"] for r in after["claims"]] == [r["verdict"] for r in before_claims]
    assert after["ablations"] == before["ablations"] and after["wall_time_s"] == before["wall_time_s"]
    assert "## Claims" in next(folder.glob("summary__study__*.md")).read_text()


def test_a_chapters_rows_from_several_records_are_adjusted_as_one_family():
    """Two records each hold one decisive check (p = 0.03): alone each passes; the chapter
    shows both, so Holm adjusts them together."""
    from adlib.analysis.claims import CONTRADICTED, INCONCLUSIVE, REPRODUCED

    def record(check, created):
        row = {"claim": "rlr #3", "check": check, "level": "image", "verdict": REPRODUCED,
               "raw_verdict": REPRODUCED, "p": 0.03, "dataset": "embedded",
               "paper_dataset": "mvtec_ad"}
        return {"profile": "study", "dataset": "embedded", "created": created, "claims": [row]}

    rows = chapter_claim_rows("rlr", [record("a", "1"), record("b", "2")])
    checked = [r for r in rows if r.get("check") in ("a", "b")]
    assert [r["verdict"] for r in checked] == [INCONCLUSIVE, INCONCLUSIVE]
    assert all(r["p_adjusted"] == pytest.approx(0.06) for r in checked)
    assert "2 claim checks" in checked[0]["adjustment"] and CONTRADICTED not in checked[0]["adjustment"]
