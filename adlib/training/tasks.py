"""A study task's rows: a chapter's detector trained and scored as the task says.

Kept apart from :mod:`adlib.training.evaluation` (scoring) and :mod:`adlib.training.curves` (the
per-epoch test curve) because it uses both: neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adlib.training.curves import curve_rows, separate_curves, unified_curves
from adlib.training.evaluation import (
    evaluate_categories,
    evaluate_unified,
    study_results,
)


def evaluate_task(make_model: Callable[[], Any], task: Any, *, separate: bool | None = None,
                  set_epochs: Callable[[Any, int, str], None] | None = None) -> list[dict]:
    """A study task's rows (:func:`study_results`): a fresh ``make_model()`` per category of
    ``task`` (separate) or ONE trained on all of them (unified), scored on each test split.

    ``task``: an :class:`adlib.study.spec.Task` (its ``settings`` give ``dataset``,
    ``image_size``, ``epochs`` and, unless ``separate`` is passed, ``separate``). With
    ``set_epochs`` the test splits are also scored after every epoch (:mod:`adlib.training.curves`;
    the rows carry ``test_curve``, and the last epoch is the same model).
    """
    s = task.settings
    separate = s["separate"] if separate is None else separate
    where = (s["dataset"], task.data_root, task.categories, s["image_size"])
    if set_epochs is not None:
        if separate:
            results, curves = separate_curves(make_model, set_epochs, *where, epochs=s["epochs"])
        else:
            results, curves = unified_curves(make_model(), set_epochs, *where, epochs=s["epochs"])
        return curve_rows(results, curves)
    if separate:
        results = evaluate_categories(make_model, *where, show_progress=False)
    else:
        results = evaluate_unified(make_model(), *where, show_progress=False)
    return study_results(results)


def set_epochs(detector: Any, epochs: int, checkpoint_dir: str) -> None:
    """The curve's step: the next ``fit`` of ``detector`` trains up to ``epochs``, resuming from
    ``checkpoint_dir`` (each detector says how, :meth:`~adlib.training.detector.Detector.set_epochs`)."""
    detector.set_epochs(epochs, checkpoint_dir)


class DetectorRun:
    """A study's ``run`` over its chapter's one detector factory.

    ``detector(settings, *, seed, device, progress)`` makes a fresh detector of a cell's
    settings; a task's rows are :func:`evaluate_task` over it: a fresh detector per category
    (``separate``) or one trained on every category, as ``separate`` or the settings say. With
    ``Task.test_curve`` the test splits are also scored after every epoch (same last model).
    The rows' code is the factory's module (:attr:`adlib.study.spec.Study.code`).
    """

    curves = True

    def __init__(self, detector: Callable[..., Any], *, separate: bool | None = None):
        self.detector, self.separate = detector, separate

    def __call__(self, task: Any) -> list[dict]:
        settings = dict(task.settings)

        def make() -> Any:
            return self.detector(settings, seed=task.seed, device=task.device, progress=False)

        return evaluate_task(make, task, separate=self.separate,
                             set_epochs=set_epochs if task.test_curve else None)
