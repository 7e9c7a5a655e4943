"""An ablation-study harness for CBAM (Woo et al., ECCV 2018): every ablation axis, the paper's backbones, sweeps
scheduled onto devices and machines, tracked in MLflow, and paper-style tables.

From Python (``ablation.api``)::

    import ablation

    result = ablation.sweep("demo", overrides={"train.epochs": 2})
    result.table(), result.runs()
    ablation.results("demo").runs()

The package is folders by role, each importing only those below it (README, "Where things live"; checked by
tests/test_layout.py): ``core``; ``attention`` and ``data``; ``models``; ``experiment``; ``stats`` and ``tracking``;
``engine``; ``report``; ``scheduler``; ``slurm``; and on top the command line (``cli``, ``python -m ablation``, the
installed ``ablation``) and the Python API (``api``). Importing the package imports nothing else: the API and the
error types load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below are, for type checkers and editors; loaded on first use at run time
    from ablation.api import SweepResult, results, sweep
    from ablation.core.errors import ConfigError, StoreError, UsageError
    from ablation.core.outages import Outage

# Name -> the module that defines it (PEP 562): ``import ablation`` stays instant, a config error is still one line
# before torch is imported, and ``ablation.sweep(...)`` works without importing anything by hand.
_LAZY = {
    "sweep": "ablation.api",
    "results": "ablation.api",
    "SweepResult": "ablation.api",
    "ConfigError": "ablation.core.errors",
    "StoreError": "ablation.core.errors",
    "UsageError": "ablation.core.errors",
    "Outage": "ablation.core.outages",
}
__all__ = ["ConfigError", "Outage", "StoreError", "SweepResult", "UsageError", "results", "sweep"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ablation' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
