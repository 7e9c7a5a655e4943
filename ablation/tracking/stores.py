"""Reaching the sweep's stores safely: probes that fail fast, and locks for what two processes must not race.

A sweep writes to two stores: the sweep's state (an Optuna RDB storage) and the tracking store (MLflow). Left to
themselves, both libraries retry an unreachable database or server for minutes and then print a long
traceback, and a store that refuses writes (read-only file, read-only database, standby) is found only after
the sweep's state exists. ``probe_storage`` / ``probe_tracking`` check each store before anything is created
in either, within seconds, and raise a one-line ``StoreError`` naming the URI and the cause.

Several processes starting at once on a new database race to create the same tables ("table ... already
exists") and the same sweep. ``exclusive(url, name)`` serialises such steps: an advisory lock in PostgreSQL
(every machine sees it), a file lock beside nothing in the temp folder for SQLite (one machine, as SQLite
itself). Both are released by the operating system or the server when their holder dies, so a killed process
never leaves a lock behind. A worker process that its sweep set the stores up for needs neither the lock nor the
tables' creation: ``mark_set_up`` / ``is_set_up``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ablation.core.errors import StoreError

CONNECT_TIMEOUT_S = 5
WAIT_NOTICE_S = 2.0
# Stores this process knows to be set up: the sweep that started it created (or checked) their schemas and the
# sweep's state just before telling it to join (``launch.wait_for_sweep``).
_SET_UP: set[str] = set()


def mark_set_up(*urls: str) -> None:
    _SET_UP.update(urls)


def is_set_up(url: str) -> bool:
    """Whether this process may open ``url`` without creating or checking its tables (``mark_set_up``)."""
    return url in _SET_UP


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for in-memory databases and other schemes)."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database.removeprefix("file:")).expanduser().resolve()


def with_busy_timeout(url: str, seconds: int = 10) -> str:
    """A SQLite URL whose connections wait up to ``seconds`` for another process's write lock (pysqlite's own
    default, 5 s, is short for several workers logging to one file). Past it, the call's ``StoreWaiter`` tries
    again, and says so (``ablation.core.patience``): no longer wait on a lock is silent."""
    if not url.startswith("sqlite:") or "timeout=" in url:
        return url
    return url + ("&" if "?" in url else "?") + f"timeout={seconds}"


def probe_storage(url: str, write: bool = True) -> None:
    """The sweep's Optuna storage can be reached (and, with ``write``, written): ``--storage``."""
    _probe_database("--storage", url, table="trials", write=write)


def probe_tracking(uri: str, write: bool = True) -> None:
    """The MLflow tracking store can be reached (and, with ``write``, written): ``--tracking-uri``."""
    scheme = uri.partition("://")[0] if "://" in uri else ""
    if scheme in ("http", "https"):
        _probe_server(uri)
    elif scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        _probe_database("--tracking-uri", uri, table="runs", write=write)
    elif not write:
        return
    elif scheme in ("", "file"):
        folder = Path(uri.removeprefix("file://")).expanduser()
        _probe_folder("--tracking-uri", uri, folder if folder.exists() else folder.parent)
    elif scheme not in ("databricks", "uc"):
        allowed = "http(s)://host:port, sqlite:///file.db, postgresql+psycopg2://user@host/db or a folder"
        raise StoreError("--tracking-uri", uri, f"is not a tracking URI MLflow serves here; use {allowed}")


def _probe_server(uri: str) -> None:
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=CONNECT_TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StoreError("--tracking-uri", uri, f"cannot be reached ({reason})") from None
    if status != 200:
        raise StoreError("--tracking-uri", uri, f"answered HTTP {status} at /health; is it an MLflow tracking server?")


def _probe_database(option: str, url: str, table: str, write: bool) -> None:
    """Connect with a short timeout and, with ``write``, check that this connection may write, without writing."""
    path = sqlite_path(url)
    if write and url.startswith("sqlite:") and "mode=ro" in url:
        raise StoreError(option, url, "is opened read-only (mode=ro); a sweep writes to it")
    if path is not None and not path.exists():
        if write:
            _probe_folder(option, url, path.parent)
        return  # a new database: nothing to connect to yet (and, to write, the folder takes files)
    engine = _engine(option, url)
    try:
        with engine.connect() as connection:
            if write and engine.dialect.name == "sqlite":
                _sqlite_may_write(connection)
            elif write and engine.dialect.name == "postgresql":
                _postgresql_may_write(connection, table)
    except StoreError:
        raise
    except Exception as exc:  # OperationalError: refused, timed out, wrong password, read-only file...
        raise StoreError(option, url, _cause(exc)) from None
    finally:
        engine.dispose()


def _engine(option: str, url: str):
    import sqlalchemy

    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    try:
        return sqlalchemy.create_engine(
            url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
        )
    except ImportError as exc:
        hint = " (pip install -e '.[postgres]')" if "psycopg" in str(exc) else ""
        raise StoreError(option, url, f"needs a database driver that is not installed: {exc}{hint}") from None
    except Exception as exc:  # ArgumentError, NoSuchModuleError: not a database URL
        raise StoreError(
            option,
            url,
            f"is not a database URL ({_driver_words(exc)}); use sqlite:///file.db or postgresql+psycopg2://...",
        ) from None


def _sqlite_may_write(connection) -> None:
    # A table created inside a transaction that is rolled back: SQLite refuses it on a read-only file or mount.
    connection.exec_driver_sql("BEGIN")
    try:
        connection.exec_driver_sql("CREATE TABLE ablation_write_probe (x INTEGER)")
    except Exception as exc:
        words = _driver_words(exc)
        if "locked" not in words:  # another process writing now is no fault of the store
            raise PermissionError(f"is read-only ({words})") from None
    finally:
        connection.exec_driver_sql("ROLLBACK")


def _postgresql_may_write(connection, table: str) -> None:
    def scalar(sql: str):
        return connection.exec_driver_sql(sql).scalar()

    if scalar("SELECT pg_is_in_recovery()"):
        raise PermissionError("is a read-only standby server")
    if scalar("SHOW transaction_read_only") == "on":
        raise PermissionError("is read-only (default_transaction_read_only is on)")
    if scalar(f"SELECT to_regclass('{table}') IS NOT NULL"):
        if not scalar(f"SELECT has_table_privilege('{table}', 'INSERT')"):
            raise PermissionError(f"does not let this user write (no INSERT on table {table})")
    elif not scalar("SELECT has_schema_privilege(current_schema(), 'CREATE')"):
        raise PermissionError("does not let this user create the tables it needs (no CREATE on its schema)")


def _probe_folder(option: str, url: str, folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".ablation-write-probe"):
            pass
    except OSError as exc:
        raise StoreError(option, url, f"cannot create files in {existing} ({exc.strerror or exc})") from None


def _driver_words(exc: BaseException) -> str:
    """The driver's own words, first line, without SQLAlchemy's '(Background on this error ...)' link."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(original).__name__)[:200]


def _cause(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return str(exc)
    words = _driver_words(exc)
    if "read-only" in words or "readonly" in words:
        return f"is read-only ({words})"
    return f"cannot be reached or refused the connection ({words})"


# ---------------------------------------------------------------------------------------------------------------
# Locks


@contextlib.contextmanager
def exclusive(url: str, name: str, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock called ``name`` in the store at ``url`` (see the module docstring); says once why
    it waits when another process holds it for more than a moment."""
    if url.startswith("postgresql"):
        with _advisory_lock(url, name, what):
            yield
    elif (path := sqlite_path(url)) is not None:
        with _file_lock(path, name, what):
            yield
    else:  # a tracking server creates its own schema; nothing else of ours needs a lock there
        yield


def _key(*parts: str) -> int:
    """A signed 64-bit lock id (what pg_advisory_lock takes)."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _notice(what: str) -> None:
    if what:
        print(f"[store] waiting for another process that is {what}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _file_lock(path: Path, name: str, what: str) -> Iterator[None]:
    folder = Path(tempfile.gettempdir()) / "cbam-ablation-locks"
    if not folder.exists():
        folder.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(0o1777)  # like /tmp itself: every user's processes lock here
    lock = folder / f"{_key(str(path), name) & 0xFFFFFFFFFFFF:012x}.lock"
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access: anyone's file will do
    try:
        _wait(lambda: _try_flock(fd), what)
        yield
    finally:
        os.close(fd)  # closing releases the lock, as the death of the process would


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _advisory_lock(url: str, name: str, what: str) -> Iterator[None]:
    engine = _engine("--storage", url)
    try:
        with engine.connect() as connection:
            key = _key(name)
            _wait(lambda: connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar(), what)
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
    finally:
        engine.dispose()


def _wait(try_once, what: str) -> None:
    began, told = time.monotonic(), False
    while not try_once():
        if not told and time.monotonic() - began > WAIT_NOTICE_S:
            _notice(what)
            told = True
        time.sleep(0.1)
