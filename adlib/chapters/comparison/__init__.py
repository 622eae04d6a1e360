"""Chapter 6: every method side by side. See :mod:`adlib.chapters` for the files of a chapter."""
