"""Chapter 0, the data and the metrics: its card only (it reproduces no paper, so it has no study)."""

from __future__ import annotations

from adlib.chapters.base import Chapter, Compared

CHAPTER = Chapter(
    key="data_and_metrics", title="The data, the metrics and a nearest-neighbour baseline",
    notebook="00_data_and_metrics.ipynb", short="Data and metrics", paper=False,
    summary="the data, the metrics, a simple nearest-neighbour baseline",
    model="adlib.chapters.data_and_metrics.model",
    profiles={"cpu": {"image_size": 128}, "study": {"image_size": 256},
              "paper": {"image_size": 256}},
    compared={"kNN": Compared(untrained=None)},   # a memory bank: nothing to train
)
