"""One study engine for every chapter, split by job.

- :mod:`adlib.study.spec`: what a chapter declares (:class:`~adlib.study.spec.Study`, cells,
  tasks, the row key); the only part a study module imports, so the rest stays out of every
  study's code hash.
- :mod:`adlib.study.rows`: the append-only ``rows.jsonl`` store.
- :mod:`adlib.study.executors`: serial, local process pool, Slurm.
- :mod:`adlib.study.engine`: :func:`~adlib.study.engine.run_study` (plan, resume, stale rows).
- :mod:`adlib.study.report`: summaries, run records, the committed results the book reads.

This package imports nothing itself: a study module importing the spec must not pull the
engine into its hash.
"""
