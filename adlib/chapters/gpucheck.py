"""One GPU check: every chapter's ``paper`` profile, shortened, measured on this machine.

    python -m adlib gpucheck --out DIR              on a GPU: about 10 minutes
    python -m adlib gpucheck --device cpu --tiny    the same code path in seconds (pytest)

It writes a small tree in the MVTec AD layout (two categories, 256 px; 64 px with ``--tiny``),
then for each chapter whose ``CHAPTER`` names a gpucheck entry (:mod:`adlib.chapters.warmup`) runs its
``paper`` settings for a few hundred training steps and one pass over the test images (the
nearest-neighbour baseline of chapter 0 fits its memory bank instead), and reports: training
and inference throughput, peak GPU memory, whether AMP is on, host synchronisations per
training step (counted with ``torch.cuda.set_sync_debug_mode``), and the wall time the full
``paper`` profile would take at the measured rates (e.g. the papers' epochs on MVTec AD's 3,629
training and 1,725 test images).
Backbones are built with ``pretrained=False``: hub weights cannot be fetched offline, and the
speed does not depend on them. On a GPU it also runs ``bench patchsvdd-nn``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from adlib.chapters.base import Chapter
from adlib.chapters.cse_patch_svdd.bench import bench_patchsvdd_nn
from adlib.chapters.data_and_metrics.model import KNNBaseline
from adlib.chapters.profiles import resolve
from adlib.chapters.registry import chapters
from adlib.chapters.warmup import (
    CATEGORIES,
    MVTEC_TEST,
    MVTEC_TRAIN,
    Meter,
    Warmup,
    timing_row,
    write_tree,
)
from adlib.data.sources import open_split
from adlib.study.load import load_study
from adlib.study.results import adlib_revision, hardware_info, hardware_label
from adlib.training.train import pick_device


def _check_knn(root: Path, size: int, device: str, tiny: bool) -> dict:
    train = open_split("mvtec_ad", root, CATEGORIES[0], "train", size)
    test = open_split("mvtec_ad", root, CATEGORIES[0], "test", size)
    model = KNNBaseline(image_size=size, device=device, progress=False, pretrained=not tiny)
    with Meter(device) as fitting:
        model.fit(train)
    with Meter(device) as scoring:
        model.predict(test)
    row = timing_row("00 kNN baseline", None, 0, 0, scoring, len(test), "off", 0, MVTEC_TEST, "images")
    row["train items/s"] = round(len(train) / fitting.seconds, 1)   # the memory bank's features
    row["estimated paper wall time (h)"] = round(
        (MVTEC_TRAIN / row["train items/s"] + MVTEC_TEST / row["inference images/s"]) / 3600, 3)
    return row


def entries() -> list[Chapter]:
    """The chapters the check times, in book order: those whose ``CHAPTER`` names a gpucheck entry."""
    return [c for c in chapters() if c.gpucheck is not None]


def check_chapter(chapter: Chapter, root: Path, size: int, device: str, steps: int) -> dict:
    """One chapter's row: its entry on its ``paper`` settings, on the tree at ``root``."""
    if chapter.study is None:
        msg = (f"chapter {chapter.key} names a gpucheck entry but declares no STUDY, whose "
               "protocol gives the settings to time; declare STUDY or drop the entry")
        raise ValueError(msg)
    paper = load_study(chapter.study).protocol(resolve(chapter.key, "paper", data_root=str(root)))
    return Warmup(chapter, paper, root, size, device, steps).run()


def gpucheck(out: str | Path, *, device: str = "auto", tiny: bool = False,
             steps: int | None = None) -> list[dict]:
    """Run every chapter's check; write ``gpucheck.json`` and ``gpucheck.md`` into ``out``."""
    device = str(pick_device(device))
    out = Path(out)
    size, n_train, n_test = (64, 4, 2) if tiny else (256, 32, 16)
    steps = steps or (2 if tiny else 300)
    root = write_tree(out / "mvtec", size, n_train, n_test)
    rows = [_check_knn(root, size, device, tiny)]
    for chapter in entries():
        rows.append(check_chapter(chapter, root, size, device, steps))
        print(rows[-1], flush=True)
    bench = None
    if device.startswith("cuda") and not tiny:
        bench = bench_patchsvdd_nn(image_size=256, device=device)
    report = {"device": device, "hardware": hardware_info(device),
              "label": hardware_label(hardware_info(device)), "revision": adlib_revision(),
              "torch": torch.__version__, "tiny": tiny, "image_size": size, "steps": steps,
              "pretrained": False, "rows": rows, "bench_patchsvdd_nn": bench,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "gpucheck.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpucheck.md").write_text(report_markdown(report))
    print(report_markdown(report))
    return rows


def report_markdown(report: dict) -> str:
    """The report as a Markdown table with a line naming the machine, revision and settings."""
    table = pd.DataFrame(report["rows"]).fillna("n/a")
    lines = [f"GPU check on {report['label']} ({report['device']}), revision {report['revision']}, "
             f"torch {report['torch']}, {report['image_size']} px, {report['steps']} training steps "
             f"per chapter, backbones without pretrained weights{' (tiny)' if report['tiny'] else ''}; "
             f"{report['created']}.", "",
             "| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    if report.get("bench_patchsvdd_nn"):
        lines += ["", f"bench patchsvdd-nn: {report['bench_patchsvdd_nn']}"]
    return "\n".join(lines) + "\n"
