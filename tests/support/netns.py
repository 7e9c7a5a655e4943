"""Machines of a test cluster on this one: network namespaces with addresses and host names of their own.

``Network()`` makes a head: a namespace of its own (host name ``head``) holding a bridge with the address
``<prefix>.1/24``, the head's servers' address. This (the test's) namespace joins the bridge at ``<prefix>.254``, so
the test reaches the head's servers and the nodes; ``network.node(index)`` adds a node, a namespace joined to the
bridge by a veth pair at ``<prefix>.<10 + index>``, under host name ``node<index>`` (a UTS namespace: the sweep queue
and Slurm tell machines apart by host name). ``head.command`` / ``node.command`` run a program there. Processes
see the same file system everywhere, as an NFS checkout and checkpoint folder would give them (this kernel has no
NFS client or server to give the real thing).

A node's faults: ``cut()`` takes its side of the link down (a pulled cable: packets are lost, connections stall),
``mend()`` puts it back; ``lose(percent)`` drops packets at random; ``kill()`` SIGKILLs every process in its
namespace (a machine that loses power). ``DelayProxy`` adds latency to a server's connections. (``tc netem``
would do both; this machine's kernel is built without it, so loss is nftables' and delay a proxy's.) The subnet is
derived from this process's pid, so two test processes never share one; traffic goes only to addresses inside
namespaces made here. ``close()`` removes every namespace and link made.

Making namespaces needs root, iproute2 and nftables; without them the tests that use ``network`` are skipped, except
with ``ABLATION_REQUIRE_NETNS=1`` (CI), where they fail: a green run must not have tested nothing of the
multi-machine path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "unshare", "nft"):
        if shutil.which(tool) is None:
            return f"the '{tool}' command is missing (apt-get install iproute2 util-linux nftables)"
    return None


def require_namespaces() -> None:
    """Skip (fail under ``ABLATION_REQUIRE_NETNS=1``) where namespaces cannot be made."""
    reason = _unavailable()
    if reason is None:
        return
    if os.environ.get("ABLATION_REQUIRE_NETNS") == "1":
        pytest.fail(f"the multi-machine tests cannot run (ABLATION_REQUIRE_NETNS=1): {reason}", pytrace=False)
    pytest.skip(reason)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _in_namespace(namespace: str, hostname: str, argv: list[str]) -> list[str]:
    # nsenter, not ``ip netns exec``: that one mounts a sysfs of the namespace's own over /sys, which hides
    # /sys/fs/cgroup, and slurmd will not start without it.
    return [
        "nsenter", f"--net=/run/netns/{namespace}", "--",
        "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv,
    ]  # fmt: skip


def _pids(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return [int(pid) for pid in result.stdout.split()]


class Network:
    """The head's namespace and bridge, this namespace's link to it, and the nodes added (see the module's text)."""

    def __init__(self, tag: str | None = None) -> None:
        pid = os.getpid()
        self.tag = tag or f"{pid % 100000}"
        self.prefix = f"10.{150 + pid % 50}.{pid // 50 % 250}"
        self.namespace, self.hostname = f"abl{self.tag}h", "head"
        self.head_address, self.address = f"{self.prefix}.1", f"{self.prefix}.254"
        self.bridge = "br0"
        self.link, self.head_link = f"ar{self.tag}"[:15], f"hr{self.tag}"[:15]
        self.nodes: list[Node] = []

    def open(self) -> Network:
        try:
            _ip("netns", "add", self.namespace)
            _ip("-n", self.namespace, "link", "set", "lo", "up")
            _ip("-n", self.namespace, "link", "add", self.bridge, "type", "bridge")
            _ip("-n", self.namespace, "addr", "add", f"{self.head_address}/24", "dev", self.bridge)
            _ip("-n", self.namespace, "link", "set", self.bridge, "up")
            _ip("link", "add", self.link, "type", "veth", "peer", "name", self.head_link)
            self._attach(self.head_link)
            _ip("addr", "add", f"{self.address}/24", "dev", self.link)
            _ip("link", "set", self.link, "up")
        except Exception:
            self.close()
            raise
        return self

    def _attach(self, link: str) -> None:
        """Move ``link`` into the head's namespace and plug it into the bridge."""
        _ip("link", "set", link, "netns", self.namespace)
        _ip("-n", self.namespace, "link", "set", link, "master", self.bridge)
        _ip("-n", self.namespace, "link", "set", link, "up")

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on the head: in its namespace, under its host name."""
        return _in_namespace(self.namespace, self.hostname, argv)

    def node(self, index: int) -> Node:
        """A new node (index 1..200) on the head's bridge."""
        node = Node(self, index)
        self.nodes.append(node)
        node.open()
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for pid in _pids(self.namespace):  # servers a test left behind, which would keep the namespace alive
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Deleting a namespace deletes the veth ends in it, and with them their peers.
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.link], capture_output=True, check=False)


class Node:
    def __init__(self, network: Network, index: int) -> None:
        self.network, self.index, self.hostname = network, index, f"node{index}"
        self.namespace = f"abl{network.tag}n{index}"
        self.head_link, self.node_link = f"ah{network.tag}n{index}"[:15], f"an{network.tag}n{index}"[:15]
        self.head_address, self.address = network.head_address, f"{network.prefix}.{10 + index}"

    def open(self) -> Node:
        _ip("netns", "add", self.namespace)
        try:
            _ip("link", "add", self.head_link, "type", "veth", "peer", "name", self.node_link)
            self.network._attach(self.head_link)
            _ip("link", "set", self.node_link, "netns", self.namespace)
            _ip("-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", self.node_link)
            _ip("-n", self.namespace, "link", "set", self.node_link, "up")
            _ip("-n", self.namespace, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise
        return self

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this node: in its namespace, under its host name."""
        return _in_namespace(self.namespace, self.hostname, argv)

    def lose(self, percent: int) -> None:
        """Drop ``percent`` % of the node's packets, at random, in each direction (nftables in the node's namespace:
        real losses, which TCP retransmits)."""
        rules = (
            "table inet impair {\n"
            f"  chain out {{ type filter hook output priority 0; numgen random mod 100 < {percent} drop; }}\n"
            f"  chain in {{ type filter hook input priority 0; numgen random mod 100 < {percent} drop; }}\n"
            "}\n"
        )
        result = subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", "-f", "-"], input=rules, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"nft in {self.namespace}: {result.stderr.strip()}")

    def cut(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.node_link, "down")

    def mend(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.node_link, "up")

    def kill(self) -> list[int]:
        """SIGKILL every process in the node's namespace, as a power cut ends them (no handler runs); the pids."""
        killed = _pids(self.namespace)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return killed

    def close(self) -> None:
        self.kill()
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.head_link], capture_output=True, check=False)


class DelayProxy:
    """A TCP proxy on ``listen`` (address, port 0: a free one) to ``target`` that holds every chunk of data for
    ``delay_s`` in each direction before passing it on, in order: each request and answer across it takes
    2 x ``delay_s`` longer, as a link with that one-way latency would make it. Runs in a thread of its own;
    ``port`` once started, ``close()`` to stop."""

    def __init__(self, listen: str, target: tuple[str, int], delay_s: float) -> None:
        self.listen, self.target, self.delay_s = listen, target, delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    def start(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the delay proxy did not start")
        return self

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._connection, self.listen, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _connection(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pump(client_reader, server_writer), self._pump(server_reader, client_writer), return_exceptions=True
        )

    async def _pump(self, reader, writer) -> None:
        held: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while (item := await held.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
            writer.close()

        delivering = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                held.put_nowait((time.monotonic() + self.delay_s, data))
        finally:
            held.put_nowait(None)
            await delivering


@pytest.fixture
def network() -> Iterator[Network]:
    """A head namespace joined to this one (add nodes with ``network.node(index)``), removed at the test's end with
    every node and whatever still runs in them."""
    require_namespaces()
    made = Network().open()
    try:
        yield made
    finally:
        made.close()
