"""What people look at: the paper-style table of a sweep and its files (``table``, with a planned sweep's tuning and
seed-rule columns from ``planned``; the summary's columns are declared once in ``columns``), figures (``plots``,
``tuning_plots``), Grad-CAM maps (``gradcam``) and the params / GMACs profile beside the paper's (``profile``).

Reads results, never the scheduler: a table is drawn from the results record in the tracking store
(``tracking.results``), whatever became of the sweep's Optuna storage. May import ``core``, ``attention``,
``models``, ``data``, ``experiment``, ``tracking``, ``engine`` and ``stats``; never ``scheduler`` or ``slurm``.
"""
