"""Training (ablation/engine/train.py): compiled training tracks eager training and saves plain checkpoints, and every
cell of a worker process gets its own compiled graph."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ablation.engine.train import compile_for_training
from ablation.tracking.names import TRAIN_LOSS
from ablation.tracking.tracker import MemoryTracker
from tests.engine.test_distributed import _job_config, _run_job, _tiny_cbam_resnet


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_checkpoints(tiny_npz, tmp_path):
    """train.compile=on: real torch.compile (inductor) of the training steps. The compiled run's metrics track
    the eager run's (the same function, fused differently: rounding-level differences), and its checkpoint holds
    the plain network's keys, so either mode can resume the other's run."""
    results, states = {}, {}
    for mode in ("off", "on"):
        config = _job_config(tiny_npz, epochs=1)
        config = config.model_copy(update={"train": config.train.model_copy(update={"compile": mode})})
        checkpoint = tmp_path / mode / "last.pt"
        results[mode] = _run_job(config, "tiny_resnet", checkpoint, MemoryTracker())
        states[mode] = torch.load(checkpoint, weights_only=True)["model"]
    assert set(states["on"]) == set(states["off"])
    assert not any(key.startswith("_orig_mod") for key in states["on"])
    eager, compiled = results["off"].history[-1], results["on"].history[-1]
    assert compiled[TRAIN_LOSS] == pytest.approx(eager[TRAIN_LOSS], rel=1e-3)


@pytest.mark.slow
def test_every_cell_of_a_worker_process_is_compiled() -> None:
    """A worker trains its cells one after another in one process. Past dynamo's recompile limit (8 model
    structures through the same forward code) a plain torch.compile silently runs later models eagerly; every
    cell must get its own compiled graph however many came before (a recording backend stands in for inductor)."""
    graphs: list[int] = []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    x = torch.randn(2, 3, 32, 32)
    structures = [(k, pools) for pools in (["avg"], ["max"], ["avg", "max"]) for k in (1, 3, 7)] + [(5, ["avg"])]
    for cell, (k, pools) in enumerate(structures, 1):  # ten different CBAM networks, more than the limit
        attention = {"type": "cbam", "reduction": 4, "kernel_size": k, "channel_pool": pools}
        model = _tiny_cbam_resnet(attention)
        before = len(graphs)
        compile_for_training(model, backend=record)(x)
        assert len(graphs) == before + 1, f"cell {cell} ({k}x{k}, {pools}) ran uncompiled"
