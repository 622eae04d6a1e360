"""Chapter 1: C-SE on Patch SVDD. See :mod:`adlib.chapters` for the files of a chapter."""
