"""adlib: the helper package behind the anomaly-detection reproduction book.

Every reusable line of the book lives here; the notebooks in ``notebooks/`` hold the
narrative and call into this package.

Sub-packages and modules:
    adlib.data      official-layout loaders (MVTec AD / MPDD / BTAD, VisA, labelled folders),
                    the embedded default data set, downloads
    adlib.nn        shared blocks and pretrained backbones
    adlib.models    one module per paper (plus the nearest-neighbour baseline) on one
                    detector skeleton (adlib.models.base)
    adlib.metrics   image / pixel AUROC, AUPRO, F1
    adlib.train     the one fit loop (device, seed, AMP, checkpoints, resume, early stop)
    adlib.results   run records, the papers' tables and claims
    adlib.claims    declared claim checks, verdicts from paired bootstrap intervals
    adlib.study     the study engine: declared grids, resumable rows, executors
    adlib.provenance  which code made a row (code hash, fingerprint, dirty check)
    adlib.verify    --verify: do committed rows still hold for changed code
    adlib.studies   one module per chapter: its CHAPTER card, grids, claim checks and runner
    adlib.chapter   the Chapter card a study module declares
    adlib.papers    the registry of chapters and papers, built from the CHAPTER cards
    adlib.features  the frozen-backbone feature cache
    adlib.evaluation  per-category and unified evaluation
    adlib.viz       the book's plots
    adlib.diagrams  architecture diagrams drawn from a model's modules by one forward pass
    adlib.verdicts  what a reader sees first: the verdict box, claims tables, findings
    adlib.findings  sentences that state a finding, generated from the numbers they describe
    adlib.book      builds the book: executes the notebooks, writes the generated pages
    adlib.pageaudit the built book read in headless Chromium, as a reader sees it
    adlib.profiles  smoke / cpu / study / paper defaults, and the notebooks' setup call
    adlib.warmup    a chapter's timed warm-up (the GPU check's rows, the paper run's estimate)
"""

__version__ = "0.1.0"
