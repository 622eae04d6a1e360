"""MAAE (chapter 2): what the chapter's walk-through shows beside its study: figures and
tables of its rows.

None of this makes a study row, so it lives outside :mod:`adlib.chapters.maae.study` and outside that
study's code hash (:mod:`adlib.study.provenance`): a clearer figure stales nothing.
"""

from __future__ import annotations

import math
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import timm
import torch

from adlib.book.figures import fit_column
from adlib.chapters.maae.model import VARIANTS, MAAEConfig, build_maae
from adlib.chapters.maae.study import DEFAULT, detector
from adlib.nn import count_parameters
from adlib.nn.mixed_attention import FeatureFusion


def architecture_table(detector, shapes):
    """Layer table of a fitted :class:`MAAEDetector`: what each part does to the tensor shapes,
    and its trained parameters. ``shapes``: the backbone levels ``(C, h, w)``, finest first."""
    m, cfg = detector.model, detector.config
    n, c, d = m.grid[0] * m.grid[1], m.fusion.out_channels, m.input_projection.out_features
    rows = [{"part": f"backbone stage {s}", "output": "x".join(map(str, shape)), "parameters": 0,
             "note": "frozen, cached"} for s, shape in zip(cfg.stages, shapes)]
    rows += [
        {"part": f"fusion ({m.fusion.kind})", "output": f"{c}x{m.grid[0]}x{m.grid[1]}",
         "parameters": count_parameters(m.fusion), "note": "tokens X: N x C = " f"{n} x {c}"},
        {"part": f"noise ({type(m.noise).__name__})", "output": f"{n}x{c}",
         "parameters": count_parameters(m.noise), "note": "training only"},
        {"part": "input projection + position", "output": f"{n}x{d}",
         "parameters": count_parameters(m.input_projection) + count_parameters(m.position)
         if m.block == "uniad" else count_parameters(m.input_projection),
         "note": "learned, in every attention's queries and keys" if m.block == "uniad"
         else "2-D sin-cos, added once"},
    ]
    if m.block == "mixed":
        rows.append({"part": f"{len(m.groups)} groups of {len(m.groups[0])} x mixed attention: "
                             "DC(SA + channel SA)", "output": f"{n}x{d}",
                     "parameters": count_parameters(m.groups),
                     "note": f"residual every {cfg.group} blocks"})
    elif m.block == "self":
        rows.append({"part": f"{len(m.groups)} x self-attention layer", "output": f"{n}x{d}",
                     "parameters": count_parameters(m.groups), "note": "pre-norm, residuals inside"})
    else:
        rows += [{"part": f"{len(m.groups)} x encoder layer", "output": f"{n}x{d}",
                  "parameters": count_parameters(m.groups), "note": "post-norm, neighbour mask"},
                 {"part": f"{len(m.decoder)} x query decoder layer", "output": f"{n}x{d}",
                  "parameters": count_parameters(m.decoder),
                  "note": "own learned queries per layer, neighbour mask"}]
    rows.append({"part": "norm + output projection", "output": f"{n}x{c}",
                 "parameters": count_parameters(m.norm) + count_parameters(m.output_projection),
                 "note": "Y, compared with X"})
    return pd.DataFrame(rows).set_index("part")


def paper_size_parameters(variant: str = DEFAULT) -> int:
    """Trained parameters of a configuration at the paper's size: EfficientNet-b4 stages 0-3 at
    256 px (24 + 32 + 56 + 160 channels on a 16x16 grid), width 256, 8 heads, 18 blocks (UniAD:
    its official 4 + 4 layers), built without weights."""
    b4 = timm.create_model("tf_efficientnet_b4", features_only=True, pretrained=False, out_indices=(0, 1, 2, 3))
    return count_parameters(build_maae(b4.feature_info.channels(), (16, 16), MAAEConfig(variant=variant)))


def fusion_figure(cache, data, index: int, stages=(0, 1, 2, 3)):
    """One image's finest level (its feature energy at stride 2) brought to the token grid by
    bilinear resizing (UniAD) and by FFM's strided box-average convolutions (untrained); the
    defect outlined in every panel, on each panel's own grid."""
    levels = [f[index:index + 1].float() for f in cache.get(data)]
    levels = [levels[cache.stages.index(s)] for s in stages]
    channels = [f.shape[1] for f in levels]
    c0 = channels[0]
    panels = [(data[index]["image"].permute(1, 2, 0).numpy(), "image", None),
              (levels[0][0].norm(dim=0).numpy(), f"stage {stages[0]}: {tuple(levels[0].shape[-2:])}", "magma")]
    for kind, name in (("resize", "bilinear resize"), ("ffm", "FFM (strided 3x3)")):
        fused = FeatureFusion(channels, kind)(levels)[0, :c0]
        panels.append((fused.norm(dim=0).detach().numpy(), f"{name} -> {tuple(fused.shape[-2:])}", "magma"))
    mask = np.asarray(data[index]["mask"]).squeeze()
    fig, axes = plt.subplots(2, 2, figsize=(6.9, 7.4), layout="constrained")
    for ax, (img, title, cmap) in zip(axes.flat, panels):
        ax.imshow(img, cmap=cmap)
        if mask.any():   # the mask's pixel grid mapped onto this panel's grid
            h, w = img.shape[:2]
            ax.contour(np.linspace(-0.5, w - 0.5, mask.shape[1]), np.linspace(-0.5, h - 0.5, mask.shape[0]),
                       mask, levels=[0.5], colors="cyan", linewidths=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{data.category}: {data[index]['defect_type']} (outlined); the finest level's\n"
                 "energy (channel norm) on the token grid, each panel its own colour scale")
    return fit_column(fig)


def noise_figure(detector, train):
    """ANG's learned ``A * |W|`` after training: its deviation from its own mean per token (mean
    over channels) and per channel (mean over tokens), next to the noise scale UniAD's fixed
    jitter would give each token, ``scale * ||x|| / C``, on the training tokens."""
    m = detector.model
    ang = m.ang
    device = next(m.parameters()).device
    with torch.no_grad():
        x = m.tokens([f.to(device) for f in detector.levels(train)]).cpu()
    jitter = (detector.config.jitter_scale * x.norm(dim=-1) / x.shape[-1]).mean(0).view(*m.grid)
    w = ang.amplitude * ang.weight.detach().abs().cpu()
    mean = float(w.mean())
    per_token = 100 * (w.mean(1) / mean - 1)
    per_channel = 100 * (w.mean(0) / mean - 1)
    fig, axes = plt.subplot_mosaic([["token", "jitter"], ["channel", "channel"]], figsize=(6.9, 6.4),
                                   layout="constrained")
    for ax, img, title in ((axes["token"], per_token.view(*m.grid), "ANG: per token, % from its mean"),
                           (axes["jitter"], jitter, "jitter: noise std per token")):
        im = ax.imshow(img.numpy(), cmap="viridis")
        fig.colorbar(im, ax=ax, fraction=0.046, format="%.2g")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes["channel"].hist(per_channel.numpy(), bins=30, color="tab:green")
    axes["channel"].set_xlabel("% from the mean")
    axes["channel"].set_title("ANG: per channel", fontsize=10)
    fig.suptitle(f"ANG after training: A|W| = {mean:.3f} on average (it started at {ang.amplitude:g}\n"
                 "everywhere); UniAD's jitter for comparison")
    return fit_column(fig)


def cost_table(cache, settings, trains, test, measured=(), variants=None):
    """Per configuration: trained parameters, training seconds per epoch and inference
    milliseconds per image on the cached features (the backbone's own time per image is
    :attr:`FeatureCache.seconds` / images). ``measured``: ``(label, rows, epochs)`` triples,
    e.g. this run's grid and the committed study; a configuration's training time comes from
    the first that trained it (unified, all categories)."""
    out = []
    for variant in variants or VARIANTS:
        det = detector({**settings, "variant": variant, "epochs": 0}, seed=0, device="cpu",
                       progress=False, cache=cache).fit(trains)
        det.predict(test)  # warm-up
        start = time.perf_counter()
        det.predict(test)
        ms = 1000 * (time.perf_counter() - start) / len(test)
        per_epoch, source = math.nan, "—"
        for label, rows, epochs in measured:
            hit = rows[(rows["config"] == variant) & (rows["train_seconds"] > 0)] if len(rows) else rows
            if len(hit):
                per_epoch, source = hit.groupby("seed")["train_seconds"].sum().mean() / epochs, label
                break
        out.append({"configuration": variant, "parameters": det.parameter_count,
                    "train s / epoch": round(per_epoch, 2), "measured in": source,
                    "inference ms / image": round(ms, 2)})
    return pd.DataFrame(out).set_index("configuration")
