"""802.1Q tags on the veth pair: priority tags (VLAN id 0) are the untagged frames they carry.

Frames are written by hand on B's side with a packet socket; A's kernel moves the tag into the
skb's metadata (skb_vlan_untag() in __netif_receive_skb_core()) before packet taps see it, then
clears a VLAN-id-0 tag and delivers the frame, and drops a tag whose VLAN has no device. A kernel
UDP socket in A, fed the same frames, is the reference.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

import rawtransport
from rawtransport.packet_fast import build_udp
from tests.net.conformance import Recorder, a_ip, b_ip
from tests.netns import VethPair, setns

TIMEOUT = 10.0


def _tagged(frame: bytes, tci: int) -> bytes:
    """``frame`` with an 802.1Q tag of TCI ``tci`` after its MAC addresses."""
    return frame[:12] + b"\x81\x00" + tci.to_bytes(2, "big") + frame[12:]


@pytest.mark.parametrize("rx_mode", ["ring", "bulk", "recv"])
@pytest.mark.parametrize("family", [4, 6])
def test_priority_tagged_frames_are_delivered_and_vlan_tagged_ones_dropped(
    veth: VethPair, family: int, rx_mode: str
) -> None:
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    with setns(veth.ns_b):
        injector = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with setns(veth.ns_a):
        kernel = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        injector.bind((veth.if_b, 0))
        kernel.bind((a_ip(veth, family), 0))
        kernel.settimeout(TIMEOUT)
        src = ipaddress.ip_address(b_ip(veth, family)).packed
        dst = ipaddress.ip_address(a_ip(veth, family)).packed
        mac_a = bytes.fromhex(veth.mac_a.replace(":", ""))
        mac_b = bytes.fromhex(veth.mac_b.replace(":", ""))

        def frames(port: int, label: bytes) -> list[bytes]:
            # Priority 5 and 0 on VLAN id 0 (delivered), then VLAN ids 5 and 4094 (no device).
            def one(tci: int) -> bytes:
                payload = label + b" %#06x" % tci
                return _tagged(build_udp(mac_a, mac_b, src, dst, 40000, port, payload), tci)

            return [one(tci) for tci in (0xA000, 0x0000, 0xA005, 0x0FFE)]

        async def main() -> tuple[list[bytes], dict[str, Any]]:
            t, p = await rawtransport.create_raw_datagram_endpoint(
                Recorder, local_addr=(a_ip(veth, family), 0), rx_mode=rx_mode
            )
            try:
                port = t.get_extra_info("sockname")[1]
                for frame in [*frames(port, b"raw"), *frames(port, b"last")[1:2]]:
                    injector.send(frame)
                got: list[bytes] = []
                while not got or got[-1] != b"last 0x0000":
                    data, _addr = await asyncio.wait_for(p.data.get(), TIMEOUT)
                    got.append(data)
                stats: dict[str, Any] = t.get_extra_info("stats")
            finally:
                t.close()
                await p.lost
            return got, stats

        with setns(veth.ns_a):
            got, stats = asyncio.run(asyncio.wait_for(main(), 60))
        # The kernel, fed the same frames: the priority-tagged ones, not the VLAN-tagged ones.
        kport = kernel.getsockname()[1]
        for frame in [*frames(kport, b"kernel"), *frames(kport, b"last")[1:2]]:
            injector.send(frame)
        kgot: list[bytes] = []
        while not kgot or kgot[-1] != b"last 0x0000":
            kgot.append(kernel.recv(2048))
    finally:
        injector.close()
        kernel.close()
    assert kgot == [b"kernel 0xa000", b"kernel 0x0000", b"last 0x0000"]
    assert got == [b"raw 0xa000", b"raw 0x0000", b"last 0x0000"]
    # The frames of VLANs with no device stopped in the kernel filter: nothing else to count.
    assert stats["delivered"] == 3
    assert stats["dropped_total"] == 0, stats["dropped"]
