"""The book's chapters, one package each, and what they share.

A chapter ``adlib/chapters/<key>/`` holds:

- ``model.py``: the paper's model, a :class:`~adlib.training.detector.Detector` subclass;
- ``study.py``: the code that makes rows -- ``protocol`` (a profile's defaults), ``detector``
  (the one factory: settings, seed, device -> a fresh detector) and ``run`` (a task's rows).
  Its import closure is the rows' code hash (:mod:`adlib.study.provenance`);
- ``card.py``: the declarations -- ``CHAPTER`` (the registry entry), grids, claim checks,
  titles, findings, deviations and ``STUDY``. Row code never imports it, so rewording a
  finding or declaring another cell stales no row;
- ``page.py``: the notebook's figures and tables (outside the code hash too);
- what else is the chapter's alone (chapter 1's ``bench.py``).

Shared here: :mod:`~adlib.chapters.registry` (every card, in book order), :mod:`~adlib.chapters.base`
(the ``Chapter``, ``Deviation`` and ``Finding`` a card declares), :mod:`~adlib.chapters.profiles`
(smoke / cpu / study / paper and the notebooks' setup call), :mod:`~adlib.chapters.warmup` and
:mod:`~adlib.chapters.gpucheck`.

This package imports nothing itself: it is a parent of every study module, so it is hashed.
"""
