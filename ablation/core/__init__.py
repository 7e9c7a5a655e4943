"""What every layer of the package may import: the error types users see (``errors``), one-line messages for the
person at the terminal (``console``), the named kill points of the fault-injection tests (``faults``), the
strict base of every config schema (``strict``), stop requests held off store writes (``stopping``), outages of
the machine or a store told apart from a cell's own failures (``outages``) and the bounded, spoken wait for a store
that is down (``patience``).

Imports nothing else of ``ablation``, and nothing heavy (no torch, MLflow or Optuna): a config error must reach the
terminal before any of those is imported.
"""
