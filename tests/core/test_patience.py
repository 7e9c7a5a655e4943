"""ablation/core/patience.py: a store that is down is waited for with one line, up to a bound shared by every call,
never for a call that could apply twice, and not at all once a stop was requested."""

import threading

import pytest

from ablation.core import patience
from ablation.core.outages import Outage
from ablation.core.patience import Patient, StoreWaiter, store_wait_s
from ablation.core.stopping import protected, request_stop


class Down:
    """A store that refuses ``failures`` calls (the request never left: safe to send again), then answers."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionRefusedError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def get(self, value):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("[Errno 111] Connection refused")
        return value


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(patience, "FIRST_PAUSE_S", 0.01)
    monkeypatch.setattr(patience, "LONGEST_PAUSE_S", 0.02)
    monkeypatch.setattr(patience, "NOTICE_AFTER_S", 0.0)


def test_a_store_that_comes_back_is_waited_for_with_one_line_each_way(quick):
    lines: list[str] = []
    store = Down(failures=5)
    waiter = StoreWaiter("the tracking store", "http://127.0.0.1:1", wait_s=60, tell=lines.append)
    assert Patient(store, waiter).get(7) == 7
    assert store.calls == 6
    assert len(lines) == 2, lines
    assert lines[0].startswith("[store] the tracking store http://127.0.0.1:1 is unreachable since ")
    assert "trying again until" in lines[0] and "(--store-wait 60 s), then stopping resumable" in lines[0]
    assert lines[1].startswith("[store] the tracking store http://127.0.0.1:1 answers again after ")
    assert not waiter.down


def test_the_wait_ends_with_an_outage_that_says_how_long_and_what_to_do(quick):
    lines: list[str] = []
    waiter = StoreWaiter("the sweep storage", "postgresql://db/s", wait_s=0.2, tell=lines.append)
    store = Down(failures=10**9)
    with pytest.raises(Outage) as raised:
        waiter.call(store.get, 1)
    message = str(raised.value)
    assert message.startswith("the sweep storage postgresql://db/s: unreachable for "), message
    assert "waited --store-wait 0.2 s; start it again" in message and "\n" not in message
    assert store.calls > 1 and len(lines) == 1


def test_every_call_shares_one_deadline_from_when_the_store_went_down(quick):
    """A second call made while the store is still down does not get a fresh wait of its own."""
    waiter = StoreWaiter("the tracking store", "u", wait_s=0.2, tell=lambda line: None)
    first = Down(failures=10**9)
    with pytest.raises(Outage):
        waiter.call(first.get, 1)
    second = Down(failures=10**9)
    with pytest.raises(Outage):
        waiter.call(second.get, 1)
    assert second.calls == 1  # its deadline had passed already


def test_a_call_that_may_have_been_applied_is_not_sent_again(quick):
    waiter = StoreWaiter("the tracking store", "u", wait_s=60, tell=lambda line: None)
    ambiguous = Down(failures=1, error=ConnectionResetError)  # the server may have run it before the reset
    with pytest.raises(Outage):
        Patient(ambiguous, waiter, not_idempotent=frozenset({"get"})).get(1)
    assert ambiguous.calls == 1
    refused = Down(failures=2)  # refused: it never left, so even a create is sent again
    assert Patient(refused, waiter, not_idempotent=frozenset({"get"})).get(3) == 3


def test_an_error_of_the_request_itself_is_raised_at_once(quick):
    waiter = StoreWaiter("the tracking store", "u", wait_s=60, tell=lambda line: None)
    store = Down(failures=5, error=ValueError)
    with pytest.raises(ValueError):
        waiter.call(store.get, 1)
    assert store.calls == 1


def test_a_stop_request_ends_a_wait_in_another_thread_and_no_store_that_is_down_is_waited_for_after_it(quick):
    waiter = StoreWaiter("the tracking store", "u", wait_s=600, tell=lambda line: None)
    store = Down(failures=10**9)
    ended: list[BaseException] = []
    waiting = threading.Thread(target=lambda: _record(ended, waiter.call, store.get, 1))
    waiting.start()
    while store.calls < 2:  # it is in its wait
        threading.Event().wait(0.01)
    with pytest.raises(KeyboardInterrupt), protected():
        request_stop()  # as a signal handler does; held to the end of the block, where it is raised
    waiting.join(timeout=30)
    assert not waiting.is_alive() and isinstance(ended[0], Outage)
    calls = store.calls
    with pytest.raises(Outage, match="a stop was asked: not waited for"):
        waiter.call(store.get, 1)
    assert store.calls == calls  # not even tried


def _record(into: list, function, *args) -> None:
    try:
        function(*args)
    except BaseException as exc:  # the test reads what ended it
        into.append(exc)


def test_the_bound_comes_from_the_environment_that_store_wait_sets(monkeypatch):
    monkeypatch.setenv(patience.ENV, "12.5")
    assert store_wait_s() == 12.5
    monkeypatch.delenv(patience.ENV)
    assert store_wait_s() == patience.DEFAULT_WAIT_S
