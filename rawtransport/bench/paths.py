"""The registry of datagram paths the bench compares.

A path is an event loop plus a way to open a UDP endpoint on it. Adding a raw mode (a ring
``rx_mode=``, the nftables ingress-drop mode, busy-poll) is one :class:`PathSpec` entry in
:data:`PATHS` with its keyword arguments in ``raw_options`` and, when it needs something this machine
may lack, a ``requires`` probe name understood by :func:`unavailable_reason`.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BASELINE_STOCK",
    "BASELINE_UVLOOP",
    "KERNEL_PATH_OF_LOOP",
    "DEFAULT_PATHS",
    "LOOP_LABELS",
    "PATHS",
    "PathSpec",
    "get_path",
    "unavailable_reason",
]

Loop = Literal["asyncio", "uvloop", "trio"]

#: How a report line names each event loop.
LOOP_LABELS: Mapping[str, str] = {
    "asyncio": "stdlib asyncio loop",
    "uvloop": "uvloop",
    "trio": "trio",
}
Api = Literal["kernel", "raw", "anyio", "raw-anyio"]


@dataclass(frozen=True)
class PathSpec:
    """One way of moving datagrams, measured end to end (both sides of a workload use it).

    ``api``: ``"kernel"`` is ``loop.create_datagram_endpoint``, ``"raw"`` is
    ``rawtransport.create_raw_datagram_endpoint`` with ``raw_options``, ``"anyio"`` is
    ``anyio.create_udp_socket`` on the ``loop`` backend and ``"raw-anyio"``
    ``rawtransport.anyio_socket.create_raw_udp_socket``. ``max_size`` patches the stock selector
    transport's per-datagram ``recvfrom`` size; ``rtt_count_cap`` bounds the round trips of a path
    whose every round trip is slow by design. ``copies`` and ``copies_note`` explain, for the
    report, where a received datagram's bytes are copied.
    """

    name: str
    label: str
    loop: Loop
    api: Api
    copies: int
    copies_note: str
    max_size: int | None = None
    raw_options: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    rtt_count_cap: int | None = None


_KERNEL_RECV = "kernel: skb data -> user buffer in recvfrom (copy 1, skb_copy_datagram_iter)"

_RING_NOTE = (
    "kernel: skb -> the mmap'ed PACKET_RX_RING slot (copy 1, tpacket_rcv; no syscall per frame, "
    "only the loop's epoll wake-up); the engine copies the payload out of the ring as bytes "
    "(copy 2) and releases the slot"
)

PATHS: dict[str, PathSpec] = {
    spec.name: spec
    for spec in (
        PathSpec(
            "asyncio",
            "asyncio UDP (stock)",
            "asyncio",
            "kernel",
            copies=1,
            copies_note=(
                f"{_KERNEL_RECV} into a fresh 256 KiB bytes object, which is then shrunk "
                "(_PyBytes_Resize). When glibc serves that block with mmap, every datagram also "
                "costs mmap + mremap + munmap (seen in some runs; glibc's dynamic mmap threshold "
                "can move it into the heap); either way 256 KiB is allocated and touched per "
                "datagram"
            ),
        ),
        PathSpec(
            "asyncio-maxsize",
            "asyncio UDP, max_size 64 KiB",
            "asyncio",
            "kernel",
            copies=1,
            copies_note=(
                f"{_KERNEL_RECV} into a 64 KiB bytes object, below glibc's mmap threshold, so "
                "shrinking it to the datagram's length is an in-heap realloc (no syscall)"
            ),
            max_size=64 * 1024,
        ),
        PathSpec(
            "uvloop",
            "uvloop UDP",
            "uvloop",
            "kernel",
            copies=2,
            copies_note=(
                f"{_KERNEL_RECV} into libuv's 64 KiB slab buffer; uvloop then builds the bytes "
                "object from it (copy 2, PyBytes_FromStringAndSize)"
            ),
        ),
        PathSpec(
            "anyio-trio",
            "anyio UDP on trio",
            "trio",
            "anyio",
            copies=1,
            copies_note=(
                f"{_KERNEL_RECV} (trio's recvfrom into a bytes object sized to the 64 KiB "
                "maximum and shrunk in the heap)"
            ),
        ),
        PathSpec(
            "raw-asyncio",
            "raw ring (TPACKET_V2), asyncio",
            "asyncio",
            "raw",
            copies=2,
            copies_note=_RING_NOTE,
            raw_options={"rx_mode": "ring"},
        ),
        PathSpec(
            "raw-uvloop",
            "raw ring (TPACKET_V2), uvloop",
            "uvloop",
            "raw",
            copies=2,
            copies_note=_RING_NOTE,
            raw_options={"rx_mode": "ring"},
        ),
        PathSpec(
            "raw-recv-uvloop",
            "raw recvmsg per frame, uvloop",
            "uvloop",
            "raw",
            copies=2,
            copies_note=(
                "kernel: skb -> a reused 64 KiB bytearray in recvmsg_into (copy 1, whole frame "
                "with headers, one syscall per frame plus one EAGAIN per batch); the engine slices "
                "the payload out as bytes (copy 2)"
            ),
            raw_options={"rx_mode": "recv"},
        ),
        PathSpec(
            "raw-bulk-uvloop",
            "raw bulk ring (TPACKET_V3), uvloop",
            "uvloop",
            "raw",
            copies=2,
            copies_note=_RING_NOTE + "; frames are handed over a block at a time (1 ms timer)",
            raw_options={"rx_mode": "bulk"},
            # A block is handed over when full or when its >= 1 ms timer fires (TPACKET_V3, tp_retire_blk_tov):
            # every round trip costs about a millisecond, so fewer of them say as much.
            rtt_count_cap=500,
        ),
        PathSpec(
            "raw-direct-uvloop",
            "raw ring, direct send, uvloop",
            "uvloop",
            "raw",
            copies=2,
            copies_note=_RING_NOTE + "; each sendto() writes its frame at once (tx_mode='direct')",
            raw_options={"rx_mode": "ring", "tx_mode": "direct"},
        ),
        PathSpec(
            "raw-spin-uvloop",
            "raw ring + spin_us=100, uvloop",
            "uvloop",
            "raw",
            copies=2,
            copies_note=_RING_NOTE + "; polls the ring up to 100 µs before yielding to the loop",
            raw_options={"rx_mode": "ring", "spin_us": 100},
        ),
        PathSpec(
            "raw-bypass-uvloop",
            "raw ring + nftables bypass + spin, uvloop",
            "uvloop",
            "raw",
            copies=2,
            copies_note=_RING_NOTE + "; the kernel's IP/UDP input is skipped (ingress drop)",
            raw_options={"rx_mode": "ring", "kernel_bypass": True, "spin_us": 100},
            requires=("nft",),
        ),
        PathSpec(
            "raw-bypass-bulk-uvloop",
            "raw bulk ring + nftables bypass, uvloop",
            "uvloop",
            "raw",
            copies=2,
            copies_note=_RING_NOTE + "; blocks of frames, kernel IP/UDP input skipped",
            raw_options={"rx_mode": "bulk", "kernel_bypass": True},
            requires=("nft",),
            rtt_count_cap=500,
        ),
        PathSpec(
            "raw-anyio-trio",
            "raw ring, anyio on trio",
            "trio",
            "raw-anyio",
            copies=2,
            copies_note=_RING_NOTE,
            raw_options={"rx_mode": "ring"},
        ),
    )
}

#: The baselines of the ratio table (uvloop and stock asyncio, always side by side: either alone flatters).
BASELINE_UVLOOP = "uvloop"
BASELINE_STOCK = "asyncio"

#: Each event loop's own kernel UDP path: a raw path's ratio to the kernel path on the same loop is
#: the like-for-like figure (what changing the method name alone gains or costs that program).
KERNEL_PATH_OF_LOOP: dict[str, str] = {
    "asyncio": "asyncio",
    "uvloop": "uvloop",
    "trio": "anyio-trio",
}

#: The paths a default run measures, in report order (kernel paths first).
DEFAULT_PATHS: tuple[str, ...] = tuple(PATHS)


def get_path(name: str) -> PathSpec:
    """The spec called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return PATHS[name]
    except KeyError:
        raise ValueError(f"unknown path {name!r}; known: {', '.join(PATHS)}") from None


def unavailable_reason(spec: PathSpec) -> str | None:
    """Why ``spec`` cannot run here (a missing module or raw option), or ``None`` if it can."""
    modules = {"uvloop": "uvloop", "trio": "trio"}
    needed = modules.get(spec.loop)
    if needed and importlib.util.find_spec(needed) is None:
        return f"{needed} is not installed"
    if spec.api in ("raw", "raw-anyio"):
        opener: Callable[..., Any]
        try:
            if spec.api == "raw":
                from rawtransport.loop import create_raw_datagram_endpoint

                opener = create_raw_datagram_endpoint
            else:
                from rawtransport.anyio_socket import create_raw_udp_socket

                opener = create_raw_udp_socket
        except ImportError as exc:
            return f"this rawtransport cannot open that path: {exc}"
        params = inspect.signature(opener).parameters
        missing = [k for k in spec.raw_options if k not in params]
        if missing:
            return f"this rawtransport has no {', '.join(missing)} option yet"
    for probe in spec.requires:
        reason = _PROBES.get(probe, _unknown_probe)(probe)
        if reason:
            return reason
    return None


def _unknown_probe(name: str) -> str:
    return f"unknown requirement {name!r}"


def _nft(_: str) -> str | None:
    import shutil

    return None if shutil.which("nft") else "nft (nftables) is not installed"


_PROBES = {"nft": _nft}
