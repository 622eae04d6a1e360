"""Chapter 3: noise-to-norm (the M-net). See :mod:`adlib.chapters` for the files of a chapter."""
