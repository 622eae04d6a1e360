"""One module per chapter: its ``CHAPTER`` card (:class:`adlib.chapter.Chapter`, collected by
:mod:`adlib.papers`) and, for a paper, its declared study: grids, claim checks and runner (see
:mod:`adlib.study`). A helper module that is no chapter is named ``_<name>.py``."""
