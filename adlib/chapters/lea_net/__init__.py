"""Chapter 4: LEA-Net. See :mod:`adlib.chapters` for the files of a chapter."""
