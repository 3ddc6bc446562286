"""The bench's own network: two fresh namespaces joined by a veth pair, always deleted afterwards.

Names are unique per run (``rtb-<pid>-<n>-a``/``-b``, links ``rtb<pid>a``…), addresses come from
198.18.0.0/15 and 2001:db8::/32 only, and nothing outside the two namespaces is touched. Deletion
happens in :meth:`Topology.close` (the context manager calls it however the block exits), in an
``atexit`` hook, and on SIGTERM/SIGHUP (turned into ``SystemExit`` so ``finally`` blocks run).
Deleting a namespace deletes its veth end, and with it the other end.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

__all__ = ["Topology", "run", "topology"]

_counter = itertools.count(1)
_live: dict[str, Topology] = {}
_lock = threading.Lock()


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 15) -> str:
    """Run a command, return its stdout; ``RuntimeError`` with its stderr when it fails."""
    try:
        res = subprocess.run(
            list(argv), check=False, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{' '.join(argv)}: {exc}") from exc
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res.stdout


@dataclass
class Topology:
    """Namespace A (clients, senders) and B (servers, sinks) joined by veth ``if_a``/``if_b``."""

    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    ip4_a: str
    ip4_b: str
    ip6_a: str
    ip6_b: str
    mac_a: str
    mac_b: str
    commands: list[str] = field(default_factory=list)
    closed: bool = False

    def ip(self, side: str, family: int) -> str:
        """The address of side ``"a"``/``"b"`` in IP version ``family`` (4 or 6)."""
        if family == 4:
            return self.ip4_a if side == "a" else self.ip4_b
        return self.ip6_a if side == "a" else self.ip6_b

    def ns(self, side: str) -> str:
        """The namespace name of side ``"a"``/``"b"``."""
        return self.ns_a if side == "a" else self.ns_b

    def ifname(self, side: str) -> str:
        """The veth end of side ``"a"``/``"b"``."""
        return self.if_a if side == "a" else self.if_b

    def exec_prefix(self, side: str) -> list[str]:
        """The argv prefix that runs a command inside side ``side``'s namespace."""
        return ["ip", "netns", "exec", self.ns(side)]

    def _do(self, argv: list[str]) -> str:
        self.commands.append(" ".join(argv))
        return run(argv)

    def set_rps(self, side: str, cpus: set[int] | None) -> None:
        """Steer the receive softirq of ``side``'s veth to ``cpus`` (RPS), or turn RPS off.

        Without RPS veth runs the receiver's softirq on the sender's CPU (veth_xmit() -> netif_rx() on the sending CPU).
        """
        mask = sum(1 << c for c in cpus) if cpus else 0
        path = f"/sys/class/net/{self.ifname(side)}/queues/rx-0/rps_cpus"
        self._do([*self.exec_prefix(side), "sh", "-c", f"echo {mask:x} > {path}"])

    def link_counters(self, side: str) -> dict[str, int]:
        """The veth end's kernel counters (``tx_packets``, ``rx_packets``, ``rx_dropped`` …)."""
        out = run(["ip", "-n", self.ns(side), "-s", "-j", "link", "show", "dev", self.ifname(side)])
        data: list[dict[str, Any]] = json.loads(out)
        stats = data[0].get("stats64", {})
        counters: dict[str, int] = {}
        for direction in ("rx", "tx"):
            for key, value in stats.get(direction, {}).items():
                if isinstance(value, int):
                    counters[f"{direction}_{key}"] = value
        return counters

    def read_file(self, side: str, path: str) -> str:
        """A file as seen from inside ``side``'s namespace (``/proc/net/*`` is per namespace)."""
        return run([*self.exec_prefix(side), "cat", path])

    def close(self) -> None:
        """Delete both namespaces (the veth goes with them). Idempotent; never raises."""
        with _lock:
            _live.pop(self.ns_a, None)
        if self.closed:
            return
        self.closed = True
        for ns in (self.ns_a, self.ns_b):
            if os.path.exists(f"/run/netns/{ns}"):
                with contextlib.suppress(RuntimeError):
                    run(["ip", "netns", "del", ns], check=False)


def _wait_up(topo: Topology, timeout: float = 10.0) -> None:
    """Wait until both ends are UP with a link-local IPv6 address (the link has settled)."""
    deadline = time.monotonic() + timeout
    while True:
        ready = True
        for side in ("a", "b"):
            out = run(["ip", "-n", topo.ns(side), "-j", "addr", "show", "dev", topo.ifname(side)])
            info: list[dict[str, Any]] = json.loads(out) if out.strip() else []
            addrs = info[0].get("addr_info", []) if info else []
            up = bool(info) and info[0].get("operstate") == "UP"
            linklocal = any(a.get("scope") == "link" for a in addrs if a.get("family") == "inet6")
            tentative = any(a.get("tentative") for a in addrs)
            ready = ready and up and linklocal and not tentative
        if ready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"veth {topo.if_a}/{topo.if_b} did not come up in {timeout}s")
        time.sleep(0.02)


def create() -> Topology:
    """Build the namespaces, the veth pair and the addresses; registered for cleanup at once."""
    n = next(_counter)
    pid = os.getpid()
    v = (pid * 11 + n) % 512
    second, third = 18 + v // 256, v % 256
    base = f"rtb-{pid}-{n}"
    tag = f"{pid % 100000}{n}"
    topo = Topology(
        ns_a=f"{base}-a",
        ns_b=f"{base}-b",
        if_a=f"rtb{tag}a"[-15:],
        if_b=f"rtb{tag}b"[-15:],
        ip4_a=f"198.{second}.{third}.1",
        ip4_b=f"198.{second}.{third}.2",
        # Canonical text (RFC 5952), as the kernel writes addresses back.
        ip6_a=ipaddress.IPv6Address(f"2001:db8:{v:x}::1").compressed,
        ip6_b=ipaddress.IPv6Address(f"2001:db8:{v:x}::2").compressed,
        mac_a=f"02:72:62:{v >> 8:02x}:{v & 0xFF:02x}:0a",
        mac_b=f"02:72:62:{v >> 8:02x}:{v & 0xFF:02x}:0b",
    )
    with _lock:
        _live[topo.ns_a] = topo
    try:
        for ns in (topo.ns_a, topo.ns_b):
            topo._do(["ip", "netns", "add", ns])
            topo._do(
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                 "net.ipv6.conf.default.accept_dad=0"]
            )  # fmt: skip
        topo._do(
            ["ip", "-n", topo.ns_a, "link", "add", topo.if_a, "address", topo.mac_a, "type",
             "veth", "peer", "name", topo.if_b, "address", topo.mac_b, "netns", topo.ns_b]
        )  # fmt: skip
        for side in ("a", "b"):
            ns, ifname = topo.ns(side), topo.ifname(side)
            topo._do(["ip", "-n", ns, "link", "set", "lo", "up"])
            topo._do(["ip", "-n", ns, "addr", "add", f"{topo.ip(side, 4)}/24", "dev", ifname])
            topo._do(
                ["ip", "-n", ns, "addr", "add", f"{topo.ip(side, 6)}/64", "dev", ifname, "nodad"]
            )
            topo._do(["ip", "-n", ns, "link", "set", ifname, "up"])
        _wait_up(topo)
        # Static neighbour entries: no ARP/ND exchange inside a measurement, on either path.
        for side, other in (("a", "b"), ("b", "a")):
            mac = topo.mac_b if other == "b" else topo.mac_a
            for fam in (4, 6):
                topo._do(
                    ["ip", "-n", topo.ns(side), "neigh", "replace", topo.ip(other, fam), "lladdr",
                     mac, "dev", topo.ifname(side), "nud", "permanent"]
                )  # fmt: skip
    except BaseException:
        topo.close()
        raise
    return topo


def _on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    """A fresh :class:`Topology`, deleted when the block exits (exception, Ctrl-C, SIGTERM)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _on_signal)
    topo = create()
    try:
        yield topo
    finally:
        topo.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@atexit.register
def _cleanup() -> None:
    with _lock:
        leftovers = list(_live.values())
    for topo in leftovers:
        topo.close()


@dataclass
class NicSite:
    """A real interface in this namespace (side A) and a peer the user named (side B).

    Nothing is created or changed: the bench only sends to ``peer`` and reads the interface's
    counters. The peer runs a UDP echo on ``peer_port`` (e.g. ``python -m rawtransport echo``).
    """

    interface: str
    peer: str
    peer_port: int
    local4: str | None
    local6: str | None
    commands: list[str] = field(default_factory=list)

    @classmethod
    def probe(cls, interface: str, peer: str, peer_port: int) -> NicSite:
        """Read the interface's first global IPv4/IPv6 addresses (``RuntimeError`` if it has none)."""
        out = run(["ip", "-j", "addr", "show", "dev", interface])
        info: list[dict[str, Any]] = json.loads(out) if out.strip() else []
        addrs = info[0].get("addr_info", []) if info else []
        glob = [a for a in addrs if a.get("scope") == "global"]
        v4 = next((a["local"] for a in glob if a.get("family") == "inet"), None)
        v6 = next((a["local"] for a in glob if a.get("family") == "inet6"), None)
        if v4 is None and v6 is None:
            raise RuntimeError(f"{interface} has no global address")
        return cls(interface, peer, peer_port, v4, v6)

    def ip(self, side: str, family: int) -> str:
        """Local address on side A, the peer on side B."""
        if side == "b":
            return self.peer
        local = self.local4 if family == 4 else self.local6
        if local is None:
            raise RuntimeError(f"{self.interface} has no global IPv{family} address")
        return local

    def ifname(self, side: str) -> str:
        """The interface (side A only)."""
        del side
        return self.interface

    def exec_prefix(self, side: str) -> list[str]:
        """Nothing: the bench runs in the current namespace."""
        del side
        return []

    def link_counters(self, side: str) -> dict[str, int]:
        """The interface's counters."""
        del side
        out = run(["ip", "-s", "-j", "link", "show", "dev", self.interface])
        data: list[dict[str, Any]] = json.loads(out)
        stats = data[0].get("stats64", {})
        return {
            f"{d}_{k}": v for d in ("rx", "tx") for k, v in stats.get(d, {}).items()
            if isinstance(v, int)
        }  # fmt: skip

    def read_file(self, side: str, path: str) -> str:
        """A file in this namespace."""
        del side
        with open(path) as f:
            return f.read()

    def close(self) -> None:
        """Nothing to delete."""
