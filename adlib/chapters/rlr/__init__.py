"""Chapter 5: RLR, the learnable reference. See :mod:`adlib.chapters` for the files of a chapter."""
