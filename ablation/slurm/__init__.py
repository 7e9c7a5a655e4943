"""A sweep's workers as a Slurm job array: submitting it or writing its script (``submit``), one array task that
runs a worker and requeues itself near its time limit (``task``), and what Slurm says about the arrays (``state``).

May import ``core``, ``experiment``, ``tracking`` and ``scheduler``. ``task`` imports nothing heavy: it runs on the node
in submitit's process, and the worker is its child process.
"""
