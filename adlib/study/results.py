"""Run records and the paper-vs-us comparison.

Every notebook ends by writing a :class:`RunRecord` (JSON) to its ``output_dir``; the book's
scoreboard collects them with :func:`load_run_records` and :func:`records_frame`.

The papers' printed numbers live only in ``adlib/resources/paper_tables/paper_results.csv``
and the claims to test in ``adlib/resources/paper_tables/claims.md`` (shipped inside the
package). Code reads them with :func:`load_paper_tables`,
:func:`paper_numbers` / :func:`paper_value` and :func:`load_claims`; no paper number is typed
into this package. The claims are checked by :mod:`adlib.analysis.claims` (declared checks, paired
confidence intervals).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob as _glob
import json
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from adlib import __version__
from adlib.chapters.registry import get_paper
from adlib.resources import resource_path
from adlib.study.jsonable import jsonable
from adlib.study.provenance import library_versions

PAPER_TABLES_DIR = resource_path("paper_tables")
"""Where ``paper_results.csv`` and ``claims.md`` live: shipped inside the package."""


def __getattr__(name: str):
    # PAPERS, the paper keys (:mod:`adlib.chapters.registry`), also those of the paper tables (CSV column
    # ``paper``; ``## <key>`` in claims.md): read on use, since the registry imports every study
    # and the studies import this module
    if name == "PAPERS":
        from adlib.chapters.registry import PAPERS

        return tuple(PAPERS)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


PAPER_TABLE_COLUMNS = (
    "paper", "table", "caption_short", "dataset", "category",
    "method", "setting", "metric", "value", "std", "note",
)


class RunRecordError(ValueError):
    """A run record is malformed (missing keys, wrong types, unreadable JSON)."""


# --------------------------------------------------------------------------------------------
# provenance: hardware and code revision
# --------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def hardware_info(device: str | None = None) -> dict[str, Any]:
    """Describe the machine a run used: CPU model and count, memory, torch/CUDA, Python, OS.

    ``device`` is the notebook's ``device`` parameter ("cpu", "cuda", "cuda:1", ...); when it
    names a CUDA device its name is recorded, otherwise the first visible GPU (if any) is.
    Never raises: fields that cannot be read are ``None``.
    """
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": None,
        "torch_threads": None,
        "cuda": None,
        "gpu": None,
        "gpu_count": 0,
        "device": device,
        "libraries": library_versions(),
    }
    try:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu_count"] = torch.cuda.device_count()
            index = 0
            if device is not None and str(device).startswith("cuda:"):
                index = int(str(device).split(":", 1)[1])
            info["gpu"] = torch.cuda.get_device_name(index)
    except Exception:  # noqa: BLE001 -- provenance must never break a run
        pass
    return info


#: Libraries whose version can move a metric's last digits (decoding, filtering, sorting).


def hardware_label(hardware: Mapping[str, Any] | str | None) -> str:
    """A short one-line name for a :func:`hardware_info` dict, for tables ("2× AMD EPYC (cpu)")."""
    if hardware is None:
        return "unknown"
    if isinstance(hardware, str):
        return hardware
    device = str(hardware.get("device") or "")
    if hardware.get("gpu") and not device.startswith("cpu"):
        return f"{hardware['gpu']} (cuda)"
    count = hardware.get("cpu_count")
    cpu = hardware.get("cpu") or "cpu"
    return f"{count}× {cpu} (cpu)" if count else f"{cpu} (cpu)"


def _package_version() -> str:
    try:
        return version("adlib")
    except Exception:  # noqa: BLE001 -- not installed (a checkout on sys.path)
        return __version__


def _git(args: Sequence[str], cwd: Path) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
    )
    return out.stdout.strip()


#: Where committed study results live, relative to the repository root.
RESULTS_PATH = "adlib/resources/results"


def adlib_revision() -> str:
    """The code revision behind a run: ``<short sha>`` or ``<short sha>-dirty`` in a git
    checkout of adlib, else the package version (e.g. ``0.1.0``). Never raises."""
    package_dir = Path(__file__).resolve().parents[1]   # adlib/study/results.py -> adlib
    try:
        top = Path(_git(["rev-parse", "--show-toplevel"], package_dir)).resolve()
        # A non-editable install inside some other repository must not report that repo's sha.
        if top / "adlib" != package_dir:
            return _package_version()
        sha = _git(["rev-parse", "--short", "HEAD"], top)
        # results a study appends to as it runs are output, not code: they never make it dirty
        dirty = _git(["status", "--porcelain", "--untracked-files=no", "--", ".",
                      f":(exclude){RESULTS_PATH}"], top)
        return f"{sha}-dirty" if dirty else sha
    except Exception:  # noqa: BLE001 -- no git, no commits, not a checkout: fall back
        return _package_version()


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# run records
# --------------------------------------------------------------------------------------------



def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass
class RunRecord:
    """What one notebook run measured, and under which conditions (saved as JSON).

    ``metrics`` is ``{category: {metric: value}}`` (plus an optional ``"mean"`` category);
    a value is a number, ``None`` (undefined, e.g. pixel AUROC without masks) or a list of
    numbers, one per seed. ``ablations`` is a list of flat row dicts (the study rows: one per
    cell × seed × category). ``claims`` holds the claims-check rows (from
    :func:`adlib.analysis.claims.check_claims`); the book's scoreboard collects them.
    """

    paper: str
    notebook: str
    profile: str
    dataset: str
    data_root: str | None
    categories: list[str]
    params: dict[str, Any]
    seeds: list[int]
    metrics: dict[str, dict[str, Any]]
    ablations: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=hardware_info)
    wall_time_s: float | None = None
    adlib_revision: str = field(default_factory=adlib_revision)
    created: str = field(default_factory=_now_iso)
    notes: str = ""

    REQUIRED_ON_LOAD = (
        "paper", "notebook", "profile", "dataset", "data_root", "categories", "params",
        "seeds", "metrics", "hardware", "wall_time_s", "adlib_revision", "created",
    )

    def __post_init__(self) -> None:
        if self.data_root is not None:
            self.data_root = os.fspath(self.data_root)
        if isinstance(self.categories, str):
            self.categories = [self.categories]
        self.categories = [str(c) for c in self.categories]
        self.seeds = [int(s) for s in ([self.seeds] if _is_number(self.seeds) else self.seeds)]
        # Store exactly what a JSON round trip gives back, so save/load is lossless.
        self.params = jsonable(self.params)
        self.metrics = jsonable(self.metrics)
        self.ablations = jsonable(self.ablations)
        self.claims = jsonable(self.claims)
        self.hardware = jsonable(self.hardware)
        if self.wall_time_s is not None:
            self.wall_time_s = float(self.wall_time_s)
        self._validate()

    def _validate(self) -> None:
        for name in ("paper", "notebook", "profile", "dataset", "adlib_revision", "created"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                msg = (f"RunRecord.{name} must be a non-empty string, found "
                       f"{getattr(self, name)!r}; pass e.g. paper='rlr', profile='cpu'.")
                raise RunRecordError(msg)
        if not isinstance(self.params, dict) or not isinstance(self.hardware, dict):
            msg = "RunRecord.params and RunRecord.hardware must be dicts."
            raise RunRecordError(msg)
        if not isinstance(self.metrics, dict):
            msg = (f"RunRecord.metrics must be {{category: {{metric: value}}}}, found "
                   f"{type(self.metrics).__name__}.")
            raise RunRecordError(msg)
        for category, per_metric in self.metrics.items():
            if not isinstance(per_metric, dict):
                msg = (f"RunRecord.metrics[{category!r}] must be a dict {{metric: value}}, "
                       f"found {per_metric!r}; e.g. metrics={{'bottle': {{'image_auroc': 97.1}}}}.")
                raise RunRecordError(msg)
            for metric, value in per_metric.items():
                values = value if isinstance(value, list) else [value]
                if not all(v is None or _is_number(v) for v in values):
                    msg = (f"RunRecord.metrics[{category!r}][{metric!r}] must be a number, "
                           f"None or a list of numbers (one per seed), found {value!r}.")
                    raise RunRecordError(msg)
        if not isinstance(self.ablations, list) or not all(
            isinstance(row, dict) for row in self.ablations
        ):
            msg = "RunRecord.ablations must be a list of row dicts (one per config × seed)."
            raise RunRecordError(msg)
        if not isinstance(self.claims, list) or not all(
            isinstance(row, dict) and row.get("claim") for row in self.claims
        ):
            msg = ("RunRecord.claims must be a list of claims-check rows with a 'claim' label, "
                   "as returned by adlib.analysis.claims.check_claims(...).")
            raise RunRecordError(msg)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> RunRecord:
        if not isinstance(data, Mapping):
            msg = f"{source}: a run record must be a JSON object, found {type(data).__name__}."
            raise RunRecordError(msg)
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in cls.REQUIRED_ON_LOAD if k not in data]
        unknown = sorted(set(data) - known)
        if missing or unknown:
            msg = (f"{source} is not a valid adlib run record: missing keys {missing}, "
                   f"unexpected keys {unknown}. Expected keys {sorted(known)}; records are "
                   "written by RunRecord(...).save(output_dir) at the end of each notebook.")
            raise RunRecordError(msg)
        try:
            return cls(**dict(data))
        except RunRecordError as err:
            msg = f"{source}: {err}"
            raise RunRecordError(msg) from err
        except (TypeError, ValueError) as err:
            msg = f"{source}: a field has the wrong type ({err})."
            raise RunRecordError(msg) from err

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> RunRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            msg = f"{source} is not valid JSON ({err}); was the file truncated?"
            raise RunRecordError(msg) from err
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunRecord:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            msg = f"cannot read run record {path}: {err}"
            raise RunRecordError(msg) from err
        return cls.from_json(text, source=str(path))

    def save(self, output_dir: str | os.PathLike, name: str | None = None) -> Path:
        """Write ``<paper>__<profile>__<YYYYmmddTHHMMSSZ>.json`` into ``output_dir`` atomically
        (temporary file + rename, so a crash never leaves half a record) and return its path.

        With ``name`` the file is ``<name>.json`` and replaces an earlier one of that name (a
        study's record is named by its grid and protocol: rerunning it updates the record)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if name is not None:
            return self._write(output_dir, output_dir / f"{name}.json")
        try:
            stamp = _dt.datetime.fromisoformat(self.created).astimezone(_dt.timezone.utc)
        except ValueError:
            stamp = _dt.datetime.now(_dt.timezone.utc)
        stem = "__".join(
            re.sub(r"[^A-Za-z0-9_.-]+", "-", part)
            for part in (self.paper, self.profile, stamp.strftime("%Y%m%dT%H%M%SZ"))
        )
        target = output_dir / f"{stem}.json"
        suffix = 2
        while target.exists():  # two runs in the same second must not overwrite each other
            target = output_dir / f"{stem}-{suffix}.json"
            suffix += 1
        return self._write(output_dir, target)

    def _write(self, output_dir: Path, target: Path) -> Path:
        fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.to_json())
                handle.write("\n")
            # mkstemp makes the file private (0600); a record is for every reader of the folder
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_run_records(folder_or_glob: str | os.PathLike, strict: bool = True) -> list[RunRecord]:
    """Read run records from a folder (recursively, ``**/*.json``), a glob pattern or one file.

    With ``strict=False`` files that are not run records are skipped instead of raising.
    Records are returned sorted by their ``created`` time.
    """
    source = Path(folder_or_glob)
    if source.is_dir():
        paths = sorted(source.rglob("*.json"))
    elif source.is_file():
        paths = [source]
    else:
        paths = sorted(Path(p) for p in _glob.glob(os.fspath(folder_or_glob), recursive=True))
    records = []
    for path in paths:
        if path.name.startswith(".tmp-"):
            continue
        try:
            records.append(RunRecord.load(path))
        except RunRecordError:
            if strict:
                raise
    return sorted(records, key=lambda r: r.created)


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per record × category × metric.

    Columns: paper, notebook, profile, dataset, data_root, category, metric, value (the mean
    when a metric holds one value per seed), std (NaN for a single value), n (values
    averaged), seeds, hardware (short label), adlib_revision, created, wall_time_s.
    """
    rows = []
    for record in records:
        for category, per_metric in record.metrics.items():
            for metric, value in per_metric.items():
                arr = _values([np.nan if v is None else v
                               for v in (value if isinstance(value, list) else [value])])
                rows.append({
                    "paper": record.paper,
                    "notebook": record.notebook,
                    "profile": record.profile,
                    "dataset": record.dataset,
                    "data_root": record.data_root,
                    "category": category,
                    "metric": metric,
                    "value": float(arr.mean()) if arr.size else np.nan,
                    "std": float(arr.std(ddof=1)) if arr.size > 1 else np.nan,
                    "n": int(arr.size),
                    "seeds": ",".join(str(s) for s in record.seeds),
                    "hardware": hardware_label(record.hardware),
                    "adlib_revision": record.adlib_revision,
                    "created": record.created,
                    "wall_time_s": record.wall_time_s,
                })
    columns = ["paper", "notebook", "profile", "dataset", "data_root", "category", "metric",
               "value", "std", "n", "seeds", "hardware", "adlib_revision", "created",
               "wall_time_s"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# the papers' numbers and claims
# --------------------------------------------------------------------------------------------

def paper_key(name: str) -> str:
    """``name`` if it is a paper key (:mod:`adlib.chapters.registry`), else a ``KeyError`` listing them."""
    return get_paper(name).key


def _tables_file(path: str | os.PathLike | None, name: str) -> Path:
    if path is None:
        path = PAPER_TABLES_DIR / name
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        msg = (f"paper tables file not found: {path}. It ships inside the package as "
               f"adlib/resources/paper_tables/{name}; reinstall adlib (pip install adlib @ "
               "git+<the book's repository>) or pass path=.")
        raise FileNotFoundError(msg)
    return path


@lru_cache(maxsize=4)
def _read_paper_tables(path: Path, mtime: float) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"table": str, "category": str, "setting": str})
    missing = [c for c in PAPER_TABLE_COLUMNS if c not in frame.columns]
    if missing:
        msg = (f"{path} lacks columns {missing}; expected {list(PAPER_TABLE_COLUMNS)} "
               "(see adlib/resources/paper_tables/README.md).")
        raise ValueError(msg)
    return frame


def load_paper_tables(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The papers' printed numbers: ``adlib/resources/paper_tables/paper_results.csv`` as a DataFrame.

    One row per printed number; columns paper, table, caption_short, dataset, category,
    method, setting, metric, value, std, note (AUROC in %, F1 in 0..1; see the README there).
    ``path`` may be the CSV or its folder; default: ``adlib/../adlib/resources/paper_tables``.
    """
    csv = _tables_file(path, "paper_results.csv").resolve()
    return _read_paper_tables(csv, csv.stat().st_mtime).copy()


def _as_set(value: str | Iterable[str]) -> set[str]:
    return {value} if isinstance(value, str) else set(value)


def paper_numbers(
    paper: str,
    table: str | Iterable[str] | None = None,
    method: str | Iterable[str] | None = None,
    metric: str | Iterable[str] | None = None,
    setting: str | Iterable[str] | None = None,
    dataset: str | Iterable[str] | None = None,
    category: str | Iterable[str] | None = None,
    *,
    path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Rows of the paper tables for one paper, filtered by exact column values.

    Each filter takes a value or a list of values; ``None`` means "any". Table names are
    spelled as in the CSV ("Table 1"); a bare number (``table=1`` or "1") is accepted too.
    Raises ``LookupError`` naming the available values when a filter matches nothing, so a
    typo cannot silently give an empty comparison.
    """
    key = paper_key(paper)
    frame = load_paper_tables(path)
    rows = frame[frame["paper"] == key]
    if rows.empty:
        msg = (f"adlib/resources/paper_tables has no numbers for {key!r}: its tables are missing in the "
               "paper text (see adlib/resources/paper_tables/README.md); use the text claims from "
               "load_claims() instead.")
        raise LookupError(msg)
    if table is not None:
        tables = table if isinstance(table, (list, tuple, set)) else [table]
        table = [t if str(t).startswith("Table") else f"Table {t}" for t in tables]
    filters = {"table": table, "method": method, "metric": metric, "setting": setting,
               "dataset": dataset, "category": category}
    for column, wanted in filters.items():
        if wanted is None:
            continue
        kept = rows[rows[column].isin(_as_set(wanted))]
        if kept.empty:
            available = sorted(rows[column].dropna().astype(str).unique())
            msg = (f"no {key} rows with {column}={wanted!r} (after the filters before it); "
                   f"available: {available}.")
            raise LookupError(msg)
        rows = kept
    return rows


def paper_value(paper: str, **filters: Any) -> float:
    """The one number ``paper_numbers(paper, **filters)`` selects (error unless exactly one)."""
    rows = paper_numbers(paper, **filters)
    if len(rows) != 1:
        shown = rows[["table", "dataset", "category", "method", "setting", "metric", "value"]]
        msg = (f"expected exactly one {paper} number for {filters}, found {len(rows)}; add "
               f"filters (table, setting, metric, ...) to pick one:\n{shown.to_string()}")
        raise LookupError(msg)
    return float(rows["value"].iloc[0])


@dataclass(frozen=True)
class Claim:
    """One numbered claim from ``adlib/resources/paper_tables/claims.md``."""

    paper: str
    number: int
    text: str

    @property
    def label(self) -> str:
        return f"{self.paper} #{self.number}"

    @property
    def summary(self) -> str:
        """The first sentence of the claim (for table cells)."""
        first = self.text.split("\n", 1)[0]
        match = re.match(r"(.+?[.!?])(\s|$)", first)
        return match.group(1) if match else first

    def __str__(self) -> str:
        return f"{self.label}: {self.text}"


_HEADER = re.compile(r"^##\s+(?P<key>[^\s(]+)")
_ITEM = re.compile(r"^(?P<number>\d+)\.\s+(?P<text>.*)$")


def load_claims(path: str | os.PathLike | None = None, paper: str | None = None) -> list[Claim]:
    """Parse ``claims.md`` into :class:`Claim` objects, in file order.

    ``## <key> ...`` opens a paper's section; ``N. text`` opens claim N and every following
    line up to the next claim or section (sub-bullets, tables) belongs to its text.
    ``paper`` keeps one paper's claims (a key of :mod:`adlib.chapters.registry`).
    """
    md = _tables_file(path, "claims.md")
    claims: list[Claim] = []
    current_paper: str | None = None
    number: int | None = None
    lines: list[str] = []

    def flush() -> None:
        if current_paper is not None and number is not None:
            claims.append(Claim(current_paper, number, "\n".join(lines).strip()))

    for raw in md.read_text(encoding="utf-8").splitlines():
        header = _HEADER.match(raw)
        item = _ITEM.match(raw)
        if header:
            flush()
            current_paper, number, lines = header.group("key"), None, []
        elif item and current_paper is not None:
            flush()
            number, lines = int(item.group("number")), [item.group("text")]
        elif number is not None:
            lines.append(raw)
    flush()
    if paper is not None:
        key = paper_key(paper)
        claims = [c for c in claims if c.paper == key]
    return claims


def get_claim(paper: str, number: int, path: str | os.PathLike | None = None) -> Claim:
    """Claim ``number`` of ``paper`` from claims.md."""
    for claim in load_claims(path, paper=paper):
        if claim.number == number:
            return claim
    msg = f"claims.md has no claim {number} for {paper!r}."
    raise LookupError(msg)


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------

def _values(value: Any) -> np.ndarray:
    if value is None:
        return np.array([], dtype=float)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    return arr[np.isfinite(arr)]
