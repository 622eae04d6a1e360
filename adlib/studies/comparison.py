"""Chapter 6, every method side by side: the declared comparison grid (no paper, no claims).

One grid runs every unsupervised method of chapters 0-5 on the same images (the embedded
default's six categories at :data:`IMAGE_SIZE` px), the same seeds (:data:`SEEDS`) and the same
metrics (image AUROC, pixel AUROC, AUPRO), each trainable one beside its untrained self::

    kNN                   chapter 0's baseline (PatchCore without coreset), one bank per category
    Patch SVDD, C-SE+LBR  chapter 1's model without and with its modules, one per category
    MAAE, UniAD           chapter 2's model and its UniAD baseline, unified (one model for all)
    noise-to-norm         chapter 3's M-net (lambda 0.3) with the paper's Eq. 7 MS-SSIM, one per
                          category: in chapter 3's study (64 px) the image score of the
                          pyramid form its default uses did not beat its untrained self, and
                          Eq. 7's did
    LEA colour map        chapter 4's colour anomaly map on its own: the colouriser trained on the
                          category's normal training images, the image score the map's maximum
    RLR                   chapter 5's model, unified

LEA-Net's full network is supervised (it trains on anomalous images), so it is not ranked here.

Each method runs the protocol its chapter found to learn (the chapter's ``study`` profile; the
comparison's ``smoke`` and ``paper`` profiles take the chapters' ``smoke`` and ``paper`` ones)
with the data set and image size replaced by the comparison's, and its detector comes from the
chapter's own factory (:data:`BUILDERS`), scored by :mod:`adlib.evaluation` as in its chapter.
A method that cannot work on a category still runs there: Patch SVDD's position task is not
defined on the textures and the IHC tiles (chapter 1), the colour map sees only colour.

A cell overrides ``method`` (and ``epochs = 0`` for the untrained reference, the detector
skeleton's convention). The protocol holds every chapter's settings under ``chapters``; a task
keeps only its own method's (:func:`resolve`), so a row names everything its method ran with and
nothing else, and its key does not move when another chapter's protocol does. The code hash
leaves out the declarations of the chapters' study modules it imports, as it does its own
(:mod:`adlib.provenance`). Rows carry the trainable parameter count as the metric ``parameters``
(deterministic), the inference seconds per image as ``inference_seconds`` and the peak memory of
training or scoring above the worker's start as ``peak_memory_mb`` (:class:`TimedDetector`):
measurements of this machine, kept out of the metrics, which fingerprints compare bit for bit.

The committed ``study`` grid (270 rows) took about 4.5 h of wall time on 2 CPU cores, Patch SVDD,
C-SE+LBR and noise-to-norm nearly all of it; its README gives the sittings.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from adlib.chapter import Chapter, Finding
from adlib.data.embedded import EMBEDDED_CATEGORIES
from adlib.provenance import Fingerprint
from adlib.studies import cse_patch_svdd, lea_net, maae, noise_to_norm, rlr
from adlib.study.spec import Cell, Study, Task, cell_settings

#: The one image size of every method. 128, not 96: LEA-Net's colouriser (its Table 9 U-Net)
#: halves down to 1x1 and needs a power of two, and at 64 px Patch SVDD's position task is ill
#: posed (a 32-px patch's neighbours clip; 96 px is chapter 1's smallest well-posed size). 128 is
#: also the size at which chapters 2, 4 and 5 ran their studies.
IMAGE_SIZE = 128
#: The seeds of every method (the profile's seeds: ``seed`` 0 and ``n_seeds`` of them).
SEEDS = (0, 1, 2)
#: The embedded default's six categories, for every method.
CATEGORIES = tuple(EMBEDDED_CATEGORIES)
#: The cpu profile's live part: an aligned object and a texture.
CPU_CATEGORIES = ("retina", "brick")
#: The chapter profile each comparison profile takes its methods' protocols from.
CHAPTER_PROFILE = {"smoke": "smoke", "cpu": "study", "study": "study", "paper": "paper"}
#: The chapters whose protocol and detector the methods reuse (chapter 0's kNN has no study).
CHAPTER_MODULES = {"cse_patch_svdd": cse_patch_svdd, "maae": maae, "noise_to_norm": noise_to_norm,
                   "lea_net": lea_net, "rlr": rlr}
KNN_CHAPTER = "data_and_metrics"

CHAPTER = Chapter(
    key="comparison", title="Every method side by side",
    notebook="06_comparison.ipynb",
    short="Comparison", paper=False,
    summary="every method and the kNN baseline on the same images, seeds and metrics, and what "
            "each costs",
    settings={"image_size": IMAGE_SIZE, "categories": list(CPU_CATEGORIES), "n_seeds": 1},
    profiles={
        "smoke": {"image_size": 64, "categories": None, "max_categories": 1},
        "study": {"categories": list(CATEGORIES), "n_seeds": len(SEEDS)},
        "paper": {"dataset": "mvtec_ad", "categories": None, "image_size": 256,
                  "n_seeds": len(SEEDS), "grid": "paper"},
    },
    paper_runs=("-p data_root /data/mvtec_anomaly_detection",),
    findings=(
        # what to use when: every comparison over the six categories (each the mean of its seeds)
        Finding("To rank images on data like these, start with kNN: it trains nothing, and over "
                "six categories we cannot tell it from MAAE, the best model here that trains ...",
                "kNN > MAAE", expect="could not tell"),
        Finding("... nor can we tell its maps from MAAE's at locating defects.", "kNN > MAAE",
                metric="pixel_auroc", expect="could not tell"),
        Finding("When one trained model must serve every category, take MAAE: it beats UniAD ...",
                "MAAE > UniAD"),
        Finding("... while over six categories we cannot tell it from RLR on images ...",
                "MAAE > RLR", expect="could not tell"),
        Finding("... nor on pixels.", "MAAE > RLR", metric="pixel_auroc", expect="could not tell"),
        Finding("We cannot tell RLR from UniAD on images ...", "RLR > UniAD",
                expect="could not tell"),
        Finding("... nor on pixels, where RLR's mean is a little lower.", "RLR > UniAD",
                metric="pixel_auroc", expect="could not tell"),
        Finding("Whether chapter 1's modules pay for themselves here we cannot tell: over six "
                "categories C-SE+LBR and plain Patch SVDD cannot be told apart.",
                "C-SE+LBR > Patch SVDD", expect="could not tell"),
        Finding("UniAD ranks images well above LEA-Net's colour map on average, but the gap varies "
                "so much between the six categories that we cannot tell the two apart.",
                "UniAD > LEA colour map", expect="could not tell"),
        # does each method learn? (the trained model against its untrained self)
        Finding("MAAE learns: it beats its untrained self by a wide margin ...",
                "MAAE > untrained MAAE"),
        Finding("... and so do UniAD ...", "UniAD > untrained UniAD"),
        Finding("... and RLR.", "RLR > untrained RLR"),
        Finding("Noise-to-norm's maps learn: they beat its untrained self's on pixels ...",
                "noise-to-norm > untrained noise-to-norm", metric="pixel_auroc"),
        Finding("... but at 128 px over the six categories we cannot tell its image score from "
                "its untrained self's (nor could chapter 3's study at 64 px).",
                "noise-to-norm > untrained noise-to-norm", expect="could not tell"),
        Finding("LEA's colouriser learns to recolour: its colour maps locate defects far better "
                "than the untrained colouriser's ...", "LEA colour map > untrained LEA colour map",
                metric="pixel_auroc"),
        Finding("... but as image scores we cannot tell their maximum from the untrained "
                "colouriser's.",
                "LEA colour map > untrained LEA colour map", expect="could not tell"),
        Finding("Over the six categories we cannot tell Patch SVDD from its untrained self on "
                "images: its position task is posed for aligned objects (chapter 1), and three "
                "textures and the IHC tiles are not that ...", "Patch SVDD > untrained Patch SVDD",
                expect="could not tell"),
        Finding("... nor C-SE+LBR from its untrained self.", "C-SE+LBR > untrained C-SE+LBR",
                expect="could not tell"),
        Finding("At the pixel level Patch SVDD's maps score below its untrained self's on average, "
                "but over six categories we cannot tell its trained patch features from a random "
                "encoder's ...",
                "Patch SVDD > untrained Patch SVDD", metric="pixel_auroc", expect="could not tell"),
        Finding("... and the same holds for C-SE+LBR.", "C-SE+LBR > untrained C-SE+LBR",
                metric="pixel_auroc", expect="could not tell"),
    ),
)


# ------------------------------------------------------------------ the methods

@dataclass(frozen=True)
class Method:
    """One contestant: the chapter whose protocol and detector it takes, the config of that
    chapter's grid that is this model (None: the chapter's protocol as it is), and the
    overrides of its untrained reference (None: it trains nothing)."""

    chapter: str
    config: str | None = None
    untrained: Mapping[str, Any] | None = field(default_factory=lambda: {"epochs": 0})

    @property
    def overrides(self) -> dict:
        """The overrides of ``config`` in its chapter's own grids (its model's cell)."""
        if self.config is None:
            return {}
        module = CHAPTER_MODULES[self.chapter]
        for cells in module.STUDY.grids.values():
            for cell in cells:
                if cell.config == self.config:
                    return dict(cell.overrides)
        msg = f"{module.__name__} has no config {self.config!r} in its grids"
        raise KeyError(msg)


METHODS: dict[str, Method] = {
    "kNN": Method(KNN_CHAPTER, untrained=None),
    "Patch SVDD": Method("cse_patch_svdd", "Patch SVDD"),
    "C-SE+LBR": Method("cse_patch_svdd", cse_patch_svdd.DEFAULT),
    "MAAE": Method("maae", maae.DEFAULT),
    "UniAD": Method("maae", "UniAD"),
    "noise-to-norm": Method("noise_to_norm", "Eq. 7 (per pixel)"),
    # the colouriser is what trains; LEA-Net's ADN and CAAN settings are not used
    "LEA colour map": Method("lea_net", untrained={"colouriser_epochs": 0}),
    "RLR": Method("rlr", rlr.DEFAULT),
}


def knn_protocol(dataset: str, image_size: int) -> dict:
    """Chapter 0's kNN baseline as its notebook builds it: smoothing sigma 4 px at 256 px."""
    return {"dataset": dataset, "image_size": image_size, "sigma": 4 * image_size / 256}


def chapter_protocol(key: str, profile: str, dataset: str, image_size: int) -> dict:
    """Chapter ``key``'s study protocol under ``profile`` (its ``protocol`` of its card's
    defaults, as :func:`adlib.profiles.resolve` gives them) with ``dataset`` and ``image_size``
    replaced. Built from the card, not through ``resolve``, which reads the registry and would
    bring the profiles, the run records and the warm-up into this study's code hash."""
    if key == KNN_CHAPTER:
        return knn_protocol(dataset, image_size)
    module = CHAPTER_MODULES[key]
    defaults = module.CHAPTER.defaults(profile)
    cfg = SimpleNamespace(dataset=dataset, image_size=int(image_size),
                          epochs=int(defaults["epochs"]), batch_size=int(defaults["batch_size"]),
                          extra=defaults)
    return {**module.protocol(cfg), "dataset": dataset, "image_size": int(image_size)}


def protocol(cfg) -> dict:
    """The comparison's defaults under a profile: the common data and size, the method (a cell
    overrides it), ``epochs`` (None: each method's own; 0: untrained), and every chapter's
    protocol under the matching chapter profile (:data:`CHAPTER_PROFILE`)."""
    profile = CHAPTER_PROFILE[cfg.profile]
    chapters = {k: chapter_protocol(k, profile, cfg.dataset, cfg.image_size)
                for k in (KNN_CHAPTER, *CHAPTER_MODULES)}
    return {"dataset": cfg.dataset, "image_size": cfg.image_size, "method": "kNN", "epochs": None,
            "chapters": chapters}


def method_settings(settings: Mapping[str, Any]) -> dict:
    """The settings the method of a cell's ``settings`` runs with: its chapter's protocol, its
    chapter cell's overrides and, for ``epochs = 0``, its untrained overrides."""
    method = METHODS[settings["method"]]
    chapter = settings["chapters"][method.chapter]
    overrides = dict(method.overrides)
    if settings["epochs"] == 0:
        if method.untrained is None:
            msg = f"{settings['method']} trains nothing, so it has no untrained reference"
            raise ValueError(msg)
        overrides.update(method.untrained)
    elif settings["epochs"] is not None:
        msg = (f"epochs={settings['epochs']!r}: the comparison takes each method's epochs from its "
               "chapter (None) or none at all (0, the untrained reference)")
        raise ValueError(msg)
    return {**cell_settings(chapter, Cell("", settings["method"], overrides)),
            "dataset": settings["dataset"], "image_size": settings["image_size"]}


def _device(task: Task):
    return None if task.device == "auto" else task.device


def _knn(task: Task):
    from adlib.models.knn_baseline import KNNBaseline

    s = task.settings
    return (lambda: KNNBaseline(image_size=s["image_size"], sigma=s["sigma"], seed=task.seed,
                                device=_device(task), progress=False)), True


def _patch_svdd(task: Task):
    return cse_patch_svdd._models(task), True


def _maae(task: Task):
    s = dict(task.settings)
    return maae._maae(s, task.seed, _device(task)), s["separate"]


def _noise_to_norm(task: Task):
    s = dict(task.settings)
    return (lambda: noise_to_norm.make_detector(s, seed=task.seed, device=task.device,
                                                progress=False)), True


def _colour_map(task: Task):
    return (lambda: ColourMapDetector(task.settings, seed=task.seed, device=task.device)), True


def _rlr(task: Task):
    return rlr._detectors(task), task.settings["separate"]


#: chapter -> ``Task -> (maker of fresh detectors, separate)``: each chapter's own factory, and
#: its own training (separate per category, or unified as its protocol says).
BUILDERS: dict[str, Callable[[Task], tuple[Callable[[], Any], bool]]] = {
    KNN_CHAPTER: _knn, "cse_patch_svdd": _patch_svdd, "maae": _maae,
    "noise_to_norm": _noise_to_norm, "lea_net": _colour_map, "rlr": _rlr}


def resolve(settings: Mapping[str, Any]) -> dict:
    """A cell's settings as a task carries them (:attr:`Study.resolve`): the method's name and
    :func:`method_settings`, so a row names what its own method ran with and nothing else."""
    return {"method": settings["method"], **method_settings(settings)}


def method_task(task: Task) -> Task:
    """The comparison task as its method's chapter would run it: its settings without the
    method's name, its chapter as study and paper."""
    settings = {k: v for k, v in task.settings.items() if k != "method"}
    chapter = METHODS[task.settings["method"]].chapter
    return replace(task, study=f"adlib.studies.{chapter}", paper=chapter, settings=settings)


def run(task: Task) -> list[dict]:
    """Train the task's method on its categories (separate or unified, as its chapter does) and
    score each: the engine's rows, plus the cost columns (module docstring)."""
    from adlib.evaluation import evaluate_task
    from adlib.train import pick_device

    sub = method_task(task)
    make, separate = BUILDERS[sub.paper](sub)
    device = pick_device(_device(task) or "auto")
    rows = evaluate_task(lambda: TimedDetector(make(), device), sub, separate=separate)
    return [_with_costs(row) for row in rows]


def _with_costs(row: dict) -> dict:
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
    import torch

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
    import torch

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


def _images(dataset: Any):
    import torch

    return torch.stack([dataset[i]["image"] for i in range(len(dataset))]).float()


class ColourMapDetector:
    """LEA-Net's colour anomaly map (chapter 4) as an unsupervised detector.

    ``fit``: :func:`adlib.models.lea_net.train_colouriser` on the category's (normal) training
    images, with the chapter's colouriser settings (as its ``fold_colouriser`` passes them);
    ``colouriser_epochs = 0`` keeps the initial weights train_colouriser starts from.
    ``predict``: :func:`adlib.models.lea_net.recolour`'s CIEDE2000 map ``(N, S, S)`` as the pixel
    map, undivided (the chapter divides each map by its own maximum, which would make every
    image's maximum 1), and its maximum as the image score (:func:`adlib.models.base.image_scores`).
    """

    name = "LEA colour map"

    def __init__(self, settings: Mapping[str, Any], *, seed: int = 0, device: str = "auto",
                 progress: bool | str = False):
        self.settings, self.seed, self.device = dict(settings), seed, device
        self.progress = progress
        self.model = None
        self.history = None
        self.train_seconds = 0.0

    @property
    def parameter_count(self) -> int:
        from adlib.nn import count_parameters

        return count_parameters(self.model) if self.model is not None else 0

    def fit(self, train: Any) -> ColourMapDetector:
        import torch

        import adlib.models.lea_net as lea
        from adlib.models.base import untrained_history
        from adlib.train import pick_device

        s = self.settings
        if s["colouriser_epochs"] == 0:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                model = lea.UNetColouriser(s["image_size"], s["colouriser_width"])
            self.model = model.to(pick_device(self.device)).eval()
            self.history = untrained_history()
            return self
        start = time.perf_counter()
        fitted = lea.train_colouriser(_images(train), image_size=s["image_size"],
                                      width=s["colouriser_width"], epochs=s["colouriser_epochs"],
                                      lr=s["colouriser_lr"], alpha_std=s["fancy_pca"],
                                      seed=self.seed, device=self.device, amp=s["amp"],
                                      progress=self.progress)
        self.train_seconds = time.perf_counter() - start
        self.model, self.history = fitted.model.eval(), fitted.history
        return self

    def predict(self, test: Any):
        import numpy as np

        import adlib.models.lea_net as lea
        from adlib.models.base import image_scores, not_fitted

        if self.model is None:
            raise not_fitted(self.name)
        maps = lea.recolour(self.model, _images(test))["delta_e"].astype(np.float32)
        return image_scores(maps), maps


# ------------------------------------------------------------------ the grids

TRAINED = [Cell("methods", name, {"method": name}) for name in METHODS]
UNTRAINED = [Cell("untrained", f"untrained {name}", {"method": name, "epochs": 0})
             for name, m in METHODS.items() if m.untrained is not None]
GRIDS = {
    "smoke": TRAINED + UNTRAINED,
    # the live part of the cpu profile: two cheap methods (and RLR's untrained self, free)
    "cpu": [c for c in TRAINED if c.config in ("kNN", "RLR")]
           + [c for c in UNTRAINED if c.config == "untrained RLR"],
    "study": TRAINED + UNTRAINED,
    "paper": TRAINED + UNTRAINED,   # on MVTec AD at 256 px, each chapter's paper protocol: a GPU
}
CHECKS = ()
TITLES = {"methods": "Every method, trained as its chapter found it learns",
          "untrained": "Each trainable method untrained (epochs = 0): the reference it must beat"}

STUDY = Study(paper="comparison", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run,
              unit="all", titles=TITLES, resolve=resolve,
              fingerprint=Fingerprint(tuple(METHODS), "brick"))
