"""Noise-to-norm M-net (chapter 3): the code that makes its study's rows -- the profile's
defaults, the one detector factory, the run.

Every cell trains one model per category (the paper's separate setting); ``model =
"mean-image"`` is the distance to the mean training image, a sanity reference (a model that
cannot beat a pixel difference has not learned to reconstruct). The grids and claim checks are
declared in the chapter's card, outside this module's code hash (:mod:`adlib.chapters`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adlib.chapters.noise_to_norm.model import MeanImageBaseline, NoiseToNormDetector
from adlib.study.spec import checkpoint_dir
from adlib.training.detector import detector_from_settings
from adlib.training.tasks import DetectorRun

#: Settings of the model and its training (the rest of the protocol: data, size, epochs).
MODEL_KEYS = ("lam", "width", "attention", "alpha", "lr", "eta_min", "t_max", "patience",
              "val_fraction", "test_noise", "map_sigma", "padding", "score_border", "msssim")
DEFAULT = "lambda=0.3"


def protocol(cfg) -> dict:
    """The chapter's defaults under a profile: data, training and model settings."""
    return {"model": "mnet", "dataset": cfg.dataset, "image_size": cfg.image_size,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            **{k: cfg.extra[k] for k in MODEL_KEYS}}


def detector(settings: Mapping[str, Any], *, seed: int, device: str = "auto",
             progress: bool = True, checkpoint_root: str | None = None, category: str = ""):
    """A fresh :class:`NoiseToNormDetector` of a cell's ``settings`` (with ``checkpoint_root`` a
    killed training resumes, in a folder per ``category``), or the mean-image reference."""
    if settings["model"] == "mean-image":
        return MeanImageBaseline(settings["map_sigma"])
    return detector_from_settings(
        NoiseToNormDetector, settings, seed=seed, device=device, progress=progress,
        checkpoint_dir=checkpoint_dir(checkpoint_root, "noise_to_norm", settings, seed, category))


#: A task's rows: one model per category of the task.
run = DetectorRun(detector, separate=True)
