"""From a notebook's parameters to data sets: which root, which categories, which loader.

A notebook calls :func:`resolve_root` once and :func:`open_split` per category, whatever
the data set: the embedded default (generated on first use), MVTec AD / MPDD / BTAD, or VisA.
"""

from __future__ import annotations

from pathlib import Path

from adlib.data.embedded import ensure_embedded
from adlib.data.errors import DataError, see
from adlib.data.folders import (
    MVTecDataset,
    VisADataset,
    default_data_root,
    list_categories,
    read_visa_split,
)

#: Data sets in the MVTec layout; VisA has its own csv split.
MVTEC_LAYOUT = ("embedded", "mvtec_ad", "mpdd", "btad")


def resolve_root(dataset: str, data_root: str | Path | None = None, seed: int = 0) -> Path:
    """The folder whose sub-folders are the categories (or VisA's root)."""
    if dataset == "embedded":
        if data_root is not None:
            return Path(data_root)

        return ensure_embedded(seed=seed) / "mvtec"
    if data_root is None:
        return default_data_root()
    return Path(data_root)


def labelled_root(dataset: str, root: Path) -> Path:
    """The folder whose sub-folders are labelled data sets (``<category>/normal``,
    ``<category>/anomalous``): the embedded set's ``labelled/`` tree, or ``root`` itself."""
    root = Path(root)
    if dataset == "embedded":
        return root.parent / "labelled" if root.name == "mvtec" else root / "labelled"
    if dataset == "labelled":
        return root
    msg = (f"dataset {dataset!r} has no labelled folders; use dataset 'embedded' or 'labelled' "
           f"(<root>/<category>/normal and <root>/<category>/anomalous, {see('labelled-folders-layout')})")
    raise DataError(msg)


def list_dataset_categories(dataset: str, root: Path) -> list[str]:
    """Every category present under ``root`` for this data set."""
    if dataset == "labelled":
        root = Path(root)
        if not root.is_dir():
            msg = (f"labelled-folder root {root} does not exist; expected <category>/normal and "
                   f"<category>/anomalous inside ({see('labelled-folders-layout')}). Fix data_root.")
            raise DataError(msg)
        return sorted(p.name for p in root.iterdir()
                      if (p / "normal").is_dir() and (p / "anomalous").is_dir())
    if dataset == "visa":
        csv = root / "split_csv" / "1cls.csv"
        return sorted(read_visa_split(csv)["object"].unique())

    return list_categories(root)


def _incomplete(dataset: str, folder: Path) -> str:
    """What a category folder that exists lacks, in words."""
    needed = ("normal", "anomalous") if dataset == "labelled" else ("train/good", "test")
    lacks = [n for n in needed if not (folder / n).is_dir()]
    if dataset not in ("labelled", "visa") and "train/good" in lacks and (folder / "train" / "ok").is_dir():
        lacks.remove("train/good")   # BTAD names its normal folders ok/
    held = sorted(p.name + "/" for p in folder.iterdir() if p.is_dir()) or ["no sub-folders"]
    what = ", ".join(f"{n}/" for n in lacks) or "the images the layout needs"
    return f"category folder {folder} is there but has no {what} (it holds {', '.join(held)})"


def choose_categories(dataset: str, root: Path, wanted: list[str] | None,
                      limit: int | None = None) -> list[str]:
    """``wanted`` checked against what is on disk; all of them (or the first ``limit``, as
    the smoke profile asks) when ``wanted`` is None."""
    present = list_dataset_categories(dataset, root)
    incomplete = [_incomplete(dataset, Path(root) / c) for c in wanted or ()
                  if c not in present and (Path(root) / c).is_dir()]
    if incomplete:
        msg = (f"{'; '.join(incomplete)}. Complete the folder(s) in the official layout "
               f"({see('labelled-folders-layout' if dataset == 'labelled' else 'mvtec-ad-layout')}), "
               "or leave them out of `-p categories ...`.")
        raise DataError(msg)
    if not present:
        msg = (f"no categories found under {root} for dataset {dataset!r}; expected the "
               f"official layout ({see('mvtec-ad-layout')})")
        raise DataError(msg)
    if wanted is None:
        return present[:limit] if limit else present
    missing = [c for c in wanted if c not in present]
    if missing:
        msg = (f"categories {missing} not found under {root}; present: {', '.join(present)}. "
               "Fix `-p categories ...` or data_root.")
        raise DataError(msg)
    return list(wanted)


def open_split(dataset: str, root: Path, category: str, split: str, image_size: int):
    """The train or test split of one category as a Dataset (the item contract of adlib.data)."""
    if dataset in MVTEC_LAYOUT:
        return MVTecDataset(root, category, split=split, image_size=image_size)
    if dataset == "visa":
        return VisADataset(root, category, split=split, image_size=image_size)
    msg = f"dataset {dataset!r} has no train/test split loader; use one of {MVTEC_LAYOUT + ('visa',)}"
    raise DataError(msg)
