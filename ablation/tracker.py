"""The one interface through which a training job reports: metrics, tags and files.

Training code never talks to MLflow. It is handed a ``Tracker``: ``ablation.mlflow_store.MlflowTracker`` in a
sweep, ``MemoryTracker`` in tests and notebooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...


class MemoryTracker:
    """Keeps everything in lists: what a test inspects."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def series(self, key: str) -> list[float]:
        """Every logged value of ``key``, in logging order."""
        return [m[key] for _, m in self.metrics if key in m]
