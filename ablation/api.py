"""The Python API: run a sweep from a notebook or a script, and read any sweep's results back as DataFrames.

    import ablation

    result = ablation.sweep("demo", overrides={"train.epochs": 2})
    result.table()        # one row per arm: the DataFrame behind the paper-style table
    result.runs()         # one row per cell (long format): what runs.csv holds

    ablation.results("demo").table()      # a sweep that ran earlier, read from its tracking store

Both run the command line's own code (``ablation.cli``): the same checks with the same one-line messages, raised as
``ablation.ConfigError`` (an experiment value), ``ablation.UsageError`` (an argument that stands for a flag),
``ablation.StoreError`` (a store that cannot be used) or ``ablation.Outage`` (the machine or a store failed mid-sweep:
nothing is lost, call again once it is fixed); the same stores; the same resumption: calling ``sweep`` again skips
finished cells and resumes interrupted ones from their last epoch, whether the first call came from Python or from
``ablation sweep``. Interrupting it (Ctrl-C, a notebook's stop button, SIGTERM) stops it as Ctrl-C stops the command:
the cells in flight and the sweep's parent run are marked KILLED, ``KeyboardInterrupt`` is raised, and the next call
resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ablation import cli
from ablation.core.errors import ConfigError, UsageError
from ablation.experiment.grid import expand_arms
from ablation.experiment.prepared import read_only_sweep
from ablation.experiment.schema import (
    Experiment,
    apply_overrides,
    experiment_from_mapping,
    load_experiment,
    parse_override,
)
from ablation.report import columns as C

if TYPE_CHECKING:  # for annotations only: importing the API imports no pandas
    import pandas as pd

    from ablation.experiment.prepared import PreparedSweep

ExperimentLike = str | os.PathLike | Mapping[str, Any]


@dataclass
class SweepResult:
    """A sweep's outcome and its results, read from its tracking store when asked (never cached: a sweep that
    other workers still run shows what they have finished since).

    ``total`` cells, of which ``done``, ``failed`` (cell name -> reason) and ``pending`` (not finished: waiting,
    running or interrupted); for a sweep this call ran, ``trained_now`` (cells it trained, others were done
    already or ran elsewhere), ``wall_s`` and ``parent_run_id`` (the sweep's MLflow parent run).
    """

    experiment: str
    tracking_uri: str
    total: int
    done: int
    pending: int
    failed: dict[str, str] = field(default_factory=dict)
    trained_now: int = 0
    wall_s: float = 0.0
    parent_run_id: str = ""
    _prepared: PreparedSweep | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        """Whether every cell is done."""
        return self.total > 0 and self.done == self.total

    def table(self) -> pd.DataFrame:
        """One row per arm, in the table's order: description, n, params, GMACs, top-1 / top-5 error (mean and std
        over seeds), the comparison with the baseline, and the paper's numbers where the experiment names a paper
        table (the columns are ``ablation.report.columns``). Empty when nothing finished."""
        found = self._results()
        if isinstance(found, str):
            # pandas: only when a table is asked for
            import pandas as pd

            return pd.DataFrame(columns=list(C.SUMMARY_COLUMNS))
        return found.summary

    def runs(self) -> pd.DataFrame:
        """One row per cell (long format, what ``runs.csv`` holds): cell, arm, description, one column per grid axis
        (dotted key), seed, status (done / failed / running / interrupted / pending), top1_err, top5_err (final, %),
        params, gmacs, train_time_s, img_per_s, failure, run_id, cell_key."""
        found = self._results()
        if isinstance(found, str):
            # pandas and the report: only when the runs are asked for
            from ablation.report.runs import runs_frame

            return runs_frame(self._prepared.cells, {})
        return found.cells

    def write(self, out: str | os.PathLike) -> list[Path]:
        """Write the table (md, tex, csv, html), its figures and runs.csv into the folder ``out``, and attach them to
        the sweep's parent run, as ``ablation table --out`` does. Returns the files written."""
        found = cli.write_table(self._prepared, self.tracking_uri, Path(out))
        return [] if isinstance(found, str) else found[1]

    def _results(self):
        # MLflow and pandas: only when results are read
        from ablation.report.outputs import read_results

        return read_results(self._prepared, self.tracking_uri)


def sweep(
    experiment: ExperimentLike,
    *,
    overrides: Mapping[str, Any] | None = None,
    workers: int | str = 1,
    device: str = "auto",
    tracking_uri: str | None = None,
    storage: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    store_wait: float | None = None,
    out: str | os.PathLike | None = None,
) -> SweepResult:
    """Train every cell of ``experiment`` (arm x seed), as ``ablation sweep`` does, and return the result.

    ``experiment``: an experiment file's path, a bundled experiment's name (``"demo"``), or a dict with the schema of
    a file (``name`` required: it names the MLflow experiment). A dict is checked in full, data included, then
    written to ``<checkpoint_dir>/experiments/<name>-<digest>.yaml`` for the worker processes to read: calling
    ``sweep`` with the same dict again, or ``ablation sweep`` with that file, is the same sweep and resumes it.
    ``overrides``: ``--set`` pairs as a dict, ``{"train.epochs": 2, "seeds": [0, 1]}``. ``workers``: a number or
    ``"auto"`` (one per GPU slot). ``tracking_uri``: default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
    in the working folder; ``storage``: default ``sqlite:///sweeps.db`` there; ``checkpoint_dir``: default
    ``checkpoints``. ``progress``: per-epoch progress bars. ``retry_failed``: run failed cells again. ``store_wait``:
    seconds a store that went away is waited for (default 300). ``out``: a folder to write the table, figures and
    runs.csv into, as the command writes ``results/<experiment>/``; without it nothing is written here (the files
    are still attached to the sweep's parent run).

    Raises ``ConfigError`` / ``UsageError`` / ``StoreError`` (one line, before anything is created), ``Outage``
    (the machine or a store failed: call again once fixed), ``KeyboardInterrupt`` (stopped: call again to resume).
    """
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else Path("checkpoints")
    argv = ["sweep", _experiment_file(experiment, overrides, checkpoints), *_sets(overrides)]
    argv += ["--workers", str(workers), "--device", str(device), "--checkpoint-dir", str(checkpoints)]
    argv += ["--tracking-uri", tracking_uri] if tracking_uri is not None else []
    argv += ["--storage", storage] if storage is not None else []
    argv += [] if progress else ["--no-progress"]
    argv += ["--retry-failed"] if retry_failed else []
    argv += ["--store-wait", f"{store_wait:g}"] if store_wait is not None else []
    args = cli.parse_command(argv)
    with cli.command_context(args.store_wait):
        report, prepared = cli.run_sweep_command(args)
        uri = _tracking_uri(args.tracking_uri)
        if report.done:
            if out is not None:
                cli.write_table(prepared, uri, Path(out))
            else:  # the parent run gets its results/ artifacts; the caller's folder gets nothing
                with tempfile.TemporaryDirectory(prefix="ablation-results-") as folder:
                    cli.write_table(prepared, uri, Path(folder))
    return SweepResult(
        experiment=prepared.experiment.name,
        tracking_uri=uri,
        total=report.total,
        done=report.done,
        pending=report.pending,
        failed=dict(report.failed),
        trained_now=report.trained_now,
        wall_s=report.wall_s,
        parent_run_id=report.parent_run_id,
        _prepared=prepared,
    )


def results(
    experiment: ExperimentLike,
    *,
    overrides: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
) -> SweepResult:
    """The results of a sweep that ran earlier (or runs now, elsewhere), read from its tracking store as ``ablation
    table`` reads them: the same experiment (and ``overrides``) as the sweep, the same data where the experiment
    says it is (its identity is part of every cell's key). ``storage`` is accepted for symmetry with ``sweep`` and
    not read: results live in the tracking store alone. Nothing is written anywhere."""
    del storage  # results are the tracking store's alone (ablation.tracking.results)
    with cli.command_context():
        checked = _experiment(experiment, overrides)
        prepared = read_only_sweep(checked, expand_arms(checked))
        result = SweepResult(prepared.experiment.name, _tracking_uri(tracking_uri), 0, 0, 0, _prepared=prepared)
        cells = result.runs()
    status = cells["status"]
    failed = cells[status == "failed"]
    result.total, result.done = len(cells), int((status == "done").sum())
    result.failed = dict(zip(failed["cell"], failed["failure"], strict=True))
    result.pending = result.total - result.done - len(result.failed)
    return result


# ---- arguments as the command line spells them


def _sets(overrides: Mapping[str, Any] | None) -> list[str]:
    """``{"train.epochs": 2}`` as ``--set train.epochs=2``: each value as JSON, which YAML (how ``--set`` reads a
    value) reads back as the same value."""
    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise UsageError(
            f"overrides: {overrides!r} is not allowed; allowed: a dict of dotted keys to values, e.g. "
            "{'train.epochs': 2}"
        )
    argv = []
    for key, value in overrides.items():
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise UsageError(
                f"overrides[{key!r}]: {value!r} is not allowed; allowed: numbers, strings, booleans, None, lists and "
                "dicts of them"
            ) from None
        argv += ["--set", f"{key}={text}"]
    return argv


def _experiment(experiment: ExperimentLike, overrides: Mapping[str, Any] | None) -> Experiment:
    """The experiment, checked as the command line checks a file and its ``--set`` pairs."""
    sets = _sets(overrides)[1::2]
    if isinstance(experiment, str | os.PathLike):
        return load_experiment(os.fspath(experiment), sets)
    if not isinstance(experiment, Mapping):
        raise UsageError(
            f"experiment: {type(experiment).__name__} is not allowed; allowed: a file's path, a bundled experiment's "
            "name or a dict with the schema of an experiment file"
        )
    checked = experiment_from_mapping(_plain_tree(experiment), source="<dict>")
    return apply_overrides(checked, [parse_override(o) for o in sets])


def _experiment_file(experiment: ExperimentLike, overrides: Mapping[str, Any] | None, folder: Path) -> str:
    """The file (or bundled name) the command line is given for ``experiment``; a dict is checked in full (data
    included), then written under ``folder`` for the worker processes, once per content."""
    if isinstance(experiment, str | os.PathLike):
        return os.fspath(experiment)
    checked = _experiment(experiment, overrides)
    expand_arms(checked)  # the data too: a dict that cannot run is never written
    text = yaml.safe_dump(_plain_tree(experiment), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = folder / "experiments" / f"{checked.name}-{digest}.yaml"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)  # whole or absent: a worker process never reads half a file
    return str(path)


def _plain_tree(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The dict as a file would hold it: plain types only (paths become strings)."""
    return json.loads(json.dumps(dict(experiment), default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ConfigError("experiment", value, "", sentence=f"{value!r} cannot be written to an experiment file")


def _tracking_uri(value: str | None) -> str:
    # MLflow: where the tracking URI is resolved, once the command's input is checked
    from ablation.tracking.mlflow_store import resolve_tracking_uri

    return resolve_tracking_uri(value)


__all__ = ["ExperimentLike", "SweepResult", "results", "sweep"]
