"""RLR (chapter 5): the code that makes its study's rows -- the profile's defaults, the one
detector factory, the run.

Every cell trains ONE model on all categories (the paper's unified setting) unless it sets
``separate``. The grids and claim checks are declared in the chapter's card, outside this
module's code hash (:mod:`adlib.chapters`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adlib.chapters.rlr.model import RLRDetector
from adlib.study.spec import checkpoint_dir
from adlib.training.detector import detector_from_settings
from adlib.training.features import FeatureCache, shared_feature_cache
from adlib.training.tasks import DetectorRun

#: Settings of the RLR model itself (the rest of the protocol: data, backbone, training).
MODEL_KEYS = ("stages", "hidden", "windows", "blocks", "heads", "alpha", "lr", "standardize",
              "map_sigma", "perturbation")
DEFAULT = "MLKA+LCA"


def protocol(cfg) -> dict:
    """The chapter's defaults under a profile: data, backbone, training and model settings."""
    return {"dataset": cfg.dataset, "image_size": cfg.image_size,
            "backbone": cfg.extra["backbone"], "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "variant": DEFAULT, "separate": False,
            **{k: cfg.extra[k] for k in MODEL_KEYS}}


def detector(settings: Mapping[str, Any], *, seed: int, device: str = "auto",
             progress: bool = True, checkpoint_root: str | None = None,
             cache: FeatureCache | None = None) -> RLRDetector:
    """A fresh :class:`RLRDetector` of a cell's ``settings`` on ``cache`` (None: the
    process-wide feature cache of its backbone); with ``checkpoint_root`` a killed training
    resumes from its last epoch."""
    if cache is None:
        cache = shared_feature_cache(settings["backbone"], stages=settings["stages"],
                                     image_size=settings["image_size"],
                                     device=None if device == "auto" else device)
    return detector_from_settings(
        RLRDetector, settings, seed=seed, device=device, progress=progress, cache=cache,
        checkpoint_dir=checkpoint_dir(checkpoint_root, "rlr", settings, seed, "unified"))


#: A task's rows: one model on every category, or one per category when a cell says ``separate``.
run = DetectorRun(detector)
