"""Unit tests of the rtnetlink codec (rawtransport.rtnl_codec); synthetic bytes, no privileges.

pyroute2's message classes are the independent oracle: kernel-style answers are built with them and
decoded by ours, and our requests are decoded by them.
"""

from __future__ import annotations

import contextlib
import errno
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from rawtransport.errors import MalformedPacketError
from rawtransport.route import IFF_LOOPBACK, IFF_NOARP, LinkInfo, RouteKind
from rawtransport.rtnl_codec import (
    AF_INET,
    AF_INET6,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    NetlinkMessage,
    Response,
    RouteReply,
    decode_address,
    decode_link,
    decode_neighbour,
    decode_route,
    encode_attr,
    encode_dump,
    encode_getlink,
    encode_getroute,
    encode_message,
    nlmsg_align,
    parse_attrs,
    parse_messages,
    route_error,
    route_from_reply,
)

A4 = bytes([198, 18, 0, 1])
B4 = bytes([198, 18, 0, 2])
GW4 = bytes([198, 18, 0, 254])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")
MAC = bytes.fromhex("020000000001")
_HDR = struct.Struct("=IHHII")


def _pyroute2(msg: Any, msg_type: int, seq: int = 1, flags: int = 0) -> bytes:
    msg["header"]["type"] = msg_type
    msg["header"]["sequence_number"] = seq
    msg["header"]["flags"] = flags
    msg.encode()
    return bytes(msg.data)


def _payload(wire: bytes) -> bytes:
    (msg,) = parse_messages(wire)
    return msg.payload


def _link_wire(**kw: Any) -> bytes:
    m = ifinfmsg()
    m["index"] = kw.get("index", 3)
    m["ifi_type"] = kw.get("ifi_type", 1)
    m["flags"] = kw.get("flags", 0x11043)  # UP BROADCAST RUNNING MULTICAST LOWER_UP
    m["attrs"] = kw.get(
        "attrs",
        [("IFLA_IFNAME", "rt0"), ("IFLA_MTU", 1500), ("IFLA_ADDRESS", "02:00:00:00:00:01")],
    )
    return _pyroute2(m, RTM_NEWLINK)


def _route_wire(family: int = AF_INET, rtype: int = 1, attrs: Any = None) -> bytes:
    m = rtmsg()
    m["family"] = family
    m["type"] = rtype
    m["table"] = 254
    m["attrs"] = attrs if attrs is not None else []
    return _pyroute2(m, RTM_NEWROUTE)


def _msg(msg_type: int, seq: int = 5, flags: int = 0, payload: bytes = b"") -> NetlinkMessage:
    return NetlinkMessage(msg_type, flags, seq, 0, payload)


# ----------------------------------------------------------------------------------- framing
@pytest.mark.parametrize(("n", "aligned"), [(0, 0), (1, 4), (3, 4), (4, 4), (5, 8), (17, 20)])
def test_nlmsg_align(n: int, aligned: int) -> None:
    assert nlmsg_align(n) == aligned


@pytest.mark.parametrize(
    ("attr_type", "value", "wire"),
    [
        (1, b"", "04000100"),
        (3, b"lo\0", "070003006c6f0000"),
        (4, struct.pack("=I", 1500), "08000400" + struct.pack("=I", 1500).hex()),
        (2, b"\x01\x02\x03\x04\x05", "090002000102030405000000"),
    ],
)
def test_encode_attr_table(attr_type: int, value: bytes, wire: str) -> None:
    encoded = encode_attr(attr_type, value)
    assert encoded.hex() == wire
    assert parse_attrs(encoded) == {attr_type: value}


def test_encode_attr_too_long() -> None:
    with pytest.raises(ValueError, match="too long"):
        encode_attr(1, bytes(0xFFFC))


def test_encode_message_header_and_padding() -> None:
    wire = encode_message(RTM_GETLINK, NLM_F_REQUEST, 0x1_0000_0007, b"\x01\x02\x03")
    assert len(wire) == 20  # 16 + 3, padded to 20
    assert _HDR.unpack_from(wire) == (19, RTM_GETLINK, NLM_F_REQUEST, 7, 0)
    (msg,) = parse_messages(wire)
    assert msg == NetlinkMessage(RTM_GETLINK, NLM_F_REQUEST, 7, 0, b"\x01\x02\x03")


def test_parse_several_messages_and_unpadded_last() -> None:
    first = encode_message(RTM_NEWLINK, NLM_F_MULTI, 9, b"abcde")
    last = encode_message(NLMSG_DONE, NLM_F_MULTI, 9, b"\0\0\0\0")
    msgs = parse_messages(first + last)
    assert [(m.type, m.payload) for m in msgs] == [(RTM_NEWLINK, b"abcde"), (NLMSG_DONE, bytes(4))]
    # The final message's alignment padding may be missing (nlmsg_len is what counts).
    odd = encode_message(RTM_NEWLINK, 0, 1, b"xyz")
    assert parse_messages(first + odd[:19])[1].payload == b"xyz"


def test_parse_empty() -> None:
    assert parse_messages(b"") == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes(15), "netlink_short_header"),
        (_HDR.pack(8, 1, 0, 0, 0), "netlink_bad_length"),  # below the header size
        (_HDR.pack(40, 16, 0, 0, 0) + bytes(8), "netlink_bad_length"),  # past the end
        (encode_message(16, 0, 1, b"abcd") + bytes(3), "netlink_short_header"),  # stray tail
    ],
)
def test_parse_messages_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacketError) as info:
        parse_messages(data)
    assert info.value.reason == reason


def test_parse_attrs_masks_flags_and_last_wins() -> None:
    nested = encode_attr(0x8000 | 8, encode_attr(2, b"\x01\0\0\0"))  # NLA_F_NESTED | RTA_METRICS
    data = encode_attr(3, b"a\0") + encode_attr(3, b"b\0") + nested
    attrs = parse_attrs(data)
    assert attrs[3] == b"b\0"
    assert parse_attrs(attrs[8]) == {2: b"\x01\0\0\0"}


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [
        (b"\x08\x00", 0, "rtattr_truncated"),  # half a header
        (struct.pack("=HH", 2, 1), 0, "rtattr_bad_length"),  # rta_len below 4
        (struct.pack("=HH", 12, 1) + bytes(4), 0, "rtattr_bad_length"),  # runs past the end
        (encode_attr(1, b"abcd") + b"\x01", 0, "rtattr_truncated"),  # stray byte
        (bytes(4), 8, "rtattr_truncated"),  # fixed header longer than the payload
    ],
)
def test_parse_attrs_malformed(data: bytes, offset: int, reason: str) -> None:
    with pytest.raises(MalformedPacketError) as info:
        parse_attrs(data, offset)
    assert info.value.reason == reason


@given(st.binary(max_size=256))
def test_parse_messages_any_bytes(data: bytes) -> None:
    """Garbage either parses or raises MalformedPacketError, never anything else."""
    try:
        msgs = parse_messages(data)
    except MalformedPacketError:
        return
    assert sum(nlmsg_align(16 + len(m.payload)) for m in msgs) >= len(data)


_DECODERS = [
    (decode_link, bytes(16)),
    (decode_address, bytes([AF_INET6, 64, 0, 0, 2, 0, 0, 0])),
    (decode_route, bytes([AF_INET, 32]) + bytes(10)),
    (decode_neighbour, bytes([AF_INET]) + bytes(11)),
]


@given(st.sampled_from(_DECODERS), st.booleans(), st.binary(max_size=128))
def test_decoders_any_bytes(case: Any, with_header: bool, tail: bytes) -> None:
    """Any payload (with or without a plausible fixed header) decodes or raises Malformed..."""
    decoder, header = case
    with contextlib.suppress(MalformedPacketError):
        decoder((header if with_header else b"") + tail)


@given(st.lists(st.tuples(st.integers(1, 0x3FFF), st.binary(max_size=40)), max_size=8))
def test_attrs_round_trip(items: list[tuple[int, bytes]]) -> None:
    data = b"".join(encode_attr(t, v) for t, v in items)
    assert parse_attrs(data) == dict(items)


@given(
    st.lists(
        st.tuples(st.integers(16, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=40)),
        max_size=6,
    ),
    st.integers(0, 0xFFFFFFFF),
)
def test_messages_round_trip(items: list[tuple[int, int, bytes]], seq: int) -> None:
    data = b"".join(encode_message(t, f, seq, p) for t, f, p in items)
    assert [(m.type, m.flags, m.seq, m.payload) for m in parse_messages(data)] == [
        (t, f, seq, p) for t, f, p in items
    ]


# ---------------------------------------------------------------------------------- requests
def test_encode_getroute_decoded_by_pyroute2() -> None:
    wire = encode_getroute(77, B4, A4, 2)
    m = rtmsg(wire)
    m.decode()
    assert m["header"]["type"] == RTM_GETROUTE
    assert m["header"]["flags"] == NLM_F_REQUEST
    assert m["header"]["sequence_number"] == 77
    assert (m["family"], m["dst_len"], m["src_len"]) == (AF_INET, 32, 32)
    assert m.get_attr("RTA_DST") == "198.18.0.2"
    assert m.get_attr("RTA_SRC") == "198.18.0.1"
    assert m.get_attr("RTA_OIF") == 2


def test_encode_getroute_v6_minimal() -> None:
    m = rtmsg(encode_getroute(1, B6))
    m.decode()
    assert (m["family"], m["dst_len"], m["src_len"]) == (AF_INET6, 128, 0)
    assert m.get_attr("RTA_DST") == "2001:db8::2"
    assert m.get_attr("RTA_SRC") is None
    assert m.get_attr("RTA_OIF") is None


def test_encode_getlink_by_index_and_name() -> None:
    m = ifinfmsg(encode_getlink(3, 7))
    m.decode()
    assert (m["header"]["type"], m["index"], m.get_attr("IFLA_IFNAME")) == (RTM_GETLINK, 7, None)
    m = ifinfmsg(encode_getlink(4, 0, "veth0"))
    m.decode()
    assert (m["index"], m.get_attr("IFLA_IFNAME")) == (0, "veth0")


@pytest.mark.parametrize(
    ("msg_type", "body_size"),
    [(RTM_GETLINK, 16 + 8), (RTM_GETADDR, 8), (RTM_GETROUTE, 12), (RTM_GETNEIGH, 12)],
)
def test_encode_dump(msg_type: int, body_size: int) -> None:
    wire = encode_dump(9, msg_type, AF_INET6)
    (msg,) = parse_messages(wire)
    assert (msg.type, msg.flags, msg.seq) == (msg_type, NLM_F_REQUEST | NLM_F_DUMP, 9)
    assert len(msg.payload) == body_size
    assert msg.payload[0] == AF_INET6


def test_encode_dump_rejects_other_types() -> None:
    with pytest.raises(ValueError, match="dumpable"):
        encode_dump(1, RTM_NEWLINK)


# --------------------------------------------------------------------------------- responses
def test_response_single_answer() -> None:
    resp = Response(5, dump=False)
    assert resp.feed([_msg(RTM_NEWROUTE, payload=b"x")])
    assert resp.error == 0
    assert [m.payload for m in resp.messages] == [b"x"]


def test_response_multipart_dump_over_several_datagrams() -> None:
    resp = Response(5, dump=True)
    assert not resp.feed([_msg(RTM_NEWLINK, flags=NLM_F_MULTI, payload=b"1")])
    assert not resp.feed(
        [_msg(RTM_NEWLINK, flags=NLM_F_MULTI, payload=b"2"), _msg(1, payload=b"noop")]
    )
    assert resp.feed(
        [
            _msg(RTM_NEWLINK, flags=NLM_F_MULTI, payload=b"3"),
            _msg(NLMSG_DONE, flags=NLM_F_MULTI, payload=bytes(4)),
            _msg(RTM_NEWLINK, flags=NLM_F_MULTI, payload=b"after done"),
        ]
    )
    assert [m.payload for m in resp.messages] == [b"1", b"2", b"3"]
    assert (resp.error, resp.interrupted) == (0, False)


def test_response_ignores_other_sequence_numbers() -> None:
    resp = Response(5, dump=False)
    assert not resp.feed([_msg(RTM_NEWROUTE, seq=4, payload=b"stale")])
    assert not resp.feed([_msg(NLMSG_ERROR, seq=6, payload=struct.pack("=i", -errno.ENODEV))])
    assert resp.feed([_msg(RTM_NEWROUTE, payload=b"mine")])
    assert [m.payload for m in resp.messages] == [b"mine"]


def test_response_multi_flag_keeps_single_request_open() -> None:
    resp = Response(5, dump=False)
    assert not resp.feed([_msg(RTM_NEWLINK, flags=NLM_F_MULTI)])
    assert resp.feed([_msg(NLMSG_DONE)])


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENODEV])
def test_response_error(code: int) -> None:
    resp = Response(5, dump=False)
    assert resp.feed([_msg(NLMSG_ERROR, payload=struct.pack("=i", -code) + bytes(16))])
    assert resp.error == code


def test_response_ack_is_not_an_error() -> None:
    resp = Response(5, dump=False)
    assert resp.feed([_msg(NLMSG_ERROR, payload=struct.pack("=i", 0))])
    assert resp.error == 0


def test_response_error_inside_done() -> None:
    # netlink_dump_done() reports a dump that failed half-way in NLMSG_DONE's payload.
    resp = Response(5, dump=True)
    resp.feed([_msg(NLMSG_DONE, payload=struct.pack("=i", -errno.EMSGSIZE))])
    assert resp.error == errno.EMSGSIZE


def test_response_overrun() -> None:
    resp = Response(5, dump=True)
    assert resp.feed([_msg(4)])
    assert resp.error == errno.ENOBUFS


def test_response_dump_interrupted() -> None:
    resp = Response(5, dump=True)
    resp.feed([_msg(RTM_NEWLINK, flags=NLM_F_MULTI | NLM_F_DUMP_INTR), _msg(NLMSG_DONE)])
    assert resp.done
    assert resp.interrupted


def test_response_short_error() -> None:
    with pytest.raises(MalformedPacketError) as info:
        Response(5, dump=False).feed([_msg(NLMSG_ERROR, payload=b"\x01")])
    assert info.value.reason == "netlink_short_error"


# ------------------------------------------------------------------------------------- links
def test_decode_link_from_pyroute2() -> None:
    link = decode_link(_payload(_link_wire()))
    assert link == LinkInfo(3, "rt0", MAC, 1500, 0x11043, 1, True)
    assert not link.noarp


def test_decode_link_loopback_and_down() -> None:
    lo = decode_link(
        _payload(
            _link_wire(
                index=1,
                ifi_type=772,
                flags=0x10049,
                attrs=[("IFLA_IFNAME", "lo"), ("IFLA_MTU", 65536)],
            )
        )
    )
    assert (lo.name, lo.mac, lo.up, lo.is_loopback, lo.noarp) == ("lo", b"", True, True, True)
    down = decode_link(_payload(_link_wire(flags=0x1003)))  # UP but not RUNNING (no carrier)
    assert not down.up
    noarp = decode_link(_payload(_link_wire(flags=0x11043 | IFF_NOARP)))
    assert noarp.noarp
    assert not noarp.flags & IFF_LOOPBACK


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ([("IFLA_MTU", 1500)], "rtnl_link_incomplete"),
        ([("IFLA_IFNAME", "x")], "rtnl_link_incomplete"),
    ],
)
def test_decode_link_incomplete(attrs: Any, reason: str) -> None:
    with pytest.raises(MalformedPacketError) as info:
        decode_link(_payload(_link_wire(attrs=attrs)))
    assert info.value.reason == reason


def test_decode_link_bad_sizes() -> None:
    payload = _payload(_link_wire(attrs=[("IFLA_IFNAME", "x")]))
    with pytest.raises(MalformedPacketError, match="rtattr_bad_size"):
        decode_link(payload + encode_attr(4, b"\x01\x02"))  # IFLA_MTU of 2 bytes
    with pytest.raises(MalformedPacketError, match="rtnl_short_header"):
        decode_link(bytes(15))


# --------------------------------------------------------------------------------- addresses
def _addr_wire(family: int, attrs: Any, flags: int = 0x80, prefixlen: int = 24) -> bytes:
    m = ifaddrmsg()
    m["family"] = family
    m["prefixlen"] = prefixlen
    m["flags"] = flags
    m["scope"] = 0
    m["index"] = 2
    m["attrs"] = attrs
    return _pyroute2(m, RTM_NEWADDR)


def test_decode_address_v4_prefers_local_over_peer() -> None:
    wire = _addr_wire(
        AF_INET,
        [
            ("IFA_ADDRESS", "198.18.0.9"),  # the peer of a point-to-point address
            ("IFA_LOCAL", "198.18.0.1"),
            ("IFA_BROADCAST", "198.18.0.255"),
        ],
    )
    info = decode_address(_payload(wire))
    assert info is not None
    assert (info.family, info.address, info.prefixlen, info.ifindex) == (4, A4, 24, 2)
    assert info.broadcast == bytes([198, 18, 0, 255])


def test_decode_address_v6_full_flags() -> None:
    # IFA_FLAGS carries all 32 bits; ifa_flags only the low 8 (IFA_F_MANAGETEMPADDR is 0x100).
    wire = _addr_wire(AF_INET6, [("IFA_ADDRESS", "2001:db8::1"), ("IFA_FLAGS", 0x140)], 0x40, 64)
    info = decode_address(_payload(wire))
    assert info is not None
    assert (info.family, info.address, info.flags, info.broadcast) == (6, A6, 0x140, None)
    assert info.tentative


def test_decode_address_other_family_and_errors() -> None:
    assert decode_address(_payload(_addr_wire(17, []))) is None
    with pytest.raises(MalformedPacketError, match="rtnl_address_incomplete"):
        decode_address(_payload(_addr_wire(AF_INET, [])))
    with pytest.raises(MalformedPacketError, match="rtnl_bad_prefixlen"):
        decode_address(_payload(_addr_wire(AF_INET, [("IFA_LOCAL", "198.18.0.1")], prefixlen=33)))
    bad = _payload(_addr_wire(AF_INET, [])) + encode_attr(2, A6)  # IFA_LOCAL of 16 bytes in v4
    with pytest.raises(MalformedPacketError, match="rtattr_bad_size"):
        decode_address(bad)


# -------------------------------------------------------------------------------- neighbours
def _neigh_wire(family: int, state: int, attrs: Any) -> bytes:
    m = ndmsg()
    m["family"] = family
    m["ifindex"] = 2
    m["state"] = state
    m["attrs"] = attrs
    return _pyroute2(m, RTM_NEWNEIGH)


@pytest.mark.parametrize("state", [0x02, 0x04, 0x08, 0x10, 0x80])
def test_decode_neighbour_usable_states(state: int) -> None:
    wire = _neigh_wire(
        AF_INET, state, [("NDA_DST", "198.18.0.2"), ("NDA_LLADDR", "02:00:00:00:00:01")]
    )
    assert decode_neighbour(_payload(wire)) == (2, B4, MAC, state)


@pytest.mark.parametrize("state", [0x01, 0x20, 0x40, 0x00])  # INCOMPLETE FAILED NOARP NONE
def test_decode_neighbour_unusable_states(state: int) -> None:
    wire = _neigh_wire(
        AF_INET6, state, [("NDA_DST", "2001:db8::2"), ("NDA_LLADDR", "02:00:00:00:00:01")]
    )
    assert decode_neighbour(_payload(wire)) is None


def test_decode_neighbour_without_mac_or_other_family() -> None:
    assert (
        decode_neighbour(_payload(_neigh_wire(AF_INET, 0x02, [("NDA_DST", "198.18.0.2")]))) is None
    )
    assert decode_neighbour(_payload(_neigh_wire(7, 0x02, []))) is None


# ------------------------------------------------------------------------------------ routes
def test_decode_route_from_pyroute2() -> None:
    wire = _route_wire(
        attrs=[
            ("RTA_DST", "198.18.0.2"),
            ("RTA_OIF", 2),
            ("RTA_GATEWAY", "198.18.0.254"),
            ("RTA_PREFSRC", "198.18.0.1"),
            ("RTA_TABLE", 254),
            ("RTA_METRICS", {"attrs": [("RTAX_MTU", 1280)]}),
        ]
    )
    reply = decode_route(_payload(wire))
    assert reply == RouteReply(
        family=AF_INET,
        type=1,
        table=254,
        flags=0,
        destination=B4,
        source=None,
        prefsrc=A4,
        gateway=GW4,
        oif=2,
        mtu=1280,
        error=0,
        via=False,
    )
    assert route_error(reply) == 0


def test_decode_route_cacheinfo_error() -> None:
    cacheinfo = struct.pack("=IIiIIIII", 0, 0, 0, (-errno.ENETUNREACH) & 0xFFFFFFFF, 0, 0, 0, 0)
    payload = _payload(_route_wire(AF_INET6, 7, [("RTA_DST", "2001:db8::2")]))
    reply = decode_route(payload + encode_attr(12, cacheinfo))
    assert reply.error == errno.ENETUNREACH
    assert route_error(reply) == errno.ENETUNREACH


def test_decode_route_errors() -> None:
    with pytest.raises(MalformedPacketError, match="rtnl_route_family"):
        decode_route(_payload(_route_wire(family=7)))
    with pytest.raises(MalformedPacketError, match="rtattr_bad_size"):
        decode_route(_payload(_route_wire()) + encode_attr(5, A6))  # 16-byte IPv4 gateway
    with pytest.raises(MalformedPacketError, match="rtnl_short_header"):
        decode_route(bytes(11))


def _reply(**kw: Any) -> RouteReply:
    base: dict[str, Any] = {
        "family": AF_INET,
        "type": 1,
        "table": 254,
        "flags": 0,
        "destination": B4,
        "source": None,
        "prefsrc": A4,
        "gateway": None,
        "oif": 2,
        "mtu": 0,
        "error": 0,
        "via": False,
    }
    base.update(kw)
    return RouteReply(**base)


@pytest.mark.parametrize(
    ("family", "rtype", "code"),
    [
        (AF_INET, 6, errno.EINVAL),  # blackhole
        (AF_INET, 7, errno.EHOSTUNREACH),  # unreachable (fib_props)
        (AF_INET6, 7, errno.EHOSTUNREACH),  # unreachable (ip6_rt_type_to_error)
        (AF_INET, 8, errno.EACCES),  # prohibit
        (AF_INET6, 8, errno.EACCES),
        (AF_INET, 9, errno.EAGAIN),  # throw
        (AF_INET, 0, errno.EINVAL),  # unspec
        (AF_INET, 1, 0),
        (AF_INET, 2, 0),
        (AF_INET, 3, 0),
        (AF_INET, 4, 0),
        (AF_INET, 5, 0),
    ],
)
def test_route_error_by_type(family: int, rtype: int, code: int) -> None:
    prefsrc = A4 if family == AF_INET else A6
    assert route_error(_reply(family=family, type=rtype, prefsrc=prefsrc)) == code


def test_route_error_via_and_missing_v6_source() -> None:
    assert route_error(_reply(via=True)) == errno.ENETUNREACH
    v6 = _reply(family=AF_INET6, destination=B6, prefsrc=None)
    assert route_error(v6) == errno.EADDRNOTAVAIL
    assert route_error(v6, A6) == 0
    assert route_error(_reply(prefsrc=None)) == 0  # IPv4 sends from 0.0.0.0


LINK = LinkInfo(2, "rt0", MAC, 1500, 0x11043, 1, True)


def test_route_from_reply_on_link_and_gateway() -> None:
    on_link = route_from_reply(_reply(), LINK, B4)
    assert (on_link.next_hop, on_link.source, on_link.mtu) == (B4, A4, 1500)
    assert (on_link.ifindex, on_link.ifname, on_link.src_mac) == (2, "rt0", MAC)
    assert (on_link.kind, on_link.noarp) == (RouteKind.UNICAST, False)
    via = route_from_reply(_reply(gateway=GW4, mtu=1280), LINK, B4)
    assert (via.next_hop, via.mtu) == (GW4, 1280)


@pytest.mark.parametrize(
    ("rtype", "kind"),
    [
        (2, RouteKind.LOCAL),
        (3, RouteKind.BROADCAST),
        (4, RouteKind.LOCAL),
        (5, RouteKind.MULTICAST),
    ],
)
def test_route_from_reply_kinds(rtype: int, kind: RouteKind) -> None:
    assert route_from_reply(_reply(type=rtype), LINK, B4).kind is kind


def test_route_from_reply_source_precedence() -> None:
    # The caller's source wins (IPv6 still reports the one it would have picked as PREFSRC).
    assert route_from_reply(_reply(source=GW4), LINK, B4, A4).source == A4
    assert route_from_reply(_reply(prefsrc=None, source=GW4), LINK, B4).source == GW4
    assert route_from_reply(_reply(prefsrc=None), LINK, B4).source == bytes(4)


def test_route_from_reply_checks_link() -> None:
    with pytest.raises(MalformedPacketError, match="rtnl_route_no_oif"):
        route_from_reply(_reply(oif=None), LINK, B4)
    with pytest.raises(ValueError, match="not the route's interface"):
        route_from_reply(_reply(oif=3), LINK, B4)
