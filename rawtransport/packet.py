"""The packet codec: Ethernet (802.1Q/802.1ad), IPv4, IPv6, UDP, ARP and ICMPv6 Neighbor Discovery.

Pure: bytes in, values out, and back. Addresses are raw ``bytes`` (6 for a MAC, 4 or 16 for IP).
Two layers:

- the per-datagram fast paths, :func:`parse_udp` (receive, every kernel check) and
  :func:`build_udp` (send), plus :func:`build_ipv4_fragments`, :func:`build_ipv6_fragments`,
  :func:`build_arp_request`, :func:`build_neighbor_solicitation`;
- the general codec over frozen dataclasses, :func:`parse_frame` and its inverse
  :func:`build_frame`, where ``None`` in a length or checksum field means "compute it".

Address policy (martians, "is it ours", multicast membership) is not the codec's job: the engine
applies it to what the parser returns.

Drop reasons
------------
A frame that fails a check raises :class:`~rawtransport.errors.MalformedPacketError` whose
``reason`` is one of these stable identifiers (the engine's drop-counter names). In brackets:
the kernel function or RFC that makes the same check.

Ethernet [``eth_type_trans``, ``af_packet.c``]:

- ``eth_short``: under 14 bytes, or a VLAN tag cut short.
- ``vlan_too_deep``: more than two VLAN tags (802.1ad outer + 802.1Q inner is the most).
- ``not_ip``: ethertype neither IPv4 nor IPv6 (:func:`parse_udp` only).

IPv4 [``ip_rcv_core``, ``ip_rcv_options``/``ip_options_compile``, ``ip_local_deliver``]:

- ``ipv4_short``: under 20 bytes, or under IHL*4 bytes captured.
- ``ipv4_version``: version is not 4.
- ``ipv4_ihl``: IHL below 5.
- ``ipv4_bad_checksum``: header checksum wrong (``ip_fast_csum``); always verified by
  :func:`parse_udp`.
- ``ipv4_total_length``: total length above the bytes captured (truncated), or below IHL*4.
- ``ipv4_options``: options the kernel rejects: length < 2 or past the header (RFC 791), a
  repeated or malformed record-route/source-route/timestamp option, Router Alert under 4 bytes
  (RFC 2113), CIPSO without a configured DOI.
- ``ipv4_source_route``: LSRR/SSRR present; dropped while ``accept_source_route`` is 0, the
  default (:func:`parse_udp` only; :func:`parse_frame` keeps them in ``options``).
- ``ipv4_fragment``: MF set or a non-zero fragment offset (``ip_is_fragment``): reassembly is
  decided by the caller (:func:`parse_udp` only).
- ``not_udp``: protocol is not UDP, or no UDP header at the end of the IPv6 chain (next header
  59, ICMPv6, ESP, AH...) (:func:`parse_udp` only).

UDP [``__udp4_lib_rcv``, ``__udp6_lib_rcv``, ``udp6_csum_init``]:

- ``udp_short``: fewer than 8 bytes of IP payload.
- ``udp_length``: UDP length below 8 or above the IP payload. Over IPv6 a length of 0 means
  "the whole payload" (RFC 2675 5), as the kernel applies it to any packet.
- ``udp_bad_checksum``: checksum wrong (verified only if asked: the kernel may vouch for it).
  Over IPv4 a zero checksum means "none" and is valid (RFC 768).
- ``udp6_zero_checksum``: zero UDP checksum over IPv6 (RFC 8200 8.1); always checked by
  :func:`parse_udp`, by :func:`parse_frame` when verifying checksums.

IPv6 [``ip6_rcv_core``, ``exthdrs.c``, ``ip6_protocol_deliver_rcu``, ``ipv6_frag_rcv``]:

- ``ipv6_short``: under 40 bytes. ``ipv6_version``: version is not 6.
- ``ipv6_jumbogram``: a Jumbo Payload option (RFC 2675; never valid over Ethernet). Payload length 0
  before a hop-by-hop header without one is delivered untrimmed, as ``ip6_rcv_core`` does;
  with any other next header it is an empty payload.
- ``ipv6_payload_length``: payload length + 40 above the bytes captured (truncated).
- ``ipv6_hbh_not_first``: a hop-by-hop header anywhere but first (RFC 8200 4.1).
- ``ipv6_ext_header``: an extension header running past the payload, or bad options in a
  hop-by-hop/destination header (``ip6_parse_tlv``: more than 7 bytes of padding in a row,
  non-zero PadN, an option past its header, more than 8 options).
- ``ipv6_option``: an option the kernel discards: unknown with the high type bits not 00
  (RFC 8200 4.2), Router Alert of length other than 2 (RFC 2711), CALIPSO without a DOI.
- ``ipv6_routing_header``: a routing header with segments left (we are not the final
  destination; type 0 is deprecated, RFC 5095), or of type 3/4 (RPL/SRv6, off by default).
- ``ipv6_fragment``: a Fragment header that is not an atomic fragment (RFC 8200 4.5; atomic
  fragments are processed in isolation, RFC 6946) (:func:`parse_udp` only).

ARP [``arp_rcv``, ``arp_process``] (:func:`parse_frame`):

- ``arp_short``: under 28 bytes. ``arp_format``: not htype 1 / ptype 0x0800 / hlen 6 / plen 4.
- ``arp_op``: op neither request (1) nor reply (2).

ICMPv6 and Neighbor Discovery [``icmpv6_rcv``, ``ndisc_recv_ns``/``ndisc_recv_na``,
``ndisc_parse_options``; RFC 4861 7.1.1/7.1.2] (:func:`parse_frame`):

- ``icmpv6_short``: under 4 bytes. ``icmpv6_bad_checksum``: checksum wrong (RFC 4443 2.3).
- ``nd_hop_limit``: hop limit not 255. ``nd_code``: code not 0. ``nd_short``: under 24 bytes.
- ``nd_target_multicast``: the target address is multicast.
- ``nd_option_length``: an option of length 0, cut short, or a link-layer address option not
  exactly 8 bytes.
- ``nd_sllao_unspecified``: NS from :: with a source link-layer address option.
- ``nd_dad_destination``: NS from :: not sent to a solicited-node multicast address.
- ``nd_solicited_multicast``: NA with the Solicited flag sent to a multicast address.
"""

from __future__ import annotations

from rawtransport.packet_fast import (
    build_arp_request,
    build_ipv4_fragments,
    build_ipv6_fragments,
    build_neighbor_solicitation,
    build_udp,
    build_udp_fast,
    multicast_mac,
    parse_udp,
    solicited_node_address,
)
from rawtransport.packet_frame import build_frame, parse_frame
from rawtransport.packet_types import (
    ARP,
    BROADCAST_MAC,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    UDP,
    Ethernet,
    Frame,
    IPv4,
    IPv6,
    IPv6Extension,
    NeighborAdvertisement,
    NeighborSolicitation,
    UdpDatagram,
    VlanTag,
)

__all__ = [
    "ARP",
    "BROADCAST_MAC",
    "ETH_P_8021AD",
    "ETH_P_8021Q",
    "ETH_P_ARP",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "IPPROTO_ICMPV6",
    "IPPROTO_UDP",
    "UDP",
    "Ethernet",
    "Frame",
    "IPv4",
    "IPv6",
    "IPv6Extension",
    "NeighborAdvertisement",
    "NeighborSolicitation",
    "UdpDatagram",
    "VlanTag",
    "build_arp_request",
    "build_frame",
    "build_ipv4_fragments",
    "build_ipv6_fragments",
    "build_neighbor_solicitation",
    "build_udp",
    "build_udp_fast",
    "multicast_mac",
    "parse_frame",
    "parse_udp",
    "solicited_node_address",
]
