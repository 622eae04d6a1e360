"""RLR (chapter 5): the declared grids, claim checks and runner of its study.

Cells override the chapter's defaults (:func:`protocol`, from ``adlib.profiles``). Every
cell trains ONE model on all categories (the paper's unified setting) unless it sets
``separate``. ``reference / untrained`` scores the untrained model: the sanity reference a
claim needs the trained model to beat.
"""

from __future__ import annotations

from dataclasses import fields

from adlib.claims import ClaimCheck
from adlib.study import Cell, Study, Task

#: Settings of the RLR model itself (the rest of the protocol: data, backbone, training).
MODEL_KEYS = ("stages", "hidden", "windows", "blocks", "heads", "alpha", "lr", "standardize",
              "map_sigma", "perturbation")
DEFAULT = "MLKA+LCA"


def protocol(cfg) -> dict:
    """The chapter's defaults under a profile: data, backbone, training and model settings."""
    return {"dataset": cfg.dataset, "image_size": cfg.image_size,
            "backbone": cfg.extra["backbone"], "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "variant": DEFAULT, "separate": False,
            **{k: cfg.extra[k] for k in MODEL_KEYS}}


def _table3(*variants: str) -> list[Cell]:
    return [Cell("Table 3", v, {"variant": v}) for v in variants]


ALL_VARIANTS = ("Residual+Self Att.", "Residual+Cross Att.", "Cross Att.", "MLKA", "LCA",
                "Cross Att.+MLKA", "MLKA+LCA")
PERTURBATION = [Cell("perturbation", "perturbation=jitter", {"perturbation": "jitter"}),
                Cell("perturbation", "perturbation=none", {"perturbation": "none"})]
STAGES = [Cell("Table 4", f"stages={'-'.join(map(str, s))}", {"stages": list(s)})
          for s in ((1, 2), (2, 3), (1, 2, 3))]
REFERENCE = [Cell("reference", "untrained", {"epochs": 0})]
GRIDS = {
    "smoke": _table3("Residual+Self Att.", DEFAULT) + REFERENCE,
    "cpu": _table3("Residual+Self Att.", "Cross Att.", DEFAULT) + PERTURBATION + REFERENCE,
    "study": (_table3(*ALL_VARIANTS)
              + [Cell("Table 5", f"alpha={a:g}", {"alpha": a}) for a in (1.0, 2.0, 3.0)]
              + PERTURBATION
              + [Cell("training", "unified", {}), Cell("training", "separate", {"separate": True})]
              + REFERENCE),
    "stages": STAGES + REFERENCE,               # Table 4: stage 1 is a 32x32 grid at 128 px
    "core": _table3("Residual+Self Att.", DEFAULT) + REFERENCE,   # run with more --epochs
}
GRIDS["paper"] = GRIDS["study"] + STAGES

CHECKS = (
    ClaimCheck(1, absolute={"table": 1, "method": "Ours", "category": "mean"}, config=DEFAULT,
               dataset="mvtec_ad", label="MVTec AD mean"),
    ClaimCheck(2, absolute={"table": 2, "method": "Ours", "category": "mean"}, config=DEFAULT,
               dataset="visa", label="VisA mean"),
    ClaimCheck(3, configs=("Residual+Self Att.", "Cross Att.", DEFAULT), table=3,
               ablation="Table 3", sanity="untrained", label="Table 3 order"),
    ClaimCheck(3, configs=("Residual+Self Att.", DEFAULT), table=3, ablation="Table 3",
               sanity="untrained", label="MLKA+LCA vs residual baseline"),
    ClaimCheck(4, configs=("Cross Att.", "LCA"), table=3, ablation="Table 3",
               sanity="untrained", label="without MLKA"),
    ClaimCheck(4, configs=("Cross Att.+MLKA", DEFAULT), table=3, ablation="Table 3",
               sanity="untrained", label="with MLKA"),
    ClaimCheck(5, configs=("stages=1-2", "stages=2-3", "stages=1-2-3"), table=4,
               ablation="Table 4", sanity="untrained", label="Table 4 order"),
    ClaimCheck(6, configs=("alpha=1", "alpha=2", "alpha=3"), table=5, ablation="Table 5",
               sanity="untrained", label="Table 5 order"),
    ClaimCheck(7, order="perturbation=jitter > perturbation=none", ablation="perturbation",
               sanity="untrained", label="perturbation helps"),
)


def run(task: Task) -> list[dict]:
    """Train one configuration (unified, or one model per category) and score every category."""
    from adlib.evaluation import evaluate_categories, evaluate_unified, study_results
    from adlib.features import shared_feature_cache
    from adlib.models.rlr import RLRConfig, RLRDetector

    s = dict(task.settings)
    cache = shared_feature_cache(s["backbone"], stages=s["stages"], image_size=s["image_size"],
                                 device=None if task.device == "auto" else task.device)
    config = {f.name: s[f.name] for f in fields(RLRConfig) if f.name in s}
    config["seed"] = task.seed

    def detector():
        return RLRDetector(cache, device=task.device, progress=False, **config)

    if s["separate"]:
        results = evaluate_categories(detector, s["dataset"], task.data_root, task.categories,
                                      s["image_size"], show_progress=False)
    else:
        results = evaluate_unified(detector(), s["dataset"], task.data_root, task.categories,
                                   s["image_size"], show_progress=False)
    return study_results(results)


TITLES = {"Table 3": "Table 3: residual and attention variants",
          "Table 4": "Table 4: which backbone stages are reconstructed",
          "Table 5": "Table 5: LCA weight alpha", "perturbation": "Feature perturbation",
          "training": "Unified (one model) vs separate (one per category)",
          "reference": "Reference: the untrained model"}

STUDY = Study(paper="rlr", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run, unit="all",
              default=DEFAULT, titles=TITLES,
              sources=("adlib.models.rlr", "adlib.nn.reference_attention", "adlib.features",
                       "adlib.nn.backbones", "adlib.evaluation", "adlib.maps", "adlib.metrics",
                       "adlib.train", "adlib.checkpoint"))


def make_detector(cache, settings, *, seed: int, device: str, progress: bool = True):
    """The :class:`RLRDetector` of ``settings`` (a cell's settings), for the notebook."""
    from adlib.models.rlr import RLRConfig, RLRDetector

    config = {f.name: settings[f.name] for f in fields(RLRConfig) if f.name in settings}
    return RLRDetector(cache, device=device, progress=progress, **{**config, "seed": seed})
