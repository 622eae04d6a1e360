"""Chapter 6, every method side by side: the declared comparison grid (no paper, no claims): the
chapter's card -- the methods, their protocols, the grid and the study they declare.

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
chapter's own factory and run (the study module's ``RUNS``), scored as in its chapter.
A method that cannot work on a category still runs there: Patch SVDD's position task is not
defined on the textures and the IHC tiles (chapter 1), the colour map sees only colour.

A cell overrides ``method`` (and ``epochs = 0`` for the untrained reference, the detector
skeleton's convention). The protocol holds every chapter's settings under ``chapters``; a task
keeps only its own method's (:func:`resolve`), so a row names everything its method ran with and
nothing else, and its key does not move when another chapter's protocol does. The methods come
from the chapters' cards (``Chapter.compared``); the rows' code is the comparison's ``study.py``
and the chapters' study modules it imports (:mod:`adlib.study.provenance`), never a card. Rows carry the trainable parameter count as the metric ``parameters``
(deterministic), the inference seconds per image as ``inference_seconds`` and the peak memory of
training or scoring above the worker's start as ``peak_memory_mb`` (:class:`TimedDetector`):
measurements of this machine, kept out of the metrics, which fingerprints compare bit for bit.

The committed ``study`` grid (270 rows) took about 4.5 h of wall time on 2 CPU cores, Patch SVDD,
C-SE+LBR and noise-to-norm nearly all of it; its README gives the sittings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from adlib.chapters import registry
from adlib.chapters.base import Chapter, Compared, Finding
from adlib.chapters.comparison.study import detector, run
from adlib.chapters.data_and_metrics.study import protocol as knn_protocol
from adlib.data.embedded import EMBEDDED_CATEGORIES
from adlib.study.load import load_study
from adlib.study.provenance import Fingerprint
from adlib.study.spec import Cell, Study, cell_settings

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
#: Chapter 0's baseline has no study: its protocol is its notebook's (data set and size only).
KNN_CHAPTER = "data_and_metrics"
#: The methods the fingerprint runs (the book's own; a chapter from outside joins the grids, not
#: the fingerprint of the committed rows).
BOOK_METHODS = ("kNN", "Patch SVDD", "C-SE+LBR", "MAAE", "UniAD", "noise-to-norm",
                "LEA colour map", "RLR")


# ------------------------------------------------------------------ the methods

@dataclass(frozen=True)
class Method(Compared):
    """One contestant: what its chapter's card sends (:class:`Compared`: the config of that
    chapter's grid that is this model, the overrides of its untrained reference) and the chapter
    whose protocol and detector it takes."""

    chapter: str = ""

    @property
    def overrides(self) -> dict:
        """The overrides of ``config`` in its chapter's own grids (its model's cell)."""
        if self.config is None:
            return {}
        for cells in load_study(self.chapter).grids.values():
            for cell in cells:
                if cell.config == self.config:
                    return dict(cell.overrides)
        msg = f"{self.chapter} has no config {self.config!r} in its grids"
        raise KeyError(msg)


def methods() -> dict[str, Method]:
    """Every method, in book order: what each registered chapter sends (``Chapter.compared``),
    so a new chapter joins the comparison from its own card."""
    out: dict[str, Method] = {}
    for chapter in registry.chapters():
        for name, spec in chapter.compared.items():
            if name in out:
                msg = (f"chapters {out[name].chapter} and {chapter.key} both send a method "
                       f"named {name!r} to chapter 6; give each its own name")
                raise ValueError(msg)
            out[name] = Method(spec.config, spec.untrained, chapter=chapter.key)
    return out


def __getattr__(name: str) -> Any:
    # METHODS is read on use: it reads the registry, which imports this card
    if name == "METHODS":
        return methods()
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def chapter_protocol(key: str, profile: str, dataset: str, image_size: int) -> dict:
    """Chapter ``key``'s study protocol under ``profile`` (its study's ``protocol`` of its
    card's defaults, as :func:`adlib.chapters.profiles.resolve` gives them) with ``dataset``
    and ``image_size`` replaced."""
    if key == KNN_CHAPTER:
        return knn_protocol(dataset, image_size)
    defaults = registry.get_chapter(key).defaults(profile)
    cfg = SimpleNamespace(dataset=dataset, image_size=int(image_size),
                          epochs=int(defaults["epochs"]), batch_size=int(defaults["batch_size"]),
                          extra=defaults)
    return {**load_study(key).protocol(cfg), "dataset": dataset, "image_size": int(image_size)}


def protocol(cfg) -> dict:
    """The comparison's defaults under a profile: the common data and size, the method (a cell
    overrides it), ``epochs`` (None: each method's own; 0: untrained), and the protocol of
    every chapter with a method under the matching chapter profile (:data:`CHAPTER_PROFILE`)."""
    profile = CHAPTER_PROFILE[cfg.profile]
    keys = dict.fromkeys(m.chapter for m in methods().values())
    chapters = {k: chapter_protocol(k, profile, cfg.dataset, cfg.image_size) for k in keys}
    return {"dataset": cfg.dataset, "image_size": cfg.image_size, "method": "kNN", "epochs": None,
            "chapters": chapters}


def method_settings(settings: Mapping[str, Any]) -> dict:
    """The settings the method of a cell's ``settings`` runs with: its chapter's protocol, its
    chapter cell's overrides and, for ``epochs = 0``, its untrained overrides."""
    method = methods()[settings["method"]]
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


def resolve(settings: Mapping[str, Any]) -> dict:
    """A cell's settings as a task carries them (:attr:`Study.resolve`): the method's name and
    :func:`method_settings`, so a row names what its own method ran with and nothing else."""
    return {"method": settings["method"], **method_settings(settings)}


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


# ------------------------------------------------------------------ the grids

class Grids(Mapping):
    """The comparison's grids, built on use from :func:`methods` (the registry cannot be read
    while it imports this card): every method, and each trainable one untrained."""

    NAMES = ("smoke", "cpu", "study", "paper")

    def __getitem__(self, name: str) -> list[Cell]:
        found = methods()
        trained = [Cell("methods", m, {"method": m}) for m in found]
        untrained = [Cell("untrained", f"untrained {m}", {"method": m, "epochs": 0})
                     for m, spec in found.items() if spec.untrained is not None]
        if name == "cpu":   # the live part of the cpu profile: two cheap methods (RLR's untrained self is free)
            return ([c for c in trained if c.config in ("kNN", "RLR")]
                    + [c for c in untrained if c.config == "untrained RLR"])
        if name in self.NAMES:   # paper: on MVTec AD at 256 px, each chapter's paper protocol (a GPU)
            return trained + untrained
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


GRIDS = Grids()
CHECKS = ()
TITLES = {"methods": "Every method, trained as its chapter found it learns",
          "untrained": "Each trainable method untrained (epochs = 0): the reference it must beat"}

STUDY = Study(paper="comparison", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run,
              unit="all", titles=TITLES, resolve=resolve, detector=detector,
              fingerprint=Fingerprint(BOOK_METHODS, "brick"))
