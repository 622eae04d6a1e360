"""Data: official-layout loaders, the embedded default data set, and downloads.

    MVTecDataset, VisADataset, LabelledFolderDataset   folder datasets (one item contract)
    stratified_kfold                                   k-fold CV for labelled folders
    read_image, read_mask, default_data_root          file helpers ($ADLIB_DATA)
    download_dataset, DATASETS, verify_sha256          official archives and checksums
    generate_embedded, ensure_embedded                 the embedded default (adlib.data.embedded)

Every problem with data on disk raises :class:`DataError` (a ``ValueError``) naming the path
and the fix; the layouts are described in data/README.md.
"""

from adlib.data.download import (
    DATASETS,
    download_dataset,
    extract_archive,
    verify_sha256,
)
from adlib.data.errors import DataError
from adlib.data.folders import (
    FolderDataset,
    LabelledFolderDataset,
    MVTecDataset,
    Sample,
    VisADataset,
    default_data_root,
    list_categories,
    load_item,
    read_image,
    read_mask,
    read_visa_split,
    stratified_kfold,
)

_EMBEDDED = ("generate_embedded", "ensure_embedded", "EMBEDDED_CATEGORIES")

__all__ = [
    "DATASETS", "DataError", "FolderDataset", "LabelledFolderDataset", "MVTecDataset", "Sample",
    "VisADataset", "default_data_root", "download_dataset", "extract_archive", "list_categories",
    "load_item", "read_image", "read_mask", "read_visa_split", "stratified_kfold", "verify_sha256",
]  # the embedded names stay out of __all__ so `import *` does not pull in scikit-image


def __getattr__(name: str):
    # the embedded default imports scikit-image; load it only when asked for
    if name in _EMBEDDED:
        from adlib.data import embedded

        return getattr(embedded, name)
    msg = f"module 'adlib.data' has no attribute {name!r}"
    raise AttributeError(msg)
