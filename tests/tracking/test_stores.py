"""Stores that fail, fail fast, and cold starts need no first step.

An unreachable tracking server (refusing, or accepting and never answering), an unreachable or read-only
database, a read-only SQLite file: one line naming the URI and the cause, within 15 s, before anything is created
in either store. Four workers started in the same second on a brand-new SQLite storage and tracking store, and
three on brand-new PostgreSQL databases, run every cell exactly once with no schema error."""

import contextlib
import socket
import subprocess
import threading
import time

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

import runner
from ablation import cli
from ablation.scheduler.queue import open_storage
from ablation.tracking.names import CONFIG_HASH, ROLE_CELL, ROLE_SWEEP, role_filter
from tests.support import processes
from tests.support.tiny import tiny_experiment

GRID = "  model.attention.order: [channel-first]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_fails_fast(args, tmp_path, capsys, write_experiment, tiny_npz, *words):
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    capsys.readouterr()  # what setting the stores up printed
    began = time.monotonic()
    code = runner.main(["sweep", str(path), "--checkpoint-dir", str(tmp_path / "checkpoints"), *args])
    elapsed = time.monotonic() - began
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    (line,) = err.splitlines()
    assert line.startswith("error: ") and all(word in line for word in words), line
    # Not a speed test: one attempt, no retries. MLflow's and SQLAlchemy's own retries back off for minutes; a
    # minute is far above one attempt on any machine (CONNECT_TIMEOUT_S each) and far below those.
    assert elapsed < 60, f"{elapsed:.1f}s: the store was tried again and again"
    assert not (tmp_path / "checkpoints").exists()
    return line


@pytest.fixture
def local_state(tmp_path):
    return ["--storage", f"sqlite:///{tmp_path / 'sweeps.db'}"]


def test_a_tracking_server_that_refuses_connections(tmp_path, capsys, write_experiment, tiny_npz, local_state):
    uri = f"http://127.0.0.1:{_free_port()}"
    _sweep_fails_fast([*local_state, "--tracking-uri", uri], tmp_path, capsys, write_experiment, tiny_npz, uri)
    assert not (tmp_path / "sweeps.db").exists()  # the sweep's state was not created either


@pytest.mark.slow
def test_a_tracking_server_that_never_answers(tmp_path, capsys, write_experiment, tiny_npz, local_state):
    connections: list[socket.socket] = []
    with socket.socket() as hung:  # accepts connections and never says a word
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        hung.settimeout(0.2)
        listening = threading.Event()
        listening.set()

        def accept() -> None:
            while listening.is_set():
                with contextlib.suppress(TimeoutError):
                    connections.append(hung.accept()[0])

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        try:
            line = _sweep_fails_fast(
                [*local_state, "--tracking-uri", uri], tmp_path, capsys, write_experiment, tiny_npz, uri
            )
        finally:
            listening.clear()
            acceptor.join()
            for connection in connections:
                connection.close()
    assert "timed out" in line
    assert len(connections) == 1  # one attempt, given up after its timeout: no retry
    assert not (tmp_path / "sweeps.db").exists()


def test_a_database_that_refuses_connections(tmp_path, capsys, write_experiment, tiny_npz):
    url = f"postgresql+psycopg2://nobody@127.0.0.1:{_free_port()}/none"
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    _sweep_fails_fast(["--storage", url, *tracking], tmp_path, capsys, write_experiment, tiny_npz, "--storage", url)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_read_only_sqlite_store(tmp_path, capsys, write_experiment, tiny_npz, local_state):
    store = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # an existing store, opened read-only...
    args = [*local_state, "--tracking-uri", f"sqlite:///file:{store}?mode=ro&uri=true"]
    _sweep_fails_fast(args, tmp_path, capsys, write_experiment, tiny_npz, "read-only")
    # ...or that nobody, root included, may write: an immutable file (root ignores file modes).
    if subprocess.run(["chattr", "+i", str(store)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system; the mode=ro case above ran")
    try:
        uri = f"sqlite:///{store}"
        args = [*local_state, "--tracking-uri", uri]
        _sweep_fails_fast(args, tmp_path, capsys, write_experiment, tiny_npz, uri, "read-only")
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=True)
    assert not (tmp_path / "sweeps.db").exists()


def _read_only(url: str) -> str:
    """Make a PostgreSQL database read-only for every new session (as a standby or a read-only role would be)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = psycopg2.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{parsed.database}" SET default_transaction_read_only = on')
    conn.close()
    return url


def test_read_only_postgresql_stores(tmp_path, capsys, write_experiment, tiny_npz, postgres_url):
    storage, tracking = postgres_url("ro_sweeps"), postgres_url("ro_mlflow")
    open_storage(storage)  # schemas made while the databases could still be written
    MlflowClient(tracking).search_experiments()
    _read_only(storage)
    _read_only(tracking)
    local_tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    args = ["--storage", storage, *local_tracking]
    _sweep_fails_fast(args, tmp_path, capsys, write_experiment, tiny_npz, "--storage", "read-only")
    args = ["--storage", f"sqlite:///{tmp_path / 'sweeps.db'}", "--tracking-uri", tracking]
    _sweep_fails_fast(args, tmp_path, capsys, write_experiment, tiny_npz, "--tracking-uri", "read-only")
    assert not (tmp_path / "sweeps.db").exists() and not (tmp_path / "mlflow.db").exists()


# ---- cold starts: every worker at once on stores that do not exist yet


def _workers_at_once(path, tmp_path, storage, tracking, count):
    common = ["--storage", storage, "--tracking-uri", tracking, "--checkpoint-dir", str(tmp_path / "ckpt")]
    one = {"OMP_NUM_THREADS": "1"}
    started = [
        processes.start(["worker", str(path), *common, "--name", f"w{i}"], tmp_path, tmp_path / f"w{i}.txt", one)
        for i in range(count)
    ]
    for process in started:
        process.join(600)
    logs = [(tmp_path / f"w{i}.txt").read_text() for i in range(count)]
    codes = [processes.finished(p, tmp_path / f"w{i}.txt").exitcode for i, p in enumerate(started)]
    assert codes == [0] * count, "\n\n".join(logs)
    assert not any("already exists" in log or "Traceback" in log for log in logs), "\n\n".join(logs)
    return logs


def _every_cell_exactly_once(storage, tracking, cells):
    storage = open_storage(storage)
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    hashes = [t.user_attrs["cell_hash"] for t in trials]
    assert len(hashes) == len(set(hashes)) == cells  # no cell enqueued or handed out twice
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], role_filter(ROLE_CELL))
    assert sorted(r.data.tags[CONFIG_HASH] for r in runs) == sorted(hashes)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in runs}
    assert len(client.search_runs([experiment.experiment_id], role_filter(ROLE_SWEEP))) == 1


@pytest.mark.slow
def test_four_workers_start_together_on_new_sqlite_stores(tmp_path, tiny_npz, write_experiment):
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0, 1, 2, 3]", epochs=1))
    storage, tracking = f"sqlite:///{tmp_path / 'sweeps.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    logs = _workers_at_once(path, tmp_path, storage, tracking, 4)
    assert all("[w" in log and "] finished " in log for log in logs), logs  # every worker joined and ended
    _every_cell_exactly_once(storage, tracking, 4)


@pytest.mark.slow
def test_three_workers_start_together_on_new_postgresql_databases(
    tmp_path, tiny_npz, write_experiment, postgres_url, capsys
):
    grid = "  model.attention.order: [channel-first, spatial-first, parallel]"
    path = write_experiment(tiny_experiment(tiny_npz, grid, "[0, 1]", epochs=1))
    storage, tracking = postgres_url("cold_sweeps"), postgres_url("cold_mlflow")
    logs = _workers_at_once(path, tmp_path, storage, tracking, 3)
    assert all("[w" in log and "] finished " in log for log in logs), logs
    _every_cell_exactly_once(storage, tracking, 6)
    capsys.readouterr()
    assert runner.main(["status", str(path), "--storage", storage, "--tracking-uri", tracking]) == 0
    assert "6 cells: 0 pending, 0 running, 6 done, 0 failed" in capsys.readouterr().out


def test_reading_commands_fail_fast_too_and_create_nothing(tmp_path, capsys, write_experiment, tiny_npz, monkeypatch):
    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    monkeypatch.chdir(tmp_path)
    down = f"http://127.0.0.1:{_free_port()}"
    for command in (["table", str(path)], ["gradcam", str(path)], ["status", str(path)]):
        capsys.readouterr()
        began = time.monotonic()
        assert runner.main([*command, "--tracking-uri", down]) == 2, command
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: --tracking-uri {down}: cannot be reached"), line
        assert time.monotonic() - began < 60  # one attempt, not MLflow's minutes of retries (_sweep_fails_fast)
    # No store here yet: status says so, and reading creates no database file.
    assert runner.main(["status", str(path)]) == 0
    assert "not started" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_reading_an_unswept_experiment_creates_nothing(tmp_path, capsys, write_experiment, tiny_npz, monkeypatch):
    """A real SQLite MLflow store that holds another experiment: ``table`` and ``status`` of one never swept there
    say so in one line, and neither they nor the lookups of the table, Grad-CAM and dashboard write anything."""
    from mlflow.entities import ViewType

    from ablation.experiment.prepared import read_only_sweep
    from ablation.report.gradcam import log_gradcam
    from ablation.report.table import collect_runs, log_to_parent
    from ablation.scheduler.status import sweep_status
    from ablation.tracking.mlflow_store import SweepStore, dashboard_hint

    path = write_experiment(tiny_experiment(tiny_npz, GRID, "[0]", epochs=1))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("another", tags={"kept": "as it was"})

    def experiments():
        found = client.search_experiments(view_type=ViewType.ALL)
        return sorted((e.experiment_id, e.name, sorted(e.tags.items()), e.last_update_time) for e in found)

    before, files = experiments(), sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert runner.main(["table", str(path), "--tracking-uri", uri]) == 0
    out, err = capsys.readouterr()
    (line,) = out.strip().splitlines()
    assert line.startswith("tiny: never swept in ") and err == ""
    assert runner.main(["status", str(path), "--tracking-uri", uri]) == 0
    assert "not started" in capsys.readouterr().out

    prepared = read_only_sweep(*cli.experiment_arms(cli.build_parser().parse_args(["table", str(path)])))
    store = SweepStore(uri, prepared.experiment)
    assert not store.exists and store.runs(ROLE_CELL) == [] and store.find_cell(prepared.cells[0].hash) is None
    assert collect_runs(prepared, uri).empty and log_to_parent(prepared, uri, [path]) is None
    assert log_gradcam(store, prepared, [path]) is None and dashboard_hint(uri, store.experiment_id) == ""
    assert sweep_status(prepared, f"sqlite:///{tmp_path / 'sweeps.db'}", uri) is None
    assert experiments() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no results folder, no sweep state
