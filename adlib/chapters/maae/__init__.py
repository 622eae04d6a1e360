"""Chapter 2: MAAE. See :mod:`adlib.chapters` for the files of a chapter."""
