"""LEA-Net (chapter 4): the code that makes its study's rows -- the profile's defaults, the
folds, the colour maps and their cache, the supervised run -- and its colour map as the one
unsupervised detector chapter 6 ranks (:func:`detector`).

LEA-Net is supervised, so a task trains on k - 1 folds of one labelled category and scores the
held-out fold (stratified k-fold from the seed; unit ``"fold"`` of the study engine). The
colouriser and its maps are made once per (category, seed, fold) and cached on disk, since
every cell of the grid shares them. ``references`` holds the two sanity references: always
answering "anomalous", and a threshold (chosen on the training folds) on the map's raw maximum.
Our attention point is declared before any run: point 4, the most frequent best point of
ResNet18 + ResNet-based CAAN in the paper's Table 3; the best-of-five-points rows that the paper
reports choose the point on the test folds and are labelled as such.

Each row's ``f1`` is the paper's rule (anomalous when the ADN's probability is at least 0.5,
the argmax of its two-way softmax): the claims use it. ``f1_train_threshold`` is the F1 at the
threshold with the best F1 on the *training* folds' probabilities (never the test fold's),
reported beside it. The grids, claim checks and deviations are declared in the chapter's card,
outside this module's code hash (:mod:`adlib.chapters`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

import adlib.chapters.lea_net.model as lea
from adlib.chapters.lea_net.model import ColourMapDetector
from adlib.data.embedded import file_lock as _file_lock
from adlib.data.folders import LabelledFolderDataset, stratified_kfold
from adlib.data.sources import labelled_root
from adlib.study.provenance import code_hash
from adlib.study.spec import Task
from adlib.training.detector import detector_from_settings
from adlib.training.tasks import DetectorRun
from adlib.training.train import pick_device

MODEL_KEYS = ("folds", "adn", "caan", "point", "input", "width", "gate", "lr",
              "anomalous_fraction", "bn_stats", "subsample", "colouriser_epochs", "colouriser_width",
              "colouriser_lr", "fancy_pca", "amp")
POINT = 4                       # declared ahead (see the docstring)
# Sec. 4-2 gives 1e-4 for ResNet18 and 1e-5 for VGG16; the other ADNs' rates are our guess
PAPER_LR = {"resnet18": 1e-4, "vgg16": 1e-5, "basic_cnn": 1e-4, "resnet50": 1e-4, "vgg19": 1e-5}
#: The paper's labelled data sets (anomalous, normal images; Tables 2 and 4), drawn at random
#: from the public sets; the ``paper`` profile draws the same counts (seeded) from a category
#: of that name (``subsample="paper"``).
PAPER_COUNTS = {"retina": (98, 337), "potato": (50, 152), "cloud": (100, 300), "leather": (92, 277),
                "wood": (60, 266), "hurricane": (100, 300), "concrete": (100, 300),
                "grape": (141, 423), "strawberry": (152, 456), "tile": (84, 263),
                "hazelnut": (70, 431), "carpet": (89, 308)}


def protocol(cfg) -> dict:
    """The chapter's defaults under a profile: data, training, colouriser and model settings."""
    return {"model": "lea_net", "dataset": cfg.dataset, "image_size": cfg.image_size,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            **{k: cfg.extra[k] for k in MODEL_KEYS}}

F1_RULE = "F1 at probability 0.5"


# ----------------------------------------------------------------------------- data and maps

def load_labelled(dataset: str, data_root: str, category: str, image_size: int,
                  subsample: str | None = None):
    """All images (N, 3, S, S) in [0, 1] and labels (N,) of one labelled category;
    ``subsample="paper"``: the paper's counts for a category it names (:func:`paper_subset`)."""
    data = LabelledFolderDataset(labelled_root(dataset, Path(data_root)) / category, image_size)
    labels = np.asarray(data.labels)
    keep = paper_subset(labels, category) if subsample == "paper" else np.arange(len(labels))
    images = torch.stack([data[int(i)]["image"] for i in keep])
    return images, torch.tensor(labels[keep], dtype=torch.long)


def paper_subset(labels, category: str) -> np.ndarray:
    """Indices of the paper's data set drawn from a full category (Tables 2 and 4: e.g. 50
    anomalous and 152 normal potato leaves), seeded once, so every seed and fold sees the same
    images; a category the paper does not name, or a class with fewer images than the paper's
    count, keeps all of them."""
    labels = np.asarray(labels)
    counts = PAPER_COUNTS.get(category.lower())
    if counts is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    keep = [rng.permutation(np.flatnonzero(labels == k))[:n] for k, n in ((1, counts[0]), (0, counts[1]))]
    return np.sort(np.concatenate(keep))


def imbalanced_subset(labels, folds: int, seed: int, fraction: float) -> np.ndarray:
    """The images of a data set with only ``fraction`` of its anomalous images (Fig. 4): all
    normal images, and of each stratified fold's anomalous images a seeded ``round(fraction *
    n)`` (at least one). The folds of the full set restricted to these images are a stratified
    split of the smaller set, and each fold's normal images (the colouriser's) are unchanged."""
    labels = np.asarray(labels)
    keep = [np.flatnonzero(labels == 0)]
    for k, (_, test) in enumerate(stratified_kfold(labels, folds, seed)):
        anomalous = test[labels[test] == 1]
        n = max(1, round(fraction * len(anomalous)))
        keep.append(np.random.default_rng([seed, k, 7]).permutation(anomalous)[:n])
    return np.sort(np.concatenate(keep))


def fold_split(labels, folds: int, seed: int, fold: int, fraction: float = 1.0):
    """(train, test) indices of ``fold`` of stratified k-fold cross-validation from ``seed``;
    ``fraction`` < 1: of the data set with that share of its anomalous images
    (:func:`imbalanced_subset`; the paper removes them from the whole data set, so the test
    folds hold fewer too)."""
    train, test = stratified_kfold(np.asarray(labels), folds, seed)[fold]
    if fraction < 1:
        kept = imbalanced_subset(labels, folds, seed, fraction)
        train, test = train[np.isin(train, kept)], test[np.isin(test, kept)]
    return train, test


def map_cache_dir() -> Path:
    """Where colour maps are cached (``$ADLIB_CACHE/lea_net_maps``, default ~/.cache/adlib)."""
    base = os.environ.get("ADLIB_CACHE") or Path.home() / ".cache" / "adlib"
    return Path(base) / "lea_net_maps"


def map_cache_path(images, s: dict, seed: int, fold: int, tag: str = "") -> Path:
    """The cache file of one fold's maps: named by data, settings, seed, fold and the code hash
    of this study (the same hash its rows carry)."""
    keys = ("image_size", "folds", "colouriser_epochs", "colouriser_width", "colouriser_lr", "fancy_pca")
    code = code_hash(__name__)
    data = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:12]
    name = json.dumps([tag, data, code, seed, fold, {k: s[k] for k in keys}], sort_keys=True)
    return map_cache_dir() / f"{hashlib.sha256(name.encode()).hexdigest()[:20]}.pt"


def fold_colouriser(images, labels, s: dict, seed: int, fold: int, device: str = "cpu",
                    progress: bool | str = False):
    """The colouriser of one fold, trained on the normal images of its training part."""
    train, _ = fold_split(labels, s["folds"], seed, fold)
    normal = train[np.asarray(labels)[train] == 0]
    return lea.train_colouriser(images[normal], image_size=s["image_size"], width=s["colouriser_width"],
                                epochs=s["colouriser_epochs"], lr=s["colouriser_lr"],
                                alpha_std=s["fancy_pca"], seed=seed, device=device, amp=s["amp"],
                                progress=progress)


def fold_maps(images, labels, s: dict, seed: int, fold: int, device: str = "cpu", tag: str = "",
              colouriser=None):
    """Colour maps (N, 1, S, S), raw maxima (N,) and the colouriser's seconds for one fold;
    cached (see :func:`map_cache_path`), so every cell of a grid shares them. ``colouriser``:
    an already trained one for this fold (the notebook's, with its progress bar)."""
    path = map_cache_path(images, s, seed, fold, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_suffix(".lock")):   # parallel workers train one colouriser
        if path.exists():
            saved = torch.load(path)
            return saved["maps"], saved["max"], saved["seconds"]
        started = time.perf_counter()
        model = colouriser or fold_colouriser(images, labels, s, seed, fold, device).model
        maps, peak = lea.colour_anomaly_maps(model, images)
        seconds = time.perf_counter() - started
        torch.save({"maps": maps, "max": peak, "seconds": seconds}, str(path) + ".part")
        os.replace(str(path) + ".part", path)
    return maps, peak, seconds


# ----------------------------------------------------------------------------- one task

def train_fold(s: dict, images, labels, maps, peak, seed: int, fold: int, device: str = "cpu",
               progress: bool | str = False, checkpoint_dir=None) -> dict:
    """Train on the fold's training part and score its test part: ``{"metrics", "model"
    (None for the references), "probability", "train_probability", "threshold", "test",
    "train_seconds", "final_loss"}``. ``metrics``: F1 at 0.5 (the paper's rule), accuracy,
    image AUROC, and ``f1_train_threshold``, the F1 at ``threshold``: the one with the best F1
    on the training part's own probabilities, centred in their gap (:func:`best_threshold`;
    the references' decisions are already 0 / 1)."""
    train, test = fold_split(labels, s["folds"], seed, fold, s["anomalous_fraction"])
    out = {"model": None, "test": test, "train_seconds": 0.0, "final_loss": None}
    if s["model"] == "always_anomalous":
        out["probability"], out["train_probability"] = np.ones(len(test)), np.ones(len(train))
    elif s["model"] == "map_max":
        threshold = lea.best_threshold(labels[train].numpy(), peak[train].numpy())
        out["probability"] = (peak[test].numpy() >= threshold).astype(float)
        out["train_probability"] = (peak[train].numpy() >= threshold).astype(float)
    else:
        torch.manual_seed(seed)
        net = lea.LEANet(s["adn"], s["caan"], s["point"], s["input"], width=s["width"],
                         image_size=s["image_size"], gate=s["gate"])
        fitted = lea.train_lea_net(net, images[train], maps[train], labels[train], epochs=s["epochs"],
                                   lr=s["lr"] or PAPER_LR[s["adn"]], batch_size=s["batch_size"], seed=seed,
                                   device=device, amp=s["amp"], progress=progress,
                                   checkpoint_dir=checkpoint_dir, bn_stats=s["bn_stats"])
        out.update(model=fitted.model, probability=lea.predict(fitted.model, images[test], maps[test]),
                   train_probability=lea.predict(fitted.model, images[train], maps[train]),
                   train_seconds=fitted.train_seconds, final_loss=float(fitted.history["train_loss"].iloc[-1]),
                   history=fitted.history)
    out["metrics"] = lea.classification_metrics(labels[test].numpy(), out["probability"])
    if s["model"] == "lea_net":
        out["threshold"] = lea.best_threshold(labels[train].numpy(), out["train_probability"], centre=True)
        out["metrics"]["f1_train_threshold"] = lea.classification_metrics(
            labels[test].numpy(), out["probability"], out["threshold"])["f1"]
    else:
        out["threshold"], out["metrics"]["f1_train_threshold"] = 0.5, out["metrics"]["f1"]
    return out


def run(task: Task) -> list[dict]:
    """Train and score one (cell, seed, category, fold)."""
    s, category = task.settings, task.categories[0]
    device = str(pick_device(task.device))
    images, labels = load_labelled(s["dataset"], task.data_root, category, s["image_size"], s["subsample"])
    maps, peak, _ = fold_maps(images, labels, s, task.seed, task.fold, device, tag=category)
    out = train_fold(s, images, labels, maps, peak, task.seed, task.fold, device)
    return [{"category": category, "fold": task.fold, "metrics": out["metrics"],
             "train_seconds": out["train_seconds"], "final_loss": out["final_loss"],
             "model": out["model"], "history": out.get("history")}]


def detector(settings, *, seed: int, device: str = "auto", progress: bool = False,
             checkpoint_root: str | None = None) -> ColourMapDetector:
    """LEA-Net's one unsupervised detector: its colour anomaly map (the colouriser trained on a
    category's normal images; ``colouriser_epochs = 0``: untrained). The ADN is supervised, so
    it has no detector of this shape; :func:`run` trains it by folds."""
    return detector_from_settings(ColourMapDetector, settings, seed=seed, device=device,
                                  progress=progress)


#: The colour map's rows: one colouriser per category (chapter 6's "LEA colour map").
colour_map_run = DetectorRun(detector, separate=True)


# ------------------------------------------------------------------ the GPU check

#: The paper's labelled data sets (Table 2): about 350 images each, a quarter of them anomalous.
LABELLED_IMAGES, LABELLED_NORMAL = 350, 260


def gpu_check(w) -> dict:
    """The chapter's GPU-check entry (``w``: an :class:`adlib.chapters.warmup.Warmup`): the colouriser
    and the classifier (ResNet18 + ResNet-based CAAN at the paper's width) each trained for
    about ``w.steps`` steps on one category's images (train goods normal, test defects
    anomalous), one scoring pass; the estimate is 5 folds of 500 colouriser epochs on the
    normals and 100 classifier epochs on a Table 2-sized data set."""
    s = w.settings
    items = [*w.split(w.categories[0], "train"), *w.split(w.categories[0], "test")]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([int(item["label"]) for item in items])
    per_epoch = max(1, math.ceil(len(images) / s["batch_size"]))
    epochs = max(1, math.ceil(w.steps / per_epoch))
    with w.meter() as colouring:
        fitted = lea.train_colouriser(images[labels == 0], image_size=w.size,
                                      width=s["colouriser_width"], epochs=epochs,
                                      device=w.device, amp=s["amp"])
        maps, _ = lea.colour_anomaly_maps(fitted.model, images)
    net = lea.LEANet(s["adn"], s["caan"], s["point"], width=s["width"], image_size=w.size)
    with w.meter(count_syncs=True) as fitting:
        result = lea.train_lea_net(net, images, maps, labels, epochs=epochs, lr=1e-4,
                                   device=w.device, amp=s["amp"])
    with w.meter() as scoring:
        lea.predict(result.model, images, maps)
    normal_rate = epochs * int((labels == 0).sum()) / colouring.seconds
    colouriser_s = s["folds"] * s["colouriser_epochs"] * LABELLED_NORMAL * 0.8 / normal_rate
    return w.row(fitting, epochs * len(images), epochs * per_epoch, scoring, len(images),
                 s["folds"] * s["epochs"] * LABELLED_IMAGES * 0.8,
                 s["folds"] * LABELLED_IMAGES * 0.2, "images", extra_s=colouriser_s)

