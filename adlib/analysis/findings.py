"""Sentences that state a finding, generated from the numbers they describe.

A chapter's prose explains; where it states what a run found ("the trained maps localise
better", "the normal image is recoloured almost exactly"), the sentence comes from here, with
the run it describes named, so it cannot drift from the figure or table beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from adlib.study.report import METRIC_NAMES


def versus(metric: str, values: Mapping[str, float], run: str, *, tie: float = 1.0) -> str:
    """Two (or more) models on one metric of one run, best first, and whether the first named
    beats the others by more than ``tie`` points (one seed: no interval, so a gap under ``tie``
    reads as level)."""
    name = METRIC_NAMES.get(metric, metric)
    (first, a), *rest = values.items()
    parts = ", ".join(f"{n} {v:.1f}" for n, v in sorted(values.items(), key=lambda kv: -kv[1]))
    verdicts = []
    for other, b in rest:
        gap = a - b
        word = "level with" if abs(gap) < tie else "above" if gap > 0 else "below"
        verdicts.append(f"{first} is {word} {other} ({gap:+.1f} points)")
    return f"{run}: {name} {parts}; {'; '.join(verdicts)}."


def map_contrast(amap, mask, border: int = 2) -> dict:
    """How an anomaly map treats a defect: its mean inside and outside the mask, their ratio,
    whether its maximum lies on the defect, and the maximum's distance from the image border."""
    amap = np.asarray(amap, dtype=float).squeeze()
    mask = np.asarray(mask).squeeze() > 0.5
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    h, w = amap.shape
    inside = float(amap[mask].mean()) if mask.any() else math.nan
    outside = float(amap[~mask].mean()) if (~mask).any() else math.nan
    edge = int(min(peak[0], peak[1], h - 1 - peak[0], w - 1 - peak[1]))
    return {"inside": inside, "outside": outside,
            "ratio": inside / outside if outside else math.inf,
            "peak_on_defect": bool(mask[peak]), "peak_from_border": edge,
            "peak_on_border": edge < border}


def map_sentence(name: str, amap, mask) -> str:
    """One line on where a map puts a defect, from :func:`map_contrast`."""
    c = map_contrast(amap, mask)
    where = ("on the defect" if c["peak_on_defect"] else
             f"off the defect, {c['peak_from_border']} px from the border")
    return (f"{name}: mean map {c['inside']:.3g} inside the defect vs {c['outside']:.3g} outside "
            f"({c['ratio']:.1f}x); its maximum lies {where}.")
