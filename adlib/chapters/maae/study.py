"""MAAE (chapter 2): the code that makes its study's rows -- the profile's defaults, the one
detector factory, the run.

Every MAAE cell trains ONE model on all categories (the paper's unified setting) unless it sets
``separate``; a cell with ``model = "knn"`` runs the book's single-class baseline (chapter 0) with
one memory bank. The grids and claim checks are declared in the chapter's card, outside this
module's code hash (:mod:`adlib.chapters`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from adlib.chapters.data_and_metrics.model import KNNBaseline
from adlib.chapters.maae.model import MAAEDetector
from adlib.study.spec import checkpoint_dir
from adlib.training.detector import detector_from_settings
from adlib.training.features import FeatureCache, shared_feature_cache
from adlib.training.tasks import DetectorRun

#: Settings of the MAAE model itself (the rest of the protocol: data, backbone, training).
MODEL_KEYS = ("stages", "hidden", "layers", "group", "heads", "dilation", "neighbour", "amplitude",
              "ang_mode", "lambda_ang", "lambda_re", "jitter_scale", "ffm_train", "lr",
              "map_sigma", "standardize", "feature_dtype")
DEFAULT = "ANG+FFM+MAAE"


def protocol(cfg) -> dict:
    """The chapter's defaults under a profile: data, backbone, training and model settings."""
    return {"model": "maae", "dataset": cfg.dataset, "image_size": cfg.image_size,
            "backbone": cfg.extra["backbone"], "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "variant": DEFAULT, "separate": False,
            **{k: cfg.extra[k] for k in MODEL_KEYS}}


def feature_cache(s: Mapping[str, Any], device=None, show_progress: bool = False) -> FeatureCache:
    """The process-wide feature cache of a cell's settings (backbone, stages, size, dtype)."""
    return shared_feature_cache(s["backbone"], stages=s["stages"], image_size=s["image_size"],
                                device=device, dtype=getattr(torch, s["feature_dtype"]),
                                show_progress=show_progress)


class PooledKNN(KNNBaseline):
    """The kNN baseline unified: one memory bank from the training images of every category."""

    def fit(self, train):
        return super().fit(ConcatDataset(list(train.values())) if isinstance(train, dict) else train)


def detector(settings: Mapping[str, Any], *, seed: int, device: str = "auto",
             progress: bool = True, checkpoint_root: str | None = None,
             cache: FeatureCache | None = None):
    """A fresh detector of a cell's ``settings``: the :class:`MAAEDetector` on ``cache`` (None:
    the process-wide feature cache of its backbone; with ``checkpoint_root`` a killed training
    resumes), or for ``model = "knn"`` the pooled kNN baseline."""
    where = None if device == "auto" else device
    if settings["model"] == "knn":
        # no bank cap: a capped unified bank would lose patches for a reason other than unification
        return PooledKNN(image_size=settings["image_size"], max_bank_size=None,
                         sigma=settings["map_sigma"], seed=seed, device=where, progress=progress)
    return detector_from_settings(
        MAAEDetector, settings, seed=seed, device=device, progress=progress,
        cache=feature_cache(settings, where) if cache is None else cache,
        checkpoint_dir=checkpoint_dir(checkpoint_root, "maae", settings, seed, "unified"))


#: A task's rows: one model on every category, or one per category when a cell says ``separate``.
run = DetectorRun(detector)
