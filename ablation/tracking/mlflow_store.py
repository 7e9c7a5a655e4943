"""Where sweeps live in MLflow: one experiment per experiment file, a parent run per sweep, a child per cell.

Layout (what the dashboard and ``runner.py table`` read; every name is a constant of ``ablation.tracking.names``):
- MLflow experiment = the experiment file's ``name``; tags ``ablation.title``, ``ablation.source``. Its id and
  creation time make the store's ``fingerprint``, which the sweep's state is bound to (``ablation.scheduler.queue``): a
  deleted and recreated store, or another one, is never mistaken for the one a sweep ran against.
- parent run (``ablation.role=sweep``), named after the experiment, keyed by the set of its cells.
- child run per cell (``ablation.role=cell``, ``mlflow.parentRunId``), named after its table row and seed;
  params: the flattened resolved config; tags: the grid axes (``axis.<key>``), ``ablation.seed``,
  ``ablation.config_hash`` (the cell's key: config, seed and data identity), ``ablation.data_identity``,
  ``ablation.arm``, ``ablation.description``; per-epoch metrics from the trainer, one value per step; final
  metrics ``final/*``; artifacts: the resolved config, the environment, the learning curve, the checkpoint on
  request; the dataset as the run's input.
A cell is identified by its config hash, so a rerun finds it whatever parent it ran under.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from ablation.core.errors import StoreError
from ablation.core.patience import Patient, StoreWaiter
from ablation.core.stopping import Protected, stop_requested, when_stopping
from ablation.experiment.grid import Cell
from ablation.experiment.schema import Experiment, flatten
from ablation.tracking.names import (
    ARM,
    ATTENTION,
    ATTENTION_SOURCE,
    BACKBONE_SOURCE,
    CELL_SPEC,
    CELLS,
    CONFIG_HASH,
    DATA_IDENTITY,
    DATASET_CONTEXT,
    DESCRIPTION,
    EXPERIMENT,
    EXPERIMENT_KIND,
    FAILURE,
    LEGACY_HASH,
    NOTE,
    PARENT_RUN,
    PHASE,
    PHASE_FINAL,
    PHASE_TUNE,
    RECIPE,
    ROLE,
    ROLE_CELL,
    ROLE_SWEEP,
    SEED,
    SOURCE,
    SWEEP_KEY,
    TITLE,
    TUNE_STUDY,
    TUNE_TRIAL,
    axis_tag,
    role_filter,
)
from ablation.tracking.stores import exclusive, sqlite_path, with_busy_timeout

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow 3.17's UI picks the view from the link (or the browser's last choice) and ignores the tag: links we print
# carry the view, so they open on the runs table.
RUNS_VIEW = "runs?workflowType=machine_learning"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's own local SQLite store ``mlflow.db``."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class MlflowTracker:
    """The trainer's Tracker for one MLflow run: one value per (metric, step), whatever is logged again.

    A reopened run (an interrupted cell resumed) already holds the steps its earlier attempts logged; they are
    read once, and logging any of them again is skipped, so a resumed or replayed epoch never appears twice.
    """

    def __init__(self, client: MlflowClient, run_id: str, reopened: bool = False) -> None:
        self.client, self.run_id = client, run_id
        self.logged: set[tuple[str, int]] = set()
        if reopened:
            for key in client.get_run(run_id).data.metrics:
                self.logged.update((key, m.step) for m in client.get_metric_history(run_id, key))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now, step = int(time.time() * 1000), step or 0
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if (k, step) not in self.logged]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)
            self.logged.update((m.key, step) for m in batch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def has(self, metric: str, step: int | None = None) -> bool:
        return (metric, step or 0) in self.logged


class SweepStore:
    """The MLflow side of one experiment's sweeps.

    Opened for reading by default (``table``, ``status``, ``gradcam``, and their logging to an existing parent
    run): nothing is created or tagged, a SQLite store that does not exist is a one-line StoreError
    instead of a new empty file, and an experiment that is not in the store (``exists`` False) has no runs and
    no parent run. ``create=True`` (whatever runs cells: ``ablation.scheduler.state.join_sweep``, a ``run-cell`` launch)
    creates the experiment when it is missing and marks it as a model-training experiment.
    """

    def __init__(self, tracking_uri: str, experiment: Experiment, create: bool = False) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        # Tags every run this store creates carries besides its own: MLflow's source tags (set by whatever runs
        # cells: ablation.scheduler.state.join_sweep, from ablation.engine.environment.source_tags).
        self.run_tags: dict[str, str] = {}
        path = sqlite_path(tracking_uri)
        if not create and path is not None and not path.exists():
            raise StoreError(
                "--tracking-uri", tracking_uri, "holds no tracking store (no such file); is it the one the sweep used?"
            )
        # Creating the schema of a new store, and the experiment in it, is what concurrent first starts race for.
        try:
            with exclusive(tracking_uri, "mlflow-schema", "creating the tracking store's tables"):
                self.client = _client(tracking_uri)
                found = self.client.get_experiment_by_name(experiment.name)
                if found is None and create:
                    found = self._create_experiment()
                elif found is not None and create and found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                    self.client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)  # made before the tag
        except MlflowException as exc:  # e.g. a store of an older MLflow: its message says how to upgrade it
            raise StoreError("--tracking-uri", tracking_uri, exc.message.strip().splitlines()[0]) from None
        self.experiment_id = found.experiment_id if found is not None else None
        self.fingerprint = _fingerprint(found) if found is not None else None

    @property
    def exists(self) -> bool:
        """Whether the store holds this experiment (a store opened with ``create`` always does)."""
        return self.experiment_id is not None

    def _create_experiment(self):
        experiment = self.experiment
        tags = {
            TITLE: experiment.title or experiment.name,
            SOURCE: experiment.source,
            EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1],
        }
        try:
            self.client.create_experiment(experiment.name, tags=tags)
        except MlflowException as exc:  # another process (on another machine) created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return self.client.get_experiment_by_name(experiment.name)

    # ---- reading

    def runs(self, role: str) -> list[Run]:
        """Every run of this experiment with ``ablation.role = role`` (paginated)."""
        if self.experiment_id is None:
            return []
        out, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=role_filter(role), max_results=1000, page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                return out

    def find_cell(self, config_hash: str) -> Run | None:
        """The run of one cell: a finished one if any, else the newest attempt, else None."""
        if self.experiment_id is None:
            return None
        found = f"{role_filter(ROLE_CELL)} and tags.`{CONFIG_HASH}` = '{config_hash}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=found)
        return max(runs, key=_rank, default=None)

    def cell_runs(self) -> dict[str, Run]:
        """config hash -> the run that represents that cell: a finished one if any, else the newest."""
        best: dict[str, Run] = {}
        for run in self.runs(ROLE_CELL):
            key = run.data.tags.get(CONFIG_HASH)
            current = best.get(key)
            if current is None or _rank(run) > _rank(current):
                best[key] = run
        return best

    def adopt_legacy_runs(
        self, cells: list[Cell], digest_of: Callable[[Cell], str | None], move_checkpoint: Callable[[Cell], None]
    ) -> tuple[int, int]:
        """Finished runs logged before the data's identity was part of a cell's key carry the config's key alone.
        One whose logged dataset digest equals this data's (``digest_of``, None where it cannot be told) is this
        cell's result: it is re-keyed (the old key kept in ``ablation.legacy_config_hash``) and its checkpoint
        moved to the new key (``move_checkpoint``). Returns (adopted, left out because unverifiable)."""
        by_legacy = {cell.legacy_hash: cell for cell in cells}
        runs = self.runs(ROLE_CELL)
        keyed = {run.data.tags.get(CONFIG_HASH) for run in runs}
        adopted = unverified = 0
        for run in runs:
            tags = run.data.tags
            cell = by_legacy.get(tags.get(CONFIG_HASH))
            if DATA_IDENTITY in tags or cell is None or cell.hash in keyed or run.info.status != "FINISHED":
                continue
            digest = digest_of(cell)
            if digest is None or digest not in {i.dataset.digest for i in run.inputs.dataset_inputs}:
                unverified += 1
                continue
            retag = {CONFIG_HASH: cell.hash, DATA_IDENTITY: cell.arm.data.identity or "", LEGACY_HASH: cell.legacy_hash}
            self.log_tags(run.info.run_id, retag)
            move_checkpoint(cell)
            keyed.add(cell.hash)
            adopted += 1
        return adopted, unverified

    # ---- writing

    def find_parent(self, key: str) -> Run | None:
        """The parent run of the sweep ``key`` (``PreparedSweep.key``), if it exists; read-only."""
        runs = [run for run in self.runs(ROLE_SWEEP) if run.data.tags.get(SWEEP_KEY) == key]
        return max(runs, key=lambda run: run.info.start_time or 0, default=None)

    def parent_exists(self, run_id: str | None) -> bool:
        """Whether ``run_id`` is a live run of this store (not deleted, not from another store)."""
        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def parent_run(self, key: str, cells: int) -> str:
        """The parent run of the sweep ``key`` of ``cells`` cells (known up front), reopened: the same one again
        when the same sweep runs again."""
        self._writable()
        run = self.find_parent(key)
        if run is not None:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.experiment.name,
            tags={
                **self.run_tags,
                ROLE: ROLE_SWEEP,
                SWEEP_KEY: key,
                CELLS: str(cells),
                SOURCE: self.experiment.source,
                NOTE: self.experiment.title,
            },
        )
        return run.info.run_id

    def start_cell(self, cell: Cell, parent_id: str, dataset: dict[str, str], tune_study: str = "") -> str:
        """Create the child run of ``cell`` with its params, tags and dataset input (a tuning trial's run is
        tagged with its arm's study, ``tune_study``)."""
        self._writable()
        axes = {axis_tag(k): _text(v) for k, v in flatten(cell.arm.axes).items()}
        tags = {
            **self.run_tags,
            ROLE: ROLE_CELL,
            CONFIG_HASH: cell.hash,
            PARENT_RUN: parent_id,
            EXPERIMENT: self.experiment.name,
            ARM: str(cell.arm.index),
            DESCRIPTION: cell.arm.description,
            SEED: str(cell.seed),
            ATTENTION: cell.config.model.attention.type,
            DATA_IDENTITY: cell.arm.data.identity or "",
            **axes,
        }
        if cell.arm.module_source:  # a user's own attention module: the source its results came from
            tags[ATTENTION_SOURCE] = cell.arm.module_source["sha256"]
        if cell.arm.backbone_source:  # a user's own network: the builder its results came from
            tags[BACKBONE_SOURCE] = cell.arm.backbone_source["sha256"]
        spec = cell.spec
        tags[PHASE] = spec.phase if spec else PHASE_FINAL
        if spec is not None:
            tags[CELL_SPEC] = spec.to_json()
            if spec.phase == PHASE_TUNE:
                tags[TUNE_TRIAL] = str(spec.trial)
                if tune_study:
                    tags[TUNE_STUDY] = tune_study
            else:
                tags[RECIPE] = spec.recipe
        run = self.client.create_run(self.experiment_id, run_name=cell.name, tags=tags)
        run_id = run.info.run_id
        params = [
            Param(k, _text(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(cell.config.model_dump(mode="json")).items()
        ]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params[i : i + 100])
        self._log_dataset(run_id, dataset)
        return run_id

    def _writable(self) -> None:
        # Runs made without an experiment id would land in MLflow's Default experiment.
        if self.experiment_id is None:
            raise RuntimeError(
                f"the tracking store was opened for reading and has no experiment {self.experiment.name!r}"
            )

    def _log_dataset(self, run_id: str, dataset: dict[str, str]) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(dataset["source"])
            entity = MetaDataset(source=source, name=dataset["name"], digest=dataset["digest"])._to_mlflow_entity()
        context = InputTag(key=DATASET_CONTEXT, value=dataset.get("context", "train+validation"))
        for attempt in range(3):
            try:
                self.client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=[context])])
                return
            except MlflowException as exc:
                # MLflow's SQL store looks the dataset up, then inserts it when missing: two workers starting cells of
                # one experiment at once can both insert it, and the second insert breaks the unique key (seen on
                # PostgreSQL). Its transaction was rolled back; sent again, the lookup finds the row and links it.
                if attempt == 2 or not _duplicate_key(exc):
                    raise

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, FAILURE, "")

    def finish(self, run_id: str, status: str, failure: str = "") -> None:
        if failure:
            self.client.set_tag(run_id, FAILURE, failure[:5000])
        self.client.set_terminated(run_id, status=status)

    def log_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, _text(v)) for k, v in tags.items()])


def _client(tracking_uri: str) -> MlflowClient:
    """The store's client: every call made through a ``StoreWaiter`` (``ablation.core.patience``): a store that
    is down is waited for, bounded and said aloud, and then stops the command resumable. On a database store each
    call also runs protected from a stop signal (``ablation.core.stopping``): a Ctrl-C inside the driver would leave
    the write half-done and the database locked against the very clean-up that marks the run KILLED. A tracking
    server's calls stay interruptible: half a request locks nothing here."""
    configure_http_retries()
    client = MlflowClient(with_busy_timeout(tracking_uri))
    inner = client if tracking_uri.startswith(("http://", "https://")) else Protected(client)
    waiter = StoreWaiter("the tracking store", tracking_uri)
    return Patient(inner, waiter, not_idempotent=NOT_IDEMPOTENT)  # type: ignore[return-value]


# Calls that create something: sent again after a failure that may have reached the store, they could create it
# twice. Everything else this package calls sets a value or logs rows that carry their own timestamps, which
# MLflow's SQL stores (a tracking server's backend included) keep once.
NOT_IDEMPOTENT = frozenset({"create_run", "create_experiment"})
# MLflow's HTTP client retries a server that went away 7 times with a growing back-off (minutes, in silence) and
# waits 120 s for an answer. The waiter above does the retrying, aloud; each of MLflow's attempts is one request with
# a bounded wait. A user's own settings of these variables are kept.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


# Once a stop is requested, a request waits this long for an answer (if the timeout is ours, not the user's): the
# clean-up that marks runs KILLED must not wait out a server that hangs.
STOPPING_TIMEOUT = "3"


def configure_http_retries() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if not stop_requested() and os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == STOPPING_TIMEOUT:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]  # a new command
    when_stopping(_shorten_http_timeout)


def _shorten_http_timeout() -> None:
    if os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = STOPPING_TIMEOUT


def dashboard_hint(tracking_uri: str, experiment_id: str | None) -> str:
    """Where to review an experiment's runs: its runs table in the MLflow UI, grouped by arm in two clicks."""
    if experiment_id is None:
        return ""
    page = f"#/experiments/{experiment_id}/{RUNS_VIEW}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"review the runs: {tracking_uri.rstrip('/')}/{page}"
    return f"review the runs: mlflow ui --backend-store-uri {tracking_uri}, then http://127.0.0.1:5000/{page}"


def _duplicate_key(exc: BaseException) -> bool:
    """Whether a store error is a unique key that another writer took first (PostgreSQL's, SQLite's, MySQL's words)."""
    text = str(exc)
    return any(
        words in text for words in ("UniqueViolation", "duplicate key", "UNIQUE constraint failed", "Duplicate entry")
    )


def _fingerprint(experiment) -> str:
    """This store's MLflow experiment, told apart from a namesake in a deleted and recreated or another store."""
    return hashlib.sha256(f"{experiment.experiment_id}:{experiment.creation_time}".encode()).hexdigest()[:8]


def _rank(run: Run) -> tuple[int, int]:
    return (run.info.status == RunStatus.to_string(RunStatus.FINISHED), run.info.start_time or 0)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
