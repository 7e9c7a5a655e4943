"""System metrics of a cell's run through MLflow's own monitor (ablation/tracking/system_metrics.py): on by default,
off with MLflow's own setting, logged into a real store, a last step for a run shorter than the interval, and a stop
that never waits for the monitor."""

from __future__ import annotations

import contextlib
import time

import pytest
from mlflow import MlflowClient

from ablation.core.stopping import request_stop, reset_stop
from ablation.tracking.mlflow_store import HTTP_DEFAULTS
from ablation.tracking.names import SYSTEM_METRICS_PREFIX
from ablation.tracking.system_metrics import ENABLE, INTERVAL, SystemMetrics, enabled
from tests.support.folders import in_folder
from tests.support.mlflow_server import MlflowServer


@pytest.mark.parametrize(("value", "on"), [(None, True), ("true", True), ("false", False), ("0", False)])
def test_mlflows_own_setting_turns_it_off(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(ENABLE, raising=False)
    else:
        monkeypatch.setenv(ENABLE, value)
    assert enabled() is on


def _run(tmp_path) -> tuple[MlflowClient, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with in_folder(tmp_path):
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("sysmetrics"))
    return client, uri, run.info.run_id


def test_a_run_shorter_than_the_interval_still_gets_its_step_and_a_resumed_one_goes_on(tmp_path, monkeypatch):
    monkeypatch.delenv(ENABLE, raising=False)
    monkeypatch.setenv(INTERVAL, "30")  # longer than the run: only the stop logs what was sampled
    client, uri, run_id = _run(tmp_path)
    SystemMetrics(run_id, uri, resume=False, tell=pytest.fail).start().stop()
    SystemMetrics(run_id, uri, resume=True, tell=pytest.fail).start().stop()  # a resumed attempt
    metrics = client.get_run(run_id).data.metrics
    cpu = f"{SYSTEM_METRICS_PREFIX}cpu_utilization_percentage"
    assert cpu in metrics and f"{SYSTEM_METRICS_PREFIX}system_memory_usage_megabytes" in metrics
    assert [m.step for m in client.get_metric_history(run_id, cpu)] == [0, 1]  # the resumed one goes on


def test_a_stop_request_does_not_wait_for_the_monitor(tmp_path, monkeypatch):
    monkeypatch.setenv(INTERVAL, "30")
    _, uri, run_id = _run(tmp_path)
    monitor = SystemMetrics(run_id, uri, resume=False).start()
    with contextlib.suppress(KeyboardInterrupt):  # outside a protected block the request raises at once
        request_stop()
    began = time.monotonic()
    monitor.stop()
    reset_stop()
    assert time.monotonic() - began < 1.0


def test_a_monitor_that_cannot_start_is_one_line_not_a_failed_run(monkeypatch):
    monkeypatch.delenv(ENABLE, raising=False)
    monkeypatch.setenv(INTERVAL, "not a number")
    said = []
    SystemMetrics("some-run", "sqlite:///nowhere.db", resume=False, tell=said.append).start().stop()
    assert len(said) == 1 and said[0].startswith("[cell] no system metrics for run some-run: ")


@pytest.mark.slow
def test_a_tracking_server_away_for_several_samples_neither_ends_the_monitor_nor_loses_or_repeats_a_step(
    tmp_path, monkeypatch
):
    """MLflow's own loop ends at the first call the server does not answer: after an outage a run had no system
    metrics to its end. Here sampling goes on through the outage, and every step is logged once when it is back."""
    monkeypatch.delenv(ENABLE, raising=False)
    monkeypatch.setenv(INTERVAL, "0.5")
    for name, value in HTTP_DEFAULTS.items():  # as a worker sets them: no minutes of silent retries inside MLflow
        monkeypatch.setenv(name, value)
    server = MlflowServer(tmp_path / "server").start()
    try:
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("sysmetrics")).info.run_id
        cpu = f"{SYSTEM_METRICS_PREFIX}cpu_utilization_percentage"
        steps = lambda: [m.step for m in client.get_metric_history(run_id, cpu)]  # noqa: E731
        monitor = SystemMetrics(run_id, server.uri, resume=False, tell=pytest.fail).start()
        _wait_until(lambda: len(steps()) >= 2, "two steps before the outage")
        server.stop()
        time.sleep(3)  # six intervals with no server
        assert monitor._monitor._process.is_alive()
        server.start()
        logged_before = len(steps())
        _wait_until(lambda: len(steps()) >= logged_before + 8, "the outage's samples and more after it")
        monitor.stop()
        logged = steps()
    finally:
        server.stop()
    assert sorted(logged) == list(range(len(logged))), logged  # no step lost, none twice


def _wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
