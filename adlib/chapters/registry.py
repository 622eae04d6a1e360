"""The one registry of chapters and papers: one key per paper, used everywhere.

The key names the paper in ``adlib/resources/paper_tables`` (CSV column ``paper``, ``## <key>`` in
claims.md), in run records, in ``adlib/resources/results/<key>/`` and in
``python -m adlib study <key>``.

The registry is built from the ``CHAPTER`` declarations (:class:`adlib.chapters.base.Chapter`) of the
cards of the chapter packages (``adlib/chapters/<key>/card.py``), plus those of the modules named
in the environment variable ``ADLIB_CHAPTERS`` (comma-separated importable card modules: a chapter
outside the package, e.g. a test's). It is read on first use, so importing this module imports no
chapter.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from dataclasses import dataclass, replace

import adlib.chapters
from adlib.chapters.base import Chapter, Deviation

#: The environment variable naming extra chapter modules.
CHAPTERS_ENV = "ADLIB_CHAPTERS"


@dataclass(frozen=True)
class Paper:
    """One paper of the book."""

    key: str
    title: str
    notebook: str | None = None   # the chapter's notebook in notebooks/, None until it exists
    study: str | None = None      # the card module declaring STUDY (grids, claim checks, runner)


def chapters() -> list[Chapter]:
    """Every chapter, in book order (by notebook name; chapters without a notebook last)."""
    return list(_load(os.environ.get(CHAPTERS_ENV, "")))


def get_chapter(key: str) -> Chapter:
    """The chapter of ``key``; an unknown key raises ``KeyError`` listing the keys."""
    found = {c.key: c for c in chapters()}
    try:
        return found[key]
    except KeyError:
        msg = f"unknown chapter {key!r}; the chapter keys are {', '.join(found)}"
        raise KeyError(msg) from None


def get_paper(key: str) -> Paper:
    """The registry entry of ``key``; an unknown key raises ``KeyError`` listing the keys."""
    papers = _papers()
    try:
        return papers[key]
    except KeyError:
        msg = f"unknown paper {key!r}; the paper keys are {', '.join(papers)}"
        raise KeyError(msg) from None


def _papers() -> dict[str, Paper]:
    return {c.key: Paper(c.key, c.title, c.notebook, c.study) for c in chapters() if c.paper}


def __getattr__(name: str):
    # PAPERS is computed on use: building it imports every card (and torch)
    if name == "PAPERS":
        return _papers()
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


_building: list[str] = []


@functools.lru_cache(maxsize=None)
def _load(extra: str) -> tuple[Chapter, ...]:
    if _building:
        msg = (f"the chapter registry was read while {_building[-1]} was being imported for it: "
               "a module a chapter imports reads adlib.chapters.registry.PAPERS (or chapters()) at import "
               "time; read it inside a function instead")
        raise RuntimeError(msg)
    names = [f"adlib.chapters.{m.name}.card" for m in pkgutil.iter_modules(adlib.chapters.__path__)
             if m.ispkg and not m.name.startswith("_")]
    names += [n.strip() for n in extra.split(",") if n.strip()]
    found: list[Chapter] = []
    for name in names:
        _building.append(name)
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            msg = (f"chapter module {name!r} does not import ({err}); if {CHAPTERS_ENV} names it, "
                   "put its folder on PYTHONPATH (or sys.path)")
            raise ImportError(msg) from err
        finally:
            _building.pop()
        chapter = getattr(module, "CHAPTER", None)
        if not isinstance(chapter, Chapter):
            msg = (f"{name} declares no CHAPTER = Chapter(...) (adlib.chapters.base): every package "
                   "of adlib.chapters is a chapter whose card.py declares it")
            raise TypeError(msg)
        deviations = tuple(getattr(module, "DEVIATIONS", ()))
        if not all(isinstance(d, Deviation) for d in deviations):
            msg = f"{name}: DEVIATIONS must hold adlib.chapters.base.Deviation(...) entries only"
            raise TypeError(msg)
        found.append(replace(chapter, module=name, deviations=deviations,
                             study=name if hasattr(module, "STUDY") else None))
    for what, value_of in (("key", lambda c: c.key), ("chapter number", lambda c: c.number)):
        seen: dict = {}
        for c in found:
            value = value_of(c)
            if value is not None and value in seen:
                msg = (f"chapters {seen[value]} and {c.module} both declare {what} {value!r}; "
                       "give each chapter its own")
                raise ValueError(msg)
            seen[value] = c.module
    return tuple(sorted(found, key=lambda c: (c.notebook is None, c.number or 0, c.key)))
