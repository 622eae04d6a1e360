"""One GPU check: every chapter's ``paper`` profile, shortened, measured on this machine.

    python -m adlib gpucheck --out DIR              on a GPU: about 10 minutes
    python -m adlib gpucheck --device cpu --tiny    the same code path in seconds (pytest)

It writes a small tree in the MVTec AD layout (two categories, 256 px; 64 px with ``--tiny``),
then for each chapter runs its ``paper`` settings for a few hundred training steps and one pass
over the test images, and reports: training and inference throughput, peak GPU memory, whether
AMP is on, host synchronisations per training step (counted with
``torch.cuda.set_sync_debug_mode``), and the wall time the full ``paper`` profile would take at
the measured rates (the papers' epochs on MVTec AD's 3,629 training and 1,725 test images).
Backbones are built with ``pretrained=False``: hub weights cannot be fetched offline, and the
speed does not depend on them. On a GPU it also runs ``bench patchsvdd-nn``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

MVTEC_TRAIN, MVTEC_TEST = 3629, 1725
CATEGORIES = ("bottle", "grid")


def write_tree(root: Path, size: int, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Smooth random images (+ a bright square and its mask for defects) in the MVTec layout."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def image(defect: bool) -> tuple[np.ndarray, np.ndarray]:
        phase = rng.uniform(0, 2 * np.pi, 3)
        rgb = np.stack([0.5 + 0.25 * np.sin(6 * (xx + yy) + p) for p in phase], -1)
        mask = np.zeros((size, size), bool)
        if defect:
            r, c = rng.integers(size // 8, size - size // 4, 2)
            mask[r:r + size // 8, c:c + size // 8] = True
            rgb[mask] = 1.0
        return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), mask

    for category in CATEGORIES:
        for split, folder, n in (("train", "good", n_train), ("test", "good", n_test),
                                 ("test", "broken", n_test)):
            (root / category / split / folder).mkdir(parents=True, exist_ok=True)
            if folder == "broken":
                (root / category / "ground_truth" / folder).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rgb, mask = image(folder == "broken")
                Image.fromarray(rgb).save(root / category / split / folder / f"{i:03d}.png")
                if folder == "broken":
                    Image.fromarray(mask.astype(np.uint8) * 255).save(
                        root / category / "ground_truth" / folder / f"{i:03d}_mask.png")
    return root


class _Meter:
    """Wall time with the device synchronised at both ends; peak memory and host syncs on CUDA."""

    def __init__(self, device: str, count_syncs: bool = False):
        import torch

        self.cuda = device.startswith("cuda")
        self.count_syncs = count_syncs and self.cuda
        self.torch, self.syncs, self.seconds, self.peak_gib = torch, 0, 0.0, math.nan

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        if self.count_syncs:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            self.torch.cuda.set_sync_debug_mode("warn")
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.count_syncs:
            self.torch.cuda.set_sync_debug_mode("default")
            self.syncs = sum("synchroniz" in str(w.message) for w in self._caught)
            self._warnings.__exit__(*exc)
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak_gib = self.torch.cuda.max_memory_allocated() / 2**30
        self.seconds = time.perf_counter() - self._start
        return False


def _row(chapter: str, train: _Meter | None, train_items: int, steps: int, test: _Meter,
         test_images: int, amp: str, full_train_items: float, full_test_images: float,
         unit: str, extra_s: float = 0.0) -> dict[str, Any]:
    train_rate = train_items / train.seconds if train and train.seconds else math.nan
    test_rate = test_images / test.seconds
    full = (full_train_items / train_rate if train else 0.0) + full_test_images / test_rate + extra_s
    peaks = [m.peak_gib for m in (train, test) if m is not None and math.isfinite(m.peak_gib)]
    return {"chapter": chapter, "train items/s": round(train_rate, 1), "train unit": unit,
            "inference images/s": round(test_rate, 1),
            "peak GPU memory (GiB)": round(max(peaks), 2) if peaks else None, "AMP": amp,
            "host syncs / step": (round(train.syncs / steps, 2) if train and train.count_syncs
                                  else None),
            "steps timed": steps, "estimated paper wall time (h)": round(full / 3600, 3)}


def _check_knn(root: Path, size: int, device: str, tiny: bool) -> dict:
    from adlib.data.sources import open_split
    from adlib.models.knn_baseline import KNNBaseline

    train = open_split("mvtec_ad", root, CATEGORIES[0], "train", size)
    test = open_split("mvtec_ad", root, CATEGORIES[0], "test", size)
    model = KNNBaseline(image_size=size, device=device, progress=False, pretrained=not tiny)
    with _Meter(device) as fitting:
        model.fit(train)
    with _Meter(device) as scoring:
        model.predict(test)
    row = _row("00 kNN baseline", None, 0, 0, scoring, len(test), "off", 0, MVTEC_TEST, "images")
    row["train items/s"] = round(len(train) / fitting.seconds, 1)   # the memory bank's features
    row["estimated paper wall time (h)"] = round(
        (MVTEC_TRAIN / row["train items/s"] + MVTEC_TEST / row["inference images/s"]) / 3600, 3)
    return row


def _check_patch_svdd(root: Path, size: int, device: str, steps: int,
                      categories=CATEGORIES, dataset: str = "mvtec_ad") -> dict:
    from adlib.data.sources import open_split
    from adlib.profiles import resolve
    from adlib.studies import cse_patch_svdd as chapter

    cfg = resolve("cse_patch_svdd", "paper", data_root=str(root))
    s = chapter.protocol(cfg)
    train = open_split(dataset, root, categories[0], "train", size)
    test = open_split(dataset, root, categories[0], "test", size)
    if size < 128:  # --tiny: the images cannot hold a 64-px patch's neighbours
        s.update(patch_sizes="32", stride32=16)
    per_epoch = max(1, len(train) * s["samples_per_image"] // s["batch_size"])
    s["epochs"] = max(1, math.ceil(steps / per_epoch))
    model = chapter.make_model(s, seed=0, device=device, progress=False)
    with _Meter(device, count_syncs=True) as fitting:
        model.fit(train)
    with _Meter(device) as scoring:
        model.predict(test)
    n_steps = s["epochs"] * per_epoch
    paper = chapter.protocol(cfg)
    full_items = paper["epochs"] * paper["samples_per_image"] * MVTEC_TRAIN
    return _row("01 C-SE on Patch SVDD", fitting, n_steps * s["batch_size"], n_steps, scoring,
                len(test), "fp16" if device.startswith("cuda") else "off", full_items,
                MVTEC_TEST, "patch-pair samples")


#: Chapters whose model reads cached backbone features: label, and the settings --tiny
#: (64 px: a 4x4 stride-16 grid) needs instead of the paper's windows and widths.
FEATURE_CHAPTERS = {
    "maae": ("02 MAAE", {"hidden": 16, "layers": 3, "heads": 2, "neighbour": 3}),
    "rlr": ("05 RLR", {"windows": [5, 3, 3], "hidden": [8, 16, 32], "blocks": 1, "heads": 4}),
}


def _check_feature_model(paper: str, root: Path, size: int, device: str, steps: int,
                         categories=CATEGORIES, dataset: str = "mvtec_ad") -> dict:
    """A unified feature-reconstruction chapter (MAAE, RLR): features cached once, then its
    ``paper`` settings trained for about ``steps`` steps and scored on one test split."""
    import importlib

    import torch

    from adlib.data.sources import open_split
    from adlib.features import FeatureCache
    from adlib.profiles import resolve

    chapter = importlib.import_module(f"adlib.studies.{paper}")
    label, tiny_settings = FEATURE_CHAPTERS[paper]
    cfg = resolve(paper, "paper", data_root=str(root))
    s = chapter.protocol(cfg)
    trains = {c: open_split(dataset, root, c, "train", size) for c in categories}
    test = open_split(dataset, root, categories[0], "test", size)
    if size < 128:
        s.update(tiny_settings)
    n_train = sum(len(t) for t in trains.values())
    per_epoch = max(1, math.ceil(n_train / s["batch_size"]))
    s["epochs"] = max(1, math.ceil(steps / per_epoch))
    cache = FeatureCache(s["backbone"], stages=s["stages"], image_size=size, device=device,
                         dtype=getattr(torch, s.get("feature_dtype", "float32")),
                         pretrained=False, show_progress=False)
    with _Meter(device) as extracting:
        for t in (*trains.values(), test):
            cache.get(t)
    detector = chapter.make_detector(cache, s, seed=0, device=device, progress=False)
    with _Meter(device, count_syncs=True) as fitting:
        detector.fit(trains)
    with _Meter(device) as scoring:
        detector.predict(test)
    extract_rate = (n_train + len(test)) / extracting.seconds
    paper_settings = chapter.protocol(cfg)
    return _row(label, fitting, s["epochs"] * n_train, s["epochs"] * per_epoch, scoring,
                len(test), "fp16" if device.startswith("cuda") else "off",
                paper_settings["epochs"] * MVTEC_TRAIN, MVTEC_TEST, "images",
                extra_s=(MVTEC_TRAIN + MVTEC_TEST) / extract_rate)


#: The paper's labelled data sets (Table 2): about 350 images each, a quarter of them anomalous.
LABELLED_IMAGES, LABELLED_NORMAL = 350, 260


def _check_lea_net(root: Path, size: int, device: str, steps: int, categories=CATEGORIES,
                   dataset: str = "mvtec_ad") -> dict:
    """LEA-Net's ``paper`` settings (ResNet18 + ResNet-based CAAN, width 64): the colouriser and
    the classifier each trained for about ``steps`` steps on one category's images (train goods
    normal, test defects anomalous), one scoring pass; the estimate is 5 folds of 500 colouriser
    epochs on the normals and 100 classifier epochs on a Table 2-sized data set."""
    import torch

    from adlib.data.sources import open_split
    from adlib.models import lea_net as lea
    from adlib.profiles import resolve
    from adlib.studies import lea_net as chapter

    s = chapter.protocol(resolve("lea_net", "paper", data_root=str(root)))
    items = [*open_split(dataset, root, categories[0], "train", size), *open_split(dataset, root, categories[0], "test", size)]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([int(item["label"]) for item in items])
    per_epoch = max(1, math.ceil(len(images) / s["batch_size"]))
    epochs = max(1, math.ceil(steps / per_epoch))
    with _Meter(device) as colouring:
        fitted = lea.train_colouriser(images[labels == 0], image_size=size, width=s["colouriser_width"],
                                      epochs=epochs, device=device, amp=s["amp"])
        maps, _ = lea.colour_anomaly_maps(fitted.model, images)
    net = lea.LEANet(s["adn"], s["caan"], s["point"], width=s["width"], image_size=size)
    with _Meter(device, count_syncs=True) as fitting:
        result = lea.train_lea_net(net, images, maps, labels, epochs=epochs, lr=1e-4, device=device, amp=s["amp"])
    with _Meter(device) as scoring:
        lea.predict(result.model, images, maps)
    normal_rate = epochs * int((labels == 0).sum()) / colouring.seconds
    colouriser_s = s["folds"] * s["colouriser_epochs"] * LABELLED_NORMAL * 0.8 / normal_rate
    return _row("04 LEA-Net", fitting, epochs * len(images), epochs * per_epoch, scoring, len(images),
                "fp16" if device.startswith("cuda") else "off",
                s["folds"] * s["epochs"] * LABELLED_IMAGES * 0.8, s["folds"] * LABELLED_IMAGES * 0.2,
                "images", extra_s=colouriser_s)


def paper_estimate(paper: str, run: Any, steps: int = 20) -> str:
    """A short timed warm-up on the run's own data and device, and the wall time the full
    ``paper`` profile would take at that rate: printed by a chapter before it commits to hours."""
    args = (Path(run.root), run.cfg.image_size, run.device, steps)
    kw = {"categories": run.categories[:2], "dataset": run.cfg.dataset}
    if paper == "lea_net":
        return _lea_net_estimate(run, steps)
    if paper != "cse_patch_svdd" and paper not in FEATURE_CHAPTERS:
        return f"no warm-up estimate for {paper} yet (python -m adlib gpucheck times the others)"
    row = (_check_patch_svdd(*args, **kw) if paper == "cse_patch_svdd"
           else _check_feature_model(paper, *args, **kw))
    return (f"warm-up, {row['steps timed']} training steps on {run.device}: "
            f"{row['train items/s']} {row['train unit']}/s, {row['inference images/s']} test "
            f"images/s, AMP {row['AMP']}; the full paper profile (MVTec AD's 3,629 training and "
            f"1,725 test images) would take about {row['estimated paper wall time (h)']} h here")


def _lea_net_estimate(run: Any, steps: int) -> str:
    """LEA-Net's warm-up: its check on a small tree of this size, scaled to the paper's protocol."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = write_tree(Path(tmp), run.cfg.image_size, 8, 4)
        row = _check_lea_net(root, run.cfg.image_size, run.device, steps)
    return (f"warm-up on {run.device}: {row['train items/s']} training images/s, AMP {row['AMP']}; "
            f"5 folds of the paper profile on a Table 2-sized data set (350 images) would take "
            f"about {row['estimated paper wall time (h)']} h here")


def gpucheck(out: str | Path, *, device: str = "auto", tiny: bool = False,
             steps: int | None = None) -> list[dict]:
    """Run every chapter's check; write ``gpucheck.json`` and ``gpucheck.md`` into ``out``."""
    import torch

    from adlib.results import adlib_revision, hardware_info, hardware_label
    from adlib.train import pick_device

    device = str(pick_device(device))
    out = Path(out)
    size, n_train, n_test = (64, 4, 2) if tiny else (256, 32, 16)
    steps = steps or (2 if tiny else 300)
    root = write_tree(out / "mvtec", size, n_train, n_test)
    rows = [_check_knn(root, size, device, tiny)]
    rows.append(_check_patch_svdd(root, size, device, steps))
    for paper in FEATURE_CHAPTERS:
        rows.append(_check_feature_model(paper, root, size, device, steps))
        print(rows[-1], flush=True)
    rows.insert(3, _check_lea_net(root, size, device, steps))
    bench = None
    if device.startswith("cuda") and not tiny:
        from adlib.bench import bench_patchsvdd_nn

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
    import pandas as pd

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
