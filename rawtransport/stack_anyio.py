"""One raw stack per anyio event-loop run, on every backend (asyncio, asyncio+uvloop, trio).

:func:`anyio_stack` returns the :class:`AnyioStack` of the running event loop for a set of
:class:`~rawtransport.stack.StackOptions` (and the calling thread's network namespace), opening its
:class:`~rawtransport.stack.RawStack` on a worker thread the first time — the only step that waits
in the kernel; tasks that ask while it opens wait for that same opening. The registry is an
``anyio.lowlevel.RunVar``, so each run (and each backend) has its own stacks. Every later socket of
the run registers on the stack in microseconds, on the event-loop thread.

**The pump.** trio lets only one task wait on a descriptor at a time, and frames must be read even
when the user only sends (an ARP/ND reply releases a datagram waiting for its next hop), so all
waiting for all the sockets of a stack happens in one place. A task that needs progress for its
socket (:meth:`AnyioStack.round`) becomes the *pumper* if nobody is pumping: it reads the shared
receiver (:meth:`RawStack.read_ready`, which feeds every socket's engine) and each ``reuse_port``
socket's fanout receiver, moves each touched engine's events into that socket's receive queue,
flushes frames, runs the shared host's timer (ARP/ND retransmits and failures, fragment expiry) and
applies rtnetlink news; then, until its own socket has news, waits for the receiver(s), the guard
sockets of connected sockets with a waiting task (ICMP errors), the sending sockets of sockets
whose frames wait for room, the host's timer and each socket's ENOBUFS retry time. Other tasks sleep
on an event of their own, set when their socket gets news (so a datagram wakes one task, not every
task of the stack). When the pumper leaves (its socket got news, or it was cancelled) the oldest
sleeping task is woken to take over, so the pump never stops while a task needs it.

**Lifetime.** A keeper task per stack closes it :data:`rawtransport.stack_loop.LINGER` seconds after
its last socket closed (so one-socket-per-request clients do not pay the ring setup, nor the ARP
resolution, per request), and when the run ends: trio cancels system tasks once the main task has
returned, and asyncio's runner cancels the tasks left, so no packet socket outlives ``anyio.run()``;
sockets still open then are closed with the stack. Starting that task is the only backend-specific
code (a trio system task, an asyncio task): anyio has no public way to start a task outside a task
group.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
from anyio import CancelScope, ClosedResourceError
from anyio.lowlevel import RunVar

from rawtransport import stack_loop
from rawtransport.endpoint import RawUdpEndpoint
from rawtransport.engine import OutgoingFrame, UdpEngine
from rawtransport.ring_setup import Receiver
from rawtransport.stack import RawStack, StackOptions
from rawtransport.stack_loop import _DEAD, _netns
from rawtransport.workers import run_in_new_thread

__all__ = ["AnyioStack", "PumpClient", "anyio_stack", "run_off_loop"]

logger = logging.getLogger("rawtransport")

_T = TypeVar("_T")
# Frames read per receiver per pass before other work (and other tasks) get a turn.
_READ_BUDGET = 64
# The route cache is rechecked on every send after 1 ms; the pump drains the netlink monitor as
# often so that receive checks (is this destination ours?) see address changes too.
_NETLINK_INTERVAL = 0.001
# A sending socket may be closed under a waiter when its interface vanishes (the stack refreshes on
# netlink news), which notify_closing() cannot cover: bound writable waits so none hangs.
_WRITABLE_WAIT_MAX = 0.05


class PumpClient(Protocol):
    """What the pump needs of one socket (rawtransport.anyio_socket's per-socket state)."""

    ep: RawUdpEndpoint
    connected: bool
    closed: bool
    #: Frames the kernel would not take yet, in order.
    out: deque[OutgoingFrame]
    #: When to retry ``out`` after ENOBUFS (not signalled by poll()), or ``None``: when writable.
    retry_at: float | None

    def stack_ready(self) -> None:
        """The engine has news: move its events into the receive queue, write its frames."""

    def set_error(self, exc: OSError) -> None:
        """Hold ``exc`` for the next receive()/send() (as the kernel's ``sk_err``)."""

    def flush(self) -> list[OSError]:
        """Write the engine's frames and those held back; return the kernel's errors."""

    def run_ended(self) -> None:
        """The stack closes with the socket still open (the event-loop run ends): close it."""


async def run_off_loop(fn: Callable[[], _T]) -> _T:
    """``fn()`` in a thread of its own (workers.py: the loop thread's namespace and capabilities),
    while the event loop runs other tasks. Cancellation waits for ``fn`` and is delivered at the
    caller's next checkpoint, so the caller owns (and closes) what ``fn`` opened."""
    future = run_in_new_thread(fn)
    with CancelScope(shield=True):
        result = await anyio.to_thread.run_sync(future.result)
    return result


# ------------------------------------------------------------------------------------ registry
_Key = tuple[StackOptions, int]


@dataclass
class _Opening:
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


@dataclass
class _Registry:
    stacks: dict[_Key, AnyioStack] = field(default_factory=dict)
    opening: dict[_Key, _Opening] = field(default_factory=dict)


# No default: a default value would be one dict shared by every run.
_REGISTRY: RunVar[_Registry] = RunVar("rawtransport_anyio_stacks")


def _registry() -> _Registry:
    registry = _REGISTRY.get(None)
    if registry is None:
        registry = _Registry()
        _REGISTRY.set(registry)
    return registry


async def anyio_stack(options: StackOptions) -> AnyioStack:
    """The running stack of this event-loop run for ``options``, opened (off the event-loop
    thread) if need be. It is returned with a use taken: hand it to a socket, or give it back with
    :meth:`AnyioStack.release`. No checkpoint when the stack is up."""
    options.check()
    key = (options, _netns())
    registry = _registry()
    while True:
        stack = registry.stacks.get(key)
        if stack is not None:
            stack.acquire()
            return stack
        opening = registry.opening.get(key)
        if opening is None:
            return await _open(registry, key, options)
        await opening.done.wait()
        if opening.error is not None:
            # Every task that waited for this opening sees its error, as asyncio's shared future.
            raise opening.error


async def _open(registry: _Registry, key: _Key, options: StackOptions) -> AnyioStack:
    opening = registry.opening[key] = _Opening()
    try:
        # Shielded: if the opener is cancelled the stack is still made (and lingers, then closes).
        raw = await run_off_loop(functools.partial(RawStack.open, options))
        try:
            stack = AnyioStack(raw, registry, key)
            stack.acquire()
            stack.start_keeper()
        except BaseException:
            raw.close()
            raise
        registry.stacks[key] = stack
    except BaseException as exc:
        opening.error = exc
        raise
    finally:
        del registry.opening[key]
        opening.done.set()
    return stack


def _async_library() -> str:
    try:
        import sniffio
    except ImportError:  # trio depends on sniffio: without it only asyncio can be running
        return "asyncio"
    return sniffio.current_async_library()


# --------------------------------------------------------------------------------------- stack
class AnyioStack:
    """Drives one :class:`RawStack` in one anyio event-loop run. See the module docstring."""

    def __init__(self, stack: RawStack, registry: _Registry, key: _Key) -> None:
        self.stack = stack
        self._registry = registry
        self._key = key
        self.clients: dict[UdpEngine, PumpClient] = {}
        # Sockets whose frames wait for room (EAGAIN or ENOBUFS).
        self._blocked: dict[PumpClient, None] = {}
        # Tasks in round(), per socket: a connected socket's guard is waited on only then.
        self._watch: dict[PumpClient, int] = {}
        # Sleeping tasks, oldest first, and each socket's.
        self._sleepers: dict[anyio.Event, PumpClient] = {}
        self._sleepers_of: dict[PumpClient, list[anyio.Event]] = {}
        self.pumping = False
        self._pumper: PumpClient | None = None
        self._pumper_news = False
        self._scope: CancelScope | None = None
        self._waiting: set[int] = set()  # the descriptors of the running wait
        self._wait_done: anyio.Event | None = None
        self._netlink_at = -math.inf
        self._dead: set[int] = set()  # receivers whose interface vanished (ENETDOWN forever)
        # Sockets the compiled receive path queued datagrams for during a read (news()).
        self._news: dict[PumpClient, None] = {}
        self._users = 0  # sockets, and openers that will register one
        self._idle = anyio.Event()
        self._linger: CancelScope | None = None
        self._keeper: Any = None
        self.closed = False
        #: Set once the stack is closed (after the linger, or at the end of the run).
        self.closed_event = anyio.Event()

    # ----------------------------------------------------------------------------- lifetime
    def acquire(self) -> None:
        """Take a use (a socket on the way): the stack does not linger, and stops lingering."""
        self._users += 1
        if self._users == 1:
            if self._linger is not None:
                self._linger.cancel()
            if self._idle.is_set():
                self._idle = anyio.Event()

    def release(self) -> None:
        """Give a use back; with none left the keeper lingers, then closes the stack."""
        self._users -= 1
        if self._users == 0:
            self._idle.set()

    def start_keeper(self) -> None:
        """Start the task that closes the stack after the linger or at the end of the run."""
        if _async_library() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(self._keep, name="rawtransport stack keeper")
        else:
            import asyncio

            # The loop holds tasks weakly: keep a reference.
            self._keeper = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        try:
            while True:
                idle = self._idle
                await idle.wait()
                if self._users:
                    continue  # a socket came before this task ran
                with CancelScope() as scope:
                    self._linger = scope
                    await anyio.sleep(stack_loop.LINGER)
                self._linger = None
                # Cut short by a socket: linger afresh once idle again (that socket may have come
                # and gone before this task ran; the linger counts from its going).
                if not scope.cancelled_caught and not self._users:
                    return
        finally:
            # Cancelled: the run is ending (trio cancels system tasks when the main task returns,
            # asyncio's runner the tasks left), and its stacks must not outlive it.
            self.close()

    def close(self) -> None:
        """Close the stack and any socket still on it; wake every task waiting in the pump."""
        if self.closed:
            return
        self.closed = True
        if self._registry.stacks.get(self._key) is self:
            del self._registry.stacks[self._key]
        try:
            try:
                # Wake the pumper out of its waits before any descriptor is closed (the closer
                # thread may close one at once), then every sleeper, which sees the closed socket.
                fds = {*self._waiting, self.stack.receiver.fileno()}
                fds.update(r.fileno() for r in self.stack.fanout.values())
                for fd in fds:
                    anyio.notify_closing(fd)
                self.kick()
                for event in list(self._sleepers):
                    event.set()
                for client in list(self.clients.values()):
                    client.run_ended()
            finally:
                self.stack.close()
        except Exception:
            # In the keeper's finally an exception would end a trio run with an internal error;
            # whatever failed, the stack's sockets are closed (or queued for closing) by now.
            logger.exception("rawtransport: closing the anyio stack failed")
        finally:
            self.closed_event.set()

    # ------------------------------------------------------------------------------ sockets
    def attach(self, client: PumpClient) -> None:
        """Deliver the news of ``client``'s engine to it (its endpoint is registered)."""
        self.clients[client.ep.engine] = client
        # Datagrams that arrived between the registration and now wait in the engine.
        client.stack_ready()
        if self.pumping and self.stack.fanout.get(client.ep.engine) is not None:
            self.kick()  # the pumper must wait on the new fanout receiver too

    def detach(self, client: PumpClient) -> bool:
        """Stop serving ``client`` (closing); wake its tasks. True if the running wait uses one of
        its descriptors: then :meth:`wait_left` before closing them."""
        self.clients.pop(client.ep.engine, None)
        self._blocked.pop(client, None)
        self._notify(client)
        return bool(self._waiting.intersection(self.fds_of(client)))

    async def wait_left(self) -> None:
        """End the running wait and wait until the pumper has left it (it then recomputes what to
        wait on without the detached sockets' descriptors)."""
        if self._scope is None:
            return
        if self._wait_done is None:
            self._wait_done = anyio.Event()
        done = self._wait_done
        self.kick()
        await done.wait()

    def fds_of(self, client: PumpClient) -> list[int]:
        """The descriptors the pump may wait on for ``client`` alone (its guard and fanout)."""
        fds = [client.ep.guard.fileno()]
        fanout = self.stack.fanout.get(client.ep.engine)
        if fanout is not None:
            fds.append(fanout.fileno())
        return fds

    def set_blocked(self, client: PumpClient, blocked: bool) -> None:
        """Whether ``client`` has frames waiting for room (the pump then retries them)."""
        if blocked:
            self._blocked[client] = None
        else:
            self._blocked.pop(client, None)

    def kick(self) -> None:
        """End the running wait now, so the pumper recomputes what to wait for and until when."""
        if self._scope is not None:
            self._scope.cancel()

    # ------------------------------------------------------------------------------- waiting
    async def round(self, client: PumpClient) -> bool:
        """Return once ``client`` may have news (or the pump is free to take): pump until then
        if nobody else is pumping, else sleep until the pumper has news for it. True if the task
        waited (a pass that found news at once returns False without yielding)."""
        if self.closed:
            return False
        self._watch[client] = self._watch.get(client, 0) + 1
        try:
            if self.pumping:
                await self._sleep(client)
                return True
            return await self._pump(client)
        finally:
            n = self._watch.pop(client) - 1
            if n:
                self._watch[client] = n
            if not self.pumping and self._sleepers:
                # The pump is free: the oldest sleeper takes it (if this task is back in round()
                # at once, it pumps again and the sleeper goes back to sleep).
                next(iter(self._sleepers)).set()

    async def _sleep(self, client: PumpClient) -> None:
        event = anyio.Event()
        self._sleepers[event] = client
        self._sleepers_of.setdefault(client, []).append(event)
        if client.connected and client.ep.guard.fileno() not in self._waiting:
            self.kick()  # the running wait does not cover this socket's ICMP errors
        try:
            await event.wait()
        finally:
            del self._sleepers[event]
            events = self._sleepers_of[client]
            events.remove(event)
            if not events:
                del self._sleepers_of[client]

    async def _pump(self, client: PumpClient) -> bool:
        self.pumping = True
        self._pumper = client
        waited = False
        try:
            while not (self.closed or client.closed):
                self._pumper_news = False
                self.drain()
                if self._pumper_news:
                    break
                await self._wait_io()
                waited = True
            return waited
        finally:
            self.pumping = False
            self._pumper = None

    def _notify(self, client: PumpClient) -> None:
        if client is self._pumper:
            self._pumper_news = True
            # Its socket may be closing under its wait (detach()); during drain() there is none.
            self.kick()
        for event in self._sleepers_of.get(client, ()):
            event.set()

    def _notify_all(self) -> None:
        self._pumper_news = True
        self.kick()
        for event in self._sleepers:
            event.set()

    async def _wait_io(self) -> None:
        stack = self.stack
        now = time.monotonic()
        timer = stack.host.get_timer()
        delay = math.inf if timer is None else max(0.0, timer - now)
        readable = [stack.receiver.fileno()]
        readable.extend(r.fileno() for r in stack.fanout.values())
        readable = [fd for fd in readable if fd not in self._dead]
        for watched in self._watch:
            # Only an ICMP error (sk_err) makes a guard readable: its filter drops every datagram.
            if watched.connected and not watched.closed:
                readable.append(watched.ep.guard.fileno())
        writable: set[int] = set()
        for blocked in self._blocked:
            if blocked.retry_at is not None:
                delay = min(delay, max(0.0, blocked.retry_at - now))
                continue
            # OSError: the interface is gone, and the retry's write reports it.
            with contextlib.suppress(OSError):
                writable.add(blocked.ep.sender_fileno(blocked.out[0].ifindex))
            delay = min(delay, _WRITABLE_WAIT_MAX)
        # Sockets on one interface share its sender: one wait per descriptor (trio allows no more).
        waits = [(anyio.wait_readable, fd) for fd in dict.fromkeys(readable)]
        waits.extend((anyio.wait_writable, fd) for fd in writable)
        self._waiting = {fd for _, fd in waits}
        try:
            with CancelScope(deadline=anyio.current_time() + delay) as scope:
                self._scope = scope
                if len(waits) == 1:
                    await _wait_one(*waits[0])
                elif waits:
                    async with anyio.create_task_group() as tg:
                        for wait, fd in waits:
                            tg.start_soon(_wait_then_cancel, wait, fd, scope)
                else:
                    await anyio.sleep_forever()
        finally:
            self._scope = None
            self._waiting = set()
            done, self._wait_done = self._wait_done, None
            if done is not None:
                done.set()

    # -------------------------------------------------------------------------------- work
    def drain(self) -> None:
        """One non-blocking pass over every source of work of every socket."""
        stack = self.stack
        host = stack.host
        now = time.monotonic()
        if now - self._netlink_at >= _NETLINK_INTERVAL:
            self._netlink_at = now
            try:
                changed = stack.netlink_ready(now)
            except OSError:
                host.counters.drop("netlink_error")
            else:
                if changed:
                    # A socket may have lost its interface (BrokenResourceError): all look again.
                    self._notify_all()
        self._read(None, now)
        if stack.fanout:
            for engine, receiver in list(stack.fanout.items()):
                self._read(receiver, now, engine)
        for watched in list(self._watch):
            if watched.connected and not watched.closed:
                exc = watched.ep.guard_ready()
                if exc is not None:
                    watched.set_error(exc)
                    self._notify(watched)
        timer = host.get_timer()
        if timer is not None and timer <= now:
            host.handle_timer(now)
            self._deliver(host.take_touched())
        for blocked in list(self._blocked):
            if blocked.retry_at is None or blocked.retry_at <= now:
                before = len(blocked.out)
                errors = blocked.flush()
                if errors:
                    # A retried frame's error has no caller: the kernel does not report a
                    # neighbour queue's transmit errors to the socket either.
                    blocked.ep.engine.count_drop("tx_error", len(errors))
                if len(blocked.out) != before:
                    self._notify(blocked)

    def _read(self, receiver: Receiver | None, now: float, engine: UdpEngine | None = None) -> None:
        stack = self.stack
        fd = (receiver or stack.receiver).fileno()
        if fd in self._dead:
            return
        try:
            touched = stack.read_ready(now, _READ_BUDGET, receiver, self._deliver)
        except OSError as exc:
            touched = stack.host.take_touched()  # what the batch read before the error
            if receiver is None:
                # The shared socket's error: every socket's own would have reported it.
                targets = list(self.clients.values())
            else:
                client = self.clients.get(engine) if engine is not None else None
                targets = [client] if client is not None else []
            for target in targets:
                target.set_error(exc)
                self._notify(target)
            if exc.errno in _DEAD and stack.ifindex is not None:
                # The interface the receiver is bound to is gone (packet_notifier()): its socket
                # stays readable with the error; stop waiting on it rather than spin.
                self._dead.add(fd)
        if self._news:
            for client in list(self._news):
                self._notify(client)
            self._news.clear()
        self._deliver(touched)

    def news(self, client: PumpClient) -> None:
        """The compiled receive path queued a datagram for ``client``: wake its task once this
        read is over."""
        self._news[client] = None

    def _deliver(self, engines: list[UdpEngine]) -> None:
        clients = self.clients
        for engine in engines:
            client = clients.get(engine)
            if client is not None and not client.closed:
                client.stack_ready()
                self._notify(client)
        if self.stack.host.out:
            self.stack.write_host_frames()


async def _wait_one(wait: Callable[[int], Any], fd: int) -> None:
    # ClosedResourceError: a socket or the stack is closing, and the pumper sees it.
    with contextlib.suppress(ClosedResourceError):
        await wait(fd)


async def _wait_then_cancel(wait: Callable[[int], Any], fd: int, scope: CancelScope) -> None:
    await _wait_one(wait, fd)
    scope.cancel()
