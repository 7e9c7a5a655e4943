"""System metrics of a cell's run (CPU, memory, disk, network; GPU utilisation and memory where a GPU is there),
logged by MLflow's own ``SystemMetricsMonitor`` under ``system/``, as every tracking tool users know shows them.

MLflow's own settings apply: ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off,
``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` sets the interval (10 s here unless set: what a sample costs is measured
by ``benchmarks/system_metrics.py``), and GPU metrics need ``nvidia-ml-py`` (the ``[gpu]`` extra). A monitor
that cannot start is one line, never a failed run; stopping it waits at most ``STOP_JOIN_S`` (nothing once a stop
was requested), so a store that went away cannot hold a cell's end. A resumed run goes on from its last step.

A tracking store that does not answer for a while (a tracking server restarted) neither ends the monitor nor loses
its samples: MLflow's own loop returns for good at the first failed call, which left a run with no system metrics
from the outage to the cell's end (seen in tests/test_multinode_slurm.py's fault 3). ``_monitor_class`` keeps it
going; the samples whose logging failed stay in MLflow's batch logger, which sends them with its next flush.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ablation.core.console import say
from ablation.core.stopping import stop_requested
from ablation.tracking.stores import with_busy_timeout

ENABLE = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
INTERVAL = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
STOP_JOIN_S = 2.0


def enabled() -> bool:
    """On unless the user turned MLflow's system metrics off."""
    return os.environ.get(ENABLE, "true").strip().lower() not in ("false", "0", "no", "off")


class SystemMetrics:
    """The monitor of one run, started with the cell's training and stopped when it ends."""

    def __init__(self, run_id: str, tracking_uri: str, resume: bool, tell: Callable[[str], None] = say) -> None:
        self.run_id, self.tracking_uri, self.resume, self.tell = run_id, tracking_uri, resume, tell
        self._monitor = None

    def start(self) -> SystemMetrics:
        if not enabled():
            return self
        try:
            # Its start-up and GPU probing log at INFO through MLflow's logger: not a line per cell at the terminal.
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            interval = float(os.environ.get(INTERVAL) or DEFAULT_INTERVAL_S)
            monitor = _monitor_class()(
                self.run_id,
                sampling_interval=interval,
                resume_logging=self.resume,
                tracking_uri=with_busy_timeout(self.tracking_uri),
            )
            monitor.start()
            self._monitor = monitor
        except Exception as exc:  # a machine without what the monitor reads: the run goes on without system metrics
            self.tell(f"[cell] no system metrics for run {self.run_id}: {' '.join(str(exc).split())[:200]}")
        return self

    def stop(self, publish: bool = True) -> None:
        """Stop sampling and log the samples not yet logged (``publish=False``: drop them, the run being another
        worker's now)."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        monitor._shutdown_event.set()
        thread = monitor._process
        if thread is not None:
            thread.join(timeout=0 if stop_requested() else STOP_JOIN_S)
        if not publish or stop_requested() or (thread is not None and thread.is_alive()):
            return  # a store that does not answer: the samples not yet logged are dropped, the cell is not held
        try:
            # The samples taken since the last logged step (MLflow's monitor logs only after a full interval): a
            # cell shorter than the interval still gets its one step.
            pending = monitor.aggregate_metrics()
            if pending:
                monitor.publish_metrics(pending)
            monitor.mlflow_logger.flush()
        except Exception as exc:  # the last samples only; never the run's own results
            self.tell(f"[cell] system metrics of run {self.run_id} not all logged: {' '.join(str(exc).split())[:200]}")


def _monitor_class():
    """MLflow's SystemMetricsMonitor with a loop that outlasts a tracking store's outage (see the module's text)."""
    # MLflow's monitor imports psutil (and pynvml for GPUs): only where a cell runs
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking.client import MlflowClient

    class OutageProofMonitor(SystemMetricsMonitor):
        def monitor(self) -> None:
            # MLflow's loop, except for what it does when a call fails.
            while not self._shutdown_event.is_set():
                for _ in range(self.samples_before_logging):
                    self.collect_metrics()
                    if self._shutdown_event.wait(self.sampling_interval):
                        return  # stop() logs what was sampled
                    try:
                        status = MlflowClient(self._tracking_uri).get_run(self._run_id).info.status
                    except Exception:  # the store does not answer: the run goes on, and so does sampling
                        status = "RUNNING"
                    if status != "RUNNING":  # ended elsewhere (another worker took the cell): nothing more to add
                        return
                try:
                    self.publish_metrics(self.aggregate_metrics())
                except Exception:
                    # publish_metrics records the step's samples in the batch logger before a flush fails, and
                    # moves on to the next step only after: move on here, so that no step is recorded twice; the
                    # logger keeps what it could not send and sends it with its next flush.
                    self._logging_step += 1
                    for each in self.monitors:
                        each.clear_metrics()

    return OutageProofMonitor
