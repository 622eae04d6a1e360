"""C-SE on Patch SVDD (chapter 1): the code that makes its study's rows -- the profile's
defaults, the one detector factory, the run -- and the chapter's GPU-check entry.

The full model is C-SE + LBR in the last 6 convolutions, r = 16; one model per category (the
paper trains per category). The grids and claim checks are declared in the chapter's card,
outside this module's code hash (:mod:`adlib.chapters`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adlib.chapters.cse_patch_svdd.model import PatchSVDD
from adlib.training.detector import detector_from_settings
from adlib.training.tasks import DetectorRun

DEFAULT = "+C-SE+LBR"
#: The full model's settings (the paper's: C-SE + LBR in the last 6 convolutions, r = 16).
MODEL = {"attention": "cse", "lbr": True, "attention_layers": 6, "reduction": 16,
         "train_noise_var": 0.0}


def protocol(cfg) -> dict:
    """The chapter's defaults under a profile: data, patch sampling, training, model."""
    x = cfg.extra
    return {"dataset": cfg.dataset, "image_size": cfg.image_size, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "lr": x.get("lr", 1e-4),
            "samples_per_image": x["samples_per_image"],
            "patch_sizes": str(x["patch_sizes"]), "stride32": x["stride32"],
            "stride64": x.get("stride64") or 16, "lam": x["lam"], **MODEL}


def detector(settings: Mapping[str, Any], *, seed: int, device: str = "auto",
             progress: bool = True, checkpoint_root: str | None = None) -> PatchSVDD:
    """A fresh :class:`PatchSVDD` of a cell's ``settings`` (``{**settings, "lbr": False}`` for
    the C-SE model without LBR); with ``checkpoint_root`` a killed training resumes from its last
    epoch, in a folder :class:`PatchSVDD` names by category and settings."""
    return detector_from_settings(PatchSVDD, settings, seed=seed, device=device,
                                  progress=progress, checkpoint_root=checkpoint_root)


#: A task's rows: one model per category of the task.
run = DetectorRun(detector, separate=True)


# ------------------------------------------------------------------ the GPU check

def gpu_check(w) -> dict:
    """The chapter's GPU-check entry (``w``: an :class:`adlib.chapters.warmup.Warmup`): the paper
    settings trained for about ``w.steps`` steps on one category's patch pairs, one scoring
    pass; the estimate is the paper's epochs of patch pairs on MVTec AD."""
    s = w.settings
    train, test = w.split(w.categories[0], "train"), w.split(w.categories[0], "test")
    per_epoch = max(1, len(train) * s["samples_per_image"] // s["batch_size"])
    s["epochs"] = max(1, math.ceil(w.steps / per_epoch))
    model = detector(s, seed=0, device=w.device, progress=False)
    with w.meter(count_syncs=True) as fitting:
        model.fit(train)
    with w.meter() as scoring:
        model.predict(test)
    n_steps = s["epochs"] * per_epoch
    full_items = w.paper["epochs"] * w.paper["samples_per_image"] * w.MVTEC_TRAIN
    return w.row(fitting, n_steps * s["batch_size"], n_steps, scoring, len(test), full_items,
                 w.MVTEC_TEST, "patch-pair samples")

