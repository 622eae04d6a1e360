"""Noise-to-norm M-net (chapter 3): the declared grids, claim checks and runner of its study.

Every cell trains one model per category (the paper's separate setting). ``reference`` holds
the two sanity references: the untrained M-net, and the distance to the mean training image
(a model that cannot beat a pixel difference has not learned to reconstruct).
"""

from __future__ import annotations


from adlib.chapter import Chapter
from adlib.claims import ClaimCheck
from adlib.provenance import Fingerprint
from adlib.study.spec import Cell, Study, Task

# One model per category. CPU profiles: 64 px (the M-net halves 4 times: 4x4 at the bottom),
# width 8 instead of 32, lr 2e-3 annealed over the run; pytorch-msssim's five scales then need
# a 3x3 Gaussian window instead of 11x11.
CHAPTER = Chapter(
    key="noise_to_norm", title="Noise-to-norm M-net", notebook="03_noise_to_norm.ipynb",
    summary="reconstruct a noised image back to normal; residual attention and SKFF",
    model="adlib.models.noise_to_norm",
    settings={"image_size": 64, "epochs": 20, "batch_size": 8, "max_categories": 2, "lam": 0.3,
              "width": 8, "attention": True, "alpha": 0.84, "lr": 2e-3, "eta_min": 1e-6,
              "t_max": 20, "patience": 20, "val_fraction": 0.2, "test_noise": True,
              "map_sigma": 4.0},
    profiles={
        "smoke": {"epochs": 1, "max_categories": 1, "width": 4, "t_max": 1, "map_sigma": 2.0},
        "study": {"epochs": 60, "max_categories": None, "n_seeds": 3, "t_max": 60},
        # The paper: 256 px, AdamW betas (0.5, 0.999), cosine T_max 100 down to 1e-6, at most 500
        # epochs, early stopping after 20 epochs without improvement. Its "initial lr 1e-6" equals
        # eta_min, which would make the schedule a constant: read as a typo, lr 1e-4 here.
        "paper": {"dataset": "mpdd", "image_size": 256, "epochs": 500, "max_categories": None,
                  "width": 32, "lr": 1e-4, "t_max": 100, "grid": "paper"},
    },
    paper_runs=("-p data_root /data/mpdd",),
)

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
    from adlib.evaluation import evaluate_task
    from adlib.models.noise_to_norm import MeanImageBaseline

    s = dict(task.settings)
    if s["model"] == "mean-image":
        def make():
            return MeanImageBaseline(s["map_sigma"])
    else:
        def make():
            return make_detector(s, seed=task.seed, device=task.device, progress=False)
    return evaluate_task(make, task, separate=True)


def make_detector(settings, *, seed: int, device: str, progress: bool = True,
                  checkpoint_root: str | None = None, category: str = ""):
    """The :class:`NoiseToNormDetector` of ``settings``
    (:func:`adlib.models.base.detector_from_settings`; with ``checkpoint_root`` a killed
    training resumes)."""
    from adlib.models.base import detector_from_settings
    from adlib.models.noise_to_norm import NoiseToNormDetector

    return detector_from_settings(NoiseToNormDetector, settings, seed=seed, device=device,
                                  progress=progress, checkpoint_root=checkpoint_root,
                                  paper="noise_to_norm", category=category)


TITLES = {"Table 4": "Table 4: the noise coefficient lambda",
          "residual attention": "Residual attention vs a 1x1 convolution (lambda = 0.3)",
          "reference": "References: the untrained M-net and the mean training image"}

STUDY = Study(paper="noise_to_norm", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run,
              unit="category", default=DEFAULT, titles=TITLES,
              fingerprint=Fingerprint((DEFAULT,), "brick"))


def ordered(categories):
    """The MPDD-like category (moving, rotating objects) first, as the chapter shows it."""
    return sorted(categories, key=lambda c: c != MPDD_LIKE)


# ------------------------------------------------------------------ the chapter's figures

def _show(ax, img, title, **kw):
    ax.imshow(img, **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def noise_figure(image, lambdas=LAMBDAS, seed: int = 0):
    """One image under Eq. 1 at each lambda (shown back in [0, 1])."""
    import matplotlib.pyplot as plt
    import torch

    from adlib.models.noise_to_norm import add_noise, normalise

    x0 = normalise(image[None])
    fig, axes = plt.subplots(1, len(lambdas), figsize=(2.6 * len(lambdas), 2.8))
    for ax, lam in zip(axes, lambdas):
        x = add_noise(x0, lam, torch.Generator().manual_seed(seed))
        _show(ax, ((x[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy(), f"lambda = {lam:g}")
    fig.suptitle("x = (1 - lambda) x0 + lambda eps, eps ~ N(0.5, 0.5)")
    return fig


def identity_figure(detectors: dict, test, index: int):
    """The same anomalous image reconstructed by models trained at different lambdas, each
    with its map: without noise the network reproduces the defect."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(detectors), 4, figsize=(10, 2.7 * len(detectors)), squeeze=False)
    for row, (name, det) in zip(axes, detectors.items()):
        x0, noisy, y = (t[index:index + 1] for t in det.reconstruct(test))
        _, maps = det.predict(test)
        to_img = lambda t: ((t[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()  # noqa: E731
        _show(row[0], to_img(x0), f"{test.category}: {test[index]['defect_type']}")
        _show(row[1], to_img(noisy), f"{name}: input")
        _show(row[2], to_img(y), f"{name}: reconstruction")
        _show(row[3], maps[index], f"{name}: map", cmap="magma")
    return fig


def fig4(detector, result, train, indices):
    """The paper's Fig. 4 columns: image, ground truth, reconstruction, map, and the map
    thresholded at the 99th percentile of the held-out normal images' maps."""
    import matplotlib.pyplot as plt

    threshold = detector.pixel_threshold(train)
    _, _, y = detector.reconstruct(result.test)
    fig, axes = plt.subplots(len(indices), 5, figsize=(11, 2.3 * len(indices)), squeeze=False)
    for row, i in zip(axes, indices):
        _show(row[0], result.test[i]["image"].permute(1, 2, 0).numpy(), result.test[i]["defect_type"])
        _show(row[1], result.masks[i], "ground truth", cmap="gray")
        _show(row[2], ((y[i] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy(), "reconstruction")
        _show(row[3], result.maps[i], "map", cmap="magma")
        _show(row[4], result.maps[i] > threshold, "prediction", cmap="gray")
    fig.suptitle(f"{result.category}: threshold {threshold:.3f} (99th percentile on held-out normals)")
    return fig


def skff_figure(detectors: dict, test):
    """SKFF's mean weight per decoder scale (over channels and test images), per model."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from adlib.models.noise_to_norm import add_noise, images_of, normalise

    fig, ax = plt.subplots(figsize=(6, 3))
    scales = ["full", "1/2", "1/4", "1/8"]
    width = 0.8 / max(len(detectors), 1)
    for k, (name, det) in enumerate(detectors.items()):
        x = normalise(images_of(test))
        x = add_noise(x, det.config.lam, torch.Generator().manual_seed(0))
        device = next(det.model.parameters()).device
        with torch.no_grad():
            w = det.model.skff_weights(x.to(device)).float().cpu().mean((0, 2)).numpy()
        ax.bar(np.arange(4) + k * width, w, width, label=name)
    ax.axhline(0.25, color="k", lw=0.8, ls="--", label="uniform")
    ax.set_xticks(np.arange(4) + width * (len(detectors) - 1) / 2, scales)
    ax.set_ylabel("mean SKFF weight")
    ax.set_title("Which decoder scale the fusion uses")
    ax.legend(fontsize=8)
    return fig


def cost_table(settings, train, test, device: str = "cpu"):
    """Parameters, training seconds per epoch (timed steps x steps per epoch) and inference
    milliseconds per image (reconstruction + maps), with residual attention and with 1x1
    convolutions; the noise level does not change the cost."""
    import time

    import pandas as pd
    import torch

    from adlib.models.noise_to_norm import _loss, images_of

    images = images_of(train)
    rows = []
    for name, attention in (("residual attention", True), ("1x1 convolution", False)):
        det = make_detector({**settings, "attention": attention, "epochs": 0}, seed=0, device=device,
                            progress=False).fit(images)
        model = det.model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = images[: settings["batch_size"]].to(next(model.parameters()).device)
        loss = _loss(settings["lam"], settings["alpha"])
        start = time.perf_counter()
        for _ in range(3):
            opt.zero_grad()
            loss(model, batch)["loss"].backward()
            opt.step()
        step = (time.perf_counter() - start) / 3
        steps = -(-round(len(images) * (1 - settings["val_fraction"])) // settings["batch_size"])
        model.eval()
        start = time.perf_counter()
        det.predict(test)
        ms = 1000 * (time.perf_counter() - start) / len(test)
        rows.append({"configuration": name, "parameters": det.parameter_count,
                     "train s / epoch": round(step * steps, 2), "inference ms / image": round(ms, 1)})
    return pd.DataFrame(rows).set_index("configuration")


def parameter_table(width: int, image_size: int):
    """Parameters with residual attention and with 1x1 convolutions, at ``width`` and at the
    paper-size width 32; and the decoder's output shapes at ``image_size``."""
    import pandas as pd
    import torch

    from adlib.models.noise_to_norm import MNet
    from adlib.nn import count_parameters

    rows = [{"configuration": name, "parameters, this run": count_parameters(MNet(width, a)),
             "parameters, width 32": count_parameters(MNet(32, a))}
            for name, a in (("residual attention", True), ("1x1 convolution", False))]
    with torch.no_grad():
        shapes = [tuple(s.shape[1:]) for s in MNet(width).eval().scales(torch.zeros(1, 3, image_size, image_size))]
    return pd.DataFrame(rows).set_index("configuration"), shapes
