"""rawtransport: UDP for asyncio, anyio and trio over Linux AF_PACKET sockets.

The kernel's UDP/IP stack is replaced by a sans-IO engine (header construction, checksums, routing,
ARP/ND, receive checks) driven by thin event-loop glue. Importing the package adds
``loop.create_raw_datagram_endpoint()`` to the stdlib event loop and to uvloop (see :func:`install`).
"""

from __future__ import annotations

from rawtransport.anyio_socket import (
    RawConnectedUDPSocket,
    RawSocketAttribute,
    RawUDPSocket,
    create_raw_connected_udp_socket,
    create_raw_udp_socket,
)
from rawtransport.errors import MalformedPacketError, RawTransportError
from rawtransport.loop import create_raw_datagram_endpoint, install
from rawtransport.privileges import drop_privileges
from rawtransport.transport import RawDatagramTransport

__all__ = [
    "MalformedPacketError",
    "RawConnectedUDPSocket",
    "RawDatagramTransport",
    "RawSocketAttribute",
    "RawTransportError",
    "RawUDPSocket",
    "__version__",
    "create_raw_connected_udp_socket",
    "create_raw_datagram_endpoint",
    "create_raw_udp_socket",
    "drop_privileges",
    "install",
]

__version__ = "0.1.0.dev0"

install()
