"""LEA-Net (chapter 4): what the chapter's walk-through shows beside its study: figures and
tables of its rows.

None of this makes a study row, so it lives outside :mod:`adlib.chapters.lea_net.study` and outside that
study's code hash (:mod:`adlib.study.provenance`): a clearer figure stales nothing.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import adlib.chapters.lea_net.model as lea
from adlib.book.figures import fit_column
from adlib.chapters.lea_net.card import ADN_NAMES, CAAN_NAMES, INPUT_NAMES, POINT, label
from adlib.chapters.lea_net.study import fold_maps, load_labelled, train_fold
from adlib.study.report import readable


def labelled_category(run):
    """The walk-through's one labelled category (``run``: the notebook's
    :class:`~adlib.chapters.profiles.Setup`; the first category asked for, the others named as
    left out) with its images and labels (:func:`~adlib.chapters.lea_net.study.load_labelled`),
    and one line saying what the cross-validation will see."""
    cfg, s = run.cfg, run.protocol
    category = run.only_category("the walk-through cross-validates one labelled category")
    images, labels = load_labelled(cfg.dataset, run.root, category, cfg.image_size, s["subsample"])
    print(f"{category}: {len(labels)} images, {int(labels.sum())} anomalous; stratified {s['folds']}-fold "
          f"cross-validation; ADN {s['adn']}, CAAN {s['caan']} at point {s['point']}, width {s['width']}")
    return category, images, labels


def cross_validate(settings, images, labels, category: str, *, seed: int, device: str = "cpu",
                   checkpoint_root: str | None = None):
    """The main model of ``settings`` trained and scored fold by fold, as the study's
    :func:`~adlib.chapters.lea_net.study.run` does a task (the fold's cached colour maps,
    :func:`~adlib.chapters.lea_net.study.fold_maps`, then
    :func:`~adlib.chapters.lea_net.study.train_fold`), with progress bars and, under
    ``checkpoint_root``, one checkpoint folder per fold (``fold<k>``: a killed training resumes);
    prints each fold's F1 and AUROC.

    Returns ``(trained, rows)``: ``trained`` maps each fold to
    :func:`~adlib.chapters.lea_net.study.train_fold`'s dict plus the fold's colour ``maps``;
    ``rows`` are the study engine's rows of these folds (the main cell: no overrides), for
    :func:`adlib.study.engine.run_study`'s ``known``, so the grid does not train them again.
    """
    trained, rows = {}, []
    for fold in range(settings["folds"]):
        maps, peak, _ = fold_maps(images, labels, settings, seed, fold, device, tag=category)
        where = None if checkpoint_root is None else f"{checkpoint_root}/fold{fold}"
        out = train_fold(settings, images, labels, maps, peak, seed, fold, device, progress=True,
                         checkpoint_dir=where)
        out["maps"] = maps
        trained[fold] = out
        m = out["metrics"]
        print(f"fold {fold}: F1 {m['f1']:.1f} at 0.5, {m['f1_train_threshold']:.1f} at the training folds' "
              f"threshold {out['threshold']:.2f}; image AUROC {m['image_auroc']:.1f}")
        rows.append({"overrides": {}, "seed": seed, "category": category, "fold": fold,
                     "metrics": out["metrics"], "train_seconds": out["train_seconds"],
                     "final_loss": out["final_loss"]})
    return trained, rows


def pipeline_figure(colouriser, images, labels, title: str = ""):
    """The colour-map pipeline for the first normal and the first anomalous image: input, L*,
    the predicted colours (a*b* at a fixed L* = 60), the recoloured image, the CIEDE2000 map."""
    picks = [int(np.flatnonzero(np.asarray(labels) == k)[0]) for k in (0, 1)]
    out = lea.recolour(colouriser, images[picks])
    columns = ("input", "L*", "predicted a*b*\n(L* = 60)", "recoloured", "CIEDE2000")
    fig, axes = plt.subplots(2, 5, figsize=(7.2, 3.9), layout="constrained")
    for row, name in enumerate(("normal", "anomalous")):
        panels = (images[picks[row]].permute(1, 2, 0).numpy(), out["L"][row], out["predicted"][row],
                  out["recoloured"][row], out["delta_e"][row])
        for col, (ax, panel) in enumerate(zip(axes[row], panels)):
            shown = ax.imshow(panel, cmap="gray" if col == 1 else "inferno" if col == 4 else None,
                              vmin=0 if col == 4 else None, vmax=float(out["delta_e"].max()) if col == 4 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
        axes[row, 0].set_ylabel(f"{name}\nmax ΔE00 {out['max_delta_e'][row]:.1f}", fontsize=9)
    fig.colorbar(shown, ax=axes[:, 4], shrink=0.8, label="ΔE00")
    fig.suptitle(title or "Colour anomaly map: L* in, a*b* predicted,\nCIEDE2000 to the input", fontsize=10)
    return fit_column(fig)


def attention_figure(model, image, colour_map, title: str = ""):
    """The paper's Fig. 5 for one image: at each point, the attention map M = sigmoid(channel
    mean of the CAAN feature) and the ADN feature (channel mean) before and after f + f * M.
    The model was trained with attention at its own point only; the other rows show what its
    CAAN's maps would do to the ADN's features there."""
    model.eval()
    feats, adn_feats = {}, {}
    with torch.no_grad():
        caan, _ = model.attention_features(colour_map[None])

        def keep(p, f):
            adn_feats[p] = f
            return lea.external_attention(f, caan[p]) if p == model.point else f

        model.adn(model._adn_input(image[None], colour_map[None]), hook=keep)
        for p, f in adn_feats.items():
            feats[p] = (torch.sigmoid(caan[p].mean(1))[0], f.mean(1)[0], lea.external_attention(f, caan[p]).mean(1)[0])
    fig, axes = plt.subplots(3, 6, figsize=(7.2, 4.6))
    axes[0, 0].imshow(image.permute(1, 2, 0).numpy())
    axes[0, 0].set_title("image", fontsize=9)
    axes[1, 0].imshow(colour_map[0].numpy(), cmap="inferno")
    axes[1, 0].set_title("colour map", fontsize=9)
    axes[2, 0].axis("off")
    for p in lea.POINTS:
        att, before, after = feats[p]
        lo, hi = float(before.min()), float(after.max())
        for row, (panel, name) in enumerate(((att, "M"), (before, "before"), (after, "after"))):
            ax = axes[row, p]
            ax.imshow(panel.numpy(), cmap="viridis", **({} if row == 0 else {"vmin": lo, "vmax": hi}))
            if row == 0:
                ax.set_title(f"point {p}{chr(10) + '(trained)' if p == model.point else ''}", fontsize=8)
            if p == 1:
                ax.set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "Attention maps M and ADN features (channel means)\nbefore / after f + f·M",
                 fontsize=10)
    fig.tight_layout()
    return fit_column(fig)


def points_figure(rows, title: str = ""):
    """F1 against the attention point, one line per attention kind, the ADN alone as a band;
    error bars: std over (seed, fold). ``rows``: study rows."""
    ablations = [a for a in ("ResNet18", "basic CNN", "VGG16") if (rows["ablation"] == a).any()]
    fig, axes = plt.subplots(1, len(ablations), figsize=(3.6 * len(ablations), 3.6), squeeze=False)
    for ax, ablation in zip(axes[0], ablations):
        part = rows[rows["ablation"] == ablation]
        adn = {v: k for k, v in ADN_NAMES.items()}[ablation]
        base = part[part["config"] == label(adn)]["f1"]
        if len(base):
            ax.axhspan(base.mean() - base.std(), base.mean() + base.std(), color="0.85")
            ax.axhline(base.mean(), color="0.4", label=f"{ablation} alone")
        for caan, name in CAAN_NAMES.items():
            points = [p for p in (1, 2, 3, 4, 5) if (part["config"] == label(adn, caan, p)).any()]
            if not points:
                continue
            stats = [part[part["config"] == label(adn, caan, p)]["f1"] for p in points]
            ax.errorbar(points, [s.mean() for s in stats], [s.std() for s in stats], marker="o",
                        capsize=3, label=name)
        ax.set_xticks((1, 2, 3, 4, 5))
        ax.set_xlabel("attention point")
        ax.set_ylabel("F1 of the anomalous class (%)")
        ax.set_title(ablation, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title or "F1 per attention point: mean ± std over (seed, fold)", fontsize=10)
    fig.tight_layout()
    return fit_column(fig, ncols=2)


def main_metrics(trained: dict, category: str) -> dict:
    """The main model's metrics for a run record: F1, AUROC and accuracy per fold and their mean."""
    out = {f"{category} fold {f}": dict(t["metrics"]) for f, t in trained.items()}
    names = next(iter(out.values())).keys()
    out[category] = {m: float(np.mean([v[m] for v in out.values()])) for m in names}
    return out


def paper_comparison(rows, paper_f1):
    """Per paper row of Tables 3 and 7: the paper's F1 (mean over its data sets, and the best
    point it reports), ours at the declared point, and ours at the best point chosen on the
    test folds (the paper's selection; never our verdict). ``rows``: study rows; ``paper_f1``:
    the paper's F1 numbers (``adlib.study.results.paper_numbers("lea_net", metric="f1")``), passed in
    so that the reporting code stays out of the study's code hash."""
    means = rows.groupby("config")["f1"].mean()
    out = []
    for table, adn in (("Table 3", "resnet18"), ("Table 7", "basic_cnn"), ("Table 3", "vgg16")):
        paper = paper_f1[paper_f1["table"] == table]
        for caan in ("none", *CAAN_NAMES):
            for input in (("rgb", *INPUT_NAMES) if caan == "none" else ("rgb",)):
                method = label(adn, caan, 0, input).replace(" (0)", "")
                hit = paper[paper["method"] == method]
                ours = ([label(adn, caan, input=input)] if caan == "none"
                        else [label(adn, caan, p) for p in (1, 2, 3, 4, 5)])
                ours = [c for c in ours if c in means]
                if hit.empty or not ours:
                    continue
                declared = label(adn, caan, POINT) if caan != "none" else ours[0]
                best = max(ours, key=lambda c: means[c])
                points = hit["setting"].str.extract(r"(\d)")[0].dropna()
                out.append({"paper row": method, "paper F1 (mean of its data sets)": round(hit["value"].mean(), 3),
                            "paper's best points": ", ".join(points) or "—",
                            "ours": round(means.get(declared, float("nan")), 3),
                            "ours, best point on the test folds": (f"{means[best]:.3f} ({best[-2]})"
                                                                   if caan != "none" else "—")})
    return pd.DataFrame(out).set_index("paper row")


def cost_table(settings, images, maps, device: str = "cpu", configs=None):
    """Parameters, training seconds per epoch (three timed steps x steps per epoch) and inference
    milliseconds per image, for the baselines and each attention kind at the declared point."""
    configs = configs or [("resnet18", "none", "rgb"), ("resnet18", "none", "4ch"),
                          ("resnet18", "direct", "rgb"), ("resnet18", "mobilenet", "rgb"),
                          ("resnet18", "resnet", "rgb"), ("basic_cnn", "none", "rgb"),
                          ("basic_cnn", "resnet", "rgb"), ("vgg16", "none", "rgb")]
    n_train = round(len(images) * (1 - 1 / settings["folds"]))
    b = settings["batch_size"]
    layout = torch.channels_last                      # as the study trains
    x, m = (t[:b].to(device).contiguous(memory_format=layout) for t in (images, maps))
    y = torch.arange(b, device=device) % 2
    rows = []
    for adn, caan, input in configs:
        torch.manual_seed(0)
        net = lea.LEANet(adn, caan, POINT, input, width=settings["width"],
                         image_size=settings["image_size"]).to(device, memory_format=layout)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        net.train()
        start = time.perf_counter()
        for _ in range(3):
            opt.zero_grad()
            lea.lea_loss(net, (x, m, y))["loss"].backward()
            opt.step()
        step = (time.perf_counter() - start) / 3
        start = time.perf_counter()
        lea.predict(net, images[:32], maps[:32])
        ms = 1000 * (time.perf_counter() - start) / 32
        rows.append({"configuration": label(adn, caan, POINT, input), "parameters": lea.count_parameters(net),
                     "parameters at the paper's width": lea.count_parameters(
                         lea.LEANet(adn, caan, POINT, input, width=64, image_size=256)),
                     "train s / epoch": round(step * -(-n_train // b), 2), "inference ms / image": round(ms, 1)})
    return pd.DataFrame(rows).set_index("configuration")


def threshold_table(rows):
    """Per config, mean over (seed, fold): F1 at the paper's 0.5, F1 at the training folds'
    threshold (where the rows have it), image AUROC, and how many rows rank well (AUROC at
    least 90) yet score F1 0 at 0.5: the sign of probabilities placed below 0.5, not of a bad
    ranking. ``rows``: study rows."""
    columns = [c for c in ("f1", "f1_train_threshold", "image_auroc") if c in rows]
    table = rows.groupby(["ablation", "config"], sort=False)[columns].mean()
    flagged = (rows["f1"] == 0) & (rows["image_auroc"] >= 90)
    table["rows: AUROC ≥ 90, F1 0"] = flagged.groupby([rows["ablation"], rows["config"]], sort=False).sum()
    names = {"f1": "F1 at 0.5", "f1_train_threshold": "F1 at the training threshold"}
    return readable(pd.DataFrame(table).rename(columns=names))
