"""The generated pages: scoreboard from run records, status page, table of contents."""

import json
import re

from adlib.book import builder as book
from adlib.analysis.claims import ClaimCheck, check_claims
from adlib.study.results import RunRecord

CHECKS = [ClaimCheck(1, absolute={"table": 1, "method": "Ours", "category": "mean"},
                     config="MLKA+LCA", label="MVTec AD mean"),
          ClaimCheck(7, order="perturbation=jitter > perturbation=none", label="perturbation")]


def _record(tmp_path, profile, ours, folder, seeds=(0,)):
    rows = [{"ablation": a, "config": c, "seed": s, "category": k,
             "image_auroc": ours + bump + s, "pixel_auroc": ours + bump}
            for a, c, bump in (("Table 3", "MLKA+LCA", 0.0), ("p", "perturbation=jitter", 0.0),
                               ("p", "perturbation=none", -5.0))
            for s in seeds for k in ("brick", "grass")]
    claims = check_claims("rlr", CHECKS, rows, dataset="embedded", profile=profile,
                          hardware="2x cpu", revision="abc")
    rec = RunRecord(paper="rlr", notebook="05_rlr.ipynb", profile=profile, dataset="embedded",
                    data_root=None, categories=["brick"], params={}, seeds=list(seeds),
                    metrics={"brick": {"image_auroc": ours}}, claims=claims)
    return rec.save(tmp_path / folder)


def _html_rows(text: str) -> list[list[str]]:
    """The body rows of an HTML table as lists of cell texts (tags removed)."""
    body = text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_scoreboard_prefers_study_records_and_lists_every_claim(tmp_path):
    _record(tmp_path, "cpu", 71.0, "book")
    _record(tmp_path, "study", 83.5, "study", seeds=(0, 1, 2))
    page = book.write_scoreboard(tmp_path / "scoreboard.md", [tmp_path / "study", tmp_path / "book"])
    text = page.read_text()
    rlr = text.split("## RLR")[1].split("\n## ")[0]
    main, detail = rlr.split("<details", 1)
    rows, details = _html_rows(main), _html_rows(detail)
    first = rows[0]   # claim 1, MVTec AD mean, image: the study's number, not the cpu run's
    assert first[0].startswith("1 MVTec") and "84.5" in first[3] and first[4] == "not comparable here"
    assert "71" not in " ".join(first)
    assert details[0][4].startswith("study") and details[0][6] == "abc"
    # one row per claim, check and level: claim 1 image + pixel, claim 7 image + pixel
    measured = [(row, more) for row, more in zip(rows, details) if more[6] == "abc"]
    assert len(measured) == 4
    seven = [(row, more) for row, more in measured if "perturbation" in row[1]]
    assert len(seven) == 2 and all(row[4] == "reproduced" and more[2] == "6" for row, more in seven)
    # every claim of claims.md gets a row, checked or not, and the counts table adds them up
    assert text.count(">not run yet<") >= 30
    assert "Run records read" not in text and "2 run records read" in text
    counts = _html_rows(text.split("## ")[0])
    total = {row[0]: int(row[-1]) for row in counts}
    assert total["reproduced"] >= 2 and total["not run yet"] >= 30


def test_scoreboard_ignores_json_that_is_not_a_run_record(tmp_path):
    (tmp_path / "junk.json").write_text(json.dumps({"hello": 1}))
    text = book.write_scoreboard(tmp_path / "s.md", [tmp_path]).read_text()
    assert "0 run records read" in text


def test_status_page_lists_times_versions_and_revision(tmp_path):
    timings = [{"notebook": "00_data_and_metrics.ipynb", "profile": "cpu", "seconds": 61.2}]
    text = book.write_status(tmp_path / "status.md", timings).read_text()
    assert "| 00_data_and_metrics.ipynb | cpu | 61.2 |" in text
    assert "| torch |" in text and "revision" in text
    assert "No GPU report yet" in book.write_status(tmp_path / "s.md", timings,
                                                    gpu_report=tmp_path / "none.md").read_text()
    (tmp_path / "gpucheck.md").write_text("| chapter | train items/s |\n|---|---|\n| 05 RLR | 812.5 |\n")
    with_gpu = book.write_status(tmp_path / "s.md", timings, gpu_report=tmp_path / "gpucheck.md")
    assert "| 05 RLR | 812.5 |" in with_gpu.read_text() and "No GPU report" not in with_gpu.read_text()


def test_toc_lists_chapters_in_order(tmp_path):
    toc = book.write_toc(tmp_path, ["00_a.ipynb", "01_b.ipynb"]).read_text()
    assert toc.index("chapters/00_a") < toc.index("chapters/01_b") < toc.index("scoreboard")
    assert toc.index("file: deviations") < toc.index("file: bibliography") < toc.index("file: api")


def test_intro_and_api_include_the_chapter_lists_written_from_the_registry(tmp_path):
    from pathlib import Path

    from adlib.chapters.registry import chapters

    written = {p.name: p.read_text() for p in book.write_chapter_pages(tmp_path)}
    book_dir = Path(book.REPO) / "book"
    for page, parts in (("intro.md", ("chapters.md", "paper_runs.md")), ("api.md", ("api_chapters.md",))):
        for part in parts:
            assert f"```{{include}} _generated/{part}" in (book_dir / page).read_text(), (page, part)
    for c in [c for c in chapters() if c.notebook]:   # a declared study whose chapter is not written yet is not in the book
        assert f"| {c.number} |" in written["chapters.md"] and c.summary in written["chapters.md"]
        assert all(args in written["paper_runs.md"] for args in c.paper_runs)
        for module in (c.model, c.study):
            assert module is None or f".. automodule:: {module}\n" in written["api_chapters.md"]


def test_executing_notebooks_leaves_the_callers_environment_alone(tmp_path, monkeypatch):
    import os

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("profile = 'cpu'\noutput_dir = '.'")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "nbs").mkdir()
    nbformat.write(nb, tmp_path / "nbs" / "00_tiny.ipynb")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("ADLIB_PROGRESS", raising=False)
    timings = book.execute_notebooks(tmp_path / "out", profile="smoke",
                                     paths=[tmp_path / "nbs" / "00_tiny.ipynb"])
    assert [t["notebook"] for t in timings] == ["00_tiny.ipynb"]
    assert os.environ["MPLBACKEND"] == "Agg" and "ADLIB_PROGRESS" not in os.environ
