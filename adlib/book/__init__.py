"""The book and its pages: what a reader sees.

- :mod:`adlib.book.builder`: executes the notebooks and writes the generated pages.
- :mod:`adlib.book.verdicts`: the verdict box, the claims tables, the findings.
- :mod:`adlib.book.viz`, :mod:`adlib.book.figures`, :mod:`adlib.book.diagrams`: plots, figure
  sizes, architecture diagrams drawn from a model's modules.
- :mod:`adlib.book.pageaudit`: the built book read in headless Chromium, as a reader sees it.

A chapter's own figures and tables live in its ``page`` module (:mod:`adlib.chapters`).
This package imports nothing itself.
"""
