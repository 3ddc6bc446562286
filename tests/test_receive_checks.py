"""Every receive check of the engine, at its boundaries, with its named drop counter.

Each case drives :meth:`UdpEngine.receive_frame` with one frame built by hand (the builders below
write any field, right or wrong) and asserts the whole outcome: either the datagram was delivered
and nothing was dropped, or nothing was delivered and exactly one drop was counted under the named
reason. Where a check has a boundary, the cases sit on both sides of it (min-1/min, max/max+1).
The kernel function or RFC behind each check is in ``docs/kernel-checks.md`` and in the docstring
of :mod:`rawtransport.packet`.

The builders are shared with the network tests (``tests/net/test_differential.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rawtransport.engine import (
    ARPHRD_LOOPBACK,
    PACKET_BROADCAST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    TP_STATUS_CSUM_VALID,
    TP_STATUS_CSUMNOTREADY,
    TP_STATUS_VLAN_VALID,
    DatagramReceived,
    EndpointConfig,
    FrameMeta,
    UdpEngine,
)
from rawtransport.route import AddressInfo, LocalAddresses

ROOT = Path(__file__).resolve().parents[1]

ME4 = bytes([198, 18, 0, 1])
PEER4 = bytes([198, 18, 0, 2])
BCAST4 = bytes([198, 18, 0, 255])
ME6 = bytes.fromhex("20010db8000000000000000000000001")
PEER6 = bytes.fromhex("20010db8000000000000000000000002")
MY_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")
IF = 2
PORT = 5000
SPORT = 4000
PAYLOAD = b"hello world!"


# ------------------------------------------------------------------------------------ builders
def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data`` (an odd length is padded with a zero byte)."""
    if len(data) & 1:
        data += b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def wrong(good: int) -> int:
    """A checksum value that does not verify where ``good`` does (never 0 or 0xFFFF: over IPv4 a
    zero UDP checksum means "none", and 0xFFFF is the other representation of zero)."""
    for flip in (0x00F0, 0x0F00, 0x000F):
        bad = good ^ flip
        if bad not in (0, 0xFFFF):
            return bad
    raise AssertionError("unreachable")


def udp(
    src: bytes,
    dst: bytes,
    payload: bytes = PAYLOAD,
    *,
    sport: int = SPORT,
    dport: int = PORT,
    ulen: int | None = None,
    csum: str | int = "ok",
) -> bytes:
    """A UDP header and payload. ``csum``: ``"ok"`` (right over the ``ulen`` bytes the kernel will
    checksum, so a trimmed segment still verifies), ``"bad"``, ``"zero"`` or a literal value."""
    seg_len = 8 + len(payload)
    length = seg_len if ulen is None else ulen
    head = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + length.to_bytes(2, "big")
    segment = head + b"\x00\x00" + payload
    covered = length if 8 <= length <= seg_len else seg_len
    if length == 0 and len(src) == 16:
        covered = seg_len  # RFC 2675: length 0 over IPv6 means the whole payload
    if len(src) == 16:  # RFC 8200 8.1
        pseudo = src + dst + covered.to_bytes(4, "big") + b"\x00\x00\x00\x11"
    else:  # RFC 768
        pseudo = src + dst + b"\x00\x11" + covered.to_bytes(2, "big")
    good = checksum(pseudo + segment[:covered]) or 0xFFFF
    value = {"ok": good, "bad": wrong(good), "zero": 0}[csum] if isinstance(csum, str) else csum
    return head + value.to_bytes(2, "big") + payload


def ipv4(
    src: bytes,
    dst: bytes,
    body: bytes,
    *,
    version: int = 4,
    ihl: int | None = None,
    options: bytes = b"",
    tot: int | None = None,
    tot_delta: int = 0,
    flags: int = 0x4000,
    ident: int = 0,
    ttl: int = 64,
    proto: int = 17,
    hcsum: str | int = "ok",
) -> bytes:
    """An IPv4 packet around ``body``. ``flags`` is the whole flags+fragment-offset field."""
    options += b"\x00" * (-len(options) % 4)
    words = ihl if ihl is not None else 5 + len(options) // 4
    total = (tot if tot is not None else 20 + len(options) + len(body)) + tot_delta
    head = bytes([(version << 4) | words, 0]) + (total & 0xFFFF).to_bytes(2, "big")
    head += ident.to_bytes(2, "big") + flags.to_bytes(2, "big") + bytes([ttl, proto])
    rest = src + dst + options
    good = checksum(head + b"\x00\x00" + rest)
    value = {"ok": good, "bad": wrong(good)}[hcsum] if isinstance(hcsum, str) else hcsum
    return head + value.to_bytes(2, "big") + rest + body


def ext(header_type: int, data: bytes) -> tuple[int, bytes]:
    """An IPv6 extension header: its number and its bytes after the first two."""
    return header_type, data


def ipv6(
    src: bytes,
    dst: bytes,
    body: bytes,
    *,
    version: int = 6,
    plen: int | None = None,
    plen_delta: int = 0,
    nh: int = 17,
    exts: Sequence[tuple[int, bytes]] = (),
    hop: int = 64,
) -> bytes:
    """An IPv6 packet: the chain ``exts`` (next-header and length bytes filled in), then ``body``
    whose protocol is ``nh``."""
    chain = b""
    for i, (_, data) in enumerate(exts):
        following = exts[i + 1][0] if i + 1 < len(exts) else nh
        size = 2 + len(data)
        assert size % 8 == 0, "extension headers are multiples of 8 bytes"
        chain += bytes([following, 0 if exts[i][0] == 44 else size // 8 - 1]) + data
    first = exts[0][0] if exts else nh
    length = (plen if plen is not None else len(chain) + len(body)) + plen_delta
    head = (version << 28).to_bytes(4, "big") + (length & 0xFFFF).to_bytes(2, "big")
    return head + bytes([first, hop]) + src + dst + chain + body


def ether(
    body: bytes,
    ethertype: int,
    *,
    dst: bytes = MY_MAC,
    src: bytes = PEER_MAC,
    vlans: Sequence[int] = (),
    pad: bytes = b"",
) -> bytes:
    """An Ethernet II frame; ``vlans`` are TPIDs of tags in front of ``ethertype`` (VID 5 each)."""
    if vlans:
        # The first TPID sits where the ethertype would; each tag's TCI is followed by the next type.
        types = [*vlans, ethertype]
        frame = dst + src + types[0].to_bytes(2, "big")
        for nxt in types[1:]:
            frame += (5).to_bytes(2, "big") + nxt.to_bytes(2, "big")
        return frame + body + pad
    return dst + src + ethertype.to_bytes(2, "big") + body + pad


def v4frame(
    payload: bytes = PAYLOAD,
    *,
    src: bytes = PEER4,
    dst: bytes = ME4,
    udp_kw: dict[str, Any] | None = None,
    eth_kw: dict[str, Any] | None = None,
    **ip_kw: Any,
) -> bytes:
    """Ethernet + IPv4 + UDP, each layer's fields overridable."""
    return ether(
        ipv4(src, dst, udp(src, dst, payload, **(udp_kw or {})), **ip_kw), 0x0800, **(eth_kw or {})
    )


def v6frame(
    payload: bytes = PAYLOAD,
    *,
    src: bytes = PEER6,
    dst: bytes = ME6,
    udp_kw: dict[str, Any] | None = None,
    eth_kw: dict[str, Any] | None = None,
    **ip_kw: Any,
) -> bytes:
    """Ethernet + IPv6 (+ extension headers) + UDP."""
    return ether(
        ipv6(src, dst, udp(src, dst, payload, **(udp_kw or {})), **ip_kw), 0x86DD, **(eth_kw or {})
    )


def tlv(n_options: int, pad: int = 0) -> bytes:
    """Destination/hop-by-hop option data (after the two header bytes) with ``n_options``
    skippable unknown options (type 0x1E: high bits 00, RFC 8200 4.2) of no data, then ``pad``
    bytes of padding, then PadN/Pad1 to the next multiple of 8."""
    data = b"\x1e\x00" * n_options
    if pad == 1:
        data += b"\x00"
    elif pad > 1:
        data += b"\x01" + bytes([pad - 2]) + b"\x00" * (pad - 2)
    fill = -(2 + len(data)) % 8
    if fill == 1:
        data += b"\x00"
    elif fill:
        data += b"\x01" + bytes([fill - 2]) + b"\x00" * (fill - 2)
    return data


def arp(
    op: int = 2,
    *,
    sender_ip: bytes = PEER4,
    sender_mac: bytes = PEER_MAC,
    target_ip: bytes = ME4,
    fmt: bytes = b"\x00\x01\x08\x00\x06\x04",
    trim: int = 0,
) -> bytes:
    """An ARP packet in an Ethernet frame (RFC 826); ``trim`` cuts bytes off its end."""
    body = fmt + op.to_bytes(2, "big") + sender_mac + sender_ip + MY_MAC + target_ip
    return ether(body[: len(body) - trim], 0x0806)


def nd(
    kind: int = 136,
    *,
    code: int = 0,
    target: bytes = PEER6,
    flags: int = 0x60,
    options: bytes | None = None,
    src: bytes = PEER6,
    dst: bytes = ME6,
    hop: int = 255,
    csum: str = "ok",
    trim: int = 0,
) -> bytes:
    """An ICMPv6 Neighbor Solicitation (135) or Advertisement (136), RFC 4861 4.3/4.4, with a
    link-layer address option of the peer's MAC unless ``options`` is given."""
    opt_type = 2 if kind == 136 else 1
    opts = bytes([opt_type, 1]) + PEER_MAC if options is None else options
    msg = bytes([kind, code, 0, 0, flags if kind == 136 else 0, 0, 0, 0]) + target + opts
    msg = msg[: len(msg) - trim]
    pseudo = src + dst + len(msg).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    good = checksum(pseudo + msg)
    value = good if csum == "ok" else wrong(good)
    msg = msg[:2] + value.to_bytes(2, "big") + msg[4:]
    return ether(ipv6(src, dst, msg, nh=58, hop=hop), 0x86DD)


def local_addresses() -> LocalAddresses:
    """A host with ME4/24 and ME6/64 on IF, and 127.0.0.1/8 on lo."""
    return LocalAddresses(
        [
            AddressInfo(IF, 4, ME4, 24, 0, 0x80),
            AddressInfo(IF, 6, ME6, 64, 0, 0x80),
            AddressInfo(1, 4, bytes([127, 0, 0, 1]), 8, 254, 0x80),
        ]
    )


# --------------------------------------------------------------------------------------- cases
DELIVERED = "delivered"
META = FrameMeta(ifindex=IF)


@dataclass(frozen=True)
class Case:
    """One frame, the engine it meets, and the one outcome allowed."""

    name: str
    frame: Callable[[], bytes]
    expect: str  # DELIVERED or a drop-counter name
    family: int = 4
    meta: FrameMeta = META
    config: dict[str, Any] = field(default_factory=dict)
    payload: bytes | None = None  # the payload a delivery must carry (default PAYLOAD)
    xfail: str | None = None  # a known difference with the kernel (docs/kernel-checks.md)


def _v4_opts(options: bytes) -> Callable[[], bytes]:
    return lambda: v4frame(options=options)


RR = b"\x07\x07\x04" + b"\x00" * 4  # record route with room for one address, pointer 4
CASES: list[Case] = [
    # ---- link layer (af_packet.c, eth_type_trans, vlan_do_receive)
    Case("host", v4frame, DELIVERED),
    Case("outgoing", v4frame, "outgoing", meta=FrameMeta(IF, pkttype=PACKET_OUTGOING)),
    Case("otherhost", v4frame, "otherhost", meta=FrameMeta(IF, pkttype=PACKET_OTHERHOST)),
    Case("l2_broadcast_unicast_ip", lambda: v4frame(eth_kw={"dst": b"\xff" * 6}), DELIVERED,
         meta=FrameMeta(IF, pkttype=PACKET_BROADCAST)),
    Case("l2_multicast_unicast_ip", lambda: v4frame(eth_kw={"dst": bytes.fromhex("01005e000001")}),
         DELIVERED, meta=FrameMeta(IF, pkttype=PACKET_MULTICAST)),
    Case("truncated", v4frame, "truncated", meta=FrameMeta(IF, truncated=True)),
    Case("unsupported_link", v4frame, "unsupported_link", meta=FrameMeta(IF, hatype=0xFFFE)),
    Case("vlan_offloaded", v4frame, "vlan_no_device",
         meta=FrameMeta(IF, status=TP_STATUS_VLAN_VALID)),
    Case("vlan_depth_0", v4frame, DELIVERED),
    Case("vlan_depth_1", lambda: v4frame(eth_kw={"vlans": [0x8100]}), "vlan_no_device"),
    Case("vlan_depth_2", lambda: v4frame(eth_kw={"vlans": [0x88A8, 0x8100]}), "vlan_no_device"),
    Case("vlan_depth_3", lambda: v4frame(eth_kw={"vlans": [0x88A8, 0x8100, 0x8100]}), "vlan_too_deep"),
    Case("vlan_tag_cut", lambda: MY_MAC + PEER_MAC + b"\x81\x00\x00", "eth_short"),
    Case("eth_13", lambda: v4frame()[:13], "eth_short"),
    Case("eth_14_ipv4", lambda: v4frame()[:14], "ipv4_short"),
    Case("not_ip", lambda: ether(b"\x00" * 46, 0x88B5), "not_ip"),
    # GSO super-frame: more than MTU + link header + one tag cannot have come off the wire whole.
    Case("gso_max", lambda: v4frame(b"g" * (1500 + 18 - 42)), DELIVERED, config={"mtu": 1500},
         payload=b"g" * (1500 + 18 - 42)),
    Case("gso_max_plus_1", lambda: v4frame(b"g" * (1500 + 19 - 42)), "gso_unsplit",
         config={"mtu": 1500}),
    # ---- IPv4 header (ip_rcv_core)
    Case("ipv4_19_bytes", lambda: v4frame()[:14 + 19], "ipv4_short"),
    Case("ipv4_20_bytes_no_udp", lambda: ether(ipv4(PEER4, ME4, b""), 0x0800), "udp_short"),
    Case("ipv4_version_3", lambda: v4frame(version=3), "ipv4_version"),
    Case("ipv4_version_5", lambda: v4frame(version=5), "ipv4_version"),
    Case("ipv4_version_6", lambda: v4frame(version=6), "ipv4_version"),
    Case("ipv4_ihl_4", lambda: v4frame(ihl=4), "ipv4_ihl"),
    Case("ipv4_ihl_0", lambda: v4frame(ihl=0), "ipv4_ihl"),
    Case("ipv4_ihl_5", lambda: v4frame(ihl=5), DELIVERED),
    Case("ipv4_ihl_15", lambda: v4frame(options=b"\x01" * 40), DELIVERED),
    Case("ipv4_ihl_15_cut", lambda: v4frame(options=b"\x01" * 40)[: 14 + 59], "ipv4_short"),
    Case("ipv4_ihl_6_no_room", lambda: ether(ipv4(PEER4, ME4, b"", ihl=6), 0x0800)[:14 + 23],
         "ipv4_short"),
    Case("ipv4_bad_checksum", lambda: v4frame(hcsum="bad"), "ipv4_bad_checksum"),
    Case("ipv4_checksum_off_by_one", lambda: v4frame(hcsum=1), "ipv4_bad_checksum"),
    Case("ipv4_tot_eq_captured", v4frame, DELIVERED),
    Case("ipv4_tot_captured_plus_1", lambda: v4frame(tot_delta=1), "ipv4_total_length"),
    Case("ipv4_tot_below_captured_trims", lambda: v4frame(eth_kw={"pad": b"\xee" * 20}), DELIVERED),
    Case("ipv4_tot_ihl_minus_1", lambda: v4frame(tot=19), "ipv4_total_length"),
    Case("ipv4_tot_ihl", lambda: v4frame(tot=20), "udp_short"),
    Case("ipv4_tot_ihl_plus_7", lambda: v4frame(tot=27), "udp_short"),
    Case("ipv4_tot_ihl_plus_8_trims_udp", lambda: v4frame(tot=28), "udp_length"),
    Case("ipv4_evil_bit", lambda: v4frame(flags=0x8000), DELIVERED),
    # ---- IPv4 options (ip_options_compile, ip_rcv_options)
    Case("ipv4_opt_nop_eol", _v4_opts(b"\x01\x01\x01\x00"), DELIVERED),
    Case("ipv4_opt_record_route", _v4_opts(RR), DELIVERED),
    Case("ipv4_opt_record_route_ptr_3", _v4_opts(b"\x07\x07\x03" + b"\x00" * 4), "ipv4_options"),
    Case("ipv4_opt_record_route_twice", _v4_opts(RR + b"\x01" + RR), "ipv4_options"),
    Case("ipv4_opt_length_1", _v4_opts(b"\x44\x01\x00\x00"), "ipv4_options"),
    Case("ipv4_opt_length_to_end", _v4_opts(b"\x1e\x04\x00\x00"), DELIVERED),
    Case("ipv4_opt_length_past_end", _v4_opts(b"\x1e\x05\x00\x00"), "ipv4_options"),
    Case("ipv4_opt_router_alert_4", _v4_opts(b"\x94\x04\x00\x00"), DELIVERED),
    Case("ipv4_opt_router_alert_3", _v4_opts(b"\x94\x03\x00\x00"), "ipv4_options"),
    Case("ipv4_opt_timestamp", _v4_opts(b"\x44\x08\x05\x00" + b"\x00" * 4), DELIVERED),
    Case("ipv4_opt_timestamp_ptr_4", _v4_opts(b"\x44\x08\x04\x00" + b"\x00" * 4), "ipv4_options"),
    Case("ipv4_opt_cipso", _v4_opts(b"\x86\x06\x00\x00\x00\x01\x00\x00"), "ipv4_options"),
    Case("ipv4_opt_lsrr", _v4_opts(b"\x83\x07\x04" + PEER4 + b"\x00"), "ipv4_source_route"),
    Case("ipv4_opt_ssrr", _v4_opts(b"\x89\x07\x04" + PEER4 + b"\x00"), "ipv4_source_route"),
    # ---- IPv4 fragments (ip_is_fragment) with reassembly off
    Case("ipv4_df_only", lambda: v4frame(flags=0x4000), DELIVERED, config={"reassemble": False}),
    Case("ipv4_mf", lambda: v4frame(flags=0x2000), "ipv4_fragment", config={"reassemble": False}),
    Case("ipv4_offset_1", lambda: v4frame(flags=0x0001), "ipv4_fragment", config={"reassemble": False}),
    Case("ipv4_offset_max", lambda: v4frame(flags=0x1FFF), "ipv4_fragment",
         config={"reassemble": False}),
    Case("ipv4_not_udp", lambda: v4frame(proto=6), "not_udp"),
    # ---- UDP over IPv4 (__udp4_lib_rcv)
    Case("udp4_len_7", lambda: v4frame(udp_kw={"ulen": 7}), "udp_length"),
    Case("udp4_len_0", lambda: v4frame(udp_kw={"ulen": 0}), "udp_length"),
    Case("udp4_len_8_trims", lambda: v4frame(udp_kw={"ulen": 8}), DELIVERED, payload=b""),
    Case("udp4_len_payload", lambda: v4frame(udp_kw={"ulen": 8 + len(PAYLOAD)}), DELIVERED),
    Case("udp4_len_payload_plus_1", lambda: v4frame(udp_kw={"ulen": 9 + len(PAYLOAD)}), "udp_length"),
    Case("udp4_len_trims", lambda: v4frame(udp_kw={"ulen": 13}), DELIVERED, payload=PAYLOAD[:5]),
    Case("udp4_empty", lambda: v4frame(b""), DELIVERED, payload=b""),
    Case("udp4_bad_checksum", lambda: v4frame(udp_kw={"csum": "bad"}), "udp_bad_checksum"),
    Case("udp4_zero_checksum", lambda: v4frame(udp_kw={"csum": "zero"}), DELIVERED),
    Case("udp4_bad_checksum_csum_notready", lambda: v4frame(udp_kw={"csum": "bad"}), DELIVERED,
         meta=FrameMeta(IF, status=TP_STATUS_CSUMNOTREADY)),
    Case("udp4_bad_checksum_csum_valid", lambda: v4frame(udp_kw={"csum": "bad"}), DELIVERED,
         meta=FrameMeta(IF, status=TP_STATUS_CSUM_VALID)),
    # ---- addresses (ip_route_input_slow, fib_validate_source) and the socket lookup
    Case("wrong_port_minus_1", lambda: v4frame(udp_kw={"dport": PORT - 1}), "wrong_port"),
    Case("wrong_port_plus_1", lambda: v4frame(udp_kw={"dport": PORT + 1}), "wrong_port"),
    Case("wrong_family_v6_on_v4", v6frame, "wrong_family"),
    Case("wrong_family_v4_on_v6", v4frame, "wrong_family", family=6),
    Case("src_0_0_0_0", lambda: v4frame(src=bytes(4)), "martian_source"),
    # Linux >= 5.14: ipv4_is_zeronet() is "== 0", the rest of 0/8 is an ordinary source (seen).
    Case("src_0_0_0_1", lambda: v4frame(src=bytes([0, 0, 0, 1])), DELIVERED),
    Case("src_0_x", lambda: v4frame(src=bytes([0, 255, 255, 255])), DELIVERED),
    Case("src_239_255", lambda: v4frame(src=bytes([239, 255, 255, 255])), "martian_source"),
    # 240/4 is unicast to ip_route_input_slow() (only 224/4 is multicast): delivered (seen).
    Case("src_240_0", lambda: v4frame(src=bytes([240, 0, 0, 1])), DELIVERED),
    # ip_route_input_slow(): 0.0.0.0 -> 255.255.255.255 and 0.0.0.0 -> 0.0.0.0 go to brd_input
    # before the zero-source check, and reach a wildcard socket (DHCP) (seen).
    Case("src_zero_to_limited_broadcast", lambda: v4frame(src=bytes(4), dst=b"\xff" * 4),
         DELIVERED, config={"local_ip": None}),
    Case("src_zero_to_zero", lambda: v4frame(src=bytes(4), dst=bytes(4)), DELIVERED,
         config={"local_ip": None}),
    Case("src_1_0", lambda: v4frame(src=bytes([1, 0, 0, 0])), DELIVERED),
    Case("src_223_255", lambda: v4frame(src=bytes([223, 255, 255, 255])), DELIVERED),
    Case("src_224_0", lambda: v4frame(src=bytes([224, 0, 0, 0])), "martian_source"),
    Case("src_limited_broadcast", lambda: v4frame(src=b"\xff" * 4), "martian_source"),
    Case("src_loopback", lambda: v4frame(src=bytes([127, 0, 0, 1])), "martian_source"),
    Case("src_ours", lambda: v4frame(src=ME4), "martian_source"),
    Case("dst_loopback", lambda: v4frame(dst=bytes([127, 0, 0, 1])), "martian_destination"),
    Case("dst_zero", lambda: v4frame(dst=bytes(4)), "martian_destination",
         config={"local_ip": None}),
    Case("wrong_address", lambda: v4frame(dst=bytes([198, 18, 0, 9])), "wrong_address"),
    Case("wildcard_subnet_broadcast", lambda: v4frame(dst=BCAST4), DELIVERED,
         config={"local_ip": None}),
    Case("wildcard_limited_broadcast", lambda: v4frame(dst=b"\xff" * 4), DELIVERED,
         config={"local_ip": None}),
    Case("wildcard_not_local", lambda: v4frame(dst=bytes([198, 18, 0, 9])), "not_local",
         config={"local_ip": None}),
    Case("bound_broadcast", lambda: v4frame(dst=BCAST4), "wrong_address"),
    # Bound to an address the host no longer has (removed after bind()): not RTN_LOCAL any more.
    Case("bound_address_removed", lambda: v4frame(dst=bytes([198, 18, 0, 9])), "not_local",
         config={"local_ip": bytes([198, 18, 0, 9])}),
    Case("connected_ok", v4frame, DELIVERED,
         config={"remote_ip": PEER4, "remote_port": SPORT}),
    Case("connected_other_port", lambda: v4frame(udp_kw={"sport": SPORT + 1}), "wrong_peer",
         config={"remote_ip": PEER4, "remote_port": SPORT}),
    Case("connected_other_host", lambda: v4frame(src=bytes([198, 18, 0, 3])), "wrong_peer",
         config={"remote_ip": PEER4, "remote_port": SPORT}),
    # ---- IPv6 header (ip6_rcv_core)
    Case("ipv6", v6frame, DELIVERED, family=6),
    Case("ipv6_39_bytes", lambda: v6frame()[: 14 + 39], "ipv6_short", family=6),
    Case("ipv6_40_bytes_no_next", lambda: ether(ipv6(PEER6, ME6, b"", nh=59), 0x86DD), "not_udp",
         family=6),
    Case("ipv6_version_4", lambda: v6frame(version=4), "ipv6_version", family=6),
    Case("ipv6_version_7", lambda: v6frame(version=7), "ipv6_version", family=6),
    Case("ipv6_plen_captured", v6frame, DELIVERED, family=6),
    Case("ipv6_plen_captured_plus_1", lambda: v6frame(plen_delta=1), "ipv6_payload_length",
         family=6),
    Case("ipv6_plen_below_captured_trims", lambda: v6frame(eth_kw={"pad": b"\xee" * 9}), DELIVERED,
         family=6),
    Case("ipv6_plen_7", lambda: v6frame(plen=7), "udp_short", family=6),
    Case("ipv6_plen_0_udp", lambda: v6frame(plen=0), "udp_short", family=6),
    # Payload length 0 before hop-by-hop, no Jumbo option: ip6_rcv_core() does not trim, and
    # delivers (seen): everything captured is the payload, padding included, trimmed by UDP.
    Case("ipv6_plen_0_hbh", lambda: v6frame(plen=0, exts=[ext(0, tlv(0))]), DELIVERED, family=6),
    Case("ipv6_plen_0_hbh_padded", lambda: v6frame(plen=0, exts=[ext(0, tlv(0))],
         eth_kw={"pad": bytes(9)}), DELIVERED, family=6),
    Case("ipv6_jumbo_option", lambda: v6frame(exts=[ext(0, b"\xc2\x04" + b"\x00" * 4)]),
         "ipv6_jumbogram", family=6),
    Case("ipv6_src_multicast", lambda: v6frame(src=bytes.fromhex("ff02" + "00" * 13 + "01")),
         "martian_source", family=6),
    Case("ipv6_src_loopback", lambda: v6frame(src=bytes(15) + b"\x01"), "martian_source", family=6),
    Case("ipv6_src_v4mapped", lambda: v6frame(src=bytes(10) + b"\xff\xff" + PEER4), DELIVERED,
         family=6),
    Case("ipv6_dst_loopback", lambda: v6frame(dst=bytes(15) + b"\x01"), "martian_destination",
         family=6, config={"local_ip": None}),
    Case("ipv6_dst_ff00", lambda: v6frame(dst=bytes.fromhex("ff00" + "00" * 13 + "01")),
         "martian_destination", family=6, config={"local_ip": None}),
    Case("ipv6_dst_ff01", lambda: v6frame(dst=bytes.fromhex("ff01" + "00" * 13 + "01")),
         "martian_destination", family=6, config={"local_ip": None}),
    Case("ipv6_dst_ff02_bound", lambda: v6frame(dst=bytes.fromhex("ff02" + "00" * 13 + "01")),
         "wrong_address", family=6),
    Case("ipv6_wrong_address", lambda: v6frame(dst=PEER6), "wrong_address", family=6),
    Case("ipv6_wildcard_not_local", lambda: v6frame(dst=PEER6), "not_local", family=6,
         config={"local_ip": None}),
    Case("ipv6_bound_address_removed", lambda: v6frame(dst=ME6[:15] + b"\x09"), "not_local",
         family=6, config={"local_ip": ME6[:15] + b"\x09"}),
    # ---- IPv6 extension headers (exthdrs.c: ip6_parse_tlv, ipv6_rthdr_rcv; reassembly.c)
    Case("ipv6_hbh_first", lambda: v6frame(exts=[ext(0, tlv(0))]), DELIVERED, family=6),
    Case("ipv6_hbh_second", lambda: v6frame(exts=[ext(60, tlv(0)), ext(0, tlv(0))]),
         "ipv6_hbh_not_first", family=6),
    Case("ipv6_dst_opts_8", lambda: v6frame(exts=[ext(60, tlv(8))]), DELIVERED, family=6),
    Case("ipv6_dst_opts_9", lambda: v6frame(exts=[ext(60, tlv(9))]), "ipv6_ext_header", family=6),
    Case("ipv6_hbh_opts_8", lambda: v6frame(exts=[ext(0, tlv(8))]), DELIVERED, family=6),
    Case("ipv6_hbh_opts_9", lambda: v6frame(exts=[ext(0, tlv(9))]), "ipv6_ext_header", family=6),
    Case("ipv6_pad_7", lambda: v6frame(exts=[ext(60, b"\x1e\x03" + bytes(3) + b"\x1e\x00" + b"\x01\x05" + bytes(5))]),
         DELIVERED, family=6),
    Case("ipv6_pad_8", lambda: v6frame(exts=[ext(60, b"\x1e\x04" + bytes(4) + b"\x01\x06" + bytes(6))]),
         "ipv6_ext_header", family=6),
    Case("ipv6_padn_nonzero", lambda: v6frame(exts=[ext(60, b"\x01\x04\x00\x00\x01\x00")]),
         "ipv6_ext_header", family=6),
    Case("ipv6_option_past_header", lambda: v6frame(exts=[ext(60, b"\x1e\x05\x00\x00\x00\x00")]),
         "ipv6_ext_header", family=6),
    Case("ipv6_unknown_option_skip", lambda: v6frame(exts=[ext(60, b"\x1e\x04\x00\x00\x00\x00")]),
         DELIVERED, family=6),
    Case("ipv6_unknown_option_discard", lambda: v6frame(exts=[ext(60, b"\x5e\x04\x00\x00\x00\x00")]),
         "ipv6_option", family=6),
    Case("ipv6_router_alert_2", lambda: v6frame(exts=[ext(0, b"\x05\x02\x00\x00\x01\x00")]),
         DELIVERED, family=6),
    Case("ipv6_router_alert_4", lambda: v6frame(exts=[ext(0, b"\x05\x04\x00\x00\x00\x00")]),
         "ipv6_option", family=6),
    Case("ipv6_routing_type0_sl0", lambda: v6frame(exts=[ext(43, b"\x00\x00" + b"\x00" * 4 + PEER6)]),
         DELIVERED, family=6),
    Case("ipv6_routing_type0_sl1", lambda: v6frame(exts=[ext(43, b"\x00\x01" + b"\x00" * 4 + PEER6)]),
         "ipv6_routing_header", family=6),
    Case("ipv6_routing_type4", lambda: v6frame(exts=[ext(43, b"\x04\x00" + b"\x00" * 4 + PEER6)]),
         "ipv6_routing_header", family=6),
    Case("ipv6_atomic_fragment", lambda: v6frame(exts=[ext(44, b"\x00\x00\x00\x00\x00\x07")]),
         DELIVERED, family=6, config={"reassemble": False}),
    Case("ipv6_fragment_more", lambda: v6frame(exts=[ext(44, b"\x00\x01\x00\x00\x00\x07")]),
         "ipv6_fragment", family=6, config={"reassemble": False}),
    Case("ipv6_fragment_offset", lambda: v6frame(exts=[ext(44, b"\x00\x08\x00\x00\x00\x07")]),
         "ipv6_fragment", family=6, config={"reassemble": False}),
    Case("ipv6_20_dst_opts", lambda: v6frame(exts=[ext(60, tlv(0))] * 20), DELIVERED, family=6),
    # A chain at the capture boundary: the last header ends exactly where the payload does (no
    # room for UDP), or runs one 8-byte unit past it, or has fewer than 8 bytes to start in.
    Case("ipv6_chain_ends_at_payload", lambda: ether(ipv6(PEER6, ME6, b"", exts=[ext(60, tlv(0))]),
         0x86DD), "udp_short", family=6),
    Case("ipv6_chain_past_payload", lambda: ether(ipv6(PEER6, ME6, b"\x11\x00\x00\x00", nh=60),
         0x86DD), "ipv6_ext_header", family=6),
    Case("ipv6_chain_len_past_payload",
         lambda: ether(ipv6(PEER6, ME6, b"\x11\x01" + tlv(0), nh=60), 0x86DD),
         "ipv6_ext_header", family=6),
    Case("ipv6_not_udp", lambda: v6frame(nh=6), "not_udp", family=6),
    # ---- UDP over IPv6 (__udp6_lib_rcv)
    Case("udp6_len_7", lambda: v6frame(udp_kw={"ulen": 7}), "udp_length", family=6),
    Case("udp6_len_0_whole", lambda: v6frame(udp_kw={"ulen": 0}), DELIVERED, family=6),
    Case("udp6_len_8_trims", lambda: v6frame(udp_kw={"ulen": 8}), DELIVERED, family=6, payload=b""),
    Case("udp6_len_payload_plus_1", lambda: v6frame(udp_kw={"ulen": 9 + len(PAYLOAD)}),
         "udp_length", family=6),
    Case("udp6_zero_checksum", lambda: v6frame(udp_kw={"csum": "zero"}), "udp6_zero_checksum",
         family=6),
    Case("udp6_zero_checksum_vouched", lambda: v6frame(udp_kw={"csum": "zero"}), "udp6_zero_checksum",
         family=6, meta=FrameMeta(IF, status=TP_STATUS_CSUM_VALID)),
    Case("udp6_bad_checksum", lambda: v6frame(udp_kw={"csum": "bad"}), "udp_bad_checksum",
         family=6),
    Case("udp6_dual_stack_v4", v4frame, DELIVERED, family=6,
         config={"local_ip": None, "dual_stack": True}),
    Case("udp6_dual_stack_bound", v4frame, "wrong_address", family=6,
         config={"dual_stack": True}),
    # ---- ARP (arp_rcv, arp_process) and ND (ndisc_rcv, RFC 4861 7.1)
    Case("arp_reply_unsolicited", arp, "neighbour:unsolicited"),
    # A request to us, or a gratuitous announcement: a claim, which needs an entry to verify.
    Case("arp_request", lambda: arp(1), "neighbour:claims_ignored"),
    Case("arp_gratuitous", lambda: arp(1, target_ip=PEER4), "neighbour:claims_ignored"),
    Case("arp_gratuitous_reply", lambda: arp(target_ip=PEER4), "neighbour:claims_ignored"),
    Case("arp_op_3", lambda: arp(3), "arp_op"),
    Case("arp_format", lambda: arp(fmt=b"\x00\x06\x08\x00\x06\x04"), "arp_format"),
    Case("arp_27_bytes", lambda: arp(trim=1), "arp_short"),
    Case("arp_not_for_us", lambda: arp(target_ip=bytes([198, 18, 0, 9])), "arp_not_for_us"),
    Case("arp_from_self", lambda: arp(sender_ip=ME4), "arp_from_self"),
    Case("arp_multicast_mac", lambda: arp(sender_mac=bytes.fromhex("01005e000001")),
         "neighbour_bad_mac"),
    Case("arp_zero_mac", lambda: arp(sender_mac=bytes(6)), "neighbour_bad_mac"),
    Case("na_unsolicited", nd, "neighbour:unsolicited", family=6),
    Case("na_not_solicited_flag", lambda: nd(flags=0), "nd_unsolicited", family=6),
    Case("na_unsolicited_override", lambda: nd(flags=0x20), "neighbour:claims_ignored", family=6),
    Case("na_from_self", lambda: nd(target=ME6), "nd_from_self", family=6),
    Case("na_hop_254", lambda: nd(hop=254), "nd_hop_limit", family=6),
    Case("na_code_1", lambda: nd(code=1), "nd_code", family=6),
    Case("na_23_bytes", lambda: nd(options=b"", trim=1), "nd_short", family=6),
    # 24 bytes, no option: a well-formed NA, but without a target link-layer address it updates
    # no entry that is not resolved yet (RFC 4861 7.2.5).
    Case("na_24_bytes", lambda: nd(options=b""), "nd_no_target_lladdr", family=6),
    Case("na_target_multicast", lambda: nd(target=bytes.fromhex("ff02" + "00" * 13 + "01")),
         "nd_target_multicast", family=6),
    Case("na_option_length_0", lambda: nd(options=b"\x02\x00" + PEER_MAC), "nd_option_length",
         family=6),
    Case("na_option_length_16", lambda: nd(options=b"\x02\x02" + PEER_MAC + bytes(8)),
         "nd_option_length", family=6),
    Case("na_solicited_to_multicast", lambda: nd(dst=bytes.fromhex("ff02" + "00" * 13 + "01")),
         "nd_solicited_multicast", family=6),
    Case("na_multicast_mac", lambda: nd(options=b"\x02\x01" + bytes.fromhex("333300000001")),
         "neighbour_bad_mac", family=6),
    Case("icmpv6_3_bytes", lambda: ether(ipv6(PEER6, ME6, b"\x88\x00\x00", nh=58, hop=255), 0x86DD),
         "icmpv6_short", family=6),
    Case("icmpv6_bad_checksum", lambda: nd(csum="bad"), "icmpv6_bad_checksum", family=6),
    Case("ns_is_not_ours", lambda: nd(135), "nd_not_for_us", family=6),
    Case("ns_claim", lambda: nd(135, target=ME6), "neighbour:claims_ignored", family=6),
    Case("ns_without_sllao", lambda: nd(135, target=ME6, options=b""), "nd_no_source_lladdr",
         family=6),
    Case("ns_dad_with_sllao", lambda: nd(135, src=bytes(16), dst=bytes.fromhex("ff0200000000000000000001ff000001")),
         "nd_sllao_unspecified", family=6),
    Case("ns_dad_unicast", lambda: nd(135, src=bytes(16), options=b""), "nd_dad_destination",
         family=6),
    Case("icmpv6_echo_bad_checksum",
         lambda: ether(ipv6(PEER6, ME6, b"\x80\x00\x7b\x2a" + bytes(4), nh=58), 0x86DD),
         "icmpv6_bad_checksum", family=6),
]  # fmt: skip


def make_engine(case: Case) -> UdpEngine:
    cfg = dict(case.config)
    mtu = cfg.pop("mtu", None)
    local = cfg.pop("local_ip", ME4 if case.family == 4 else ME6)
    e = UdpEngine(
        EndpointConfig(family=case.family, local_port=PORT, local_ip=local, **cfg),
        local_addresses(),
    )
    if mtu is not None:
        e.set_link_mtus({IF: mtu})
    return e


# Where the engine still differs from the kernel (found by tests/net/test_differential.py); each is
# described in docs/kernel-checks.md, "Known differences". Strict: the fix makes the case pass.
# None today: the differences found so far are fixed and their cases above are plain checks.
KNOWN: dict[str, str] = {}


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN[case.xfail])] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_receive_check(case: Case) -> None:
    e = make_engine(case)
    e.receive_frame(case.frame(), case.meta, 1.0)
    events = e.events()
    stats = e.stats()
    assert stats["received"] == 1
    if case.expect == DELIVERED:
        assert stats["dropped"] == {}, stats
        assert len(events) == 1
        (ev,) = events
        assert isinstance(ev, DatagramReceived)
        assert ev.data == (PAYLOAD if case.payload is None else case.payload)
        assert stats["delivered"] == 1
    elif case.expect.startswith("neighbour:"):
        # Passed every check; the resolver ignored it (no request outstanding) and counted it.
        assert events == []
        assert stats["dropped"] == {}, stats
        neighbour = stats["neighbour"]
        assert isinstance(neighbour, dict)
        assert neighbour[case.expect.split(":")[1]] == 1
    else:
        assert events == []
        assert stats["dropped"] == {case.expect: 1}, stats
        assert stats["delivered"] == 0


def test_frame_bytes_are_what_the_name_says() -> None:
    """The builders are right: a valid frame verifies with the project's own checksum module and
    scapy-independent arithmetic, and a "bad" checksum is bad."""
    from rawtransport.checksum import verify_udp_checksum

    f = v4frame()
    assert checksum(f[14:34]) == 0
    assert verify_udp_checksum(PEER4, ME4, f[34:])
    g = v6frame()
    assert verify_udp_checksum(PEER6, ME6, g[54:])
    assert not verify_udp_checksum(PEER6, ME6, v6frame(udp_kw={"csum": "bad"})[54:])
    assert len(tlv(8)) + 2 == 24


# -------------------------------------------------------------------------------- completeness
_NOT_RECEIVE = {
    # Send side: a datagram waiting for a neighbour that never answered, or with no source.
    "neighbour_failed",
    "neighbour_no_source",
    # The stack's, for a frame no endpoint of a shared stack takes (tests/test_host.py).
    "no_socket",
}
# Counted by the reassembler (``stats()["reassembly"]``), whose own tests cover them.
_REASSEMBLY_ONLY = {"reassembly_tiny_first", "vnet_short"}


def _reasons_in_source() -> set[str]:
    found: set[str] = set()
    for name in ("engine.py", "host.py", "packet_fast.py", "packet_frame.py", "packet_types.py"):
        text = (ROOT / "rawtransport" / name).read_text()
        found |= set(re.findall(r'MalformedPacketError\(\s*"([a-z0-9_]+)"', text))
        found |= set(re.findall(r'drop\(\s*"([a-z0-9_]+)"', text))
        found |= set(re.findall(r'return "([a-z0-9_]+)"', text))
    return found


def test_every_drop_reason_has_a_case() -> None:
    """A counter added to the engine or the codec without a case here fails this test."""
    covered = {c.expect for c in CASES if c.xfail is None}
    missing = _reasons_in_source() - covered - _NOT_RECEIVE - _REASSEMBLY_ONLY
    assert not missing, f"drop reasons without a receive-check case: {sorted(missing)}"


def test_every_reason_is_documented() -> None:
    """Each counter name appears in docs/kernel-checks.md (the table of kernel checks)."""
    doc = (ROOT / "docs" / "kernel-checks.md").read_text()
    undocumented = {r for r in _reasons_in_source() | _NOT_RECEIVE if f"`{r}`" not in doc}
    assert not undocumented, sorted(undocumented)


def test_loopback_device_accepts_loopback_addresses() -> None:
    e = UdpEngine(
        EndpointConfig(family=4, local_port=PORT, local_ip=bytes([127, 0, 0, 1])), local_addresses()
    )
    lo = bytes([127, 0, 0, 1])
    e.receive_frame(v4frame(src=lo, dst=lo), FrameMeta(1, hatype=ARPHRD_LOOPBACK), 0.0)
    assert [type(x) for x in e.events()] == [DatagramReceived]
    assert e.stats()["dropped"] == {}
