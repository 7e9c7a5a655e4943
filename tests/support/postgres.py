"""A throwaway PostgreSQL server for the test session.

``postgres_url`` (session scope) starts a private server from Debian's binaries (``/usr/lib/postgresql/*/bin``)
on 127.0.0.1 and a free port, with its data directory and unix socket in a temp dir, and yields
``make_db(name=None) -> str``: each call creates a fresh, empty database and returns its SQLAlchemy URL
``postgresql+psycopg2://postgres@127.0.0.1:PORT/NAME``, so tests (or Optuna and MLflow in one test) never share
one. The server is stopped and the temp dir removed at the end of the session, whether the tests pass or not.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` system user (created by
Debian's package; created here when missing) through ``runuser``. Without the binaries the tests that use the
fixture are skipped, except under CI (``CI`` set), where they fail instead, so CI can never silently skip them.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PG_USER = "postgres"
HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _missing(what: str) -> None:
    """Fail under CI, skip elsewhere."""
    message = f"PostgreSQL tests need {what}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(message)


def _find_binaries() -> dict[str, str]:
    """initdb and pg_ctl from the newest /usr/lib/postgresql/<version>/bin that has both."""

    def version(bindir: str) -> tuple[int, ...]:
        name = Path(bindir).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for bindir in bindirs:
        paths = {name: os.path.join(bindir, name) for name in ("initdb", "pg_ctl")}
        if all(os.access(p, os.X_OK) for p in paths.values()):
            return paths
    for name in ("initdb", "pg_ctl"):
        if not any(os.access(os.path.join(b, name), os.X_OK) for b in bindirs):
            _missing(f"the '{name}' binary under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    _missing("'initdb' and 'pg_ctl' in the same /usr/lib/postgresql/*/bin")
    raise AssertionError("unreachable")


def _server_user() -> pwd.struct_passwd | None:
    """The account to run the server as: None (the current one) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


def _as_server_user(user: pwd.struct_passwd | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--", *argv]
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *argv]


def _make_tempdir(user: pwd.struct_passwd | None) -> Path:
    """A fresh 0700 temp dir owned by the server user, in the first temp location that user can reach."""
    candidates = dict.fromkeys([tempfile.gettempdir(), "/tmp", "/var/tmp"])
    for parent in candidates:
        if not os.path.isdir(parent):
            continue
        path = Path(tempfile.mkdtemp(prefix="pgtest-", dir=parent))
        if user is None:
            return path
        os.chown(path, user.pw_uid, user.pw_gid)
        probe = subprocess.run(_as_server_user(user, ["test", "-w", str(path), "-a", "-x", str(path)]), check=False)
        if probe.returncode == 0:
            return path
        shutil.rmtree(path, ignore_errors=True)
    raise RuntimeError(f"no temp dir among {list(candidates)} is writable by user {user.pw_name!r}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _wait_until_ready(host: str, port: int, deadline: float) -> None:
    """Connect over TCP to host:port until the server answers a query or the deadline passes."""
    import psycopg2

    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            conn = psycopg2.connect(host=host, port=port, user=PG_USER, dbname="postgres", connect_timeout=5)
        except psycopg2.OperationalError as exc:
            last = exc
            time.sleep(0.1)
            continue
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            return
        finally:
            conn.close()
    raise TimeoutError(f"PostgreSQL on {host}:{port} did not accept connections in time: {last}")


class _Server:
    def __init__(
        self,
        binaries: dict[str, str],
        max_connections: int = 50,
        also_listen: tuple[str, ...] = (),
        machine: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        """``also_listen``: addresses besides 127.0.0.1 to serve on (a test network's head address), each trusted for
        its /24. ``machine``: runs the server elsewhere (``Network.command``, the head's namespace): this process
        then reaches it at ``also_listen[0]``, the server's own 127.0.0.1 being that machine's."""
        self.binaries, self.max_connections, self.also_listen = binaries, max_connections, also_listen
        self.machine = machine
        self.host = also_listen[0] if machine is not None else HOST  # where this process reaches it
        self.user = _server_user()
        self.root = _make_tempdir(self.user)
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = 0
        self.started = False
        # Don't let the caller's libpq/PG* settings leak into initdb/pg_ctl; run with a C locale.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env.update(LC_ALL="C", LANG="C")

    def _cmd(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        argv = _as_server_user(self.user, argv)
        return _run(self.machine(argv) if self.machine else argv, cwd=self.root, env=self.env)

    def _fail(self, what: str, result: subprocess.CompletedProcess[str] | None = None) -> None:
        log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
        output = f"\n{result.stdout}\n{result.stderr}" if result is not None else ""
        raise RuntimeError(f"{what}{output}\n--- server log ({self.log}) ---\n{log}")

    def start(self) -> None:
        self.sockets.mkdir()
        if self.user is not None:
            os.chown(self.sockets, self.user.pw_uid, self.user.pw_gid)
        result = self._cmd(
            [self.binaries["initdb"], "-D", str(self.data), "-U", PG_USER, "-E", "UTF8", "--locale=C", "--no-sync"]
        )
        if result.returncode != 0:
            self._fail("initdb failed", result)
        # Trust only this user, only over the unix socket, TCP from 127.0.0.1 and the test namespaces asked for (the
        # file keeps its owner).
        networks = "".join(
            f"host all {PG_USER} {address.rsplit('.', 1)[0]}.0/24 trust\n" for address in self.also_listen
        )
        (self.data / "pg_hba.conf").write_text(
            f"local all {PG_USER} trust\nhost all {PG_USER} {HOST}/32 trust\n{networks}",
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        for _attempt in range(3):  # the free port can be taken between choosing it and binding it: retry
            self.port = _free_port()
            options = " ".join(
                [
                    f"-c listen_addresses={','.join((HOST, *self.also_listen))}",
                    f"-c port={self.port}",
                    f"-c unix_socket_directories={self.sockets}",
                    # A throwaway server: durability is not needed, speed is.
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    f"-c max_connections={self.max_connections}",
                ]
            )
            timeout = max(1, int(deadline - time.monotonic()))
            pg_ctl = self.binaries["pg_ctl"]
            result = self._cmd(
                [pg_ctl, "start", "-w", "-t", str(timeout), "-D", str(self.data), "-l", str(self.log), "-o", options]
            )
            if result.returncode == 0:
                self.started, self.options = True, options
                break
            self.stop()  # in case it is half up
        else:
            self._fail(f"pg_ctl start failed (last port {self.port})", result)
        try:
            _wait_until_ready(self.host, self.port, deadline)
        except TimeoutError as exc:
            self._fail(str(exc))

    def create_database(self, name: str, address: str = HOST) -> str:
        """A fresh, empty database ``name``; its SQLAlchemy URL, reached at ``address`` (one it listens on)."""
        import psycopg2

        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        conn = psycopg2.connect(host=self.host, port=self.port, user=PG_USER, dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE can't run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return f"postgresql+psycopg2://{PG_USER}@{address}:{self.port}/{name}"

    def start_again(self) -> None:
        """Start a server that ``stop`` stopped, on the same port, with its data: a database restarted under its
        clients, who reconnect to the address they know."""
        pg_ctl = self.binaries["pg_ctl"]
        argv = [pg_ctl, "start", "-w", "-t", str(int(START_TIMEOUT_S)), "-D", str(self.data), "-l", str(self.log)]
        result = self._cmd([*argv, "-o", self.options])
        if result.returncode != 0:
            self._fail(f"pg_ctl start (again, port {self.port}) failed", result)
        _wait_until_ready(self.host, self.port, time.monotonic() + START_TIMEOUT_S)

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        result = self._cmd([self.binaries["pg_ctl"], "stop", "-m", "fast", "-w", "-t", "30", "-D", str(self.data)])
        if result.returncode != 0 and (self.data / "postmaster.pid").exists():
            self._cmd([self.binaries["pg_ctl"], "stop", "-m", "immediate", "-w", "-t", "30", "-D", str(self.data)])

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[Callable[..., str]]:
    """A factory ``make_db(name=None) -> str``: a fresh database on the session's server, as a SQLAlchemy URL."""
    binaries = _find_binaries()
    if importlib.util.find_spec("psycopg2") is None:
        _missing("the psycopg2 package (pip install -e '.[dev]')")

    server = _Server(binaries)
    try:
        server.start()
        created: set[str] = set()

        def make_db(name: str | None = None) -> str:
            if name is None:
                name = f"db_{len(created)}"
                while name in created:
                    name += "_"
            if name in created:
                raise ValueError(f"database {name!r} was already created in this session: pick another name")
            url = server.create_database(name)
            created.add(name)
            return url

        yield make_db
    finally:
        server.cleanup()
