"""A chapter's card: what the book needs to know about one chapter, declared where the chapter lives.

Each ``adlib/chapters/<paper>/card.py`` declares ``CHAPTER = Chapter(...)``;
:mod:`adlib.chapters.registry` collects the cards (and those of the modules named in
``ADLIB_CHAPTERS``), and the profiles, the GPU check, the book's contents, intro and API page,
the scoreboard and chapter 6 read that registry. So a new chapter touches no central file.

Only cards import this module, and row code never imports a card: nothing here is in a study's
code hash (:mod:`adlib.study.provenance`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What the warm-up estimate of a chapter scales to, unless the chapter says otherwise.
MVTEC_SCALE = "the full paper profile (MVTec AD's 3,629 training and 1,725 test images)"


@dataclass(frozen=True)
class Deviation:
    """One thing the chapter does differently from the paper, or decides where the paper is silent.

    A chapter's card declares ``DEVIATIONS = (Deviation(...), ...)``; each chapter renders them as
    one table and the book's appendix gathers all of them.

    Args:
        topic: what it is about, in a few words ("map smoothing").
        paper: what the paper says (or "silent" where it says nothing).
        ours: what the book does.
        why: why (cost, the paper being silent, the official code, a bug the paper's form has).
        guess: True where the paper is silent and ``ours`` is our guess.
        cell: the ablation cell (``"ablation/config"``) that measures the paper's choice against
            ours, when the study has one.
        source: where the paper's choice is stated ("Sec. 3.2", "Table 1", "official code").
    """

    topic: str
    paper: str
    ours: str
    why: str
    guess: bool = False
    cell: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("topic", "paper", "ours", "why"):
            if not str(getattr(self, name)).strip():
                msg = f"deviation {self.topic or '?'!r}: {name} is empty; say it in a sentence"
                raise ValueError(msg)


EXPECTATIONS = ("reproduced", "contradicted", "level", "could not tell")
"""What a finding's sentence may state (the verdicts of :func:`adlib.analysis.claims.compare`)."""


@dataclass(frozen=True)
class Finding:
    """One sentence of a chapter's reading of its committed study, with the comparison behind it.

    The chapter renders each finding with its numbers (:func:`adlib.book.verdicts.findings_html`), and
    a test checks that the committed rows still give the verdict the sentence states, so a rerun
    that changes a result cannot leave the prose behind.

    Args:
        text: the sentence, as the reader sees it.
        order: the comparison, in the grid's config labels (``"ANG+FFM > ANG"``).
        expect: the verdict the sentence states: ``reproduced`` (the first config is better),
            ``contradicted`` (it is worse), ``level`` (the interval lies inside the book's
            declared equivalence bound, :data:`adlib.analysis.stats.SMALLEST_EFFECT`) or ``could not
            tell`` (it spans 0 and reaches past the bound). Findings are exploratory: their
            intervals are not adjusted for the chapter's other findings, and the page says so.
        metric: the metric compared.
        ablation: where to look the configs up first (labels may repeat across ablations).
        grid: the committed study grid whose rows it reads (grids differ in protocol).
    """

    text: str
    order: str
    expect: str = "reproduced"
    metric: str = "image_auroc"
    ablation: str | None = None
    grid: str = "study"

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            msg = (f"finding {self.text[:40]!r}: expect {self.expect!r}; say one of "
                   f"{', '.join(map(repr, EXPECTATIONS))} ('inconclusive' is now 'level' inside "
                   "the declared equivalence bound, 'could not tell' outside it)")
            raise ValueError(msg)


@dataclass(frozen=True)
class Compared:
    """A model a chapter sends to chapter 6 (every method side by side).

    Args:
        config: the config of the chapter's grids that is this model (its cell's overrides
            apply); None: the chapter's protocol as it is.
        untrained: the overrides of its untrained reference (the detector skeleton's
            ``epochs = 0``); None: it trains nothing, so it has none.
    """

    config: str | None = None
    untrained: Mapping[str, Any] | None = field(default_factory=lambda: {"epochs": 0})


@dataclass(frozen=True)
class Chapter:
    """One chapter of the book.

    Args:
        key: the paper key (``adlib/resources/results/<key>/``, ``python -m adlib study <key>``,
            the notebook's ``PAPER``).
        title: the paper's title in the book (scoreboard section, API page).
        notebook: its notebook, ``NN_<name>.ipynb`` in ``notebooks/`` (NN orders the chapters);
            a path elsewhere for a chapter outside the package; None until it is written.
        short: its name in tables ("RLR"); ``title`` when empty.
        summary: what the paper adds, in one line (the introduction's chapter table).
        paper: False for a chapter that reproduces no paper (chapter 0).
        model: the module of its model, for the API page.
        settings: its own defaults under the ``cpu`` profile (backbone, widths, ...) and its
            changes to the common ones (:data:`adlib.chapters.profiles.COMMON`).
        profiles: per profile (``smoke``, ``study``, ``paper``), what changes from ``settings``.
        paper_runs: papermill arguments of its ``paper`` runs on real data, for the introduction.
        gpucheck: its GPU-check entry, ``Warmup -> row`` (:mod:`adlib.chapters.warmup`): a function of
            the declaring module by name, ``"module:function"``, or the function itself.
        gpucheck_small: settings that replace the paper's when the check's images are under
            128 px (``--tiny``'s 64 px, a small run's warm-up).
        estimate_on: ``"run"``: the ``paper`` profile's warm-up times the run's own data;
            ``"tree"``: a small MVTec-layout tree of the run's size (data without a train/test
            split).
        estimate_of: what the warm-up's wall time estimates, in words.
        headline: the cells the verdict box shows side by side, name -> ``"ablation/config"``:
            the chapter's model first, then its references (untrained, kNN, ...).
        headline_metrics: the metrics of that line.
        findings: what the chapter reads in its committed study, sentence by sentence
            (:class:`Finding`).
        compared: the models it sends to chapter 6, by the name they go by there
            (:class:`Compared`), each trained and scored by the chapter's own ``run``.
    """

    key: str
    title: str
    notebook: str | None
    short: str = ""
    summary: str = ""
    paper: bool = True
    model: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    paper_runs: tuple[str, ...] = ()
    gpucheck: str | Callable | None = None
    gpucheck_small: Mapping[str, Any] = field(default_factory=dict)
    estimate_on: str = "run"
    estimate_of: str = MVTEC_SCALE
    headline: Mapping[str, str] = field(default_factory=dict)
    headline_metrics: tuple[str, ...] = ("image_auroc", "pixel_auroc")
    findings: tuple[Finding, ...] = ()
    compared: Mapping[str, Compared] = field(default_factory=dict)
    module: str = ""                 # the declaring module; the registry fills it
    study: str | None = None         # that module, when it declares STUDY; the registry fills it
    deviations: tuple[Deviation, ...] = ()   # the module's DEVIATIONS; the registry fills it

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.key):
            msg = f"chapter key {self.key!r}: expected lower-case letters, digits and _ (e.g. 'rlr')"
            raise ValueError(msg)
        if self.notebook is not None and not re.fullmatch(r"\d\d_.+\.ipynb", Path(self.notebook).name):
            msg = (f"chapter {self.key}: notebook {self.notebook!r} should be named "
                   f"NN_<name>.ipynb, NN its chapter number (e.g. '06_{self.key}.ipynb')")
            raise ValueError(msg)
        if self.estimate_on not in ("run", "tree"):
            msg = f"chapter {self.key}: estimate_on {self.estimate_on!r}, expected 'run' or 'tree'"
            raise ValueError(msg)

    @property
    def number(self) -> int | None:
        """The chapter number (its notebook's leading digits); None without a notebook."""
        return None if self.notebook is None else int(Path(self.notebook).name[:2])

    @property
    def label(self) -> str:
        """``NN name``, as the GPU check's rows name the chapter."""
        return f"{self.number or 0:02d} {self.short or self.title}"

    def defaults(self, profile: str) -> dict[str, Any]:
        """Its settings under ``profile``: ``settings`` with that profile's changes."""
        return {**self.settings, **self.profiles.get(profile, {})}

    def gpucheck_function(self) -> Callable | None:
        """The GPU-check entry as a function (imported on first use: it needs torch)."""
        entry = self.gpucheck
        if entry is None or callable(entry):
            return entry
        module, _, name = entry.rpartition(":")
        try:
            return getattr(importlib.import_module(module or self.module), name)
        except (ImportError, AttributeError) as err:
            msg = (f"chapter {self.key}: its gpucheck entry {entry!r} does not name a function "
                   f"({err}); give a function of {self.module or 'its module'} by name, or "
                   "'module:function'")
            raise ValueError(msg) from err
