"""Checkpoints: written durably with their predecessor kept; one that does not load or is not this job's is named in
one line, moved aside (kept) and never obeyed; the job resumes from the last good one or starts cleanly, and its
tracker holds every epoch once with the values of an uninterrupted run."""

import pytest
import torch

from ablation.data.catalog import dataset_info
from ablation.engine.checkpoint import load_resumable, previous_path, save_checkpoint
from ablation.engine.train import seed_everything, train_job
from ablation.experiment.grid import build_network
from ablation.experiment.schema import config_hash
from ablation.tracking.names import LR, TRAIN_LOSS, TRAIN_TOP1_ERR, VAL_LOSS, VAL_TOP1_ERR, VAL_TOP5_ERR
from ablation.tracking.tracker import MemoryTracker
from tests.support.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

COMPARED = (TRAIN_LOSS, TRAIN_TOP1_ERR, VAL_LOSS, VAL_TOP1_ERR, VAL_TOP5_ERR, LR)


def _config(npz, epochs=3, seed=0):
    return tiny_config(npz, epochs, seed=seed)


def _train(config, checkpoint, tracker, lines=None, run_id=None, stop=None):
    info = dataset_info(config.data)
    seed_everything(config.seed, torch.device("cpu"))
    from ablation.experiment.grid import Arm

    arm = Arm(0, "tiny", {}, config, info, None)
    return train_job(
        config,
        model=build_network(arm),
        info=info,
        device=torch.device("cpu"),
        checkpoint_path=checkpoint,
        tracker=tracker,
        progress=False,
        stop_after_epochs=stop,
        run_id=run_id,
        say=(lines.append if lines is not None else print),
    )


@pytest.fixture(scope="module")
def straight(tiny_npz, tmp_path_factory):
    """An uninterrupted 3-epoch run: the reference every recovered run must equal."""
    tracker = MemoryTracker()
    _train(_config(tiny_npz), tmp_path_factory.mktemp("straight") / "last.pt", tracker)
    return tracker


def _steps(tracker, key=VAL_TOP1_ERR):
    return [step for step, metrics in tracker.metrics if key in metrics]


def _assert_equals_straight(tracker, straight):
    for key in COMPARED:
        assert _steps(tracker, key) == [1, 2, 3], key  # every epoch once, in order
        assert tracker.series(key) == straight.series(key), key


def test_the_previous_checkpoint_is_kept_and_a_save_is_atomic(tmp_path):
    path = tmp_path / "cell" / "last.pt"
    for epoch in (1, 2):
        save_checkpoint(path, {"config_hash": "k", "epoch": epoch})
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert torch.load(previous_path(path), weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.previous.pt", "last.pt"]  # no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled-object", "another-cell", "another-run"])
def test_a_bad_last_checkpoint_is_set_aside_and_the_job_resumes_from_the_previous(damage, tiny_npz, tmp_path, straight):
    config = _config(tiny_npz)
    path = tmp_path / "last.pt"
    tracker, lines = MemoryTracker(), []
    _train(config, path, tracker, lines, run_id="run-a", stop=2)  # epochs 1 and 2 logged; last = 2, previous = 1
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 64)
    elif damage == "pickled-object":  # a full pickle, which only an unsafe load would run
        torch.save({"format_version": 1, "epoch": 2, "evil": torch.nn.Linear(1, 1)}, path)
    elif damage == "another-cell":
        state = torch.load(path, weights_only=True)
        torch.save({**state, "config_hash": config_hash(_config(tiny_npz, seed=1))}, path)
    elif damage == "another-run":
        state = torch.load(path, weights_only=True)
        torch.save({**state, "run_id": "run-of-a-deleted-store"}, path)

    result = _train(config, path, tracker, lines, run_id="run-a")

    (line,) = [line for line in lines if "moved to" in line]
    assert str(path) in line and "weights_only" not in line
    expected = {
        "truncated": "does not load",
        "garbage": "does not load",
        "pickled-object": "refuses",
        "another-cell": "belongs to cell",
        "another-run": "belongs to MLflow run run-of-a-deleted-store",
    }[damage]
    assert expected in line, line
    aside = list((tmp_path / "set-aside").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("last.pt.")  # kept for inspection, not deleted
    assert result.resumed_from_epoch == 1 and any("previous checkpoint (epoch 1)" in line for line in lines)
    assert result.completed
    _assert_equals_straight(tracker, straight)  # epoch 2 ran again but was not logged again


@pytest.mark.slow
def test_with_no_good_checkpoint_left_the_job_restarts_cleanly(tiny_npz, tmp_path, straight):
    config = _config(tiny_npz)
    path = tmp_path / "last.pt"
    tracker, lines = MemoryTracker(), []
    _train(config, path, tracker, lines, stop=2)
    path.write_bytes(b"\0" * 100)
    previous_path(path).write_bytes(b"")  # disk full while writing it, say
    result = _train(config, path, tracker, lines)
    assert sum("moved to" in line for line in lines) == 2
    assert result.resumed_from_epoch == 0 and result.completed
    _assert_equals_straight(tracker, straight)


def test_a_writer_killed_mid_write_leaves_no_file_that_is_read(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config_hash": "k", "epoch": 1, "model": {}, "optimizer": {}, "history": []})
    (tmp_path / "last.pt.tmp999999999").write_bytes(b"half a checkpoint")  # a dead writer's temporary
    lines = []
    state = load_resumable(path, key="k", run_id=None, apply=lambda s: None, say=lines.append)
    assert state["epoch"] == 1 and lines == []
    assert not list(tmp_path.glob("*.tmp*"))  # the dead writer's temporary is gone


def test_a_write_on_a_full_disk_says_so_and_leaves_the_previous_checkpoints_whole(tmp_path):
    """The disk fills up between two epochs: the failed write raises the file system's own error naming the file
    (not torch's 'unexpected pos'), leaves no partial file, and the checkpoints already there load as they were."""
    import errno

    from tests.support.disks import fill, small_disk

    state = {"config_hash": "k", "epoch": 1, "model": {"w": torch.arange(20000.0)}, "optimizer": {}, "history": []}
    with small_disk(tmp_path / "disk", 512) as disk:
        path = disk / "cell" / "last.pt"
        save_checkpoint(path, state)
        save_checkpoint(path, {**state, "epoch": 2})
        fill(disk, leave_bytes=4096)
        with pytest.raises(OSError) as raised:
            save_checkpoint(path, {**state, "epoch": 3})
        assert raised.value.errno == errno.ENOSPC and str(path.parent) in str(raised.value.filename)
        assert sorted(p.name for p in path.parent.iterdir()) == ["last.previous.pt", "last.pt"]  # no temporary left
        assert torch.load(path, weights_only=True)["epoch"] == 2
        assert torch.load(previous_path(path), weights_only=True)["epoch"] == 1
        applied = []
        resumed = load_resumable(path, key="k", run_id=None, apply=applied.append)
        assert resumed is not None and resumed["epoch"] == 2 and applied
