"""Finding a paper's declared study (outside the study's code hash: it reads the registry)."""

from __future__ import annotations

import importlib

from adlib.chapters import registry
from adlib.study.spec import Study, StudyError


def load_study(paper_or_module: str) -> Study:
    """The :class:`Study` of a chapter key (a paper's, or the comparison's: registry) or of a
    module path declaring ``STUDY``."""
    module_name = paper_or_module
    # a module path (what workers get) needs no registry, whose first use imports every card
    if "." not in paper_or_module:
        studies = {c.key: c.study for c in registry.chapters()}
        if paper_or_module in studies:
            module_name = studies[paper_or_module]
            if module_name is None:
                msg = f"{paper_or_module} has no study yet (its chapter is not written)"
                raise StudyError(msg)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        msg = (f"no study {paper_or_module!r}: not a paper key ({', '.join(registry.PAPERS)}) nor an "
               f"importable module ({err})")
        raise StudyError(msg) from err
    study = module.STUDY
    study.module = module_name
    return study
