"""The synchronous I/O side of one raw UDP endpoint, shared by the asyncio and the anyio glue.

An endpoint is a registration in a :class:`~rawtransport.stack.RawStack` (which owns the packet
sockets, rings, rtnetlink and the shared host state): its guard UDP socket, which holds the address
and port, its entry in the stack's socket table, and its sans-IO
:class:`~rawtransport.engine.UdpEngine`. Opening one on a running stack costs microseconds (a guard
socket, a table entry, a filter swap). It never waits for readiness: the glue reads through the
stack (:meth:`~rawtransport.stack.RawStack.read_ready`, which feeds every endpoint) and sends
through :meth:`RawUdpEndpoint.send` and :meth:`RawUdpEndpoint.write_frames`.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from typing import Any

from rawtransport.addresses import parse_address
from rawtransport.bpf_filter import FilterEntry, drop_all
from rawtransport.datapath import DATAPATH
from rawtransport.engine import EndpointConfig, OutgoingFrame, UdpEngine
from rawtransport.link import attach_filter
from rawtransport.nft import BypassSpec, NftBypass
from rawtransport.ring_setup import RX_MODES, Receiver, open_receiver
from rawtransport.route import ARPHRD_ETHER, LOOPBACK_IFINDEX, Route, RouteKind
from rawtransport.stack import (
    NETLINK_CHECK_INTERVAL,
    TX_MODES,
    RawStack,
    StackOptions,
)

# parse_address, open_receiver and RX_MODES are re-exported: callers found them here first.
__all__ = ["RX_MODES", "TX_MODES", "RawUdpEndpoint", "open_receiver", "parse_address"]


def _family_number(family: int) -> int:
    return 4 if family == socket.AF_INET else 6


class RawUdpEndpoint:
    """Guard socket + engine of one endpoint on a stack. Construct with :meth:`open`; close with
    :meth:`close`."""

    def __init__(
        self,
        guard: socket.socket,
        engine: UdpEngine,
        stack: RawStack,
        *,
        interface: int | None,
        home_ifindex: int | None = None,
    ) -> None:
        self.guard = guard
        self.engine = engine
        self.stack = stack
        #: ``interface=`` as an index (``None``: any interface).
        self.interface = interface
        self._addr_cache: dict[tuple[Any, ...], tuple[bytes, int, int]] = {}
        self.family = guard.family
        self.closed = False
        #: The interface the endpoint is tied to (``interface=``, or the one holding the bound
        #: address). If it vanishes the endpoint cannot work again: ``lost`` says why.
        self.home_ifindex = home_ifindex
        self.lost: OSError | None = None
        #: The nftables ingress drop of ``kernel_bypass`` (set by :meth:`open`), or None.
        self.bypass: NftBypass | None = None
        cfg = engine.config
        # The source the route lookups ask for: the bound address (in the destination's family).
        self._bound = cfg.local_ip

    @property
    def tx_mode(self) -> str:
        """``"ring"`` or ``"direct"`` (the stack's). With ``"ring"`` the glue batches: it collects
        the frames of a loop iteration and writes them with one :meth:`write_frames` call."""
        return self.stack.tx_mode

    @property
    def receiver(self) -> Receiver:
        """The stack's receiving packet socket."""
        return self.stack.receiver

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def open(
        cls,
        guard: socket.socket,
        *,
        stack: RawStack,
        remote: tuple[bytes, int] | None = None,
        allow_broadcast: bool = False,
        fanout: Receiver | None = None,
    ) -> RawUdpEndpoint:
        """Build the endpoint around a bound (and maybe connected) guard UDP socket and register it
        on ``stack``.

        The guard is an ordinary UDP socket: it reserves the address and port (so the kernel picks
        ephemeral ports, reports EADDRINUSE, and sends no ICMP port-unreachable for our port) and, being
        connected when the endpoint is, receives the kernel's ICMP errors. A drop-all filter keeps
        every datagram off it. ``kernel_bypass`` is installed afterwards, off the event loop
        (:meth:`install_bypass`).

        A guard with ``SO_REUSEPORT`` makes a ``reuse_port`` endpoint, which receives through a
        ``PACKET_FANOUT`` receiver of its own: ``fanout``, opened off the event loop with
        :meth:`RawStack.open_fanout` (the stack owns it from here on; it is closed if this fails).
        """
        if reuse_port(guard) and fanout is None:
            raise ValueError("a reuse_port guard needs its fanout receiver (RawStack.open_fanout)")
        family = guard.family
        local = guard.getsockname()
        entry = filter_entry(guard)
        dual = entry.family == 0
        attach_filter(guard, drop_all())
        ifindex = stack.ifindex
        config = EndpointConfig(
            family=_family_number(family),
            local_port=local[1],
            local_ip=entry.local_ip,
            remote_ip=remote[0] if remote else None,
            remote_port=remote[1] if remote else None,
            allow_broadcast=allow_broadcast,
            dual_stack=dual,
            ifindex=ifindex or 0,
            reuse_port=fanout is not None,
        )
        home = ifindex
        if home is None and config.local_ip is not None:
            owners = stack.addresses.owners(config.local_ip)
            home = owners[0] if owners and owners[0] != LOOPBACK_IFINDEX else None
        engine = UdpEngine(config, host=stack.host)
        endpoint = cls(guard, engine, stack, interface=ifindex, home_ifindex=home)
        try:
            stack.register(endpoint, fanout)
        except BaseException:
            engine.close()
            if fanout is not None:
                fanout.close()
            raise
        return endpoint

    def install_bypass(self) -> None:
        """``kernel_bypass``: install an nftables netdev-ingress rule (:mod:`rawtransport.nft`) that
        drops the endpoint's datagrams after the packet socket has seen them and before the kernel's
        IP/UDP input runs; removed by :meth:`close`, and by the kernel if the process dies. Needs
        ``nft`` and CAP_NET_ADMIN (:class:`~rawtransport.nft.NftError` otherwise). Blocks while
        ``nft`` runs: off the event-loop thread.
        """
        cfg = self.engine.config
        spec = BypassSpec(
            family=0 if cfg.dual_stack else cfg.family,
            local_port=cfg.local_port,
            local_ip=cfg.local_ip,
            remote_ip=cfg.remote_ip,
            remote_port=cfg.remote_port,
        )
        links = self.stack.links
        if self.interface is not None:
            links = {i: x for i, x in links.items() if i == self.interface}
        self.bypass = NftBypass.install(
            spec,
            [link.name for link in links.values()],
            non_ethernet={x.name for x in links.values() if x.arphrd != ARPHRD_ETHER},
        )

    def interface_gone(self, ifindex: int) -> None:
        """The stack saw ``ifindex`` vanish (a netlink refresh)."""
        if ifindex == self.home_ifindex and self.lost is None:
            # packet_notifier(NETDEV_UNREGISTER) gives a bound packet socket ENETDOWN.
            self.lost = OSError(errno.ENETDOWN, f"Network is down: interface {ifindex} vanished")

    # ------------------------------------------------------------------------------- netlink
    def route(self, dst: bytes, now: float, scope: int = 0) -> Route:
        """The kernel's route to ``dst`` for this endpoint (cached until something changes).

        ``scope``, a sendto() address's IPv6 scope id, is the output interface for a destination
        that needs one (link-local, or link- or interface-local multicast), as udpv6_sendmsg()
        takes it (``__ipv6_addr_needs_scope_id()``); without it the kernel picks the route."""
        bound = self._bound
        source = bound if bound is not None and len(dst) == len(bound) else None
        oif = self.interface
        if scope and len(dst) == 16 and _needs_scope(dst):
            oif = scope
        return self.stack.route(dst, source, oif, now)

    # ---------------------------------------------------------------------------------- receive
    def guard_ready(self) -> OSError | None:
        """The guard socket is readable: only an ICMP error queued on it (sk_err) can make it so."""
        try:
            self.guard.recv(1)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return exc
        return None

    # ------------------------------------------------------------------------------------- send
    def send(
        self, data: bytes | bytearray | memoryview, addr: Any, now: float, connected: bool = False
    ) -> None:
        """Hand one datagram to the engine; frames wait in ``engine.frames_to_send()``.

        ``connected``: ``addr`` is the connected peer's, as ``send(2)`` on a connected socket
        takes it (port 0 included: udp_sendmsg() checks the port of an address given only).

        Raises ``BufferError`` for a buffer that is not C-contiguous,
        ``TypeError``/``OverflowError``/``socket.gaierror`` for a bad address and the
        ``OSError`` the kernel's UDP path would have raised (EINVAL for port 0, ENETUNREACH, EMSGSIZE,
        EACCES for a broadcast without ``allow_broadcast`` …).
        """
        if type(data) is memoryview and data.nbytes != len(data):
            # socket.sendto() sends the buffer's bytes: an array('H') view of 3 items is 6
            # bytes, a 2-D view all its rows. The engine counts bytes with len(); a view that is
            # not C-contiguous is refused as socket.sendto() refuses it (PyBUF_SIMPLE).
            if not data.c_contiguous:
                raise BufferError("memoryview: underlying buffer is not C-contiguous")
            data = data.tobytes()
        elif type(data) is memoryview and not data.c_contiguous:
            raise BufferError("memoryview: underlying buffer is not C-contiguous")
        dst, port, scope = parse_address(addr, self.family, self._addr_cache)
        if port == 0 and not connected:
            # udp_sendmsg(): "if (dport == 0) return -EINVAL", for an address given to sendto().
            raise OSError(errno.EINVAL, "Invalid argument")
        if self.family == socket.AF_INET6 and dst[:12] == bytes(10) + b"\xff\xff":
            if not self.engine.config.dual_stack:
                raise OSError(errno.ENETUNREACH, "Network is unreachable")
            dst = dst[12:]
        route = self.route(dst, now, scope)
        if route.kind is RouteKind.LOCAL and len(dst) == 4:
            # To one of this host's own IPv4 addresses: a frame injected on lo with a local (or
            # 127/8) source is a martian to ip_route_input_slow()/fib_validate_source() unless
            # accept_local/route_localnet are set, so no kernel socket would get it. The guard is a
            # kernel UDP socket with our address and port: the kernel path delivers it, and raw
            # endpoints on this host still see it on lo.
            self.guard.sendto(data, (socket.inet_ntop(socket.AF_INET, dst), port))
            self.engine.count_sent_by_kernel()
            return
        self.engine.send_datagram(data, (dst, port), route, now)

    def learn(self, sender: Any, key: Any) -> None:
        """The datagram just sent to ``key`` (the address as the caller gave it) has left: if the
        engine built it on its fast branch, make its headers that destination's template in
        ``sender`` (a ``_datapath.FastSender``, rawtransport/_send.c), for as long as the
        neighbour entry stays REACHABLE and nothing changes (the host clears templates then)."""
        built = self.engine.take_built()
        if built is None:
            return
        frame, route = built
        fd = self.stack.direct_fileno(route.ifindex)
        confirmation = self.engine.host.neigh.confirmation(route.ifindex, route.next_hop)
        if fd is None or confirmation is None:
            return
        overhead = 28 if len(route.source) == 4 else 48
        sender.install(key, frame, fd, route.mtu - overhead, *confirmation)
        # The Python path's route() looks for netlink news every millisecond: so does the C one.
        sender.watch(self.stack.netlink_fileno(), NETLINK_CHECK_INTERVAL)

    def sender_fileno(self, ifindex: int) -> int:
        """The descriptor of the packet socket that sends on ``ifindex`` (for ``add_writer``)."""
        return self.stack.sender_fileno(ifindex, self.engine)

    def write_frames(
        self, frames: Iterable[OutgoingFrame]
    ) -> tuple[list[OutgoingFrame], list[OSError], bool]:
        """Write frames in order until one cannot leave now (:meth:`RawStack.write_frames`)."""
        return self.stack.write_frames(frames, self.engine)

    # ----------------------------------------------------------------------------------- misc
    def stats(self) -> dict[str, object]:
        """The engine's counters (this endpoint's frames and datagrams) and ``"datapath"``:
        ``"compiled"`` or why the pure-Python one runs (:mod:`rawtransport.datapath`).

        Shared with the other endpoints of the stack, as the kernel's are: ``"neighbour"`` and
        ``"reassembly"`` (the tables), ``"kernel_packets"``/``"kernel_drops"`` (the receiving
        socket's ``PACKET_STATISTICS``, accumulated), and ``"stack"``: the stack-wide view (frames
        read, drops of frames no endpoint took, by reason; see :meth:`RawStack.stats`).

        With ``kernel_bypass``, also ``"kernel_bypass"``: whether the rule is in place (``active``),
        frames it kept from the kernel's IP stack (``dropped``), and the interfaces it covers.
        """
        stats = self.engine.stats()
        stats["datapath"] = DATAPATH
        stack = self.stack.stats()
        stats["kernel_packets"] = stack["kernel_packets"]
        stats["kernel_drops"] = stack["kernel_drops"]
        stats["stack"] = stack
        if self.bypass is not None:
            stats["kernel_bypass"] = {
                "active": self.bypass.alive,
                "pid": self.bypass.pid,  # the nft child holding the table
                "dropped": self.bypass.dropped(),
                "interfaces": list(self.bypass.interfaces),
            }
        return stats

    def close(self) -> None:
        """Leave the stack and close the guard."""
        if self.closed:
            return
        self.closed = True
        if self.bypass is not None:
            # Before leaving the stack: once the rule is gone the kernel takes our datagrams again
            # and the guard (still open) discards them, so none is answered with port-unreachable.
            self.bypass.close()
        self.stack.unregister(self)
        self.guard.close()


def reuse_port(guard: socket.socket) -> bool:
    """Whether the guard has ``SO_REUSEPORT`` (set by ``reuse_port=True``, or on a ``sock=``)."""
    return bool(guard.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


def filter_entry(guard: socket.socket) -> FilterEntry:
    """What the guard is bound to, as a :class:`FilterEntry` (family 0: dual-stack wildcard)."""
    family = guard.family
    host, port = guard.getsockname()[:2]
    local_ip = socket.inet_pton(family, host.split("%")[0])
    if local_ip == bytes(len(local_ip)):
        dual = family == socket.AF_INET6 and not guard.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        )
        return FilterEntry(0 if dual else _family_number(family), None, port)
    return FilterEntry(_family_number(family), local_ip, port)


def stack_options(
    *,
    interface: str | None = None,
    qdisc_bypass: bool = False,
    rcvbuf: int | None = None,
    rx_mode: str = "ring",
    busy_poll: int | None = None,
    spin_us: int | None = None,
    tx_mode: str = "direct",
) -> StackOptions:
    """The :class:`StackOptions` an endpoint with these knobs needs, checked."""
    options = StackOptions(
        rx_mode=rx_mode,
        interface=interface,
        rcvbuf=rcvbuf,
        busy_poll=busy_poll,
        spin_us=0 if spin_us is None else spin_us,
        qdisc_bypass=bool(qdisc_bypass),
        tx_mode=tx_mode,
    )
    if spin_us is not None and (not isinstance(spin_us, int) or isinstance(spin_us, bool)):
        raise TypeError(f"spin_us must be an int, not {type(spin_us).__name__}")
    options.check()
    return options


def _needs_scope(dst: bytes) -> bool:
    """__ipv6_addr_needs_scope_id(): link-local unicast, or multicast of link or interface scope."""
    if dst[0] == 0xFE and dst[1] & 0xC0 == 0x80:
        return True
    return dst[0] == 0xFF and dst[1] & 0x0F in (1, 2)
