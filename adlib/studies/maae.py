"""MAAE (chapter 2): the declared grids, claim checks and runner of its study.

Cells override the chapter's defaults (:func:`protocol`). Every MAAE cell trains ONE model on
all categories (the paper's unified setting) unless it sets ``separate``. The kNN cells run
the book's single-class baseline (chapter 0) unified and separate, for claim 3. ``reference /
untrained`` scores the untrained model: the sanity reference a trained MAAE must beat.
"""

from __future__ import annotations


from adlib.chapter import Chapter
from adlib.claims import ClaimCheck
from adlib.provenance import Fingerprint
from adlib.study.spec import Cell, Study, Task

# Lite0 stages 0-3 (strides 2-16) fused on the stride-16 grid: 8x8 tokens at 128 px. CPU
# profiles: 6 blocks of width 64 instead of 18 of 256, lr 1e-3 for the few epochs, channel
# standardisation of the features (training statistics only).
CHAPTER = Chapter(
    key="maae", title="MAAE: mixed-attention autoencoder", notebook="02_maae.ipynb",
    short="MAAE",
    summary="a feature autoencoder with mixed spatial/channel attention and adversarial noise",
    model="adlib.models.maae",
    settings={"image_size": 128, "epochs": 8, "batch_size": 16,
              "backbone": "tf_efficientnet_lite0", "stages": (0, 1, 2, 3), "hidden": 64,
              "layers": 6, "group": 3, "heads": 4, "dilation": 4, "neighbour": 7,
              "amplitude": 1.0, "ang_mode": "alternate", "lambda_ang": 0.6, "lambda_re": 1.0,
              "jitter_scale": 20.0, "ffm_train": False, "lr": 1e-3, "map_sigma": 2.0,
              "standardize": True, "feature_dtype": "float32"},
    profiles={
        "smoke": {"image_size": 64, "epochs": 1, "hidden": 16, "layers": 3, "heads": 2,
                  "neighbour": 3, "map_sigma": 1.0},
        "study": {"epochs": 30, "n_seeds": 5},
        # The paper gives no epoch count: UniAD's 1000 (the nearest reference) stands in.
        "paper": {"dataset": "mvtec_ad", "image_size": 256, "epochs": 1000, "batch_size": 64,
                  "backbone": "tf_efficientnet_b4", "hidden": 256, "layers": 18, "heads": 8,
                  "lr": 1e-4, "map_sigma": 4.0, "standardize": False,
                  "feature_dtype": "float16", "grid": "paper"},
    },
    paper_runs=("-p data_root /data/mvtec_anomaly_detection",),
    # --tiny's 64 px: a 4x4 stride-16 grid
    gpucheck="adlib.warmup:feature_model_check",
    gpucheck_small={"hidden": 16, "layers": 3, "heads": 2, "neighbour": 3},
)

#: Settings of the MAAE model itself (the rest of the protocol: data, backbone, training).
MODEL_KEYS = ("stages", "hidden", "layers", "group", "heads", "dilation", "neighbour", "amplitude",
              "ang_mode", "lambda_ang", "lambda_re", "jitter_scale", "ffm_train", "lr",
              "map_sigma", "standardize", "feature_dtype")
DEFAULT = "ANG+FFM+MAAE"
TABLE3 = ("none", "ANG", "MAAE", "ANG+FFM", "ANG+MAAE", DEFAULT)


def protocol(cfg) -> dict:
    """The chapter's defaults under a profile: data, backbone, training and model settings."""
    return {"model": "maae", "dataset": cfg.dataset, "image_size": cfg.image_size,
            "backbone": cfg.extra["backbone"], "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "variant": DEFAULT, "separate": False,
            **{k: cfg.extra[k] for k in MODEL_KEYS}}


def _table3(*variants: str) -> list[Cell]:
    return [Cell("Table 3", v, {"variant": v}) for v in variants]


BASELINE = [Cell("baseline", "UniAD-like", {"variant": "UniAD-like"})]
TRAINING = [Cell("training", "unified", {}), Cell("training", "separate", {"separate": True})]
ANG_STEP = [Cell("ANG step", "alternating", {"ang_mode": "alternate"}),
            Cell("ANG step", "gradient reversal", {"ang_mode": "reverse"})]
KNN = [Cell("single-class kNN", "kNN separate", {"model": "knn", "separate": True}),
       Cell("single-class kNN", "kNN unified", {"model": "knn"})]
REFERENCE = [Cell("reference", "untrained", {"epochs": 0})]
GRIDS = {
    "smoke": _table3("none", DEFAULT) + REFERENCE,
    "cpu": _table3("none", DEFAULT) + BASELINE + TRAINING + REFERENCE,
    "study": _table3(*TABLE3) + BASELINE + TRAINING + ANG_STEP + KNN + REFERENCE,
}
GRIDS["paper"] = GRIDS["study"]
# Why FFM's convolutions are fixed: the same model with them trained (run after the study)
GRIDS["ffm"] = [Cell("FFM convolutions", "fixed (box average)", {}),
                Cell("FFM convolutions", "trained", {"ffm_train": True})] + REFERENCE

CHECKS = (
    ClaimCheck(1, absolute={"table": 1, "method": "Ours", "category": "mean", "setting": "separate"},
               config=DEFAULT, metrics=("image_auroc",), label="MVTec AD mean, unified",
               note="Table 1's first value of each pair, which the cross-checks show is unified"),
    ClaimCheck(1, order=f"{DEFAULT} > UniAD-like", sanity="untrained", label="MAAE vs UniAD-like"),
    ClaimCheck(3, order="kNN separate > kNN unified", ablation="single-class kNN",
               label="a single-class method loses when unified"),
    ClaimCheck(4, order="unified > separate", ablation="training", sanity="untrained",
               label="unified MAAE vs separate"),
    ClaimCheck(5, order="ANG > none", ablation="Table 3", sanity="untrained", label="ANG alone"),
    ClaimCheck(5, configs=TABLE3, table=3, ablation="Table 3", sanity="untrained",
               label="Table 3 order"),
    ClaimCheck(6, order=f"ANG+FFM > ANG, ANG+MAAE > ANG, {DEFAULT} > ANG+FFM, {DEFAULT} > ANG+MAAE",
               ablation="Table 3", sanity="untrained", label="FFM and MA add to ANG"),
)


def run(task: Task) -> list[dict]:
    """Train one configuration (unified, or one model per category) and score every category."""
    from adlib.evaluation import evaluate_task

    s = dict(task.settings)
    detector = _knn if s["model"] == "knn" else _maae
    return evaluate_task(detector(s, task.seed, None if task.device == "auto" else task.device), task)


def feature_cache(s: dict, device=None, show_progress: bool = False):
    """The process-wide feature cache of a cell's settings (backbone, stages, size, dtype)."""
    import torch

    from adlib.features import shared_feature_cache

    return shared_feature_cache(s["backbone"], stages=s["stages"], image_size=s["image_size"],
                                device=device, dtype=getattr(torch, s["feature_dtype"]),
                                show_progress=show_progress)


def _maae(s: dict, seed: int, device):
    cache = feature_cache(s, device)
    return lambda: make_detector(cache, s, seed=seed, device=device or "auto", progress=False)


def _knn(s: dict, seed: int, device):
    from adlib.models.knn_baseline import KNNBaseline

    class PooledKNN(KNNBaseline):
        """Unified: one memory bank from the training images of every category."""

        def fit(self, train):
            from torch.utils.data import ConcatDataset

            return super().fit(ConcatDataset(list(train.values())) if isinstance(train, dict) else train)

    # no bank cap: a capped unified bank would lose patches for a reason other than unification
    return lambda: PooledKNN(image_size=s["image_size"], max_bank_size=None, sigma=s["map_sigma"],
                             seed=seed, device=device, progress=False)


def make_detector(cache, settings, *, seed: int, device: str, progress: bool = True,
                  checkpoint_root: str | None = None, category: str = "unified"):
    """The :class:`MAAEDetector` of ``settings`` on ``cache``
    (:func:`adlib.models.base.detector_from_settings`; with ``checkpoint_root`` a killed
    training resumes)."""
    from adlib.models.base import detector_from_settings
    from adlib.models.maae import MAAEDetector

    return detector_from_settings(MAAEDetector, settings, seed=seed, device=device,
                                  progress=progress, checkpoint_root=checkpoint_root,
                                  paper="maae", category=category, cache=cache)


TITLES = {"Table 3": "Table 3: ANG, FFM and mixed attention (MAAE) on and off",
          "baseline": "The UniAD-like baseline (neighbour mask, feature jitter, resize)",
          "training": "Unified (one model) vs separate (one per category)",
          "ANG step": "How ANG's adversarial step is taken",
          "single-class kNN": "A single-class method (kNN, chapter 0) unified vs separate",
          "FFM convolutions": "FFM's strided convolutions fixed or trained",
          "reference": "Reference: the untrained model"}

STUDY = Study(paper="maae", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run, unit="all",
              default=DEFAULT, titles=TITLES,
              fingerprint=Fingerprint((DEFAULT,), "brick"))


# ------------------------------------------------------------------ the chapter's figures

def architecture_table(detector, shapes):
    """Layer table of a fitted :class:`MAAEDetector`: what each part does to the tensor shapes,
    and its trained parameters. ``shapes``: the backbone levels ``(C, h, w)``, finest first."""
    import pandas as pd

    from adlib.nn import count_parameters

    m, cfg = detector.model, detector.config
    n, c = m.grid[0] * m.grid[1], m.fusion.out_channels
    block = ("mixed attention: DC(SA + channel SA)" if m.block == "mixed" else "self-attention layer")
    rows = [{"part": f"backbone stage {s}", "output": "x".join(map(str, shape)), "parameters": 0,
             "note": "frozen, cached"} for s, shape in zip(cfg.stages, shapes)]
    rows += [
        {"part": f"fusion ({m.fusion.kind})", "output": f"{c}x{m.grid[0]}x{m.grid[1]}",
         "parameters": count_parameters(m.fusion), "note": "tokens X: N x C = " f"{n} x {c}"},
        {"part": f"noise ({type(m.noise).__name__})", "output": f"{n}x{c}",
         "parameters": count_parameters(m.noise), "note": "training only"},
        {"part": "input projection + position", "output": f"{n}x{m.input_projection.out_features}",
         "parameters": count_parameters(m.input_projection), "note": "2-D sin-cos"},
        {"part": f"{len(m.groups)} x {block}" if m.block == "self" else
                 f"{len(m.groups)} groups of {len(m.groups[0])} x {block}",
         "output": f"{n}x{m.input_projection.out_features}", "parameters": count_parameters(m.groups),
         "note": f"residual every {cfg.group} blocks" if m.block == "mixed" else "residuals inside"},
        {"part": "norm + output projection", "output": f"{n}x{c}",
         "parameters": count_parameters(m.norm) + count_parameters(m.output_projection),
         "note": "Y, compared with X"},
    ]
    return pd.DataFrame(rows).set_index("part")


def paper_size_parameters() -> int:
    """Trained parameters of the paper-size MAAE: EfficientNet-b4 stages 0-3 at 256 px (24 + 32 +
    56 + 160 channels on a 16x16 grid), 18 blocks of width 256 (built without weights)."""
    import timm

    from adlib.models.maae import MAAEConfig, build_maae
    from adlib.nn import count_parameters

    b4 = timm.create_model("tf_efficientnet_b4", features_only=True, pretrained=False, out_indices=(0, 1, 2, 3))
    return count_parameters(build_maae(b4.feature_info.channels(), (16, 16), MAAEConfig()))


def fusion_figure(cache, data, index: int, stages=(0, 1, 2, 3)):
    """One image's finest level (its feature energy at stride 2) brought to the token grid by
    bilinear resizing (UniAD) and by FFM's strided box-average convolutions (untrained)."""
    import matplotlib.pyplot as plt

    from adlib.nn.mixed_attention import FeatureFusion

    levels = [f[index:index + 1].float() for f in cache.get(data)]
    levels = [levels[cache.stages.index(s)] for s in stages]
    channels = [f.shape[1] for f in levels]
    c0 = channels[0]
    panels = [(data[index]["image"].permute(1, 2, 0).numpy(), "image", None),
              (levels[0][0].norm(dim=0).numpy(), f"stage {stages[0]}: {tuple(levels[0].shape[-2:])}", "magma")]
    for kind, name in (("resize", "bilinear resize"), ("ffm", "FFM (strided 3x3)")):
        fused = FeatureFusion(channels, kind)(levels)[0, :c0]
        panels.append((fused.norm(dim=0).detach().numpy(), f"{name} -> {tuple(fused.shape[-2:])}", "magma"))
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
    for ax, (img, title, cmap) in zip(axes, panels):
        ax.imshow(img, cmap=cmap)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{data.category}: {data[index]['defect_type']}; the finest level's energy "
                 "(channel norm) on the token grid, each panel its own colour scale")
    return fig


def noise_figure(detector, train):
    """ANG's learned ``A * |W|`` after training: its deviation from its own mean per token (mean
    over channels) and per channel (mean over tokens), next to the noise scale UniAD's fixed
    jitter would give each token, ``scale * ||x|| / C``, on the training tokens."""
    import matplotlib.pyplot as plt
    import torch

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
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, img, title in ((axes[0], per_token.view(*m.grid), "ANG: per token, % from its mean"),
                           (axes[1], jitter, "jitter: noise std per token")):
        im = ax.imshow(img.numpy(), cmap="viridis")
        fig.colorbar(im, ax=ax, fraction=0.046, format="%.2g")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[2].hist(per_channel.numpy(), bins=30, color="tab:green")
    axes[2].set_xlabel("% from the mean")
    axes[2].set_title("ANG: per channel", fontsize=10)
    fig.suptitle(f"ANG after training: A|W| = {mean:.3f} on average (it started at {ang.amplitude:g} "
                 "everywhere); UniAD's jitter for comparison")
    return fig


def cost_table(cache, settings, trains, test, measured=(), variants=None):
    """Per configuration: trained parameters, training seconds per epoch and inference
    milliseconds per image on the cached features (the backbone's own time per image is
    :attr:`FeatureCache.seconds` / images). ``measured``: ``(label, rows, epochs)`` triples,
    e.g. this run's grid and the committed study; a configuration's training time comes from
    the first that trained it (unified, all categories)."""
    import math
    import time

    import pandas as pd

    from adlib.models.maae import VARIANTS

    out = []
    for variant in variants or VARIANTS:
        det = make_detector(cache, {**settings, "variant": variant, "epochs": 0}, seed=0,
                            device="cpu", progress=False).fit(trains)
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
