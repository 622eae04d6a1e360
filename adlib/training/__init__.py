"""Fitting and scoring a detector, shared by every chapter.

- :mod:`adlib.training.detector`: the :class:`~adlib.training.detector.Detector` skeleton every
  chapter's model extends (fit / predict, parameter count, the untrained reference, timing).
- :mod:`adlib.training.train`: the one fit loop (device, seed, AMP, checkpoints, resume, early stop).
- :mod:`adlib.training.checkpoint`: what the fit loop saves and resumes from.
- :mod:`adlib.training.evaluation`: a detector trained and scored per category or unified; a
  study task's rows.
- :mod:`adlib.training.curves`: the test split scored after every epoch (reporting only).
- :mod:`adlib.training.features`: the frozen-backbone feature cache.
- :mod:`adlib.training.progress`: progress bars that stay quiet in workers.

This package imports nothing itself: a chapter's model importing the skeleton must not pull the
rest into its code hash.
"""
