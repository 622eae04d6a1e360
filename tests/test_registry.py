"""The registry drives the book: a chapter is one module declaring ``CHAPTER`` (and its study),
and the profiles, the GPU check, the book's contents and the scoreboard pick it up with no edit
to a central file. The toy chapter lives in ``tmp_path`` and registers through ADLIB_CHAPTERS."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from adlib.book import builder as book
from adlib.chapters.base import Chapter
from adlib.chapters.registry import CHAPTERS_ENV, chapters, get_chapter

REPO = Path(__file__).resolve().parents[1]

TOY = '''
"""A toy chapter outside the package."""

from adlib.chapters.base import Chapter, Deviation
from adlib.study.spec import Cell, Study

CHAPTER = Chapter(key="toy_chapter", title="Toy: a chapter from a test", notebook=NOTEBOOK,
                  short="Toy", summary="a chapter that is one module", model=None,
                  settings={"width": 3}, profiles={"paper": {"width": 30, "grid": "paper"}},
                  paper_runs=("-p data_root /data/toy",), gpucheck="gpu_check")


def protocol(cfg):
    return {"dataset": cfg.dataset, "image_size": cfg.image_size, "epochs": cfg.epochs,
            "width": cfg.extra["width"]}


def run(task):
    return [{"category": c, "metrics": {"image_auroc": 50.0 + task.settings["width"]},
             "train_seconds": 0.0, "final_loss": 0.0} for c in task.categories]


def gpu_check(w):
    with w.meter() as scoring:
        test = w.split(w.categories[0], "test")
    return w.row(None, 0, 0, scoring, len(test), 0, w.MVTEC_TEST, "images")


DEVIATIONS = (Deviation("width", paper="silent", ours="3", why="the smallest that fits", guess=True,
                        cell="width/width=3"),
              Deviation("loss", paper="L2", ours="L1", why="robust to outliers", source="Eq. 2"))
CELLS = [Cell("width", "width=3")]
STUDY = Study(paper="toy_chapter", grids={"smoke": CELLS, "cpu": CELLS, "study": CELLS},
              checks=(), protocol=protocol, run=run)
'''


def _register(tmp_path: Path, monkeypatch, source: str) -> str:
    """Write ``source`` as a fresh module (a new name each time: the registry is cached per
    ADLIB_CHAPTERS value) and register it."""
    name = f"toy_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setenv(CHAPTERS_ENV, name)
    return name


@pytest.fixture
def toy(tmp_path, monkeypatch):
    notebook = tmp_path / "90_toy_chapter.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Toy")]), notebook)
    module = _register(tmp_path, monkeypatch, TOY.replace("NOTEBOOK", repr(str(notebook))))
    yield get_chapter("toy_chapter")
    sys.modules.pop(module, None)


def test_a_toy_chapter_registers_itself_in_the_papers_and_the_profiles(toy):
    from adlib.chapters.registry import PAPERS
    from adlib.chapters.profiles import resolve
    from adlib.study.load import load_study

    written = [c for c in chapters() if c.notebook]      # chapters without a notebook come last
    assert written[-1] == toy and toy.number == 90 and toy.label == "90 Toy"
    assert PAPERS["toy_chapter"].study == toy.module == toy.study
    assert load_study("toy_chapter").protocol(resolve("toy_chapter", "cpu"))["width"] == 3
    paper = resolve("toy_chapter", "paper", data_root="/data/toy")
    assert paper.extra["width"] == 30 and paper.grid == "paper" and paper.dataset == "mvtec_ad"


def test_a_toy_chapter_is_in_the_books_contents_intro_api_and_scoreboard(toy, tmp_path):
    paths = book.notebook_paths(REPO / "notebooks")
    assert paths[-1] == Path(toy.notebook) and len(paths) == len([c for c in chapters() if c.notebook])
    toc = book.write_toc(tmp_path, [p.name for p in paths]).read_text()
    assert toc.index("chapters/05_") < toc.index("chapters/90_toy_chapter") < toc.index("scoreboard")
    pages = {p.name: p.read_text() for p in book.write_chapter_pages(tmp_path)}
    assert "| 90 | Toy | a chapter that is one module |" in pages["chapters.md"]
    assert "90_toy_chapter.ipynb out.ipynb -p profile paper -p data_root /data/toy" in pages["paper_runs.md"]
    assert f".. automodule:: {toy.module}\n" in pages["api_chapters.md"]
    claims = tmp_path / "claims.md"
    claims.write_text("# Claims\n\n## toy_chapter (a test's)\n1. The toy is wider than 2. (T1)\n")
    board = book.write_scoreboard(tmp_path / "scoreboard.md", [], claims_path=claims).read_text()
    assert "## Toy: a chapter from a test" in board and "The toy is wider than 2." in board
    # its deviations: one table in the chapter, one section of the appendix
    table = book.deviations_frame("toy_chapter")
    assert list(table["the paper"]) == ["silent", "L2 (Eq. 2)"]
    assert list(table["kind"]) == ["guess", "choice"]
    assert "width/<wbr>width=<wbr>3" in str(book.deviations_table("toy_chapter"))
    appendix = book.write_deviations(tmp_path / "deviations.md").read_text()
    assert "## 90. Toy: a chapter from a test" in appendix
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", appendix)]
    assert ["loss", "L2 (Eq. 2)", "L1", "robust to outliers", "choice", "—"] == cells[-6:]
    assert "deviations" in book.write_toc(tmp_path, [p.name for p in paths]).read_text()


def test_a_deviation_without_its_reason_is_refused():
    from adlib.chapters.base import Deviation

    with pytest.raises(ValueError, match="why is empty"):
        Deviation("loss", paper="L2", ours="L1", why=" ")


def test_a_toy_chapter_gets_its_row_in_the_gpu_check(toy, tmp_path):
    from adlib.chapters.gpucheck import check_chapter, entries, write_tree

    assert entries()[-1] == toy
    root = write_tree(tmp_path / "mvtec", 32, n_train=1, n_test=1)
    row = check_chapter(toy, root, 32, "cpu", steps=1)
    assert row["chapter"] == "90 Toy" and row["inference images/s"] > 0


def test_a_registration_mistake_says_what_to_do(tmp_path, monkeypatch):
    _register(tmp_path, monkeypatch, "X = 1\n")
    with pytest.raises(TypeError, match="declares no CHAPTER"):
        chapters()
    monkeypatch.setenv(CHAPTERS_ENV, "no_such_chapter_module")
    with pytest.raises(ImportError, match="PYTHONPATH"):
        chapters()
    _register(tmp_path, monkeypatch, "from adlib.chapters.base import Chapter\n"
                                     "CHAPTER = Chapter(key='rlr', title='again', notebook=None)\n")
    with pytest.raises(ValueError, match="both declare key 'rlr'"):
        chapters()
    with pytest.raises(ValueError, match="NN_<name>.ipynb"):
        Chapter(key="x", title="x", notebook="x.ipynb")


@pytest.mark.parametrize("module", ["adlib.chapters.registry", "adlib.chapters.profiles", "adlib.chapters.gpucheck"])
def test_the_registry_modules_import_alone_without_importing_a_study(module):
    code = (f"import sys, {module}; "
            "assert not [m for m in sys.modules if m.startswith('adlib.studies.')], 'studies imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("chapter", [c for c in chapters() if c.paper], ids=lambda c: c.key)
def test_every_paper_chapter_declares_its_deviations_and_their_cells_exist(chapter):
    from adlib.study.load import load_study

    assert chapter.deviations, f"{chapter.key} declares no DEVIATIONS"
    cells = {f"{c.ablation}/{c.config}" for grid in load_study(chapter.key).grids.values() for c in grid}
    named = [d.cell for d in chapter.deviations if d.cell]
    assert set(named) <= cells, f"deviations name cells the study does not have: {set(named) - cells}"
