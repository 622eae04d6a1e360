"""Files the notebooks read at run time, shipped inside the package (package data).

``paper_tables/``: the papers' printed numbers (``paper_results.csv``), their README and the
claims to test (``claims.md``). ``results/<paper>/``: the committed study rows, records and
summaries (``python -m adlib study <paper> --out adlib/resources/results/<paper>``). They live
here, not beside the package, so that ``pip install`` (Colab) ships them: nothing reads
``adlib/../data`` at run time.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

REPOSITORY_URL = "https://github.com/adlib-book/anomaly-book"
"""The book's repository: Colab badges, the notebooks' install cell and links to its docs use
this URL (the book's ``_config.yml`` names the same; a test keeps them equal)."""


def resource_path(*parts: str) -> Path:
    """The path of a shipped file or folder, e.g. ``resource_path("paper_tables", "claims.md")``."""
    return Path(str(files(__name__).joinpath(*parts)))


def docs_url(path: str, section: str | None = None) -> str:
    """A link to a document of the repository that works after a pip install."""
    return f"{REPOSITORY_URL}/blob/main/{path}" + (f"#{section}" if section else "")
