"""Waiting for a store that is down: bounded, said aloud, and never deaf to a stop.

Left to themselves, MLflow's HTTP client retries a tracking server that went away for minutes in silence, and
a database driver waits on a lock or a dead server as long as its timeouts say. Every call to a store goes
through a ``StoreWaiter`` instead (``waiter.call`` or the ``Patient`` proxy): a call that fails because the store
cannot be reached (``ablation.core.outages``) is tried again with a growing pause; after ``NOTICE_AFTER_S`` one
line says what is unreachable, since when, and until when the harness keeps trying; when the store comes back a
line says so; at the end of the wait (``--store-wait`` seconds from when the store was first found down, 300 by
default, ``ABLATION_STORE_WAIT`` for processes that inherit it) the call raises the ``Outage`` and the command
stops as for any outage, resumable.

A stop (Ctrl-C, SIGTERM) is never held up: the pauses in the main thread end with the signal's KeyboardInterrupt,
and once a stop was requested (``ablation.core.stopping``) a store that is down is not waited for in any thread:
the clean-up that marks runs KILLED gives up at once instead of waiting out the store.

A call is tried again only when that cannot apply it twice: every failure for calls that are idempotent (setting
a tag or a state, logging a batch of metrics that carry their own timestamps, which MLflow's SQL stores
deduplicate), and for the others (creating a run) only a failure that the request never left this machine
(``retry_is_safe``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from ablation.core.console import say
from ablation.core.outages import Outage, outage_of, retry_is_safe
from ablation.core.stopping import stop_requested

ENV = "ABLATION_STORE_WAIT"
DEFAULT_WAIT_S = 300.0
NOTICE_AFTER_S = 3.0
FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.25, 5.0

T = TypeVar("T")


def store_wait_s() -> float:
    """How long a store that is down is waited for: ``ABLATION_STORE_WAIT`` (set by ``--store-wait``) or 300 s."""
    value = os.environ.get(ENV, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_WAIT_S
    except ValueError:
        return DEFAULT_WAIT_S


class StoreWaiter:
    """The calls to one store (``what``, e.g. "the tracking store", at ``where``, its URI) and whether it is down.

    The wait is bounded per outage, not per call: every call made while the store is down shares one deadline,
    so a sweep that makes many calls still stops ``store_wait_s()`` after the store went away.
    """

    def __init__(self, what: str, where: str, wait_s: float | None = None, tell: Callable[[str], None] = say) -> None:
        self.what, self.where, self.tell = what, where, tell
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._down_since: float | None = None  # time.monotonic() when a call first failed, None while it answers
        self._down_wall = 0.0
        self._told = False

    @property
    def wait_s(self) -> float:
        return self._wait_s if self._wait_s is not None else store_wait_s()

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def call(self, function: Callable[..., T], *args: Any, idempotent: bool = True, **kwargs: Any) -> T:
        pause = FIRST_PAUSE_S
        while True:
            if stop_requested() and self.down:
                raise Outage(self.what, self.where, "is down and a stop was asked: not waited for")
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                outage = outage_of(exc, store=self.what, where=self.where)
                if outage is None:
                    raise
                if not idempotent and not retry_is_safe(exc):
                    raise outage from exc  # it may have been applied: sending it again could apply it twice
                remaining = self._failed(outage)
                if remaining <= 0 or stop_requested():
                    raise Outage(
                        self.what,
                        self.where,
                        f"unreachable for {time.monotonic() - (self._down_since or 0):.0f} s "
                        f"({outage.cause.partition('(')[2].rstrip(')') or outage.cause})",
                        f"waited --store-wait {self.wait_s:g} s; {outage.advice}",
                    ) from exc
                _pause(min(pause, remaining))
                pause = min(pause * 2, LONGEST_PAUSE_S)
                continue
            self._answered()
            return result

    def _failed(self, outage: Outage) -> float:
        """Record a failed call; returns the seconds left to wait."""
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since, self._down_wall, self._told = now, time.time(), False
            waited = now - self._down_since
            if not self._told and waited >= NOTICE_AFTER_S:
                self._told = True
                since = time.strftime("%H:%M:%S", time.localtime(self._down_wall))
                until = time.strftime("%H:%M:%S", time.localtime(self._down_wall + self.wait_s))
                self.tell(
                    f"[store] {self.what} {self.where} is unreachable since {since} "
                    f"({outage.cause.partition('(')[2].rstrip(')') or outage.cause}); trying again until {until} "
                    f"(--store-wait {self.wait_s:g} s), then stopping resumable"
                )
            return self.wait_s - waited

    def _answered(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is not None and self._told:
                waited = time.monotonic() - self._down_since
                self.tell(f"[store] {self.what} {self.where} answers again after {waited:.0f} s")
            self._down_since = None


def _pause(seconds: float) -> None:
    """Sleep; a signal in the main thread ends it with KeyboardInterrupt, a stop request ends it in any other."""
    if threading.current_thread() is threading.main_thread():
        time.sleep(seconds)
    else:
        deadline = time.monotonic() + seconds
        while not stop_requested() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


class Patient:
    """``target`` (an MLflow client, a storage) with every method call made through ``waiter``; the methods named in
    ``not_idempotent`` are tried again only when that cannot apply them twice."""

    def __init__(self, target: Any, waiter: StoreWaiter, not_idempotent: frozenset[str] = frozenset()) -> None:
        self._target, self._waiter, self._not_idempotent = target, waiter, not_idempotent

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value
        idempotent = name not in self._not_idempotent

        @wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._waiter.call(value, *args, idempotent=idempotent, **kwargs)

        return call
