"""``make bench``: one run, one machine, ratios (absolute times are noise on shared machines).

One module per experiment, each registered in the table of ``load.bench.__main__``, which the
command line reads (``--only NAME``); the shared process helpers are in ``processes``. What
each ratio should reach is written in docs/performance.md, not here.
"""
