# The compiled datapath (_datapath.c); the pure-Python references are in packet_fast.py.
from collections.abc import Callable, Sequence
from typing import Any

from rawtransport.packet_types import UdpDatagram

_Buffer = bytes | bytearray | memoryview

def init(udp_datagram_type: type[UdpDatagram], /) -> None: ...
def inet_sum(data: _Buffer, /) -> int: ...
def parse_udp_fast(frame: _Buffer, verify_udp_checksum: bool, /) -> UdpDatagram | None: ...
def build_udp_fast(
    eth_dst: _Buffer,
    eth_src: _Buffer,
    src: _Buffer,
    dst: _Buffer,
    src_port: int,
    dst_port: int,
    payload: _Buffer,
    ttl: int,
    /,
) -> bytes: ...
def peek_udp(frame: _Buffer, /) -> tuple[bytes, bytes, int, int] | str | None: ...
def v2_read(
    ring: _Buffer,
    index: int,
    budget: int,
    frame_count: int,
    frames_per_block: int,
    block_size: int,
    frame_size: int,
    /,
) -> tuple[list[tuple[bytes | None, int, int, int, int, bool]], int, int, list[str]]: ...

# The receive fast path (_deliver.c): frames delivered from the ring straight to the protocols.
class FastEntry:
    protocol: object | None
    @property
    def taken(self) -> int: ...
    def __init__(
        self,
        family: int,
        local_ip: bytes | None,
        remote_ip: bytes | None,
        remote_port: int,
        ifindex: int,
        peer: Callable[[bytes, int, int], tuple[Any, ...]],
        report: Callable[[BaseException], object],
    ) -> None: ...

class FastHost:
    rx_limit: dict[int, int]
    @property
    def entries(self) -> dict[int, FastEntry]: ...
    @property
    def taken(self) -> int: ...
    def set_local(self, addresses: Sequence[bytes], nets: Sequence[tuple[int, int]], /) -> None: ...

def v2_deliver(
    ring: _Buffer,
    index: int,
    budget: int,
    frame_count: int,
    frames_per_block: int,
    block_size: int,
    frame_size: int,
    host: FastHost,
    /,
) -> tuple[
    int,
    int,
    int,
    list[str],
    tuple[bytes | None, int, int, int, int, bool] | None,
    BaseException | None,
]: ...
