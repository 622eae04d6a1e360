"""Figures that stay legible in the book's column.

The book shows a figure at most as wide as its text column, about 6.9 inches of a figure drawn
at 100 dpi (688 px at a 1280 px window). A wider figure is scaled down, and its text with it:
a 7 pt legend in a 14-inch figure is shown at 3.5 pt. :func:`fit_column` wraps a row of panels
onto several rows and raises any text that would be shown below ``min_pt``;
:func:`smallest_shown_pt` is what a test checks.

This module stays out of every study's code hash (no study imports it), so a layout change
stales no committed row.
"""

from __future__ import annotations

import math

from matplotlib.layout_engine import ConstrainedLayoutEngine, TightLayoutEngine
from matplotlib.text import Text

#: The book's text column in inches of a 100-dpi figure (688 px at a 1280 x 900 window).
COLUMN_IN = 6.88
MIN_PT = 8.0


def _scale(fig, column_in: float) -> float:
    return min(1.0, column_in / fig.get_size_inches()[0])


def _texts(fig):
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def smallest_shown_pt(fig, column_in: float = COLUMN_IN) -> float:
    """The smallest font of ``fig``'s visible text, in points as the reader sees it once the
    figure is scaled to the column."""
    sizes = [t.get_fontsize() for t in _texts(fig)]
    return min(sizes) * _scale(fig, column_in) if sizes else math.inf


def _panels(fig):
    """The figure's grid axes (colour bars and insets have no subplot spec of their own)."""
    return [ax for ax in fig.axes if ax.get_subplotspec() is not None]


def _wrap(fig, ncols: int) -> None:
    """Lay a single row of panels out on rows of ``ncols`` panels, each panel its old size."""
    panels = _panels(fig)
    rows = {ax.get_subplotspec().rowspan.start for ax in panels}
    if len(rows) != 1 or len(panels) <= ncols:
        return
    nrows = math.ceil(len(panels) / ncols)
    width, height = fig.get_size_inches()
    grid = fig.add_gridspec(nrows, ncols)
    ylabel = panels[0].get_ylabel()
    for i, ax in enumerate(panels):
        ax.set_subplotspec(grid[i // ncols, i % ncols])
        if i % ncols == 0:              # a shared y axis hid these labels on the inner panels
            ax.yaxis.set_tick_params(labelleft=True)
            ax.set_ylabel(ylabel)
    fig.set_size_inches(width * ncols / len(panels), height * nrows)
    for ax in panels:               # tight_layout measures the panels where they now are
        ax.set_position(ax.get_subplotspec().get_position(fig))


def fit_column(fig, ncols: int | None = None, min_pt: float = MIN_PT,
               column_in: float = COLUMN_IN):
    """``fig`` made legible in the book's column, and returned: a single row of panels wrapped
    onto rows of ``ncols`` (when given), then every text that would be shown below ``min_pt``
    enlarged until it is not, and the layout redone."""
    if ncols:
        _wrap(fig, ncols)
    scale = _scale(fig, column_in)
    for text in _texts(fig):
        if text.get_fontsize() * scale < min_pt:
            text.set_fontsize(min_pt / scale)

    # these engines lay the figure out again when it is drawn; the rest were laid out once
    if not isinstance(fig.get_layout_engine(), (ConstrainedLayoutEngine, TightLayoutEngine)):
        fig.tight_layout()
    return fig
