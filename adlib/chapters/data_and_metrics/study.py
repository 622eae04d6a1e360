"""Chapter 0: the nearest-neighbour baseline's one detector factory and run (chapter 6 ranks it;
chapter 0 reproduces no paper, so its card declares no study)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adlib.chapters.data_and_metrics.model import KNNBaseline
from adlib.training.tasks import DetectorRun


def protocol(dataset: str, image_size: int) -> dict:
    """The baseline as chapter 0's notebook builds it: smoothing sigma 4 px at 256 px."""
    return {"dataset": dataset, "image_size": image_size, "sigma": 4 * image_size / 256}


def detector(settings: Mapping[str, Any], *, seed: int, device: str = "auto",
             progress: bool = True, checkpoint_root: str | None = None) -> KNNBaseline:
    """A fresh :class:`KNNBaseline` of ``settings`` (``image_size``, ``sigma``): one memory bank
    per training set, nothing to train (so nothing to checkpoint)."""
    return KNNBaseline(image_size=settings["image_size"], sigma=settings["sigma"], seed=seed,
                       device=None if device == "auto" else device, progress=progress)


#: A task's rows: one bank per category.
run = DetectorRun(detector, separate=True)
