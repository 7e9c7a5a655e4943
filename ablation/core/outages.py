"""Faults of the machine or of a store, told apart from a cell's own failure: the one place that decides.

A cell *fails* when its own computation does: its code raises, its loss diverges, a module does not fit. Its
failure is a result (FAILED, kept, rerun only with ``--retry-failed``). Everything else that can stop a cell is an
*outage*: the machine or a store cannot do what the cell asked (no space, a read-only or vanished folder, an I/O
error, a tracking store or a database that cannot be reached or does not answer). An outage is not a result: the
cell is given back as interrupted, the sweep (or that worker) stops with one line naming the resource, where it
is and what to do, and a plain rerun resumes the cell once the cause is gone.

``outage_of(exc)`` reads an exception (and the exceptions it was raised from, since MLflow and SQLAlchemy wrap the
driver's error) and returns the ``Outage`` it stands for, or None for a cell's own failure. Only names of types
are compared for the libraries' exceptions (requests, urllib3, SQLAlchemy, MLflow): this module imports nothing
heavy, and a store layer that changes its wrapping still lands here.
"""

from __future__ import annotations

import errno
import os
import socket

# Exit code of a command that an outage stopped: EX_TEMPFAIL of sysexits.h, "try again later".
OUTAGE_EXIT = 75

# errno -> what the folder's file system said, in words, and what a user does about it.
_DISK = {
    errno.ENOSPC: ("has no space left", "free space there (or point --checkpoint-dir elsewhere)"),
    errno.EDQUOT: ("is over its disk quota", "free space there (or point --checkpoint-dir elsewhere)"),
    errno.EROFS: ("is on a read-only file system", "make it writable (or point --checkpoint-dir elsewhere)"),
    errno.EIO: ("gave an I/O error", "check the disk or the network mount"),
    errno.ESTALE: ("is a stale network-file-system handle", "check the mount"),
    errno.ENODEV: ("is on a device that went away", "check the disk or the mount"),
    errno.ENXIO: ("is on a device that went away", "check the disk or the mount"),
    errno.ENOENT: ("has vanished", "check that the folder is there (a mount that dropped?)"),
    errno.ENOTDIR: ("has vanished (a file where a folder was)", "check the folder"),
    errno.EACCES: ("refuses writes (permission denied)", "fix its permissions"),
    errno.EPERM: ("refuses writes (operation not permitted)", "fix its permissions"),
}
_DISK_ALWAYS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
# Names of the exception types by which requests, urllib3, http.client and the database drivers say that a store
# could not be reached or did not answer (not that it refused the request: that is an answer).
_UNREACHABLE = {
    "ConnectionError",  # requests (and builtins: refused, reset, aborted)
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "MaxRetryError",
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProtocolError",
    "RemoteDisconnected",
    "IncompleteRead",
    "ChunkedEncodingError",
    "OperationalError",  # SQLAlchemy / psycopg2 / sqlite3: refused, closed, terminated, locked too long
    "InterfaceError",
    "DisconnectionError",
}
# Failures where the request cannot have reached the store: retrying them never applies anything twice.
_NOT_SENT = {"ConnectTimeout", "NewConnectionError", "ConnectTimeoutError", "ConnectionRefusedError"}
# HTTP answers of a proxy or server that is there but cannot serve now.
_UNAVAILABLE_HTTP = ("error code 502", "error code 503", "error code 504", "Bad Gateway", "Service Unavailable")
# A database's words for "I am not available now" inside an error that is otherwise a request's own.
_DATABASE_DOWN = (
    "could not connect",
    "connection refused",
    "server closed the connection",
    "terminating connection",
    "connection to server",
    "the database system is",  # starting up / shutting down / in recovery mode
    "database is locked",
    "ssl syscall error",
    "connection already closed",
    "timeout expired",
)


class Outage(RuntimeError):
    """The machine or a store cannot do what was asked: one line, ``<resource> <where>: <cause>; <advice>``."""

    def __init__(self, resource: str, where: str, cause: str, advice: str = "") -> None:
        self.resource, self.where, self.cause, self.advice = resource, where, " ".join(cause.split()), advice
        text = f"{resource} {where}: {self.cause}" if where else f"{resource}: {self.cause}"
        super().__init__(f"{text}; {advice}" if advice else text)


def outage_of(exc: BaseException, *, store: str = "a store", where: str = "") -> Outage | None:
    """The outage ``exc`` stands for, or None when it is a failure of the computation itself. ``store`` and
    ``where`` name the store a caller was talking to, for errors that do not say it themselves."""
    for cause in _chain(exc):
        if isinstance(cause, Outage):
            return cause
        if isinstance(cause, OSError) and cause.errno in _DISK:
            # Without a file name only the errors no program makes for itself: a file that is not there, or not
            # allowed, is a fault of the machine when the harness's own file is meant, not when any file is.
            if cause.filename is None and cause.errno not in _DISK_ALWAYS:
                continue
            words, advice = _DISK[cause.errno]
            folder = (os.path.dirname(os.fsdecode(cause.filename)) or ".") if cause.filename is not None else ""
            return Outage("the folder", folder, words, advice + "; then rerun the same command to resume")
    for cause in _chain(exc):
        name = type(cause).__name__
        text = str(cause)
        unreachable = name in _UNREACHABLE and (name not in ("OperationalError", "InterfaceError") or _down(text))
        if unreachable or isinstance(cause, (socket.timeout, ConnectionError)) or _unavailable_http(cause):
            return Outage(
                store,
                where,
                f"cannot be reached or does not answer ({_first_line(cause)})",
                "start it again (or check the network), then rerun the same command to resume",
            )
    return None


def retry_is_safe(exc: BaseException) -> bool:
    """Whether ``exc`` says the request never reached the store (refused, no route, connect timeout) or was not
    applied (SQLite's lock not had), so that sending it again cannot apply it twice."""
    return any(type(cause).__name__ in _NOT_SENT or "database is locked" in str(cause) for cause in _chain(exc))


def _down(text: str) -> bool:
    lowered = text.lower()
    return any(words in lowered for words in _DATABASE_DOWN)


def _unavailable_http(exc: BaseException) -> bool:
    return type(exc).__name__ in ("MlflowException", "RestException") and any(s in str(exc) for s in _UNAVAILABLE_HTTP)


def _chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or during, each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:240]
