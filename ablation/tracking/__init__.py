"""Where results go and how the stores are reached: every name that reaches MLflow (``names``), the one interface
training reports through with its in-memory implementation (``tracker``), the MLflow layout of sweeps and the
results record a table is read from (``mlflow_store``, ``results``), and probes and locks for both stores
(``stores``).

May import ``core`` and ``experiment``. Knows nothing of how cells are scheduled or trained.
"""
