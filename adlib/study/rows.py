"""The append-only row store of a study folder (``rows.jsonl``) and its flat table."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from adlib.study.jsonable import jsonable

ROWS_FILE = "rows.jsonl"


#: Measurements of what a row cost, where its study records them (chapter 6): they depend on
#: the machine and its load, so they are reported, never compared bit for bit as metrics are.
COST_FIELDS = ("inference_seconds", "peak_memory_mb")

ROW_FIELDS = ("paper", "ablation", "config", "overrides", "seed", "category", "fold", "metrics",
              "train_seconds", "final_loss", "protocol", "hardware", "revision", "model_hash",
              "fingerprint", "dirty", "key", "created", "test_curve", "train_curve", *COST_FIELDS)

#: What a worker hands back of ``run``'s results (the fitted model stays in the worker).
RESULT_FIELDS = ("category", "fold", "metrics", "train_seconds", "final_loss", "test_curve",
                 "train_curve", *COST_FIELDS)


class RowStore:
    """The append-only ``rows.jsonl`` of a study folder.

    Each line is written and flushed to disk as its run finishes; a line cut short by a kill
    is skipped on reading (and the next append starts on a fresh line).
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / ROWS_FILE

    def load(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn last line of a killed study
            if isinstance(row, dict) and "key" in row:
                rows.append(row)
        return rows

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in rows)
        with self.path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    text = "\n" + text
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


def rows_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows as a flat table: the metrics become columns (image_auroc, pixel_auroc, ...)."""
    flat = []
    for row in rows:
        item = {k: v for k, v in row.items() if k not in ("metrics", "hardware", "protocol")}
        item.update(row.get("metrics") or {})
        item["final_loss"] = row.get("final_loss")
        flat.append(item)
    frame = pd.DataFrame(flat)
    if "final_loss" in frame:
        frame["final_loss"] = pd.to_numeric(frame["final_loss"], errors="coerce")
    return frame
