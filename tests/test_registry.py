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

#: A toy chapter as a new chapter is written: one package, four files (plus its notebook). No
#: file of adlib changes; the registry finds it through ADLIB_CHAPTERS.
TOY = {
    "__init__.py": '''"""A toy chapter outside the package."""\n''',
    "model.py": '''
"""The toy's model: a 1x1 convolution that learns to reproduce its input; the map is the error."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from adlib.training.detector import Detector, image_scores


@dataclass
class ToyConfig:
    width: int = 3
    epochs: int = 1
    batch_size: int = 4
    lr: float = 1e-2
    seed: int = 0


def images_of(data):
    return torch.stack([data[i]["image"] for i in range(len(data))])


def _loss(model, batch):
    (x,) = batch
    return ((model(x) - x) ** 2).mean()


class ToyDetector(Detector):
    config_class = ToyConfig
    name = "toy"

    def fit(self, train):
        torch.manual_seed(self.config.seed)
        self.model = nn.Conv2d(3, 3, 1)
        if self.config.epochs == 0:
            return self._untrained()
        return self._timed_fit(_loss, TensorDataset(images_of(train)), lr=self.config.lr,
                               desc="toy")

    @torch.no_grad()
    def predict(self, test):
        self._require_fitted()
        x = images_of(test)
        maps = ((self.model.cpu()(x) - x) ** 2).mean(1)
        return image_scores(maps), maps.numpy().astype(np.float32)
''',
    "study.py": '''
"""The toy's row code: its defaults, its one detector factory, its run."""

from adlib.study.spec import checkpoint_dir
from adlib.training.detector import detector_from_settings
from adlib.training.tasks import DetectorRun

from PACKAGE.model import ToyDetector


def protocol(cfg):
    return {"dataset": cfg.dataset, "image_size": cfg.image_size, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "width": cfg.extra["width"]}


def detector(settings, *, seed, device="auto", progress=True, checkpoint_root=None):
    return detector_from_settings(
        ToyDetector, settings, seed=seed, device=device, progress=progress,
        checkpoint_dir=checkpoint_dir(checkpoint_root, "toy_chapter", settings, seed))


run = DetectorRun(detector, separate=True)


def gpu_check(w):
    with w.meter() as scoring:
        test = w.split(w.categories[0], "test")
    return w.row(None, 0, 0, scoring, len(test), 0, w.MVTEC_TEST, "images")
''',
    "card.py": '''
"""The toy's card: its registry entry, grid, deviations and study."""

from adlib.chapters.base import Chapter, Compared, Deviation
from adlib.study.spec import Cell, Study

from PACKAGE.study import protocol, run

CHAPTER = Chapter(key="toy_chapter", title="Toy: a chapter from a test", notebook=NOTEBOOK,
                  short="Toy", summary="a chapter that is one package", model="PACKAGE.model",
                  settings={"width": 3, "epochs": 1, "batch_size": 4},
                  profiles={"paper": {"width": 30, "grid": "paper"}},
                  paper_runs=("-p data_root /data/toy",), gpucheck="PACKAGE.study:gpu_check",
                  compared={"Toy": Compared("width=3")})
DEVIATIONS = (Deviation("width", paper="silent", ours="3", why="the smallest that fits", guess=True,
                        cell="width/width=3"),
              Deviation("loss", paper="L2", ours="L1", why="robust to outliers", source="Eq. 2"))
CELLS = [Cell("width", "width=3"), Cell("reference", "untrained", {"epochs": 0})]
STUDY = Study(paper="toy_chapter", grids={"smoke": CELLS, "cpu": CELLS, "study": CELLS},
              checks=(), protocol=protocol, run=run)
''',
}


def _register(tmp_path: Path, monkeypatch, source: str | dict[str, str], notebook: str = "None") -> str:
    """Write ``source`` as a fresh module, or a fresh package of files (a new name each time: the
    registry is cached per ADLIB_CHAPTERS value), and register it (a package by its card)."""
    name = f"toy_{uuid.uuid4().hex[:8]}"
    if isinstance(source, dict):
        (tmp_path / name).mkdir()
        for file, text in source.items():
            text = text.replace("PACKAGE", name).replace("NOTEBOOK", notebook)
            (tmp_path / name / file).write_text(text.lstrip("\n"))
        registered = f"{name}.card"
    else:
        (tmp_path / f"{name}.py").write_text(source)
        registered = name
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setenv(CHAPTERS_ENV, registered)
    return name


@pytest.fixture
def toy(tmp_path, monkeypatch):
    notebook = tmp_path / "90_toy_chapter.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Toy")]), notebook)
    package = _register(tmp_path, monkeypatch, TOY, repr(str(notebook)))
    yield get_chapter("toy_chapter")
    for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
        sys.modules.pop(name)


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


def test_a_new_chapter_is_four_files_of_its_own_and_no_edit_to_adlib(toy, tmp_path):
    """The toy adds one package (its model, study, card and __init__) and a notebook; its rows'
    code is its study module and what that imports, never its card."""
    from adlib.study.load import load_study
    from adlib.study.provenance import import_closure

    package = Path(sys.modules[toy.module].__file__).parent
    assert sorted(p.name for p in package.glob("*.py")) == ["__init__.py", "card.py", "model.py",
                                                            "study.py"]
    study = load_study("toy_chapter")
    assert study.code == f"{package.name}.study" and study.curve
    closure = import_closure(study.code)
    assert f"{package.name}.model" in closure and f"{package.name}.card" not in closure
    changed = subprocess.run(["git", "status", "--porcelain", "--", "adlib"], cwd=REPO,
                             capture_output=True, text=True).stdout
    assert toy.module not in changed and package.name not in changed


def test_a_new_chapter_goes_through_the_skeleton_tests_with_no_edit_to_them(toy, tmp_path):
    """The skeleton tests are parametrised over the registry: run with the toy registered, they
    test its detector (predict before fit, scores from maps, the untrained reference)."""
    import os

    package = Path(sys.modules[toy.module].__file__).parent
    env = {**os.environ, CHAPTERS_ENV: toy.module,
           "PYTHONPATH": os.pathsep.join([str(package.parent), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "test_detector_base.py"), "-k", "toy_chapter"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 3, done.stdout[-1000:]


def test_a_new_chapter_goes_through_chapter_6_with_no_edit_to_it(toy, embedded_root):
    """Its card sends its model to chapter 6: the comparison's grids get it and its untrained
    self, and a smoke task of it trains and scores through its own run."""
    from adlib.chapters.comparison import card as C
    from adlib.chapters.comparison import study as S
    from adlib.chapters.profiles import resolve
    from adlib.study.spec import Task

    assert list(C.METHODS)[-1] == "Toy" and C.METHODS["Toy"].chapter == "toy_chapter"
    configs = {c.config for c in C.GRIDS["smoke"]}
    assert {"Toy", "untrained Toy"} <= configs
    cfg = resolve("comparison", "smoke")
    for config in ("Toy", "untrained Toy"):
        cell = next(c for c in C.GRIDS["smoke"] if c.config == config)
        settings = C.STUDY.cell_settings(C.protocol(cfg), cell)
        assert settings["width"] == 3 and settings["epochs"] == (0 if "untrained" in config else 1)
        task = Task(C.STUDY.module, "comparison", cell.ablation, cell.config, dict(cell.overrides),
                    settings, 0, ("brick",), cfg.dataset, str(embedded_root), "cpu")
        (row,) = S.run(task)
        assert 0 <= row["metrics"]["image_auroc"] <= 100 and row["inference_seconds"] > 0
        assert row["metrics"]["parameters"] == 12.0          # a 1x1 convolution of 3 channels


def test_a_toy_chapter_is_in_the_books_contents_intro_api_and_scoreboard(toy, tmp_path):
    paths = book.notebook_paths(REPO / "notebooks")
    assert paths[-1] == Path(toy.notebook) and len(paths) == len([c for c in chapters() if c.notebook])
    toc = book.write_toc(tmp_path, [p.name for p in paths]).read_text()
    assert toc.index("chapters/05_") < toc.index("chapters/90_toy_chapter") < toc.index("scoreboard")
    pages = {p.name: p.read_text() for p in book.write_chapter_pages(tmp_path)}
    assert "| 90 | Toy | a chapter that is one package |" in pages["chapters.md"]
    assert "90_toy_chapter.ipynb out.ipynb -p profile paper -p data_root /data/toy" in pages["paper_runs.md"]
    package = toy.module.rpartition(".")[0]
    for module in (f"{package}.model", f"{package}.study", toy.module):   # it has no page yet
        assert f".. automodule:: {module}\n" in pages["api_chapters.md"], module
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


@pytest.mark.parametrize("module", ["adlib.chapters.registry", "adlib.chapters.profiles",
                                    "adlib.chapters.gpucheck"])
def test_the_registry_modules_import_alone_without_importing_a_chapter(module):
    code = (f"import sys, {module}; "
            "assert not [m for m in sys.modules if m.startswith('adlib.chapters.')"
            " and m.endswith(('.card', '.study'))], 'chapters imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("chapter", [c for c in chapters() if c.paper], ids=lambda c: c.key)
def test_every_paper_chapter_declares_its_deviations_and_their_cells_exist(chapter):
    from adlib.study.load import load_study

    assert chapter.deviations, f"{chapter.key} declares no DEVIATIONS"
    cells = {f"{c.ablation}/{c.config}" for grid in load_study(chapter.key).grids.values() for c in grid}
    named = [d.cell for d in chapter.deviations if d.cell]
    assert set(named) <= cells, f"deviations name cells the study does not have: {set(named) - cells}"
