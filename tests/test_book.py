"""The book: every notebook executes under ``smoke``, the book builds with warnings as errors,
and a built chapter shows its figures and rendered maths in a real (headless) browser.

The notebooks run once per session (module fixture) into a temporary copy of ``book/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

from adlib.book import builder as book
from adlib.book import pageaudit

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = book.notebook_paths(REPO / "notebooks")
REQUIRED_PARAMETERS = ("profile", "dataset", "data_root", "categories", "image_size", "epochs",
                       "batch_size", "device", "seed", "output_dir")


# --- notebook hygiene (cheap) ------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_starts_with_badge_install_and_parameters(path):
    nb = nbformat.read(path, as_version=4)
    assert "colab.research.google.com" in nb.cells[0].source, "first cell: Colab badge"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "import adlib" in code[0].source and "pip" in code[0].source, \
        "first code cell: install adlib only when it is missing"
    params = code[1]
    assert "parameters" in params.metadata.get("tags", []), "second code cell: tagged parameters"
    for name in REQUIRED_PARAMETERS:
        assert re.search(rf"^{name}\s*=", params.source, re.M), f"parameter {name} missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cells_are_hidden_and_a_paper_chapter_opens_with_its_verdict_box(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    assert "remove-cell" in tags[0] and "remove-cell" in tags[1], "install and parameters: remove-cell"
    setup = [t for c, t in zip(code, tags) if "setup(" in c.source][0]
    assert "remove-input" in setup, "the setup cell shows its output (the run), not its code"
    assert "save_record" in code[-1].source and "remove-cell" in tags[-1], "run record: remove-cell"
    paper = book.chapter_of(path)
    if paper is not None and paper.paper:
        assert f'verdict_box("{paper.key}")' in code[2].source and "remove-input" in tags[2], \
            "third code cell: the verdict box, input removed, right under the title"
        before = [c for c in nb.cells[:nb.cells.index(code[2])] if c.cell_type == "markdown"]
        assert len(before) == 1 and before[0].source.count("\n") <= 3, \
            "only the badge and the title above the verdict box"


# --- executed book (one smoke run for the module) ---------------------------------------

@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Execute every notebook under smoke into a copy of book/ and build it."""
    root = tmp_path_factory.mktemp("book")
    book.copy_book_sources(root)
    records = root / "_generated" / "records"
    errors, timings = {}, []
    for path in NOTEBOOKS:
        try:
            timings += book.execute_notebooks(root / "chapters", profile="smoke",
                                              records_dir=records, only=[path.stem])
        except Exception as exc:  # reported per notebook by the test below
            errors[path.stem] = exc
    built = None
    if not errors:
        book.write_pages(root, timings, records)
        book.vendor_mathjax(root)
        built = book.build_html(root, warnings_as_errors=True)
    return {"root": root, "errors": errors, "records": records, "html": built,
            "timings": timings}


@pytest.mark.book
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_under_smoke_and_writes_a_run_record(smoke_book, path):
    assert path.stem not in smoke_book["errors"], smoke_book["errors"].get(path.stem)
    records = [json.loads(p.read_text()) for p in smoke_book["records"].glob("*.json")]
    mine = [r for r in records if r.get("notebook") == path.name]
    assert mine, f"{path.name} wrote no run record into output_dir"
    rec = mine[0]
    assert rec["profile"] == "smoke"
    for key in ("paper", "dataset", "categories", "params", "seeds", "metrics", "hardware",
                "wall_time_s", "adlib_revision"):
        assert key in rec, f"run record lacks {key}"


@pytest.mark.book
def test_book_builds_with_warnings_as_errors(smoke_book):
    assert not smoke_book["errors"], "a notebook failed; see the per-notebook test"
    html = smoke_book["html"]
    assert (html / "index.html").exists()
    for t in smoke_book["timings"]:
        assert (html / "chapters" / (Path(t["notebook"]).stem + ".html")).exists()
    for page in ("scoreboard", "status", "api", "deviations"):
        assert (html / f"{page}.html").exists(), page
    scoreboard = (html / "scoreboard.html").read_text()
    assert "Reproduction scoreboard" in scoreboard and "RLR" in scoreboard
    assert "adlib.analysis.metrics" in (html / "api.html").read_text()


_chromium = pageaudit.browser
CHROMIUM_FLAGS = pageaudit.FLAGS


def _need_browser() -> None:
    if _chromium() is None:
        if os.environ.get("ADLIB_REQUIRE_BROWSER"):
            pytest.fail("headless Chromium is required here: apt-get install chromium")
        pytest.skip("no chromium on this machine (apt-get install chromium)")


@pytest.mark.book
def test_every_page_reads_as_a_reader_needs_in_chromium(smoke_book):
    """At 1280 x 900: each paper chapter's verdict box on the first screen; no table wider than
    its column; no setup code; no table cell with more than 3 decimals (chapters, scoreboard)."""
    _need_browser()
    assert smoke_book["html"] is not None, "book did not build"
    shots = os.environ.get("ADLIB_SCREENSHOT_DIR")
    found = []
    for page in pageaudit.book_pages(smoke_book["html"]):
        chapter = book.chapter_of(page)
        result = pageaudit.audit(page)
        found += pageaudit.problems(page, result, needs_box=chapter is not None and chapter.paper)
        if shots:
            pageaudit.screenshot(page, Path(shots) / f"{page.stem}.png")
    assert not found, "\n".join(found)


@pytest.mark.book
def test_chapter_page_shows_figures_and_rendered_maths_in_chromium(smoke_book, tmp_path):
    _need_browser()
    browser = _chromium()
    assert smoke_book["html"] is not None, "book did not build"
    page = smoke_book["html"] / "chapters" / (NOTEBOOKS[0].stem + ".html")
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    for attempt in range(2):   # a loaded machine has made Chromium print nothing once: try again
        dumped = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                                text=True, timeout=180)
        dom = dumped.stdout
        if "<main" in dom:
            break
    assert "<main" in dom, f"Chromium printed no page (stderr: {dumped.stderr[-500:]!r})"
    shot = Path(os.environ.get("ADLIB_SCREENSHOT_DIR", tmp_path)) / "chapter.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'profile2'}",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 10_000, "screenshot missing or blank"

    main = dom.split('<main', 1)[-1]
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', main)
    figures = [s for s in sources if s and ("data:image" in s or s.endswith(".png"))]
    assert len(figures) >= 2, f"expected the chapter's figures as images, found {sources[:5]}"
    assert "mjx-container" in dom, "MathJax did not render any formula"
    text = re.sub(r"<script.*?</script>", "", main, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    assert "\\[" not in text and "$$" not in text, "raw TeX left on the page"


def test_the_page_audit_catches_what_a_reader_would_trip_over(tmp_path):
    """The audit itself, on a page made to fail it: a verdict box below the first screen, a
    table wider than its column, a word broken mid-word in a narrow column (one wrapped at
    its break point is fine), visible setup code, six decimals and a 1,400 px figure shown in
    a 600 px column; the page named by a relative path, as a reader types it."""
    from PIL import Image

    _need_browser()
    Image.new("RGB", (1400, 300), "white").save(tmp_path / "wide.png")
    page = tmp_path / "page.html"
    page.write_text(
        "<html><body><main style='width:600px'>"
        "<div class='cell_input'><pre>pip install adlib</pre></div>"
        "<div style='height:1200px'></div><div class='adlib-verdict-box'>box</div>"
        "<div><table><tr><td style='min-width:900px'>1.400000</td></tr></table></div>"
        "<table style='table-layout:fixed;width:60px'><tr><td style='overflow-wrap:anywhere'>"
        "inconclusive:</td><td>perturbation=<wbr>jitter</td></tr></table>"
        "<div class='cell_output'><pre style='width:500px;overflow:auto'>" + "x" * 300 + "</pre></div>"
        "<div class='cell_output'><img src='wide.png' style='max-width:100%'></div>"
        "</main></body></html>")
    result = pageaudit.audit(os.path.relpath(page))
    found = pageaudit.problems(page, result, needs_box=True)
    assert result["box_top"] > pageaudit.HEIGHT
    assert any("verdict box" in f for f in found) and any("setup code" in f for f in found)
    assert any("px in a" in f for f in found) and any("1.400000" in f for f in found)
    assert any("scrolls sideways" in f for f in found)
    assert [w.split(": ", 1)[1] for w in result["split"]] == ["inconclusive:"]
    assert any("words broken across lines" in f for f in found)
    assert [f["scale"] for f in result["shrunk"]] == [0.43]
    assert any("shown at 43% of its size" in f for f in found)
