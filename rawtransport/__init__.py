"""rawtransport: UDP for asyncio, anyio and trio over Linux AF_PACKET sockets.

The kernel's UDP/IP stack is replaced by a sans-IO engine (header construction, checksums, routing,
ARP/ND, receive checks) driven by thin event-loop glue.
"""

from __future__ import annotations

from rawtransport.errors import MalformedPacketError, RawTransportError

__all__ = ["MalformedPacketError", "RawTransportError", "__version__"]

__version__ = "0.1.0.dev0"
