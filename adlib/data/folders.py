"""Folder datasets in the official layouts: MVTec AD / MPDD / BTAD, VisA, labelled folders.

Every dataset here returns the same item (the contract the models and metrics code against):

    {"image": FloatTensor 3xHxW in [0, 1] (not normalised), "label": 0 good / 1 anomalous,
     "mask": FloatTensor HxW in {0., 1.} (zeros for good), "defect_type": str, "path": str}

Images are resized bilinearly with antialiasing, masks with nearest neighbour (centre-aligned,
the same as Pillow's NEAREST) and then binarised. The layouts are described in
data/README.md; every problem raises :class:`DataError` naming the path and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import Dataset

from adlib.data.errors import DataError, see

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")
NORMAL_FOLDERS = ("good", "ok")  # MVTec AD / MPDD say good, BTAD says ok
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = ("normal", "anomaly")

ImageSize = Union[int, Sequence[int], None]
EMBEDDED_HINT = ("or write the embedded default with `python -m adlib data embedded --out DIR` "
                 "and use DIR/mvtec (MVTec layout) or DIR/labelled/<category> (labelled folders)")


class Sample(NamedTuple):
    """One entry of a dataset's ``samples``: where the image is and what it is."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None


# ----------------------------------------------------------------------------- reading files

def default_data_root() -> Path:
    """The data root from the environment variable ``ADLIB_DATA``."""
    value = os.environ.get("ADLIB_DATA", "").strip()
    if not value:
        msg = ("No data root given: the environment variable ADLIB_DATA is not set (expected the "
               "folder that holds the data set in its official layout, e.g. MVTec AD's category "
               "folders). Fix: `export ADLIB_DATA=/path/to/mvtec_anomaly_detection`, or pass "
               f"data_root= / root= explicitly, {EMBEDDED_HINT}; {see('data-root-and-adlib_data')}.")
        raise DataError(msg)
    return Path(value).expanduser()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as float32 ``H x W x 3`` in [0, 1].

    Grey images are repeated to three channels; alpha is dropped and the stored colour kept;
    palette images are expanded; 16-bit images are divided by 65535 (never clipped at 255).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Image file {path} does not exist; expected a readable image there ({see('mvtec-ad-layout')})."
        raise DataError(msg)
    try:
        with Image.open(path) as img:
            img.load()
            return _rgb_float(img, path)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        msg = (f"Cannot read image {path}: {err}. Expected a PNG/JPEG/BMP/TIFF image; the file is "
               "corrupt or truncated, so replace it with the original from the data set's archive "
               f"({see('downloads')}).")
        raise DataError(msg) from err


def _rgb_float(img: Image.Image, path: Path) -> np.ndarray:
    """Pillow image of any common mode -> float32 H x W x 3 in [0, 1]."""
    mode = img.mode
    if mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "I":
        # 32-bit integer mode: Pillow's older name for 16-bit greyscale PNG/TIFF data
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            msg = (f"Image {path} is a 32-bit integer image with values in "
                   f"[{values.min()}, {values.max()}]; expected 8- or 16-bit data (0..65535). "
                   "Convert it to an 8- or 16-bit PNG.")
            raise DataError(msg)
        grey = values.astype(np.float32) / 65535.0
    elif mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        if grey.size and (grey.min() < 0.0 or grey.max() > 1.0):
            msg = (f"Image {path} is a floating-point image with values in "
                   f"[{grey.min():.3g}, {grey.max():.3g}]; expected values in [0, 1]. "
                   "Convert it to an 8- or 16-bit PNG.")
            raise DataError(msg)
    elif mode in ("1", "L", "LA", "La"):
        grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:
        # RGBA/RGBa/PA/P(+transparency) via RGBA so the stored colour survives; CMYK etc. via RGB
        has_alpha = mode in ("RGBA", "RGBa", "PA", "P") or "transparency" in img.info
        rgb = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))[..., :3]
        return np.ascontiguousarray(rgb, dtype=np.float32) / 255.0
    return np.repeat(grey[..., None], 3, axis=2)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth mask as bool ``H x W``: anomalous where the value is > 0.

    MVTec masks are 0/255, VisA's 0/non-zero; colour and palette masks count a pixel as
    anomalous when any colour channel is non-zero; 16-bit masks work the same way.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Mask file {path} does not exist; expected a mask image there ({see('mvtec-ad-layout')})."
        raise DataError(msg)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "PA"):
                return np.asarray(img.convert("RGBA"))[..., :3].any(axis=2)
            if img.mode in ("RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"):
                return np.asarray(img.convert("RGB")).any(axis=2)
            if img.mode in ("LA", "La"):
                return np.asarray(img.convert("L")) > 0
            return np.asarray(img) > 0
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        msg = (f"Cannot read mask {path}: {err}. Expected a PNG/BMP mask (0 = normal, >0 = "
               "anomalous); replace the file with the original from the data set's archive "
               f"({see('downloads')}).")
        raise DataError(msg) from err


def _image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as err:
        msg = (f"Cannot read the header of {path}: {err}; replace the file with the original "
               f"({see('downloads')}).")
        raise DataError(msg) from err


# ----------------------------------------------------------------------------- items

def _target_size(image_size: ImageSize) -> tuple[int, int] | None:
    """``image_size`` as (height, width); None keeps every image at its own size."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and image_size > 0:
        return (int(image_size), int(image_size))
    if (isinstance(image_size, (tuple, list)) and len(image_size) == 2
            and all(isinstance(s, (int, np.integer)) and s > 0 for s in image_size)):
        return (int(image_size[0]), int(image_size[1]))
    msg = f"image_size={image_size!r}; expected a positive int (square), a (height, width) pair, or None."
    raise DataError(msg)


def resize_image(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear, antialiased resize of a ``3 x H x W`` image to ``size`` = (height, width)."""
    if size is None or tuple(image.shape[-2:]) == size:
        return image
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return resized.clamp_(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Nearest-neighbour resize of an ``H x W`` {0,1} mask (pixel-centre aligned, like Pillow)."""
    if size is None or tuple(mask.shape) == size:
        return mask
    return F.interpolate(mask[None, None], size=size, mode="nearest-exact")[0, 0]


def load_item(sample: Sample, image_size: ImageSize = 256) -> dict:
    """Read one sample into the item dict of the dataset contract (see the module docstring)."""
    size = _target_size(image_size)
    image = read_image(sample.path)
    height, width = image.shape[:2]
    if sample.mask_path is None:
        mask = torch.zeros(size if size is not None else (height, width))
    else:
        mask_array = read_mask(sample.mask_path)
        if mask_array.shape != (height, width):
            msg = (f"Mask {sample.mask_path} is {mask_array.shape[1]}x{mask_array.shape[0]} (width x "
                   f"height) but its image {sample.path} is {width}x{height}; expected the same size. "
                   "The mask belongs to another image or was resized: restore both from the original "
                   f"archive ({see('mvtec-ad-layout')}).")
            raise DataError(msg)
        mask = resize_mask(torch.from_numpy(mask_array.astype(np.float32)), size)
    tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    return {"image": resize_image(tensor, size), "label": int(sample.label), "mask": mask,
            "defect_type": sample.defect_type, "path": str(sample.path)}


class FolderDataset(Dataset):
    """Items (see :func:`load_item`) for a list of :class:`Sample`; the datasets below fill it."""

    has_masks = True

    def __init__(self, samples: list[Sample], image_size: ImageSize = 256) -> None:
        self.samples = samples
        self.image_size = image_size
        _target_size(image_size)  # fail at construction on a bad size, not at the first item

    @property
    def labels(self) -> list[int]:
        """0 good / 1 anomalous for every sample, in order."""
        return [sample.label for sample in self.samples]

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect types present (``"good"`` for normals)."""
        return sorted({sample.defect_type for sample in self.samples})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return load_item(self.samples[index], self.image_size)

    def validate(self) -> "FolderDataset":
        """Check every image/mask pair has the same size, reading file headers only."""
        for sample in self.samples:
            if sample.mask_path is None:
                continue
            image_wh, mask_wh = _image_size_of(sample.path), _image_size_of(sample.mask_path)
            if image_wh != mask_wh:
                msg = (f"Mask {sample.mask_path} is {mask_wh[0]}x{mask_wh[1]} (width x height) but "
                       f"its image {sample.path} is {image_wh[0]}x{image_wh[1]}; expected the same "
                       f"size. Restore both from the original archive ({see('mvtec-ad-layout')}).")
                raise DataError(msg)
        return self

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return (f"{type(self).__name__}({len(self)} images: {len(self) - n_bad} good, {n_bad} anomalous; "
                f"image_size={self.image_size})")


# ----------------------------------------------------------------------------- layout helpers

def _image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (any case of the extension), sorted by name."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.name)


def _subfolders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _existing_root(root: str | os.PathLike | None, what: str, section: str, fix: str) -> Path:
    """``root`` (or ``$ADLIB_DATA`` when None) as a Path that must be an existing folder."""
    path = default_data_root() if root is None else Path(root).expanduser()
    if not path.is_dir():
        msg = (f"{what} data root {path} does not exist or is not a folder. Expected the folder "
               "that holds the data set in its official layout. Fix: set ADLIB_DATA or pass the "
               f"right data_root / root; to get the data, {fix}; {see(section)}.")
        raise DataError(msg)
    return path


def _check_split(split: str) -> str:
    if split not in SPLITS:
        msg = f"Unknown split {split!r}; expected one of {SPLITS}."
        raise DataError(msg)
    return split


def list_categories(root: str | os.PathLike) -> list[str]:
    """Categories under an MVTec-layout root: sorted sub-folders with ``train/good`` (BTAD: ``train/ok``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        msg = (f"MVTec-layout root {root} does not exist; expected a folder with "
               f"<category>/train/good inside ({see('mvtec-ad-layout')}).")
        raise DataError(msg)
    return [name for name in _subfolders(root) if _train_folder(root / name) is not None]


def _train_folder(category_dir: Path) -> Path | None:
    """``train/good`` (or BTAD's ``train/ok``) of a category, if it exists."""
    for name in NORMAL_FOLDERS:
        if (category_dir / "train" / name).is_dir():
            return category_dir / "train" / name
    return None


# ----------------------------------------------------------------------------- MVTec AD / MPDD / BTAD

def _mask_index(folder: Path) -> dict[str, Path]:
    """Files in a ground_truth/<type> folder keyed by lower-case name (one listing per type)."""
    if not folder.is_dir():
        return {}
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()}


def _find_mask(image: Path, masks: dict[str, Path]) -> Path | None:
    """MVTec's ``<stem>_mask.png`` first, then BTAD-style ``<stem>.png`` / ``<stem>.bmp``."""
    stem = image.stem.lower()
    candidates = [f"{stem}_mask.png", f"{stem}.png", f"{stem}.bmp", f"{stem}_mask.bmp",
                  f"{stem}_mask.tif", f"{stem}_mask.tiff", f"{stem}.tif", f"{stem}.tiff"]
    for name in candidates:
        if name in masks:
            return masks[name]
    return None


def _missing_category(root: Path, category: str) -> DataError:
    found = list_categories(root)
    if _train_folder(root) is not None:
        hint = (f"{root} itself looks like a category folder (it has train/good): pass its parent "
                f"{root.parent} as root and category={root.name!r}")
    elif not found and any((root / sub / category).is_dir() for sub in _subfolders(root)):
        inner = next(root / sub for sub in _subfolders(root) if (root / sub / category).is_dir())
        hint = f"the categories are one level down: pass root={inner}"
    else:
        hint = f"categories found under {root} (folders with train/good): {found or 'none'}"
    msg = (f"Category folder {root / category} does not exist; expected "
           f"{root}/{category}/train/good, test/<defect_type> and ground_truth/<defect_type>. "
           f"Fix: {hint}; {see('mvtec-ad-layout')}.")
    return DataError(msg)


class MVTecDataset(FolderDataset):
    """One category of an MVTec-AD-layout data set (MVTec AD, MPDD, BTAD, the embedded default).

    Layout: ``root/<category>/train/good/*``, ``root/<category>/test/<defect_type>/*`` and
    ``root/<category>/ground_truth/<defect_type>/<stem>_mask.png``. BTAD's variants are accepted:
    normals in ``ok`` instead of ``good`` (defect type still ``"good"``), masks ``<stem>.png`` /
    ``<stem>.bmp``. Mask files are checked for existence here; mask sizes when an item is read
    (or all at once with :meth:`validate`). ``root=None`` reads ``$ADLIB_DATA``.
    """

    def __init__(self, root: str | os.PathLike | None, category: str, split: str = "train",
                 image_size: ImageSize = 256) -> None:
        self.root = _existing_root(root, "MVTec-layout", "mvtec-ad-layout",
                                   "download the data set (adlib.data.download_dataset or "
                                   f"data/README.md#downloads), {EMBEDDED_HINT}")
        self.category = category
        self.split = _check_split(split)
        category_dir = self.root / category
        if not category_dir.is_dir():
            raise _missing_category(self.root, category)
        train_good = _train_folder(category_dir)
        if train_good is None:
            msg = (f"Category folder {category_dir} has no train/good folder (found: "
                   f"{_subfolders(category_dir) or 'nothing'}, train/: "
                   f"{_subfolders(category_dir / 'train') or 'missing'}); expected "
                   f"{category_dir / 'train' / 'good'} with the defect-free training images. "
                   f"Re-extract the category ({see('mvtec-ad-layout')}).")
            raise DataError(msg)
        if self.split == "train":
            samples = [Sample(p, 0, "good", None) for p in _image_files(train_good)]
            if not samples:
                msg = (f"Training folder {train_good} holds no images (.png/.jpg/.jpeg/.bmp/.tif); "
                       f"expected the defect-free training images there ({see('mvtec-ad-layout')}).")
                raise DataError(msg)
        else:
            samples = self._test_samples(category_dir)
        super().__init__(samples, image_size)

    @staticmethod
    def _test_samples(category_dir: Path) -> list[Sample]:
        test_dir = category_dir / "test"
        samples: list[Sample] = []
        for defect_type in _subfolders(test_dir):
            images = _image_files(test_dir / defect_type)
            if defect_type in NORMAL_FOLDERS:
                samples += [Sample(p, 0, "good", None) for p in images]
                continue
            mask_dir = category_dir / "ground_truth" / defect_type
            masks = _mask_index(mask_dir)
            for image in images:
                mask = _find_mask(image, masks)
                if mask is None:
                    found = (f"{mask_dir} holds {len(masks)} file(s), none named for this image"
                             if mask_dir.is_dir() else f"{mask_dir} does not exist")
                    msg = (f"Anomalous test image {image} (defect type {defect_type!r}) has no mask: "
                           f"expected {mask_dir / (image.stem + '_mask.png')} (BTAD-style "
                           f"{image.stem}.png or {image.stem}.bmp also accepted), but {found}. "
                           "Restore the ground_truth folder from the original archive "
                           f"({see('mvtec-ad-layout')}).")
                    raise DataError(msg)
                samples.append(Sample(image, 1, defect_type, mask))
        if not samples:
            msg = (f"Test split of {category_dir} is empty: expected images in {test_dir}/good and "
                   f"{test_dir}/<defect_type>, found folders {_subfolders(test_dir) or 'none'} "
                   f"({see('mvtec-ad-layout')}).")
            raise DataError(msg)
        return samples

    def __repr__(self) -> str:
        return (f"MVTecDataset(root={str(self.root)!r}, category={self.category!r}, split={self.split!r}, "
                f"{len(self)} images, {sum(self.labels)} anomalous, image_size={self.image_size})")


# ----------------------------------------------------------------------------- VisA

def read_visa_split(csv_path: str | os.PathLike):
    """The official VisA split file (``split_csv/1cls.csv``) as a pandas DataFrame.

    Columns ``object, split, label, image, mask`` as strings (mask ``""`` for normals); the
    index is the line number in the file (header = line 1) so errors can name the row.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        msg = (f"VisA split file {csv_path} does not exist; expected the official one-class split "
               "(columns object, split, label, image, mask). It ships in the VisA archive's "
               "split_csv/ folder (VisA_20220922.tar, also in github.com/amazon-science/spot-diff "
               "under split_csv/1cls.csv): put it at <visa root>/split_csv/1cls.csv or pass "
               f"split_csv=...; {see('visa-layout')}.")
        raise DataError(msg)
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        msg = (f"Cannot parse VisA split file {csv_path}: {err}; expected a CSV with columns "
               f"{VISA_COLUMNS} ({see('visa-layout')}).")
        raise DataError(msg) from err
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in VISA_COLUMNS if c not in table.columns]
    if missing:
        msg = (f"VisA split file {csv_path} lacks columns {missing}; found {list(table.columns)}, "
               f"expected {list(VISA_COLUMNS)} ({see('visa-layout')}).")
        raise DataError(msg)
    table = table[list(VISA_COLUMNS)].apply(lambda column: column.str.strip())
    table.index = table.index + 2
    for column, allowed in (("split", SPLITS), ("label", VISA_LABELS)):
        bad = table[~table[column].isin(allowed)]
        if len(bad):
            msg = (f"VisA split file {csv_path} has {len(bad)} rows with {column} not in {allowed}, "
                   f"e.g. line {bad.index[0]}: {bad[column].iloc[0]!r} ({see('visa-layout')}).")
            raise DataError(msg)
    return table


class VisADataset(FolderDataset):
    """One VisA object, split by the official csv (``root/split_csv/1cls.csv`` by default).

    Image and mask paths in the csv are relative to ``root``; anomalies get defect type
    ``"bad"`` (the one-class split does not name defect types), normals ``"good"``.
    """

    def __init__(self, root: str | os.PathLike | None, category: str, split: str = "train",
                 image_size: ImageSize = 256, split_csv: str | os.PathLike | None = None) -> None:
        self.root = _existing_root(root, "VisA", "visa-layout",
                                   "download and extract VisA_20220922.tar (see the downloads section)")
        self.category = category
        self.split = _check_split(split)
        default_csv = self.root / "split_csv" / "1cls.csv"
        self.split_csv = Path(split_csv).expanduser() if split_csv is not None else default_csv
        table = read_visa_split(self.split_csv)
        objects = sorted(table["object"].unique())
        if category not in objects:
            msg = (f"Object {category!r} is not in VisA split file {self.split_csv}; objects present: "
                   f"{objects} ({see('visa-layout')}).")
            raise DataError(msg)
        rows = table[(table["object"] == category) & (table["split"] == self.split)]
        if rows.empty:
            msg = (f"VisA split file {self.split_csv} has no {self.split!r} rows for object {category!r}; "
                   f"expected both train and test rows ({see('visa-layout')}).")
            raise DataError(msg)
        samples = [self._sample(line, row) for line, row in rows.iterrows()]
        super().__init__(sorted(samples, key=lambda s: str(s.path)), image_size)

    def _sample(self, line: int, row) -> Sample:
        where = f"{self.split_csv} line {line} ({','.join(row[c] for c in VISA_COLUMNS)})"
        image = self.root / row["image"]
        if not image.is_file():
            msg = (f"{where}: image {image} does not exist; expected the VisA archive extracted "
                   f"into {self.root} so that csv paths resolve against it ({see('visa-layout')}).")
            raise DataError(msg)
        if row["label"] == "normal":
            return Sample(image, 0, "good", None)
        if not row["mask"]:
            msg = (f"{where}: anomalous row without a mask path; expected "
                   f"<object>/Data/Masks/Anomaly/<name>.png ({see('visa-layout')}).")
            raise DataError(msg)
        mask = self.root / row["mask"]
        if not mask.is_file():
            msg = (f"{where}: mask {mask} does not exist; expected the masks of the VisA archive "
                   f"under <object>/Data/Masks/Anomaly ({see('visa-layout')}).")
            raise DataError(msg)
        return Sample(image, 1, "bad", mask)

    def __repr__(self) -> str:
        return (f"VisADataset(root={str(self.root)!r}, category={self.category!r}, split={self.split!r}, "
                f"{len(self)} images, {sum(self.labels)} anomalous, image_size={self.image_size})")


# ----------------------------------------------------------------------------- labelled folders

class LabelledFolderDataset(FolderDataset):
    """A binary set ``root/{normal,anomalous}/*`` (LEA-Net style): label 0/1, no masks.

    Masks are all zeros (``has_masks`` is False, so pixel metrics do not apply); anomalous
    images get defect type ``"anomalous"``. Evaluate with :func:`stratified_kfold`.
    """

    has_masks = False

    def __init__(self, root: str | os.PathLike | None, image_size: ImageSize = 256) -> None:
        self.root = _existing_root(root, "Labelled-folder", "labelled-folders-layout",
                                   f"point root at the folder holding normal/ and anomalous/, {EMBEDDED_HINT}")
        samples: list[Sample] = []
        for name, label, defect_type in (("normal", 0, "good"), ("anomalous", 1, "anomalous")):
            folder = self.root / name
            if not folder.is_dir():
                inner = [sub for sub in _subfolders(self.root) if (self.root / sub / name).is_dir()]
                hint = (f"the data sets are one level down: pass root={self.root / inner[0]}" if inner
                        else f"found sub-folders {_subfolders(self.root) or 'none'}")
                msg = (f"Labelled-folder root {self.root} has no {name}/ folder; expected "
                       f"{self.root}/normal and {self.root}/anomalous. Fix: {hint}; "
                       f"{see('labelled-folders-layout')}.")
                raise DataError(msg)
            images = _image_files(folder)
            if not images:
                msg = (f"Folder {folder} holds no images (.png/.jpg/.jpeg/.bmp/.tif); expected the "
                       f"{name} images there ({see('labelled-folders-layout')}).")
                raise DataError(msg)
            samples += [Sample(p, label, defect_type, None) for p in images]
        super().__init__(samples, image_size)

    def __repr__(self) -> str:
        return (f"LabelledFolderDataset(root={str(self.root)!r}, {len(self)} images, "
                f"{sum(self.labels)} anomalous, image_size={self.image_size})")


def stratified_kfold(labels: Sequence[int], k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold split: ``k`` pairs (train indices, test indices), reproducible from ``seed``.

    Every index lies in exactly one test fold and each fold keeps the class ratio (to within
    one image), as in scikit-learn's ``StratifiedKFold(shuffle=True, random_state=seed)``.
    """
    y = np.asarray(labels).ravel()
    classes, counts = np.unique(y, return_counts=True)
    if int(k) != k or k < 2:
        msg = f"k={k!r}; expected an integer number of folds >= 2."
        raise DataError(msg)
    if len(classes) < 2:
        msg = f"Stratified k-fold needs two classes; the labels hold only {classes.tolist()}."
        raise DataError(msg)
    if counts.min() < k:
        msg = (f"Stratified {k}-fold needs at least {k} images of every class; found "
               f"{dict(zip(classes.tolist(), counts.tolist()))}. Use a smaller k or add images "
               f"({see('labelled-folders-layout')}).")
        raise DataError(msg)
    folds = StratifiedKFold(n_splits=int(k), shuffle=True, random_state=seed)
    return [(train.astype(np.int64), test.astype(np.int64)) for train, test in folds.split(np.zeros(len(y)), y)]
