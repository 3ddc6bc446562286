"""The library's own exceptions.

Two families, as h11 splits them: errors about what arrived from the wire (the remote side's fault,
never raised to the user of a transport: such frames are dropped and counted) and errors about how the
library was called (raised to the caller as the usual ``TypeError``/``ValueError``/``OSError``).
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
