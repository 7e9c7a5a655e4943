"""ablation/core/outages.py: which exceptions are the machine's or a store's fault (an outage: the cell resumes
later) and which are the cell's own (a failure: a result), one cause at a time, with the exceptions the real
libraries raise where they can be had here."""

import errno
import os
import socket

import pytest

from ablation.core.outages import Outage, outage_of, retry_is_safe


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "has no space left"),
        (errno.EDQUOT, "over its disk quota"),
        (errno.EROFS, "read-only file system"),
        (errno.EIO, "I/O error"),
        (errno.ESTALE, "stale"),
        (errno.ENOENT, "has vanished"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_file_system_error_is_an_outage_naming_the_folder_and_what_to_do(code, words):
    error = OSError(code, os.strerror(code), "/ckpt/tiny/abc/last.pt.tmp12")
    outage = outage_of(error)
    assert isinstance(outage, Outage)
    line = str(outage)
    assert "\n" not in line and line.startswith("the folder /ckpt/tiny/abc: ") and words in line, line
    assert "rerun the same command" in line


def test_a_disk_error_raised_from_another_is_found_in_the_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/x")
        except OSError as exc:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 811072 vs 810968") from exc
    except RuntimeError as wrapped:
        outage = outage_of(wrapped)
    assert outage is not None and "/data: has no space left" in str(outage)


def test_no_space_without_a_file_name_is_still_an_outage_but_a_missing_file_without_one_is_not():
    assert outage_of(OSError(errno.ENOSPC, "No space left on device")) is not None
    assert outage_of(OSError(errno.ENOENT, "No such file or directory")) is None


@pytest.mark.parametrize(
    "error",
    [
        ValueError("Expected input batch_size (25) to match target batch_size (24)"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (25x64 and 32x10)"),
        KeyError("layer4"),
        ZeroDivisionError("division by zero"),
        AssertionError("a user's module's own check"),
    ],
)
def test_an_error_of_the_computation_itself_is_the_cells_failure(error):
    assert outage_of(error) is None


def test_a_diverged_loss_is_the_cells_failure():
    from ablation.engine.train import NonFiniteLossError

    assert outage_of(NonFiniteLossError("train loss is nan at epoch 3")) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_is_not_there_is_an_outage_safe_to_retry(monkeypatch):
    """What MLflow's own HTTP client raises for a server that went away: an MlflowException wrapping requests'."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(Exception) as raised:
        MlflowClient(uri).get_experiment("0")
    outage = outage_of(raised.value, store="the tracking store", where=uri)
    assert outage is not None, raised.value
    assert str(outage).startswith(f"the tracking store {uri}: cannot be reached or does not answer (")
    assert retry_is_safe(raised.value)  # refused: the request never left


def test_a_database_that_refuses_connections_is_an_outage_but_a_missing_table_is_not():
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg2://nobody@127.0.0.1:{_free_port()}/none", connect_args={"connect_timeout": 5}
    )
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        engine.connect()
    assert outage_of(refused.value, store="the sweep storage", where="postgresql://...") is not None

    memory = sqlalchemy.create_engine("sqlite://")
    with memory.connect() as connection, pytest.raises(sqlalchemy.exc.OperationalError) as missing:
        connection.exec_driver_sql("SELECT * FROM no_such_table")
    assert outage_of(missing.value) is None


def test_an_error_that_may_have_reached_the_store_is_not_safe_to_send_again():
    assert not retry_is_safe(TimeoutError("read timed out"))
    assert not retry_is_safe(ConnectionResetError("reset by peer"))
    assert retry_is_safe(ConnectionRefusedError("refused"))


def test_an_outage_is_itself_an_outage():
    outage = Outage("the sweep storage", "sqlite:///s.db", "cannot be reached", "start it again")
    assert outage_of(outage) is outage
    assert str(outage) == "the sweep storage sqlite:///s.db: cannot be reached; start it again"
