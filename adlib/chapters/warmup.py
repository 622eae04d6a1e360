"""A chapter's warm-up: its ``paper`` settings trained for a few steps and scored once, timed.

The GPU check (:mod:`adlib.chapters.gpucheck`) runs every chapter's warm-up on a small tree; a notebook
under the ``paper`` profile runs its own on the run's data (:func:`paper_estimate`) and prints
the full run's estimated wall time before it commits to hours. A chapter's entry is a function
``Warmup -> row`` named by its ``CHAPTER`` (:class:`adlib.chapters.base.Chapter`); the :class:`Warmup`
it gets holds the data, the settings to time and the meters, so the chapter imports nothing
from here.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from adlib.chapters.base import Chapter
from adlib.data.sources import open_split
from adlib.study.load import load_study
from adlib.training.features import FeatureCache

MVTEC_TRAIN, MVTEC_TEST = 3629, 1725
CATEGORIES = ("bottle", "grid")


def write_tree(root: Path, size: int, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Smooth random images (+ a bright square and its mask for defects) in the MVTec layout."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def image(defect: bool) -> tuple[np.ndarray, np.ndarray]:
        phase = rng.uniform(0, 2 * np.pi, 3)
        rgb = np.stack([0.5 + 0.25 * np.sin(6 * (xx + yy) + p) for p in phase], -1)
        mask = np.zeros((size, size), bool)
        if defect:
            r, c = rng.integers(size // 8, size - size // 4, 2)
            mask[r:r + size // 8, c:c + size // 8] = True
            rgb[mask] = 1.0
        return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), mask

    for category in CATEGORIES:
        for split, folder, n in (("train", "good", n_train), ("test", "good", n_test),
                                 ("test", "broken", n_test)):
            (root / category / split / folder).mkdir(parents=True, exist_ok=True)
            if folder == "broken":
                (root / category / "ground_truth" / folder).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rgb, mask = image(folder == "broken")
                Image.fromarray(rgb).save(root / category / split / folder / f"{i:03d}.png")
                if folder == "broken":
                    Image.fromarray(mask.astype(np.uint8) * 255).save(
                        root / category / "ground_truth" / folder / f"{i:03d}_mask.png")
    return root


class Meter:
    """Wall time with the device synchronised at both ends; peak memory and host syncs on CUDA."""

    def __init__(self, device: str, count_syncs: bool = False):
        self.cuda = device.startswith("cuda")
        self.count_syncs = count_syncs and self.cuda
        self.torch, self.syncs, self.seconds, self.peak_gib = torch, 0, 0.0, math.nan

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        if self.count_syncs:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            self.torch.cuda.set_sync_debug_mode("warn")
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.count_syncs:
            self.torch.cuda.set_sync_debug_mode("default")
            self.syncs = sum("synchroniz" in str(w.message) for w in self._caught)
            self._warnings.__exit__(*exc)
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak_gib = self.torch.cuda.max_memory_allocated() / 2**30
        self.seconds = time.perf_counter() - self._start
        return False


def timing_row(chapter: str, train: Meter | None, train_items: int, steps: int, test: Meter,
               test_images: int, amp: str, full_train_items: float, full_test_images: float,
               unit: str, extra_s: float = 0.0) -> dict[str, Any]:
    """One row of the GPU check: the measured rates, and the full run's wall time at those rates
    (``full_*``: the items and test images of the full run; ``extra_s``: its other seconds)."""
    train_rate = train_items / train.seconds if train and train.seconds else math.nan
    test_rate = test_images / test.seconds
    full = (full_train_items / train_rate if train else 0.0) + full_test_images / test_rate + extra_s
    peaks = [m.peak_gib for m in (train, test) if m is not None and math.isfinite(m.peak_gib)]
    return {"chapter": chapter, "train items/s": round(train_rate, 1), "train unit": unit,
            "inference images/s": round(test_rate, 1),
            "peak GPU memory (GiB)": round(max(peaks), 2) if peaks else None, "AMP": amp,
            "host syncs / step": (round(train.syncs / steps, 2) if train and train.count_syncs
                                  else None),
            "steps timed": steps, "estimated paper wall time (h)": round(full / 3600, 3)}


@dataclass
class Warmup:
    """What a chapter's GPU-check entry gets: the data to time on, the settings, the meters.

    ``paper`` is the chapter's protocol under the ``paper`` profile; ``settings`` is a copy the
    entry may change (e.g. its epochs), with the chapter's ``gpucheck_small`` applied when the
    images are under 128 px.
    """

    MVTEC_TRAIN = MVTEC_TRAIN
    MVTEC_TEST = MVTEC_TEST

    chapter: Chapter
    paper: dict[str, Any]
    root: Path
    size: int
    device: str
    steps: int
    categories: tuple[str, ...] = CATEGORIES
    dataset: str = "mvtec_ad"
    settings: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        small = self.chapter.gpucheck_small if self.size < 128 else {}
        self.settings = copy.deepcopy({**self.paper, **small})

    def split(self, category: str, split: str):
        """The ``train`` or ``test`` split of ``category`` at the warm-up's size."""
        return open_split(self.dataset, Path(self.root), category, split, self.size)

    def meter(self, count_syncs: bool = False) -> Meter:
        return Meter(self.device, count_syncs=count_syncs)

    def row(self, train: Meter | None, train_items: int, steps: int, test: Meter,
            test_images: int, full_train_items: float, full_test_images: float, unit: str,
            extra_s: float = 0.0) -> dict[str, Any]:
        """:func:`timing_row`, named by the chapter, AMP as the chapters use it (fp16 on CUDA)."""
        amp = "fp16" if self.device.startswith("cuda") else "off"
        return timing_row(self.chapter.label, train, train_items, steps, test, test_images, amp,
                          full_train_items, full_test_images, unit, extra_s)

    def run(self) -> dict[str, Any]:
        """The chapter's entry on this warm-up: its row."""
        check = self.chapter.gpucheck_function()
        if check is None:
            msg = (f"chapter {self.chapter.key} declares no gpucheck entry; add "
                   "gpucheck='<function>' to its CHAPTER")
            raise ValueError(msg)
        return check(self)


def feature_model_check(w: Warmup) -> dict[str, Any]:
    """The entry of a unified feature-reconstruction chapter (MAAE, RLR), whose detector factory
    takes a feature ``cache``: features cached once (random backbone weights: nothing is
    downloaded), then the paper settings trained for about ``w.steps`` steps on every category
    and scored on one."""
    make = load_study(w.chapter.key).detector
    s = w.settings
    trains = {c: w.split(c, "train") for c in w.categories}
    test = w.split(w.categories[0], "test")
    n_train = sum(len(t) for t in trains.values())
    per_epoch = max(1, math.ceil(n_train / s["batch_size"]))
    s["epochs"] = max(1, math.ceil(w.steps / per_epoch))
    cache = FeatureCache(s["backbone"], stages=s["stages"], image_size=w.size, device=w.device,
                         dtype=getattr(torch, s.get("feature_dtype", "float32")),
                         pretrained=False, show_progress=False)
    with w.meter() as extracting:
        for t in (*trains.values(), test):
            cache.get(t)
    detector = make(s, seed=0, device=w.device, progress=False, cache=cache)
    with w.meter(count_syncs=True) as fitting:
        detector.fit(trains)
    with w.meter() as scoring:
        detector.predict(test)
    extract_rate = (n_train + len(test)) / extracting.seconds
    return w.row(fitting, s["epochs"] * n_train, s["epochs"] * per_epoch, scoring, len(test),
                 w.paper["epochs"] * MVTEC_TRAIN, MVTEC_TEST, "images",
                 extra_s=(MVTEC_TRAIN + MVTEC_TEST) / extract_rate)


def paper_estimate(chapter: Chapter, run: Any, steps: int = 20) -> str:
    """A short timed warm-up of the chapter's entry on the run's own data and device (or on a
    small tree of its size, see :attr:`Chapter.estimate_on`), and the wall time the full run
    would take at that rate: printed by a chapter before it commits to hours. ``run`` is the
    notebook's :class:`adlib.chapters.profiles.Setup`."""
    if chapter.gpucheck is None or run.protocol is None:
        return (f"no warm-up estimate for {chapter.key} yet (python -m adlib gpucheck times the "
                "chapters that declare a gpucheck entry)")
    size = run.cfg.image_size
    if chapter.estimate_on == "tree":
        with tempfile.TemporaryDirectory() as tmp:
            root = write_tree(Path(tmp), size, 8, 4)
            row = Warmup(chapter, run.protocol, root, size, run.device, steps).run()
    else:
        row = Warmup(chapter, run.protocol, Path(run.root), size, run.device, steps,
                     tuple(run.categories[:2]), run.cfg.dataset).run()
    return (f"warm-up, {row['steps timed']} training steps on {run.device}: "
            f"{row['train items/s']} {row['train unit']}/s, {row['inference images/s']} test "
            f"images/s, AMP {row['AMP']}; {chapter.estimate_of} would take about "
            f"{row['estimated paper wall time (h)']} h here")
