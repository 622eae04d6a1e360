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

Per-paper entries in :data:`PAPER_DEFAULTS` override the common ones (the paper profile of
RLR trains 200 epochs, Patch SVDD's 300, ...). The notebook section that explains them is
the book's introduction ("Profiles").
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

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

#: Per-notebook overrides, keyed by the paper's short name (the notebook's ``PAPER``).
PAPER_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "data_and_metrics": {
        "cpu": {"image_size": 128},
        "study": {"image_size": 256},
        "paper": {"image_size": 256},
    },
    # Patch SVDD + C-SE. Below 128 px a 64-px patch covers (almost) the whole image, so the
    # small profiles train and score K=32 only; strides are in pixels of the resized image.
    "cse_patch_svdd": {
        "smoke": {"image_size": 64, "epochs": 1, "batch_size": 16, "max_categories": 1,
                  "patch_sizes": "32", "stride32": 16, "samples_per_image": 1, "lam": 1e-3},
        # cpu: the study's protocol, shortened to 1,200 steps (what fits the 2.5-minute notebook
        # budget), on the fundus images, the embedded category that learns fastest.
        "cpu": {"categories": ["retina"], "image_size": 96, "epochs": 6, "batch_size": 16,
                "patch_sizes": "32", "stride32": 8, "samples_per_image": 50, "lam": 1e-3},
        # 96 px: the smallest size where a 32-px patch's 8 neighbours (offset 24-31 px) fit
        # without clipping, so the position task is well posed (at 64 px most pairs clip).
        # The protocol in which the encoders learn (chapter 1, "What it took"): the paper's Adam
        # 1e-4 and lambda 1e-3, 2,400 steps of batch 16 (12 epochs x 200 steps), on the
        # categories where a patch's position is defined (the fundus, the placed coins). On
        # the textures and the IHC tiles the position task stays at chance and training
        # makes the random encoder worse (the `textures` grid measures it).
        "study": {"categories": ["retina", "coins"], "image_size": 96, "epochs": 12,
                  "batch_size": 16, "n_seeds": 3, "patch_sizes": "32", "stride32": 8,
                  "samples_per_image": 50, "lam": 1e-3},
        "paper": {"image_size": 256, "epochs": 300, "batch_size": 64, "patch_sizes": "64,32",
                  "stride64": 16, "stride32": 4, "samples_per_image": 100, "lam": 1e-3,
                  "grid": "paper"},
    },
    # MAAE (chapter 2). Lite0 stages 0-3 (strides 2-16) fused on the stride-16 grid: 8x8 tokens
    # at 128 px. CPU profiles: 6 blocks of width 64 instead of 18 of 256, lr 1e-3 for the few
    # epochs, channel standardisation of the features (training statistics only).
    "maae": {
        "smoke": {"image_size": 64, "epochs": 1, "batch_size": 16, "backbone": "tf_efficientnet_lite0",
                  "stages": (0, 1, 2, 3), "hidden": 16, "layers": 3, "group": 3, "heads": 2,
                  "dilation": 4, "neighbour": 3, "amplitude": 1.0, "ang_mode": "alternate",
                  "lambda_ang": 0.6, "lambda_re": 1.0, "jitter_scale": 20.0, "ffm_train": False,
                  "lr": 1e-3, "map_sigma": 1.0, "standardize": True, "feature_dtype": "float32"},
        "cpu": {"image_size": 128, "epochs": 8, "batch_size": 16, "backbone": "tf_efficientnet_lite0",
                "stages": (0, 1, 2, 3), "hidden": 64, "layers": 6, "group": 3, "heads": 4,
                "dilation": 4, "neighbour": 7, "amplitude": 1.0, "ang_mode": "alternate",
                "lambda_ang": 0.6, "lambda_re": 1.0, "jitter_scale": 20.0, "ffm_train": False,
                "lr": 1e-3, "map_sigma": 2.0, "standardize": True, "feature_dtype": "float32"},
        "study": {"image_size": 128, "epochs": 30, "batch_size": 16, "n_seeds": 5,
                  "backbone": "tf_efficientnet_lite0", "stages": (0, 1, 2, 3), "hidden": 64,
                  "layers": 6, "group": 3, "heads": 4, "dilation": 4, "neighbour": 7,
                  "amplitude": 1.0, "ang_mode": "alternate", "lambda_ang": 0.6, "lambda_re": 1.0,
                  "jitter_scale": 20.0, "ffm_train": False, "lr": 1e-3, "map_sigma": 2.0,
                  "standardize": True, "feature_dtype": "float32"},
        # The paper gives no epoch count: UniAD's 1000 (the nearest reference) stands in.
        "paper": {"dataset": "mvtec_ad", "image_size": 256, "epochs": 1000, "batch_size": 64,
                  "backbone": "tf_efficientnet_b4", "stages": (0, 1, 2, 3), "hidden": 256,
                  "layers": 18, "group": 3, "heads": 8, "dilation": 4, "neighbour": 7,
                  "amplitude": 1.0, "ang_mode": "alternate", "lambda_ang": 0.6, "lambda_re": 1.0,
                  "jitter_scale": 20.0, "ffm_train": False, "lr": 1e-4, "map_sigma": 4.0,
                  "standardize": False, "feature_dtype": "float16", "grid": "paper"},
    },
    # Noise-to-norm M-net (chapter 3), one model per category. CPU profiles: 64 px (the M-net
    # halves 4 times: 4x4 at the bottom), width 8 instead of 32, lr 2e-3 annealed over the run;
    # pytorch-msssim's five scales then need a 3x3 Gaussian window instead of 11x11.
    "noise_to_norm": {
        "smoke": {"image_size": 64, "epochs": 1, "batch_size": 8, "max_categories": 1, "lam": 0.3,
                  "width": 4, "attention": True, "alpha": 0.84, "lr": 2e-3, "eta_min": 1e-6,
                  "t_max": 1, "patience": 20, "val_fraction": 0.2, "test_noise": True, "map_sigma": 2.0},
        "cpu": {"image_size": 64, "epochs": 20, "batch_size": 8, "max_categories": 2, "lam": 0.3,
                "width": 8, "attention": True, "alpha": 0.84, "lr": 2e-3, "eta_min": 1e-6,
                "t_max": 20, "patience": 20, "val_fraction": 0.2, "test_noise": True, "map_sigma": 4.0},
        "study": {"image_size": 64, "epochs": 60, "batch_size": 8, "n_seeds": 3, "lam": 0.3,
                  "width": 8, "attention": True, "alpha": 0.84, "lr": 2e-3, "eta_min": 1e-6,
                  "t_max": 60, "patience": 20, "val_fraction": 0.2, "test_noise": True, "map_sigma": 4.0},
        # The paper: 256 px, AdamW betas (0.5, 0.999), cosine T_max 100 down to 1e-6, at most 500
        # epochs, early stopping after 20 epochs without improvement. Its "initial lr 1e-6" equals
        # eta_min, which would make the schedule a constant: read as a typo, lr 1e-4 here.
        "paper": {"dataset": "mpdd", "image_size": 256, "epochs": 500, "batch_size": 8, "lam": 0.3,
                  "width": 32, "attention": True, "alpha": 0.84, "lr": 1e-4, "eta_min": 1e-6,
                  "t_max": 100, "patience": 20, "val_fraction": 0.2, "test_noise": True,
                  "map_sigma": 4.0, "grid": "paper"},
    },
    # RLR (chapter 5). hidden / windows are per backbone stage 1, 2, 3 (strides 4/8/16).
    # CPU profiles reconstruct Lite0 stages 2-3 only: stage 1 at 128 px is a 32x32 grid whose
    # 1024x1024 attention costs ~10x the other two levels together.
    "lea_net": {
        "smoke": {"categories": ["ihc"], "image_size": 64, "epochs": 2, "batch_size": 16, "folds": 2,
                  "adn": "resnet18", "caan": "resnet", "point": 4, "input": "rgb", "width": 8,
                  "gate": "paper", "lr": None, "anomalous_fraction": 1.0, "colouriser_epochs": 3,
                  "colouriser_width": 8, "colouriser_lr": 1e-3, "fancy_pca": 0.08, "amp": True},
        "cpu": {"categories": ["ihc"], "image_size": 128, "epochs": 20, "batch_size": 16, "folds": 2,
                "adn": "resnet18", "caan": "resnet", "point": 4, "input": "rgb", "width": 16,
                "gate": "paper", "lr": None, "anomalous_fraction": 1.0, "colouriser_epochs": 40,
                "colouriser_width": 16, "colouriser_lr": 1e-3, "fancy_pca": 0.08, "amp": True},
        "study": {"categories": ["ihc"], "image_size": 128, "epochs": 30, "batch_size": 16, "folds": 5,
                  "n_seeds": 3, "adn": "resnet18", "caan": "resnet", "point": 4, "input": "rgb",
                  "width": 16, "gate": "paper", "lr": None, "anomalous_fraction": 1.0,
                  "colouriser_epochs": 60, "colouriser_width": 16, "colouriser_lr": 1e-3,
                  "fancy_pca": 0.08, "amp": True},
        "paper": {"dataset": "labelled", "image_size": 256, "epochs": 100, "batch_size": 16, "folds": 5,
                  "adn": "resnet18", "caan": "resnet", "point": 4, "input": "rgb", "width": 64,
                  "gate": "paper", "lr": None, "anomalous_fraction": 1.0, "colouriser_epochs": 500,
                  "colouriser_width": 64, "colouriser_lr": 1e-3, "fancy_pca": 0.08, "amp": True,
                  "grid": "paper"},
    },
    "rlr": {
        "smoke": {"image_size": 64, "epochs": 1, "batch_size": 16, "backbone": "tf_efficientnet_lite0",
                  "stages": (2, 3), "hidden": (8, 16, 32), "windows": (5, 3, 3), "blocks": 1,
                  "heads": 4, "alpha": 2.0, "lr": 1e-3, "standardize": True, "map_sigma": 1.0,
                  "perturbation": "jitter"},
        "cpu": {"image_size": 128, "epochs": 6, "batch_size": 16, "backbone": "tf_efficientnet_lite0",
                "stages": (2, 3), "hidden": (8, 32, 64), "windows": (7, 5, 3), "blocks": 1,
                "heads": 4, "alpha": 2.0, "lr": 1e-3, "standardize": True, "map_sigma": 2.0,
                "perturbation": "jitter"},
        "study": {"image_size": 128, "epochs": 8, "batch_size": 16, "backbone": "tf_efficientnet_lite0",
                  "stages": (2, 3), "hidden": (8, 32, 64), "windows": (7, 5, 3), "blocks": 1,
                  "heads": 4, "alpha": 2.0, "lr": 1e-3, "standardize": True, "map_sigma": 2.0,
                  "perturbation": "jitter"},
        "paper": {"dataset": "mvtec_ad", "image_size": 256, "epochs": 200, "batch_size": 16,
                  "backbone": "tf_efficientnet_b6", "stages": (1, 2, 3), "hidden": (128, 256, 512),
                  "windows": (11, 7, 5), "blocks": 4, "heads": 8, "alpha": 2.0, "lr": 1e-4,
                  "standardize": False, "map_sigma": 4.0, "perturbation": "jitter", "grid": "paper"},
    },
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
    """The defaults a profile gives one paper's notebook (common ones, then the paper's)."""
    if profile not in COMMON:
        msg = (f"unknown profile {profile!r}; expected one of {', '.join(PROFILE_NAMES)} "
               "(e.g. `papermill ... -p profile cpu`)")
        raise ValueError(msg)
    out = dict(COMMON[profile])
    out.update(PAPER_DEFAULTS.get(paper, {}).get(profile, {}))
    return out


def resolve(paper: str, profile: str = "cpu", *, dataset: str | None = None,
            data_root: str | None = None, categories: list[str] | str | None = None,
            image_size: int | None = None, epochs: int | None = None,
            batch_size: int | None = None, device: str = "auto", seed: int = 0,
            output_dir: str = "runs", **extra: Any) -> RunConfig:
    """Fill every ``None`` parameter from ``profile``; explicit values win.

    ``categories`` may be a list or a comma-separated string (convenient with papermill's
    ``-p categories carpet,grid``). The paper's own settings (``PAPER_DEFAULTS``: backbone,
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
        from adlib.resources import docs_url

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

    def save_record(self, results: list, study: Any = None, notes: str = "",
                    notebook: str | None = None, metrics: dict | None = None, **params: Any):
        """Write this run's :class:`adlib.results.RunRecord` to ``output_dir``: the main
        model's metrics per category (``results``, or ``metrics`` as ``{category: {metric:
        value}}`` where the chapter's results are not per-category, e.g. per fold), the grid's
        rows and the claims checked on them."""
        from adlib.evaluation import metrics_for_record
        from adlib.papers import PAPERS
        from adlib.results import RunRecord, hardware_info

        c = self.cfg
        rows = [] if study is None else study.record_rows()
        entry = PAPERS.get(c.paper)
        record = RunRecord(paper=c.paper, notebook=notebook or (entry.notebook if entry else c.paper),
                           profile=c.profile, dataset=c.dataset, data_root=c.data_root,
                           categories=self.categories, params={**c.as_dict(), **params},
                           seeds=c.seeds, ablations=rows,
                           metrics=metrics if metrics is not None else metrics_for_record(results),
                           claims=study.claims if study is not None else [],
                           hardware=hardware_info(self.device),
                           wall_time_s=time.perf_counter() - self.started, notes=notes)
        return record.save(c.output_dir)

    def describe(self) -> str:
        c = self.cfg
        return (f"profile {c.profile}: {c.dataset} at {c.image_size} px, {len(self.categories)} "
                f"categories ({', '.join(self.categories)}), {c.epochs} epochs, batch "
                f"{c.batch_size}, seeds {c.seeds}, grid {c.grid}, device {self.device}")


def setup(paper: str, profile: str = "cpu", *, data_seed: int = 0, threads: int | None = None,
          **params: Any) -> Setup:
    """One call for a notebook's first cell: profile resolved (:func:`resolve`), data root
    found (the embedded default generated on first use), categories chosen, device chosen.

    ``data_seed`` makes the embedded data set; it is separate from the training ``seed``, so
    changing the seed never regenerates the data. ``threads`` sets torch's CPU threads (one
    is fastest for small models on a shared machine). For a paper with a study,
    ``Setup.protocol`` holds its defaults under this profile; under the ``paper`` profile a
    short timed warm-up prints the full run's estimated wall time before it commits to hours.
    """
    from adlib.data.sources import choose_categories, resolve_root
    from adlib.papers import PAPERS
    from adlib.train import pick_device

    started = time.perf_counter()
    cfg = resolve(paper, profile, **params)
    root = resolve_root(cfg.dataset, cfg.data_root, seed=data_seed)
    categories = choose_categories(cfg.dataset, root, cfg.categories, cfg.max_categories)
    device = str(pick_device(cfg.device))
    if threads and device == "cpu":
        import torch

        torch.set_num_threads(threads)
    run = Setup(cfg, root, categories, device, started)
    if paper in PAPERS and PAPERS[paper].study:
        from adlib.study.spec import load_study

        run.protocol = load_study(paper).protocol(cfg)
    if profile == "paper" and run.protocol is not None:
        from adlib.gpucheck import paper_estimate

        print(paper_estimate(paper, run), flush=True)
    return run
