"""``runner.py status`` (ablation/scheduler/status.py): a sweep with no state in the stores reads as None and creates no
store; the summary line counts the cells by state."""

import pandas as pd

from ablation.experiment.prepared import read_only_sweep
from ablation.experiment.schema import load_experiment
from ablation.scheduler.status import render_status, sweep_status
from tests.support.tiny import tiny_experiment


def test_stores_that_do_not_exist_are_not_created(tmp_path, tiny_npz, write_experiment):
    prepared = read_only_sweep(load_experiment(write_experiment(tiny_experiment(tiny_npz, "  train.lr: [0.05]"))))
    storage, tracking = f"sqlite:///{tmp_path / 'sweeps.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert sweep_status(prepared, storage, tracking) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_summary_counts_every_state():
    frame = pd.DataFrame(
        {
            "description": ["ResNet18", "ResNet18", "ResNet18 + CBAM", "ResNet18 + CBAM"],
            "seed": [0, 1, 0, 1],
            "state": ["done", "failed", "done", "running"],
        }
    )
    text = render_status(frame)
    assert text.endswith("\n\n4 cells: 0 pending, 1 running, 2 done, 1 failed\n")
    assert text.splitlines()[0].split() == ["description", "seed", "state"]
    assert len(text.splitlines()) == 1 + 4 + 2
