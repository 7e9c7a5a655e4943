"""The Slurm part of ``status`` (ablation/slurm/status.py): each array task of a sweep beside its cells. Against a
real cluster: tests/slurm/cluster/test_array.py."""


def test_status_without_slurm_to_ask_says_so_and_does_not_call_the_tasks_gone(monkeypatch):
    import pandas as pd

    from ablation.scheduler.queue import JOBS
    from ablation.scheduler.status import render_status
    from ablation.slurm.status import render_arrays

    frame = pd.DataFrame([{"description": "CBAM", "seed": 0, "state": "pending", "attempts": 0, "worker": ""}])
    frame.attrs[JOBS] = [{"job_id": "77", "task_ids": ["77_0", "77_1"], "submitted": "2026-12-02T00:00:00+00:00"}]
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol here: a laptop, not the cluster
    text = render_status(frame) + render_arrays(frame)
    assert "Slurm array 77: Slurm does not answer here (scontrol); task states unknown" in text
    assert "no Slurm task of this sweep" not in text
