"""The library's own exceptions.

Two families, as h11 splits them: errors about what arrived from the wire (the remote side's fault:
a frame that does not parse is never raised to the user of a transport, it is dropped and counted)
and errors about how the library was called (raised to the caller as the usual
``TypeError``/``ValueError``/``OSError``). One exception to the first: an rtnetlink answer the
library cannot decode (``rawtransport.netlink``) is a :class:`MalformedPacketError` too, and a
``sendto()`` that needed that route lookup raises it (a ``ValueError``) to its caller.
"""

from __future__ import annotations

__all__ = ["MalformedPacketError", "RawTransportError"]


class RawTransportError(Exception):
    """Base class of the exceptions defined by rawtransport."""


class MalformedPacketError(RawTransportError, ValueError):
    """Bytes that do not form a valid packet.

    ``reason`` is a short stable identifier (``"ipv4_bad_checksum"``, ``"udp_short"`` …) that the
    receive path uses as the name of the drop counter for the frame.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
