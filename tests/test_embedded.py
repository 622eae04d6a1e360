"""The embedded default data set: layout, exact masks, colour-only stains, determinism,
caching, and the command line (adlib/data/embedded.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from adlib.data import embedded as E
from adlib.data.errors import DataError

# A reduced set: every category, 4 train goods, 2 test goods, 2 images per defect type
# (3 or 6 in the labelled tree).
SMALL = {"n_train": 4, "n_test_good": 2, "n_test_anomalous": 8, "n_labelled_anomalous": 12}


@pytest.fixture(scope="session")
def small_set(tmp_path_factory) -> Path:
    return E.generate_embedded(tmp_path_factory.mktemp("emb") / "seed0", seed=0, **SMALL)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def check_layout(root: Path, n_train: int, n_test_good: int, n_test_anomalous: int,
                 n_labelled_anomalous: int = 0) -> None:
    """Assert the MVTec + labelled layout under root, with at least the given counts."""
    mvtec = root / "mvtec"
    assert sorted(p.name for p in mvtec.iterdir()) == sorted(E.EMBEDDED_CATEGORIES)
    for cat in E.EMBEDDED_CATEGORIES:
        c = mvtec / cat
        assert sorted(p.name for p in c.iterdir()) == ["ground_truth", "test", "train"]
        assert _files(c / "train") == ["good"]
        train = _files(c / "train" / "good")
        assert len(train) >= n_train and train[0] == "000.png"
        defects = [d for d in _files(c / "test") if d != "good"]
        assert len(defects) >= 2
        assert sorted(defects) == sorted(E.CATEGORY_INFO[cat]["defects"])
        assert len(_files(c / "test" / "good")) >= n_test_good
        assert _files(c / "ground_truth") == sorted(defects)  # good never has masks
        n_anomalous = 0
        for d in defects:
            images = _files(c / "test" / d)
            masks = _files(c / "ground_truth" / d)
            assert masks == [f"{Path(n).stem}_mask.png" for n in images]
            n_anomalous += len(images)
            for name in images:
                img = Image.open(c / "test" / d / name)
                mask = np.asarray(Image.open(c / "ground_truth" / d / f"{Path(name).stem}_mask.png"))
                assert img.mode == "RGB" and img.size == (E.IMAGE_SIZE, E.IMAGE_SIZE)
                assert mask.shape == (E.IMAGE_SIZE, E.IMAGE_SIZE) and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}  # binary and never empty
        assert n_anomalous >= n_test_anomalous
        lab = root / "labelled" / cat
        assert len(_files(lab / "normal")) == len(train) + len(_files(c / "test" / "good"))
        labelled = _files(lab / "anomalous")
        assert {f"{d}_{name}" for d in defects for name in _files(c / "test" / d)} <= set(labelled)
        assert len(labelled) >= max(n_anomalous, n_labelled_anomalous)


def test_layout_matches_mvtec_and_labelled_folders(small_set):
    check_layout(small_set, **SMALL)
    stamp = json.loads((small_set / "EMBEDDED.json").read_text())
    assert stamp["version"] == E.GENERATOR_VERSION and stamp["seed"] == 0
    assert sorted(stamp["categories"]) == sorted(E.EMBEDDED_CATEGORIES)
    brick = stamp["categories"]["brick"]
    assert brick["train_good"] == 4 and brick["defects"] == {d: 2 for d in E._TEXTURE_DEFECTS}
    assert brick["severity"]["scratch/000"] < 0.5 <= brick["severity"]["scratch/001"]
    # labelled/ holds the same bytes as mvtec/
    a = (small_set / "labelled" / "coins" / "anomalous" / "hole_001.png").read_bytes()
    assert a == (small_set / "mvtec" / "coins" / "test" / "hole" / "001.png").read_bytes()


def test_labelled_tree_continues_each_defect_type_with_the_same_seed_rule(small_set):
    """The labelled-only images are the next indices of each defect type: the same pixels as
    synthesise() gives for them, the same subtle / obvious alternation, and recorded."""
    stamp = json.loads((small_set / "EMBEDDED.json").read_text())["categories"]["ihc"]
    assert stamp["labelled_anomalous"] == 12 and stamp["defects"] == {"hue_stain": 4, "saturation_stain": 4}
    extra = small_set / "labelled" / "ihc" / "anomalous" / "hue_stain_005.png"
    assert not (small_set / "mvtec" / "ihc" / "test" / "hue_stain" / "005.png").exists()
    _, image, _, s = E.synthesise("ihc", "hue_stain", 5, seed=0)
    assert np.array_equal(np.asarray(Image.open(extra)), image)
    assert stamp["labelled_severity"]["hue_stain/005"] == round(s, 4) and s >= 0.5
    assert stamp["labelled_severity"]["hue_stain/004"] < 0.5


def test_mvtec_dataset_reads_the_embedded_set(small_set):
    folders = pytest.importorskip("adlib.data.folders")
    ds = folders.MVTecDataset(small_set / "mvtec", "coins", split="test", image_size=64)
    assert sorted(ds.labels) == [0] * 2 + [1] * 8
    for i, label in enumerate(ds.labels):
        item = ds[i]
        assert item["image"].shape == (3, 64, 64)
        assert (item["mask"].sum() > 0) == bool(label)
    assert len(folders.MVTecDataset(small_set / "mvtec", "ihc", split="train", image_size=64)) == 4


def test_categories_cover_the_required_kinds():
    kinds = [E.CATEGORY_INFO[c]["kind"] for c in E.EMBEDDED_CATEGORIES]
    assert len(E.EMBEDDED_CATEGORIES) >= 5
    assert kinds.count("texture") >= 2
    assert {"object_pose", "object_aligned", "colour"} <= set(kinds)
    for c in E.EMBEDDED_CATEGORIES:
        info = E.CATEGORY_INFO[c]
        assert info["description"] and "skimage.data." in info["source"]
        assert len(info["defects"]) >= 2
        assert all(E.DEFECT_INFO[d] and d in E.DEFECT_RANGES for d in info["defects"])
        if info["kind"] == "colour":
            assert set(info["defects"]) <= {"hue_stain", "saturation_stain"}
        else:  # the four structural families
            assert {"scratch", "hole", "stain"} <= set(info["defects"])
            assert {"missing", "deformed"} & set(info["defects"])
    assert E.N_TRAIN >= 60 and E.N_TEST_GOOD >= 20 and E.N_TEST_ANOMALOUS >= 20


@pytest.mark.parametrize("category", E.EMBEDDED_CATEGORIES)
def test_masks_mark_exactly_the_changed_pixels(category):
    clean, image, mask, s = E.synthesise(category, "good", 3, seed=0)
    assert np.array_equal(clean, image) and not mask.any() and s == 0
    for defect in E.CATEGORY_INFO[category]["defects"]:
        for index in (0, 1):  # one subtle, one obvious
            clean, image, mask, s = E.synthesise(category, defect, index, seed=0)
            assert image.shape == clean.shape == (256, 256, 3) and mask.shape == (256, 256)
            assert mask.sum() >= 4, (defect, index)
            assert np.array_equal(image[~mask], clean[~mask]), (defect, index)
            changed = np.any(image != clean, axis=-1)[mask].mean()
            assert changed > 0.5, (defect, index, changed)
            assert (s < 0.5) == (index % 2 == 0)


def test_obvious_defects_are_larger_or_stronger_than_subtle_ones():
    for category in ("brick", "coins", "ihc"):
        for defect in E.CATEGORY_INFO[category]["defects"]:
            strength = {0: [], 1: []}
            for index in range(6):
                clean, image, mask, _ = E.synthesise(category, defect, index, seed=0)
                diff = np.abs(image.astype(float) - clean.astype(float)).sum()
                strength[index % 2].append(diff)
            assert np.mean(strength[1]) > 2 * np.mean(strength[0]), (category, defect)


@pytest.mark.parametrize("defect", ["hue_stain", "saturation_stain"])
def test_colour_only_stains_keep_luminance(defect):
    for index in range(4):
        clean, image, mask, _ = E.synthesise("ihc", defect, index, seed=0)
        lab_clean, lab_image = rgb2lab(clean / 255.0), rgb2lab(image / 255.0)
        d_lightness = np.abs(lab_image[..., 0] - lab_clean[..., 0])[mask]
        d_colour = np.linalg.norm(lab_image[..., 1:] - lab_clean[..., 1:], axis=-1)[mask]
        assert d_lightness.mean() < 0.5 and d_lightness.max() < 3, index
        assert d_colour.mean() > 3 and d_colour.mean() > 10 * d_lightness.mean(), index


def test_texture_train_and_test_crops_come_from_disjoint_bands():
    # A photo whose value is its row number shows which rows each crop read.
    rows = np.repeat(np.arange(512, dtype=np.float32)[:, None], 512, axis=1)
    for split, bands in (("train", E._TRAIN_BANDS), ("test", E._TEST_BANDS)):
        for i in range(30):
            rng = np.random.default_rng([0, i])
            seen = E._band_crop(rows, rng, split, "dihedral" if i % 2 else "hflip")
            inside = [(seen.min() >= r0) and (seen.max() <= r1 - 1) for r0, r1 in bands]
            assert any(inside), (split, i, seen.min(), seen.max())


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path, small_set):
    tiny = {"n_train": 2, "n_test_good": 1, "n_test_anomalous": 4}
    a = E.generate_embedded(tmp_path / "a", seed=0, **tiny)
    b = E.generate_embedded(tmp_path / "b", seed=0, **tiny)
    c = E.generate_embedded(tmp_path / "c", seed=1, **tiny)
    assert E.tree_digest(a) == E.tree_digest(b)
    assert E.tree_digest(a) != E.tree_digest(c)
    # smaller sets are prefixes of larger ones: same bytes as the session's set
    for rel in ("mvtec/grass/train/good/001.png", "mvtec/retina/test/missing/000.png",
                "mvtec/retina/ground_truth/missing/000_mask.png"):
        assert (a / rel).read_bytes() == (small_set / rel).read_bytes()
        assert (a / rel).read_bytes() != (c / rel).read_bytes() or rel.endswith("mask.png")
    assert not E.synthesise("coins", "scratch", 0, seed=0)[2].tolist() == \
        E.synthesise("coins", "scratch", 0, seed=1)[2].tolist()


@pytest.fixture
def tiny_defaults(monkeypatch):
    """Shrink the 'full' set so ensure_embedded can be exercised quickly."""
    monkeypatch.setattr(E, "N_TRAIN", 2)
    monkeypatch.setattr(E, "N_TEST_GOOD", 1)
    monkeypatch.setattr(E, "N_TEST_ANOMALOUS", 4)
    monkeypatch.setattr(E, "N_LABELLED_ANOMALOUS", 4)
    calls = []
    real = E.generate_embedded

    def counting(*args, **kwargs):
        calls.append(kwargs.get("seed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "generate_embedded", counting)
    return calls


def test_ensure_embedded_reuses_and_regenerates(tmp_path, monkeypatch, tiny_defaults):
    root = tmp_path / "cache"
    assert E.ensure_embedded(root, seed=0) == root
    assert tiny_defaults == [0] and (root / "mvtec" / "brick" / "train" / "good" / "001.png").exists()
    assert (root / "labelled" / "ihc" / "anomalous").is_dir()
    before = E.tree_digest(root)
    E.ensure_embedded(root, seed=0)
    assert tiny_defaults == [0]  # reused
    stamp = json.loads((root / "EMBEDDED.json").read_text())
    stamp["seed"] = 7
    (root / "EMBEDDED.json").write_text(json.dumps(stamp))
    E.ensure_embedded(root, seed=0)
    assert tiny_defaults == [0, 0] and E.tree_digest(root) == before  # regenerated, same bytes
    (root / "EMBEDDED.json").unlink()  # an interrupted run leaves no stamp
    E.ensure_embedded(root, seed=0)
    assert tiny_defaults == [0, 0, 0]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp folders left
    # the default root comes from $ADLIB_EMBEDDED
    monkeypatch.setenv("ADLIB_EMBEDDED", str(tmp_path / "env"))
    assert E.ensure_embedded(seed=0) == tmp_path / "env"
    assert json.loads((tmp_path / "env" / "EMBEDDED.json").read_text())["seed"] == 0


def test_refuses_to_overwrite_a_tree_without_stamp(tmp_path):
    (tmp_path / "real" / "mvtec" / "bottle").mkdir(parents=True)
    with pytest.raises(DataError, match="not overwritten"):
        E.generate_embedded(tmp_path / "real", seed=0, **SMALL)
    with pytest.raises(DataError, match="unknown embedded categor"):
        E.synthesise("bottle", "good", 0)
    with pytest.raises(DataError, match="no defect type"):
        E.synthesise("ihc", "scratch", 0)
    with pytest.raises(DataError, match="no defect type"):
        E.synthesise("brick", "hole", 0, split="train")
    with pytest.raises(DataError, match="split must be"):
        E.synthesise("brick", "good", 0, split="val")


def test_cli_entry_point_in_process(tmp_path, tiny_defaults, capsys):
    from adlib.__main__ import main

    main(["data", "embedded", "--out", str(tmp_path / "cli"), "--seed", "3"])
    assert "written" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "EMBEDDED.json").read_text())["seed"] == 3
    assert tiny_defaults == [3]


def test_contact_sheet_draws_every_category(small_set, tmp_path):
    out = E.contact_sheet(small_set, tmp_path / "sheet.png")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape[0] > 400 and img.shape[1] > 800
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.sum() > 100  # mask outlines are drawn


@pytest.mark.slow
def test_full_set_from_the_command_line(tmp_path):
    """The real CLI in a subprocess writes the full-size set (about 20 s of CPU)."""
    out = tmp_path / "full"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-m", "adlib", "data", "embedded", "--out", str(out),
                    "--seed", "0"], check=True, env=env, capture_output=True, timeout=600)
    check_layout(out, E.N_TRAIN, E.N_TEST_GOOD, E.N_TEST_ANOMALOUS, E.N_LABELLED_ANOMALOUS)
    assert E._is_full_set(E.read_stamp(out), seed=0)
    for cat in E.EMBEDDED_CATEGORIES:
        assert len(_files(out / "mvtec" / cat / "train" / "good")) >= 60
        assert len(_files(out / "mvtec" / cat / "test" / "good")) >= 20
        n_anomalous = sum(len(_files(out / "mvtec" / cat / "test" / d))
                          for d in E.CATEGORY_INFO[cat]["defects"])
        assert n_anomalous >= 20
