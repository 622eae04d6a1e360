"""adlib: the helper package behind the anomaly-detection reproduction book.

Every reusable line of the book lives here; the notebooks in ``notebooks/`` hold the
narrative and call into this package. Its top level shows the architecture:

    adlib.chapters  one package per chapter (model, study, card, page) and what they share:
                    the registry of cards, the profiles and the notebooks' setup call, the
                    warm-up and the GPU check
    adlib.data      official-layout loaders (MVTec AD / MPDD / BTAD, VisA, labelled folders),
                    the embedded default data set, downloads
    adlib.nn        shared blocks and pretrained backbones
    adlib.training  the Detector skeleton every model extends, the one fit loop, checkpoints,
                    scoring per category or unified, test curves, the feature cache
    adlib.analysis  metrics, intervals and their coverage, claim checks, chapter 6's ranks
    adlib.study     the study engine: declared grids, resumable rows, executors, run records,
                    provenance (which code made a row) and --verify
    adlib.book      the book's builder, the verdict box, plots and diagrams, the page audit
"""

__version__ = "0.1.0"
