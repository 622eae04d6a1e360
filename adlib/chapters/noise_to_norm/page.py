"""Noise-to-norm (chapter 3): what the chapter's walk-through shows beside its study: figures,
tables and the small grain experiment.

None of this makes a study row, so it lives outside :mod:`adlib.chapters.noise_to_norm.study` and
outside that study's code hash (:mod:`adlib.study.provenance`): a clearer figure stales nothing.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from adlib.analysis.metrics import pixel_auroc
from adlib.book.figures import fit_column
from adlib.chapters.data_and_metrics.model import KNNBaseline
from adlib.chapters.noise_to_norm.card import LAMBDAS, MPDD_LIKE
from adlib.chapters.noise_to_norm.model import (
    MAP_SIGMAS,
    MNet,
    _loss,
    add_noise,
    error_maps,
    images_of,
    msssim_map,
    normalise,
)
from adlib.chapters.noise_to_norm.study import detector
from adlib.nn import count_parameters
from adlib.nn.maps import gaussian_smooth


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
    x0 = normalise(image[None])
    fig, axes = plt.subplots(1, len(lambdas), figsize=(1.75 * len(lambdas), 2.3))
    for ax, lam in zip(axes, lambdas):
        x = add_noise(x0, lam, torch.Generator().manual_seed(seed))
        _show(ax, ((x[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy(), f"λ = {lam:g}")
    fig.suptitle("x = (1 − λ) x0 + λ ε, ε ~ N(0.5, 0.5)")
    return fit_column(fig)


def identity_figure(detectors: dict, test, index: int):
    """The same anomalous image reconstructed by models trained at different lambdas, each
    with its map: without noise the network reproduces the defect."""
    fig, axes = plt.subplots(len(detectors), 4, figsize=(7.2, 2.1 * len(detectors)), squeeze=False)
    for row, (name, det) in zip(axes, detectors.items()):
        x0, noisy, y = (t[index:index + 1] for t in det.reconstruct(test))
        maps = det.anomaly_maps(x0, y).numpy()
        to_img = lambda t: ((t[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()  # noqa: E731
        _show(row[0], to_img(x0), f"{test.category}:\n{test[index]['defect_type']}")
        _show(row[1], to_img(noisy), f"{name}:\ninput")
        _show(row[2], to_img(y), f"{name}:\nreconstruction")
        _show(row[3], maps[0], f"{name}:\nmap", cmap="magma")
    fig.tight_layout()
    return fit_column(fig)


def fig4(detector, result, train, indices):
    """The paper's Fig. 4 columns: image, ground truth, reconstruction, map, and the map
    thresholded at the 99th percentile of the held-out normal images' maps; the defect's outline
    (red) on the map and the prediction, so a prediction beside the defect shows as one."""
    threshold = detector.pixel_threshold(train)
    _, _, y = detector.reconstruct(result.test)
    fig, axes = plt.subplots(len(indices), 5, figsize=(7.2, 1.75 * len(indices) + 0.5), squeeze=False)
    for row, i in zip(axes, indices):
        _show(row[0], result.test[i]["image"].permute(1, 2, 0).numpy(), result.test[i]["defect_type"])
        _show(row[1], result.masks[i], "ground truth", cmap="gray")
        _show(row[2], ((y[i] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy(), "reconstruction")
        _show(row[3], result.maps[i], "map", cmap="magma")
        _show(row[4], result.maps[i] > threshold, "prediction", cmap="gray")
        if result.masks[i].any():
            for ax in row[3:]:
                ax.contour(result.masks[i], levels=[0.5], colors="red", linewidths=1)
    fig.suptitle(f"{result.category}: threshold {threshold:.3f} (99th percentile on held-out\n"
                 "normals); red: the defect")
    fig.tight_layout()
    return fit_column(fig)


def skff_figure(detectors: dict, test):
    """SKFF's mean weight per decoder scale (over channels and test images), per model."""
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
    return fit_column(fig)


def cost_table(settings, train, test, device: str = "cpu", n_timed: int = 8):
    """Parameters, training seconds per epoch (timed steps x steps per epoch) and inference
    milliseconds per image (reconstruction + maps of the first ``n_timed`` test images), with
    residual attention and with 1x1 convolutions; the noise level does not change the cost."""
    images = images_of(train)
    rows = []
    for name, attention in (("residual attention", True), ("1x1 convolution", False)):
        det = detector({**settings, "attention": attention, "epochs": 0}, seed=0, device=device,
                       progress=False).fit(images)
        model = det.model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = images[: settings["batch_size"]].to(next(model.parameters()).device)
        loss = _loss(settings["lam"], settings["alpha"], settings.get("msssim", "pyramid"))
        start = time.perf_counter()
        for _ in range(3):
            opt.zero_grad()
            loss(model, batch)["loss"].backward()
            opt.step()
        step = (time.perf_counter() - start) / 3
        steps = -(-round(len(images) * (1 - settings["val_fraction"])) // settings["batch_size"])
        model.eval()
        timed = images_of(test)[:n_timed]
        start = time.perf_counter()
        det.predict(timed)
        ms = 1000 * (time.perf_counter() - start) / len(timed)
        rows.append({"configuration": name, "parameters": det.parameter_count,
                     "train s / epoch": round(step * steps, 2), "inference ms / image": round(ms, 1)})
    return pd.DataFrame(rows).set_index("configuration")


def parameter_table(width: int, image_size: int):
    """Parameters with residual attention and with 1x1 convolutions, at ``width`` and at the
    paper-size width 32; and the decoder's output shapes at ``image_size``."""
    rows = [{"configuration": name, "parameters, this run": count_parameters(MNet(width, a)),
             "parameters, width 32": count_parameters(MNet(32, a))}
            for name, a in (("residual attention", True), ("1x1 convolution", False))]
    with torch.no_grad():
        shapes = [tuple(s.shape[1:]) for s in MNet(width).eval().scales(torch.zeros(1, 3, image_size, image_size))]
    return pd.DataFrame(rows).set_index("configuration"), shapes


# ------------------------------------------------------------ a limitation: fine grain

GRAIN_MAPS = ("SSIM sigma=0.5", "SSIM sigma=1", "SSIM sigma=2", "SSIM sigma=4", "SSIM sigma=8",
              "L1", "ours", "Eq. 7 + L1", "kNN")


def grain_texture(n: int, size: int = 64, *, rgb: bool = False, defects: bool = False,
                  seed: int = 0, grain: float = 0.1):
    """``n`` images of a texture whose only detail is pixel-level grain: a smooth shading around
    0.55 plus i.i.d. Gaussian grain of std ``grain`` (grey; ``rgb``: tinted, grain drawn per
    channel). With ``defects`` each image has a dark flat disc (0.25, no grain) of radius
    7-12 % of the side. Seeded. Returns images ``(n, 3, size, size)`` in [0, 1] and masks
    ``(n, size, size)`` (bool)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    tint = np.array([1.0, 0.85, 0.7]) if rgb else np.ones(3)
    images, masks = [], []
    for _ in range(n):
        shade = ndi.gaussian_filter(rng.standard_normal((size, size)), size / 8, mode="wrap")
        shade = 0.55 + 0.06 * shade / shade.std()
        noise = rng.standard_normal((3, size, size)) if rgb else rng.standard_normal((1, size, size))
        image = (shade + grain * noise) * tint[:, None, None]
        mask = np.zeros((size, size), bool)
        if defects:
            r = rng.uniform(0.07, 0.12) * size
            cy, cx = rng.uniform(r + 4, size - r - 4, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
            image = np.where(mask, 0.25 * tint[:, None, None], image)
        images.append(np.clip(image, 0, 1))
        masks.append(mask)
    return torch.tensor(np.stack(images), dtype=torch.float32), np.stack(masks)


def grain_experiment(settings, *, rgb: bool = False, size: int = 64, n_train: int = 24,
                     n_test: int = 12, epochs: int = 8, seed: int = 0, device: str = "cpu",
                     knn: bool = True) -> dict:
    """Train the M-net of ``settings`` (``epochs`` of them) on :func:`grain_texture` normals and
    map ``n_test`` images with a dark flat defect each. Returns the test images, masks,
    reconstructions, the maps (each SSIM window alone, L1 alone, ours, the paper's Eq. 7 + L1,
    and chapter 0's kNN baseline; all smoothed like ours) with their pixel AUROC (%), and two
    diagnostics: the share of the grain's standard deviation left in the reconstruction of
    normal pixels, and the L1 error inside the defects over that outside."""
    train, _ = grain_texture(n_train, size, rgb=rgb, seed=seed)
    test, masks = grain_texture(n_test, size, rgb=rgb, defects=True, seed=seed + 1)
    det = detector({**settings, "epochs": epochs, "t_max": epochs}, seed=seed, device=device,
                   progress=False).fit(train)
    x0, _, y = det.reconstruct(test)
    a, b = (y + 1) / 2, (x0 + 1) / 2

    def smooth(m):
        return gaussian_smooth(torch.as_tensor(m), settings["map_sigma"]).numpy()

    maps = {f"SSIM sigma={s:g}": smooth(1 - msssim_map(a, b, (s,))) for s in MAP_SIGMAS}
    maps["L1"] = smooth((a - b).abs().mean(1))
    maps["ours"] = det.predict(test)[1]
    maps["Eq. 7 + L1"] = smooth(error_maps(y, x0, settings["alpha"], form="eq7"))
    if knn:
        maps["kNN"] = KNNBaseline(image_size=size, progress=False, device=device).fit(train).predict(test)[1]
    def fine(t):  # what a Gaussian of sigma 2 px smooths away: the grain
        return t - gaussian_smooth(t.flatten(0, 1), 2.0).view_as(t)

    normal = torch.from_numpy(~masks)[:, None].expand_as(a)
    l1 = (a - b).abs().mean(1)
    return {"images": test, "masks": masks, "reconstructions": a.clamp(0, 1), "maps": maps,
            "pixel_auroc": {k: 100 * pixel_auroc(m, masks) for k, m in maps.items()},
            "grain_kept": float(fine(a)[normal].std() / fine(b)[normal].std()),
            "defect_over_normal_l1": float(l1[torch.from_numpy(masks)].mean() / l1[torch.from_numpy(~masks)].mean()),
            "rgb": rgb, "epochs": epochs}


def grain_figure(experiments: dict, index: int = 0):
    """Per experiment (``{"grey": grain_experiment(...), "RGB": ...}``) one row: a test image,
    its reconstruction, our map, the paper's Eq. 7 map and the kNN map; and beside them the
    pixel AUROC of every part of the map (50 = chance)."""
    # per experiment: the five pictures in a row, the AUROC of each part of the map below them
    # (sub-figures, so the bars' long labels do not squeeze the pictures)
    fig = plt.figure(figsize=(7.2, 5.2 * len(experiments)), layout="constrained")
    parts = fig.subfigures(2 * len(experiments), 1, height_ratios=[1, 1.3] * len(experiments))
    for k, (name, exp) in enumerate(experiments.items()):
        row = [*parts[2 * k].subplots(1, 5), parts[2 * k + 1].subplots()]
        auc = exp["pixel_auroc"]
        _show(row[0], exp["images"][index].permute(1, 2, 0).numpy(), f"{name}:\ndark flat defect")
        row[0].contour(exp["masks"][index], levels=[0.5], colors="cyan", linewidths=0.8)
        _show(row[1], exp["reconstructions"][index].permute(1, 2, 0).numpy(),
              f"reconstruction\n({exp['grain_kept']:.0%} of grain)")
        for ax, key in zip(row[2:5], ("ours", "Eq. 7 + L1", "kNN")):
            if key in exp["maps"]:
                _show(ax, exp["maps"][key][index], f"{key}:\npixel {auc[key]:.0f}", cmap="magma")
            else:
                ax.axis("off")
        names = [k for k in GRAIN_MAPS if k in auc]
        bars = row[5].barh(np.arange(len(names)), [auc[k] for k in names],
                           color=["C0" if k.startswith(("SSIM", "L1")) else "C3" for k in names])
        row[5].bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
        row[5].axvline(50, color="k", lw=0.8, ls="--")
        row[5].set_yticks(np.arange(len(names)), names, fontsize=8)
        row[5].invert_yaxis()
        row[5].set_xlim(0, 108)
        row[5].set_xlabel("pixel AUROC (%), 50 = chance")
        row[5].set_title(f"{name}: each part of the map alone", fontsize=9)
    fig.suptitle("Fine grain, dark flat defects: the denoiser removes\nthe grain and keeps the defect")
    return fit_column(fig)
