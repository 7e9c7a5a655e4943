"""Scheduling a sweep's cells onto workers: the queue in an Optuna storage (``queue``), joining a sweep and checking
its state against the tracking store (``state``), one cell in its MLflow run (``cell``), the worker loop
(``worker``), the options and command lines of worker processes (``launch``), device slots (``slots``), a sweep on
this machine (``local``), its status (``status``), and a planned sweep's cells added as results come in (``plan``,
with each arm's Optuna study in ``tuning``).

May import every layer below it: ``core``, ``attention``, ``models``, ``data``, ``experiment``, ``tracking``,
``engine``, ``stats`` and ``report`` (a cell's learning curve). Named ``scheduler``, not ``sweep``: ``ablation.sweep``
is the Python API's function (``ablation.api``). Never imported by ``report``: tables read results, not the
scheduler.
"""
