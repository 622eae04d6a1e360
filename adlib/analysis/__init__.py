"""From rows to numbers and verdicts: metrics and statistics.

- :mod:`adlib.analysis.metrics`: image / pixel AUROC, AUPRO, F1 (checked against references).
- :mod:`adlib.analysis.stats`: intervals with the category as the unit, their coverage, Holm,
  equivalence bounds.
- :mod:`adlib.analysis.claims`: declared claim checks and their verdicts.
- :mod:`adlib.analysis.compare`: chapter 6's ranks over categories (Friedman, Nemenyi, Wilcoxon).
- :mod:`adlib.analysis.findings`: sentences generated from the numbers they describe.
- :mod:`adlib.analysis.bench`: the metric and baseline benchmarks (``python -m adlib bench``).

This package imports nothing itself.
"""
