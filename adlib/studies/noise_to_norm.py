"""Noise-to-norm M-net (chapter 3): the declared grids, claim checks and runner of its study.

Every cell trains one model per category (the paper's separate setting). ``reference`` holds
the two sanity references: the untrained M-net, and the distance to the mean training image
(a model that cannot beat a pixel difference has not learned to reconstruct).
"""

from __future__ import annotations

from dataclasses import fields

from adlib.claims import ClaimCheck
from adlib.study import Cell, Study, Task

#: Settings of the model and its training (the rest of the protocol: data, size, epochs).
MODEL_KEYS = ("lam", "width", "attention", "alpha", "lr", "eta_min", "t_max", "patience",
              "val_fraction", "test_noise", "map_sigma")
DEFAULT = "lambda=0.3"
MPDD_LIKE = "coins"   # the embedded category whose objects move and rotate: MPDD's role
LAMBDAS = (0.0, 0.2, 0.3, 0.4)


def protocol(cfg) -> dict:
    """The chapter's defaults under a profile: data, training and model settings."""
    return {"model": "mnet", "dataset": cfg.dataset, "image_size": cfg.image_size,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            **{k: cfg.extra[k] for k in MODEL_KEYS}}


def _lambdas(*values: float) -> list[Cell]:
    return [Cell("Table 4", f"lambda={v:g}", {"lam": v}) for v in values]


ATTENTION = [Cell("residual attention", "residual attention", {}),
             Cell("residual attention", "1x1 convolution", {"attention": False})]
REFERENCE = [Cell("reference", "untrained", {"epochs": 0}),
             Cell("reference", "mean image", {"model": "mean-image"})]
GRIDS = {
    "smoke": _lambdas(0.0, 0.3) + REFERENCE,
    "cpu": _lambdas(0.0, 0.3) + REFERENCE,
    "study": _lambdas(*LAMBDAS) + ATTENTION + REFERENCE,
}
GRIDS["paper"] = GRIDS["study"]

CHECKS = (
    ClaimCheck(1, absolute={"table": 1, "method": "Ours", "category": "mean"}, config=DEFAULT,
               dataset="mpdd", metrics=("image_auroc",), label="MPDD image mean"),
    ClaimCheck(2, absolute={"table": 1, "method": "Ours", "category": "tubes"}, config=DEFAULT,
               dataset="mpdd", metrics=("image_auroc",), label="MPDD tubes"),
    ClaimCheck(3, absolute={"table": 2, "method": "Ours", "category": "mean"}, config=DEFAULT,
               dataset="mpdd", metrics=("pixel_auroc",), label="MPDD pixel mean"),
    ClaimCheck(4, absolute={"table": 3, "method": "Ours", "category": "mean"}, config=DEFAULT,
               dataset="visa", metrics=("image_auroc",), label="VisA image mean"),
    ClaimCheck(5, order=f"{DEFAULT} > mean image", sanity="untrained",
               label="learns: beats the mean training image"),
    ClaimCheck(5, order=f"{DEFAULT} > lambda=0", ablation="Table 4", sanity="untrained",
               label="noise helps"),
    ClaimCheck(5, configs=tuple(f"lambda={v:g}" for v in LAMBDAS), table=4, ablation="Table 4",
               sanity="untrained", label="Table 4 order"),
    ClaimCheck(6, order="residual attention > 1x1 convolution", ablation="residual attention",
               sanity="untrained", label="residual attention vs 1x1 convolution",
               note="the paper's Table 5 is missing from its text; the claim is the text's"),
)


def run(task: Task) -> list[dict]:
    """Train one model per category (``task.categories``) and score its test split."""
    from adlib.evaluation import evaluate_categories, study_results
    from adlib.models.noise_to_norm import MeanImageBaseline

    s = dict(task.settings)
    device = "auto" if task.device == "auto" else task.device
    if s["model"] == "mean-image":
        def make():
            return MeanImageBaseline(s["map_sigma"])
    else:
        def make():
            return make_detector(s, seed=task.seed, device=device, progress=False)
    results = evaluate_categories(make, s["dataset"], task.data_root, task.categories,
                                  s["image_size"], show_progress=False)
    return study_results(results)


def make_detector(settings, *, seed: int, device: str, progress: bool = True,
                  checkpoint_root: str | None = None, category: str = ""):
    """The :class:`NoiseToNormDetector` of ``settings`` (a cell's settings); with
    ``checkpoint_root`` its training keeps ``last.pt`` in a folder named by the settings and
    category, so a killed run resumes."""
    from adlib.models.noise_to_norm import NoiseToNormConfig, NoiseToNormDetector
    from adlib.study import run_key

    config = {f.name: settings[f.name] for f in fields(NoiseToNormConfig) if f.name in settings}
    folder = (None if checkpoint_root is None
              else f"{checkpoint_root}/{run_key('noise_to_norm', settings, seed, category)}")
    return NoiseToNormDetector(device=device, progress=progress, checkpoint_dir=folder,
                               **{**config, "seed": seed})


TITLES = {"Table 4": "Table 4: the noise coefficient lambda",
          "residual attention": "Residual attention vs a 1x1 convolution (lambda = 0.3)",
          "reference": "References: the untrained M-net and the mean training image"}

STUDY = Study(paper="noise_to_norm", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run,
              unit="category", default=DEFAULT, titles=TITLES, helpers=(make_detector,),
              sources=("adlib.models.noise_to_norm", "adlib.nn.mnet", "adlib.evaluation",
                       "adlib.maps", "adlib.metrics", "adlib.train", "adlib.checkpoint"))
