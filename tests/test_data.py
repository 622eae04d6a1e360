"""Behaviour of adlib.data: file reading, the three folder datasets, k-fold, downloads.

Everything runs on small trees built in tmp_path (see conftest.py); the network is never
used (pooch's downloader in adlib.data.download is replaced for every test).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path


import numpy as np
import pytest
import requests
import torch
from conftest import MVTEC_FIXTURE, MVTecCategory, build_mvtec_tree, build_visa_tree, write_png
from PIL import Image

import adlib.data.download as download
from adlib.data import (
    DATASETS,
    DataError,
    LabelledFolderDataset,
    MVTecDataset,
    VisADataset,
    default_data_root,
    download_dataset,
    extract_archive,
    list_categories,
    read_image,
    read_mask,
    read_visa_split,
    stratified_kfold,
    verify_sha256,
)

REAL_VISA_CSV = Path("/work/shared/layouts/visa/1cls.csv")
REPO = Path(__file__).resolve().parents[1]


def serving(data: bytes | None = None, calls: list | None = None, error: Exception | None = None):
    """A pooch downloader that serves ``data`` (or raises ``error``), never the network."""
    def download_to(url, output_file, pooch_obj):
        if calls is not None:
            calls.append(url)
        if error is not None:
            raise error
        with open(output_file, "wb") as out:
            out.write(data)

    return lambda: download_to


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download fails the way an offline machine does (at once: no retries)."""
    monkeypatch.setattr(download, "RETRIES", 0)
    monkeypatch.setattr(download, "_downloader",
                        serving(error=requests.ConnectionError("network disabled in tests")))


def assert_data_error(excinfo, *fragments):
    """The DataError message names every fragment (paths, values) and points to the docs."""
    message = str(excinfo.value)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in: {message}"
    assert "data/README.md#" in message


def write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): grey, grey+alpha, RGB, RGBA."""
    array = np.asarray(array, dtype=">u2")
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + array[y].tobytes() for y in range(height))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- read_image / read_mask

def test_read_image_rgb_values_exact(tmp_path):
    pixels = np.array([[[0, 128, 255], [10, 20, 30]]], dtype=np.uint8)
    image = read_image(write_png(tmp_path / "rgb.png", pixels))
    assert image.dtype == np.float32 and image.shape == (1, 2, 3)
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-7)


def test_read_image_grey_becomes_three_equal_channels(tmp_path):
    pixels = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    image = read_image(write_png(tmp_path / "grey.png", pixels))
    assert image.shape == (2, 2, 3)
    for channel in range(3):
        np.testing.assert_allclose(image[..., channel], pixels / 255.0, atol=1e-7)


def test_read_image_rgba_keeps_stored_rgb(tmp_path):
    pixels = np.array([[[200, 100, 50, 128], [30, 60, 90, 0]]], dtype=np.uint8)
    image = read_image(write_png(tmp_path / "rgba.png", pixels))
    assert image.shape == (1, 2, 3)
    np.testing.assert_allclose(image, pixels[..., :3] / 255.0, atol=1e-7)


def test_read_image_16bit_grey_scaled_by_65535_not_clipped(tmp_path):
    pixels = np.array([[0, 32768, 65535, 255]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_image(path)
    np.testing.assert_allclose(image[0, :, 0], [0.0, 32768 / 65535, 1.0, 255 / 65535], atol=1e-6)
    assert image.max() == pytest.approx(1.0)


def test_read_image_16bit_rgb_and_rgba(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb[0, 0] = [65535, 32768, 0]
    image = read_image(write_png16(tmp_path / "rgb16.png", rgb))
    np.testing.assert_allclose(image[0, 0], [1.0, 0.5, 0.0], atol=1 / 255)
    rgba = np.zeros((2, 2, 4), dtype=np.uint16)
    rgba[0, 0] = [65535, 32768, 0, 1000]
    image = read_image(write_png16(tmp_path / "rgba16.png", rgba))
    np.testing.assert_allclose(image[0, 0], [1.0, 0.5, 0.0], atol=1 / 255)


def test_read_image_32bit_integer_mode(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), mode="I").save(path)
    np.testing.assert_allclose(read_image(path)[0, :, 0], [0.0, 32768 / 65535, 1.0], atol=1e-6)
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I").save(path)
    with pytest.raises(DataError, match="70000"):
        read_image(path)


def test_read_image_palette(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "palette.png")
    np.testing.assert_allclose(read_image(tmp_path / "palette.png")[0], [[0, 0, 0], [1, 0, 0]])


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_read_image_corrupt_file_names_it(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        read_image(path)
    assert_data_error(excinfo, path)


def test_read_image_truncated_png(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = write_png(tmp_path / "whole.png", noise)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError) as excinfo:
        read_image(truncated)
    assert_data_error(excinfo, truncated)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_image(tmp_path / "nope.png")
    assert_data_error(excinfo, tmp_path / "nope.png")


def test_read_mask_binarises_any_nonzero_value(tmp_path):
    values = np.array([[0, 1, 38, 255]], dtype=np.uint8)
    mask = read_mask(write_png(tmp_path / "mask.png", values))
    assert mask.dtype == bool and mask.shape == (1, 4)
    assert mask.tolist() == [[False, True, True, True]]


def test_read_mask_16bit_rgb_and_palette(tmp_path):
    path = tmp_path / "mask16.png"
    Image.fromarray(np.array([[0, 1, 65535]], dtype=np.uint16)).save(path)
    assert read_mask(path).tolist() == [[False, True, True]]
    colour = np.zeros((1, 3, 3), dtype=np.uint8)
    colour[0, 1, 2] = 7
    assert read_mask(write_png(tmp_path / "colour.png", colour)).tolist() == [[False, True, False]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6))
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "palette.png")
    assert read_mask(tmp_path / "palette.png").tolist() == [[True, False]]


# ----------------------------------------------------------------------------- MVTecDataset

def test_mvtec_train_items_follow_the_contract(mvtec_tree):
    data = MVTecDataset(mvtec_tree, "bottle", split="train", image_size=24)
    assert len(data) == MVTEC_FIXTURE["bottle"].n_train
    assert data.labels == [0] * len(data) and data.defect_types == ["good"]
    assert data.category == "bottle" and data.split == "train"
    for item in data:
        assert set(item) == {"image", "label", "mask", "defect_type", "path"}
        assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["mask"].shape == (24, 24) and item["mask"].dtype == torch.float32
        assert item["mask"].sum() == 0 and item["label"] == 0 and item["defect_type"] == "good"
        assert Path(item["path"]).is_file()


def test_mvtec_test_split_labels_masks_and_order(mvtec_tree):
    data = MVTecDataset(mvtec_tree, "bottle", split="test", image_size=32)
    assert data.defect_types == ["broken_large", "contamination", "good"]
    assert data.labels == [1, 1, 1, 0, 0]
    for path, label, defect_type, mask_path in data.samples:
        assert (mask_path is None) == (label == 0)
        if mask_path is not None:
            assert mask_path.name == path.stem + "_mask.png" and mask_path.parent.name == defect_type
    again = MVTecDataset(mvtec_tree, "bottle", "test")
    assert [s.path for s in data.samples] == [s.path for s in again.samples]
    for item, sample in zip(data, data.samples):
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        if sample.label == 1:
            stored = np.asarray(Image.open(sample.mask_path)) > 0
            assert torch.equal(item["mask"], torch.from_numpy(stored.astype(np.float32)))
            # the fixture's defect is painted bright exactly under the mask
            assert item["image"][:, item["mask"] > 0].mean() > item["image"][:, item["mask"] == 0].mean()


def test_mvtec_grey_category_gives_three_equal_channels(mvtec_tree):
    item = MVTecDataset(mvtec_tree, "grid", split="test", image_size=32)[0]
    assert item["image"].shape == (3, 32, 32)
    assert torch.equal(item["image"][0], item["image"][1]) and torch.equal(item["image"][1], item["image"][2])


def test_mvtec_resize_matches_pillow_bilinear_and_nearest(tmp_path):
    rng = np.random.default_rng(1)
    category = tmp_path / "root" / "cat"
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mask = (rng.random((37, 53)) > 0.6).astype(np.uint8) * 255
    write_png(category / "train" / "good" / "000.png", pixels)
    write_png(category / "test" / "crack" / "000.png", pixels)
    write_png(category / "ground_truth" / "crack" / "000_mask.png", mask)
    item = MVTecDataset(tmp_path / "root", "cat", "test", image_size=(16, 24))[0]
    for channel in range(3):
        plane = Image.fromarray(pixels[..., channel].astype(np.float32) / 255.0, mode="F")
        expected = np.asarray(plane.resize((24, 16), Image.BILINEAR))
        np.testing.assert_allclose(item["image"][channel].numpy(), expected, atol=1e-5)
    expected_mask = np.asarray(Image.fromarray(mask).resize((24, 16), Image.NEAREST)) > 0
    np.testing.assert_array_equal(item["mask"].numpy(), expected_mask.astype(np.float32))


def test_mvtec_image_size_none_keeps_original_size(mvtec_tree):
    item = MVTecDataset(mvtec_tree, "bottle", "test", image_size=None)[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)


def test_mvtec_nonstandard_mask_values_binarised_after_nearest_upsampling(tmp_path):
    category = tmp_path / "root" / "cat"
    write_png(category / "train" / "good" / "000.png", np.zeros((8, 8, 3), np.uint8))
    write_png(category / "test" / "hole" / "000.png", np.zeros((8, 8, 3), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 3  # a non-255 value must still count as anomalous
    write_png(category / "ground_truth" / "hole" / "000_mask.png", mask)
    item = MVTecDataset(tmp_path / "root", "cat", "test", image_size=16)[0]
    expected = torch.zeros(16, 16)
    expected[:, :8] = 1.0
    assert torch.equal(item["mask"], expected)


def test_mvtec_extensions_case_insensitive_and_junk_ignored(mvtec_tree):
    good = mvtec_tree / "bottle" / "train" / "good"
    (good / "003.png").rename(good / "003.PNG")
    (good / ".DS_Store").write_bytes(b"junk")
    (good / "notes.txt").write_text("not an image")
    data = MVTecDataset(mvtec_tree, "bottle", "train")
    assert [s.path.name for s in data.samples] == ["000.png", "001.png", "002.png", "003.PNG"]


def test_mvtec_btad_variant_ok_folders_and_unsuffixed_masks(tmp_path):
    category = tmp_path / "btad" / "01"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 2:6] = 255
    write_png(category / "train" / "ok" / "0000.png", image)
    write_png(category / "test" / "ok" / "0000.png", image)
    write_png(category / "test" / "ko" / "0000.png", image)
    write_png(category / "test" / "ko" / "0001.bmp", image)
    write_png(category / "ground_truth" / "ko" / "0000.png", mask)
    Image.fromarray(mask).save(category / "ground_truth" / "ko" / "0001.bmp")
    assert list_categories(tmp_path / "btad") == ["01"]
    test = MVTecDataset(tmp_path / "btad", "01", "test", image_size=16)
    assert test.labels == [1, 1, 0] and test.defect_types == ["good", "ko"]
    assert [s.mask_path.name for s in test.samples[:2]] == ["0000.png", "0001.bmp"]
    assert test[1]["mask"].sum() == 16
    assert len(MVTecDataset(tmp_path / "btad", "01", "train")) == 1


def test_mvtec_prefers_the_mask_suffix(mvtec_tree):
    gt = mvtec_tree / "bottle" / "ground_truth" / "contamination"
    write_png(gt / "000.png", np.zeros((32, 32), np.uint8))
    samples = MVTecDataset(mvtec_tree, "bottle", "test").samples
    sample = next(s for s in samples if s.defect_type == "contamination")
    assert sample.mask_path == gt / "000_mask.png"


def test_list_categories(mvtec_tree):
    (mvtec_tree / "not_a_category").mkdir()
    assert list_categories(mvtec_tree) == ["bottle", "grid"]


def test_mvtec_root_none_reads_adlib_data(mvtec_tree, monkeypatch):
    monkeypatch.setenv("ADLIB_DATA", str(mvtec_tree))
    assert default_data_root() == mvtec_tree
    assert len(MVTecDataset(None, "grid", "train")) == MVTEC_FIXTURE["grid"].n_train


def test_default_data_root_unset(monkeypatch):
    monkeypatch.delenv("ADLIB_DATA", raising=False)
    with pytest.raises(DataError) as excinfo:
        default_data_root()
    assert_data_error(excinfo, "ADLIB_DATA", "data_root", "python -m adlib data embedded")


# ----------------------------------------------------------------------------- MVTecDataset errors

def test_mvtec_missing_root(tmp_path):
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(tmp_path / "nowhere", "bottle")
    assert_data_error(excinfo, tmp_path / "nowhere", "ADLIB_DATA", "python -m adlib data embedded --out DIR")


def test_mvtec_missing_category_lists_those_found(mvtec_tree):
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(mvtec_tree, "capsule")
    assert_data_error(excinfo, mvtec_tree / "capsule", "bottle", "grid")


def test_mvtec_root_is_a_category_folder(mvtec_tree):
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(mvtec_tree / "bottle", "bottle")
    assert_data_error(excinfo, "looks like a category folder", mvtec_tree)


def test_mvtec_root_one_level_too_high(mvtec_tree):
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(mvtec_tree.parent, "bottle")
    assert_data_error(excinfo, "one level down", mvtec_tree)


def test_mvtec_category_without_train_good(mvtec_tree):
    shutil.rmtree(mvtec_tree / "grid" / "train")
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(mvtec_tree, "grid", "test")
    assert_data_error(excinfo, mvtec_tree / "grid" / "train" / "good")


def test_mvtec_anomalous_image_without_mask(mvtec_tree):
    missing = mvtec_tree / "bottle" / "ground_truth" / "broken_large" / "001_mask.png"
    missing.unlink()
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(mvtec_tree, "bottle", "test")
    assert_data_error(excinfo, missing, mvtec_tree / "bottle" / "test" / "broken_large" / "001.png")


def test_mvtec_missing_ground_truth_folder(mvtec_tree):
    shutil.rmtree(mvtec_tree / "grid" / "ground_truth")
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(mvtec_tree, "grid", "test")
    assert_data_error(excinfo, mvtec_tree / "grid" / "ground_truth" / "bent", "does not exist")


def test_mvtec_mask_size_mismatch_names_both_sizes(mvtec_tree):
    mask_path = mvtec_tree / "bottle" / "ground_truth" / "contamination" / "000_mask.png"
    write_png(mask_path, np.zeros((16, 20), np.uint8))
    data = MVTecDataset(mvtec_tree, "bottle", "test")  # existence is checked eagerly, size lazily
    index = next(i for i, s in enumerate(data.samples) if s.mask_path == mask_path)
    with pytest.raises(DataError) as excinfo:
        data[index]
    image_path = mvtec_tree / "bottle" / "test" / "contamination" / "000.png"
    assert_data_error(excinfo, mask_path, image_path, "20x16", "32x32")
    with pytest.raises(DataError) as excinfo:
        data.validate()
    assert_data_error(excinfo, mask_path, "20x16", "32x32")


def test_mvtec_validate_passes_on_a_good_tree(mvtec_tree):
    data = MVTecDataset(mvtec_tree, "bottle", "test")
    assert data.validate() is data


def test_mvtec_empty_train_split(mvtec_tree):
    for path in (mvtec_tree / "grid" / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(mvtec_tree, "grid", "train")
    assert_data_error(excinfo, mvtec_tree / "grid" / "train" / "good", "no images")


def test_mvtec_empty_test_split(mvtec_tree):
    shutil.rmtree(mvtec_tree / "grid" / "test")
    with pytest.raises(DataError) as excinfo:
        MVTecDataset(mvtec_tree, "grid", "test")
    assert_data_error(excinfo, mvtec_tree / "grid", "empty")


def test_mvtec_unknown_split_and_bad_image_size(mvtec_tree):
    with pytest.raises(DataError, match="'val'"):
        MVTecDataset(mvtec_tree, "bottle", "val")
    with pytest.raises(DataError, match="image_size"):
        MVTecDataset(mvtec_tree, "bottle", "train", image_size=0)


def test_mvtec_corrupt_image_raises_on_read(mvtec_tree):
    broken = mvtec_tree / "bottle" / "train" / "good" / "001.png"
    broken.write_bytes(b"garbage")
    data = MVTecDataset(mvtec_tree, "bottle", "train")
    with pytest.raises(DataError) as excinfo:
        data[1]
    assert_data_error(excinfo, broken)


# ----------------------------------------------------------------------------- VisA

def test_visa_split_counts_and_items(visa_tree):
    train = VisADataset(visa_tree, "candle", "train", image_size=16)
    test = VisADataset(visa_tree, "candle", "test", image_size=32)
    assert len(train) == 4 and train.labels == [0] * 4
    assert len(test) == 4 and sorted(test.labels) == [0, 0, 1, 1]
    assert test.defect_types == ["bad", "good"]
    for item, sample in zip(test, test.samples):
        assert item["image"].shape == (3, 32, 32) and 0 <= item["image"].min() and item["image"].max() <= 1
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        if sample.label == 1:
            # VisA masks hold small values (1, 38): binarised as > 0, the whole 8x8 defect counts
            assert item["mask"].sum() == 64 and item["defect_type"] == "bad"
        else:
            assert item["mask"].sum() == 0 and item["defect_type"] == "good"
    assert [s.path for s in test.samples] == sorted(s.path for s in test.samples)


def test_read_visa_split_fixture(visa_tree):
    table = read_visa_split(visa_tree / "split_csv" / "1cls.csv")
    assert list(table.columns) == ["object", "split", "label", "image", "mask"]
    assert table.index[0] == 2  # line numbers, header is line 1
    assert (table["mask"] == "").sum() == 2 * 6
    assert set(table["object"]) == {"candle", "pcb1"}


@pytest.mark.skipif(not REAL_VISA_CSV.is_file(), reason="/work/shared (the real VisA split) is not here")
def test_read_real_visa_1cls_split():
    table = read_visa_split(REAL_VISA_CSV)
    objects = ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
               "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"]
    assert sorted(table["object"].unique()) == objects
    assert len(table) == 10821 and (table["label"] == "anomaly").sum() == 1200
    for name in objects:
        rows = table[table["object"] == name]
        train, test = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
        assert set(train["label"]) == {"normal"} and 400 <= len(train) <= 1000
        assert set(test["label"]) == {"normal", "anomaly"}
        assert (test["label"] == "anomaly").sum() == 100 and 40 <= (test["label"] == "normal").sum() <= 110
    assert ((table["mask"] == "") == (table["label"] == "normal")).all()
    assert table["image"].str.match(r"^[a-z0-9_]+/Data/Images/(Normal|Anomaly)/\d+\.JPG$").all()


def test_visa_custom_split_csv(visa_tree, tmp_path):
    table = read_visa_split(visa_tree / "split_csv" / "1cls.csv")
    custom = tmp_path / "mine.csv"
    table[(table["object"] == "pcb1") & (table["split"] == "train")].head(2).to_csv(custom, index=False)
    train = VisADataset(visa_tree, "pcb1", "train", split_csv=custom)
    assert len(train) == 2 and train.split_csv == custom


def test_visa_missing_csv(visa_tree):
    csv_path = visa_tree / "split_csv" / "1cls.csv"
    csv_path.unlink()
    with pytest.raises(DataError) as excinfo:
        VisADataset(visa_tree, "candle", "train")
    assert_data_error(excinfo, csv_path, "split_csv", "VisA")


def test_visa_row_with_missing_image_names_row_and_path(visa_tree):
    table = read_visa_split(visa_tree / "split_csv" / "1cls.csv")
    line = table.index[(table["object"] == "candle") & (table["split"] == "train")][1]
    missing = visa_tree / table.loc[line, "image"]
    missing.unlink()
    with pytest.raises(DataError) as excinfo:
        VisADataset(visa_tree, "candle", "train")
    assert_data_error(excinfo, missing, f"line {line}")


def test_visa_row_with_missing_mask(visa_tree):
    mask = visa_tree / "pcb1" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    with pytest.raises(DataError) as excinfo:
        VisADataset(visa_tree, "pcb1", "test")
    assert_data_error(excinfo, mask, "line")
    assert len(VisADataset(visa_tree, "pcb1", "train")) == 4  # only the rows of the split are checked


def test_visa_unknown_object_lists_those_present(visa_tree):
    with pytest.raises(DataError) as excinfo:
        VisADataset(visa_tree, "macaroni1", "test")
    assert_data_error(excinfo, "macaroni1", "candle", "pcb1", visa_tree / "split_csv" / "1cls.csv")


def test_visa_empty_split(visa_tree):
    csv_path = visa_tree / "split_csv" / "1cls.csv"
    table = read_visa_split(csv_path)
    table[~((table["object"] == "pcb1") & (table["split"] == "test"))].to_csv(csv_path, index=False)
    with pytest.raises(DataError) as excinfo:
        VisADataset(visa_tree, "pcb1", "test")
    assert_data_error(excinfo, csv_path, "'test'", "pcb1")


def test_visa_malformed_csv(visa_tree):
    csv_path = visa_tree / "split_csv" / "1cls.csv"
    csv_path.write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DataError) as excinfo:
        read_visa_split(csv_path)
    assert_data_error(excinfo, csv_path, "label", "mask")
    csv_path.write_text("object,split,label,image,mask\ncandle,train,weird,x.JPG,\n")
    with pytest.raises(DataError) as excinfo:
        read_visa_split(csv_path)
    assert_data_error(excinfo, csv_path, "'weird'", "line 2")


def test_visa_missing_root(tmp_path):
    with pytest.raises(DataError) as excinfo:
        VisADataset(tmp_path / "no_visa", "candle", "train")
    assert_data_error(excinfo, tmp_path / "no_visa", "VisA_20220922.tar")


# ----------------------------------------------------------------------------- labelled folders

def test_labelled_items(labelled_tree):
    data = LabelledFolderDataset(labelled_tree, image_size=16)
    assert data.labels == [0] * 10 + [1] * 5
    assert data.defect_types == ["anomalous", "good"] and data.has_masks is False
    item = data[12]
    assert item["image"].shape == (3, 16, 16) and item["label"] == 1 and item["defect_type"] == "anomalous"
    assert item["mask"].shape == (16, 16) and item["mask"].sum() == 0


def test_labelled_missing_subfolder(labelled_tree):
    shutil.rmtree(labelled_tree / "anomalous")
    with pytest.raises(DataError) as excinfo:
        LabelledFolderDataset(labelled_tree)
    assert_data_error(excinfo, labelled_tree, "anomalous", "labelled-folders-layout")


def test_labelled_root_one_level_too_high(labelled_tree):
    with pytest.raises(DataError) as excinfo:
        LabelledFolderDataset(labelled_tree.parent)
    assert_data_error(excinfo, labelled_tree, "one level down")


def test_labelled_empty_class(labelled_tree):
    for path in (labelled_tree / "normal").iterdir():
        path.unlink()
    with pytest.raises(DataError) as excinfo:
        LabelledFolderDataset(labelled_tree)
    assert_data_error(excinfo, labelled_tree / "normal", "no images")


def test_labelled_missing_root(tmp_path):
    with pytest.raises(DataError) as excinfo:
        LabelledFolderDataset(tmp_path / "none")
    assert_data_error(excinfo, tmp_path / "none")


# ----------------------------------------------------------------------------- stratified k-fold

def test_stratified_kfold_partitions_and_stratifies():
    labels = np.array([0] * 40 + [1] * 13)
    folds = stratified_kfold(labels, k=5, seed=3)
    assert len(folds) == 5
    test_indices = np.concatenate([test for _, test in folds])
    assert sorted(test_indices.tolist()) == list(range(len(labels)))  # each index in exactly one test fold
    for train, test in folds:
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert not set(train) & set(test) and len(train) + len(test) == len(labels)
        assert abs(labels[test].sum() - 13 / 5) < 1 and abs((labels[test] == 0).sum() - 40 / 5) < 1


def test_stratified_kfold_reproducible_and_matches_sklearn():
    from sklearn.model_selection import StratifiedKFold

    labels = [0] * 20 + [1] * 10
    first, again = stratified_kfold(labels, k=5, seed=7), stratified_kfold(labels, k=5, seed=7)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    other = stratified_kfold(labels, k=5, seed=8)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    reference = StratifiedKFold(5, shuffle=True, random_state=7).split(np.zeros(30), labels)
    assert all(np.array_equal(ours[1], theirs[1]) for ours, theirs in zip(first, reference))


def test_stratified_kfold_errors():
    with pytest.raises(DataError, match="at least 5"):
        stratified_kfold([0] * 10 + [1] * 3, k=5)
    with pytest.raises(DataError, match="two classes"):
        stratified_kfold([0] * 10, k=2)
    with pytest.raises(DataError, match="k=1"):
        stratified_kfold([0, 1] * 5, k=1)


def test_labelled_tree_with_kfold(labelled_tree):
    data = LabelledFolderDataset(labelled_tree)
    folds = stratified_kfold(data.labels, k=5, seed=0)
    assert all(np.asarray(data.labels)[test].sum() == 1 for _, test in folds)


# ----------------------------------------------------------------------------- downloads

def make_tar(tmp_path: Path, name: str = "archive.tar.xz") -> Path:
    """A small archive shaped like MVTec AD's (category folders at the top)."""
    source = build_mvtec_tree(tmp_path / "source", categories={"bottle": MVTecCategory(n_train=2)})
    archive = tmp_path / name
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(source / "bottle", arcname="bottle")
    return archive


def trust_archive(monkeypatch, archive: Path) -> None:
    """Make DATASETS["mvtec_ad"] expect the checksum of this small test archive."""
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(DATASETS, "mvtec_ad", dataclasses.replace(DATASETS["mvtec_ad"], sha256=sha256))


def test_datasets_table():
    assert {"mvtec_ad", "visa", "mpdd", "btad"} <= set(DATASETS)
    for source in DATASETS.values():
        assert source.url.startswith("https://")
        assert source.sha256 is None or (len(source.sha256) == 64 and int(source.sha256, 16) >= 0)
    assert DATASETS["mvtec_ad"].archive == "mvtec_anomaly_detection.tar.xz"
    assert DATASETS["visa"].archive == "VisA_20220922.tar"
    assert DATASETS["mpdd"].sha256 is None and DATASETS["mpdd"].direct is False


def test_verify_sha256(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"anomaly" * 1000)
    expected = hashlib.sha256(b"anomaly" * 1000).hexdigest()
    assert verify_sha256(path, expected) == expected
    assert verify_sha256(path, expected.upper()) == expected
    with pytest.raises(DataError) as excinfo:
        verify_sha256(path, "0" * 64)
    assert_data_error(excinfo, path, expected, "0" * 64)
    with pytest.warns(UserWarning, match="not verified"):
        assert verify_sha256(path, None) == expected


def test_extract_tar_and_zip(tmp_path):
    archive = make_tar(tmp_path)
    extract_archive(archive, tmp_path / "from_tar")
    assert len(MVTecDataset(tmp_path / "from_tar", "bottle", "train")) == 2
    zipped = tmp_path / "archive.zip"
    with zipfile.ZipFile(zipped, "w") as out:
        for file in sorted((tmp_path / "source").rglob("*.png")):
            out.write(file, file.relative_to(tmp_path / "source").as_posix())
    extract_archive(zipped, tmp_path / "from_zip")
    assert len(MVTecDataset(tmp_path / "from_zip", "bottle", "test")) == 4


def test_extract_refuses_paths_outside_the_target(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError) as excinfo:
        extract_archive(archive, tmp_path / "target")
    assert_data_error(excinfo, archive, "../escaped.txt")
    assert not (tmp_path / "escaped.txt").exists()


def test_extract_corrupt_archive(tmp_path):
    archive = tmp_path / "broken.tar.xz"
    archive.write_bytes(b"<html>moved</html>")
    with pytest.raises(DataError) as excinfo:
        extract_archive(archive, tmp_path / "target")
    assert_data_error(excinfo, archive)


def test_download_network_failure_gives_manual_steps(tmp_path):
    root = tmp_path / "mvtec_download"
    with pytest.raises(DataError) as excinfo:
        download_dataset("mvtec_ad", root)
    source = DATASETS["mvtec_ad"]
    assert_data_error(excinfo, source.url, root / source.archive, "tar -xf", f"-p data_root {root}",
                      "train/good", source.sha256, "network disabled in tests", "CC BY-NC-SA 4.0")
    assert not list(root.glob("*.part"))


def test_download_manual_only_dataset_never_opens_a_url(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_downloader", serving(error=AssertionError("MPDD must not be fetched")))
    with pytest.raises(DataError) as excinfo:
        download_dataset("MPDD", tmp_path / "mpdd")
    assert_data_error(excinfo, DATASETS["mpdd"].url, "bracket_black", f"-p data_root {tmp_path / 'mpdd'}")


def test_download_unknown_name(tmp_path):
    with pytest.raises(DataError, match="mvtec_ad"):
        download_dataset("imagenet", tmp_path)


def test_download_verifies_extracts_and_does_not_repeat(tmp_path, monkeypatch):
    archive = make_tar(tmp_path)
    trust_archive(monkeypatch, archive)
    calls = []
    monkeypatch.setattr(download, "_downloader", serving(archive.read_bytes(), calls))
    root = download_dataset("mvtec", tmp_path / "data")
    assert root == tmp_path / "data" and calls == [DATASETS["mvtec_ad"].url]
    assert list_categories(root) == ["bottle"] and len(MVTecDataset(root, "bottle", "test")) == 4
    assert download_dataset("mvtec_ad", tmp_path / "data") == root and len(calls) == 1


def test_download_uses_an_archive_already_in_place(tmp_path, monkeypatch):
    archive = make_tar(tmp_path)
    trust_archive(monkeypatch, archive)
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archive, root / "mvtec_anomaly_detection.tar.xz")
    assert download_dataset("mvtec_ad", root) == root  # the autouse fixture makes any URL fail
    assert list_categories(root) == ["bottle"]


def test_download_checksum_mismatch_gives_manual_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_downloader", serving(b"<html>link moved</html>"))
    root = tmp_path / "visa"
    with pytest.raises(DataError) as excinfo:
        download_dataset("visa", root)
    assert_data_error(excinfo, "Checksum mismatch", root / "VisA_20220922.tar", DATASETS["visa"].sha256,
                      "tar -xf", f"-p data_root {root}")
    assert not (root / "VisA_20220922.tar").exists()   # pooch removed the wrong file


# ----------------------------------------------------------------------------- docs

def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_error_messages_point_at_existing_readme_sections():
    readme = (REPO / "data" / "README.md").read_text()
    anchors = {github_anchor(line.lstrip("#")) for line in readme.splitlines() if line.startswith("#")}
    assert {"mvtec-ad-layout", "visa-layout", "labelled-folders-layout", "downloads"} <= anchors
    used = set()
    for module in ("errors.py", "folders.py", "download.py"):
        source = (REPO / "adlib" / "data" / module).read_text()
        used |= set(re.findall(r"see\('([\w-]+)'\)", source))
        used |= set(re.findall(r"README\.md#([\w-]+)", source))
    used |= {source.section for source in DATASETS.values()}
    assert used and used <= anchors, used - anchors


def test_a_requested_category_folder_without_anomalous_says_what_it_lacks(labelled_tree):
    """The folder is there (normal/ only): "not found" would send the user looking for it."""
    from adlib.data.sources import choose_categories

    shutil.rmtree(labelled_tree / "anomalous")
    with pytest.raises(DataError) as excinfo:
        choose_categories("labelled", labelled_tree.parent, ["plants"])
    message = str(excinfo.value)
    assert "is there but has no anomalous/" in message and "normal/" in message
    assert "not found" not in message


def test_a_walkthrough_of_one_category_says_which_requested_ones_it_leaves_out(capsys):
    from adlib.chapters.profiles import Setup, resolve

    run = Setup(resolve("lea_net", "cpu"), None, ["leaf", "cloud"], "cpu", 0.0)
    assert run.only_category("the walk-through trains one category") == "leaf"
    out = capsys.readouterr().out
    assert "leaf only" in out and "cloud" in out and "not run" in out
    Setup(resolve("lea_net", "cpu"), None, ["leaf"], "cpu", 0.0).only_category("one")
    assert capsys.readouterr().out == ""
