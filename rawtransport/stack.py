"""The raw stack: the packet sockets, rings and rtnetlink state shared by many endpoints.

Kernel-bypass stacks own the device rings once per process and make sockets entries in a table; this
is that for ``AF_PACKET``. A :class:`RawStack` owns:

- one receiving packet socket and its ring, with one classic-BPF filter that accepts the union of
  what its endpoints need (:func:`rawtransport.bpf_filter.stack_filter`), swapped atomically
  (``SO_ATTACH_FILTER``) when an endpoint comes or goes;
- the sending packet sockets (or ``PACKET_TX_RING``\\ s), one per interface;
- the rtnetlink client and monitor, the route cache and the link table;
- the sans-IO :class:`~rawtransport.host.Host`: socket table, neighbour table, reassembly queues.

The expensive kernel operations — ``PACKET_RX_RING`` setup and closing packet sockets, each of which
waits in ``synchronize_net()`` — happen once per stack. :meth:`RawStack.open` may block for
milliseconds (call it off the event loop thread); registering an endpoint costs a table entry and a
filter swap. This module never waits for readiness: the event-loop glue calls
:meth:`RawStack.read_ready` when the receiver is readable, and so on.
"""

from __future__ import annotations

import contextlib
import errno
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rawtransport.bpf_filter import FilterEntry, drop_all, stack_filter
from rawtransport.datapath import ACCEL
from rawtransport.engine import FrameMeta, OutgoingFrame, UdpEngine
from rawtransport.engine_types import ALWAYS_JOINED, ZERO4
from rawtransport.host import Host
from rawtransport.link import PacketSender
from rawtransport.netlink import Rtnl, RtnlMonitor
from rawtransport.nft import NftError
from rawtransport.ring_setup import RX_MODES, Receiver, RingReceiver, TxRing, open_receiver
from rawtransport.route import (
    ARPHRD_ETHER,
    LOOPBACK_IFINDEX,
    LinkInfo,
    LocalAddresses,
    Route,
    RouteCache,
)
from rawtransport.workers import close_in_background

if TYPE_CHECKING:
    from rawtransport.endpoint import RawUdpEndpoint

__all__ = ["TX_MODES", "RawStack", "StackOptions"]

Sender = PacketSender | TxRing

#: ``tx_mode`` values: ``"ring"`` (a PACKET_TX_RING per interface, one ``send()`` per batch) or
#: ``"direct"`` (one ``send()`` per frame). See ``create_raw_datagram_endpoint`` for the trade-off.
TX_MODES = ("ring", "direct")
#: Slots per transmit ring (``None``: :data:`rawtransport.ring_setup.TX_DEFAULT_SLOTS`).
TX_RING_SLOTS: int | None = None
# Links whose frames are too large for a ring of sensible size (loopback's 64 KiB) send directly.
_TX_RING_MAX_MTU = 9216
#: How often (seconds) the send path looks for routing/address changes when no loop callback has.
NETLINK_CHECK_INTERVAL = 0.001
SO_BUSY_POLL = 46  # <asm-generic/socket.h>; not exported by Python's socket module
# <linux/if_packet.h>
_SOL_PACKET = 263
_PACKET_FANOUT = 18
_PACKET_FANOUT_HASH = 0
# How long a receiver is polled after its last frame (stack_loop.LoopStack._spin_poll): a busy core.
MAX_SPIN_US = 10_000


@dataclass(frozen=True, slots=True)
class StackOptions:
    """What endpoints must agree on to share a stack: the receiver's and the senders' setup.

    ``interface``: the receiver and senders work on this interface only (``None``: all). The other
    fields are the knobs of ``create_raw_datagram_endpoint`` with the same names.
    """

    rx_mode: str = "ring"
    interface: str | None = None
    rcvbuf: int | None = None
    busy_poll: int | None = None
    spin_us: int = 0
    qdisc_bypass: bool = False
    tx_mode: str = "direct"

    def check(self) -> None:
        """Raise ``TypeError``/``ValueError`` for a bad knob, before anything is opened."""
        if self.rx_mode not in RX_MODES:
            raise ValueError(f"rx_mode must be one of {RX_MODES}, not {self.rx_mode!r}")
        if self.tx_mode not in TX_MODES:
            raise ValueError(f"tx_mode must be one of {TX_MODES}, not {self.tx_mode!r}")
        for name, value, top in (
            ("busy_poll", self.busy_poll, 0x7FFFFFFF),
            ("spin_us", self.spin_us, MAX_SPIN_US),
        ):
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if not 0 <= value <= top:
                unit = "µs out of range" if name == "busy_poll" else f"must be within 0..{top}"
                raise ValueError(f"{name} {value} {unit}")


class RawStack:
    """The shared sockets of a set of endpoints. Construct with :meth:`open`, close with :meth:`close`.

    Endpoints :meth:`register` and :meth:`unregister` themselves; :attr:`endpoints` maps each one's
    engine to it.
    """

    def __init__(
        self, options: StackOptions, rtnl: Rtnl, monitor: RtnlMonitor, receiver: Receiver
    ) -> None:
        self.options = options
        self.tx_mode = options.tx_mode
        self.spin_us = options.spin_us
        # spin_us polls of the receiver, and those that found frames (stats).
        self.spin_polls = 0
        self.spin_hits = 0
        self.receiver = receiver
        # The compiled receive path's walk of the shared ring, where there is one (read_ready()).
        self._recv_fast = (
            receiver.recv_fast
            if isinstance(receiver, RingReceiver) and receiver.can_deliver
            else None
        )
        self._rtnl = rtnl
        self._monitor = monitor
        self.host = Host()
        self.ifindex: int | None = None
        self.endpoints: dict[UdpEngine, RawUdpEndpoint] = {}
        #: The ``PACKET_FANOUT`` receiver of each ``reuse_port`` endpoint (see :meth:`open_fanout`).
        self.fanout: dict[UdpEngine, Receiver] = {}
        self._entries: dict[UdpEngine, FilterEntry] = {}
        self._mtu = 1500
        self._senders: dict[int, Sender] = {}
        self._routes = RouteCache()
        self._links: dict[int, LinkInfo] = {}
        self._netlink_checked = -1.0
        self.closed = False
        #: When set, a change of endpoints calls it instead of swapping the filter at once; the
        #: caller then calls :meth:`sync_filter` (the loop glue does so once per loop iteration,
        #: so that closing many endpoints together costs one swap).
        self.defer_filter: Callable[[], None] | None = None
        # And for a swap that only narrows it (an endpoint left): may wait longer, coalescing
        # the closes of a burst (a frame for a gone endpoint that passes meanwhile is counted as
        # no_socket). None: as defer_filter.
        self.defer_narrow: Callable[[], None] | None = None
        self._filter_dirty = False
        self._filter_wildcard = False  # the filter lists the host's addresses (a wildcard endpoint)
        self._widen_scheduled = self._narrow_scheduled = False
        self._refresh()

    @classmethod
    def open(cls, options: StackOptions) -> RawStack:
        """Open the receiver (ring setup: milliseconds in the kernel), rtnetlink and the monitor."""
        options.check()
        rtnl = Rtnl()
        monitor = RtnlMonitor()
        receiver: Receiver | None = None
        try:
            ifindex = (
                rtnl.link_by_name(options.interface).ifindex
                if options.interface is not None
                else None
            )
            links = [rtnl.link(ifindex)] if ifindex is not None else rtnl.links()
            # Size ring slots for the wire; loopback's 64 KiB frames take the ring's copy path.
            wire = [x.mtu for x in links if not x.is_loopback] or [1500]
            receiver = open_receiver(
                stack_filter(()),
                options.rx_mode,
                ifindex=ifindex or 0,
                rcvbuf=options.rcvbuf,
                mtu=min(max(wire), 9216),
            )
            if options.busy_poll is not None:
                try:
                    receiver.sock.setsockopt(1, SO_BUSY_POLL, options.busy_poll)  # SOL_SOCKET
                except PermissionError as exc:
                    raise PermissionError(
                        exc.errno,
                        "busy_poll above net.core.busy_read needs CAP_NET_ADMIN "
                        f"(sk_setsockopt(SO_BUSY_POLL)): {exc.strerror}",
                    ) from None
            stack = cls(options, rtnl, monitor, receiver)
            stack.ifindex = ifindex
            stack._mtu = min(max(wire), 9216)
        except BaseException:
            if receiver is not None:
                receiver.close()
            rtnl.close()
            monitor.close()
            raise
        return stack

    # -------------------------------------------------------------------------- registration
    def register(self, endpoint: RawUdpEndpoint, fanout: Receiver | None = None) -> None:
        """Add an endpoint (its engine is in the host's table already): widen the filter.

        A ``reuse_port`` endpoint brings its ``fanout`` receiver (:meth:`open_fanout`), which the
        stack owns from now on; the shared filter then leaves its datagrams to that one.
        """
        engine = endpoint.engine
        self.endpoints[engine] = endpoint
        if fanout is not None:
            self.fanout[engine] = fanout
        try:
            self._filter_changed()
        except BaseException:
            del self.endpoints[engine]
            self.fanout.pop(engine, None)
            raise

    def open_fanout(self, entry: FilterEntry) -> Receiver:
        """A receiver for one ``reuse_port`` endpoint, in the ``PACKET_FANOUT`` group of its
        address and port: the kernel hands each flow's frames to one member of the group
        (``fanout_demux_hash()``: the flow hash, which is the addresses alone for fragments, so a
        datagram's fragments stay together), whichever process holds it, as ``SO_REUSEPORT``
        spreads flows over sockets. The group id comes from the family, address and port, so
        unrelated programs do not join each other's groups. Blocks (ring setup): off the loop.

        It joins the group while its filter still drops everything, then takes the endpoint's
        datagrams only: a frame it took before joining would reach a second member too.
        """
        receiver = open_receiver(
            drop_all(),
            self.options.rx_mode,
            ifindex=self.ifindex or 0,
            rcvbuf=self.options.rcvbuf,
            mtu=self._mtu,
        )
        try:
            group = fanout_group(entry)
            receiver.sock.setsockopt(_SOL_PACKET, _PACKET_FANOUT, group | _PACKET_FANOUT_HASH << 16)
            receiver.set_filter(stack_filter([entry], allow_fragments=True))
        except BaseException:
            receiver.close()
            raise
        return receiver

    def unregister(self, endpoint: RawUdpEndpoint) -> None:
        """Leave the host's table, then narrow the filter. Until the swap, frames for the endpoint
        that still pass are counted as ``no_socket`` in the stack's stats."""
        if self.endpoints.pop(endpoint.engine, None) is None:
            return
        fanout = self.fanout.pop(endpoint.engine, None)
        if fanout is not None:
            close_in_background(fanout.close)
        self._entries.pop(endpoint.engine, None)
        endpoint.engine.close()
        if not self.closed:
            # An error means the socket is going away; the table no longer has the endpoint.
            with contextlib.suppress(OSError):
                self._filter_changed(narrow=True)

    def _filter_changed(self, narrow: bool = False) -> None:
        if self.defer_filter is None:
            self._update_filter()
            return
        self._filter_dirty = True
        if narrow and self.defer_narrow is not None:
            if not self._narrow_scheduled:
                self._narrow_scheduled = True
                self.defer_narrow()
        elif not self._widen_scheduled:
            # Widening cannot wait for a narrowing swap due later: its own comes first.
            self._widen_scheduled = True
            self.defer_filter()

    def sync_filter(self, narrow: bool = False) -> None:
        """Swap in the filter for the endpoints registered now, if a deferred change is pending
        (``narrow``: called by the ``defer_narrow`` schedule, else by ``defer_filter``'s)."""
        if narrow:
            self._narrow_scheduled = False
        else:
            self._widen_scheduled = False
        if self._filter_dirty and not self.closed:
            self._filter_dirty = False
            self._update_filter()

    def _update_filter(self) -> None:
        # One program for every endpoint, swapped in with one SO_ATTACH_FILTER (sk_attach_filter()
        # replaces the old program under RCU): no frame sees a half-updated filter.
        entries: list[FilterEntry] = []
        arp_for: set[bytes] = set()
        nd_for: set[bytes] = set()
        any4 = any6 = False
        fragments = False
        cached = self._entries
        for engine in self.endpoints:
            cfg = engine.config
            family = 0 if cfg.dual_stack else cfg.family
            if engine not in self.fanout:  # else its fanout receiver takes its datagrams
                entry = cached.get(engine)
                if entry is None:  # made (and checked) once per endpoint, not per swap
                    entry = cached[engine] = FilterEntry(family, cfg.local_ip, cfg.local_port)
                entries.append(entry)
            fragments = fragments or cfg.reassemble
            if cfg.local_ip is None:
                any4 = any4 or family in (0, 4)
                any6 = any6 or family in (0, 6)
            elif cfg.family == 4:
                arp_for.add(cfg.local_ip)
            else:
                nd_for.add(cfg.local_ip)
        wildcard = any4 or any6  # set exactly for the endpoints bound to no address
        program = stack_filter(
            entries,
            # Fragments carry the port only in the first one: let them all reach the reassembler,
            # as ip_defrag() sees them all.
            allow_fragments=fragments,
            # The resolver asks from a bound address, or for a wildcard endpoint from whichever
            # address the route chose, so that one takes replies to any of them.
            arp_for=sorted(arp_for),
            nd_for=sorted(nd_for),
            neighbour_replies4=any4,
            neighbour_replies6=any6,
            # No VLAN device here: the kernel would drop tagged frames (vlan_do_receive()).
            accept_vlan=False,
            # A wildcard endpoint takes what is local: datagrams to other addresses on its port
            # stay in the kernel (they would be dropped as not_local).
            **(self._wildcard_destinations() if wildcard else {}),
        )
        self._filter_wildcard = wildcard
        self.receiver.set_filter(program)

    def _wildcard_destinations(self) -> dict[str, Any]:
        """``stack_filter``'s ``local4``, ``local6`` and ``loopback``: what the socket lookup gives a
        wildcard endpoint (``UdpEngine._check_addresses``): the host's addresses, the IPv4
        broadcasts, 0.0.0.0 (DHCP's ``brd_input``) and the always-joined groups; any destination
        on the loopback device, whose local prefixes (127/8) no list covers. A local prefix
        elsewhere (an "AnyIP" route on lo for a whole subnet, taken from any device) cannot be
        listed either: then IPv4 takes any destination, as before."""
        local = self.host.local
        addrs, nets = local.local_view()
        v4: list[bytes] | None = [a for a in addrs if len(a) == 4]
        if any(net >> 24 != 127 for net, _mask in nets):
            v4 = None
        else:
            assert v4 is not None
            v4 += [*local.broadcast_addresses(), ZERO4, *(g for g in ALWAYS_JOINED if len(g) == 4)]
        v6 = [a for a in addrs if len(a) == 16] + [g for g in ALWAYS_JOINED if len(g) == 16]
        link = self._links.get(self.ifindex) if self.ifindex is not None else None
        on_loopback = self.ifindex is None or (link is not None and link.is_loopback)
        return {"local4": v4, "local6": v6, "loopback": LOOPBACK_IFINDEX if on_loopback else None}

    # ------------------------------------------------------------------------------- netlink
    @property
    def addresses(self) -> LocalAddresses:
        """The host's addresses, as of the last netlink refresh."""
        return self.host.local

    def _refresh(self) -> None:
        self._routes.invalidate()
        self.host.invalidate_tx()
        self.host.set_local_addresses(LocalAddresses(self._rtnl.addresses()))
        if self._filter_wildcard:
            self._filter_changed()  # its addresses are in the filter
        links = {link.ifindex: link for link in self._rtnl.links()}
        for gone in self._links.keys() - links.keys():
            for endpoint in self.endpoints.values():
                endpoint.interface_gone(gone)
            self.host.forget_interface(gone)
            sender = self._senders.pop(gone, None)
            if sender is not None:
                close_in_background(sender.close)
        self._links = links
        self.host.set_link_mtus({i: link.mtu for i, link in links.items()})
        for endpoint in self.endpoints.values():
            bypass = endpoint.bypass
            if bypass is not None and endpoint.interface is None:
                # kernel_bypass on every interface: cover the ones that appeared since (until then
                # their traffic takes the kernel's path, which is slower but still correct).
                try:
                    bypass.add_interfaces(
                        [x.name for x in links.values()],
                        non_ethernet={x.name for x in links.values() if x.arphrd != ARPHRD_ETHER},
                    )
                except NftError:
                    endpoint.engine.count_event("bypass_add_failed")

    @property
    def links(self) -> dict[int, LinkInfo]:
        """The interfaces, by index, as of the last netlink refresh."""
        return self._links

    def netlink_fileno(self) -> int:
        """The rtnetlink monitor's descriptor: call :meth:`netlink_ready` when it is readable."""
        return self._monitor.fileno()

    def netlink_ready(self, now: float) -> bool:
        """Apply routing, address and link changes the kernel announced; True if there were any."""
        self._netlink_checked = now
        if self._monitor.drain():
            self._refresh()
            return True
        return False

    def route(self, dst: bytes, source: bytes | None, oif: int | None, now: float) -> Route:
        """The kernel's route to ``dst`` (from ``source``, out of ``oif``), cached until a change."""
        if now - self._netlink_checked >= NETLINK_CHECK_INTERVAL:
            self.netlink_ready(now)
        key = (dst, source, oif)
        route = self._routes.get(key)
        if route is None:
            route = self._rtnl.route_get(dst, source=source, oif=oif)
            self._routes.put(key, route)
        return route

    # ------------------------------------------------------------------------------- receive
    def read_ready(
        self,
        now: float,
        budget: int = 64,
        receiver: Receiver | None = None,
        flush: Callable[[list[UdpEngine]], None] | None = None,
    ) -> list[UdpEngine]:
        """Read up to ``budget`` frames of the shared receiver (or of a ``fanout`` one) into the
        host; return the engines with something new.

        With the compiled datapath, a V2 ring and ``flush`` (what the caller does with the
        engines returned), frames the host's fast view takes are delivered to their protocols
        during the walk; each frame left to the Python path is followed by ``flush`` of what it
        touched, so every endpoint sees its datagrams in ring order.

        ``BlockingIOError`` ends the batch quietly; another ``OSError`` from the socket is raised.
        """
        host = self.host
        recv_fast = self._recv_fast
        if receiver is None and flush is not None and recv_fast is not None and host.fast.entries:
            fast = host.fast
            while True:
                taken, slow = recv_fast(budget, fast)
                if slow is None:
                    break
                budget -= taken + 1
                host.receive_frame(slow[0], slow[1], now, False)
                flush(host.take_touched())
                if budget <= 0:
                    break
            return host.take_touched()
        fanout = receiver is not None
        source = receiver or self.receiver
        receive_frame = host.receive_frame
        # A receiver the C walk does not read (recvmsg, a V3 ring): each frame is offered to the
        # compiled delivery first, the Python path taking (and flushing) what it leaves.
        take: Callable[[bytes | bytearray | memoryview, FrameMeta, float, bool], None]
        take = receive_frame
        if ACCEL is not None and flush is not None and not fanout and host.fast.entries:
            deliver, fast, then = ACCEL.deliver_frame, host.fast, flush

            def take(
                frame: bytes | bytearray | memoryview, meta: FrameMeta, now: float, fanout: bool
            ) -> None:
                if not deliver(frame, meta.ifindex, meta.pkttype, meta.status, meta.hatype,
                               meta.truncated, fast):  # fmt: skip
                    receive_frame(frame, meta, now, False)
                    then(host.take_touched())

        if isinstance(source, RingReceiver):
            # One call for the batch (one into C for a V2 ring), frames copied out of the ring.
            for frame, meta in source.recv_batch(budget):
                take(frame, meta, now, fanout)
            return host.take_touched()
        recv = source.recv
        for _ in range(budget):
            try:
                view, meta = recv()
            except (BlockingIOError, InterruptedError):
                break
            take(view, meta, now, fanout)
        return host.take_touched()

    # ---------------------------------------------------------------------------------- send
    def _sender(self, ifindex: int, count: Callable[[str], None]) -> Sender:
        sender = self._senders.get(ifindex)
        if sender is None:
            sender = self._senders[ifindex] = self._open_sender(ifindex, count)
        return sender

    def _open_sender(self, ifindex: int, count: Callable[[str], None]) -> Sender:
        link = self._links.get(ifindex)
        qdisc_bypass = self.options.qdisc_bypass
        if (
            self.tx_mode == "ring"
            and link is not None
            and not link.is_loopback
            and link.mtu <= _TX_RING_MAX_MTU
        ):
            try:
                return TxRing(ifindex, mtu=link.mtu, slots=TX_RING_SLOTS, qdisc_bypass=qdisc_bypass)
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    raise  # the interface is gone: as the direct sender would say
                # CAP_NET_RAW dropped after open (a new packet socket is refused), or no TX ring on
                # this kernel: frames still leave, one send() each.
                count("tx_ring_unavailable")
        return PacketSender(ifindex, qdisc_bypass=qdisc_bypass, fallback=self.receiver.sock)

    @property
    def fast_reader(self) -> Callable[[int, Any], tuple[int, Any]] | None:
        """``RingReceiver.recv_fast`` of the shared receiver where the compiled receive path can
        walk it (a TPACKET_V2 ring, the compiled datapath), else ``None``. With no fast entry
        registered it hands every frame to the Python path, one per call."""
        return self._recv_fast

    def direct_fileno(self, ifindex: int) -> int | None:
        """The descriptor a frame for ``ifindex`` leaves by with one plain ``send(2)`` (the
        compiled send path's), or ``None`` where frames take another way (a TX ring, the
        fallback sender) or no sender is open yet."""
        sender = self._senders.get(ifindex)
        if isinstance(sender, PacketSender) and sender.bound:
            return sender.sock.fileno()
        return None

    def sender_fileno(self, ifindex: int, engine: UdpEngine) -> int:
        """The descriptor of the packet socket that sends on ``ifindex`` (for ``add_writer``)."""
        return self._sender(ifindex, engine.count_event).sock.fileno()

    def write_frames(
        self, frames: Iterable[OutgoingFrame], engine: UdpEngine
    ) -> tuple[list[OutgoingFrame], list[OSError], bool]:
        """Write frames in order until one cannot leave now; counters go to ``engine``.

        Returns ``(unsent, errors, congested)``: the frames to retry, the errors to report (a frame
        that got one is not retried, as a kernel socket's send would have failed), and whether the
        stop was ENOBUFS or a transmit ring full of frames still in flight — neither of which
        ``poll`` signals: retry after a pause. Otherwise the stop was EAGAIN (the sending socket's
        buffer is full): retry when it is writable.

        With ``tx_mode="ring"`` consecutive frames for one interface are copied into its transmit
        ring and leave with one ``send()`` (more only when they outnumber the ring's free slots).
        """
        errors: list[OSError] = []
        frames = list(frames)
        i = 0
        n = len(frames)
        while i < n:
            out = frames[i]
            sender = self._sender(out.ifindex, engine.count_event)
            if isinstance(sender, TxRing):
                i, stop, congested = self._write_ring(sender, frames, i, errors, engine)
                if stop:
                    return frames[i:], errors, congested
                continue
            try:
                sender.send(out.frame)
            except (BlockingIOError, InterruptedError):
                return frames[i:], errors, False
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    engine.count_event("tx_enobufs")
                    return frames[i:], errors, True
                self._send_error(exc, errors)
            i += 1
        return [], errors, False

    def _send_error(self, exc: OSError, errors: list[OSError]) -> None:
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            # The device is gone (packet_snd() on an unregistered ifindex).
            self._refresh()
        errors.append(exc)

    def _write_ring(
        self,
        ring: TxRing,
        frames: list[OutgoingFrame],
        i: int,
        errors: list[OSError],
        engine: UdpEngine,
    ) -> tuple[int, bool, bool]:
        """Send ``frames[i:]`` for ``ring``'s interface through it; return ``(next, stop, congested)``.

        Nothing stays queued in the ring when this returns: frames a kick did not take are taken
        back and returned to the caller as unsent, so order and ownership stay with the caller.
        """
        ifindex = ring.ifindex
        n = len(frames)
        put = ring.put
        max_frame = ring.max_frame
        count = engine.count_event
        j = i  # frames[i:j] are queued in the ring
        while True:
            while j < n:
                out = frames[j]
                if out.ifindex != ifindex or len(out.frame) > max_frame or not put(out.frame):
                    break
                j += 1
            if j > i:
                count("tx_kicks")
                taken, rejected, exc = ring.kick()
                i += taken
                if rejected:
                    # TP_STATUS_WRONG_FORMAT: the kernel refused this frame (too long for the MTU,
                    # shorter than a link header ...) with the error the kick returned, as send()
                    # would have; the frames behind it are still queued.
                    count("tx_wrong_format")
                    errors.append(exc or OSError(errno.EINVAL, "frame refused by the TX ring"))
                    i += 1
                    continue
                if ring.queued:
                    # The kick stopped early: the slot it stopped on and all behind it are back
                    # to SEND_REQUEST (tpacket_snd()); take them back, unsent, in order.
                    queued = ring.unqueue()
                    if exc is None or isinstance(exc, (BlockingIOError, InterruptedError)):
                        return i, True, False  # send buffer full (a short count, or EAGAIN)
                    if exc.errno == errno.ENOBUFS:
                        count("tx_enobufs")
                        return i, True, True
                    # ENETDOWN, ENXIO ...: every queued frame fails with it, as its send() would.
                    for _ in range(queued):
                        self._send_error(exc, errors)
                    return i + queued, False, False
                j = i
                continue
            # Nothing queued, and frames[j] did not go in.
            if j >= n or frames[j].ifindex != ifindex:
                return j, False, False
            if len(frames[j].frame) > max_frame:
                # Longer than a slot (the MTU grew after the ring was made): send it on its own.
                try:
                    ring.send_direct(frames[j].frame)
                except (BlockingIOError, InterruptedError):
                    return j, True, False
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        count("tx_enobufs")
                        return j, True, True
                    self._send_error(exc, errors)
                i = j = j + 1
                continue
            # Every slot is still in flight (frames held in a qdisc). packet_poll() reports POLLOUT
            # whenever the send buffer has room, not when a slot frees, so this is retried after a
            # pause, like ENOBUFS, rather than on writability (which would spin).
            count("tx_ring_full")
            return j, True, True

    def write_host_frames(self) -> None:
        """Write the frames the host made itself (retransmitted ARP/ND requests); a request that
        cannot leave now is lost, as the kernel's would be (the next retransmit follows)."""
        out = self.host.out
        while out:
            frame = out.popleft()
            try:
                sender = self._sender(frame.ifindex, self.host.counters.event)
                if isinstance(sender, TxRing):
                    sender.send_direct(frame.frame)
                else:
                    sender.send(frame.frame)
            except OSError:
                self.host.counters.drop("neighbour_request_unsent")

    # ---------------------------------------------------------------------------------- misc
    def stats(self) -> dict[str, object]:
        """The stack-wide view: the host's counters, the kernel's ``PACKET_STATISTICS``
        (accumulated) and the receiver's ring counters."""
        stats = self.host.stats()
        packets, drops = self.receiver.statistics()
        stats["kernel_packets"] = packets
        stats["kernel_drops"] = drops
        if isinstance(self.receiver, RingReceiver):
            # Ring slots the kernel left behind that the walker passed (ring.py, resync()), and
            # ring headers it refused: neither happens with a sane kernel at a sane load.
            stats["ring_resyncs"] = self.receiver.ring_resyncs
            stats["ring_corrupt"] = dict(self.receiver.ring_corrupt)
        if self.spin_us:
            stats["spin_polls"] = self.spin_polls
            stats["spin_hits"] = self.spin_hits
        return stats

    def close(self) -> None:
        """Close every socket the stack owns. Packet sockets wait in ``synchronize_net()`` when
        closed: that happens on a worker thread (workers.py)."""
        if self.closed:
            return
        self.closed = True
        for sender in self._senders.values():
            close_in_background(sender.close)
        self._senders.clear()
        for fanout in self.fanout.values():
            close_in_background(fanout.close)
        self.fanout.clear()
        close_in_background(self.receiver.close)
        self._monitor.close()
        self._rtnl.close()


def fanout_group(entry: FilterEntry) -> int:
    """The 16-bit ``PACKET_FANOUT`` group id of a ``reuse_port`` address and port."""
    key = bytes([entry.family]) + (entry.local_ip or b"") + entry.local_port.to_bytes(2, "big")
    return zlib.crc32(b"rawtransport reuse_port " + key) & 0xFFFF
