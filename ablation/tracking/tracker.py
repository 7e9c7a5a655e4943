"""The one interface through which a training job reports: metrics, tags and files.

Training code never talks to MLflow. It is handed a ``Tracker``: ``ablation.tracking.mlflow_store.MlflowTracker`` in a
sweep, ``MemoryTracker`` in tests and notebooks, or a wrapper of either (``ablation.scheduler.worker.EpochLines``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    """A tracker keeps one value per (metric, step): logging a step again (a resumed job replays the epochs of its
    checkpoint, in case a kill cut their logging off) leaves the first value. ``has`` tells whether a value is
    kept already, so a wrapper can tell a fresh epoch from a replayed one."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def has(self, metric: str, step: int | None = None) -> bool: ...


class MemoryTracker:
    """Keeps everything in lists: what a test inspects."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        fresh = {key: value for key, value in metrics.items() if not self.has(key, step)}
        if fresh:
            self.metrics.append((step, fresh))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def has(self, metric: str, step: int | None = None) -> bool:
        return any(s == step and metric in m for s, m in self.metrics)

    def series(self, key: str) -> list[float]:
        """Every logged value of ``key``, in logging order."""
        return [m[key] for _, m in self.metrics if key in m]
