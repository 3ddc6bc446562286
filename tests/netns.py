"""Network-namespace test harness: two fresh namespaces joined by a veth pair, and peers in them.

Everything here happens inside namespaces this module creates (``rt-<pid>-<n>[-tag]-a`` / ``-b``),
addressed from 198.18.0.0/15 and 2001:db8::/32 only; the host's interfaces, addresses, routes and
neighbours are never touched. Namespaces are deleted by :func:`destroy` (the veth goes with them),
by the :func:`veth_pair` context manager even on exceptions and ``KeyboardInterrupt``, and, as a
last resort, at interpreter exit.

Typical use::

    with veth_pair() as pair:
        with setns(pair.ns_a):            # sockets made here live in namespace A ...
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((pair.ip4_a, 0))        # ... after the block too
        echo = udp_echo_peer_b(pair, 4, 7777)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Capture",
    "VethPair",
    "create_veth_pair",
    "destroy",
    "have_netns_privileges",
    "link_local",
    "readable",
    "setns",
    "tcpdump_a",
    "tcpdump_b",
    "udp_echo_peer_b",
    "veth_pair",
    "wait_for",
]

CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/run/netns"
_counter = itertools.count(1)
_live: dict[str, VethPair] = {}
_live_lock = threading.Lock()
_libc = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------------- waiting
def wait_for(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; raise ``TimeoutError(what)`` after ``timeout`` seconds.

    This waits on a condition (the small sleep only paces the polling); it never sleeps to pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            # One last look, so a condition that became true during the final interval still counts.
            if predicate():
                return
            raise TimeoutError(what or f"condition not met within {timeout}s")
        time.sleep(interval)


def readable(fileobj: Any, timeout: float) -> bool:
    """Wait until ``fileobj`` (a descriptor or an object with ``fileno()``) is readable, or time out.

    poll(), not select(): select() refuses a descriptor above FD_SETSIZE (1024), which a long test
    run in one process can reach.
    """
    poller = select.poll()
    poller.register(fileobj, select.POLLIN)
    return bool(poller.poll(max(timeout, 0.0) * 1000))


# ----------------------------------------------------------------------------------- setns
def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def setns(name: str) -> Iterator[None]:
    """Run the block with the current *thread* in network namespace ``/run/netns/<name>``.

    The thread's original namespace is opened before switching and restored on exit, even when the
    block raises. Sockets created inside keep the namespace they were created in.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad namespace name {name!r}")
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"{_NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


# ------------------------------------------------------------------------------- commands
def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 10
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, check=check, timeout=timeout
        )
    except subprocess.CalledProcessError as exc:
        exc.add_note(f"stderr: {exc.stderr.strip()}")
        raise


def _ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = _run(["ip", "-n", ns, "-j", *args]).stdout
    data = json.loads(out) if out.strip() else []
    return data if isinstance(data, list) else []


# ------------------------------------------------------------------------------ the pair
@dataclass(frozen=True)
class VethPair:
    """Two namespaces joined by a veth pair, addressed and up, with cold neighbour caches.

    ``ip4_*``/``ip6_*`` are bare addresses (on a /24 and a /64, ``prefix4``/``prefix6``); IPv6
    addresses were added with ``nodad`` and DAD is off in both namespaces, so nothing is tentative.
    """

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
    prefix4: str
    prefix6: str
    _ifindex_a: int = field(repr=False)
    _ifindex_b: int = field(repr=False)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list, repr=False, compare=False)

    @property
    def ifindex_a(self) -> int:
        """Interface index of ``if_a`` inside namespace A."""
        return self._ifindex_a

    @property
    def ifindex_b(self) -> int:
        """Interface index of ``if_b`` inside namespace B."""
        return self._ifindex_b

    def in_a(self) -> contextlib.AbstractContextManager[None]:
        """``setns(self.ns_a)``."""
        return setns(self.ns_a)

    def in_b(self) -> contextlib.AbstractContextManager[None]:
        """``setns(self.ns_b)``."""
        return setns(self.ns_b)

    def run_a(
        self, *cmd: str, check: bool = True, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in namespace A (``ip netns exec``), capturing text output."""
        return _run(["ip", "netns", "exec", self.ns_a, *cmd], check=check, timeout=timeout)

    def run_b(
        self, *cmd: str, check: bool = True, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in namespace B (``ip netns exec``), capturing text output."""
        return _run(["ip", "netns", "exec", self.ns_b, *cmd], check=check, timeout=timeout)

    def _popen(self, ns: str, cmd: Sequence[str], kw: dict[str, Any]) -> subprocess.Popen[str]:
        kw.setdefault("text", True)
        proc: subprocess.Popen[str] = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self._procs.append(proc)
        return proc

    def popen_a(self, *cmd: str, **kw: Any) -> subprocess.Popen[str]:
        """Start ``cmd`` in namespace A; tracked, and killed by :func:`destroy` if still running."""
        return self._popen(self.ns_a, cmd, kw)

    def popen_b(self, *cmd: str, **kw: Any) -> subprocess.Popen[str]:
        """Start ``cmd`` in namespace B; tracked, and killed by :func:`destroy` if still running.

        ``ip netns exec`` execs the command, so ``proc.pid`` is the command's own PID.
        """
        return self._popen(self.ns_b, cmd, kw)


def _links_ready(ns: str, ifname: str) -> bool:
    links = _ip_json(ns, "link", "show", "dev", ifname)
    if not links or links[0].get("operstate") != "UP":
        return False
    infos = [i for a in _ip_json(ns, "addr", "show", "dev", ifname) for i in a.get("addr_info", [])]
    if any(i.get("tentative") or i.get("dadfailed") for i in infos):
        return False
    # The link-local address appears when the carrier comes up; wait for it so the link's state
    # does not change under the test.
    return any(i.get("family") == "inet6" and i.get("scope") == "link" for i in infos)


def link_local(ns: str, ifname: str) -> tuple[str, int]:
    """The IPv6 link-local address of ``ifname`` in ``ns`` and the interface's index there."""
    infos = [i for a in _ip_json(ns, "addr", "show", "dev", ifname) for i in a.get("addr_info", [])]
    address = next(
        i["local"] for i in infos if i.get("family") == "inet6" and i.get("scope") == "link"
    )
    index = _ip_json(ns, "link", "show", "dev", ifname)[0]["ifindex"]
    return str(address), int(index)


def create_veth_pair(tag: str = "") -> VethPair:
    """Create namespaces A and B, a veth between them, addresses; wait until usable.

    Names are unique per run (process id and a counter); ``tag`` (letters, digits, ``-``) is added
    to the namespace names to tell pairs apart in ``ip netns list``.
    """
    if tag and not re.fullmatch(r"[A-Za-z0-9-]{1,16}", tag):
        raise ValueError(f"tag {tag!r}: up to 16 letters, digits or '-'")
    n = next(_counter)
    pid = os.getpid()
    base = f"rt-{pid}-{n}" + (f"-{tag}" if tag else "")
    # 512 /24s in 198.18.0.0/15; the subnet differs between pairs and runs so captures are legible,
    # though each pair lives in its own namespaces and could not collide anyway.
    v = (pid * 7 + n) % 512
    third, second = v % 256, 18 + v // 256
    pair_kw = {
        "ns_a": f"{base}-a",
        "ns_b": f"{base}-b",
        "if_a": f"rt{n}a"[-15:],
        "if_b": f"rt{n}b"[-15:],
        "ip4_a": f"198.{second}.{third}.1",
        "ip4_b": f"198.{second}.{third}.2",
        # Canonical text (RFC 5952), as the kernel writes addresses back: v = 0 would otherwise
        # give "2001:db8:0::1" where getsockname()/recvfrom() say "2001:db8::1".
        "ip6_a": ipaddress.IPv6Address(f"2001:db8:{v:x}::1").compressed,
        "ip6_b": ipaddress.IPv6Address(f"2001:db8:{v:x}::2").compressed,
        "mac_a": f"02:72:74:{v >> 8:02x}:{v & 0xFF:02x}:0a",
        "mac_b": f"02:72:74:{v >> 8:02x}:{v & 0xFF:02x}:0b",
        "prefix4": f"198.{second}.{third}.0/24",
        "prefix6": ipaddress.IPv6Network(f"2001:db8:{v:x}::/64").compressed,
    }
    ns_a, ns_b = pair_kw["ns_a"], pair_kw["ns_b"]
    if_a, if_b = pair_kw["if_a"], pair_kw["if_b"]
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            _run(["ip", "netns", "add", ns])
            created.append(ns)
            # DAD off before the veth exists, so its link-local address is never tentative either.
            _run(
                [
                    "ip", "netns", "exec", ns, "sysctl", "-qw",
                    "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                ]
            )  # fmt: skip
        _run(
            [
                "ip", "-n", ns_a, "link", "add", if_a, "address", pair_kw["mac_a"],
                "type", "veth", "peer", "name", if_b, "address", pair_kw["mac_b"], "netns", ns_b,
            ]
        )  # fmt: skip
        for ns, ifname, ip4, ip6 in (
            (ns_a, if_a, pair_kw["ip4_a"], pair_kw["ip6_a"]),
            (ns_b, if_b, pair_kw["ip4_b"], pair_kw["ip6_b"]),
        ):
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", ifname])
            _run(["ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", ifname, "nodad"])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])
        wait_for(
            lambda: _links_ready(ns_a, if_a) and _links_ready(ns_b, if_b),
            timeout=10,
            what=f"veth {if_a}/{if_b} up with usable IPv6 addresses",
        )
        idx_a = int(_ip_json(ns_a, "link", "show", "dev", if_a)[0]["ifindex"])
        idx_b = int(_ip_json(ns_b, "link", "show", "dev", if_b)[0]["ifindex"])
        pair = VethPair(
            ns_a=ns_a,
            ns_b=ns_b,
            if_a=if_a,
            if_b=if_b,
            ip4_a=pair_kw["ip4_a"],
            ip4_b=pair_kw["ip4_b"],
            ip6_a=pair_kw["ip6_a"],
            ip6_b=pair_kw["ip6_b"],
            mac_a=pair_kw["mac_a"],
            mac_b=pair_kw["mac_b"],
            prefix4=pair_kw["prefix4"],
            prefix6=pair_kw["prefix6"],
            _ifindex_a=idx_a,
            _ifindex_b=idx_b,
        )
    except BaseException:
        for ns in created:
            _run(["ip", "netns", "del", ns], check=False)
        raise
    with _live_lock:
        _live[pair.ns_a] = pair
    return pair


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def destroy(pair: VethPair) -> None:
    """Stop the pair's tracked processes, then delete both namespaces (and with them the veth).

    Idempotent. Processes go first: a process still inside a namespace would keep it (and the veth)
    alive after its name is removed.
    """
    with _live_lock:
        _live.pop(pair.ns_a, None)
    errors: list[BaseException] = []
    while pair._procs:
        proc = pair._procs.pop()
        try:
            _stop(proc)
        except BaseException as exc:
            errors.append(exc)
    for ns in (pair.ns_a, pair.ns_b):
        if os.path.exists(f"{_NETNS_DIR}/{ns}"):
            res = _run(["ip", "netns", "del", ns], check=False)
            if res.returncode != 0 and os.path.exists(f"{_NETNS_DIR}/{ns}"):
                errors.append(RuntimeError(f"ip netns del {ns}: {res.stderr.strip()}"))
    if errors:
        raise errors[0]


@contextlib.contextmanager
def veth_pair(tag: str = "") -> Iterator[VethPair]:
    """A fresh :class:`VethPair`, destroyed when the block exits however it exits."""
    pair = create_veth_pair(tag)
    try:
        yield pair
    finally:
        destroy(pair)


_OWNER_PID = os.getpid()


@atexit.register
def _destroy_leftovers() -> None:
    # A child made by fork() inherits _live and this hook: only the process that created the
    # pairs may delete them, or a child's exit would pull namespaces from under running tests.
    if os.getpid() != _OWNER_PID:
        return
    with _live_lock:
        pairs = list(_live.values())
    for pair in pairs:
        with contextlib.suppress(Exception):
            destroy(pair)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (a CI timeout, `timeout`, kill PID) would end the process without running `finally`
    # blocks or atexit hooks, leaving namespaces behind: turn it into a normal exit.
    if os.getpid() != _OWNER_PID:
        os._exit(128 + signum)  # a forked child: die as SIGTERM would, touching nothing
    raise SystemExit(128 + signum)


if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and threading.current_thread() is (
    threading.main_thread()
):
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


# ------------------------------------------------------------------------------ privileges
@functools.cache
def have_netns_privileges() -> bool:
    """Can this process build namespaces and open packet sockets? (Probed once, then cached.)

    Needs Linux, ``ip``, CAP_NET_ADMIN and CAP_NET_RAW (root has both), and a namespace that can
    really be created and deleted.
    """
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        return False
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    if not (caps >> 12) & 1 or not (caps >> 13) & 1:  # CAP_NET_ADMIN = 12, CAP_NET_RAW = 13
        return False
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except OSError:
        return False
    probe = f"rt-probe-{os.getpid()}"
    try:
        ok = _run(["ip", "netns", "add", probe], check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    _run(["ip", "netns", "del", probe], check=False)
    return ok


# ---------------------------------------------------------------------------------- peers
def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> None:
    """Read ``proc.stdout`` until a line containing ``needle`` (the peer's readiness signal)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise TimeoutError(f"peer never printed {needle!r} (exit status {proc.poll()})")
        if readable(proc.stdout, left):
            line = proc.stdout.readline()
            if needle in line:
                return


_ECHO = """
import socket, sys
family = socket.AF_INET if sys.argv[1] == "4" else socket.AF_INET6
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((sys.argv[2], int(sys.argv[3])))
print("ready", s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(data, addr)
"""


def udp_echo_peer_b(pair: VethPair, family: int, port: int) -> subprocess.Popen[str]:
    """A kernel UDP echo server on ``ip4_b``/``ip6_b``:``port`` in namespace B, ready on return.

    A small Python process rather than ``socat``: it says when it has bound, so no test has to
    guess. ``family`` is 4 or 6 (``socket.AF_INET``/``AF_INET6`` also accepted). Stop it by PID, or
    leave it to :func:`destroy`.
    """
    fam = {4: 4, 6: 6, socket.AF_INET: 4, socket.AF_INET6: 6}.get(family)
    if fam is None:
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    addr = pair.ip4_b if fam == 4 else pair.ip6_b
    proc = pair.popen_b(
        sys.executable, "-c", _ECHO, str(fam), addr, str(port), stdout=subprocess.PIPE
    )
    try:
        _wait_for_line(proc, "ready", timeout=10)
    except BaseException:
        _stop(proc)
        raise
    return proc


class Capture:
    """A running ``tcpdump`` in one namespace; its decoded lines accumulate in :attr:`lines`."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lines: list[str] = []
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._threads = [
            threading.Thread(target=self._pump, args=(proc.stdout, False), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, True), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, is_stderr: bool) -> None:
        for line in stream:
            with self._lock:
                (self._stderr if is_stderr else self._lines).append(line.rstrip("\n"))
            if is_stderr and "listening on" in line:
                self._listening.set()

    @property
    def lines(self) -> list[str]:
        """The packets decoded so far, one line each (a copy)."""
        with self._lock:
            return list(self._lines)

    def wait_listening(self, timeout: float = 10) -> None:
        """Block until tcpdump says it is capturing."""
        wait_for(
            lambda: self._listening.is_set() or self.proc.poll() is not None,
            timeout=timeout,
            what="tcpdump to start listening",
        )
        if not self._listening.is_set():
            raise RuntimeError(f"tcpdump exited: {' / '.join(self._stderr)}")

    def wait_for_lines(self, predicate: Callable[[list[str]], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate(self.lines)`` holds."""
        wait_for(lambda: predicate(self.lines), timeout=timeout, what="expected tcpdump output")

    def stop(self) -> list[str]:
        """Stop tcpdump (by PID) and return every line it printed."""
        _stop(self.proc)
        for t in self._threads:
            t.join(timeout=5)
        return self.lines


def _tcpdump(pair: VethPair, side: str, bpf_filter: str, args: Sequence[str]) -> Capture:
    ifname = pair.if_a if side == "a" else pair.if_b
    cmd = ["tcpdump", "-i", ifname, "-n", "-l", "-e", *args]
    if bpf_filter:
        cmd.append(bpf_filter)
    popen = pair.popen_a if side == "a" else pair.popen_b
    capture = Capture(popen(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        capture.wait_listening()
    except BaseException:
        capture.stop()
        raise
    return capture


def tcpdump_b(pair: VethPair, bpf_filter: str = "", *, args: Sequence[str] = ()) -> Capture:
    """Capture on ``if_b`` in namespace B (``tcpdump -n -l -e``); returns once it is listening."""
    return _tcpdump(pair, "b", bpf_filter, args)


def tcpdump_a(pair: VethPair, bpf_filter: str = "", *, args: Sequence[str] = ()) -> Capture:
    """Capture on ``if_a`` in namespace A; see :func:`tcpdump_b`."""
    return _tcpdump(pair, "a", bpf_filter, args)


def is_packet_socket(fd: int) -> bool:
    """Whether ``fd`` is (still, or again) an AF_PACKET socket."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        return s.family == socket.AF_PACKET
    finally:
        s.detach()
