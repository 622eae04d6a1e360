"""The one registry of papers: one key per paper, used everywhere.

The key names the paper in ``adlib/resources/paper_tables`` (CSV column ``paper``, ``## <key>`` in
claims.md), in :mod:`adlib.profiles`, in run records, in ``adlib/resources/results/<key>/`` and in
``python -m adlib study <key>``. A paper's study (its declared grids and claim checks) lives
in the module named by :attr:`Paper.study`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    """One paper of the book."""

    key: str
    title: str
    notebook: str | None = None   # the chapter's notebook in notebooks/, None until it exists
    study: str | None = None      # module declaring STUDY (grids, claim checks, runner)


PAPERS: dict[str, Paper] = {p.key: p for p in (
    Paper("cse_patch_svdd", "C-SE on Patch SVDD", "01_cse_patch_svdd.ipynb",
          "adlib.studies.cse_patch_svdd"),
    Paper("maae", "MAAE: mixed-attention autoencoder", "02_maae.ipynb", "adlib.studies.maae"),
    Paper("noise_to_norm", "Noise-to-norm M-net", "03_noise_to_norm.ipynb",
          "adlib.studies.noise_to_norm"),
    Paper("lea_net", "LEA-Net: colour anomaly maps as layer-wise external attention",
          "04_lea_net.ipynb", "adlib.studies.lea_net"),
    Paper("rlr", "RLR: learnable reference", "05_rlr.ipynb", "adlib.studies.rlr"),
)}


def get_paper(key: str) -> Paper:
    """The registry entry of ``key``; an unknown key raises ``KeyError`` listing the keys."""
    try:
        return PAPERS[key]
    except KeyError:
        msg = f"unknown paper {key!r}; the paper keys are {', '.join(PAPERS)}"
        raise KeyError(msg) from None
