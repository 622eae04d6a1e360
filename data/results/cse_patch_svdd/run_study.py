"""The cse_patch_svdd study: every cell of the ablation grid x seeds x categories.

    ADLIB_PROGRESS=summary nohup python data/results/cse_patch_svdd/run_study.py \
        --categories brick,coins,grass --out data/results/cse_patch_svdd > study_a.log &
    ADLIB_PROGRESS=summary nohup python data/results/cse_patch_svdd/run_study.py \
        --categories gravel,ihc,retina --out data/results/cse_patch_svdd > study_b.log &
    python data/results/cse_patch_svdd/run_study.py --summarise

(one process per core; the README in this folder has the timing and a reading of the table).

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
from adlib.results import adlib_revision


def key_of(settings: dict, category: str, seed: int, protocol: dict) -> str:
    return json.dumps({**settings, **protocol, "category": category, "seed": seed}, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--categories", default="brick,coins,grass,gravel,ihc,retina",
                        help="comma-separated; split them over processes to use several cores")
    parser.add_argument("--out", default="data/results/cse_patch_svdd")
    parser.add_argument("--grid", default=None)
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the profile's epochs (0: the randomly initialised encoders)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (1 per process is fastest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve("cse_patch_svdd", "study", patch_sizes=None, stride32=None, stride64=None,
                  samples_per_image=None, lam=None, grid=args.grid, epochs=args.epochs)
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
    # what the key must also pin: rows of another image size or training length are not reused
    protocol = {"image_size": cfg.image_size, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                "samples_per_image": cfg.extra["samples_per_image"], "stride32": strides[32]}
    started = time.perf_counter()
    revision = adlib_revision()  # the code that runs, not whatever is checked out when it ends
    for seed in cfg.seeds:
        for axis, value, settings in cells:
            for cat in cats:
                key = key_of(settings, cat, seed, protocol)
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
                           "final_loss": float(model.history["train_loss"].iloc[-1])
                           if len(model.history) else float("nan"),
                           "adlib_revision": revision,
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


def per_seed(rows: pd.DataFrame, settings: dict, metric: str) -> list[float]:
    """One value per seed: ``metric`` averaged over the categories, for a configuration."""
    mask = np.ones(len(rows), dtype=bool)
    for k, v in settings.items():
        mask &= (rows[k] == v).to_numpy()
    return rows[mask].groupby("seed")[metric].mean().tolist()


def write_record(out: str = "data/results/cse_patch_svdd", wall_time_s: float | None = None,
                 revision: str | None = None) -> Path:
    """``study_table.csv`` and a RunRecord with metrics, ablation rows and direction claims."""
    from adlib.results import RunRecord, get_claim, hardware_info, verdict_for_direction

    cfg = resolve("cse_patch_svdd", "study", patch_sizes=None, stride32=None, stride64=None,
                  samples_per_image=None, lam=None)
    table = summarise(out, cfg.grid)
    table.round(2).to_csv(Path(out) / "study_table.csv", index=False)
    rows = pd.DataFrame([json.loads(x) for x in (Path(out) / "study_rows.jsonl").read_text().splitlines()])
    cells = {(a, v): s for a, v, s in ablation_configs(cfg.grid, cfg.extra["lam"])}
    if revision is None:  # the rows name the code that made them (older rows do not)
        made_by = rows["adlib_revision"].dropna().unique() if "adlib_revision" in rows else []
        revision = ",".join(sorted(made_by)) if len(made_by) else adlib_revision()
    cats = sorted(rows["category"].unique())
    seeds = sorted(rows["seed"].unique())
    default = cells[("variant", "+C-SE+LBR")]
    metrics = {}
    for cat in cats:
        sub = rows[rows.category == cat]
        metrics[cat] = {m: per_seed(sub, default, m) for m in ("image_auroc", "pixel_auroc", "aupro")}
    metrics["mean"] = {m: per_seed(rows, default, m) for m in ("image_auroc", "pixel_auroc", "aupro")}
    ctx = dict(dataset="embedded", profile="study", seeds=[int(s) for s in seeds],
               hardware=hardware_info("cpu"))
    where = f"image AUROC, mean of {', '.join(cats)} per seed"

    def v(axis, value, metric="image_auroc"):
        return per_seed(rows, cells[(axis, value)], metric)

    def best(axis, values, metric="image_auroc"):
        means = {x: np.mean(v(axis, x, metric)) for x in values}
        return v(axis, max(means, key=means.get), metric)

    claims = []
    for metric in ("image_auroc", "pixel_auroc"):
        claims.append(verdict_for_direction(get_claim("cse_patchsvdd", 1),
            {"+C-SE+LBR": v("variant", "+C-SE+LBR", metric), "Patch SVDD": v("variant", "Patch SVDD", metric)},
            "+C-SE+LBR > Patch SVDD", reason=f"{metric}, mean of {', '.join(cats)} per seed", **ctx))
    claims.append(verdict_for_direction(get_claim("cse_patchsvdd", 2),
        {k: v("variant", k) for k in ("+C-SE", "Patch SVDD", "+SE")}, "+C-SE > Patch SVDD > +SE",
        reason=where, **ctx))
    claims.append(verdict_for_direction(get_claim("cse_patchsvdd", 3),
        {k: v("variant", k) for k in ("+C-SE+LBR", "+C-SE", "+SE")}, "+C-SE+LBR > +C-SE > +SE",
        reason=where, **ctx))
    claims.append(verdict_for_direction(get_claim("cse_patchsvdd", 5),
        {"last 6": v("layers", 6), "best other": best("layers", (2, 4, 8))}, "last 6 > best other",
        reason=f"layers 2/4/6/8, {where}", **ctx))
    claims.append(verdict_for_direction(get_claim("cse_patchsvdd", 5),
        {"r=16": v("r", 16), "best other r": best("r", (4, 8, 32))}, "r=16 > best other r",
        reason=f"r 4/8/16/32, {where}", **ctx))
    claims.append(verdict_for_direction(get_claim("cse_patchsvdd", 6),
        {"best of 1, 0.001": best("lam", (0.001, 1.0)), "best of 0.01, 0.1": best("lam", (0.01, 0.1))},
        "best of 1, 0.001 > best of 0.01, 0.1", reason=where, **ctx))
    claims.append(verdict_for_direction(get_claim("cse_patchsvdd", 7),
        {"no noise": v("noise_var", 0.0), "var 0.05": v("noise_var", 0.05)}, "no noise > var 0.05",
        reason=where, **ctx))
    claims.append(verdict_for_direction(get_claim("cse_patchsvdd", 7),
        {"+C-SE+LBR": v("variant", "+C-SE+LBR", "final_loss"), "+C-SE": v("variant", "+C-SE", "final_loss")},
        "+C-SE+LBR > +C-SE", higher_is_better=False,
        reason=f"final training loss after {cfg.epochs} epoch(s), lower is better", **ctx))
    record = RunRecord(paper="cse_patch_svdd", notebook="data/results/cse_patch_svdd/run_study.py",
                       profile="study", dataset="embedded", data_root=None, categories=cats,
                       params=cfg.as_dict(), seeds=[int(s) for s in seeds], metrics=metrics,
                       ablations=rows.drop(columns=["key", "adlib_revision"], errors="ignore").to_dict("records"),
                       claims=claims,
                       hardware=hardware_info("cpu"),
                       wall_time_s=wall_time_s if wall_time_s is not None else float(rows["seconds"].sum()),
                       adlib_revision=revision,
                       notes="study grid: every ablation cell x seeds x categories; metrics = "
                             "C-SE+LBR (default) per seed")
    return record.save(out)


if __name__ == "__main__":
    import sys

    if "--summarise" in sys.argv:
        print(write_record())
        print(summarise().round(2).to_string(index=False))
    else:
        main()
