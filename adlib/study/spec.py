"""A chapter's declared study: its cells, the task a worker runs, the row identity.

This is all a study module imports (``from adlib.study.spec import Cell, Study, Task``), so
the engine, the executors, the reports, the claim checks and the paper registry stay out of every
study's code hash (:mod:`adlib.provenance`): changing how rows are judged or shown stales none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any


from adlib.jsonable import jsonable
from adlib.provenance import Fingerprint, code_hash

if TYPE_CHECKING:   # claims are reporting: outside every study's code hash
    from adlib.claims import ClaimCheck


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
    test_curve: bool = False       # run ``study.curve``: the test split scored every epoch too


@dataclass
class Study:
    """A chapter's declared study.

    Args:
        paper: the paper key (:mod:`adlib.papers`).
        grids: grid name -> cells; ``smoke`` / ``cpu`` / ``study`` are the profiles' grids.
        checks: the claim checks (:class:`adlib.claims.ClaimCheck`).
        protocol: ``RunConfig -> dict`` of the chapter's defaults under a profile (image size,
            epochs, backbone, model settings, ...); a cell's overrides change some of them.
        run: ``Task -> [{"category", "metrics", "train_seconds", "final_loss"}, ...]``, each
            optionally with the fitted ``model`` and its loss ``history`` (a fingerprint hashes
            them; rows keep :data:`RESULT_FIELDS` only).
        unit: ``"category"`` (one task per category: separate models), ``"all"`` (one
            task trains on every category: unified models; it returns one row per category),
            or ``"fold"`` (supervised k-fold cross-validation: one task per category and test
            fold, k = the protocol's ``folds``; rows carry the fold, claims pair on it).
        default: the config label of the chapter's main model (the record's metrics).
        titles: a title per ablation, for the notebook's tables and plots.
        curve: optional, ``run`` with the test split also scored after every epoch, for
            reporting what picking the epoch on the test set would add (never for choosing):
            the same rows plus ``test_curve`` = ``{"epoch": [...], <metric>: [...]}``. Its last
            epoch is ``run``'s model (tested per study), so its rows count under ``run``'s
            model hash and replace ``run``'s rows of the same settings.
        resolve: optional, a cell's settings (protocol + overrides) -> the settings its task runs
            with and its row's key hashes; chapter 6's comparison keeps only the settings of the
            cell's own method, where its protocol holds every chapter's. None: as they are.
        fingerprint: the tiny deterministic run whose digest identifies the code's behaviour
            (:class:`adlib.provenance.Fingerprint`); ``--verify`` compares it.
        tolerance: the largest metric change (points) ``--verify`` accepts as equal; 0 unless
            the study says why (``tolerance_why``), e.g. a reduction-order change.
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
    curve: Callable[[Task], list[dict]] | None = None
    fingerprint: Fingerprint | None = None
    resolve: Callable[[dict], dict] | None = None
    tolerance: float = 0.0
    tolerance_why: str = ""

    def __post_init__(self) -> None:
        self.module = self.module or self.run.__module__
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

    def model_hash(self) -> str:
        """The code identity of the study's rows: :func:`adlib.provenance.code_hash` of its
        module (the normalised import closure; grids and claim checks left out)."""
        return code_hash(self.module)


def run_key(paper: str, settings: Mapping[str, Any], seed: int, category: str,
            fold: int | None = None) -> str:
    """The identity of one row: paper, full settings, seed, category, fold (16 hex digits)."""
    ident = [paper, dict(settings), int(seed), category] + ([] if fold is None else [int(fold)])
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_settings(protocol: Mapping[str, Any], cell: Cell) -> dict:
    unknown = sorted(set(cell.overrides) - set(protocol))
    if unknown:
        msg = (f"cell {cell.ablation}/{cell.config} overrides {unknown}, which are not "
               f"settings of the protocol ({', '.join(sorted(protocol))})")
        raise StudyError(msg)
    return jsonable({**protocol, **cell.overrides})
