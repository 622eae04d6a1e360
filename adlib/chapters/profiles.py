"""The four run profiles, defined once for the whole book.

A notebook's ``parameters`` cell holds ``profile`` plus the explicit knobs (all ``None`` by
default); :func:`resolve` fills every ``None`` from the profile, so an explicit papermill
parameter always wins::

    cfg = resolve("rlr", profile="cpu", epochs=3)   # cpu defaults, but 3 epochs

=======  ==========================  ================================  ===================
profile  data                        size                              where
=======  ==========================  ================================  ===================
smoke    embedded default, 2 cats    tiny: 64 px, 1 epoch              pytest (seconds)
cpu      embedded or ``data_root``   reduced: 128 px                   ``make book``, CI
study    embedded, all categories    full ablation grid, 3 seeds       a developer's CPU
paper    the real data set           the paper's protocol              a GPU / Colab
=======  ==========================  ================================  ===================

Each chapter's own settings, declared in its ``CHAPTER`` (:class:`adlib.chapters.base.Chapter`,
collected by :mod:`adlib.chapters.registry`), override the common ones (the paper profile of RLR trains 200
epochs, Patch SVDD's 300, ...). The notebook section that explains them is the book's
introduction ("Profiles").
"""

from __future__ import annotations

import copy
import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pandas as pd
import torch

from adlib.chapters.base import Chapter
from adlib.chapters.registry import chapters, get_chapter
from adlib.chapters.warmup import paper_estimate
from adlib.data.sources import choose_categories, resolve_root
from adlib.resources import docs_url
from adlib.study.load import load_study
from adlib.study.results import RunRecord, hardware_info
from adlib.training.evaluation import metrics_for_record
from adlib.training.train import pick_device

PROFILE_NAMES = ("smoke", "cpu", "study", "paper")

#: Defaults shared by every notebook.
COMMON: dict[str, dict[str, Any]] = {
    "smoke": {"dataset": "embedded", "categories": None, "image_size": 64, "epochs": 1,
              "batch_size": 8, "n_seeds": 1, "grid": "smoke", "max_categories": 2},
    "cpu": {"dataset": "embedded", "categories": None, "image_size": 128, "epochs": 5,
            "batch_size": 16, "n_seeds": 1, "grid": "cpu", "max_categories": None},
    "study": {"dataset": "embedded", "categories": None, "image_size": 128, "epochs": 10,
              "batch_size": 16, "n_seeds": 3, "grid": "study", "max_categories": None},
    "paper": {"dataset": "mvtec_ad", "categories": None, "image_size": 256, "epochs": 100,
              "batch_size": 32, "n_seeds": 1, "grid": "study", "max_categories": None},
}

#: The paper-protocol data sets each loader understands; ``embedded`` is the built-in default.
DATASETS = ("embedded", "mvtec_ad", "mpdd", "btad", "visa", "labelled")


@dataclass
class RunConfig:
    """Every knob of one notebook run, after the profile has filled the gaps."""

    paper: str
    profile: str
    dataset: str
    data_root: str | None
    categories: list[str] | None
    image_size: int
    epochs: int
    batch_size: int
    device: str
    seed: int
    seeds: list[int]
    output_dir: str
    grid: str
    max_categories: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for run records)."""
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "extra"}
        out.update(copy.deepcopy(self.extra))
        return out


def profile_defaults(paper: str, profile: str) -> dict[str, Any]:
    """The defaults a profile gives one paper's notebook (common ones, then its chapter's; a key
    that names no chapter gets the common ones)."""
    if profile not in COMMON:
        msg = (f"unknown profile {profile!r}; expected one of {', '.join(PROFILE_NAMES)} "
               "(e.g. `papermill ... -p profile cpu`)")
        raise ValueError(msg)
    out = dict(COMMON[profile])
    chapter = next((c for c in chapters() if c.key == paper), None)
    if chapter is not None:
        unknown = sorted(set(chapter.profiles) - set(PROFILE_NAMES))
        if unknown:
            msg = (f"{chapter.module}: CHAPTER.profiles names {unknown}, which are not profiles; "
                   f"use {', '.join(PROFILE_NAMES)}")
            raise ValueError(msg)
        out.update(copy.deepcopy(chapter.defaults(profile)))
    return out


def resolve(paper: str, profile: str = "cpu", *, dataset: str | None = None,
            data_root: str | None = None, categories: list[str] | str | None = None,
            image_size: int | None = None, epochs: int | None = None,
            batch_size: int | None = None, device: str = "auto", seed: int = 0,
            output_dir: str = "runs", **extra: Any) -> RunConfig:
    """Fill every ``None`` parameter from ``profile``; explicit values win.

    ``categories`` may be a list or a comma-separated string (convenient with papermill's
    ``-p categories carpet,grid``). The chapter's own settings (its ``CHAPTER``: backbone,
    strides, ...) land in ``extra``; an extra keyword argument overrides one of them (``None``
    keeps the profile's value).
    """
    defaults = profile_defaults(paper, profile)
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    if data_root is not None and dataset is None and profile != "paper":
        dataset = "mvtec_ad"  # a real root without a named data set: MVTec layout
    chosen = {"dataset": dataset, "categories": categories, "image_size": image_size,
              "epochs": epochs, "batch_size": batch_size}
    values = {k: (defaults[k] if v is None else v) for k, v in chosen.items()}
    if values["dataset"] != "embedded" and categories is None:
        values["categories"] = None  # a profile's categories name embedded ones: all of a real set
    if values["dataset"] not in DATASETS:
        msg = f"unknown dataset {values['dataset']!r}; expected one of {', '.join(DATASETS)}"
        raise ValueError(msg)
    if values["dataset"] != "embedded" and data_root is None:
        msg = (f"dataset {values['dataset']!r} needs data_root (the folder holding it in its "
               f"official layout, see {docs_url('data/README.md')}); pass `-p data_root "
               "/path/to/data`, or use `-p dataset embedded` for the built-in default")
        raise ValueError(msg)
    n_seeds = int(extra.pop("n_seeds", None) or defaults["n_seeds"])
    grid = extra.pop("grid", None) or defaults["grid"]
    max_categories = extra.pop("max_categories", None) or defaults["max_categories"]
    for key, value in defaults.items():
        if key not in COMMON[profile] and extra.get(key) is None:
            extra[key] = value
    return RunConfig(paper=paper, profile=profile, dataset=values["dataset"],
                     data_root=None if data_root is None else str(data_root),
                     categories=values["categories"], image_size=int(values["image_size"]),
                     epochs=int(values["epochs"]), batch_size=int(values["batch_size"]),
                     device=device, seed=int(seed), seeds=[int(seed) + i for i in range(n_seeds)],
                     output_dir=str(output_dir), grid=grid, max_categories=max_categories,
                     extra=extra)


@dataclass
class Setup:
    """What a chapter's first cell needs: the resolved config, the data and the device."""

    cfg: RunConfig
    root: Any
    categories: list[str]
    device: str
    started: float
    protocol: dict[str, Any] | None = None  # the chapter's defaults (its study's protocol)

    @property
    def chapter(self) -> Chapter:
        """The chapter's registry entry (its card's ``CHAPTER``)."""
        return get_chapter(self.cfg.paper)

    @property
    def card(self) -> ModuleType:
        """The chapter's card: its grids, claim checks, titles, findings and deviations."""
        return importlib.import_module(self.chapter.module)

    @property
    def page(self) -> ModuleType:
        """The chapter's page module: the figures and tables its notebook shows."""
        return importlib.import_module(f"{self.chapter.module.rpartition('.')[0]}.page")

    def detector(self, settings: Mapping[str, Any] | None = None, *, seed: int | None = None,
                 resume: bool = True, **changes: Any) -> Any:
        """A fresh detector from the chapter's one factory: this run's protocol (or
        ``settings``) with ``changes``, this run's seed and device; with ``resume`` a killed
        training resumes from its checkpoint under ``output_dir``."""
        factory = load_study(self.cfg.paper).detector
        if factory is None:
            msg = f"{self.cfg.paper}'s study trains no detector of the factory's shape"
            raise TypeError(msg)
        root = f"{self.cfg.output_dir}/checkpoints/{self.cfg.paper}" if resume else None
        return factory({**(settings if settings is not None else self.protocol or {}), **changes},
                       seed=self.cfg.seed if seed is None else seed, device=self.device,
                       checkpoint_root=root)

    def save_record(self, results: list, study: Any = None, notes: str = "",
                    notebook: str | None = None, metrics: dict | None = None, **params: Any):
        """Write this run's :class:`adlib.study.results.RunRecord` to ``output_dir``: the main
        model's metrics per category (``results``, or ``metrics`` as ``{category: {metric:
        value}}`` where the chapter's results are not per-category, e.g. per fold), the grid's
        rows and the claims checked on them."""
        c = self.cfg
        rows = [] if study is None else study.record_rows()
        entry = next((ch for ch in chapters() if ch.key == c.paper), None)
        record = RunRecord(paper=c.paper, notebook=notebook or (entry.notebook if entry else c.paper),
                           profile=c.profile, dataset=c.dataset, data_root=c.data_root,
                           categories=self.categories, params={**c.as_dict(), **params},
                           seeds=c.seeds, ablations=rows,
                           metrics=metrics if metrics is not None else metrics_for_record(results),
                           claims=study.claims if study is not None else [],
                           hardware=hardware_info(self.device),
                           wall_time_s=time.perf_counter() - self.started, notes=notes)
        return record.save(c.output_dir)

    def only_category(self, why: str) -> str:
        """The one category a walk-through trains on (the first asked for), saying which of the
        requested ones it leaves out, so a dropped category is never silent."""
        first, rest = self.categories[0], self.categories[1:]
        if rest:
            print(f"note: this run trains on {first} only ({why}); {', '.join(rest)} not run "
                  f"here: rerun with `-p categories {rest[0]}`, or run the chapter's study "
                  "for every category", flush=True)
        return first

    def describe(self) -> str:
        c = self.cfg
        return (f"profile {c.profile}: {c.dataset} at {c.image_size} px, {len(self.categories)} "
                f"categories ({', '.join(self.categories)}), {c.epochs} epochs, batch "
                f"{c.batch_size}, seeds {c.seeds}, grid {c.grid}, device {self.device}")

    def settings_line(self, *keys: str) -> str:
        """The chapter's model settings in one line ("backbone resnet18 · hidden 64 · ..."),
        from this run's protocol: what a reader needs to rerun it, without a raw dict."""
        def text(value: Any) -> str:
            if isinstance(value, (list, tuple)):
                return ",".join(text(v) for v in value)
            return f"{value:g}" if isinstance(value, float) else str(value)

        protocol = self.protocol or {}
        return "model: " + " · ".join(f"{k} {text(protocol[k])}" for k in keys if k in protocol)


def display_defaults() -> None:
    """Tables a reader can scan: two decimals unless a table sets its own (pandas' default is
    six, which prints 1.400000)."""
    pd.set_option("styler.format.precision", 2)
    pd.set_option("display.precision", 2)


#: The parameters of every notebook's papermill cell, in its order.
NOTEBOOK_PARAMETERS = ("profile", "dataset", "data_root", "categories", "image_size", "epochs",
                       "batch_size", "device", "seed", "output_dir")


def setup(paper: str, profile: str | Mapping[str, Any] = "cpu", *, data_seed: int = 0,
          threads: int | None = None, **params: Any) -> Setup:
    """One call for a notebook's first cell: profile resolved (:func:`resolve`), data root
    found (the embedded default generated on first use), categories chosen, device chosen.

    ``profile`` is the profile's name, or the notebook's namespace (``setup("rlr", globals())``),
    from which the :data:`NOTEBOOK_PARAMETERS` are read: the path of a parameter such as
    ``epochs`` from the papermill cell to the optimiser is then: this call -> :func:`resolve`
    (a value not None wins over the chapter card's profile default) -> ``RunConfig.epochs`` ->
    the chapter's ``protocol`` (``Setup.protocol["epochs"]``) -> the chapter's ``detector``
    factory (:meth:`Setup.detector`) -> the model's config -> :func:`adlib.training.train.fit`.

    ``data_seed`` makes the embedded data set; it is separate from the training ``seed``, so
    changing the seed never regenerates the data. ``threads`` sets torch's CPU threads (one
    is fastest for small models on a shared machine). For a paper with a study,
    ``Setup.protocol`` holds its defaults under this profile; under the ``paper`` profile a
    short timed warm-up prints the full run's estimated wall time before it commits to hours.
    """
    started = time.perf_counter()
    if isinstance(profile, Mapping):
        params = {**{k: profile[k] for k in NOTEBOOK_PARAMETERS if k in profile}, **params}
        profile = params.pop("profile", "cpu")
    cfg = resolve(paper, profile, **params)
    root = resolve_root(cfg.dataset, cfg.data_root, seed=data_seed)
    categories = choose_categories(cfg.dataset, root, cfg.categories, cfg.max_categories)
    device = str(pick_device(cfg.device))
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    run = Setup(cfg, root, categories, device, started)
    display_defaults()
    # the registry's chapters, not PAPERS: chapter 6 has a study but no paper
    if any(c.key == paper and c.study for c in chapters()):
        run.protocol = load_study(paper).protocol(cfg)
    if profile == "paper" and run.protocol is not None:
        print(paper_estimate(get_chapter(paper), run), flush=True)
    return run
