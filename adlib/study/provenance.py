"""Which code made a study row, and when other code is proven to make the same rows.

Code identity (:func:`code_hash`): the import closure of the module that makes a study's rows
(a chapter's ``study.py``, :attr:`adlib.study.spec.Study.code`) -- every module it reaches
through ``import`` statements anywhere in its source (functions included), inside ``adlib`` or
inside its own top-level package, with their parent packages, this module aside (it names code
and makes no rows) -- each module as its syntax tree without docstrings. A comment or docstring
edit is therefore no change; a constant, a default or a line of code is.

What is declared about a study -- its grids, claim checks, titles, findings, deviations and
registry entry -- lives in the chapter's ``card.py``, which row code never imports: the file
boundary keeps it out of the hash, so declaring another cell or check, rewording a finding, or
changing how claims are judged, stales nothing. (A cell's settings enter each row's key.)

Behaviour (:func:`adlib.study.verify.fingerprint`): each study declares a tiny deterministic run
(:class:`Fingerprint`); its digest covers the metrics to full precision, the training losses
and the final weights, so two code versions with the same fingerprint trained the same model.

Equivalence (:func:`adlib.study.verify.verify`, ``python -m adlib study <paper> --verify``): when the code hash
differs from the committed rows', the fingerprint is recomputed and a seeded draw of committed
rows is rerun; if nothing moved beyond the study's declared tolerance, an equivalence record
joins the old hash to the new one in ``equivalences.jsonl``. Rows are never rewritten.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

EQUIVALENCES_FILE = "equivalences.jsonl"
#: Threads a study worker runs on (``--executor local`` pins one): rows and verifications.
WORKER_THREADS = 1


class ProvenanceError(RuntimeError):
    """The code behind a study cannot be identified or checked as asked."""


# ------------------------------------------------------------------------- code identity

def _module_file(name: str) -> Path | None:
    """The source file of module ``name``, found on disk without importing anything (a
    package's ``__init__`` would import torch); None: not a source module."""
    head, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(head)   # a top-level name is located, not imported
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin)
    if not rest:
        return path
    if path.name != "__init__.py":
        return None
    base = path.parent.joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if _is_package(path) else module.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _walk_imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)   # the TYPE_CHECKING body runs only under a type checker
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.lru_cache(maxsize=None)
def _parsed(path: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _tree(path: Path) -> ast.Module:
    return _parsed(path, path.stat().st_mtime_ns)


# This module names code and records rows; it makes none. Hashing it would stale every study's
# rows whenever the hashing changes (each study imports Fingerprint from here). A change to how
# rows are made is still caught: verify compares the code's fingerprint run bit for bit.
NOT_HASHED = frozenset({"adlib.study.provenance"})


def import_closure(module: str) -> list[str]:
    """``module`` and every module it reaches by import statements (anywhere in the source,
    lazy imports inside functions included) that belongs to ``adlib`` or to ``module``'s own
    top-level package (or, for a top-level module, its directory), with their parent packages;
    sorted by name. :data:`NOT_HASHED` is left out."""
    root = _module_file(module)
    if root is None:
        msg = f"module {module!r} has no Python source to hash (is it importable here?)"
        raise ProvenanceError(msg)
    top = module.split(".")[0]
    home = root.parent if "." not in module else None

    def ours(name: str, path: Path | None) -> bool:
        if path is None:
            return False
        head = name.split(".")[0]
        return head in ("adlib", top) or (home is not None and path.parent == home)

    seen: dict[str, Path] = {}
    todo = [module, *_parents(module)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if not ours(name, path) or name in NOT_HASHED:
            continue
        seen[name] = path
        for node in _walk_imports(_tree(path)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve_from(name, path, node)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target and target not in seen:
                    todo += [target, *_parents(target)]
    return sorted(seen)


def _strip_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return body[1:]
    return body


def _canonical(node: Any) -> str:
    """A syntax tree as text, independent of line numbers and of fields a Python version added
    empty (``type_params=[]``), so the hash is the same on every Python the book supports."""
    if isinstance(node, ast.AST):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = _strip_docstring(node.body)
        else:
            body = None
        parts = [type(node).__name__]
        for name, value in ast.iter_fields(node):
            if name == "body" and body is not None:
                value = body
            if value is None or (isinstance(value, list) and not value):
                continue
            parts.append(f"{name}={_canonical(value)}")
        return "(" + " ".join(parts) + ")"
    if isinstance(node, list):
        return "[" + ",".join(_canonical(v) for v in node) + "]"
    return repr(node)


def normalised_source(module: str) -> str:
    """The module's code as hashed: its syntax tree without docstrings."""
    path = _module_file(module)
    if path is None:
        msg = f"module {module!r} has no Python source to hash"
        raise ProvenanceError(msg)
    return _canonical(_tree(path))


def code_hash(module: str) -> str:
    """SHA-256 (16 hex digits) of the normalised import closure of row module ``module``."""
    digest = hashlib.sha256()
    for name in import_closure(module):
        digest.update(f"{name}\n".encode())
        digest.update(normalised_source(name).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def hashed_files(module: str) -> list[Path]:
    """The source files behind :func:`code_hash` of ``module``."""
    return [_module_file(name) for name in import_closure(module)]


def _git(args: Sequence[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=30).stdout


def dirty_files(module: str) -> list[str]:
    """Hashed files of ``module`` with uncommitted changes (tracked or not) in their git
    checkout; empty outside a checkout (an installed package has nothing uncommitted)."""
    files = hashed_files(module)
    package = _module_file("adlib").parent
    try:
        top = Path(_git(["rev-parse", "--show-toplevel"], package).strip()).resolve()
        if top / "adlib" != package.resolve():   # an install inside some other repository
            return []
        inside = [str(f) for f in files if f.resolve().is_relative_to(top)]
        status = _git(["status", "--porcelain", "--", *inside], top) if inside else ""
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(line[3:].strip() for line in status.splitlines() if line.strip())


def dirty_message(paper: str, files: Sequence[str]) -> str:
    listed = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    return (f"refusing to run the {paper} study from a tree with uncommitted changes to code it "
            f"hashes ({listed}): its rows would name code nobody can check out. Commit (or "
            "stash) those changes and rerun the same command; --allow-dirty runs anyway and "
            "marks every row it writes as dirty (the scoreboard shows them so).")


# --------------------------------------------------------------------------- behaviour

@dataclass(frozen=True)
class Fingerprint:
    """A study's tiny deterministic run: ``cells`` (config labels of its grids) of its real
    ``run`` on ``category`` with ``overrides`` applied to the ``profile``'s protocol, one
    seed, one thread, CPU, the embedded default."""

    cells: tuple[str, ...]
    category: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    profile: str = "smoke"
    fold: int | None = None


# --------------------------------------------------------------------------- equivalence

def load_equivalences(folder: str | os.PathLike) -> list[dict]:
    path = Path(folder) / EQUIVALENCES_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and {"old_hash", "new_hash"} <= set(record):
            out.append(record)
    return out


#: Libraries whose versions a row records (a changed one can move a metric without a code change).
NUMERIC_LIBRARIES = ("numpy", "scipy", "pillow", "scikit-image", "scikit-learn", "timm",
                     "torchvision", "pytorch-msssim")


def library_versions() -> dict[str, str | None]:
    """Installed versions of :data:`NUMERIC_LIBRARIES` (None: not installed), so a row that no
    longer reproduces can be told apart from code that changed."""
    out: dict[str, str | None] = {}
    for name in NUMERIC_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def here() -> dict:
    """The environment an equivalence is judged in: torch version and worker threads (and, for
    the record, the other numeric libraries' versions)."""
    return {"torch": torch.__version__, "threads": WORKER_THREADS, "libraries": library_versions()}


def _same_environment(record: Mapping[str, Any], env: Mapping[str, Any]) -> bool:
    return (record.get("torch") == env["torch"] and record.get("threads") == env["threads"]
            and record.get("libraries", env["libraries"]) == env["libraries"])


def linked_hashes(current: str, equivalences: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Hashes whose rows count for ``current``: ``{hash: "current" | "verified" | "unverified
    here"}``, following equivalence records back from ``current`` (old -> new chains). Records
    that name ``revisions`` (rows of the hand-listed hashes before provenance v2, which did not
    identify the code) link only those revisions' rows: see :func:`row_status`."""
    env = here()
    status = {current: "current"}
    frontier = [current]
    records = [r for r in equivalences if not r.get("revisions")]
    while frontier:
        new = frontier.pop()
        for record in records:
            old = record["old_hash"]
            if record["new_hash"] != new or old in status:
                continue
            verified = _same_environment(record, env) and status[new] != "unverified here"
            status[old] = "verified" if verified else "unverified here"
            frontier.append(old)
    return status


def row_status(current: str, equivalences: Iterable[Mapping[str, Any]]):
    """``row -> "current" | "verified" | "unverified here" | None`` (None: stale)."""
    records = list(equivalences)
    status = linked_hashes(current, records)
    env = here()
    legacy: dict[tuple, str] = {}
    for record in records:
        new = status.get(record["new_hash"])
        if record.get("revisions") and new:
            verified = _same_environment(record, env) and new != "unverified here"
            for revision in record["revisions"]:
                legacy[(record["old_hash"], revision)] = "verified" if verified else "unverified here"

    def of(row: Mapping[str, Any]) -> str | None:
        h = row.get("model_hash")
        return status.get(h) or legacy.get((h, row.get("revision")))

    return of


def is_dirty(row: Mapping[str, Any]) -> bool:
    """Whether a row was made from uncommitted code (flag, or a ``-dirty`` revision)."""
    return bool(row.get("dirty")) or str(row.get("revision", "")).endswith("-dirty")


if __name__ == "__main__":  # pragma: no cover -- a quick look: python -m adlib.study.provenance <module>
    print(code_hash(sys.argv[1]), *import_closure(sys.argv[1]), sep="\n")
