"""One raw stack per asyncio event loop (stdlib or uvloop): created on first use, driven by the loop.

:func:`loop_stack` returns the :class:`LoopStack` of the running loop for a set of
:class:`~rawtransport.stack.StackOptions` (and the network namespace of the calling thread), opening
its :class:`~rawtransport.stack.RawStack` on a worker thread the first time — the only step that
waits in the kernel. Every later endpoint on that loop registers on it in microseconds.

The :class:`LoopStack` is the only reader of the stack's sockets: it reads a batch of frames when the
receiver is readable, and hands each transport whose engine got something (datagrams, errors, frames
released by a neighbour reply) to that transport's :meth:`StackConsumer.stack_ready`. It runs the
shared host's timers (ARP/ND retransmits, fragment expiry) and applies rtnetlink news. When its last
endpoint has gone it lingers for :data:`LINGER` seconds (so one-endpoint-per-request clients do not pay
the ring setup per request), then closes the stack off the loop thread.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import weakref
from typing import Protocol

from rawtransport.endpoint import RawUdpEndpoint
from rawtransport.engine import UdpEngine
from rawtransport.ring_setup import Receiver
from rawtransport.stack import RawStack, StackOptions
from rawtransport.workers import run_in_new_thread

__all__ = ["LINGER", "LoopStack", "StackConsumer", "loop_stack"]

logger = logging.getLogger("rawtransport")

#: Seconds an idle stack stays open after its last endpoint closed.
LINGER = 2.0
#: Frames read per readiness callback before yielding to other callbacks.
READ_BUDGET = 64
#: How long (seconds) a filter swap that only narrows it (endpoints closed) may wait.
NARROW_DELAY = 0.005
_DEAD = frozenset((errno.ENETDOWN, errno.ENODEV, errno.ENXIO))


class StackConsumer(Protocol):
    """What a :class:`LoopStack` calls on the glue of one endpoint."""

    def stack_ready(self) -> None:
        """The endpoint's engine has new events or frames: dispatch and write them."""

    def netlink_changed(self) -> None:
        """Routes, addresses or links changed (the endpoint may have lost its interface)."""

    def read_error(self, exc: OSError) -> None:
        """Reading the shared receiver failed with ``exc``."""


_Key = tuple[StackOptions, int]
_Opening = asyncio.Future[RawStack]
_stacks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, LoopStack]]
_stacks = weakref.WeakKeyDictionary()
_opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, _Opening]]
_opening = weakref.WeakKeyDictionary()


def _netns() -> int:
    # A stack's sockets live in the namespace they were opened in; a thread that moved to another
    # one (setns()) gets another stack.
    return os.stat("/proc/thread-self/ns/net").st_ino


async def loop_stack(loop: asyncio.AbstractEventLoop, options: StackOptions) -> LoopStack:
    """The running stack of ``loop`` for ``options``, opened (off the loop thread) if need be."""
    options.check()
    key = (options, _netns())
    stack = _stacks.setdefault(loop, {}).get(key)
    if stack is not None and not stack.closed:
        return stack
    opening = _opening.setdefault(loop, {})
    fut = opening.get(key)
    if fut is None:
        # PACKET_RX_RING waits in the kernel for milliseconds: in a thread of its own (workers.py,
        # which keeps the loop thread's namespace and capabilities), so the loop runs meanwhile.
        fut = opening[key] = asyncio.wrap_future(
            run_in_new_thread(functools.partial(RawStack.open, options)), loop=loop
        )
        fut.add_done_callback(functools.partial(_opened, loop, key))
    # Shielded: if every opener is cancelled the stack is still made (and lingers, then closes).
    await asyncio.shield(fut)
    return _stacks[loop][key]


def _opened(loop: asyncio.AbstractEventLoop, key: _Key, fut: _Opening) -> None:
    del _opening[loop][key]
    if not fut.cancelled() and fut.exception() is None:
        _stacks[loop][key] = LoopStack(loop, fut.result())


class LoopStack:
    """Drives one :class:`RawStack` on one event loop. See the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stack: RawStack) -> None:
        self.stack = stack
        # The registry is keyed weakly by loop: hold it weakly too (the loop holds our callbacks).
        self._loop = weakref.ref(loop)
        self._consumers: dict[UdpEngine, StackConsumer] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._linger: asyncio.Task[None] | None = None
        self.closed = False
        self._finalizer = weakref.finalize(loop, stack.close)
        # The compiled receive path's walk, where the stack has one: one Python frame between the
        # loop and C per wake-up.
        self._recv_fast = stack.fast_reader
        self._read_shared = self._read_fast if self._recv_fast is not None else self._read_ready
        # spin_us: after a wake-up the receiver is polled from the loop's ready queue (_spin_poll)
        # until spin_us pass with no frame, so the tasks a batch woke run before the next poll.
        self._spin = stack.spin_us * 1e-6
        self._spin_until = 0.0
        self._spinning = False
        loop.add_reader(
            stack.receiver.fileno(), self._read_and_spin if self._spin else self._read_shared
        )
        loop.add_reader(stack.netlink_fileno(), self._netlink_ready)
        self._start_linger()
        # Filter swaps at most once per loop iteration: scheduled before the opening endpoint's
        # transport schedules connection_made and its waiter, so the filter takes the endpoint's
        # datagrams before its creator gets it; 200 closes in one callback cost one swap.
        stack.defer_filter = self._schedule_sync
        # Closes only narrow it: those swaps wait NARROW_DELAY, a burst of closes costing one.
        stack.defer_narrow = self._schedule_narrow

    def _schedule_sync(self) -> None:
        self.loop.call_soon(self._sync_filter)

    def _schedule_narrow(self) -> None:
        self.loop.call_later(NARROW_DELAY, self._sync_filter, True)

    def _sync_filter(self, narrow: bool = False) -> None:
        try:
            self.stack.sync_filter(narrow)
        except OSError as exc:
            logger.warning("rawtransport: the stack's filter could not be updated: %r", exc)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this stack runs on."""
        loop = self._loop()
        assert loop is not None  # callbacks only run while the loop exists
        return loop

    # ------------------------------------------------------------------------------ endpoints
    def attach(self, engine: UdpEngine, consumer: StackConsumer) -> None:
        """Deliver ``engine``'s news to ``consumer`` (its endpoint is registered on the stack),
        and read its ``PACKET_FANOUT`` receiver if it has one (``reuse_port``)."""
        self._consumers[engine] = consumer
        fanout = self.stack.fanout.get(engine)
        if fanout is not None:
            self.loop.add_reader(fanout.fileno(), self._read_ready, fanout)
        self._stop_linger()

    def release(self, endpoint: RawUdpEndpoint) -> None:
        """Stop delivering to the endpoint's consumer and close the endpoint (its guard, its
        table entry, its fanout receiver); an idle stack lingers, then closes."""
        engine = endpoint.engine
        self._consumers.pop(engine, None)
        fanout = self.stack.fanout.get(engine)
        if fanout is not None:
            self.loop.remove_reader(fanout.fileno())  # before the stack closes it
        endpoint.close()
        if not self.stack.endpoints and not self.closed and self._linger is None:
            self._start_linger()

    def _start_linger(self) -> None:
        # A task, not a timer: asyncio.run() and uvloop.run() cancel every task before closing the
        # loop, so a stack lingering then is closed then (a timer would be dropped with the loop and
        # the stack's sockets and rings kept until the loop is collected). A loop closed without
        # that leaves the stack to the finalizer; its pending task is not worth a log line.
        task = self.loop.create_task(self._linger_then_close())
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._linger = task

    def _stop_linger(self) -> None:
        task, self._linger = self._linger, None
        if task is not None:
            task.cancel()

    async def _linger_then_close(self) -> None:
        me = asyncio.current_task()
        try:
            await asyncio.sleep(LINGER)
        finally:
            # Run out, or cancelled by the loop's shutdown, not called off (_stop_linger).
            if self._linger is me:
                self._linger = None
                if not self.stack.endpoints:
                    self.close()

    def close(self) -> None:
        """Stop reading and close the stack (its endpoints must have gone)."""
        if self.closed:
            return
        self.closed = True
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            for receiver in (self.stack.receiver, *self.stack.fanout.values()):
                loop.remove_reader(receiver.fileno())
            loop.remove_reader(self.stack.netlink_fileno())
        if self._timer is not None:
            self._timer.cancel()
        self._stop_linger()
        self._finalizer()  # stack.close(), once

    # -------------------------------------------------------------------------------- reading
    def _read_fast(self) -> None:
        """The shared receiver is readable, compiled path: frames for plainly reading endpoints
        were delivered in C. Only a frame left to Python has more to do here (its own delivery,
        the rest of the batch, timers it may have started); what a protocol sent in its callback
        armed the timer itself (transport._flush_engine()), and the C send path starts none."""
        assert self._recv_fast is not None
        try:
            taken, slow = self._recv_fast(READ_BUDGET, self.stack.host.fast)
        except OSError as exc:
            self._read_failed(exc, None)
            return
        if slow is None:
            return
        now = self.loop.time()
        host = self.stack.host
        host.receive_frame(slow[0], slow[1], now, False)
        self._deliver(host.take_touched())
        budget = READ_BUDGET - taken - 1
        if budget > 0:
            try:
                touched = self.stack.read_ready(now, budget, None, self._deliver)
            except OSError as exc:
                self._read_failed(exc, None)
                return
            self._deliver(touched)
        self.arm_timer()

    def _read_ready(self, fanout: Receiver | None = None) -> None:
        stack = self.stack
        try:
            touched = stack.read_ready(self.loop.time(), READ_BUDGET, fanout, self._deliver)
        except OSError as exc:
            self._read_failed(exc, fanout)
            return
        self._deliver(touched)
        self.arm_timer()

    def _read_and_spin(self) -> None:
        """The shared receiver is readable and ``spin_us`` is set: read, then keep polling."""
        self._read_shared()
        self._spin_until = self.loop.time() + self._spin
        if not self._spinning and not self.closed:
            self._spinning = True
            self.loop.call_soon(self._spin_poll)

    def _spin_poll(self) -> None:
        """One poll of the spin: read what came (a V2 ring's poll is one look at a slot's status,
        nothing but a read when a frame is there) and poll again at the next loop iteration, until
        ``spin_us`` have passed since the last frame. Each iteration runs the other ready callbacks
        first, and the loop polls its selector without sleeping: the spin costs a busy core and
        saves the sleep and the wake-up when the next frame is microseconds away (the bounded
        spin of kernel-bypass stacks, and of the kernel's own busy polling, sk_busy_loop())."""
        if self.closed:
            self._spinning = False
            return
        stack = self.stack
        before = stack.host.frames_read()
        self._read_shared()
        now = self.loop.time()
        stack.spin_polls += 1
        if stack.host.frames_read() != before:
            stack.spin_hits += 1
            self._spin_until = now + self._spin
        if now < self._spin_until and not self.closed:
            self.loop.call_soon(self._spin_poll)
        else:
            self._spinning = False

    def _read_failed(self, exc: OSError, fanout: Receiver | None) -> None:
        # A read error of the shared socket (ENETDOWN when a bound interface vanished ...): every
        # endpoint's socket would have reported it.
        for consumer in list(self._consumers.values()):
            consumer.read_error(exc)
        if exc.errno in _DEAD and self.stack.ifindex is not None:
            # The interface the receiver is bound to is gone (packet_notifier()): its socket stays
            # readable with the error; stop reading it rather than spin.
            self.loop.remove_reader((fanout or self.stack.receiver).fileno())

    def _deliver(self, engines: list[UdpEngine]) -> None:
        consumers = self._consumers
        for engine in engines:
            # An endpoint registered but not attached yet (its transport's first callback is
            # pending) keeps its news in the engine; the transport dispatches it when it starts.
            consumer = consumers.get(engine)
            if consumer is not None:
                consumer.stack_ready()
        if self.stack.host.out:
            self.stack.write_host_frames()

    def _netlink_ready(self) -> None:
        try:
            changed = self.stack.netlink_ready(self.loop.time())
        except OSError as exc:
            logger.debug("rtnetlink refresh failed: %r", exc)
            return
        if changed:
            for consumer in list(self._consumers.values()):
                consumer.netlink_changed()

    # --------------------------------------------------------------------------------- timers
    def arm_timer(self) -> None:
        """(Re)arm the host's timer (call after anything that may have started a resolution)."""
        when = self.stack.host.get_timer()
        if when == self._timer_at or self.closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        host = self.stack.host
        host.handle_timer(self.loop.time())
        self._deliver(host.take_touched())
        self.arm_timer()
