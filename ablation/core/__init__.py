"""What every layer of the package may import: the error types users see (``errors``), one-line messages for the
person at the terminal (``console``), the named kill points of the fault-injection tests (``faults``) and the
strict base of every config schema (``strict``).

Imports nothing else of ``ablation``, and nothing heavy (no torch, MLflow or Optuna): a config error must reach the
terminal before any of those is imported.
"""
