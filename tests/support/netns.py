"""Machines of a test cluster on this one: network namespaces with addresses and host names of their own.

``Node(index)`` makes a network namespace joined to this (the head's) namespace by a veth pair: the head side gets
``10.<a>.<b>.1/24`` and the node side ``.2``, so a process run through ``Node.command`` reaches the head's servers
only over that link, under a host name of its own (a UTS namespace: the sweep queue tells machines apart by host
name). Processes see the same file system as the head, as an NFS checkout and checkpoint folder would give them.
``cut()`` takes the node's side of the link down (a pulled cable: packets are lost, connections stall), ``mend()``
puts it back; ``lose(percent)`` drops packets at random. ``DelayProxy`` adds latency to a server's connections.
(``tc netem`` would do both; this machine's kernel is built without it, so loss is nftables' and delay a
proxy's.) Addresses come from a subnet derived from this process's pid, so two test processes never share one;
traffic goes only to addresses inside namespaces made here. ``close()`` removes the namespace and its link.

Making namespaces needs root, iproute2 and nftables; without them the tests that use ``node`` are skipped, except with
``ABLATION_REQUIRE_NETNS=1`` (CI), where they fail: a green run must not have tested nothing of the multi-machine path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "nft"):
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


class Node:
    def __init__(self, index: int, tag: str | None = None) -> None:
        tag = tag or f"{os.getpid() % 100000}"
        pid = os.getpid()
        self.index, self.hostname = index, f"node{index}"
        self.namespace = f"abl{tag}n{index}"
        self.head_link, self.node_link = f"ah{tag}n{index}"[:15], f"an{tag}n{index}"[:15]
        prefix = f"10.{200 + pid % 50}.{(pid // 50 % 50) * 5 + index}"
        self.head_address, self.address = f"{prefix}.1", f"{prefix}.2"

    def open(self) -> Node:
        _ip("netns", "add", self.namespace)
        try:
            _ip("link", "add", self.head_link, "type", "veth", "peer", "name", self.node_link)
            _ip("link", "set", self.node_link, "netns", self.namespace)
            _ip("addr", "add", f"{self.head_address}/24", "dev", self.head_link)
            _ip("link", "set", self.head_link, "up")
            _ip("-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", self.node_link)
            _ip("-n", self.namespace, "link", "set", self.node_link, "up")
            _ip("-n", self.namespace, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise
        return self

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this node: in its namespace, under its host name."""
        return [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname, *argv,
        ]  # fmt: skip

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

    def close(self) -> None:
        # Deleting the namespace deletes its end of the pair, and with it the head's end.
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
def node() -> Iterator[Callable[[int], Node]]:
    """A factory ``make(index) -> Node`` (1..5), each node removed at the test's end."""
    require_namespaces()
    made: list[Node] = []

    def make(index: int) -> Node:
        made.append(Node(index).open())
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.close()
