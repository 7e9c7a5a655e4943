"""A real MLflow tracking server (``mlflow server``, a SQLite backend unless given one, artifacts in a folder) that a
test can stop and start again on the same port, as a lab's server goes away and comes back; on this machine, or on a
test network's head (``machine=network.command``, serving on the head's address)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(
        self,
        folder: Path,
        host: str = "127.0.0.1",
        backend: str | None = None,
        machine: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.folder, self.host, self.port = folder, host, free_port()
        self.backend = backend or f"sqlite:///{folder / 'server.db'}"
        self.machine = machine
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 180) -> MlflowServer:
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend,
        ]
        command += ["--artifacts-destination", str(self.folder / "artifacts"), "--host", self.host]
        command += ["--port", str(self.port), "--workers", "1"]
        if self.machine is not None:  # exec'd all the way down: the process is still the server's
            command = self.machine(command)
        with open(self.folder / "server.log", "ab") as log:
            # Its own session: stopping it stops the worker processes it starts too.
            self.process = subprocess.Popen(
                command, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {self.process.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"mlflow server did not answer within {timeout_s:.0f} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        """Stop the server and every process of it; returns once the port refuses connections."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.process = None
        while True:  # a worker of the server may outlive its parent for a moment
            with socket.socket() as s:
                if s.connect_ex((self.host, self.port)) != 0:
                    return
            time.sleep(0.1)

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""
