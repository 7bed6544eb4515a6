"""``tracer-pl report``: reading runs' files, the tables, the plots and their statistics.

No Lightning, no transformers (a test enforces it).
"""
