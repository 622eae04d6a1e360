"""Each paper's declared study: its grids, claim checks and runner (see :mod:`adlib.study`)."""
