"""The trainer's reporting interface (ablation/tracking/tracker.py): the in-memory Tracker keeps one value per (metric,
step), the first one logged, as the MLflow one does."""

from pathlib import Path

from ablation.tracking.tracker import MemoryTracker


def test_a_step_logged_again_keeps_its_first_value():
    tracker = MemoryTracker()
    tracker.log_metrics({"val/top1_err": 40.0, "train/loss": 1.5}, step=1)
    tracker.log_metrics({"val/top1_err": 99.0, "train/loss": 9.9}, step=1)  # a replayed epoch
    tracker.log_metrics({"val/top1_err": 35.0}, step=2)
    tracker.log_metrics({"val/top1_err": 30.0})  # no step: a final metric
    assert tracker.series("val/top1_err") == [40.0, 35.0, 30.0]
    assert tracker.series("train/loss") == [1.5]
    assert [step for step, _ in tracker.metrics] == [1, 2, None]  # the replay added no entry
    assert tracker.has("val/top1_err", 1) and tracker.has("val/top1_err") and not tracker.has("train/loss", 2)


def test_artifacts_are_kept_with_their_folder(tmp_path):
    tracker = MemoryTracker()
    tracker.log_artifact(str(tmp_path / "config.yaml"))
    tracker.log_artifact(tmp_path / "curve.png", "plots")
    assert tracker.artifacts == [(tmp_path / "config.yaml", None), (tmp_path / "curve.png", "plots")]
    assert all(isinstance(path, Path) for path, _ in tracker.artifacts)
