"""A real Slurm cluster for the tests, from Debian's packages (slurmctld, slurmd, munge, slurm-client).

``start_cluster(folder)`` starts a private munged, a slurmctld and a slurmd on 127.0.0.1, each in the foreground
(``-D``) as a child of this process, with every file they write (config, state, spool, logs, munge key) under
``folder``, and yields a ``SlurmCluster``; on exit it cancels every job, stops the daemons and kills whatever of
the cluster is left (job steps survive their slurmd by design, so they are looked for, not assumed gone).
``start_cluster(folder, controller=..., nodes=[...])`` starts slurmctld and one slurmd per node on the machines
given (``Machine``: a name, an address, and how to run a program there, e.g. a test network's namespaces,
tests/support/netns.py): a cluster of several nodes on this one machine. munged's socket is a file, which every
namespace on this machine reaches.

Private rather than shared, so two test sessions on one machine never meet: free ports chosen at start, a munged
of our own with its own key and socket (``AuthInfo=socket=...``), so the system's /etc/munge and /run/munge are
neither needed nor touched, and nothing another session relies on is stopped at teardown. Slurm runs jobs as their
submitter, so the daemons run as root: without root, or without a binary, ``SlurmUnavailable`` says which.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 30.0
POLL_S = 0.5

# The binary each piece needs, and the Debian package that brings it.
_PACKAGES = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    **dict.fromkeys(("sbatch", "squeue", "scontrol", "scancel", "sinfo"), "slurm-client"),
}
# Variables that steer Slurm's client commands: a session run inside a real Slurm job (or with SBATCH_PARTITION
# set) would otherwise submit into this cluster with that job's settings.
CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_", "SCANCEL_")
_DAEMONS = ("slurmctld", "slurmscriptd", "slurmd", "slurmstepd")
_JOB_FIELDS = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Restarts)=(\S+)")


class SlurmUnavailable(RuntimeError):
    """The cluster cannot start here. ``reason`` is one line; ``details`` (log tails) may follow it in str()."""

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(f"{reason}\n{details}" if details else reason)
        self.reason = reason
        self.details = details


def slurm_free_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables that steer Slurm's commands (CLIENT_ENV_PREFIXES)."""
    return {k: v for k, v in environ.items() if not k.startswith(CLIENT_ENV_PREFIXES)}


def _find_binaries() -> dict[str, str]:
    found = {name: shutil.which(name) for name in _PACKAGES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        packages = " ".join(dict.fromkeys(_PACKAGES[name] for name in missing))
        raise SlurmUnavailable(f"{', '.join(missing)} not on PATH (apt-get install {packages})")
    return {name: str(path) for name, path in found.items()}


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]


def _socket_dir() -> Path:
    """A fresh 0755 folder for munged's socket. munged refuses a socket whose every parent folder is not
    executable by all (pytest's /tmp/pytest-of-<user> is 0700), and a unix socket path has ~100 bytes at most."""
    for parent in dict.fromkeys(["/tmp", "/var/tmp", tempfile.gettempdir()]):
        path = Path(parent)
        if path.is_dir() and all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents)):
            folder = Path(tempfile.mkdtemp(prefix="slurm-munge-", dir=path))
            folder.chmod(0o755)
            return folder
    raise SlurmUnavailable("no temp folder (/tmp, /var/tmp) that every user can traverse, for munged's socket")


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no file)"
    return "\n".join(lines[-n:]) if lines else "(empty)"


def _last_error(*paths: Path) -> str:
    """The last 'fatal' line of these logs, else the last 'error' one: the one-line cause of a failed start (the
    daemons log harmless errors too, such as a missing PMIx library, so a fatal one goes first)."""
    texts = []
    for path in paths:
        with contextlib.suppress(OSError):
            texts.append(path.read_text(errors="replace").splitlines())
    for word in ("fatal", "error"):
        for lines in texts:
            for line in reversed(lines):
                if re.search(rf"\b{word}\b", line, re.IGNORECASE):
                    return line.strip()
    return "no error in its log"


def _expand_tasks(spec: str) -> list[str]:
    """An ArrayTaskId of a not-yet-split pending record ('0-3', '1,4-9:2%2') as task ids."""
    tasks: list[str] = []
    for part in spec.split("%")[0].split(","):
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        if not first.isdigit() or not (last or first).isdigit():
            continue
        tasks.extend(str(i) for i in range(int(first), int(last or first) + 1, int(step or 1)))
    return tasks


def _here(argv: list[str]) -> list[str]:
    return argv


@dataclass(frozen=True)
class Machine:
    """Where a daemon runs: Slurm's name for the machine, its address, and how to run a program on it."""

    name: str
    address: str = HOST
    command: Callable[[list[str]], list[str]] = _here


class SlurmCluster:
    """A running cluster: its nodes (by default one: this machine, all its CPUs) in one partition. Use
    ``start_cluster``."""

    partition = "debug"

    def __init__(
        self,
        folder: Path,
        binaries: dict[str, str],
        kill_wait_s: int = 30,
        controller: Machine | None = None,
        nodes: Sequence[Machine] = (),
        settings: Mapping[str, object] | None = None,
    ) -> None:
        self.folder = folder
        # Seconds from SIGTERM to SIGKILL when a job is cancelled or requeued (KillWait). Slurm's default, 30, leaves
        # a worker on a loaded machine room to give its cell back.
        self.kill_wait_s = kill_wait_s
        self.conf = folder / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self.cpus = os.cpu_count() or 1
        this = Machine(socket.gethostname().split(".")[0])  # slurmd knows itself by its short host name
        self.controller = controller or this
        self.nodes = list(nodes) or [this]
        self.settings = dict(settings or {})  # slurm.conf lines besides (or instead of) ours
        self._binaries = binaries
        self._logs = {"slurmctld": folder / "slurmctld.log"}
        self._logs.update({f"slurmd.{n.name}": folder / f"slurmd.{n.name}.log" for n in self.nodes})
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._released: set[tuple[str, str | None]] = set()  # requeued task instances release() made eligible
        self._socket_dir: Path | None = None

    # ---- for tests

    def run(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> str:
        """Run a Slurm command (``run("scontrol", "requeue", "12_0")``) against this cluster; its stdout. It runs
        in ``folder``, so a job submitted without ``--chdir`` writes its default output there."""
        argv = [self._binaries.get(args[0], args[0]), *args[1:]]
        env = {**slurm_free_env(os.environ), **self.env}
        try:
            result = subprocess.run(
                argv, cwd=self.folder, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{' '.join(args)}: no answer in {timeout:.0f} s") from exc
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed (exit {result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def task_states(self, job_id: str) -> dict[str, str]:
        """Each task of array job ``job_id`` ("12_0", "12_1", ...; a plain job: "12") and its state. Finished
        tasks come from slurmctld's memory of them (``scontrol show job``, kept MinJobAge=300 s), queued and
        running ones from ``squeue``, which wins where both answer."""
        states: dict[str, str] = {}
        shown = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        for line in shown.splitlines():
            fields = dict(_JOB_FIELDS.findall(line))
            if "JobState" not in fields:
                continue
            if "ArrayJobId" in fields and "ArrayTaskId" in fields:
                for task in _expand_tasks(fields["ArrayTaskId"]):
                    states[f"{fields['ArrayJobId']}_{task}"] = fields["JobState"]
            elif "JobId" in fields:
                states[fields["JobId"]] = fields["JobState"]
        queued = self.run("squeue", "-h", "-r", "-j", job_id, "-o", "%i|%T", check=False)
        for line in queued.splitlines():
            task, _, state = line.strip().partition("|")
            if task and state:
                states[task] = state
        return states

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` every 0.5 s until it holds; after ``timeout`` s an AssertionError names ``what``
        and shows the queue, slurmctld's log and the end of each recent job's own log (why a task ended)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                try:
                    queue = self.run("squeue", "-a", "-r", "-o", "%i %T %r %S").strip()
                except RuntimeError as exc:  # slurmctld gone: that is the news
                    queue = str(exc)
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {what}\n--- squeue ---\n{queue}\n"
                    f"--- slurmctld.log ---\n{_tail(self._logs['slurmctld'], 40)}{self._job_logs()}"
                )
            time.sleep(POLL_S)

    def _job_logs(self) -> str:
        """The last lines of the output file of every job slurmctld still knows (MinJobAge)."""
        try:
            shown = self.run("scontrol", "show", "job", "-o", check=False)
        except RuntimeError:
            return ""
        files = dict.fromkeys(re.findall(r"\bStdOut=(\S+)", shown))
        return "".join(f"\n--- {path} ---\n{_tail(Path(path), 30)}" for path in files)

    def release(self, task_id: str) -> None:
        """Make a requeued task eligible (almost) now. Slurm holds a requeued job back before it may start again
        (Reason=BeginTime, 120 s in 22.05); this only shortens that hold-off, nothing else about scheduling changes.

        Not to ``now``: slurmd revoked the previous instance's credential when it ended it, and refuses a launch
        whose begin time is not later than that revocation, in whole seconds ("Killing non-startable batch JobId=2:
        Job credential revoked", and the task ends without running again). A task that squeue shows as PENDING is
        past its previous instance's end, so a begin time two seconds ahead is later than any revocation. Each
        instance is released once (its restart count tells them apart): a second release would push it back."""
        shown = self.run("scontrol", "show", "job", "-o", task_id, check=False)
        instance = (task_id, dict(_JOB_FIELDS.findall(shown)).get("Restarts"))
        if instance in self._released:
            return
        self._released.add(instance)
        self.run("scontrol", "update", f"jobid={task_id}", "StartTime=now+2")

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of slurmctld's and each slurmd's logs."""
        return "\n".join(f"--- {path.name} ---\n{_tail(path, n)}" for path in self._logs.values())

    def processes(self) -> list[int]:
        """Live processes of this cluster: its daemons, job steps and job processes, found by the SLURM_CONF in
        their environment (job steps outlive slurmd, so the children we started are not all of them)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                comm = (entry / "comm").read_text().strip()
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if mine in environ and (comm in _DAEMONS or any(v.startswith(b"SLURM_JOB_ID=") for v in environ)):
                found.append(int(entry.name))
        return found

    # ---- start and stop (start_cluster)

    def _write_conf(self, ctld_port: int, slurmd_port: int) -> None:
        folder = self.folder
        settings = {
            "ClusterName": "local",
            "SlurmctldHost": f"{self.controller.name}({self.controller.address})",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={self._socket_dir / 'socket'}",
            "ProctrackType": "proctrack/linuxproc",  # no cgroups needed
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "StateSaveLocation": folder / "state",
            "SlurmdSpoolDir": folder / "spool" / "%n",  # %n: the node's name, each slurmd its own
            "SlurmctldPidFile": folder / "slurmctld.pid",
            "SlurmdPidFile": folder / "slurmd.%n.pid",
            "SlurmctldLogFile": self._logs["slurmctld"],
            "SlurmdLogFile": folder / "slurmd.%n.log",
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "ReturnToService": 2,
            "MpiDefault": "none",
            "MailProg": "/bin/true",  # the default /bin/mail is rarely installed and slurmctld complains
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "KillWait": self.kill_wait_s,
            "MinJobAge": 300,  # finished jobs stay visible to scontrol this long
            **self.settings,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines += [f"NodeName={n.name} NodeAddr={n.address} CPUs={self.cpus} State=UNKNOWN" for n in self.nodes]
        lines.append(f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str], machine: Machine | None = None) -> None:
        # A session of its own: Ctrl-C in the terminal reaches pytest, which then stops the cluster in order.
        env = {**slurm_free_env(os.environ), **self.env}
        if machine is not None:
            argv = machine.command(argv)
        with open(self.folder / f"{name}.stderr", "ab") as out:
            self._processes[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True
            )

    def _start_munge(self) -> None:
        keys = self.folder / "munge"
        keys.mkdir(mode=0o700, exist_ok=True)
        key = keys / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self._socket_dir = _socket_dir()
        socket_path = self._socket_dir / "socket"
        self._spawn(
            "munged",
            [
                *(self._binaries["munged"], "--foreground", f"--socket={socket_path}", f"--key-file={key}"),
                *(f"--pid-file={keys / 'munged.pid'}", f"--seed-file={keys / 'munged.seed'}"),
            ],
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not socket_path.exists():
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"munged did not create its socket in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def _check_alive(self, *names: str) -> None:
        for name in names:
            code = self._processes[name].poll()
            if code is not None:
                logs = [self.folder / f"{name}.stderr", self._logs.get(name, self.folder / f"{name}.stderr")]
                raise SlurmUnavailable(
                    f"{name} exited with code {code} while starting: {_last_error(*logs)} (logs in {self.folder})",
                    f"--- {name} ---\n{_tail(logs[0], 20)}",
                )

    def _node_state(self) -> str:
        """Each node's state, in the nodes' order, comma-separated ("idle", "idle,idle,down*", ...)."""
        try:
            shown = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
        except RuntimeError:  # slurmctld not answering yet
            return ""
        states = dict(line.split(maxsplit=1) for line in shown.splitlines() if len(line.split()) == 2)
        return ",".join(states.get(n.name, "") for n in self.nodes)

    def _start(self) -> None:
        (self.folder / "state").mkdir(exist_ok=True)
        for node in self.nodes:
            (self.folder / "spool" / node.name).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        idle = ",".join(["idle"] * len(self.nodes))
        for attempt in range(3):
            # A free port can be taken between choosing it and binding it: then choose again.
            ctld_port, slurmd_port = _free_ports(2)
            self._write_conf(ctld_port, slurmd_port)
            self._spawn("slurmctld", [self._binaries["slurmctld"], "-D", "-f", str(self.conf)], self.controller)
            try:
                # slurmd only once slurmctld listens: a slurmd beside a failed slurmctld tries to register with
                # whatever holds its port and waits out MessageTimeout (10 s). A plain connect, not sinfo: Slurm's
                # commands retry a refused connection for MessageTimeout too.
                self._wait_for_listener(ctld_port)
                for node in self.nodes:
                    argv = [self._binaries["slurmd"], "-D", "-N", node.name, "-f", str(self.conf)]
                    self._spawn(f"slurmd.{node.name}", argv, node)
                daemons = ("munged", "slurmctld", *(f"slurmd.{n.name}" for n in self.nodes))
                self._wait_for_node(lambda state: state == idle, daemons, f"{idle} node state")
                return
            except SlurmUnavailable as exc:
                if "Address already in use" not in exc.reason or attempt == 2:
                    raise
                self._stop_daemons()

    def _wait_for_listener(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self._check_alive("munged", "slurmctld")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                if probe.connect_ex((self.controller.address, port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise SlurmUnavailable(
                    f"slurmctld did not listen on {self.controller.address}:{port} in {START_TIMEOUT_S:.0f} s: "
                    f"{_last_error(self._logs['slurmctld'])} (logs in {self.folder})",
                    self.log_tail(20),
                )
            time.sleep(0.05)

    def _wait_for_node(self, ready: Callable[[str], bool], daemons: tuple[str, ...], what: str) -> None:
        """Poll sinfo's node state until ``ready`` holds; SlurmUnavailable if a daemon exits or time runs out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self._check_alive(*daemons)
            state = self._node_state()
            if ready(state):
                return
            if time.monotonic() > deadline:
                raise SlurmUnavailable(
                    f"no {what} in {START_TIMEOUT_S:.0f} s (sinfo says {state or 'nothing'!r}): "
                    f"{_last_error(*self._logs.values())} (logs in {self.folder})",
                    self.log_tail(20),
                )
            time.sleep(0.2)

    def _stop_daemons(self) -> None:
        """SIGTERM each slurmd and slurmctld, wait, SIGKILL the ones still there."""
        for name in [*(f"slurmd.{n.name}" for n in self.nodes), "slurmctld"]:
            process = self._processes.pop(name, None)
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _stop(self) -> None:
        try:
            if "slurmctld" in self._processes and self._processes["slurmctld"].poll() is None:
                # Jobs first, while slurmctld can still tell their steps to end (SIGTERM, SIGKILL after KillWait);
                # a slurmctld that does not answer leaves them to the kill below.
                with contextlib.suppress(RuntimeError):
                    self.run("scancel", f"--partition={self.partition}", check=False)
                    deadline = time.monotonic() + STOP_TIMEOUT_S
                    while self.run("squeue", "-h", "-o", "%i", check=False).strip() and time.monotonic() < deadline:
                        time.sleep(POLL_S)
            self._stop_daemons()
            # Job steps outlive their slurmd by design; whatever of the cluster is still there goes now.
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while (left := self.processes()) and time.monotonic() < deadline:
                time.sleep(0.1)
            if left:
                raise RuntimeError(f"processes of the Slurm test cluster survived SIGKILL: {left}")
        finally:
            munged = self._processes.pop("munged", None)
            if munged is not None:
                munged.terminate()
                try:
                    munged.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    munged.kill()
                    munged.wait()
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)


@contextlib.contextmanager
def start_cluster(
    folder: Path,
    kill_wait_s: int = 30,
    controller: Machine | None = None,
    nodes: Sequence[Machine] = (),
    settings: Mapping[str, object] | None = None,
) -> Iterator[SlurmCluster]:
    """A running cluster with its files under ``folder``: slurmctld on ``controller`` and a slurmd on each of
    ``nodes`` (by default both on this machine, one node); ``settings``: slurm.conf lines of the caller's. Stopped,
    jobs and all, on exit. Raises SlurmUnavailable when it cannot start (a missing binary, not root, a daemon that
    would not come up)."""
    binaries = _find_binaries()
    if os.geteuid() != 0:
        raise SlurmUnavailable("the Slurm test cluster runs its daemons as root (slurmd starts jobs as their users)")
    folder.mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(folder, binaries, kill_wait_s, controller, nodes, settings)
    try:
        cluster._start()
        yield cluster
    finally:
        cluster._stop()
