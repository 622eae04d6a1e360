"""Shared fixtures: tiny data trees in the official layouts (see data/README.md).

The builders are plain functions so any test can make a variant:

    from conftest import build_mvtec_tree
    root = build_mvtec_tree(tmp_path / "mvtec", categories={"bottle": MVTecCategory(grey=False)})

or through the ``tree_builders`` fixture. Images are 32x32 by default: a smooth pattern plus
noise for normals, the same with a bright square (exactly where the mask is) for anomalies,
so a model can learn something in a few steps. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

try:
    import torch

    torch.set_num_threads(2)
except ImportError:  # the data tests do not need torch at import time
    pass


@dataclass(frozen=True)
class MVTecCategory:
    """One fixture category: grey like MVTec's grid/screw/zipper, or RGB; defect types -> count."""

    grey: bool = False
    n_train: int = 4
    n_test_good: int = 2
    defects: dict = field(default_factory=lambda: {"broken": 2})


MVTEC_FIXTURE = {
    "bottle": MVTecCategory(grey=False, defects={"broken_large": 2, "contamination": 1}),
    "grid": MVTecCategory(grey=True, defects={"bent": 2}),
}
VISA_OBJECTS = ("candle", "pcb1")
VISA_COUNTS = {"train_normal": 4, "test_normal": 2, "test_anomaly": 2}


def normal_image(rng: np.random.Generator, size: int = 32, grey: bool = False) -> np.ndarray:
    """A smooth random pattern with mild noise: uint8 ``size x size`` (grey) or ``size x size x 3``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi, size=3)
    channels = [0.5 + 0.25 * np.sin(2 * np.pi * (xx + yy) + p) for p in phase]
    image = np.stack(channels, axis=-1) + rng.normal(0, 0.03, size=(size, size, 3))
    image = np.clip(image * 255, 0, 255).astype(np.uint8)
    return image[..., 0] if grey else image


def defect_mask(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A bool mask with one square defect of side ``size // 4`` at a random place."""
    side = max(2, size // 4)
    top, left = rng.integers(0, size - side, size=2)
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


def anomalous_image(rng: np.random.Generator, mask: np.ndarray, grey: bool = False) -> np.ndarray:
    """A normal image with the masked pixels painted bright (the defect)."""
    image = normal_image(rng, mask.shape[0], grey)
    image[mask] = 250
    return image


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_jpeg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)
    return path


def build_mvtec_tree(root: Path, categories: dict | None = None, size: int = 32, seed: int = 0) -> Path:
    """Write ``root/<cat>/{train/good, test/good, test/<defect>, ground_truth/<defect>}``; return root.

    Masks are 0/255 PNGs named ``<stem>_mask.png``, as in MVTec AD.
    """
    rng = np.random.default_rng(seed)
    for name, spec in (categories or MVTEC_FIXTURE).items():
        category = Path(root) / name
        for i in range(spec.n_train):
            write_png(category / "train" / "good" / f"{i:03d}.png", normal_image(rng, size, spec.grey))
        for i in range(spec.n_test_good):
            write_png(category / "test" / "good" / f"{i:03d}.png", normal_image(rng, size, spec.grey))
        for defect, count in spec.defects.items():
            for i in range(count):
                mask = defect_mask(rng, size)
                write_png(category / "test" / defect / f"{i:03d}.png", anomalous_image(rng, mask, spec.grey))
                write_png(category / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return Path(root)


def build_visa_tree(root: Path, objects: tuple = VISA_OBJECTS, counts: dict | None = None,
                    size: int = 32, seed: int = 0) -> Path:
    """Write VisA's raw layout and ``root/split_csv/1cls.csv`` (official columns, CRLF); return root.

    Normals are ``Data/Images/Normal/0000.JPG``..., anomalies ``Data/Images/Anomaly/000.JPG`` with
    masks ``Data/Masks/Anomaly/000.png`` whose defect value is small and non-255 (VisA masks are
    0 / non-zero), so loaders must binarise with ``> 0``.
    """
    counts = {**VISA_COUNTS, **(counts or {})}
    rng = np.random.default_rng(seed)
    rows = []
    for name in objects:
        for i in range(counts["train_normal"] + counts["test_normal"]):
            relative = f"{name}/Data/Images/Normal/{i:04d}.JPG"
            write_jpeg(Path(root) / relative, normal_image(rng, size))
            rows.append([name, "train" if i < counts["train_normal"] else "test", "normal", relative, ""])
        for i in range(counts["test_anomaly"]):
            mask = defect_mask(rng, size)
            relative = f"{name}/Data/Images/Anomaly/{i:03d}.JPG"
            mask_relative = f"{name}/Data/Masks/Anomaly/{i:03d}.png"
            write_jpeg(Path(root) / relative, anomalous_image(rng, mask))
            write_png(Path(root) / mask_relative, mask.astype(np.uint8) * (1 + 37 * (i % 2)))
            rows.append([name, "test", "anomaly", relative, mask_relative])
    split = Path(root) / "split_csv" / "1cls.csv"
    split.parent.mkdir(parents=True, exist_ok=True)
    with open(split, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\r\n")
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return Path(root)


def build_labelled_tree(root: Path, n_normal: int = 10, n_anomalous: int = 5, size: int = 32,
                        seed: int = 0) -> Path:
    """Write ``root/{normal,anomalous}/*.png`` (a LEA-Net-style binary set); return root."""
    rng = np.random.default_rng(seed)
    for i in range(n_normal):
        write_png(Path(root) / "normal" / f"{i:03d}.png", normal_image(rng, size))
    for i in range(n_anomalous):
        write_png(Path(root) / "anomalous" / f"{i:03d}.png", anomalous_image(rng, defect_mask(rng, size)))
    return Path(root)


@pytest.fixture
def mvtec_tree(tmp_path: Path) -> Path:
    """An MVTec-layout root with ``bottle`` (RGB, 2 defect types) and ``grid`` (grey)."""
    return build_mvtec_tree(tmp_path / "mvtec")


@pytest.fixture
def visa_tree(tmp_path: Path) -> Path:
    """A VisA root with ``candle`` and ``pcb1`` and its ``split_csv/1cls.csv``."""
    return build_visa_tree(tmp_path / "visa")


@pytest.fixture
def labelled_tree(tmp_path: Path) -> Path:
    """A labelled-folder data set: 10 normal and 5 anomalous 32x32 PNGs."""
    return build_labelled_tree(tmp_path / "labelled" / "plants")


@pytest.fixture
def tree_builders() -> SimpleNamespace:
    """The builder functions, for tests that need a variant of the trees above."""
    return SimpleNamespace(mvtec=build_mvtec_tree, visa=build_visa_tree, labelled=build_labelled_tree,
                           MVTecCategory=MVTecCategory)


@pytest.fixture(scope="session")
def embedded_root():
    """The embedded default (generated once and cached; ``$ADLIB_EMBEDDED`` reuses a copy)."""
    from adlib.data.sources import resolve_root

    return resolve_root("embedded")
