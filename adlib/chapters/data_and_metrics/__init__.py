"""Chapter 0: the data, the metrics and the nearest-neighbour baseline. See :mod:`adlib.chapters` for the files of a chapter."""
