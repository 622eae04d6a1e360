"""One module per chapter: the figures, tables and small experiments its notebook shows beside
its study. Nothing here makes a study row, so nothing here is in a study's code hash."""
