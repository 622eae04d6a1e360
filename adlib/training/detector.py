"""The skeleton the book's trained detectors share, and the factory that builds one from a cell.

Every detector is ``fit(train) -> self`` and ``predict(test) -> (scores (N,), maps (N, H, W))``
(numpy), so :func:`adlib.training.evaluation.evaluate_categories` runs any of them. :class:`Detector`
holds what MAAE (chapter 2), the noise-to-norm M-net (chapter 3) and RLR (chapter 5) do alike::

    options     keyword arguments are the fields of the chapter's config dataclass; any other
                name is a TypeError that lists the fields
    epochs = 0  the model as initialised, on the device, in eval mode, with an empty history:
                the untrained sanity reference every claim is checked against
    training    :func:`adlib.training.train.fit`, timed (``train_seconds``), keeping its model and history
    inference   a RuntimeError naming the fix before ``fit``; batches of 64 on the model's device
    scores      image score = the maximum of its anomaly map

Patch SVDD (chapter 1) keeps its own class (keyword arguments instead of a config dataclass,
its network built before ``fit``, no timing) and shares the scores, the untrained history, the
guard, ``parameter_count``'s meaning and :func:`detector_from_settings`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from adlib.nn import count_parameters
from adlib.training.train import fit, pick_device


def image_scores(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Image score = the maximum of its anomaly map: ``(N, H, W) -> (N,)`` (numpy)."""
    if isinstance(maps, torch.Tensor):
        return maps.flatten(1).amax(1).numpy()
    return maps.reshape(len(maps), -1).max(1)


def untrained_history():
    """The loss history of a model trained for 0 epochs: no rows, the columns of a real one."""
    return pd.DataFrame(columns=["epoch", "train_loss"])


def not_fitted(name: str, fit_call: str = "fit(train_set)") -> RuntimeError:
    """The error of ``predict`` / ``reconstruct`` before ``fit``, with the call that fixes it."""
    return RuntimeError(f"the {name} model is not trained: call {fit_call} first")


def training_sets(train: Any) -> list:
    """``fit``'s argument as a list of data sets: one data set (separate training) or a mapping
    ``{category: data set}`` / list of them (unified: one model for all categories)."""
    if isinstance(train, Mapping):
        return list(train.values())
    return list(train) if isinstance(train, (list, tuple)) else [train]


class Detector:
    """fit / predict skeleton of a detector whose knobs are one config dataclass.

    A subclass sets ``config_class`` (with at least ``epochs``, ``batch_size`` and ``seed``)
    and ``name``; its ``fit`` builds ``self.model`` (seeded) and ends in :meth:`_untrained`
    when ``config.epochs == 0``, else in :meth:`_timed_fit`.

    Attributes:
        config: the ``config_class`` instance; model: the ``nn.Module`` (None before ``fit``);
        history: loss per epoch (empty for ``epochs=0``); train_seconds: time in
        :func:`adlib.training.train.fit`; parameter_count: the TRAINABLE parameters (``requires_grad``)
        of the fitted model, 0 before ``fit``. Every chapter reports this one count, so frozen
        parts (MAAE's fixed FFM convolutions) are left out, as :func:`adlib.nn.count_parameters`.
    """

    config_class: ClassVar[type]
    name: ClassVar[str]
    fit_call: ClassVar[str] = "fit(train_set) (or fit({cat: train_set, ...}))"

    def __init__(self, *, device: str | torch.device = "auto", progress: bool | str = True,
                 checkpoint_dir: str | None = None, **config: Any):
        self.config = self.config_class(**self.known_options(config))
        self.device, self.progress, self.checkpoint_dir = device, progress, checkpoint_dir
        self.model: torch.nn.Module | None = None
        self.history = None
        self.train_seconds = 0.0

    @classmethod
    def known_options(cls, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """``options`` unchanged if every name is a field of ``config_class``, else TypeError."""
        names = [f.name for f in fields(cls.config_class)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            msg = (f"unknown {cls.name} options {unknown}; expected some of {names} "
                   f"(the fields of {cls.config_class.__name__})")
            raise TypeError(msg)
        return options

    @classmethod
    def options_from(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor options among a cell's ``settings``: its config fields (the rest of
        the protocol, such as the data set, is not the model's)."""
        return {f.name: settings[f.name] for f in fields(cls.config_class) if f.name in settings}

    @property
    def parameter_count(self) -> int:
        return count_parameters(self.model) if self.model is not None else 0

    def _untrained(self) -> Detector:
        """``epochs=0``: the model as initialised, on the device, in eval mode, no history."""
        self.model = self.model.to(pick_device(self.device)).eval()
        self.history = untrained_history()
        return self

    def _timed_fit(self, loss: Any, data: Any, *, desc: str, **training: Any) -> Detector:
        """Train ``self.model`` on ``data`` with :func:`adlib.training.train.fit` for ``config.epochs``
        epochs of ``config.batch_size``, seeded by ``config.seed``, on the detector's device,
        checkpoint folder and progress bar; ``training``: the rest (``lr``, ``optimizer``,
        ``val_data``, ...). Keeps the trained model (eval mode), its history and the time."""
        c = self.config
        start = time.perf_counter()
        result = fit(self.model, loss, data, epochs=c.epochs, batch_size=c.batch_size,
                     device=self.device, seed=c.seed, checkpoint_dir=self.checkpoint_dir,
                     progress=self.progress, desc=desc, **training)
        self.train_seconds = time.perf_counter() - start
        self.model, self.history = result.model.eval(), result.history
        return self

    def set_epochs(self, epochs: int, checkpoint_dir: str) -> None:
        """Make the next ``fit`` train up to ``epochs``, resuming from ``checkpoint_dir`` (the
        step of a test curve, :mod:`adlib.training.curves`)."""
        self.config.epochs, self.checkpoint_dir = epochs, checkpoint_dir

    def _require_fitted(self) -> None:
        if self.model is None:
            raise not_fitted(self.name, self.fit_call)

    def _batches(self, inputs: Sequence[torch.Tensor], batch_size: int = 64,
                 dtype: torch.dtype | None = torch.float32) -> Iterator[list[torch.Tensor]]:
        """``inputs`` (tensors of one length) cut into batches along dim 0, each moved to the
        model's device as ``dtype`` (None: as it is); the model is put in eval mode."""
        device = next(self.model.parameters()).device
        self.model.eval()
        for i in range(0, len(inputs[0]), batch_size):
            yield [x[i:i + batch_size].to(device, dtype) for x in inputs]


def detector_from_settings(cls: type, settings: Mapping[str, Any], *, seed: int,
                           device: str | torch.device, progress: bool | str = True,
                           checkpoint_dir: str | None = None, **extra: Any):
    """The ``cls`` detector of a cell's ``settings``, seeded with ``seed``.

    ``cls.options_from(settings)`` picks the model's options; ``extra``: further constructor
    arguments (e.g. the feature cache). With ``checkpoint_dir`` a killed training resumes from
    its ``last.pt`` there (a chapter's ``detector`` names the folder by the row's key,
    :func:`adlib.study.spec.checkpoint_dir`).
    """
    options = {**extra, **cls.options_from(settings), "seed": seed}
    if checkpoint_dir is not None:
        options["checkpoint_dir"] = checkpoint_dir
    return cls(device=device, progress=progress, **options)
