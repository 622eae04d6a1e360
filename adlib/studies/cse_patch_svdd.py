"""C-SE on Patch SVDD (chapter 1): the declared grids, claim checks and runner of its study.

Cells override the chapter's defaults (:func:`protocol`): the full model is C-SE + LBR in the
last 6 convolutions, r = 16. One model per category (the paper trains per category). The
``reference`` cells score the randomly initialised encoders (``epochs`` 0): the sanity
reference every direction claim needs the trained model to beat.
"""

from __future__ import annotations

from adlib.claims import ClaimCheck
from adlib.provenance import Fingerprint
from adlib.study.spec import Cell, Study, Task

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


VARIANTS = [Cell("variant", "Patch SVDD", {"attention": "none", "lbr": False}),
            Cell("variant", "+SE", {"attention": "se", "lbr": False}),
            Cell("variant", "+C-SE", {"attention": "cse", "lbr": False}),
            Cell("variant", DEFAULT, {})]
LAYERS = {n: Cell("layers", f"last {n}", {"attention_layers": n}) for n in (2, 4, 6, 8)}
R = {r: Cell("r", f"r={r}", {"reduction": r}) for r in (4, 8, 16, 32)}
LAM = {lam: Cell("λ", f"λ={lam:g}", {"lam": lam}) for lam in (0.001, 0.01, 0.1, 1.0)}
# variance of Gaussian noise on the training images, in the [0, 1] image scale: the paper's
# Table 7 values are not readable, these are our choice
NOISE = {v: Cell("noise", f"noise var {v:g}", {"train_noise_var": v}) for v in (0.0, 0.001, 0.01, 0.05)}
REFERENCE = [Cell("reference", "random init Patch SVDD", {"epochs": 0, "attention": "none", "lbr": False}),
             Cell("reference", "random init +C-SE+LBR", {"epochs": 0})]
GRIDS = {
    "smoke": [VARIANTS[0], VARIANTS[3], REFERENCE[1]],
    # the variant axis with both references: on the profile's categories, 3 seeds
    "study": VARIANTS + REFERENCE,
    # the other axes (the default cell of each is in `study`): run them on fewer categories
    "axes": list(LAYERS.values()) + list(R.values()) + list(LAM.values()) + list(NOISE.values()),
    # where position is not defined: does training beat the random encoder there?
    "textures": [VARIANTS[0], REFERENCE[0]],
    # the notebook's cpu run: its trained model against both random encoders
    "cpu": [VARIANTS[3]] + REFERENCE,
}
GRIDS["paper"] = VARIANTS + GRIDS["axes"] + REFERENCE

_SANITY = "random init +C-SE+LBR"
CHECKS = (
    ClaimCheck(1, order="+C-SE+LBR > Patch SVDD", ablation="variant", sanity=_SANITY,
               label="C-SE+LBR vs Patch SVDD"),
    ClaimCheck(2, order="+C-SE > Patch SVDD > +SE", ablation="variant", sanity=_SANITY,
               label="SE hurts, C-SE helps"),
    ClaimCheck(3, order="+C-SE+LBR > +C-SE > +SE", ablation="variant", sanity=_SANITY,
               label="module order"),
    ClaimCheck(5, order="last 6 > last 2, last 6 > last 4, last 6 > last 8", ablation="layers",
               sanity=_SANITY, label="C-SE in the last 6 layers"),
    ClaimCheck(5, order="r=16 > r=4, r=16 > r=8, r=16 > r=32", ablation="r", sanity=_SANITY,
               label="r = 16 best"),
    ClaimCheck(6, order="λ=1 | λ=0.001 > λ=0.01 | λ=0.1", ablation="λ", sanity=_SANITY,
               label="λ = 1 or 0.001 best"),
    ClaimCheck(7, order="noise var 0 > noise var 0.001 > noise var 0.01 > noise var 0.05",
               ablation="noise", sanity=_SANITY, label="AUROC falls with noise"),
    ClaimCheck(7, order="+C-SE+LBR > +C-SE", ablation="variant", metrics=("final_loss",),
               higher_is_better=False, label="LBR: lower loss"),
)


def run(task: Task) -> list[dict]:
    """Train one Patch SVDD per category of the task and score its test split."""
    from adlib.evaluation import evaluate_categories, study_results

    s = dict(task.settings)
    return study_results(evaluate_categories(
        lambda: make_model(s, seed=task.seed, device=task.device, progress=False),
        s["dataset"], task.data_root, task.categories, s["image_size"], show_progress=False))


def run_curve(task: Task) -> list[dict]:
    """:func:`run`, the test split also scored after every epoch (reporting only)."""
    from adlib.curves import curve_rows, separate_curves

    s = dict(task.settings)
    results, curves = separate_curves(
        lambda: make_model(s, seed=task.seed, device=task.device, progress=False),
        set_epochs, s["dataset"], task.data_root, task.categories, s["image_size"],
        epochs=s["epochs"])
    return curve_rows(results, curves)


def set_epochs(model, epochs: int, checkpoint_dir: str) -> None:
    """Make the next ``fit`` of a :class:`PatchSVDD` train up to ``epochs``, resuming there."""
    model.epochs, model.checkpoint_dir = epochs, checkpoint_dir


TITLES = {"variant": "Modules: none / SE / C-SE / C-SE + LBR",
          "layers": "C-SE in the last n convolutions", "r": "Reduction r of C-SE",
          "λ": "Loss weight λ", "noise": "Gaussian noise variance on the training images",
          "reference": "Reference: randomly initialised encoders"}


def make_model(settings, *, seed: int, device: str, progress: bool = True,
               checkpoint_root: str | None = None, **changes):
    """The :class:`PatchSVDD` of ``settings`` (a cell's settings) with ``changes``, for the
    notebook (e.g. ``attention="cse", lbr=False`` for the C-SE model without LBR); with
    ``checkpoint_root`` a killed training resumes from its last epoch."""
    from adlib.models.patch_svdd import PatchSVDD

    s = {**settings, **changes}
    keys = ("attention", "lbr", "attention_layers", "reduction", "train_noise_var", "lam",
            "epochs", "batch_size", "lr", "samples_per_image")
    return PatchSVDD(**{k: s[k] for k in keys},
                     patch_sizes=tuple(int(k) for k in str(s["patch_sizes"]).split(",")),
                     strides={32: s["stride32"], 64: s["stride64"]}, seed=seed, device=device,
                     progress=progress, checkpoint_root=checkpoint_root)


STUDY = Study(paper="cse_patch_svdd", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run,
              unit="category", default=DEFAULT, titles=TITLES,
              curve=run_curve,
              fingerprint=Fingerprint((DEFAULT,), "retina"))


# ------------------------------------------------------------------ the chapter's figures

def trained_vs_random_figure(trained, random_init, indices):
    """Test images (defect outlined) with the trained model's map and the random encoder's
    map of the same images; each model's maps share one colour scale (their distances live on
    different scales), so within a column hotter means more anomalous to that model."""
    import matplotlib.pyplot as plt
    import numpy as np

    from adlib.viz import _draw_mask_outline, _hide_ticks, _image_extent

    fig, axes = plt.subplots(len(indices), 3, figsize=(7.2, 2.4 * len(indices)), squeeze=False)
    columns = [(trained, f"trained (image AUROC {100 * trained.metrics['image_auroc']:.1f})"),
               (random_init, f"random init ({100 * random_init.metrics['image_auroc']:.1f})")]
    for row, i in zip(axes, indices):
        image = trained.test[i]["image"].permute(1, 2, 0).numpy()
        row[0].imshow(np.clip(image, 0, 1))
        extent = _image_extent(image)
        _draw_mask_outline(row[0], trained.masks[i], extent)
        row[0].set_ylabel(trained.test[i]["defect_type"], fontsize=9)
        for ax, (result, name) in zip(row[1:], columns):
            lo, hi = np.percentile(result.maps[indices], [1, 99.5])
            ax.imshow(result.maps[i], cmap="inferno", vmin=lo, vmax=hi)
            _draw_mask_outline(ax, result.masks[i], extent)
            if i == indices[0]:
                ax.set_title(name, fontsize=9)
        if i == indices[0]:
            row[0].set_title("test image", fontsize=9)
        for ax in row:
            _hide_ticks(ax)
    fig.suptitle(f"{trained.category}: where the maps put the defects", fontsize=11)
    fig.tight_layout()
    return fig
