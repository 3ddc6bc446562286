"""rtnetlink message encoding and decoding: bytes in, values out.

Pure: the socket side lives in :mod:`rawtransport.netlink`. Layouts follow the uapi headers
(``<linux/netlink.h>``, ``<linux/rtnetlink.h>``, ``<linux/if_link.h>``, ``<linux/if_addr.h>``,
``<linux/neighbour.h>``); netlink is host-endian, hence the ``=`` struct formats.

Parsing is bounded: every length field is checked against the bytes actually present before it is
used, and anything inconsistent raises :class:`~rawtransport.errors.MalformedPacketError` with a
stable ``reason`` (never ``IndexError`` or ``struct.error``). Attribute walking follows the rules of
the kernel's ``nlmsg_ok()``/``nla_ok()`` and ``NLMSG_ALIGN``/``NLA_ALIGN`` (4-byte alignment).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from rawtransport.errors import MalformedPacketError
from rawtransport.route import IFF_RUNNING, IFF_UP, AddressInfo, LinkInfo, Route, RouteKind

__all__ = [
    "AF_INET",
    "AF_INET6",
    "AF_UNSPEC",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLM_F_DUMP",
    "NLM_F_DUMP_INTR",
    "NLM_F_MULTI",
    "NLM_F_REQUEST",
    "RTM_GETADDR",
    "RTM_GETLINK",
    "RTM_GETNEIGH",
    "RTM_GETROUTE",
    "RTM_NEWADDR",
    "RTM_NEWLINK",
    "RTM_NEWNEIGH",
    "RTM_NEWROUTE",
    "USABLE_NUD_STATES",
    "NetlinkMessage",
    "Response",
    "RouteReply",
    "decode_address",
    "decode_link",
    "decode_neighbour",
    "decode_route",
    "encode_attr",
    "encode_dump",
    "encode_getlink",
    "encode_getroute",
    "encode_message",
    "nlmsg_align",
    "parse_attrs",
    "parse_messages",
    "route_error",
    "route_from_reply",
]

# Address families (<linux/socket.h>), spelled out: the pure layer does not import socket.
AF_UNSPEC: Final = 0
AF_INET: Final = 2
AF_INET6: Final = 10

# <linux/netlink.h>
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_ACK: Final = 0x04
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLA_TYPE_MASK: Final = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

# <linux/rtnetlink.h> message types
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
RTM_NEWNEIGH: Final = 28
RTM_DELNEIGH: Final = 29
RTM_GETNEIGH: Final = 30

# rtm_type
RTN_UNSPEC: Final = 0
RTN_UNICAST: Final = 1
RTN_LOCAL: Final = 2
RTN_BROADCAST: Final = 3
RTN_ANYCAST: Final = 4
RTN_MULTICAST: Final = 5
RTN_BLACKHOLE: Final = 6
RTN_UNREACHABLE: Final = 7
RTN_PROHIBIT: Final = 8
RTN_THROW: Final = 9

# Route attributes (enum rtattr_type_t) and metrics (RTAX_*)
RTA_DST: Final = 1
RTA_SRC: Final = 2
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PREFSRC: Final = 7
RTA_METRICS: Final = 8
RTA_CACHEINFO: Final = 12
RTA_TABLE: Final = 15
RTA_VIA: Final = 18
RTAX_MTU: Final = 2

# Link attributes (<linux/if_link.h>)
IFLA_ADDRESS: Final = 1
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_OPERSTATE: Final = 16
IFLA_EXT_MASK: Final = 29
RTEXT_FILTER_SKIP_STATS: Final = 1 << 3

# Address attributes (<linux/if_addr.h>)
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_BROADCAST: Final = 4
IFA_FLAGS: Final = 8

# Neighbour attributes and states (<linux/neighbour.h>)
NDA_DST: Final = 1
NDA_LLADDR: Final = 2
NUD_REACHABLE: Final = 0x02
NUD_STALE: Final = 0x04
NUD_DELAY: Final = 0x08
NUD_PROBE: Final = 0x10
NUD_PERMANENT: Final = 0x80
# States whose link-layer address the kernel itself would transmit to (NUD_VALID minus NUD_NOARP,
# whose "address" is synthesised, e.g. all-zero on loopback).
USABLE_NUD_STATES: Final = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTATTR = struct.Struct("=HH")  # len, type
_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
# family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")  # family, pad, index, state, flags, type
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
# struct rta_cacheinfo { u32 clntref, lastuse; s32 expires; u32 error, used, id, ts, tsage; }
_CACHEINFO_ERROR = struct.Struct("=12xi")

_ADDR_LEN = {AF_INET: 4, AF_INET6: 16}
_FAMILY_NUMBER = {AF_INET: 4, AF_INET6: 6}

Buffer = bytes | bytearray | memoryview


def nlmsg_align(length: int) -> int:
    """Round ``length`` up to the 4-byte netlink alignment (``NLMSG_ALIGN`` and ``RTA_ALIGN``)."""
    return (length + 3) & ~3


# ------------------------------------------------------------------------------------ framing
@dataclass(frozen=True, slots=True)
class NetlinkMessage:
    """One netlink message: the ``nlmsghdr`` fields and the payload after the header."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def encode_attr(attr_type: int, value: bytes) -> bytes:
    """One ``rtattr``: header, value, zero padding to the 4-byte boundary."""
    length = _RTATTR.size + len(value)
    if length > 0xFFFF:
        raise ValueError("attribute value too long for a 16-bit rta_len")
    return _RTATTR.pack(length, attr_type) + value + bytes(nlmsg_align(length) - length)


def encode_message(msg_type: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    """A complete netlink message: ``nlmsghdr`` + ``body`` (fixed header and attributes)."""
    length = _NLMSGHDR.size + len(body)
    return (
        _NLMSGHDR.pack(length, msg_type, flags, seq & 0xFFFFFFFF, pid)
        + body
        + bytes(nlmsg_align(length) - length)
    )


def parse_messages(data: Buffer) -> list[NetlinkMessage]:
    """Split one datagram from a netlink socket into its messages (``NLMSG_OK``/``NLMSG_NEXT``).

    Raises :class:`MalformedPacketError` (``netlink_short_header``, ``netlink_bad_length``) when a
    header does not fit or its ``nlmsg_len`` is below the header size or past the end of the data.
    The last message may omit its alignment padding.
    """
    view = memoryview(data)
    end = len(view)
    offset = 0
    out: list[NetlinkMessage] = []
    while offset < end:
        if end - offset < _NLMSGHDR.size:
            raise MalformedPacketError(
                "netlink_short_header", f"{end - offset} bytes left at offset {offset}"
            )
        length, msg_type, flags, seq, pid = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or length > end - offset:
            raise MalformedPacketError(
                "netlink_bad_length", f"nlmsg_len {length} at offset {offset} of {end}"
            )
        payload = bytes(view[offset + _NLMSGHDR.size : offset + length])
        out.append(NetlinkMessage(msg_type, flags, seq, pid, payload))
        offset += nlmsg_align(length)
    return out


def parse_attrs(data: Buffer, offset: int = 0) -> dict[int, bytes]:
    """The ``rtattr`` list in ``data[offset:]`` as {type: value}.

    The type is masked with ``NLA_TYPE_MASK`` (the nested/byte-order flag bits are not part of it);
    when a type repeats, the last one wins, as in the kernel's ``nla_parse()``. Raises
    :class:`MalformedPacketError` (``rtattr_truncated``, ``rtattr_bad_length``).
    """
    view = memoryview(data)
    end = len(view)
    if offset > end:
        raise MalformedPacketError(
            "rtattr_truncated", f"fixed header needs {offset} of {end} bytes"
        )
    attrs: dict[int, bytes] = {}
    while offset < end:
        if end - offset < _RTATTR.size:
            raise MalformedPacketError(
                "rtattr_truncated", f"{end - offset} stray bytes at {offset}"
            )
        length, attr_type = _RTATTR.unpack_from(view, offset)
        if length < _RTATTR.size or length > end - offset:
            raise MalformedPacketError(
                "rtattr_bad_length", f"rta_len {length} at offset {offset} of {end}"
            )
        attrs[attr_type & NLA_TYPE_MASK] = bytes(view[offset + _RTATTR.size : offset + length])
        offset += nlmsg_align(length)
    return attrs


def _u32(attrs: dict[int, bytes], key: int, what: str) -> int | None:
    value = attrs.get(key)
    if value is None:
        return None
    if len(value) != 4:
        raise MalformedPacketError("rtattr_bad_size", f"{what} is {len(value)} bytes, not 4")
    result: int = _U32.unpack(value)[0]
    return result


def _addr(attrs: dict[int, bytes], key: int, family: int, what: str) -> bytes | None:
    value = attrs.get(key)
    if value is not None and len(value) != _ADDR_LEN[family]:
        raise MalformedPacketError("rtattr_bad_size", f"{what} is {len(value)} bytes")
    return value


def _header(payload: bytes, fmt: struct.Struct, what: str) -> tuple[int, ...]:
    if len(payload) < fmt.size:
        raise MalformedPacketError(
            "rtnl_short_header", f"{what} needs {fmt.size} bytes, got {len(payload)}"
        )
    return fmt.unpack_from(payload)


# ----------------------------------------------------------------------------------- requests
def encode_getroute(
    seq: int, destination: bytes, source: bytes | None = None, oif: int | None = None
) -> bytes:
    """``RTM_GETROUTE`` for one destination, as ``ip route get DST [from SRC] [oif IF]``."""
    family = AF_INET if len(destination) == 4 else AF_INET6
    bits = len(destination) * 8
    body = _RTMSG.pack(family, bits, bits if source is not None else 0, 0, 0, 0, 0, 0, 0)
    body += encode_attr(RTA_DST, destination)
    if source is not None:
        body += encode_attr(RTA_SRC, source)
    if oif is not None:
        body += encode_attr(RTA_OIF, _U32.pack(oif))
    return encode_message(RTM_GETROUTE, NLM_F_REQUEST, seq, body)


def encode_getlink(seq: int, ifindex: int = 0, name: str | None = None) -> bytes:
    """``RTM_GETLINK`` for one link, by index or (``ifindex`` 0) by ``IFLA_IFNAME``."""
    body = _IFINFOMSG.pack(AF_UNSPEC, 0, ifindex, 0, 0)
    if name is not None:
        body += encode_attr(IFLA_IFNAME, name.encode() + b"\0")
    body += encode_attr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))
    return encode_message(RTM_GETLINK, NLM_F_REQUEST, seq, body)


def encode_dump(seq: int, msg_type: int, family: int = AF_UNSPEC) -> bytes:
    """A dump request (``NLM_F_DUMP``) for links, addresses, routes or neighbours of ``family``.

    Each carries the full fixed header of its message type (not the legacy 1-byte rtgenmsg), which
    is what kernels with strict checking (``NETLINK_GET_STRICT_CHK``) require.
    """
    if msg_type == RTM_GETLINK:
        body = _IFINFOMSG.pack(family, 0, 0, 0, 0)
        body += encode_attr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS))
    elif msg_type == RTM_GETADDR:
        body = _IFADDRMSG.pack(family, 0, 0, 0, 0)
    elif msg_type == RTM_GETROUTE:
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    elif msg_type == RTM_GETNEIGH:
        body = _NDMSG.pack(family, 0, 0, 0, 0)
    else:
        raise ValueError(f"not a dumpable rtnetlink request type: {msg_type}")
    return encode_message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


# ---------------------------------------------------------------------------------- responses
class Response:
    """Collects the answer to one request: feed it every message received until :attr:`done`.

    Messages with another sequence number (late answers to an earlier, abandoned request) are
    ignored. A dump ends with ``NLMSG_DONE``; a single answer with its one message (no
    ``NLM_F_MULTI``) or with an ``NLMSG_ERROR``. :attr:`error` is the positive errno of a
    negative ``NLMSG_ERROR`` (or of the error int that netlink_dump_done() puts in ``NLMSG_DONE``),
    0 otherwise; :attr:`interrupted` is set when the kernel flagged a dump ``NLM_F_DUMP_INTR`` (the
    tables changed during it: the caller should dump again).
    """

    __slots__ = ("done", "dump", "error", "interrupted", "messages", "seq")

    def __init__(self, seq: int, *, dump: bool) -> None:
        self.seq = seq & 0xFFFFFFFF
        self.dump = dump
        self.done = False
        self.error = 0
        self.interrupted = False
        self.messages: list[NetlinkMessage] = []

    def feed(self, messages: Iterable[NetlinkMessage]) -> bool:
        """Take the messages of one received datagram; return :attr:`done`."""
        for msg in messages:
            if self.done or msg.seq != self.seq or msg.type == NLMSG_NOOP:
                continue
            if msg.type == NLMSG_ERROR:
                # struct nlmsgerr { int error; struct nlmsghdr msg; ... }: 0 is an ACK.
                if len(msg.payload) < _I32.size:
                    raise MalformedPacketError("netlink_short_error", f"{len(msg.payload)} bytes")
                self.error = -_I32.unpack_from(msg.payload)[0]
                self.done = True
            elif msg.type == NLMSG_DONE:
                if len(msg.payload) >= _I32.size:
                    self.error = max(0, -_I32.unpack_from(msg.payload)[0])
                self.done = True
            elif msg.type == NLMSG_OVERRUN:
                self.error = errno.ENOBUFS
                self.done = True
            else:
                if msg.flags & NLM_F_DUMP_INTR:
                    self.interrupted = True
                self.messages.append(msg)
                if not self.dump and not msg.flags & NLM_F_MULTI:
                    self.done = True
        return self.done


def decode_link(payload: bytes) -> LinkInfo:
    """An ``RTM_NEWLINK`` payload as a :class:`LinkInfo`."""
    _family, arphrd, ifindex, flags, _change = _header(payload, _IFINFOMSG, "ifinfomsg")
    attrs = parse_attrs(payload, _IFINFOMSG.size)
    raw_name = attrs.get(IFLA_IFNAME)
    mtu = _u32(attrs, IFLA_MTU, "IFLA_MTU")
    if raw_name is None or mtu is None:
        raise MalformedPacketError("rtnl_link_incomplete", f"ifindex {ifindex} lacks name or MTU")
    name = raw_name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    mac = attrs.get(IFLA_ADDRESS, b"")
    # IFF_RUNNING is set by dev_get_flags() only while netif_oper_up() (operstate UP or UNKNOWN).
    up = bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)
    return LinkInfo(ifindex, name, mac, mtu, flags, arphrd, up)


def decode_address(payload: bytes) -> AddressInfo | None:
    """An ``RTM_NEWADDR`` payload as an :class:`AddressInfo` (``None`` for non-IP families)."""
    family, prefixlen, flags8, scope, ifindex = _header(payload, _IFADDRMSG, "ifaddrmsg")
    if family not in _ADDR_LEN:
        return None
    attrs = parse_attrs(payload, _IFADDRMSG.size)
    # IPv4 sends IFA_LOCAL (ours) and IFA_ADDRESS (the peer on point-to-point links); IPv6 sends
    # IFA_ADDRESS alone, or IFA_LOCAL too when a peer is configured (inet6_fill_ifaddr()).
    address = _addr(attrs, IFA_LOCAL, family, "IFA_LOCAL") or _addr(
        attrs, IFA_ADDRESS, family, "IFA_ADDRESS"
    )
    if address is None:
        raise MalformedPacketError("rtnl_address_incomplete", f"ifindex {ifindex} without address")
    if prefixlen > _ADDR_LEN[family] * 8:
        raise MalformedPacketError("rtnl_bad_prefixlen", f"/{prefixlen}")
    full_flags = _u32(attrs, IFA_FLAGS, "IFA_FLAGS")
    broadcast = _addr(attrs, IFA_BROADCAST, family, "IFA_BROADCAST")
    return AddressInfo(
        ifindex=ifindex,
        family=_FAMILY_NUMBER[family],
        address=address,
        prefixlen=prefixlen,
        scope=scope,
        flags=flags8 if full_flags is None else full_flags,
        broadcast=broadcast,
    )


def decode_neighbour(payload: bytes) -> tuple[int, bytes, bytes, int] | None:
    """An ``RTM_NEWNEIGH`` payload as ``(ifindex, ip, mac, nud_state)``.

    ``None`` for other families and for entries without a usable link-layer address (states
    outside :data:`USABLE_NUD_STATES`, e.g. INCOMPLETE, FAILED, NOARP).
    """
    family, ifindex, state, _flags, _type = _header(payload, _NDMSG, "ndmsg")
    if family not in _ADDR_LEN:
        return None
    attrs = parse_attrs(payload, _NDMSG.size)
    ip = _addr(attrs, NDA_DST, family, "NDA_DST")
    mac = attrs.get(NDA_LLADDR)
    if ip is None or not mac or not state & USABLE_NUD_STATES:
        return None
    return ifindex, ip, mac, state


@dataclass(frozen=True, slots=True)
class RouteReply:
    """The fields of an ``RTM_NEWROUTE`` answer that route selection needs.

    ``mtu`` is the ``RTAX_MTU`` metric (0 when unset); ``error`` the positive errno from
    ``RTA_CACHEINFO`` (0 when none); ``via`` true when the next hop is an ``RTA_VIA`` of another
    family (IPv4 over an IPv6 gateway, RFC 5549).
    """

    family: int
    type: int
    table: int
    flags: int
    destination: bytes | None
    source: bytes | None
    prefsrc: bytes | None
    gateway: bytes | None
    oif: int | None
    mtu: int
    error: int
    via: bool


def decode_route(payload: bytes) -> RouteReply:
    """An ``RTM_NEWROUTE`` payload as a :class:`RouteReply`."""
    family, _dlen, _slen, _tos, table, _proto, _scope, rtype, flags = _header(
        payload, _RTMSG, "rtmsg"
    )
    if family not in _ADDR_LEN:
        raise MalformedPacketError("rtnl_route_family", f"family {family}")
    attrs = parse_attrs(payload, _RTMSG.size)
    mtu = 0
    metrics = attrs.get(RTA_METRICS)
    if metrics is not None:
        mtu = _u32(parse_attrs(metrics), RTAX_MTU, "RTAX_MTU") or 0
    error = 0
    cacheinfo = attrs.get(RTA_CACHEINFO)
    if cacheinfo is not None and len(cacheinfo) >= _CACHEINFO_ERROR.size:
        error = abs(_CACHEINFO_ERROR.unpack_from(cacheinfo)[0])
    return RouteReply(
        family=family,
        type=rtype,
        table=_u32(attrs, RTA_TABLE, "RTA_TABLE") or table,
        flags=flags,
        destination=_addr(attrs, RTA_DST, family, "RTA_DST"),
        source=_addr(attrs, RTA_SRC, family, "RTA_SRC"),
        prefsrc=_addr(attrs, RTA_PREFSRC, family, "RTA_PREFSRC"),
        gateway=_addr(attrs, RTA_GATEWAY, family, "RTA_GATEWAY"),
        oif=_u32(attrs, RTA_OIF, "RTA_OIF"),
        mtu=mtu,
        error=error,
        via=RTA_VIA in attrs,
    )


_KINDS = {
    RTN_UNICAST: RouteKind.UNICAST,
    RTN_LOCAL: RouteKind.LOCAL,
    # An IPv6 anycast route (subnet-router anycast, in the local table) is delivered locally.
    RTN_ANYCAST: RouteKind.LOCAL,
    RTN_BROADCAST: RouteKind.BROADCAST,
    RTN_MULTICAST: RouteKind.MULTICAST,
}

# What a send along a route of each "reject" type fails with: fib_props[] in
# net/ipv4/fib_semantics.c and ip6_rt_type_to_error() in net/ipv6/route.c agree (seen on 6.18:
# a kernel UDP sendto() through such a route fails with the same errno, for IPv4 and IPv6). Only the
# IPv6 "no route at all" entry (ip6_null_entry) differs: ENETUNREACH, reported as an error answer.
_REJECT = {
    RTN_BLACKHOLE: errno.EINVAL,
    RTN_UNREACHABLE: errno.EHOSTUNREACH,
    RTN_PROHIBIT: errno.EACCES,
    RTN_THROW: errno.EAGAIN,
}


def route_error(reply: RouteReply, source: bytes | None = None) -> int:
    """The errno a send along ``reply`` fails with, or 0 if the route is usable.

    ``source`` is the source the caller asked for. Without one, an IPv6 route for which the
    kernel found no source address fails with EADDRNOTAVAIL, as ipv6_dev_get_saddr() makes
    udpv6_sendmsg() fail; IPv4 sends from 0.0.0.0 in that case (inet_select_addr() finds none).
    """
    if reply.error:
        return reply.error
    if reply.type not in _KINDS:
        return _REJECT.get(reply.type, errno.EINVAL)
    if reply.via:
        # An IPv4 route via an IPv6 next hop would need ND for an IPv4 datagram: not supported.
        return errno.ENETUNREACH
    if reply.family == AF_INET6 and source is None and reply.prefsrc is None:
        return errno.EADDRNOTAVAIL
    return 0


def route_from_reply(
    reply: RouteReply, link: LinkInfo, destination: bytes, source: bytes | None = None
) -> Route:
    """Combine a usable ``RTM_GETROUTE`` answer (see :func:`route_error`) with its egress link.

    The source is the caller's ``source`` when given: the kernel echoes it as ``RTA_SRC`` (IPv4
    then omits ``RTA_PREFSRC``; IPv6 still reports the source it would have picked instead).
    """
    if reply.oif is None:
        raise MalformedPacketError("rtnl_route_no_oif", "route answer without RTA_OIF")
    if reply.oif != link.ifindex:
        raise ValueError(f"link {link.ifindex} is not the route's interface {reply.oif}")
    if source is None:
        source = reply.prefsrc or reply.source or bytes(len(destination))
    return Route(
        destination=destination,
        ifindex=link.ifindex,
        ifname=link.name,
        source=source,
        next_hop=reply.gateway or destination,
        mtu=reply.mtu or link.mtu,
        src_mac=link.mac,
        kind=_KINDS[reply.type],
        noarp=link.noarp,
    )
