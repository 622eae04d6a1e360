"""The book's plots, in one style.

Every function returns the matplotlib ``Figure`` (never calls ``plt.show()``; Jupyter shows
a returned figure, scripts save it). Functions that draw a single panel take an optional
``ax``. The style (:func:`set_style`) is applied when this module is imported; it only sets
rcParams and never chooses a backend, so it works inline in Jupyter and with
``MPLBACKEND=Agg`` in tests.

Images may be torch tensors or numpy arrays: ``3xHxW`` / ``HxWx3`` in [0, 1] (uint8 is
scaled), ``HxW`` grey; masks and anomaly maps ``HxW`` (a leading singleton channel is dropped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

FIG_WIDTH = 9.0
"""Inches: figures are sized for the book's text column (8-10 inch wide)."""

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
"""Okabe-Ito colours: distinguishable with colour-vision deficiencies and in greyscale print."""

OURS_COLOUR = PALETTE[0]
PAPER_COLOUR = "#8c8c8c"
PAPER_MARKER = "#222222"  # paper numbers drawn as points: near-black diamonds
MASK_COLOUR = "#00e5ff"  # cyan outline: visible over both the image and the jet/inferno map
VERDICT_COLOURS = {"reproduced": PALETTE[2], "contradicted": PALETTE[3],
                   "inconclusive": PALETTE[1], "not comparable here": PAPER_COLOUR}
MAP_CMAP = "jet"  # the anomaly-map colour scale used by the papers' figures

_STYLE = {
    "figure.figsize": (FIG_WIDTH, 5.0),
    "figure.dpi": 100,
    "figure.facecolor": "white",
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "savefig.facecolor": "white",
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "legend.edgecolor": "#cccccc",
    "figure.titlesize": 14,
    "figure.titleweight": "bold",
    "axes.facecolor": "white",
    "axes.edgecolor": "#4d4d4d",
    "axes.linewidth": 0.8,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e0e0e0",
    "grid.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=list(PALETTE)),
    "lines.linewidth": 2.0,
    "image.cmap": "viridis",
    "errorbar.capsize": 3,
}


def set_style() -> None:
    """Apply the book's matplotlib style (whitegrid look, readable fonts, fixed palette)."""
    mpl.rcParams.update(_STYLE)


set_style()


# --------------------------------------------------------------------------------------------
# array conversion
# --------------------------------------------------------------------------------------------

def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _as_image(x: Any) -> np.ndarray:
    """HxWx3 (or HxW grey) float in [0, 1] from 3xHxW / HxWx3 / HxW / 1xHxW."""
    arr = _numpy(x)
    if arr.dtype == np.uint8:
        arr = arr / 255.0
    arr = arr.astype(float)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        msg = f"expected an image 3xHxW, HxWx3 or HxW, found shape {arr.shape}."
        raise ValueError(msg)
    return np.clip(arr, 0.0, 1.0)


def _as_map(x: Any) -> np.ndarray:
    """HxW float from HxW / 1xHxW / HxWx1."""
    arr = np.squeeze(_numpy(x).astype(float))
    if arr.ndim != 2:
        msg = f"expected a mask or anomaly map HxW, found shape {_numpy(x).shape}."
        raise ValueError(msg)
    return arr


def _batch(x: Any) -> list:
    """A list of per-sample arrays from a list or a batched tensor/array."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    arr = _numpy(x)
    return [arr[i] for i in range(arr.shape[0])]


def _new_axes(ax: Any, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _draw_mask_outline(ax: Any, mask: np.ndarray, extent: tuple | None = None) -> None:
    if mask.min() < 0.5 <= mask.max():  # contour() warns on an all-zero (good) mask
        ax.contour(mask, levels=[0.5], colors=MASK_COLOUR, linewidths=1.2, extent=extent,
                   origin="upper")


def _image_extent(image: np.ndarray) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    return (-0.5, w - 0.5, h - 0.5, -0.5)


def _hide_ticks(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


# --------------------------------------------------------------------------------------------
# evaluation plots
# --------------------------------------------------------------------------------------------

def heatmap_grid(
    images: Any,
    masks: Any,
    maps: Any,
    titles: Sequence[str] | None = None,
    n: int | None = None,
    vmax: float | None = None,
    *,
    vmin: float | None = None,
    alpha: float = 0.5,
    colorbar: bool = True,
    title: str = "Anomaly maps",
) -> Figure:
    """Rows = samples; columns = image | ground-truth mask | anomaly map | overlay.

    The overlay draws the map over the image with ``alpha`` and the mask's outline in cyan.
    All maps share one colour scale (``vmin``/``vmax``, default: min/max over the shown maps),
    so a normal sample's map looks cooler than an anomalous one's, as it should; one colour bar
    on the right shows the scale (``colorbar=False`` leaves exactly ``4n`` axes). A map with a
    different resolution from its image is stretched over it. ``masks`` may be ``None``
    (no ground truth).
    """
    images, maps = _batch(images), _batch(maps)
    masks = _batch(masks) or [None] * len(images)
    if not (len(images) == len(masks) == len(maps)):
        msg = (f"heatmap_grid needs as many masks and maps as images, found {len(images)} "
               f"images, {len(masks)} masks, {len(maps)} maps.")
        raise ValueError(msg)
    n = len(images) if n is None else min(n, len(images))
    if n == 0:
        msg = "heatmap_grid got no samples to draw."
        raise ValueError(msg)
    images = [_as_image(x) for x in images[:n]]
    maps = [_as_map(x) for x in maps[:n]]
    masks = [np.zeros(img.shape[:2]) if m is None else _as_map(m)
             for img, m in zip(images, masks[:n])]
    vmin = min(float(m.min()) for m in maps) if vmin is None else vmin
    vmax = max(float(m.max()) for m in maps) if vmax is None else vmax

    h, w = images[0].shape[:2]
    cell = FIG_WIDTH / 4
    fig, axes = plt.subplots(
        n, 4, figsize=(FIG_WIDTH + (0.6 if colorbar else 0), cell * h / w * n + 0.7),
        squeeze=False, layout="constrained",
    )
    columns = ("image", "ground truth", "anomaly map", "overlay")
    for i in range(n):
        image, mask, amap = images[i], masks[i], maps[i]
        extent = _image_extent(image)
        grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if image.ndim == 2 else {}
        row = axes[i]
        row[0].imshow(image, **grey)
        row[1].imshow(mask, cmap="gray", vmin=0, vmax=1, extent=extent)
        mappable = row[2].imshow(amap, cmap=MAP_CMAP, vmin=vmin, vmax=vmax, extent=extent)
        row[3].imshow(image, **grey)
        row[3].imshow(amap, cmap=MAP_CMAP, vmin=vmin, vmax=vmax, alpha=alpha, extent=extent)
        _draw_mask_outline(row[3], mask, extent)
        for j, ax in enumerate(row):
            _hide_ticks(ax)
            if i == 0:
                ax.set_title(columns[j])
        if titles is not None and i < len(titles):
            row[0].set_ylabel(titles[i], fontsize=10)
    if colorbar:
        fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=min(1.0, 0.9 / n + 0.3),
                     label="anomaly score", pad=0.02)
    fig.suptitle(title)
    return fig


def roc_curves(
    curves: Mapping[str, tuple],
    title: str = "ROC curves",
    *,
    ax: Any = None,
    xlabel: str = "false positive rate",
    ylabel: str = "true positive rate",
) -> Figure:
    """One ROC curve per entry ``label: (fpr, tpr, auc)`` plus the chance diagonal.

    The legend gives each AUC (``auc`` may be ``None``: the trapezoid area is used; an AUC
    above 1 is read as a percentage). Draws ``len(curves) + 1`` lines.
    """
    fig, ax = _new_axes(ax, (FIG_WIDTH * 0.62, FIG_WIDTH * 0.55))
    for label, curve in curves.items():
        fpr, tpr = np.ravel(_numpy(curve[0])), np.ravel(_numpy(curve[1]))
        auc = curve[2] if len(curve) > 2 else None
        if auc is None:
            order = np.argsort(fpr, kind="stable")
            auc = float(np.trapezoid(tpr[order], fpr[order])) if hasattr(np, "trapezoid") \
                else float(np.trapz(tpr[order], fpr[order]))
        auc = float(auc)
        shown = f"{auc:.1f}%" if auc > 1.0 else f"{auc:.3f}"
        ax.plot(fpr, tpr, label=f"{label} (AUC = {shown})")
    ax.plot([0, 1], [0, 1], linestyle="--", color=PAPER_COLOUR, linewidth=1.2, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def _ordered(values: pd.Series, order: Sequence | None) -> list:
    if order is not None:
        return list(order)
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [c for c in values.cat.categories if c in set(values)]
    return list(dict.fromkeys(values))  # first appearance, as the notebook wrote the grid


def _spread(values: np.ndarray, err: str | None) -> float:
    values = values[np.isfinite(values)]
    if err is None or values.size < 2:
        return 0.0
    std = float(values.std(ddof=1))
    if err == "std":
        return std
    if err == "sem":
        return std / math.sqrt(values.size)
    msg = f"err must be 'std', 'sem' or None, found {err!r}."
    raise ValueError(msg)


def _paper_lookup(paper_values: Any, x_value: Any, hue_value: Any) -> float:
    if paper_values is None:
        return math.nan
    key = x_value if hue_value is None else (x_value, hue_value)
    try:
        value = paper_values[key]
    except (KeyError, IndexError, TypeError):
        return math.nan
    return math.nan if value is None else float(value)


def _short(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1.5 else f"{value:.1f}"


def _text_colour_on(colour: str) -> str:
    """Black or white, whichever reads better on ``colour`` (relative luminance)."""
    r, g, b = mpl.colors.to_rgb(colour)
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white"


def ablation_bars(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    err: str | None = "std",
    paper_values: Mapping | pd.Series | None = None,
    title: str = "Ablation",
    *,
    ax: Any = None,
    order: Sequence | None = None,
    hue_order: Sequence | None = None,
    ours_label: str = "ours",
    paper_label: str = "paper",
    ylabel: str | None = None,
    ylim: tuple[float, float] | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Mean of ``y`` per ``x`` (and ``hue``) over the rows (one row per seed), with error bars.

    ``err``: "std" (sample std over seeds), "sem" or ``None``. ``paper_values`` maps an
    ``x`` value (or ``(x, hue)`` with ``hue``) to the paper's number; without ``hue`` it is
    drawn as a grey hatched bar beside ours, with ``hue`` as a black diamond on the matching
    bar. Name the run in ``ours_label`` (e.g. "ours (embedded default, cpu profile)"); the
    legend adds the seed count. Bars are annotated with their means when there are at most
    12 (``annotate``), so small differences stay readable on a zero-based axis.
    """
    for column in (x, y) + ((hue,) if hue else ()):
        if column not in df:
            msg = f"ablation_bars: column {column!r} not in the frame (columns: {list(df)})."
            raise KeyError(msg)
    xs = _ordered(df[x], order)
    hues = _ordered(df[hue], hue_order) if hue else [None]
    has_paper = paper_values is not None and any(
        math.isfinite(_paper_lookup(paper_values, xv, hv)) for xv in xs for hv in hues)
    slots = len(hues) + (1 if has_paper and hue is None else 0)
    width = 0.8 / slots
    fig, ax = _new_axes(ax, (FIG_WIDTH, 4.8))

    n_seeds = int(df.groupby([x] + ([hue] if hue else []), observed=True)[y].count().max())
    centres = np.arange(len(xs), dtype=float)
    ours_labels = []  # (x, mean, bar colour): written inside the bar, at its base
    paper_labels = []  # (x, value, kind): beside the diamond or above the hatched bar
    paper_handle = None
    for k, hv in enumerate(hues):
        sub = df if hue is None else df[df[hue] == hv]
        means, errs = [], []
        for xv in xs:
            values = sub.loc[sub[x] == xv, y].to_numpy(dtype=float)
            means.append(np.nanmean(values) if np.isfinite(values).any() else np.nan)
            errs.append(_spread(values, err))
        offsets = centres - 0.4 + width * (k + 0.5)
        colour = OURS_COLOUR if hue is None else PALETTE[k % len(PALETTE)]
        label = ours_label if hue is None else f"{hv}"
        ax.bar(offsets, means, width=width * 0.95, yerr=errs if err else None,
               color=colour, label=label, error_kw={"elinewidth": 1.2})
        ours_labels += [(o, m, colour) for o, m in zip(offsets, means)]
        if has_paper and hue is not None:
            paper = [_paper_lookup(paper_values, xv, hv) for xv in xs]
            paper_handle = ax.scatter(offsets, paper, marker="D", s=40, color=PAPER_MARKER,
                                      zorder=4)
            paper_labels += [(o, p, "marker") for o, p in zip(offsets, paper)]
    if has_paper and hue is None:
        paper = [_paper_lookup(paper_values, xv, None) for xv in xs]
        offsets = centres - 0.4 + width * (len(hues) + 0.5)
        paper_handle = ax.bar(offsets, paper, width=width * 0.95, color="white",
                              edgecolor=PAPER_COLOUR, hatch="///", linewidth=1.2)
        paper_labels += [(o, p, "bar") for o, p in zip(offsets, paper)]

    if ylim is not None:
        ax.set_ylim(*ylim)
    else:
        ax.margins(y=0.08)
    if annotate is None:
        annotate = len(ours_labels) + len(paper_labels) <= 12
    if annotate:
        # Ours at the bar's base, so no label ever sits on an error bar or a paper marker.
        base = max(ax.get_ylim()[0], 0.0)
        for xo, value, colour in ours_labels:
            if np.isfinite(value):
                ax.annotate(_short(value), (xo, base), xytext=(0, 4), textcoords="offset points",
                            ha="center", va="bottom", fontsize=9, fontweight="bold",
                            color=_text_colour_on(colour))
        for xo, value, kind in paper_labels:
            if np.isfinite(value):
                offset, ha, va = ((0, 3), "center", "bottom") if kind == "bar" else \
                    ((7, 0), "left", "center")
                ax.annotate(_short(value), (xo, value), xytext=offset,
                            textcoords="offset points", ha=ha, va=va, fontsize=9,
                            color=PAPER_MARKER)

    ax.set_xticks(centres, [str(v) for v in xs])
    ax.set_xlabel(x)
    spread = {"std": "mean ± std", "sem": "mean ± s.e.m.", None: "mean"}[err]
    seeds = f" over {n_seeds} seeds" if n_seeds > 1 else " (1 seed)"
    ax.set_ylabel(ylabel or f"{y} ({spread}{seeds})")
    ax.grid(axis="x", visible=False)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if paper_handle is not None:
        handles.append(paper_handle)
        labels.append(paper_label)
    ax.legend(handles, labels, title=f"{ours_label}, by {hue}" if hue else None,
              loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(handles), 4),
              frameon=False)
    return fig


def loss_curves(
    histories: Mapping[str, pd.DataFrame],
    y: str | Sequence[str] = "train_loss",
    logy: bool = False,
    title: str = "Training loss",
    *,
    x: str = "epoch",
    ax: Any = None,
    ylabel: str | None = None,
) -> Figure:
    """Several runs' training histories on one axis (e.g. with and without LBR).

    Each history is a DataFrame with column(s) ``y`` and, if present, ``x`` (else the index).
    With several ``y`` columns, runs keep their colour and columns get line styles.
    """
    columns = [y] if isinstance(y, str) else list(y)
    styles = ("-", "--", ":", "-.")
    fig, ax = _new_axes(ax, (FIG_WIDTH, 4.5))
    for k, (label, history) in enumerate(histories.items()):
        history = pd.DataFrame(history)
        xs = history[x] if x in history else history.index
        for j, column in enumerate(columns):
            if column not in history:
                msg = (f"loss_curves: history {label!r} has no column {column!r} "
                       f"(columns: {list(history)}).")
                raise KeyError(msg)
            name = label if len(columns) == 1 else f"{label}: {column}"
            ax.plot(xs, history[column], color=PALETTE[k % len(PALETTE)],
                    linestyle=styles[j % len(styles)], label=name,
                    marker="o" if len(history) <= 20 else None, markersize=3)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x if x else "step")
    ax.set_ylabel(ylabel or (columns[0] if len(columns) == 1 else "loss")
                  + (" (log scale)" if logy else ""))
    ax.set_title(title)
    ax.legend()
    return fig


# --------------------------------------------------------------------------------------------
# data pages and claims
# --------------------------------------------------------------------------------------------

def _item_parts(item: Any) -> tuple[Any, Any, str]:
    if isinstance(item, Mapping):  # the dataset item contract
        caption = str(item.get("defect_type", ""))
        if "label" in item and caption in ("", "good"):
            caption = "good" if int(item["label"]) == 0 else (caption or "anomalous")
        return item["image"], item.get("mask"), caption
    if isinstance(item, (list, tuple)):
        image = item[0]
        mask = item[1] if len(item) > 1 else None
        caption = str(item[2]) if len(item) > 2 else ""
        return image, mask, caption
    return item, None, ""


def sample_grid(items: Sequence[Any], ncols: int = 4, title: str = "Samples") -> Figure:
    """Images with their defect masks outlined, for the data pages.

    ``items`` are dataset items (``{"image", "mask", "defect_type", "label"}``) or tuples
    ``(image, mask, caption)``. One axis per item; each is titled with its caption.
    """
    items = list(items)
    if not items:
        msg = "sample_grid got no items to draw."
        raise ValueError(msg)
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    first = _as_image(_item_parts(items[0])[0])
    h, w = first.shape[:2]
    cell = FIG_WIDTH / max(ncols, 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * h / w * nrows + 0.6),
                             squeeze=False, layout="constrained")
    flat = axes.ravel()
    for ax, item in zip(flat, items):
        image, mask, caption = _item_parts(item)
        image = _as_image(image)
        grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if image.ndim == 2 else {}
        ax.imshow(image, **grey)
        if mask is not None:
            _draw_mask_outline(ax, _as_map(mask), _image_extent(image))
        _hide_ticks(ax)
        ax.set_title(caption, fontsize=10, fontweight="normal")
    for ax in flat[len(items):]:
        fig.delaxes(ax)
    fig.suptitle(title)
    return fig


def paper_vs_ours(
    df: pd.DataFrame | Sequence[Mapping[str, Any]],
    title: str = "Paper vs. ours",
    *,
    ax: Any = None,
    xlabel: str = "value",
) -> Figure:
    """Dot plot of the claims table: per claim, the paper's number (grey diamond) and ours
    (circle ± seed std, coloured by verdict).

    Takes the rows of :func:`adlib.analysis.claims.check_claims`; rows without a numeric paper value
    (direction claims) are left out.
    """
    frame = pd.DataFrame(list(df)) if not isinstance(df, pd.DataFrame) else df
    needed = ("claim", "paper_value", "ours_mean")
    if any(c not in frame for c in needed):
        msg = (f"paper_vs_ours needs columns {needed}; pass the rows of "
               f"adlib.analysis.claims.check_claims (found {list(frame)}).")
        raise KeyError(msg)
    frame = frame[np.isfinite(pd.to_numeric(frame["paper_value"], errors="coerce"))]
    if frame.empty:
        msg = "paper_vs_ours: no row has a numeric paper value to plot."
        raise ValueError(msg)
    labels = [f"{c} · {d}" if "dataset" in frame else str(c)
              for c, d in zip(frame["claim"], frame.get("dataset", frame["claim"]))]
    fig, ax = _new_axes(ax, (FIG_WIDTH, 0.45 * len(frame) + 1.9))
    ys = np.arange(len(frame))[::-1]
    stds = frame["ours_std"].to_numpy(dtype=float) if "ours_std" in frame else np.full(len(ys), np.nan)
    verdicts = frame["verdict"] if "verdict" in frame else ["not comparable here"] * len(ys)
    ax.scatter(frame["paper_value"], ys, marker="D", s=55, color=PAPER_MARKER, zorder=3,
               label="paper")
    for yv, mean, std, verdict in zip(ys, frame["ours_mean"], stds, verdicts):
        colour = VERDICT_COLOURS.get(verdict, OURS_COLOUR)
        ax.errorbar(mean, yv, xerr=std if np.isfinite(std) else None, fmt="o", color=colour,
                    markersize=7, zorder=4)
    for yv, p, o in zip(ys, frame["paper_value"], frame["ours_mean"]):
        if np.isfinite(o):
            ax.plot([p, o], [yv, yv], color="#bbbbbb", linewidth=1, zorder=2)
    ax.set_yticks(ys, labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("claim")
    ax.set_title(title)
    handles = [
        plt.Line2D([], [], marker="D", linestyle="", color=PAPER_MARKER, label="paper"),
        *[plt.Line2D([], [], marker="o", linestyle="", color=c, label=f"ours: {v}")
          for v, c in VERDICT_COLOURS.items() if v in set(verdicts)],
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=len(handles), frameon=False)
    ax.margins(y=0.15)
    return fig


__all__ = [
    "FIG_WIDTH", "PALETTE", "set_style", "heatmap_grid", "roc_curves", "ablation_bars",
    "loss_curves", "sample_grid", "paper_vs_ours",
]
