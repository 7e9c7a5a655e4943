"""The worker's epoch lines: a wrapper over any Tracker that prints fresh epochs only (claims and scheduling:
tests/scheduler/test_local.py, tests/scheduler/test_queue.py, tests/tracking/test_stores.py)."""

from __future__ import annotations

import pytest
import torch

from ablation.data.catalog import dataset_info
from ablation.engine.train import seed_everything, train_job
from ablation.experiment.grid import Arm, build_network
from ablation.scheduler.worker import EpochLines
from ablation.tracking.names import EPOCH_METRICS, EPOCH_TIME, FINAL_TOP1_ERR_LAST, TRAIN_LOSS, VAL_TOP1_ERR
from ablation.tracking.tracker import MemoryTracker
from tests.support.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _epoch(top1: float) -> dict[str, float]:
    return {TRAIN_LOSS: 1.5, VAL_TOP1_ERR: top1, EPOCH_TIME: 0.25}


def test_epoch_lines_print_each_fresh_epoch_once_over_a_memory_tracker() -> None:
    inner, lines = MemoryTracker(), []
    tracker = EpochLines(inner, "[w] cell", lines.append)
    tracker.log_metrics(_epoch(40.0), step=1)
    tracker.log_metrics(_epoch(99.0), step=1)  # replayed: the tracker keeps the first value, and no line
    tracker.log_metrics({FINAL_TOP1_ERR_LAST: 40.0})  # no step: not an epoch
    assert lines == ["[w] cell epoch 1: train loss 1.500, val top-1 err 40.00% (0.2s)"]
    assert inner.series(VAL_TOP1_ERR) == [40.0]
    assert tracker.has(VAL_TOP1_ERR, 1) and not tracker.has(VAL_TOP1_ERR, 2)


def test_a_resumed_job_prints_no_line_for_its_replayed_epochs(tiny_npz, tmp_path) -> None:
    config = tiny_config(tiny_npz, epochs=2)
    info = dataset_info(config.data)
    inner, lines = MemoryTracker(), []
    tracker = EpochLines(inner, "[w] tiny", lines.append)

    def attempt(stop: int | None):
        seed_everything(config.seed, torch.device("cpu"))
        return train_job(
            config,
            model=build_network(Arm(0, "tiny", {}, config, info, None)),
            info=info,
            device=torch.device("cpu"),
            checkpoint_path=tmp_path / "last.pt",
            tracker=tracker,
            progress=False,
            stop_after_epochs=stop,
        )

    assert not attempt(stop=1).completed
    assert [line.split(":")[0] for line in lines] == ["[w] tiny epoch 1"]
    result = attempt(stop=None)  # replays epoch 1 from the checkpoint into the tracker, then trains epoch 2
    assert result.completed and result.resumed_from_epoch == 1
    assert [line.split(":")[0] for line in lines] == ["[w] tiny epoch 1", "[w] tiny epoch 2"]
    assert [step for step, metrics in inner.metrics if set(EPOCH_METRICS) <= set(metrics)] == [1, 2]
