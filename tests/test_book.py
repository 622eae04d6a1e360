"""The book: every notebook executes under ``smoke``, the book builds with warnings as errors,
and a built chapter shows its figures and rendered maths in a real (headless) browser.

The notebooks run once per session (module fixture) into a temporary copy of ``book/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from adlib import book

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


# --- executed book (one smoke run for the module) ---------------------------------------

@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Execute every notebook under smoke into a copy of book/ and build it."""
    root = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "intro.md", "api.md"):
        shutil.copy2(REPO / "book" / name, root / name)
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
    assert "adlib.metrics" in (html / "api.html").read_text()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                  "--virtual-time-budget=8000"]


@pytest.mark.book
def test_chapter_page_shows_figures_and_rendered_maths_in_chromium(smoke_book, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("ADLIB_REQUIRE_BROWSER"):
            pytest.fail("headless Chromium is required here: apt-get install chromium")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    assert smoke_book["html"] is not None, "book did not build"
    page = smoke_book["html"] / "chapters" / (NOTEBOOKS[0].stem + ".html")
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=180).stdout
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
