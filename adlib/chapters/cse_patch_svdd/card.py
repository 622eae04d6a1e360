"""C-SE on Patch SVDD (chapter 1): the chapter's card -- its registry entry, grids, claim checks,
titles, findings and deviations, and the study they declare (its row code is ``study.py``).

Cells override the chapter's defaults (:func:`protocol`): the full model is C-SE + LBR in the
last 6 convolutions, r = 16. One model per category (the paper trains per category). The
``reference`` cells score the randomly initialised encoders (``epochs`` 0): the sanity
reference every direction claim needs the trained model to beat.
"""

from __future__ import annotations

from adlib.analysis.claims import ClaimCheck
from adlib.chapters.base import Chapter, Compared, Deviation, Finding
from adlib.chapters.cse_patch_svdd.study import DEFAULT, protocol, run
from adlib.study.provenance import Fingerprint
from adlib.study.spec import Cell, Study

CHAPTER = Chapter(
    key="cse_patch_svdd", title="C-SE on Patch SVDD", notebook="01_cse_patch_svdd.ipynb",
    short="C-SE",
    summary="channel attention with max- and average-pooling branches and a long connection",
    model="adlib.chapters.cse_patch_svdd.model",
    # cpu: the study's protocol, shortened to 1,200 steps (what fits the 2.5-minute notebook
    # budget), on the fundus images, the embedded category that learns fastest. 96 px: the
    # smallest size where a 32-px patch's 8 neighbours (offset 24-31 px) fit without clipping,
    # so the position task is well posed (at 64 px most pairs clip). Below 128 px a 64-px patch
    # covers (almost) the whole image, so the small profiles train and score K=32 only; strides
    # are in pixels of the resized image.
    settings={"categories": ["retina"], "image_size": 96, "epochs": 6, "batch_size": 16,
              "patch_sizes": "32", "stride32": 8, "samples_per_image": 50, "lam": 1e-3},
    profiles={
        "smoke": {"categories": None, "image_size": 64, "epochs": 1, "max_categories": 1,
                  "stride32": 16, "samples_per_image": 1},
        # The protocol in which the encoders learn (chapter 1, "What it took"): the paper's Adam
        # 1e-4 and lambda 1e-3, 2,400 steps of batch 16 (12 epochs x 200 steps), on the
        # categories where a patch's position is defined (the fundus, the placed coins). On
        # the textures and the IHC tiles the position task stays at chance and training
        # makes the random encoder worse (the `textures` grid measures it).
        "study": {"categories": ["retina", "coins"], "epochs": 12, "n_seeds": 3},
        "paper": {"categories": None, "image_size": 256, "epochs": 300, "batch_size": 64,
                  "patch_sizes": "64,32", "stride64": 16, "stride32": 4,
                  "samples_per_image": 100, "grid": "paper"},
    },
    paper_runs=("-p data_root /data/mvtec_anomaly_detection",),
    # at 64 px an image cannot hold a 64-px patch's neighbours
    gpucheck="adlib.chapters.cse_patch_svdd.study:gpu_check", gpucheck_small={"patch_sizes": "32", "stride32": 16},
    headline={"+C-SE+LBR": "variant/+C-SE+LBR", "Patch SVDD": "variant/Patch SVDD",
              "untrained": "reference/random init +C-SE+LBR"},
    compared={"Patch SVDD": Compared("Patch SVDD"), "C-SE+LBR": Compared(DEFAULT)},
    findings=(
        Finding("Training teaches the encoder to rank images: C-SE+LBR beats its random "
                "initialisation on image AUROC ...", "+C-SE+LBR > random init +C-SE+LBR"),
        Finding("... but for plain Patch SVDD we cannot tell: its mean gain over its random "
                "initialisation is about as large, and two categories cannot support a "
                "statement about categories in general.", "Patch SVDD > random init Patch SVDD",
                expect="could not tell"),
        Finding("At the pixel level we cannot tell C-SE+LBR from its random initialisation ...",
                "+C-SE+LBR > random init +C-SE+LBR", expect="could not tell",
                metric="pixel_auroc"),
        Finding("... nor plain Patch SVDD from its own: two categories cannot support a "
                "statement about categories in general.", "Patch SVDD > random init Patch SVDD",
                expect="could not tell", metric="pixel_auroc"),
        Finding("With two categories we cannot tell C-SE+LBR from plain Patch SVDD on image "
                "AUROC (the paper's claim 1 reports +3.0 on MVTec AD) ...",
                "+C-SE+LBR > Patch SVDD", expect="could not tell", ablation="variant"),
        Finding("... and we cannot tell them apart on pixel AUROC either.",
                "+C-SE+LBR > Patch SVDD", expect="could not tell", metric="pixel_auroc",
                ablation="variant"),
        Finding("We cannot tell C-SE without LBR from plain Patch SVDD on images, where the "
                "paper says it helps: the two categories disagree.", "+C-SE > Patch SVDD",
                expect="could not tell", ablation="variant"),
        Finding("Whether SE hurts Patch SVDD, as the paper says, we cannot tell from two "
                "categories.", "Patch SVDD > +SE", expect="could not tell", ablation="variant"),
        Finding("We cannot tell whether LBR on top of C-SE adds to C-SE alone on image AUROC.",
                "+C-SE+LBR > +C-SE", expect="could not tell", ablation="variant"),
        # the `axes` grid: every other setting at the full model's; image AUROC, where training
        # beats the random encoder (at the pixel level we cannot tell that it does, so no pixel
        # ablation is read as evidence for the paper)
        Finding("The axes grid, on the same two categories: we cannot tell where C-SE should "
                "sit for image AUROC; the paper's last 6 convolutions cannot be told from the "
                "last 2 ...", "last 6 > last 2", expect="could not tell", ablation="layers",
                grid="axes"),
        Finding("... or from the last 8.", "last 6 > last 8", expect="could not tell",
                ablation="layers", grid="axes"),
        Finding("We cannot tell the paper's reduction ratio r = 16 from r = 4 ...", "r=16 > r=4",
                expect="could not tell", ablation="r", grid="axes"),
        Finding("... or from r = 32.", "r=16 > r=32", expect="could not tell", ablation="r",
                grid="axes"),
        Finding("We cannot tell the paper's λ = 0.001 from λ = 1 (claim 6's check above pools "
                "the two against λ = 0.01 and 0.1).", "λ=0.001 > λ=1", expect="could not tell",
                ablation="λ", grid="axes"),
        Finding("We cannot tell Gaussian noise of variance 0.001 on the training images from "
                "none on image AUROC ...", "noise var 0 > noise var 0.001",
                expect="could not tell", ablation="noise", grid="axes"),
        Finding("... nor whether variance 0.01 lowers it, as the paper says noise does ...",
                "noise var 0 > noise var 0.01", expect="could not tell", ablation="noise",
                grid="axes"),
        Finding("... nor whether 0.05 lowers it further: two categories cannot support a "
                "statement about categories in general.", "noise var 0.01 > noise var 0.05",
                expect="could not tell", ablation="noise", grid="axes"),
        Finding("On pixel AUROC we cannot tell noise of variance 0.001 from none either; and at "
                "the pixel level we cannot even tell the noiseless model from its random "
                "encoder, so a difference here would say little about the paper's pixel claim.",
                "noise var 0 > noise var 0.001", expect="could not tell", metric="pixel_auroc",
                ablation="noise", grid="axes"),
    ),
)


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

DEVIATIONS = (
    Deviation("data", paper="MVTec AD, 15 categories", source="Sec. 4",
              ours="the embedded default: retina and coins (study), retina (cpu)",
              why="the book runs offline on 2 CPU cores; on the embedded textures and IHC tiles "
                  "a patch's position is not defined, so the self-supervised task stays at "
                  "chance (the study's `textures` grid measures that)"),
    Deviation("image size and patch sizes", paper="256 px; K = 64 and K = 32, maps multiplied",
              source="Patch SVDD", ours="96 px, K = 32 only (64 px in smoke)",
              why="below 128 px a 64-px patch covers (almost) the whole image; 96 px is the "
                  "smallest size at which a 32-px patch's 8 neighbours fit"),
    Deviation("training length", paper="300 epochs, each image sampled 100 times, batch 64",
              source="Patch SVDD",
              ours="2,400 steps of batch 16 (study); 1,200 (cpu)",
              why="what 2 cores afford; at 2,400 steps the position loss is well below chance, "
                  "one epoch of 8 steps did not move the encoders"),
    Deviation("C-SE placement", paper="in the last six convolutions; before or after the "
              "activation not said", ours="after the activation", why="the paper is silent",
              guess=True, cell="layers/last 6"),
    Deviation("C-SE aggregation", paper='the two branches\' weights are "aggregated"',
              ours="their mean", why="the paper does not say how; the mean keeps the weights "
              "in (0, 1) like SE's", guess=True),
    Deviation("LBR widths", paper="Linear-BatchNorm-ReLU blocks in the classifier",
              ours="the original classifier's widths (128, 128)", why="the paper gives none",
              guess=True, cell="variant/+C-SE+LBR"),
    Deviation("classifier output layer", paper="silent (Patch SVDD's official code normalises "
              "its weight without gradient: a fixed random projection)",
              ours="weight rows normalised with the gradient flowing: the layer learns",
              why="a classifier whose last layer cannot learn is an odd thing to teach",
              guess=True),
    Deviation("noise variances", paper="Table 7's values (not readable in the paper's text)",
              ours="0, 0.001, 0.01, 0.05 on the [0, 1] image scale", why="our choice",
              guess=True, cell="noise/noise var 0.001"),
    Deviation("seeds", paper="one run per setting", ours="3 seeds per cell; verdicts on paired "
              "differences with the category as the unit (the seeds are repeats on the same test "
              "images): a t interval over the category means, of which the study has only 2 "
              "(retina, coins), so its intervals are very wide",
              why="a single run cannot tell an effect from noise; more seeds add no units, only "
                  "more categories would, and on the other embedded categories a patch's position "
                  "is not defined"),
)

_SANITY = "random init +C-SE+LBR"
CHECKS = (
    ClaimCheck(1, order="+C-SE+LBR > Patch SVDD", ablation="variant", sanity=_SANITY,
               effect={"image_auroc": 3.0, "pixel_auroc": 0.7}, label="C-SE+LBR vs Patch SVDD"),
    ClaimCheck(2, order="+C-SE > Patch SVDD > +SE", ablation="variant", sanity=_SANITY,
               label="SE hurts, C-SE helps"),
    ClaimCheck(3, order="+C-SE+LBR > +C-SE > +SE", ablation="variant", sanity=_SANITY,
               label="module order"),
    ClaimCheck(4, metrics=("image_auroc",), label="against the paper's other methods",
               needs="MVTec AD and RIAD, PEDENet, RegAD and DifferNet run on it; the book reruns "
                     "none of those methods, and the textures' 97.8 is a number on MVTec AD"),
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


TITLES = {"variant": "Modules: none / SE / C-SE / C-SE + LBR",
          "layers": "C-SE in the last n convolutions", "r": "Reduction r of C-SE",
          "λ": "Loss weight λ", "noise": "Gaussian noise variance on the training images",
          "reference": "Reference: randomly initialised encoders"}


STUDY = Study(paper="cse_patch_svdd", grids=GRIDS, checks=CHECKS, protocol=protocol, run=run,
              unit="category", default=DEFAULT, titles=TITLES,
              fingerprint=Fingerprint((DEFAULT,), "retina"))

