"""ARP (IPv4) / ND (IPv6) next-hop resolution, sans I/O.

:class:`NeighbourCache` is the part of the kernel's ``net/core/neighbour.c`` a UDP sender needs:
a bounded table of ``(ifindex, address) -> MAC`` entries, a bounded queue of items (outgoing
datagrams) waiting for a resolution, retransmits and failure. It builds no frames and reads no
clock: the engine calls :meth:`~NeighbourCache.resolve` before sending, drains
:meth:`~NeighbourCache.requests_to_send` into ARP requests / neighbour solicitations, feeds parsed
replies to :meth:`~NeighbourCache.handle_reply`, and runs :meth:`~NeighbourCache.handle_timer` at
:meth:`~NeighbourCache.get_timer`.

States (RFC 4861 section 7.3.2, as Linux's ``NUD_*`` states):

- INCOMPLETE: a request is outstanding and items wait for it. Retransmitted every
  ``retransmit_interval``; ``retransmit_interval`` after the ``max_attempts``-th request the entry
  becomes FAILED and its items are given up on (``neigh_timer_handler()``).
- REACHABLE: confirmed by a reply less than ``reachable_time`` ago; used as is.
- STALE: older than that, kept ``stale_time`` longer. Still usable, but using it starts a unicast
  re-probe of the old MAC (Linux's DELAY/PROBE, RFC 4861 7.3.3) while the old MAC is still served.
- PROBE: that re-probe. A reply makes it REACHABLE again; ``max_attempts`` unanswered probes make it
  FAILED.
- FAILED: held for ``failed_hold`` so that a stream of sends to a dead host is refused without
  putting a request on the wire for each; items refused meanwhile are reported as failed at the next
  timer.

Only time-driven work that matters is scheduled: REACHABLE -> STALE -> gone and the end of a FAILED
hold are computed from timestamps when an entry is looked at, so an idle cache has no timer.

Security (``arp_process()``, docs/kernel-checks.md): a reply is accepted only while a request for that
``(ifindex, address)`` is outstanding, and the first accepted reply wins. Replies never create
entries, so a flood of forged replies leaves the table unchanged; the table, the per-address queues
and the total of queued items are all bounded, and every refusal is counted in :attr:`stats`.

Claims (:meth:`NeighbourCache.handle_claim`): a neighbour's own ARP request or solicitation, or its
gratuitous announcement, says its address is now at another MAC. The kernel takes such a claim at
once (``arp_process()``, ``ndisc_recv_ns()``: ``neigh_update()`` with override), which is also how a
forger redirects a host's traffic. Here a claim for an entry held at another MAC starts a unicast
re-probe of the *old* MAC: if that MAC answers, the claim was false (``claims_refuted``); if
``max_attempts`` probes go unanswered, the old MAC is gone and the claimed one is taken, STALE, so
that its first use verifies it in turn (``claims_learned``, after about ``max_attempts *
retransmit_interval``, where waiting for the entry to go stale took up to ``reachable_time``
and more). The first claim wins until that verdict; claims never create entries.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Generic, TypeVar

__all__ = ["NeighbourCache", "NeighbourRequest", "NeighbourState", "ResolutionFailed"]

T = TypeVar("T")

_Key = tuple[int, bytes]

# Every counter exists from the start (at 0), so a reader of the stats sees the full set of names.
_COUNTERS = (
    "requests_sent",  # requests handed out by requests_to_send()
    "probes_started",  # STALE entries used, so re-probed by unicast
    "replies_accepted",  # replies that answered an outstanding request
    "unsolicited",  # replies with no outstanding request (incl. gratuitous ARP): ignored
    "duplicate_reply",  # replies for an entry already REACHABLE (the first reply won): ignored
    "bad_mac",  # replies/seeds whose MAC is not a 6-byte unicast, non-zero address: ignored
    "seeded",  # trusted entries installed by seed()
    "pending_overflow",  # items refused because a pending queue was full
    "table_full",  # items refused because every entry had items waiting
    "evicted",  # entries evicted (least recently used) to make room
    "resolution_failed",  # resolutions given up after max_attempts
    "failed_items",  # items dropped by those failures
    "failed_hold",  # items refused because the address is held FAILED
    "forgotten",  # items dropped by forget()
    "claims_verified",  # claims of another MAC for an entry: the old MAC re-probed
    "claims_learned",  # ... unanswered: the claimed MAC taken
    "claims_refuted",  # ... answered by the old MAC: the claim dropped
    "claims_ignored",  # claims for no entry, the same MAC, an entry in resolution, or a second one
)


class NeighbourState(Enum):
    """The state of a cache entry at a given time (see the module docstring)."""

    INCOMPLETE = "incomplete"
    REACHABLE = "reachable"
    STALE = "stale"
    PROBE = "probe"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NeighbourRequest:
    """Send an ARP request / neighbour solicitation for ``address`` out of ``ifindex``.

    ``attempt`` is 1 for the first transmission. ``unicast_mac`` is set when re-probing a STALE
    entry (RFC 4861 7.3.3 PROBE): the request goes to that MAC instead of broadcast /
    solicited-node multicast.
    """

    ifindex: int
    address: bytes
    attempt: int
    unicast_mac: bytes | None = None


@dataclass(frozen=True, slots=True)
class ResolutionFailed(Generic[T]):
    """Resolution of ``address`` on ``ifindex`` failed; ``dropped`` are the items given up on.

    The engine reports ``EHOSTUNREACH`` for them, as ``arp_error_report()`` does. ``dropped`` is
    empty when an unanswered re-probe of a STALE entry failed (no items were waiting for it).
    """

    ifindex: int
    address: bytes
    dropped: tuple[T, ...]


# Internal states: REACHABLE/STALE/expired are all _VALID, told apart by the time of confirmation.
_INCOMPLETE = 0
_VALID = 1
_PROBE = 2
_FAILED = 3


class _Entry(Generic[T]):
    __slots__ = (
        "attempt",
        "claimed",
        "confirmed",
        "deadline",
        "failed_until",
        "items",
        "mac",
        "queued_bytes",
        "seq",
        "state",
    )

    def __init__(self) -> None:
        self.state = _INCOMPLETE
        self.mac = b""
        self.items: deque[T] = deque()
        self.queued_bytes = 0
        self.attempt = 0
        # When handle_timer() must look at this entry (None: not scheduled) and the heap token that
        # makes only the newest heap item for it count.
        self.deadline: float | None = None
        self.seq = 0
        self.confirmed = 0.0
        self.failed_until = 0.0
        # The MAC a claim said the address moved to, while the old one is re-probed (b"": none).
        self.claimed = b""


def _check_key(ifindex: int, address: bytes) -> None:
    if not isinstance(ifindex, int) or isinstance(ifindex, bool):
        raise TypeError(f"ifindex must be an int, not {type(ifindex).__name__}")
    if ifindex < 0:
        raise ValueError(f"ifindex must be >= 0, not {ifindex}")
    if not isinstance(address, bytes):
        raise TypeError(f"address must be bytes, not {type(address).__name__}")
    if len(address) not in (4, 16):
        raise ValueError(f"address must be 4 (IPv4) or 16 (IPv6) bytes long, not {len(address)}")


def _good_mac(mac: bytes) -> bool:
    # The I/G bit (bit 0 of the first octet) marks group addresses, broadcast included: a neighbour
    # can only be a unicast station (arp_process() drops such senders; IEEE 802 section 8.2).
    return len(mac) == 6 and not mac[0] & 1 and mac != b"\x00" * 6


def _check_mac(mac: bytes) -> None:
    if not isinstance(mac, bytes):
        raise TypeError(f"mac must be bytes, not {type(mac).__name__}")


class NeighbourCache(Generic[T]):
    """A bounded ARP/ND resolver cache for items of type ``T``, driven by ``now`` (see the module).

    ``max_entries`` bounds the table, ``max_pending_per_address`` and ``max_pending_total`` the
    items waiting for resolutions; with ``weigh`` (an item's size in bytes), so does
    ``max_pending_bytes_per_address``, as the kernel bounds a neighbour's queue by
    ``unres_qlen_bytes`` (``__neigh_event_send()``). Times are in seconds of a monotonic clock.
    """

    def __init__(
        self,
        *,
        max_entries: int = 512,
        max_pending_per_address: int = 64,
        max_pending_total: int = 1024,
        retransmit_interval: float = 1.0,
        max_attempts: int = 3,
        reachable_time: float = 30.0,
        stale_time: float = 60.0,
        failed_hold: float = 1.0,
        max_pending_bytes_per_address: int | None = None,
        weigh: Callable[[T], int] | None = None,
    ) -> None:
        for name, count in (
            ("max_entries", max_entries),
            ("max_pending_per_address", max_pending_per_address),
            ("max_pending_total", max_pending_total),
            ("max_attempts", max_attempts),
        ):
            if not isinstance(count, int) or isinstance(count, bool):
                raise TypeError(f"{name} must be an int, not {type(count).__name__}")
            if count < 1:
                raise ValueError(f"{name} must be >= 1, not {count}")
        for name, seconds, zero_ok in (
            ("retransmit_interval", retransmit_interval, False),
            ("reachable_time", reachable_time, False),
            ("stale_time", stale_time, True),
            ("failed_hold", failed_hold, True),
        ):
            if not isinstance(seconds, int | float) or isinstance(seconds, bool):
                raise TypeError(f"{name} must be a number, not {type(seconds).__name__}")
            if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
                raise ValueError(f"{name} must be a finite number > 0, not {seconds!r}")
        self.max_entries = max_entries
        self.max_pending_per_address = max_pending_per_address
        if max_pending_bytes_per_address is not None and max_pending_bytes_per_address < 1:
            raise ValueError(
                f"max_pending_bytes_per_address must be >= 1, not {max_pending_bytes_per_address}"
            )
        self.max_pending_bytes_per_address = max_pending_bytes_per_address
        self._weigh = weigh
        self.max_pending_total = max_pending_total
        self.retransmit_interval = float(retransmit_interval)
        self.max_attempts = max_attempts
        self.reachable_time = float(reachable_time)
        self.stale_time = float(stale_time)
        self.failed_hold = float(failed_hold)
        # Least recently used first: resolve() moves an entry to the end.
        self._entries: OrderedDict[_Key, _Entry[T]] = OrderedDict()
        # (deadline, seq, key); stale items (seq no longer the entry's) are skipped and compacted.
        self._heap: list[tuple[float, int, _Key]] = []
        self._seq = 0
        # At most one undrained request per key: a newer attempt replaces an older one.
        self._requests: OrderedDict[_Key, NeighbourRequest] = OrderedDict()
        self._pending = 0
        self._stats = dict.fromkeys(_COUNTERS, 0)
        self._stats_view = MappingProxyType(self._stats)

    # ------------------------------------------------------------------------------------- queries
    def __len__(self) -> int:
        """The number of entries held (expired ones count until reused or evicted)."""
        return len(self._entries)

    @property
    def stats(self) -> Mapping[str, int]:
        """Counters (a live read-only view): requests, replies, and every drop by reason."""
        return self._stats_view

    @property
    def pending(self) -> int:
        """The number of items held (waiting for a resolution, or to be reported failed)."""
        return self._pending

    def pending_for(self, ifindex: int, address: bytes) -> int:
        """The number of items held for ``(ifindex, address)``."""
        _check_key(ifindex, address)
        entry = self._entries.get((ifindex, address))
        return 0 if entry is None else len(entry.items)

    def state(self, ifindex: int, address: bytes, now: float) -> NeighbourState | None:
        """The state of the entry for ``(ifindex, address)`` at ``now`` (``None``: no entry)."""
        _check_key(ifindex, address)
        entry = self._entries.get((ifindex, address))
        return None if entry is None else self._state(entry, now)

    def _state(self, entry: _Entry[T], now: float) -> NeighbourState | None:
        if entry.state == _INCOMPLETE:
            return NeighbourState.INCOMPLETE
        if entry.state == _PROBE:
            return NeighbourState.PROBE
        if entry.state == _FAILED:
            # A FAILED entry with refused items stays FAILED until they are reported.
            if now < entry.failed_until or entry.items:
                return NeighbourState.FAILED
            return None
        age = now - entry.confirmed
        if age < self.reachable_time:
            return NeighbourState.REACHABLE
        if age < self.reachable_time + self.stale_time:
            return NeighbourState.STALE
        return None

    def lookup(self, ifindex: int, address: bytes, now: float) -> bytes | None:
        """The MAC to use for ``(ifindex, address)`` at ``now``, or ``None``. No side effects."""
        _check_key(ifindex, address)
        entry = self._entries.get((ifindex, address))
        if entry is None:
            return None
        if self._state(entry, now) in (
            NeighbourState.REACHABLE,
            NeighbourState.STALE,
            NeighbourState.PROBE,
        ):
            return entry.mac
        return None

    def get_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` has work, or ``None`` when nothing is scheduled.

        Something is scheduled exactly while a request is outstanding (INCOMPLETE or PROBE) or items
        refused during a FAILED hold wait to be reported.
        """
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # ----------------------------------------------------------------------------------- resolving
    def resolve(self, ifindex: int, address: bytes, item: T, now: float) -> bytes | None:
        """The MAC for ``(ifindex, address)`` if it is usable now; otherwise queue ``item``.

        A REACHABLE or STALE entry's MAC is returned (using a STALE one starts a unicast re-probe,
        as Linux's DELAY/PROBE states do, and its MAC is served meanwhile). Otherwise ``item`` is
        queued until :meth:`handle_reply` releases it or :meth:`handle_timer` reports it failed, and
        a request is scheduled if none is outstanding; ``None`` is returned. When a queue or the
        table is full the item is dropped instead, counted as ``pending_overflow`` or
        ``table_full`` (``None`` is returned as well).
        """
        _check_key(ifindex, address)
        key = (ifindex, address)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            state = self._state(entry, now)
            if state is NeighbourState.REACHABLE or state is NeighbourState.PROBE:
                return entry.mac
            if state is NeighbourState.STALE:
                # RFC 4861 7.3.3: a STALE entry in use is re-verified by unicast probes.
                entry.state = _PROBE
                entry.attempt = 1
                self._stats["probes_started"] += 1
                self._schedule(key, entry, now + self.retransmit_interval)
                self._request(key, entry)
                return entry.mac
            if state is not None:  # INCOMPLETE, or FAILED and held
                if not self._enqueue(entry, item):
                    return None
                if state is NeighbourState.FAILED and entry.deadline is None:
                    # Reported by the next handle_timer(): the engine then gives EHOSTUNREACH.
                    self._schedule(key, entry, now)
                return None
            # Expired: reused below as a fresh resolution.
        elif self._pending >= self.max_pending_total:
            self._stats["pending_overflow"] += 1
            return None
        elif len(self._entries) >= self.max_entries and not self._evict_one():
            self._stats["table_full"] += 1
            return None
        else:
            entry = _Entry()
            self._entries[key] = entry
        if not self._enqueue(entry, item):
            # Only an expired entry gets here (a new one has an empty queue and total room): it
            # stays expired, with nothing scheduled.
            return None
        entry.state = _INCOMPLETE
        entry.attempt = 1
        self._schedule(key, entry, now + self.retransmit_interval)
        self._request(key, entry)
        return None

    def reachable(self, ifindex: int, address: bytes, now: float) -> bytes | None:
        """The MAC if the entry is REACHABLE (confirmed within ``reachable_time``), else ``None``.

        The per-datagram fast path: no validation, no side effects, no state change. Anything
        else (unknown, STALE, in resolution) goes through :meth:`resolve`.
        """
        entry = self._entries.get((ifindex, address))
        if (
            entry is not None
            and entry.state == _VALID
            and now - entry.confirmed < self.reachable_time
        ):
            return entry.mac
        return None

    def confirmation(self, ifindex: int, address: bytes) -> tuple[float, float] | None:
        """``(confirmed, reachable_time)`` of a REACHABLE-or-STALE entry: :meth:`reachable` answers
        its MAC while ``now - confirmed < reachable_time`` (the compiled send path's test)."""
        entry = self._entries.get((ifindex, address))
        if entry is None or entry.state != _VALID:
            return None
        return entry.confirmed, self.reachable_time

    @property
    def has_requests(self) -> bool:
        """True when :meth:`requests_to_send` would return something (a cheap check per send)."""
        return bool(self._requests)

    def requests_to_send(self) -> list[NeighbourRequest]:
        """Take the requests to transmit now (at most one per entry), oldest first."""
        out = list(self._requests.values())
        self._requests.clear()
        self._stats["requests_sent"] += len(out)
        return out

    def handle_reply(self, ifindex: int, address: bytes, mac: bytes, now: float) -> list[T]:
        """Feed a parsed ARP reply / solicited neighbour advertisement: ``address`` is at ``mac``.

        Accepted only while a request for ``(ifindex, address)`` is outstanding (INCOMPLETE or
        PROBE), as ``arp_process()`` accepts only replies it asked for; the entry becomes REACHABLE
        and the items that waited for it are returned, oldest first. Anything else (unsolicited or
        gratuitous replies, a second reply after the first won, a bad MAC) is ignored and counted;
        the cache is then unchanged and ``[]`` is returned.
        """
        _check_key(ifindex, address)
        _check_mac(mac)
        if not _good_mac(mac):
            self._stats["bad_mac"] += 1
            return []
        key = (ifindex, address)
        entry = self._entries.get(key)
        if entry is None or entry.state not in (_INCOMPLETE, _PROBE):
            reachable = entry is not None and self._state(entry, now) is NeighbourState.REACHABLE
            self._stats["duplicate_reply" if reachable else "unsolicited"] += 1
            return []
        if entry.claimed:
            # Only the old MAC can refute a claim: a reply from any other (the claimant's
            # included) is what a forger would send.
            if mac != entry.mac:
                self._stats["unsolicited"] += 1
                return []
            self._stats["claims_refuted"] += 1
        self._stats["replies_accepted"] += 1
        return self._confirm(key, entry, mac, now)

    def handle_claim(self, ifindex: int, address: bytes, mac: bytes, now: float) -> None:
        """Feed a neighbour's claim that ``address`` is at ``mac``: its ARP request or neighbour
        solicitation to us, or its gratuitous ARP / unsolicited override advertisement.

        For an entry in use at another MAC, the old MAC is re-probed by unicast (see the module
        docstring); the claimed one is taken only if that goes unanswered. Anything else is
        ignored and counted (``claims_ignored``), as is a bad MAC (``bad_mac``).
        """
        _check_key(ifindex, address)
        _check_mac(mac)
        if not _good_mac(mac):
            self._stats["bad_mac"] += 1
            return
        key = (ifindex, address)
        entry = self._entries.get(key)
        state = None if entry is None else self._state(entry, now)
        if (
            entry is None
            or state not in (NeighbourState.REACHABLE, NeighbourState.STALE, NeighbourState.PROBE)
            or mac == entry.mac
            or entry.claimed
        ):
            self._stats["claims_ignored"] += 1
            return
        self._stats["claims_verified"] += 1
        entry.claimed = mac
        if entry.state != _PROBE:
            entry.state = _PROBE
            entry.attempt = 1
            self._schedule(key, entry, now + self.retransmit_interval)
            self._request(key, entry)

    def seed(self, ifindex: int, address: bytes, mac: bytes, now: float) -> list[T]:
        """Install a trusted entry (from the kernel's neighbour table or static configuration).

        The entry becomes REACHABLE at ``now`` whatever its state. Items that were waiting for the
        address (including ones refused during a FAILED hold, not yet reported) are released and
        returned, oldest first. A MAC that is not 6-byte unicast and non-zero is ignored and counted
        (``bad_mac``). Returns ``[]`` when nothing was waiting.
        """
        _check_key(ifindex, address)
        _check_mac(mac)
        if not _good_mac(mac):
            self._stats["bad_mac"] += 1
            return []
        key = (ifindex, address)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_entries and not self._evict_one():
                self._stats["table_full"] += 1
                return []
            entry = _Entry()
            self._entries[key] = entry
        else:
            self._entries.move_to_end(key)
        self._stats["seeded"] += 1
        return self._confirm(key, entry, mac, now)

    # -------------------------------------------------------------------------------------- timers
    def handle_timer(self, now: float) -> list[ResolutionFailed[T]]:
        """Do the work due at ``now``: retransmits (see :meth:`requests_to_send`) and failures.

        An entry whose ``max_attempts``-th request went unanswered for ``retransmit_interval``
        becomes FAILED for ``failed_hold``; its items are returned in a :class:`ResolutionFailed`,
        as are items refused during a FAILED hold.
        """
        failed: list[ResolutionFailed[T]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            top = heapq.heappop(heap)
            if not self._live(top):
                continue
            key = top[2]
            entry = self._entries[key]
            entry.deadline = None
            if entry.state == _FAILED:
                # Items refused while the address was held FAILED.
                self._stats["failed_hold"] += len(entry.items)
                failed.append(ResolutionFailed(key[0], key[1], self._take_items(entry)))
            elif entry.attempt < self.max_attempts:
                # neigh_timer_handler(): retransmit, next deadline from now (a late timer does not
                # make the following requests bunch up).
                entry.attempt += 1
                self._schedule(key, entry, now + self.retransmit_interval)
                self._request(key, entry)
            elif entry.claimed:
                # The old MAC answered none of the probes: the claim was true. Taken STALE, so
                # that the first send re-probes the new MAC too.
                self._stats["claims_learned"] += 1
                self._requests.pop(key, None)
                entry.state = _VALID
                entry.mac, entry.claimed = entry.claimed, b""
                entry.attempt = 0
                entry.confirmed = now - self.reachable_time
            else:
                self._requests.pop(key, None)
                self._stats["resolution_failed"] += 1
                self._stats["failed_items"] += len(entry.items)
                entry.state = _FAILED
                entry.attempt = 0
                entry.failed_until = now + self.failed_hold
                failed.append(ResolutionFailed(key[0], key[1], self._take_items(entry)))
        return failed

    def forget(self, ifindex: int | None = None) -> list[ResolutionFailed[T]]:
        """Drop every entry of ``ifindex`` (all if ``None``), e.g. when the interface went away.

        Returns a :class:`ResolutionFailed` for each entry that had items waiting. Requests not yet
        drained for those entries are withdrawn.
        """
        if ifindex is not None and (not isinstance(ifindex, int) or isinstance(ifindex, bool)):
            raise TypeError(f"ifindex must be an int or None, not {type(ifindex).__name__}")
        failed: list[ResolutionFailed[T]] = []
        keys = [k for k in self._entries if ifindex is None or k[0] == ifindex]
        for key in keys:
            entry = self._entries.pop(key)
            self._requests.pop(key, None)
            if entry.items:
                self._stats["forgotten"] += len(entry.items)
                failed.append(ResolutionFailed(key[0], key[1], self._take_items(entry)))
        self._compact()
        return failed

    # ------------------------------------------------------------------------------------ internals
    def _enqueue(self, entry: _Entry[T], item: T) -> bool:
        weight = self._weigh(item) if self._weigh is not None else 0
        limit = self.max_pending_bytes_per_address
        if (
            len(entry.items) >= self.max_pending_per_address
            or self._pending >= self.max_pending_total
            or (limit is not None and entry.queued_bytes + weight > limit)
        ):
            # The kernel drops the oldest queued skb (__neigh_event_send()); we refuse the newest,
            # so that what the engine was told is queued is what eventually goes out or fails.
            self._stats["pending_overflow"] += 1
            return False
        entry.items.append(item)
        entry.queued_bytes += weight
        self._pending += 1
        return True

    def _take_items(self, entry: _Entry[T]) -> tuple[T, ...]:
        items = tuple(entry.items)
        entry.items.clear()
        entry.queued_bytes = 0
        self._pending -= len(items)
        return items

    def _confirm(self, key: _Key, entry: _Entry[T], mac: bytes, now: float) -> list[T]:
        self._requests.pop(key, None)
        self._unschedule(entry)
        entry.state = _VALID
        entry.mac = mac
        entry.claimed = b""
        entry.attempt = 0
        entry.confirmed = now
        return list(self._take_items(entry))

    def _request(self, key: _Key, entry: _Entry[T]) -> None:
        unicast = entry.mac if entry.state == _PROBE else None
        self._requests[key] = NeighbourRequest(key[0], key[1], entry.attempt, unicast)

    def _schedule(self, key: _Key, entry: _Entry[T], deadline: float) -> None:
        self._seq += 1
        entry.deadline = deadline
        entry.seq = self._seq
        heapq.heappush(self._heap, (deadline, self._seq, key))
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._compact()

    def _unschedule(self, entry: _Entry[T]) -> None:
        # Its heap item goes stale (seq mismatch) and is skipped or compacted away.
        entry.deadline = None
        entry.seq = 0

    def _live(self, item: tuple[float, int, _Key]) -> bool:
        entry = self._entries.get(item[2])
        return entry is not None and entry.deadline is not None and entry.seq == item[1]

    def _compact(self) -> None:
        # Lazy deletion leaves stale heap items behind; rebuilding keeps the heap O(entries).
        self._heap = [
            (e.deadline, e.seq, k) for k, e in self._entries.items() if e.deadline is not None
        ]
        heapq.heapify(self._heap)

    def _evict_one(self) -> bool:
        # Least recently used entry with no items: evicting it loses nothing but a cached MAC (or an
        # outstanding re-probe). Entries with items waiting are never evicted.
        for key, entry in self._entries.items():
            if not entry.items:
                del self._entries[key]
                self._requests.pop(key, None)
                self._stats["evicted"] += 1
                return True
        return False
