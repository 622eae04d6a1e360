"""Noise-to-norm M-net (chapter 3): the chapter's card -- its registry entry, grids, claim checks,
titles, findings and deviations, and the study they declare (its row code is ``study.py``).

Every cell trains one model per category (the paper's separate setting). ``reference`` holds
the two sanity references: the untrained M-net, and the distance to the mean training image
(a model that cannot beat a pixel difference has not learned to reconstruct).
"""

from __future__ import annotations

from adlib.analysis.claims import ClaimCheck
from adlib.chapters.base import Chapter, Compared, Deviation, Finding
from adlib.chapters.noise_to_norm.study import DEFAULT, protocol, run
from adlib.study.provenance import Fingerprint
from adlib.study.spec import Cell, Study

# One model per category. CPU profiles: 64 px (the M-net halves 4 times: 4x4 at the bottom),
# width 8 instead of 32, lr 2e-3 annealed over the run; pytorch-msssim's five scales then need
# a 3x3 Gaussian window instead of 11x11. Every profile: reflect padding, the score over the
# whole map, pytorch-msssim's MS-SSIM (see DEVIATIONS).
CHAPTER = Chapter(
    key="noise_to_norm", title="Noise-to-norm M-net", notebook="03_noise_to_norm.ipynb",
    short="Noise-to-norm",
    summary="reconstruct a noised image back to normal; residual attention and SKFF",
    model="adlib.chapters.noise_to_norm.model",
    settings={"image_size": 64, "epochs": 20, "batch_size": 8, "max_categories": 2, "lam": 0.3,
              "width": 8, "attention": True, "alpha": 0.84, "lr": 2e-3, "eta_min": 1e-6,
              "t_max": 20, "patience": 20, "val_fraction": 0.2, "test_noise": True,
              "map_sigma": 4.0, "padding": "reflect", "score_border": 0, "msssim": "pyramid"},
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
    headline={"M-net": "Table 4/lambda=0.3", "untrained": "reference/untrained",
              "mean image": "reference/mean image"},
    # Eq. 7: in the study the pyramid form's image score did not beat its untrained self, Eq. 7's did
    compared={"noise-to-norm": Compared("Eq. 7 (per pixel)")},
    findings=(
        Finding("The M-net (lambda 0.3) learns to localise: its pixel AUROC is well above the "
                "untrained M-net's ...", "lambda=0.3 > untrained", metric="pixel_auroc"),
        Finding("... but over six categories we cannot tell its maps from the distance to the mean "
                "training image on pixel AUROC.",
                "lambda=0.3 > mean image", expect="could not tell", metric="pixel_auroc"),
        Finding("At the image level we cannot tell it from its untrained self: over six "
                "categories the maximum of its map may rank images better or worse than the "
                "untrained M-net's.",
                "lambda=0.3 > untrained", expect="could not tell"),
        Finding("Without noise (lambda 0) the M-net's mean image AUROC is higher than its "
                "untrained self's, but over six categories we cannot tell the two apart either.",
                "lambda=0 > untrained", expect="could not tell"),
        Finding("Noise may or may not help here (the paper's claim 5): over six categories we "
                "cannot tell lambda 0.3 from none on image AUROC ...",
                "lambda=0.3 > lambda=0", expect="could not tell", ablation="Table 4"),
        Finding("... nor on pixel AUROC, where the paper reports +9.73.", "lambda=0.3 > lambda=0",
                expect="could not tell", metric="pixel_auroc", ablation="Table 4"),
        Finding("More noise (lambda 0.4) ranks images worse than none on average, but over six "
                "categories we cannot tell the two apart.", "lambda=0.4 > lambda=0",
                expect="could not tell", ablation="Table 4"),
        Finding("Residual attention localises better on average than a 1x1 convolution in its "
                "place (the paper's claim 6), but over six categories we cannot tell the two apart "
                "on pixel AUROC ...", "residual attention > 1x1 convolution",
                expect="could not tell", metric="pixel_auroc", ablation="residual attention"),
        Finding("... nor on image AUROC.", "residual attention > 1x1 convolution",
                expect="could not tell", ablation="residual attention"),
        Finding("Reflect padding (our main row) gives a higher AUPRO than PyTorch's zero padding, "
                "which leaves an error frame along the border ...",
                "reflect padding > zero padding", metric="aupro", ablation="border"),
        Finding("... while on image AUROC we cannot tell the two apart.",
                "reflect padding > zero padding", expect="could not tell", ablation="border"),
        Finding("Ignoring a border strip as wide as the SSIM window before taking the map's "
                "maximum raises the mean image AUROC a little, but over six categories we cannot "
                "tell it from the plain maximum.",
                "reflect, border ignored > reflect padding", expect="could not tell",
                ablation="border"),
        Finding("The paper's own MS-SSIM (Eq. 7, per pixel at full resolution) scores higher on "
                "average than pytorch-msssim's pyramid, our main row, but over six categories we "
                "cannot tell the two apart on image AUROC ...",
                "Eq. 7 (per pixel) > pyramid (pytorch-msssim)", expect="could not tell",
                ablation="MS-SSIM form"),
        Finding("... nor on pixel AUROC.", "Eq. 7 (per pixel) > pyramid (pytorch-msssim)",
                expect="could not tell", metric="pixel_auroc", ablation="MS-SSIM form"),
        Finding("Against an untrained M-net scored by the same Eq. 7 map (like for like), we "
                "cannot tell the Eq. 7 M-net from its untrained self at the image level ...",
                "Eq. 7 (per pixel) > untrained (Eq. 7 map)", expect="could not tell", grid="eq7"),
        Finding("... while its maps locate defects far better than the untrained M-net's.",
                "Eq. 7 (per pixel) > untrained (Eq. 7 map)", metric="pixel_auroc", grid="eq7"),
        Finding("... nor from the distance to the mean training image.",
                "Eq. 7 (per pixel) > mean image", expect="could not tell"),
    ),
)
MPDD_LIKE = "coins"   # the embedded category whose objects move and rotate: MPDD's role
LAMBDAS = (0.0, 0.2, 0.3, 0.4)


def _lambdas(*values: float) -> list[Cell]:
    return [Cell("Table 4", f"lambda={v:g}", {"lam": v}) for v in values]


ATTENTION = [Cell("residual attention", "residual attention", {}),
             Cell("residual attention", "1x1 convolution", {"attention": False})]
# The border: the paper is silent; our main row pads the 3x3 convolutions by reflection and
# scores the whole map. The cells measure PyTorch's zero padding (what the M-net's reference
# networks use) and, with reflection, a score that ignores a strip as wide as the loss's SSIM
# window (3 px at 64 px, 11 px at 256 px), where that window never fits at the finest scale.
BORDER = [Cell("border", "reflect padding", {}),
          Cell("border", "zero padding", {"padding": "zeros"}),
          Cell("border", "reflect, border ignored", {"score_border": "window"})]
MSSSIM = [Cell("MS-SSIM form", "pyramid (pytorch-msssim)", {}),
          Cell("MS-SSIM form", "Eq. 7 (per pixel)", {"msssim": "eq7"})]
REFERENCE = [Cell("reference", "untrained", {"epochs": 0}),
             Cell("reference", "mean image", {"model": "mean-image"})]
GRIDS = {
    "smoke": _lambdas(0.0, 0.3) + REFERENCE,
    "cpu": _lambdas(0.0, 0.3) + REFERENCE,
    "study": _lambdas(*LAMBDAS) + ATTENTION + BORDER + MSSSIM + REFERENCE,
    # claims 5 and 6 with the paper's own loss and map (Eq. 7), against an untrained M-net scored
    # by the same Eq. 7 map: like for like (cells equal to the study grid's share its rows)
    "eq7": ([Cell("reference", "untrained (Eq. 7 map)", {"epochs": 0, "msssim": "eq7"}),
             Cell("residual attention, Eq. 7", "residual attention (Eq. 7)", {"msssim": "eq7"}),
             Cell("residual attention, Eq. 7", "1x1 convolution (Eq. 7)",
                  {"attention": False, "msssim": "eq7"})]
            + [Cell("Table 4, Eq. 7", f"lambda={v:g} (Eq. 7)", {"lam": v, "msssim": "eq7"})
               for v in (0.0, 0.3)]   # claim 5's check; the rest of Table 4 at 200 s a model
            + [Cell("MS-SSIM form", "Eq. 7 (per pixel)", {"msssim": "eq7"})] + REFERENCE),
}
GRIDS["paper"] = GRIDS["study"]

CHECKS = (
    ClaimCheck(1, absolute={"table": 1, "method": "Ours", "category": "mean"}, config=DEFAULT,
               dataset="mpdd", metrics=("image_auroc",), label="MPDD image mean"),
    ClaimCheck(2, absolute={"table": 1, "method": "Ours", "category": "tubes"}, config=DEFAULT,
               dataset="mpdd", metrics=("image_auroc",), label="MPDD tubes",
               needs="MPDD's tubes category: the embedded default has no category like it"),
    ClaimCheck(3, absolute={"table": 2, "method": "Ours", "category": "mean"}, config=DEFAULT,
               dataset="mpdd", metrics=("pixel_auroc",), label="MPDD pixel mean"),
    ClaimCheck(4, absolute={"table": 3, "method": "Ours", "category": "mean"}, config=DEFAULT,
               dataset="visa", metrics=("image_auroc",), label="VisA image mean"),
    ClaimCheck(5, order=f"{DEFAULT} > mean image", sanity="untrained",
               label="learns: beats the mean training image"),
    # Table 4's gaps (94.94 - 73.16, 97.80 - 88.07); the text says +22.28 / +9.55
    ClaimCheck(5, order=f"{DEFAULT} > lambda=0", ablation="Table 4", sanity="untrained",
               metrics=("image_auroc",), effect=21.78, label="noise helps"),
    ClaimCheck(5, order=f"{DEFAULT} > lambda=0", ablation="Table 4", sanity="untrained",
               metrics=("pixel_auroc",), effect=9.73, label="noise helps"),
    ClaimCheck(5, configs=tuple(f"lambda={v:g}" for v in LAMBDAS), table=4, ablation="Table 4",
               sanity="untrained", label="Table 4 order"),
    ClaimCheck(6, order="residual attention > 1x1 convolution", ablation="residual attention",
               sanity="untrained", metrics=("image_auroc",), effect=28.68,
               label="residual attention vs 1x1 convolution",
               note="the paper's Table 5 is missing from its text; the claim is the text's"),
    ClaimCheck(6, order="residual attention > 1x1 convolution", ablation="residual attention",
               sanity="untrained", metrics=("pixel_auroc",), effect=8.94,
               label="residual attention vs 1x1 convolution",
               note="the paper's Table 5 is missing from its text; the claim is the text's"),
    # the same claims with the paper's Eq. 7 loss and map, against the untrained M-net scored by
    # the Eq. 7 map (the eq7 grid)
    ClaimCheck(5, order=f"{DEFAULT} (Eq. 7) > lambda=0 (Eq. 7)", ablation="Table 4, Eq. 7",
               sanity="untrained (Eq. 7 map)", metrics=("image_auroc",), effect=21.78,
               label="noise helps, with Eq. 7"),
    ClaimCheck(5, order=f"{DEFAULT} (Eq. 7) > lambda=0 (Eq. 7)", ablation="Table 4, Eq. 7",
               sanity="untrained (Eq. 7 map)", metrics=("pixel_auroc",), effect=9.73,
               label="noise helps, with Eq. 7"),
    ClaimCheck(6, order="residual attention (Eq. 7) > 1x1 convolution (Eq. 7)",
               ablation="residual attention, Eq. 7", sanity="untrained (Eq. 7 map)",
               metrics=("image_auroc",), effect=28.68,
               label="residual attention vs 1x1 convolution, with Eq. 7"),
    ClaimCheck(6, order="residual attention (Eq. 7) > 1x1 convolution (Eq. 7)",
               ablation="residual attention, Eq. 7", sanity="untrained (Eq. 7 map)",
               metrics=("pixel_auroc",), effect=8.94,
               label="residual attention vs 1x1 convolution, with Eq. 7"),
)

DEVIATIONS = (
    Deviation(
        "MS-SSIM in the loss", paper="Eq. 7-8: per pixel, the luminance at the widest Gaussian "
        "window times the contrast-structure terms of windows sigma_1 ... sigma_M, all at full "
        "resolution, averaged over the pixels",
        ours="pytorch-msssim's MS-SSIM: five scales of a halving image pyramid (Wang et al.), "
        "each scale's mean contrast-structure term multiplied; Eq. 7 is the option msssim='eq7'",
        why="pytorch-msssim is the tested implementation that reimplementations of Zhao et "
        "al.'s loss usually take, and a training step with it costs 0.4x one with Eq. 7 here "
        "(Eq. 7's sigma = 8 window is 65 px wide at full resolution; about 200 s of one core "
        "per study model against 50 s). Eq. 7 (msssim_map, checked against a numpy reference) "
        "runs in the study beside it and scores higher there on average, though over six "
        "categories the study cannot tell the two apart (the chapter's findings); the main row "
        "keeps the pyramid because the chapter's cpu run "
        "cannot afford four times the training within its 2.5 minutes",
        cell="MS-SSIM form/Eq. 7 (per pixel)", source="Eq. 7-8"),
    Deviation(
        "MS-SSIM window at small sizes", paper="silent (256 px, where the 11x11 window fits)",
        ours="the largest odd window up to 11 that pytorch-msssim's five scales allow: 3 px at "
        "64 px, 7 px at 128 px, 11 px from 176 px",
        why="the pyramid's coarsest scale is 1/16 of the image; a wider window does not fit",
        guess=True, source="Sec. 4.2"),
    Deviation(
        "the anomaly map", paper="the MS-SSIM and L1 error of each pixel (Sec. 3.3): Eq. 7 per "
        "pixel", ours="alpha * (1 - SSIM) with the SSIM maps of windows sigma 0.5 ... 8 averaged "
        "(scikit-image), plus (1 - alpha) * L1; Eq. 7 per pixel with msssim='eq7'",
        why="the per-pixel map was first built from scikit-image's tested SSIM maps, which do "
        "not expose the contrast-structure terms Eq. 7 multiplies; Eq. 7 is now implemented "
        "(msssim_map), and its cell uses it in both the loss and the map",
        cell="MS-SSIM form/Eq. 7 (per pixel)", source="Sec. 3.3"),
    Deviation(
        "Eq. 7's negative terms", paper="per pixel, the luminance term times the product of "
        "the contrast-structure terms cs_j of every window, as they come; a cs_j lies in [-1, 1] "
        "and is negative where the two images' local structures are anti-correlated",
        ours="with msssim='eq7' (loss and map) each per-pixel cs_j is clamped at 0 before the "
        "product (the luminance term is not clamped); the main row's loss (pytorch-msssim) "
        "clamps each scale's mean term at 0 as well",
        why="two negative terms multiply into a positive one, so a pixel whose structure is "
        "inverted at two windows would score as if it matched. pytorch-msssim raises its terms "
        "to fractional powers, where a negative base gives NaN, so it has to clamp; our product "
        "has no powers, so here the clamp is there only for the sign. No study cell measures it",
        source="Eq. 7"),
    Deviation(
        "SSIM constants", paper="C1 = 0.01, C2 = 0.03 (Eq. 2, 4)",
        ours="C1 = 0.01^2, C2 = 0.03^2 for images in [0, 1]",
        why="SSIM's constants are (K * data range)^2 with K1 = 0.01, K2 = 0.03; the printed values "
        "are the K's. Taken literally, C2 = 0.03 would outweigh the variances of most patches",
        source="Eq. 2, 4"),
    Deviation(
        "alpha and the sigmas", paper="silent: alpha is 'the weight coefficient'; sigma_1 ... "
        "sigma_M not given", ours="alpha = 0.84 and sigma = 0.5, 1, 2, 4, 8 (sigma_M = 8 for "
        "the L1's Gaussian), Zhao et al.'s values", why="the paper takes the loss from Zhao et "
        "al. [32]; these are theirs", guess=True, source="Eq. 9"),
    Deviation(
        "border handling", paper="silent", ours="the 3x3 convolutions pad by reflection; the "
        "image score is the maximum over the whole map",
        why="with zero padding every convolution sees a frame of zeros (mid-grey after "
        "normalisation) that the network must learn to undo, while the loss's SSIM windows "
        "barely see the border (pytorch-msssim never centres one on the outermost pixels); "
        "with the score = the maximum, the border's error then outranks defects. "
        "Reflection is the usual remedy in image-to-image networks (e.g. CycleGAN's generator), "
        "and normal images alone show the need (with zero padding their error at the border is "
        "about 2.1x the interior's). Ignoring a border strip instead would hide defects that "
        "touch it. Both other choices are cells of the study, reported beside this one",
        guess=True, cell="border/zero padding"),
    Deviation(
        "image score", paper="silent (only maps and thresholded maps are shown)",
        ours="the maximum of the smoothed map", why="the usual score of reconstruction "
        "methods; the book uses it in every chapter", guess=True),
    Deviation(
        "map smoothing", paper="silent", ours="Gaussian, sigma = 4 px (the cpu and study "
        "profiles' 64 px as at 256 px)", why="the book's common map post-processing; the SSIM "
        "windows already smooth the map", guess=True),
    Deviation(
        "test-time noise", paper="silent on whether test images are noised",
        ours="test images get the training noise (seeded, the same for every call)",
        why="the paper's argument is that noise hides the anomaly from the network; without it "
        "the network sees a clean image it was never trained on", guess=True),
    Deviation(
        "residual attention module", paper="Fig. 3: global pooling, convolution and activation "
        "layers; a 1x1 convolution changes the channels in both paths (Sec. 3.2.1)",
        ours="1x1 convolution, then conv3x3 - PReLU - conv3x3 and channel attention (pool, 1x1 "
        "to C/8, ReLU, 1x1, sigmoid) on one path; a 1x1 convolution on the other; added",
        why="MPRNet's channel attention block, the paper's evident model; the activation and "
        "the reduction 8 are not given", guess=True, source="Sec. 3.2.1, Fig. 3"),
    Deviation(
        "width and depth", paper="silent (Fig. 2 gives no channel counts)",
        ours="32 channels at full resolution, doubling per depth up to 256, four halvings; "
        "width 8 in the cpu and study profiles", why="SRMNet-like widths; 8 for CPU time",
        guess=True, source="Fig. 2"),
    Deviation(
        "batch size", paper="silent", ours="8", why="a batch of 256-px images that fits an "
        "8-GB GPU like the paper's GTX 2080", guess=True, source="Sec. 4.2"),
    Deviation(
        "learning rate", paper="initial learning rate 1e-6 and eta_min 1e-6 (cosine, T_max 100)",
        ours="1e-4 annealed to 1e-6 (paper profile); 2e-3 over the run (cpu and study)",
        why="an initial rate equal to eta_min makes the schedule a constant; read as a typo",
        guess=True, source="Sec. 4.2"),
    Deviation(
        "early stopping", paper="stop when 'the loss' has not decreased for 20 epochs; 20 % of "
        "the training set is validation", ours="on the held-out 20 %'s loss; the weights of "
        "its best epoch are kept", why="the validation split exists for this; never the test "
        "split", guess=True, source="Sec. 4.2"),
    Deviation(
        "size and length (cpu, study)", paper="256 px, up to 500 epochs",
        ours="64 px, width 8, 20 epochs (cpu) or 60 (study), on the embedded default",
        why="2.5 minutes a notebook and about 2 hours a study on 2 CPU cores; the paper "
        "profile runs the paper's size", source="Sec. 4.2"),
)


TITLES = {"Table 4": "Table 4: the noise coefficient lambda",
          "residual attention": "Residual attention vs a 1x1 convolution (lambda = 0.3)",
          "border": "The border: reflect padding, zero padding, a score without the border strip",
          "MS-SSIM form": "MS-SSIM: pytorch-msssim's pyramid vs the paper's Eq. 7 (loss and map)",
          "reference": "References: the untrained M-net and the mean training image"}

STUDY = Study(paper="noise_to_norm", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run,
              unit="category", default=DEFAULT, titles=TITLES,
              fingerprint=Fingerprint((DEFAULT,), "brick"))

