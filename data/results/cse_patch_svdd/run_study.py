"""The cse_patch_svdd study: every cell of the ablation grid x seeds x categories.

    ADLIB_PROGRESS=summary nohup python data/results/cse_patch_svdd/run_study.py \
        --categories brick,gravel --out data/results/cse_patch_svdd > study.log &

Settings come from ``resolve("cse_patch_svdd", "study")`` (see adlib/profiles.py). Each
trained model appends one row per (config, category, seed) to ``study_rows.jsonl`` (so an
interrupted study keeps what it finished; a rerun skips rows already there); identical
settings on different axes (the default model) are trained once and reused.
``summarise`` writes ``study_table.csv`` (mean ± std per configuration over seeds and
categories) and a RunRecord JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adlib.data.sources import open_split, resolve_root
from adlib.metrics import evaluate
from adlib.models.patch_svdd import PatchSVDD, ablation_configs
from adlib.profiles import resolve


def key_of(settings: dict, category: str, seed: int) -> str:
    return json.dumps({**settings, "category": category, "seed": seed}, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--categories", default="brick,gravel")
    parser.add_argument("--out", default="data/results/cse_patch_svdd")
    parser.add_argument("--grid", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = resolve("cse_patch_svdd", "study", patch_sizes=None, stride32=None, stride64=None,
                  samples_per_image=None, lam=None, grid=args.grid)
    out = Path(args.out)
    rows_path = out / "study_rows.jsonl"
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    root = resolve_root(cfg.dataset, cfg.data_root, seed=0)
    cats = [c.strip() for c in args.categories.split(",")]
    sizes = tuple(int(k) for k in str(cfg.extra["patch_sizes"]).split(","))
    strides = {32: cfg.extra["stride32"], 64: cfg.extra.get("stride64") or 16}
    cells = ablation_configs(cfg.grid, cfg.extra["lam"])
    started = time.perf_counter()
    for seed in cfg.seeds:
        for axis, value, settings in cells:
            for cat in cats:
                key = key_of(settings, cat, seed)
                if key in done:
                    row = dict(done[key])
                else:
                    t0 = time.perf_counter()
                    train = open_split(cfg.dataset, root, cat, "train", cfg.image_size)
                    test = open_split(cfg.dataset, root, cat, "test", cfg.image_size)
                    model = PatchSVDD(**settings, patch_sizes=sizes, strides=strides,
                                      epochs=cfg.epochs, batch_size=cfg.batch_size,
                                      samples_per_image=cfg.extra["samples_per_image"],
                                      seed=seed, progress=False).fit(train)
                    scores, maps = model.predict(test)
                    masks = np.stack([test[i]["mask"].numpy() > 0.5 for i in range(len(test))])
                    metrics = evaluate(scores, np.asarray(test.labels), maps, masks)
                    row = {"key": key, "category": cat, "seed": seed, **settings,
                           **{k: 100 * v for k, v in metrics.items()},
                           "final_loss": float(model.history["train_loss"].iloc[-1]),
                           "seconds": time.perf_counter() - t0}
                    done[key] = row
                    with rows_path.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(f"{time.perf_counter() - started:7.0f}s seed {seed} {axis}={value} {cat}: "
                          f"image {row['image_auroc']:.1f} pixel {row['pixel_auroc']:.1f}", flush=True)
    print(f"study finished in {time.perf_counter() - started:.0f} s")


def summarise(out: str = "data/results/cse_patch_svdd", grid: str = "full") -> pd.DataFrame:
    """Mean ± std per (axis, value) over seeds (per-seed values averaged over categories)."""
    rows = [json.loads(line) for line in (Path(out) / "study_rows.jsonl").read_text().splitlines()]
    by_key = {r["key"]: r for r in rows}
    table = []
    for axis, value, settings in ablation_configs(grid, 1e-3):
        hits = [r for r in by_key.values()
                if all(r.get(k) == v for k, v in settings.items())]
        if not hits:
            continue
        frame = pd.DataFrame(hits)
        per_seed = frame.groupby("seed")[["image_auroc", "pixel_auroc", "aupro"]].mean()
        table.append({"axis": axis, "value": value, "n_seeds": len(per_seed),
                      "categories": ",".join(sorted(frame["category"].unique())),
                      **{f"{m}_mean": per_seed[m].mean() for m in per_seed},
                      **{f"{m}_std": per_seed[m].std(ddof=1) for m in per_seed}})
    return pd.DataFrame(table)


if __name__ == "__main__":
    main()
