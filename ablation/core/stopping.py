"""Stopping on a signal anywhere, but never in the middle of a store write.

Ctrl-C, SIGTERM and SIGUSR2 end a command by raising KeyboardInterrupt where the process is, so that training stops
at once and the cell is given back. Raised inside a database driver, it can leave a write half-done with the
database's lock still held: SQLite's driver runs Python between the rows of an INSERT, a signal handler can run
there, and the clean-up that follows (marking the run KILLED, giving the cell back) then waits on that lock and
fails ("database is locked"; seen in a stress run of the Ctrl-C test). Code that talks to a store runs its calls
inside ``protected()``: a stop requested meanwhile is held until the call returns, then raised.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

_depth = 0  # protected blocks the main thread is inside (signal handlers only ever run there)
_held = False  # a stop arrived inside one of them
# Set by the first stop request: threads that wait on something (a store that is down: ablation.core.patience)
# give up instead of holding up the end of the command. Cleared when a command starts (reset_stop).
_stop = threading.Event()
_on_stop: list[Callable[[], None]] = []  # when_stopping()

F = TypeVar("F", bound=Callable[..., Any])


def request_stop() -> None:
    """Called by a signal handler: raise KeyboardInterrupt now, or, inside a protected block, when it ends."""
    global _held
    if not _stop.is_set():
        _stop.set()
        for action in _on_stop:
            action()
    if _depth:
        _held = True
        return
    raise KeyboardInterrupt


def stop_requested() -> bool:
    """Whether a stop was requested since the command started (any thread may ask)."""
    return _stop.is_set()


def when_stopping(action: Callable[[], None]) -> None:
    """Run ``action`` (quick, safe inside a signal handler) on the first stop request: shorten a store's timeouts so
    that the clean-up after a stop does not wait out a store that stopped answering."""
    if action not in _on_stop:
        _on_stop.append(action)


def reset_stop() -> None:
    """A new command in this process (the tests run many): no stop requested yet."""
    global _held
    _stop.clear()
    _held = False


@contextlib.contextmanager
def protected() -> Iterator[None]:
    """A block that a stop request does not cut in two (see the module docstring)."""
    global _depth, _held
    if threading.current_thread() is not threading.main_thread():
        yield  # no signal handler runs in this thread: nothing to hold back
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _held:
            _held = False
            raise KeyboardInterrupt


def protect(function: F) -> F:
    """``function`` with each call run inside ``protected()``."""

    @wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        with protected():
            return function(*args, **kwargs)

    return call  # type: ignore[return-value]


class Protected:
    """``target`` with every method call run inside ``protected()`` (an MLflow client, say): nothing it writes is
    left half-done by a stop."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        return protect(value) if callable(value) else value
