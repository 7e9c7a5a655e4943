"""Slot planning (ablation/scheduler/slots.py) with simulated devices (no GPU needed), and impossible requests."""

import pytest

from ablation.core.errors import ConfigError
from ablation.scheduler.slots import parse_workers, plan_slots


def test_four_gpus_two_cells_per_gpu_two_gpus_per_cell():
    slots = plan_slots(None, num_gpus=4, cpu_count=16, jobs_per_gpu=2, gpus_per_job=2)
    assert [s.gpus for s in slots] == [(0, 1), (2, 3), (0, 1), (2, 3)]
    assert {s.threads for s in slots} == {4}
    assert slots[1].environment()["CUDA_VISIBLE_DEVICES"] == "2,3"
    # Every GPU carries exactly jobs_per_gpu cells.
    load = {g: sum(g in s.gpus for s in slots) for g in range(4)}
    assert load == {0: 2, 1: 2, 2: 2, 3: 2}


def test_one_worker_per_gpu_and_fewer_workers_spread_first():
    assert [s.gpus for s in plan_slots(None, num_gpus=3, cpu_count=12)] == [(0,), (1,), (2,)]
    assert [s.gpus for s in plan_slots(2, num_gpus=2, cpu_count=8, jobs_per_gpu=3)] == [(0,), (1,)]


def test_cpu_workers_split_the_cores_and_see_no_gpu():
    slots = plan_slots(2, num_gpus=0, cpu_count=8)
    assert [(s.gpus, s.threads) for s in slots] == [((), 4), ((), 4)]
    assert slots[0].environment()["CUDA_VISIBLE_DEVICES"] == ""
    assert plan_slots(None, num_gpus=0, cpu_count=8)[0].threads == 8
    # A user's OMP_NUM_THREADS caps each worker's threads (a shared machine), not the number of workers.
    assert [s.threads for s in plan_slots(2, num_gpus=0, cpu_count=8, thread_cap=1)] == [1, 1]
    assert [s.threads for s in plan_slots(2, num_gpus=0, cpu_count=8, thread_cap=16)] == [4, 4]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(workers=5, num_gpus=4), "--workers"),
        (dict(workers=None, num_gpus=2, gpus_per_job=4), "--gpus-per-job"),
        (dict(workers=None, num_gpus=0, gpus_per_job=2), "--gpus-per-job"),
        (dict(workers=3, num_gpus=0, cpu_count=2), "--workers"),
        (dict(workers=None, num_gpus=1, jobs_per_gpu=0), "--jobs-per-gpu"),
    ],
)
def test_impossible_slot_requests_are_one_line_errors(kwargs, key):
    kwargs.setdefault("cpu_count", 8)
    with pytest.raises(ConfigError) as info:
        plan_slots(**kwargs)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        parse_workers("many")
