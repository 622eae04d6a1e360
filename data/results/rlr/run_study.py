"""RLR study (chapter 5): the ablation grid over several seeds on the embedded default.

Run from the repository root, one grid per call (times on 2 shared CPU cores, one thread)::

    # Table 3, alpha, perturbation, unified vs separate (14 min)
    ADLIB_PROGRESS=summary python data/results/rlr/run_study.py --seeds 0 1 2 --out data/results/rlr
    # Table 4: stages 1-2 / 2-3 / 1-2-3 (38 min: stage 1 is a 32x32 token grid at 128 px)
    ADLIB_PROGRESS=summary python data/results/rlr/run_study.py --grid stages --out data/results/rlr
    # Residual+Self Att. vs MLKA+LCA trained longer (6 min)
    ADLIB_PROGRESS=summary python data/results/rlr/run_study.py --grid core --epochs 30 --out data/results/rlr

Each call writes one RunRecord JSON (profile "study") with one ablation row per config x seed
(category means in %) and the claims rows, and prints the summary table.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from adlib.data.sources import choose_categories, open_split, resolve_root
from adlib.models.rlr import ABLATION_GRIDS, FeatureCache, ablation_configs, run_ablations
from adlib.profiles import resolve
from adlib.results import (RunRecord, ablation_values, adlib_revision, comparison_table, get_claim,
                           hardware_info, paper_order, verdict_for_direction)

GRID_NAMES = {"full": "full without Table 4", "core": "core: Residual+Self Att. vs MLKA+LCA",
              "stages": "Table 4: stages 1-2 / 2-3 / 1-2-3"}
KNOBS = ("backbone", "stages", "hidden", "windows", "blocks", "heads", "alpha", "lr",
         "standardize", "map_sigma", "perturbation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="data/results/rlr")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--grid", choices=("full", "core", "stages"), default="full",
                        help="core: only Residual+Self Att. vs MLKA+LCA (e.g. with more --epochs); "
                             "stages: Table 4 (stages 1-2 / 2-3 / 1-2-3) only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is faster than 2 on a shared 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    revision = adlib_revision()  # the code that runs, not whatever is checked out when it ends
    cfg = resolve("rlr", "study", epochs=args.epochs, **{k: None for k in KNOBS})
    root = resolve_root(cfg.dataset, cfg.data_root, seed=0)
    cats = choose_categories(cfg.dataset, root, None)
    base = {k: cfg.extra[k] for k in KNOBS if k != "backbone"}
    base.update(epochs=cfg.epochs, batch_size=cfg.batch_size, variant="MLKA+LCA")
    grid = dict(ABLATION_GRIDS["full"], stages=[])
    if args.grid == "core":
        grid = dict(ABLATION_GRIDS["tiny"])
    elif args.grid == "stages":
        grid = dict(ABLATION_GRIDS["full"], variants=[], alpha=[], perturbation=[], separate=False)
    stages = (1, 2, 3) if args.grid == "stages" else base["stages"]
    cache = FeatureCache(cfg.extra["backbone"], stages=stages, image_size=cfg.image_size)
    for c in cats:
        for split in ("train", "test"):
            cache.get(open_split(cfg.dataset, root, c, split, cfg.image_size))
    print(f"features: {cache.images_extracted} images in {cache.seconds:.0f} s", flush=True)
    rows, _ = run_ablations(ablation_configs(grid, base), args.seeds, cache, cfg.dataset, root,
                            cats, cfg.image_size, base)
    abl = pd.DataFrame(rows)
    summary = abl.groupby(["ablation", "config"], sort=False)[["image_auroc", "pixel_auroc", "aupro"]].agg(["mean", "std"])
    print(summary.round(2).to_string())

    ctx = dict(dataset=cfg.dataset, profile="study", seeds=args.seeds, hardware=hardware_info("cpu"))

    claims = []
    checks = (
            (3, 3, "Table 3", ["Residual+Self Att.", "Cross Att.", "MLKA+LCA"]),
            (4, 3, "Table 3", ["Cross Att.", "LCA"]),
            (4, 3, "Table 3", ["Cross Att.+MLKA", "MLKA+LCA"]),
            (6, 5, "Table 5", ["alpha=1", "alpha=2", "alpha=3"]))
    if args.grid == "core":
        checks = ((3, 3, "Table 3", ["Residual+Self Att.", "MLKA+LCA"]),)
    elif args.grid == "stages":
        checks = ((5, 4, "Table 4", ["stages=1-2", "stages=2-3", "stages=1-2-3"]),)
    for number, table, ablation, names in checks:
        for metric in ("image_auroc", "pixel_auroc"):
            claims.append(verdict_for_direction(
                get_claim("rlr", number), ablation_values(abl, ablation, metric),
                paper_order("rlr", table, names, metric),
                reason=f"{metric}; direction on the embedded default (paper: MVTec AD)", **ctx))
    for metric in ("image_auroc", "pixel_auroc") if args.grid == "full" else ():
        claims.append(verdict_for_direction(
            get_claim("rlr", 7), ablation_values(abl, "perturbation", metric),
            [f"perturbation={base['perturbation']}", "perturbation=none"],
            reason=f"{metric}; direction on the embedded default", **ctx))
    print(comparison_table(claims)[["claim", "paper", "ours", "verdict", "note"]].to_string())
    record = RunRecord(paper="rlr", notebook="05_rlr.ipynb", profile="study", dataset=cfg.dataset,
                       data_root=None, categories=cats,
                       params={**cfg.as_dict(), "model": base, "grid": GRID_NAMES[args.grid]},
                       seeds=args.seeds, metrics={"mean": {}}, ablations=rows, claims=claims,
                       hardware=hardware_info("cpu"), wall_time_s=time.perf_counter() - started,
                       adlib_revision=revision,
                       notes="data/results/rlr/run_study.py; unified unless config 'separate'")
    print("saved", record.save(args.out), f"after {record.wall_time_s / 60:.1f} min")


if __name__ == "__main__":
    main()
