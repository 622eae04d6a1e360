"""A chapter's declared study: its cells, the task a worker runs, the row identity.

This is all of the engine that a chapter imports: its card declares ``Cell`` and ``Study``; its
row code (``study.py``) needs only ``Task`` and :func:`checkpoint_dir`. So the engine, the
executors, the reports, the claim checks and the registry stay out of every study's code hash
(:mod:`adlib.study.provenance`): changing how rows are judged or shown stales none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adlib.study.jsonable import jsonable
from adlib.study.provenance import Fingerprint, code_hash

if TYPE_CHECKING:   # claims are reporting: outside every study's code hash
    from adlib.analysis.claims import ClaimCheck


class StudyError(RuntimeError):
    """A study could not run as asked (unknown grid, failed tasks, bad options)."""


@dataclass(frozen=True)
class Cell:
    """One cell of a grid: the chapter's defaults with ``overrides`` applied."""

    ablation: str
    config: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """What one worker trains and evaluates: one settings x seed x (category or all)."""

    study: str                     # module declaring STUDY, importable in the worker
    paper: str
    ablation: str
    config: str
    overrides: Mapping[str, Any]
    settings: Mapping[str, Any]    # protocol + overrides: everything the run depends on
    seed: int
    categories: tuple[str, ...]
    dataset: str
    data_root: str
    device: str = "auto"
    fold: int | None = None        # unit "fold": the test fold of k-fold cross-validation
    test_curve: bool = False       # the test split scored every epoch too (``Study.curve``)


@dataclass
class Study:
    """A chapter's declared study.

    Args:
        paper: the paper key (:mod:`adlib.chapters.registry`).
        grids: grid name -> cells; ``smoke`` / ``cpu`` / ``study`` are the profiles' grids.
        checks: the claim checks (:class:`adlib.analysis.claims.ClaimCheck`).
        protocol: ``RunConfig -> dict`` of the chapter's defaults under a profile (image size,
            epochs, backbone, model settings, ...); a cell's overrides change some of them.
        run: ``Task -> [{"category", "metrics", "train_seconds", "final_loss"}, ...]``, each
            optionally with the fitted ``model`` and its loss ``history`` (a fingerprint hashes
            them; rows keep :data:`RESULT_FIELDS` only). Most chapters pass
            :class:`adlib.training.evaluation.DetectorRun` over their ``detector`` factory; its
            module (the chapter's ``study.py``) is the rows' code (:attr:`code`).
        unit: ``"category"`` (one task per category: separate models), ``"all"`` (one
            task trains on every category: unified models; it returns one row per category),
            or ``"fold"`` (supervised k-fold cross-validation: one task per category and test
            fold, k = the protocol's ``folds``; rows carry the fold, claims pair on it).
        default: the config label of the chapter's main model (the record's metrics).
        titles: a title per ablation, for the notebook's tables and plots.
        curve: (read from ``run``) whether ``run`` honours ``Task.test_curve``: the test split
            also scored after every epoch, for reporting what picking the epoch on the test set
            would add (never for choosing): the same rows plus ``test_curve`` =
            ``{"epoch": [...], <metric>: [...]}``. Its last epoch is the model of the run without
            it (tested per study), so its rows replace those of the same settings.
        resolve: optional, a cell's settings (protocol + overrides) -> the settings its task runs
            with and its row's key hashes; chapter 6's comparison keeps only the settings of the
            cell's own method, where its protocol holds every chapter's. None: as they are.
        fingerprint: the tiny deterministic run whose digest identifies the code's behaviour
            (:class:`adlib.study.provenance.Fingerprint`); ``--verify`` compares it.
        tolerance: the largest metric change (points) ``--verify`` accepts as equal; 0 unless
            the study says why (``tolerance_why``), e.g. a reduction-order change.
        detector: the chapter's one detector factory (``settings, *, seed, device, progress,
            checkpoint_root -> a fresh detector``) that the notebook, the warm-up, the GPU check,
            chapter 6 and the skeleton tests call; by default ``run``'s (a
            :class:`~adlib.training.tasks.DetectorRun`); None: the study trains no detector of
            that shape (LEA-Net's supervised folds).
    """

    paper: str
    grids: Mapping[str, Sequence[Cell]]
    checks: Sequence[ClaimCheck]
    protocol: Callable[[Any], dict]
    run: Callable[[Task], list[dict]]
    unit: str = "category"
    default: str | None = None
    titles: Mapping[str, str] = field(default_factory=dict)   # ablation -> table title
    module: str = ""
    fingerprint: Fingerprint | None = None
    resolve: Callable[[dict], dict] | None = None
    tolerance: float = 0.0
    tolerance_why: str = ""
    detector: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        self.module = self.module or self.code
        self.detector = self.detector or getattr(self.run, "detector", None)
        if self.tolerance and not self.tolerance_why:
            msg = f"{self.paper}: a verification tolerance needs its reason (tolerance_why)"
            raise StudyError(msg)

    def grid(self, name: str) -> list[Cell]:
        if name not in self.grids:
            msg = f"{self.paper} has no grid {name!r}; its grids are {', '.join(self.grids)}"
            raise StudyError(msg)
        return list(self.grids[name])

    def cell_settings(self, protocol: Mapping[str, Any], cell: Cell) -> dict:
        """What ``cell`` runs with under ``protocol``: its overrides applied, then ``resolve``."""
        settings = cell_settings(protocol, cell)
        return jsonable(self.resolve(settings)) if self.resolve else settings

    @property
    def code(self) -> str:
        """The module that makes the rows: the chapter's ``study.py``, where ``run`` (or the
        ``detector`` a :class:`~adlib.training.evaluation.DetectorRun` runs) is defined. Its
        import closure is the code hash; the card that declares this study is not in it."""
        return getattr(self.run, "detector", self.run).__module__

    @property
    def curve(self) -> bool:
        """Whether ``run`` can score the test split after every epoch (``Task.test_curve``)."""
        return bool(getattr(self.run, "curves", False))

    def model_hash(self) -> str:
        """The code identity of the study's rows: :func:`adlib.study.provenance.code_hash` of
        :attr:`code` (the normalised import closure)."""
        return code_hash(self.code)


def run_key(paper: str, settings: Mapping[str, Any], seed: int, category: str,
            fold: int | None = None) -> str:
    """The identity of one row: paper, full settings, seed, category, fold (16 hex digits)."""
    ident = [paper, dict(settings), int(seed), category] + ([] if fold is None else [int(fold)])
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_dir(root: str | None, paper: str, settings: Mapping[str, Any], seed: int,
                   category: str = "") -> str | None:
    """Where a detector of ``settings`` keeps its checkpoints under ``root`` (None: nowhere):
    one folder per row key, so other settings start afresh and a killed run resumes."""
    return None if root is None else f"{root}/{run_key(paper, settings, seed, category)}"


def cell_settings(protocol: Mapping[str, Any], cell: Cell) -> dict:
    unknown = sorted(set(cell.overrides) - set(protocol))
    if unknown:
        msg = (f"cell {cell.ablation}/{cell.config} overrides {unknown}, which are not "
               f"settings of the protocol ({', '.join(sorted(protocol))})")
        raise StudyError(msg)
    return jsonable({**protocol, **cell.overrides})
