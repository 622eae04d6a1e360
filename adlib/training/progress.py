"""Progress bars that suit both a live notebook and the printed book.

Interactively, :func:`progress` is ``tqdm.auto.tqdm`` (a widget in Jupyter, text in a
terminal). When the book is built (``ADLIB_PROGRESS=summary``, set by ``adlib.book.builder``) a bar
would leave hundreds of ``\\r`` updates in the executed notebook, so it prints one summary
line when it closes instead ("categories: 6/6 in 01:02").
"""

from __future__ import annotations

import os

from tqdm import tqdm as _text_tqdm
from tqdm.auto import tqdm


class _SummaryBar(_text_tqdm):
    """A silent tqdm that prints a single line with the count and time when it closes."""

    def __init__(self, *args, **kwargs):
        kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 -- closed in close()
        super().__init__(*args, **kwargs)

    def close(self):
        if not getattr(self, "_summarised", False) and not self.disable and self.leave:
            self._summarised = True
            elapsed = self.format_interval(self.format_dict["elapsed"])
            total = f"/{self.total}" if self.total else ""
            postfix = f" ({self.postfix})" if self.postfix else ""
            print(f"{self.desc or 'progress'}: {self.n}{total} in {elapsed}{postfix}", flush=True)
        super().close()
        sink = getattr(self, "fp", None)
        if sink is not None and not sink.closed:
            sink.close()


def progress(*args, **kwargs):
    """``tqdm`` over an iterable (same arguments), in the form that suits where we run."""
    if os.environ.get("ADLIB_PROGRESS") == "summary":
        return _SummaryBar(*args, **kwargs)

    return tqdm(*args, **kwargs)
