"""The one exception every data problem raises, and the pointer into the layout docs."""

from __future__ import annotations

from adlib.resources import docs_url

DOCS = "data/README.md"


class DataError(ValueError):
    """A data set on disk does not match its official layout, or cannot be fetched.

    The message names the path, what was found, what was expected and how to fix it.
    It is a ``ValueError`` so callers that already catch bad arguments catch it too.
    """


def see(section: str) -> str:
    """The hint that ends an error message: a link to ``data/README.md#<section>`` on the
    book's repository (it works after a pip install, where no README is on disk)."""
    return f"see {docs_url(DOCS, section)}"
