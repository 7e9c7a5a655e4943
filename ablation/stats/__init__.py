"""Statistics over seeds, stated plainly: comparing an arm with the baseline (``compare``) and the adaptive seed rule
that adds seeds until a difference is resolved (``seed_rule``). Plain arithmetic and SciPy; no torch, no stores.

May import ``core`` and ``experiment`` (the seed rule's schema). Used by ``scheduler`` (the plan's seed rounds) and by
``report`` (the tables' tests and verdicts).
"""
