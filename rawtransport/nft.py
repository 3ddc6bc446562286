"""Kernel-bypass receive: an nftables netdev-ingress rule that drops one endpoint's datagrams.

Why: with only a guard UDP socket, every datagram the raw endpoint reads from its packet socket also
goes through the kernel's whole IP and UDP input path (``ip_rcv()`` -> ``udp_rcv()`` -> the guard's
drop-all filter), which costs the receiving core as much as the raw path saves (docs/bench/bench.md, the bypass rows). A
rule in a ``netdev`` table's ingress chain drops the endpoint's frames in ``nf_hook_ingress()``,
which ``__netif_receive_skb_core()`` runs *after* the packet taps (``ptype_all``, where the
endpoint's ``ETH_P_ALL`` socket sits) and *before* the protocol handlers (``ip_rcv()``): the raw
endpoint still sees every frame, the kernel's UDP input sees none of them.

What is dropped (see :func:`drop_rules`): Ethernet frames of type IPv4/IPv6 carrying UDP to the
endpoint's port and to its bound address — for a wildcard endpoint, to any address that is local
right now (``fib daddr type local``, looked up per packet, so address changes need no rule change) —
and, for a connected endpoint, only from the peer's address and port (datagrams from anyone else
still go to the kernel, which answers them as it would without bypass). Nothing else is touched:
other ports, other protocols, ARP/ND, broadcasts and multicasts take the kernel's path as before.

Fragments: the transport-header match (``udp dport``) only ever matches an unfragmented datagram or
a *first* fragment (nft_payload refuses transport offsets when ``pkt->fragoff`` is non-zero), so the
first fragment of a datagram to the endpoint is dropped and the endpoint reassembles it from the
copies its packet socket saw. The later fragments carry no port, so they cannot be told apart from
other traffic to the same address: by default they still reach the kernel, which queues them until
``ipfrag_time`` and then frees them silently (``ip_expire()``/``ip6_frag_expire()`` send an ICMP
time-exceeded only when they hold the first fragment, which never arrives). ``drop_fragments=True``
also drops non-first fragments to the bound address (from the peer, if connected): only for an
address (or peer) used by this endpoint alone, since it drops other sockets' fragments too.

Never left behind: the table is created with ``flags owner`` (``NFT_TABLE_F_OWNER``, Linux >= 5.12,
nftables >= 1.0.1): the kernel deletes it when the netlink socket that created it is closed
(``nft_rcv_nl_event()``). That socket belongs to a child ``nft -i`` whose standard input is a pipe
from this process. :meth:`NftBypass.close` closes the pipe; if this process dies, even by SIGKILL,
the kernel closes it: ``nft`` reads end-of-file and exits, its socket closes, the table is gone. An
owned table cannot be changed or deleted by any other process (EPERM). Caveats: a child made by a
bare ``fork()`` (not ``subprocess``, whose children never get the pipe: it is close-on-exec)
inherits the pipe and keeps the table until it exits too; and if ``nft`` dies first the table goes
with it — the endpoint keeps working, with the kernel's UDP input running again (slower, never
wrong: the drop-all guard still discards what the kernel delivers). :attr:`NftBypass.alive` says.

Interfaces: one ingress chain per interface, named at install time. An endpoint that receives on
every interface adds chains for interfaces that appear later (:meth:`NftBypass.add_interfaces`,
called from the endpoint's rtnetlink refresh); until then their traffic takes the kernel path. A chain
whose device vanishes stays in the table (seen on 6.18, which even accepts a chain naming an absent
device: hooks are kept by name there); older kernels refuse absent devices, and whether a chain binds
again when a device of the same name returns depends on the kernel. Frames with a VLAN tag never
match ``ether type ip``/``ip6``.

This module is a boundary module (it runs ``nft``); the ruleset text generation (:class:`BypassSpec`,
:func:`drop_rules`, :func:`table_command`, :func:`chain_command`) is pure and unit tested.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import secrets
import select
import subprocess
import time
import weakref
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "INGRESS_PRIORITY",
    "BypassSpec",
    "Hook",
    "NftBypass",
    "NftError",
    "chain_command",
    "close_all",
    "drop_rules",
    "table_command",
    "table_name",
    "valid_ifname",
]

#: Ingress chain priority: ahead of anything an administrator is likely to have at 0.
INGRESS_PRIORITY: Final = -500

# dev_valid_name() allows any byte but '/', ':', whitespace and NUL; we only quote names that cannot
# break out of nft's double-quoted strings or the command line (no quotes, backslashes, ';' ...).
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"

# A command that always succeeds and prints one known line: it marks the end of each answer.
_SENTINEL: Final = "describe udp dport"
_SENTINEL_MARK: Final = b"inet_service"


class NftError(OSError):
    """nftables could not install, change or remove the endpoint's ruleset (message says why)."""


# ------------------------------------------------------------------------------ pure: rule text
def valid_ifname(name: str) -> bool:
    """Whether ``name`` can be put in a ruleset (Linux names of 1-15 plain characters)."""
    return isinstance(name, str) and _IFNAME.fullmatch(name) is not None and name not in (".", "..")


def table_name(pid: int, token: int) -> str:
    """A table name unique to one endpoint: ``rawtransport_<pid>_<token as 8 hex digits>``."""
    if pid < 0 or not 0 <= token <= 0xFFFFFFFF:
        raise ValueError(f"bad pid {pid!r} or token {token!r}")
    return f"rawtransport_{pid}_{token:08x}"


def _check_ip(name: str, value: bytes | None) -> None:
    if value is None:
        return
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) not in (4, 16):
        raise ValueError(f"{name} must be 4 or 16 bytes, not {len(value)}")


def _check_port(name: str, value: int | None, *, zero_ok: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not (0 if zero_ok else 1) <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} outside 1..65535")


def _unmap(addr: bytes | None) -> bytes | None:
    """A v4-mapped IPv6 address (``::ffff:a.b.c.d``) is an IPv4 address on the wire."""
    if addr is not None and len(addr) == 16 and addr[:12] == _V4_MAPPED:
        return bytes(addr[12:])
    return None if addr is None else bytes(addr)


@dataclass(frozen=True, slots=True)
class BypassSpec:
    """The datagrams of one endpoint, as the kernel would deliver them to its UDP socket.

    ``family`` is 4, 6, or 0 for an IPv6 wildcard socket that also takes IPv4 (not ``IPV6_V6ONLY``).
    ``local_ip`` ``None`` means a wildcard endpoint (any local address). ``remote_ip``/``remote_port``
    describe a connected endpoint. IPv4 addresses may also be given v4-mapped.
    """

    family: int
    local_port: int
    local_ip: bytes | None = None
    remote_ip: bytes | None = None
    remote_port: int | None = None
    drop_fragments: bool = False

    def __post_init__(self) -> None:
        if self.family not in (0, 4, 6):
            raise ValueError(f"family must be 0, 4 or 6, not {self.family!r}")
        _check_port("local_port", self.local_port)
        _check_port("remote_port", self.remote_port, zero_ok=True)
        _check_ip("local_ip", self.local_ip)
        _check_ip("remote_ip", self.remote_ip)
        if (self.remote_ip is None) != (self.remote_port is None):
            raise ValueError("remote_ip and remote_port go together")
        for name, value in (("local_ip", self.local_ip), ("remote_ip", self.remote_ip)):
            if value is None:
                continue
            plain = _unmap(value)
            if self.family == 4 and plain is not None and len(plain) != 4:
                raise ValueError(f"{name} is IPv6 on an IPv4 endpoint")
            # An IPv6 socket holds IPv4 addresses v4-mapped; 4 raw bytes there are a mistake.
            if self.family in (0, 6) and len(value) == 4:
                raise ValueError(f"{name} is 4 bytes on an IPv6 endpoint: give it v4-mapped")
        local, remote = _unmap(self.local_ip), _unmap(self.remote_ip)
        if local is not None and remote is not None and len(local) != len(remote):
            raise ValueError("local_ip and remote_ip are of different families")

    def families(self) -> tuple[int, ...]:
        """The IP versions whose frames can carry this endpoint's datagrams."""
        for addr in (_unmap(self.local_ip), _unmap(self.remote_ip)):
            if addr is not None:
                return (4,) if len(addr) == 4 else (6,)
        return (4, 6) if self.family == 0 else (self.family,)


def _ntop(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def drop_rules(spec: BypassSpec, *, ethernet: bool = True) -> list[str]:
    """The rule statements (one per IP version, plus fragment rules) dropping ``spec``'s datagrams.

    On an Ethernet device the frame type is matched with ``ether type``, which nft compiles to a
    device-type check (``iiftype ether``) and a load of the frame's own type field — so a frame with
    an 802.1Q tag (rebuilt by nft_payload_copy_vlan() even when the tag was offloaded) never matches,
    and the VLAN device on top still gets it. Other devices (loopback: ``ARPHRD_LOOPBACK``) carry no
    VLAN and fail the ``iiftype`` check: there ``ethernet=False`` matches ``meta protocol``
    (``skb->protocol``) instead. ``counter`` lets :meth:`NftBypass.dropped` report how many frames
    the kernel never saw.
    """
    rules: list[str] = []
    local, remote = _unmap(spec.local_ip), _unmap(spec.remote_ip)
    for version in spec.families():
        ip = "ip" if version == 4 else "ip6"
        kind = f"ether type {ip}" if ethernet else f"meta protocol {ip}"
        dst = f"{ip} daddr {_ntop(local)}" if local is not None else "fib daddr type local"
        src = f" {ip} saddr {_ntop(remote)}" if remote is not None else ""
        sport = f" udp sport {spec.remote_port}" if spec.remote_port is not None else ""
        rules.append(f"{kind} udp dport {spec.local_port} {dst}{src}{sport} counter drop")
        if spec.drop_fragments and local is not None:
            # Non-first fragments carry no UDP header: match them by address (RFC 791 fragment
            # offset; RFC 8200 §4.5 fragment header). Only the first fragment names the port.
            frag = "ip frag-off & 0x1fff != 0" if version == 4 else "frag frag-off != 0"
            rules.append(f"{kind} {dst}{src} {frag} counter drop")
    return rules


class Hook(NamedTuple):
    """One ingress chain: its name, its device, and whether the device is Ethernet."""

    chain: str
    device: str
    ethernet: bool = True


def _hook(device: str) -> str:
    if not valid_ifname(device):
        raise ValueError(f"interface name {device!r} cannot be used in an nftables ruleset")
    return f'type filter hook ingress device "{device}" priority {INGRESS_PRIORITY}; policy accept;'


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(f"bad {kind} name {name!r}")


def table_command(
    table: str, hooks: Sequence[Hook], spec: BypassSpec, *, owner: bool = True
) -> str:
    """One ``nft`` command line creating the whole table, with a chain per hook, in one transaction.

    With ``owner`` the table carries ``flags owner``: it lives only as long as the netlink socket
    that created it.
    """
    _check_name("table", table)
    parts = [f"add table netdev {table} {{"]
    if owner:
        parts.append(" flags owner;")
    for hook in hooks:
        _check_name("chain", hook.chain)
        body = " ".join(f"{rule};" for rule in drop_rules(spec, ethernet=hook.ethernet))
        parts.append(f" chain {hook.chain} {{ {_hook(hook.device)} {body} }};")
    parts.append(" }")
    return "".join(parts)


def chain_command(table: str, hook: Hook, spec: BypassSpec) -> str:
    """One ``nft`` command line adding a chain for ``hook`` to an existing table.

    ``add chain`` and ``add rule`` never touch the table itself, so an owned table stays owned
    (re-declaring it without ``flags owner`` would be refused by ``nf_tables_updtable()``).
    """
    _check_name("table", table)
    _check_name("chain", hook.chain)
    cmds = [f"add chain netdev {table} {hook.chain} {{ {_hook(hook.device)} }}"]
    cmds += [
        f"add rule netdev {table} {hook.chain} {rule}"
        for rule in drop_rules(spec, ethernet=hook.ethernet)
    ]
    return "; ".join(cmds)


def _explain(stderr: str) -> tuple[int, str]:
    """An errno and a hint for what ``nft`` printed."""
    if "Operation not permitted" in stderr:
        return errno.EPERM, "changing nftables rules needs CAP_NET_ADMIN"
    if "Operation not supported" in stderr or "Protocol not supported" in stderr:
        return errno.EOPNOTSUPP, (
            "this kernel lacks nf_tables netdev ingress or owned tables "
            "(needs CONFIG_NF_TABLES_NETDEV, CONFIG_NFT_FIB_NETDEV and Linux >= 5.12)"
        )
    if "syntax error" in stderr:
        return errno.EINVAL, "this nft is too old (table flags owner needs nftables >= 1.0.1)"
    if "No such file or directory" in stderr:
        return errno.ENOENT, "a kernel module is missing (nf_tables netdev, nft_fib_netdev?)"
    return errno.EIO, "nft refused the ruleset"


# ------------------------------------------------------------------------------ boundary: nft -i
class _Session:
    """An ``nft -i`` child fed command lines through a pipe; each answer ends with a sentinel."""

    def __init__(self, nft: str) -> None:
        env = dict(os.environ)
        # The interactive CLI reads and writes $HOME/.nft.history: point it nowhere writable.
        env.update(HOME="/dev/null", TERM="dumb", LC_ALL="C")
        try:
            self.proc = subprocess.Popen(
                [nft, "-i"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                # Out of our process group: a ^C meant for us must not kill nft (and the table).
                start_new_session=True,
            )
        except FileNotFoundError:
            raise NftError(
                errno.ENOENT,
                f"kernel_bypass needs the nft command ({nft!r} not found): install nftables "
                "(Debian/Ubuntu: apt install nftables; Fedora: dnf install nftables)",
            ) from None
        except PermissionError as exc:
            raise NftError(errno.EACCES, f"cannot run {nft!r}: {exc.strerror}") from None
        stdin, stdout, stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        if stdin is None or stdout is None or stderr is None:  # pragma: no cover - PIPE given
            raise RuntimeError("subprocess pipes missing")
        self._in = stdin
        self._out = stdout.fileno()
        self._err = stderr.fileno()
        os.set_blocking(self._out, False)
        os.set_blocking(self._err, False)

    def run(self, command: str, timeout: float) -> tuple[list[str], str]:
        """Send one command line; return (its stdout lines, its stderr text)."""
        if "\n" in command:
            raise ValueError("one command line at a time")
        try:
            self._in.write(f"{command}\n{_SENTINEL}\n".encode())
            self._in.flush()
        except (BrokenPipeError, ValueError):
            raise NftError(errno.EPIPE, f"nft exited (status {self.proc.poll()})") from None
        out = bytearray()
        err = bytearray()
        deadline = time.monotonic() + timeout
        while _SENTINEL_MARK not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NftError(errno.ETIMEDOUT, f"nft did not answer within {timeout}s")
            # poll(), not select(): the caller's process may hold descriptors above FD_SETSIZE.
            poller = select.poll()
            poller.register(self._out, select.POLLIN)
            poller.register(self._err, select.POLLIN)
            for fd, _ in poller.poll(left * 1000):
                chunk = _read(fd)
                if not chunk:
                    if fd == self._out:
                        err += _read(self._err)
                        raise NftError(
                            errno.EPIPE, f"nft exited: {err.decode(errors='replace').strip()}"
                        )
                    continue
                (out if fd == self._out else err).extend(chunk)
        # nft writes a command's errors before it reads the next line: they are in the pipe now.
        err += _read(self._err)
        lines = out.decode(errors="replace").splitlines()
        mark = _SENTINEL_MARK.decode()
        cut = next(i for i, line in enumerate(lines) if mark in line)
        return lines[:cut], err.decode(errors="replace").strip()

    def close(self, timeout: float) -> None:
        """End of input: nft exits and the kernel drops the owned table with its socket."""
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by PID
            self.proc.wait(timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def close_all() -> None:
    """Close every open bypass (:func:`rawtransport.privileges.drop_privileges` ends the ``nft``
    children, which hold CAP_NET_ADMIN in processes of their own)."""
    for bypass in list(_live):
        bypass.close()


class NftBypass:
    """One endpoint's owned nftables table, kept alive by a child ``nft -i``.

    Build with :meth:`install`; remove with :meth:`close` (idempotent). See the module docstring for
    what is dropped and why the table cannot outlive this process.
    """

    def __init__(self, session: _Session, table: str, spec: BypassSpec, timeout: float) -> None:
        self._session = session
        self.table = table
        self.spec = spec
        self._timeout = timeout
        self._chains: dict[str, str] = {}  # interface name -> chain name
        self._next = 0
        self.closed = False

    @classmethod
    def install(
        cls,
        spec: BypassSpec,
        interfaces: Iterable[str],
        *,
        non_ethernet: Collection[str] = (),
        nft: str = "nft",
        timeout: float = 5.0,
    ) -> NftBypass:
        """Create the table with a chain per interface, or raise :class:`NftError` saying why.

        ``non_ethernet`` names the interfaces (loopback) whose frames are matched by
        ``meta protocol`` rather than ``ether type`` (see :func:`drop_rules`). Runs ``nft`` in the
        calling thread's network namespace: the one the endpoint's sockets were opened in. Interface
        names that cannot be quoted safely raise ``ValueError``.
        """
        names = list(dict.fromkeys(interfaces))
        for name in names:
            if not valid_ifname(name):
                raise ValueError(f"interface name {name!r} cannot be used in an nftables ruleset")
        table = table_name(os.getpid(), secrets.randbits(32))
        session = _Session(nft)
        bypass = cls(session, table, spec, timeout)
        try:
            hooks = [bypass._hook_for(name, name not in non_ethernet) for name in names]
            _, err = session.run(table_command(table, hooks, spec), timeout)
            if err:
                code, hint = _explain(err)
                raise NftError(code, f"kernel_bypass: {hint}; nft said: {err}")
        except BaseException:
            bypass.closed = True
            session.close(timeout)
            raise
        _live.add(bypass)
        return bypass

    def _hook_for(self, device: str, ethernet: bool) -> Hook:
        hook = Hook(f"ingress_{self._next}", device, ethernet)
        self._next += 1
        self._chains[device] = hook.chain
        return hook

    @property
    def interfaces(self) -> tuple[str, ...]:
        """The interfaces whose ingress has a chain."""
        return tuple(self._chains)

    @property
    def alive(self) -> bool:
        """True while the ``nft`` child (and so the owned table) exists."""
        return not self.closed and self._session.proc.poll() is None

    @property
    def pid(self) -> int:
        """The ``nft -i`` child's process id."""
        return self._session.proc.pid

    def add_interfaces(
        self, names: Iterable[str], *, non_ethernet: Collection[str] = ()
    ) -> list[str]:
        """Add chains for interfaces not covered yet; return the names added.

        Names that cannot be quoted safely are skipped (their traffic keeps the kernel path). Blocks
        until ``nft`` answers (milliseconds). Raises :class:`NftError` if it refuses.
        """
        if self.closed:
            raise NftError(errno.EBADF, "the bypass ruleset is closed")
        added: list[str] = []
        for name in dict.fromkeys(names):
            if name in self._chains or not valid_ifname(name):
                continue
            hook = self._hook_for(name, name not in non_ethernet)
            _, err = self._session.run(chain_command(self.table, hook, self.spec), self._timeout)
            if err:
                del self._chains[name]
                code, hint = _explain(err)
                raise NftError(code, f"kernel_bypass on {name}: {hint}; nft said: {err}")
            added.append(name)
        return added

    def dropped(self) -> int:
        """Frames the rules dropped so far (the kernel never processed them), from the counters."""
        if not self.alive:
            return 0
        lines, _err = self._session.run(f"list table netdev {self.table}", self._timeout)
        total = 0
        for line in lines:
            m = re.search(r"counter packets (\d+)", line)
            if m:
                total += int(m.group(1))
        return total

    def close(self) -> None:
        """Remove the table (by ending ``nft``'s input) and reap the child. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._session.close(self._timeout)


# Open bypasses, for close_all(); an endpoint's close (or its collection) takes its own out.
_live: weakref.WeakSet[NftBypass] = weakref.WeakSet()
