"""Chapter 6, every method side by side: the code that makes its rows.

A row is one method trained and scored as its chapter does it: the chapter's own ``run`` (its
detector factory, separate per category or unified as the chapter's protocol says), each
detector wrapped to measure its costs (:class:`TimedDetector`). The methods, their protocols and
the grid are declared in the chapter's card, outside this module's code hash; a task's settings
are already its own method's (the card's ``resolve``).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from adlib.chapters.cse_patch_svdd import study as cse_patch_svdd
from adlib.chapters.data_and_metrics import study as data_and_metrics
from adlib.chapters.lea_net import study as lea_net
from adlib.chapters.maae import study as maae
from adlib.chapters.noise_to_norm import study as noise_to_norm
from adlib.chapters.rlr import study as rlr
from adlib.study.spec import Task
from adlib.training.tasks import DetectorRun, evaluate_task
from adlib.training.train import pick_device

#: The book's methods -> (their chapter, the chapter's run over its detector factory), imported
#: here so that their code is this study's code. LEA-Net's full network is supervised, so its
#: method is the colour anomaly map alone. A chapter registered from outside the package is found
#: by :func:`method_run` instead.
RUNS: dict[str, tuple[str, DetectorRun]] = {
    "kNN": ("data_and_metrics", data_and_metrics.run),
    "Patch SVDD": ("cse_patch_svdd", cse_patch_svdd.run),
    "C-SE+LBR": ("cse_patch_svdd", cse_patch_svdd.run),
    "MAAE": ("maae", maae.run),
    "UniAD": ("maae", maae.run),
    "noise-to-norm": ("noise_to_norm", noise_to_norm.run),
    "LEA colour map": ("lea_net", lea_net.colour_map_run),
    "RLR": ("rlr", rlr.run),
}


def method_run(name: str) -> tuple[str, DetectorRun]:
    """The chapter and run of method ``name``: the book's from :data:`RUNS`; another from the
    registry, as the chapter's card sends it (``Chapter.compared``)."""
    if name in RUNS:
        return RUNS[name]
    # By name, at run time: the registry reads every card, and a chapter outside the package
    # cannot be imported here; so its code is not in this study's hash (the book's methods' is).
    registry = importlib.import_module("adlib.chapters.registry")
    load_study = importlib.import_module("adlib.study.load").load_study
    for chapter in registry.chapters():
        if name in chapter.compared:
            return chapter.key, load_study(chapter.key).run
    msg = f"no chapter sends a method named {name!r} to chapter 6"
    raise KeyError(msg)


def method_task(task: Task) -> Task:
    """The comparison task as its method's chapter would run it: its settings without the
    method's name, its chapter as paper."""
    settings = {k: v for k, v in task.settings.items() if k != "method"}
    chapter = method_run(task.settings["method"])[0]
    return replace(task, paper=chapter, settings=settings)


def detector(settings, *, seed: int, device: str = "auto", progress: bool = False,
             checkpoint_root: str | None = None) -> Any:
    """A fresh detector of the method that ``settings["method"]`` names, from its chapter's own
    factory (the rest of ``settings`` is that method's, the card's ``resolve``)."""
    method = method_run(settings["method"])[1]
    own = {k: v for k, v in settings.items() if k != "method"}
    return method.detector(own, seed=seed, device=device, progress=progress,
                           checkpoint_root=checkpoint_root)


def run(task: Task) -> list[dict]:
    """Train the task's method on its categories (separate or unified, as its chapter does) and
    score each: the engine's rows, plus the cost columns (the card's docstring)."""
    sub = method_task(task)
    method = method_run(task.settings["method"])[1]
    device = pick_device(task.device)
    settings = dict(sub.settings)

    def make() -> TimedDetector:
        return TimedDetector(method.detector(settings, seed=sub.seed, device=sub.device,
                                             progress=False), device)

    return [with_costs(row) for row in evaluate_task(make, sub, separate=method.separate)]


def with_costs(row: dict) -> dict:
    timed = row["model"]
    detector = timed.detector
    # the trainable parameters, as every chapter counts them; kNN trains none (its bank is data)
    parameters = getattr(detector, "parameter_count", 0)
    peaks = [p for p in (timed.fit_peak_mb, timed.peak_mb.get(row["category"])) if p is not None]
    return {**row, "model": detector, "inference_seconds": timed.seconds.get(row["category"]),
            "peak_memory_mb": max(peaks) if peaks else None,
            "metrics": {**row["metrics"], "parameters": float(parameters)}}


def _reset_peak_memory(device: Any) -> float | None:
    """Start a peak-memory window; the resident MB now (CPU) or 0 (CUDA), None: unmeasurable.

    CPU: Linux resets the process's resident high-water mark (VmHWM) when "5" is written to
    /proc/self/clear_refs, so the window's peak is this task's even in a reused worker."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return 0.0
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_mb("VmRSS")
    except OSError:
        return None


def _peak_memory_mb(device: Any, start: float | None) -> float | None:
    """The window's peak above its start, in MB (None: not measurable here)."""
    if start is None:
        return None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = _proc_status_mb("VmHWM")
    return None if peak is None else max(peak - start, 0.0)


def _proc_status_mb(field_name: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return float(line.split()[1]) / 1024   # kB
    return None


class TimedDetector:
    """A detector whose ``predict`` is timed (seconds per test image, by the test set's
    category) and whose ``fit`` and ``predict`` are measured for peak memory: MB above what the
    process held when each began (CPU resident memory; on CUDA the peak tensor memory), by
    category for ``predict``. A worker that ran other tasks before may reuse freed memory
    without growing, so CPU peaks are a lower bound; the table says so.

    A detector on a shared feature cache (MAAE, UniAD, RLR) reads features the cache may have
    extracted before (another seed in the same process); then the cache's mean backbone seconds
    per image are added, so every method's time includes its backbone."""

    def __init__(self, detector: Any, device: Any = "cpu"):
        self.detector, self.device = detector, device
        self.seconds: dict = {}
        self.peak_mb: dict = {}
        self.fit_peak_mb: float | None = None

    @property
    def history(self):
        return getattr(self.detector, "history", None)

    def fit(self, train: Any) -> TimedDetector:
        start = _reset_peak_memory(self.device)
        self.detector.fit(train)
        self.fit_peak_mb = _peak_memory_mb(self.device, start)
        return self

    def predict(self, test: Any):
        cache = getattr(self.detector, "cache", None)
        extracted = getattr(cache, "images_extracted", 0)
        memory = _reset_peak_memory(self.device)
        start = time.perf_counter()
        out = self.detector.predict(test)
        seconds = time.perf_counter() - start
        category = getattr(test, "category", None)
        self.peak_mb[category] = _peak_memory_mb(self.device, memory)
        if cache is not None and cache.images_extracted == extracted and extracted:
            seconds += len(test) * cache.seconds / cache.images_extracted
        self.seconds[category] = seconds / max(len(test), 1)
        return out
