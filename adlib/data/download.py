"""Official download locations and SHA-256 sums, and a downloader that falls back to manual steps.

Only a notebook or a person calls :func:`download_dataset`; tests and the book never need the
network (they use the embedded default or fixture trees). The transfer itself is pooch's (known
SHA-256, retries, progress bar, an archive already in place is not fetched again); what is ours
is the table of sources, the safe extraction and, when a download fails for any reason, a
:class:`DataError` that spells out the manual steps: URL, where to put the archive, how to
extract it, the layout to expect, and the ``-p data_root`` to pass.

Sources of the URLs and checksums (checked 2026): MVTec AD and VisA from anomalib's data
modules, confirmed by independent reports of downloaded archives (MVTec 5,264,982,680 bytes,
VisA 1,929,840,640 bytes); BTAD from anomalib's BTech module and an independent verification
script; MPDD is a OneDrive folder with no single archive, so it has no checksum.
"""

from __future__ import annotations

import os
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pooch
from tqdm import tqdm

from adlib.data.errors import DataError, see
from adlib.resources import docs_url

TIMEOUT_S = 60
RETRIES = 2


@dataclass(frozen=True)
class DatasetSource:
    """Where a data set comes from and what its archive unpacks to.

    ``extracts_to`` is the folder, relative to the download root, that becomes the data root
    ("" when the archive unpacks straight into the root). ``direct`` is False when ``url`` is a
    web page or shared folder that a script cannot fetch.
    """

    title: str
    url: str
    archive: str | None
    sha256: str | None
    size: int | None
    homepage: str
    licence: str
    section: str
    extracts_to: str
    layout: str
    direct: bool = True


DATASETS: dict[str, DatasetSource] = {
    "mvtec_ad": DatasetSource(
        title="MVTec AD",
        url=("https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
             "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz"),
        archive="mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        size=5_264_982_680,
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        licence="CC BY-NC-SA 4.0 (non-commercial; download it from its owners)",
        section="mvtec-ad-layout",
        extracts_to="",
        layout=("<root>/<category>/train/good/*.png, <root>/<category>/test/<defect_type>/*.png, "
                "<root>/<category>/ground_truth/<defect_type>/<stem>_mask.png; 15 categories "
                "(bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile "
                "toothbrush transistor wood zipper)"),
    ),
    "visa": DatasetSource(
        title="VisA",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        archive="VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        size=1_929_840_640,
        homepage="https://github.com/amazon-science/spot-diff",
        licence="CC BY 4.0",
        section="visa-layout",
        extracts_to="",
        layout=("<root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG, "
                "<root>/<object>/Data/Masks/Anomaly/*.png and <root>/split_csv/1cls.csv; 12 objects "
                "(candle capsules cashew chewinggum fryum macaroni1 macaroni2 pcb1 pcb2 pcb3 pcb4 "
                "pipe_fryum)"),
    ),
    "mpdd": DatasetSource(
        title="MPDD",
        url=("https://vutbr-my.sharepoint.com/:f:/g/personal/xjezek16_vutbr_cz/"
             "EhHS_ufVigxDo3MC6Lweau0BVMuoCmhMZj6ddamiQ7-FnA?e=oHKCxI"),
        archive=None,
        sha256=None,
        size=None,
        homepage="https://github.com/stepanje/MPDD",
        licence="CC BY-NC-SA 4.0",
        section="mpdd-and-btad-layout",
        extracts_to="",
        layout=("the MVTec AD layout: <root>/<category>/train/good, test/<defect_type>, "
                "ground_truth/<defect_type>/<stem>_mask.png; 6 categories (bracket_black "
                "bracket_brown bracket_white connector metal_plate tubes)"),
        direct=False,
    ),
    "btad": DatasetSource(
        title="BTAD",
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        archive="btad.zip",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        size=None,
        homepage="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        licence="CC BY-NC-SA 4.0 (as stated by anomalib; check with the owners)",
        section="mpdd-and-btad-layout",
        extracts_to="BTech_Dataset_transformed",
        layout=("the MVTec AD layout under <root>/BTech_Dataset_transformed: <category>/train/good, "
                "test/{ok,ko}, ground_truth/ko/<stem>.png or .bmp; 3 categories (01 02 03)"),
    ),
}

ALIASES = {"mvtec": "mvtec_ad", "mvtecad": "mvtec_ad", "btech": "btad"}


def dataset_source(name: str) -> DatasetSource:
    """The :class:`DatasetSource` for ``name`` ("mvtec_ad", "visa", "mpdd", "btad"; any case)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        msg = f"Unknown data set {name!r}; expected one of {sorted(DATASETS)} ({see('downloads')})."
        raise DataError(msg)
    return DATASETS[key]


def manual_steps(source: DatasetSource, root: str | os.PathLike, url: str | None = None,
                 reason: str = "") -> str:
    """The text that tells a person how to get ``source`` into ``root`` by hand."""
    root = Path(root).expanduser()
    data_root = root / source.extracts_to if source.extracts_to else root
    url = url or source.url
    lines = [f"Could not download {source.title} automatically" + (f" ({reason})." if reason else "."),
             "Get it by hand:"]
    if source.direct:
        size = f", {source.size / 1e9:.1f} GB" if source.size else ""
        check = (f" Check it: `sha256sum {root / source.archive}` must print {source.sha256}."
                 if source.sha256 else " (No official checksum is known; verification is skipped.)")
        lines += [
            f"  1. Download {source.archive}{size} from {url} (licence {source.licence}; if the "
            f"link is dead, take the current one from {source.homepage}).",
            f"  2. Put the archive at {root / source.archive}.{check}",
            f"  3. Extract it there: `{_extract_command(source.archive, root)}` (or call "
            f"download_dataset({_name_of(source)!r}, {str(root)!r}) again: it verifies and "
            "extracts an archive that is already in place).",
        ]
    else:
        lines += [
            f"  1. Open {url} in a browser (licence {source.licence}; page: {source.homepage}).",
            "  2. Download every category folder (the whole shared folder as a zip is fine).",
            f"  3. Unzip so that each category folder sits directly in {root}.",
        ]
    lines += [
        f"  4. Expect {source.layout.replace('<root>', str(data_root))}.",
        f"  5. Run the notebooks with `-p data_root {data_root}` (papermill) or "
        f"`export ADLIB_DATA={data_root}`.",
        f"Details: {docs_url('data/README.md', source.section)} and "
        f"{docs_url('data/README.md', 'downloads')}.",
    ]
    return "\n".join(lines)


def _name_of(source: DatasetSource) -> str:
    return next(key for key, value in DATASETS.items() if value == source)


def _extract_command(archive: str, root: Path) -> str:
    if archive.lower().endswith(".zip"):
        return f"unzip {root / archive} -d {root}"
    return f"tar -xf {root / archive} -C {root}"


def verify_sha256(path: str | os.PathLike, expected: str | None) -> str:
    """SHA-256 of the file at ``path`` (hex); raises DataError when it differs from ``expected``.

    ``expected=None`` skips the comparison with a warning (no official checksum known).
    """
    path = Path(path)
    if not path.is_file():
        msg = (f"Cannot verify {path}: the file does not exist; expected the downloaded archive "
               f"there ({see('downloads')}).")
        raise DataError(msg)
    found = pooch.file_hash(str(path), alg="sha256")
    if expected is None:
        warnings.warn(f"No official SHA-256 is known for {path}; its checksum ({found}) was not verified.",
                      stacklevel=2)
        return found
    if found != expected.strip().lower():
        msg = (f"Checksum mismatch for {path}: found sha256 {found}, expected {expected}. The file is "
               "incomplete, corrupt or not the archive at all (a download link that moved often "
               f"serves an HTML page). Fix: delete it and download it again ({see('downloads')}).")
        raise DataError(msg)
    return found


def _inside(dest: Path, name: str) -> bool:
    target = (dest / name).resolve()
    return target == dest or dest in target.parents


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a .tar / .tar.xz / .tar.gz / .zip archive into ``dest``; members may not escape it.

    Ours rather than pooch's Untar / Unzip processors: those extract without tarfile's "data"
    filter before Python 3.12, so a member named ``../x`` would land outside ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                names = zipped.namelist()
                escaping = [n for n in names if not _inside(root, n)]
                if escaping:
                    raise DataError(_unsafe_message(archive, escaping[0]))
                for name in tqdm(names, unit=" files", desc=f"extract {archive.name}"):
                    zipped.extract(name, root)
        else:
            # stream mode reads a .tar.xz once, front to back
            with tarfile.open(archive, "r|*") as tar:
                safe_filter = getattr(tarfile, "data_filter", None)
                for member in tqdm(tar, unit=" files", desc=f"extract {archive.name}"):
                    # the "data" filter also vets links; without it (old Pythons) refuse links
                    linked = member.issym() or member.islnk() or member.isdev()
                    if not _inside(root, member.name) or (linked and safe_filter is None):
                        raise DataError(_unsafe_message(archive, member.name))
                    if safe_filter is not None:
                        tar.extract(member, root, filter="data")
                    else:
                        tar.extract(member, root)
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        msg = (f"Cannot extract {archive}: {err}. Expected a complete .tar/.tar.xz/.zip archive; "
               f"delete it and download it again ({see('downloads')}).")
        raise DataError(msg) from err
    return dest


def _unsafe_message(archive: Path, name: str) -> str:
    return (f"Archive {archive} holds {name!r}, a link or a path outside the target folder; expected "
            f"plain files and folders only. Refusing to extract it ({see('downloads')}).")


def _downloader():
    """pooch's HTTP(S) downloader with our timeout and a progress bar (tests replace it)."""
    return pooch.HTTPDownloader(progressbar=True, timeout=TIMEOUT_S,
                                headers={"User-Agent": "adlib (anomaly-detection book)"})


def download_dataset(name: str, root: str | os.PathLike, *, url: str | None = None,
                     keep_archive: bool = True) -> Path:
    """Download, verify (SHA-256) and extract a data set into ``root``; return its data root.

    An archive already at ``root/<archive>`` with the right checksum is not downloaded again
    (pooch checks it); an extraction already done (marker file) is not repeated. ``url``
    overrides the official link (e.g. a mirror); the official checksum is still enforced. Any
    failure raises :class:`DataError` with the manual steps.
    """
    # only a download needs it (it arrives with pooch); reading a data set never does
    import requests

    source = dataset_source(name)
    root = Path(root).expanduser()
    data_root = root / source.extracts_to if source.extracts_to else root
    if not source.direct and url is None:
        raise DataError(manual_steps(source, root, reason=f"{source.url} is a shared folder, not one archive"))
    archive_name = source.archive or Path(urlparse(url).path).name
    marker = root / f".adlib-extracted-{archive_name}"
    if marker.is_file() and data_root.is_dir():
        return data_root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(manual_steps(source, root, url, reason=f"cannot create {root}: {err}")) from err
    fetcher = pooch.create(path=root, base_url="", retry_if_failed=RETRIES,
                           registry={archive_name: f"sha256:{source.sha256}" if source.sha256 else None},
                           urls={archive_name: url or source.url})
    try:
        archive = Path(fetcher.fetch(archive_name, downloader=_downloader()))
    except ValueError as err:  # pooch: the file's hash is not the known one (file removed)
        msg = (f"Checksum mismatch for {root / archive_name}: {err} The download was not the "
               f"archive (a moved link often serves an HTML page) and was deleted.\n\n"
               f"{manual_steps(source, root, url)}")
        raise DataError(msg) from err
    except (requests.RequestException, OSError) as err:
        raise DataError(manual_steps(source, root, url, reason=f"{type(err).__name__}: {err}")) from err
    extract_archive(archive, root)
    marker.write_text(f"{archive.name} sha256 {source.sha256 or 'not verified'}\n")
    if not keep_archive:
        archive.unlink()
    return data_root
