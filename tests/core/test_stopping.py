"""Stopping on a signal, never in the middle of a store write (ablation/core/stopping.py)."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from mlflow import MlflowClient
from sqlalchemy import event

from ablation.core.stopping import Protected, protected, request_stop


def test_a_stop_outside_a_protected_block_is_raised_at_once():
    with pytest.raises(KeyboardInterrupt):
        request_stop()


def test_a_stop_inside_a_protected_block_is_held_until_it_ends():
    done = []
    with pytest.raises(KeyboardInterrupt), protected():
        with protected():
            request_stop()
            done.append("inner")
        done.append("outer")  # still held: the outer block has not ended
    assert done == ["inner", "outer"]
    with protected():
        pass  # nothing held any more


def test_other_threads_are_not_held_back():
    seen = []

    def run():
        with protected():
            seen.append(threading.current_thread() is threading.main_thread())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [False]
    with protected():
        pass


def test_a_signal_that_arrives_inside_an_mlflow_write_lets_the_write_finish(tmp_path):
    """The signal comes while SQLite's driver executes the INSERT (sent from inside it, through SQLAlchemy's
    before_cursor_execute); its handler asks to stop, as the command line's does. The whole write lands, the store
    is not left locked, and only then does the KeyboardInterrupt come."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    engine = client._tracking_client.store.engine
    sent = []

    def signal_mid_write(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO metrics") and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: request_stop())
    event.listen(engine, "before_cursor_execute", signal_mid_write)
    try:
        with pytest.raises(KeyboardInterrupt):
            Protected(client).log_metric(run_id, "m", 1.0, step=1)
    finally:
        event.remove(engine, "before_cursor_execute", signal_mid_write)
        signal.signal(signal.SIGUSR2, previous)
    assert sent
    other = MlflowClient(uri)  # another connection can write at once: no lock was left behind
    other.set_tag(run_id, "after", "yes")
    assert [m.value for m in other.get_metric_history(run_id, "m")] == [1.0]
