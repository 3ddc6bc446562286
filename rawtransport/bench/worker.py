"""One side of one bench workload, run as its own process: ``python -m rawtransport.bench.worker JOB``.

``JOB`` is a JSON object (so the exact command line in the report reproduces the run). The worker
pins itself to ``job["cpu"]``, opens an endpoint on the job's path, prints one JSON line
``{"event": "ready", …}`` and then:

- ``echo``: sends every datagram back until a ``stop`` line arrives on stdin;
- ``sink``: counts datagrams (first/last arrival times) until ``stop``; with ``"idle": N`` it first
  opens N more endpoints on the same loop and path, bound to the same address on distinct ports,
  that nobody sends to (the 1-busy-N-idle receive bench, :mod:`rawtransport.bench.idle`);
- ``rtt``: after warm-up, times ``count`` round trips against an echo and exits;
- ``send``: waits for ``go`` on stdin, then sends as fast as the path allows for ``duration`` seconds;
- ``blast``: the C-free load generator: a plain blocking socket in a tight ``sendto`` loop until
  ``stop`` (no event loop, so it outpaces any loop-driven receiver on the same machine);
- ``hole``: a bound UDP socket that is never read, so sent datagrams neither trigger ICMP
  port-unreachable nor cost a reader.

The last line is ``{"event": "result", …}`` with the role's figures, ``getrusage`` CPU times (an
asyncio-style ``echo`` or ``sink`` adds ``receive_rusage``: those from ``ready`` to ``stop``) and,
on the raw path, the transport's ``stats``. Errors are ``{"event": "error", "error": …}``, exit 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from rawtransport.bench.paths import PathSpec, get_path

__all__ = ["main"]

_SEQ_BYTES = 8


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _rusage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": ru.ru_utime, "system_s": ru.ru_stime}


def _since(before: dict[str, float]) -> dict[str, float]:
    """The CPU time used since ``before`` (a :func:`_rusage`)."""
    after = _rusage()
    return {k: after[k] - before[k] for k in after}


def _family(job: dict[str, Any]) -> int:
    return socket.AF_INET if int(job.get("family", 4)) == 4 else socket.AF_INET6


def _payload(size: int, seq: int = 0) -> bytes:
    # The sequence number lets a late reply to a timed-out round trip be recognised and skipped.
    return seq.to_bytes(_SEQ_BYTES, "big") + b"\xa5" * max(0, size - _SEQ_BYTES)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class _StdinWatch:
    """Lines from stdin, read by a daemon thread and handed to the loop with a callback.

    A thread blocked in ``read()`` costs nothing while the workload runs and works unchanged on
    asyncio, uvloop and trio.
    """

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for line in sys.stdin:
            self._on_line(line.strip())
        self._on_line("stop")


# ------------------------------------------------------------------------- asyncio-style paths
class _Proto(asyncio.DatagramProtocol):
    def __init__(self, role: str) -> None:
        self.role = role
        self.transport: Any = None
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.errors = 0
        self.waiter: asyncio.Future[bytes] | None = None
        self.resume: asyncio.Future[None] | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not an asyncio.DatagramTransport subclass: no isinstance check.
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.count += 1
        if self.role == "echo":
            assert self.transport is not None
            self.transport.sendto(data, addr)
        elif self.role == "sink":
            now = time.perf_counter_ns()
            if self.count == 1:
                self.first_ns = now
            self.last_ns = now
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resume is not None and not self.resume.done():
            self.resume.set_result(None)


async def _open(
    spec: PathSpec, job: dict[str, Any], proto: _Proto, remote: tuple[str, int] | None
) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    local = (job["bind"], int(job.get("port", 0)))
    family = _family(job)
    if spec.api == "raw":
        from rawtransport.loop import create_raw_datagram_endpoint

        transport: asyncio.DatagramTransport
        transport, _ = await create_raw_datagram_endpoint(
            lambda: proto,
            local_addr=local,
            remote_addr=remote,
            family=family,
            interface=job.get("ifname"),
            **dict(spec.raw_options),
        )
        return transport
    transport, _ = await loop.create_datagram_endpoint(
        lambda: proto, local_addr=local, remote_addr=remote, family=family
    )
    return transport


def _allow_files(needed: int) -> None:
    """Raise the soft open-file limit so ``needed`` more descriptors fit (an endpoint holds one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # What the process already holds (stdio, the loop's selector, the stack's sockets) plus slack.
    want = needed + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


async def _open_idle(
    spec: PathSpec, job: dict[str, Any], count: int
) -> list[tuple[asyncio.DatagramTransport, _Proto]]:
    """``count`` endpoints beside the busy one: same loop, path and address, each its own port."""
    _allow_files(count)
    # Port 0: the kernel picks a distinct free port for each (the raw path reserves it with its
    # guard socket), so they never collide with the busy endpoint's or with each other.
    idle_job = {**job, "port": 0}
    idle: list[tuple[asyncio.DatagramTransport, _Proto]] = []
    try:
        for _ in range(count):
            proto = _Proto("idle")
            idle.append((await _open(spec, idle_job, proto, None), proto))
    except BaseException:
        for transport, _ in idle:
            transport.close()
        raise
    return idle


async def _asyncio_job(spec: PathSpec, job: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    role = job["role"]
    proto = _Proto(role)
    peer = (job["peer"], int(job["peer_port"])) if job.get("peer") else None
    transport = await _open(spec, job, proto, None)
    idle: list[tuple[asyncio.DatagramTransport, _Proto]] = []
    result: dict[str, Any] = {}
    try:
        if int(job.get("idle", 0)) > 0:
            if role != "sink":
                raise ValueError("idle endpoints go with the sink role only")
            idle = await _open_idle(spec, job, int(job["idle"]))
        stop: asyncio.Future[None] = loop.create_future()
        go: asyncio.Future[None] = loop.create_future()

        def on_line(line: str) -> None:
            fut = go if line == "go" else stop
            loop.call_soon_threadsafe(_resolve, fut, None)

        _StdinWatch(on_line)
        _emit(event="ready", pid=os.getpid(), port=transport.get_extra_info("sockname")[1])
        # Without start-up and endpoint opening: the CPU the datagrams themselves cost, a figure
        # that other load on the machine does not move the way it moves the receive rate.
        ready = _rusage()
        if role in ("echo", "sink"):
            await stop
            result = {"received": proto.count, "receive_rusage": _since(ready)}
            if role == "sink":
                result.update(first_ns=proto.first_ns, last_ns=proto.last_ns)
                if idle:
                    result["idle"] = len(idle)
                    # Any datagram an idle endpoint got would be a demultiplexing bug.
                    result["idle_received"] = sum(p.count for _, p in idle)
        elif role == "rtt":
            assert peer is not None
            result = await _asyncio_rtt(transport, proto, peer, job)
        elif role == "send":
            assert peer is not None
            await go
            result = await _asyncio_send(transport, proto, peer, job)
        else:
            raise ValueError(f"role {role!r} is not an event-loop role")
        result["errors"] = proto.errors
        stats = transport.get_extra_info("stats")
        if stats is not None:
            result["stats"] = stats
    finally:
        for other, _ in idle:
            other.close()
        transport.close()
    return result


async def _asyncio_rtt(
    transport: asyncio.DatagramTransport, proto: _Proto, peer: tuple[str, int], job: dict[str, Any]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    size, count, warmup = int(job["size"]), int(job["count"]), int(job["warmup"])
    timeout = float(job.get("timeout", 0.5))
    samples: list[int] = []
    lost = 0
    perf = time.perf_counter_ns
    for seq in range(warmup + count):
        msg = _payload(size, seq)
        while True:
            fut: asyncio.Future[bytes] = loop.create_future()
            proto.waiter = fut
            # One timer per round trip for a lost datagram (veth loses none in ping-pong, but a
            # run must end); a TimerHandle is the cheapest asyncio offers and costs every path alike.
            timer = loop.call_later(timeout, _resolve, fut, b"")
            t0 = perf()
            transport.sendto(msg, peer)
            reply = await fut
            t1 = perf()
            timer.cancel()
            if reply[:_SEQ_BYTES] == msg[:_SEQ_BYTES]:
                break
            if not reply:
                lost += 1
                if lost > max(20, count // 100):
                    raise TimeoutError(f"{lost} round trips lost")
            # A stale or lost reply: send the same sequence number again.
        if seq >= warmup:
            samples.append(t1 - t0)
    return {"samples_ns": samples, "lost": lost}


async def _asyncio_send(
    transport: asyncio.DatagramTransport, proto: _Proto, peer: tuple[str, int], job: dict[str, Any]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    payload = _payload(int(job["size"]))
    duration = float(job["duration"])
    burst = 64
    sent = 0
    sendto = transport.sendto
    t0 = time.perf_counter()
    deadline = t0 + duration
    while time.perf_counter() < deadline:
        for _ in range(burst):
            sendto(payload, peer)
        sent += burst
        if proto.paused:
            proto.resume = loop.create_future()
            await proto.resume
        else:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - t0
    return {"sent": sent, "elapsed_s": elapsed}


# --------------------------------------------------------------------------------- anyio/trio
async def _anyio_job(spec: PathSpec, job: dict[str, Any]) -> dict[str, Any]:
    import anyio
    import anyio.abc
    import anyio.from_thread

    role = job["role"]
    if job.get("idle"):
        raise ValueError("idle endpoints are implemented on the asyncio-style paths only")
    family: Any = _family(job)
    peer_host = job.get("peer")
    peer_port = int(job.get("peer_port", 0))
    sock: Any
    if spec.api == "raw-anyio":
        from rawtransport.anyio_socket import create_raw_udp_socket

        sock = await create_raw_udp_socket(
            family,
            local_host=job["bind"],
            local_port=int(job.get("port", 0)),
            interface=job.get("ifname"),
            **dict(spec.raw_options),
        )
    else:
        sock = await anyio.create_udp_socket(
            family=family, local_host=job["bind"], local_port=int(job.get("port", 0))
        )
    stop = anyio.Event()
    go = anyio.Event()
    token = anyio.lowlevel.current_token()

    def on_line(line: str) -> None:
        event = go if line == "go" else stop
        anyio.from_thread.run_sync(event.set, token=token)

    result: dict[str, Any] = {}
    count = 0
    first_ns = last_ns = 0
    async with sock:
        _StdinWatch(on_line)
        _emit(event="ready", pid=os.getpid(), port=sock.extra(anyio.abc.SocketAttribute.local_port))
        if role in ("echo", "sink"):
            async with anyio.create_task_group() as tg:

                async def serve() -> None:
                    nonlocal count, first_ns, last_ns
                    perf = time.perf_counter_ns
                    async for data, addr in sock:
                        count += 1
                        if role == "echo":
                            await sock.sendto(data, addr[0], addr[1])
                        else:
                            last_ns = perf()
                            if count == 1:
                                first_ns = last_ns

                tg.start_soon(serve)
                await stop.wait()
                tg.cancel_scope.cancel()
            result = {"received": count}
            if role == "sink":
                result.update(first_ns=first_ns, last_ns=last_ns)
        elif role == "rtt":
            size, n, warmup = int(job["size"]), int(job["count"]), int(job["warmup"])
            timeout = float(job.get("timeout", 0.5))
            samples: list[int] = []
            lost = 0
            perf = time.perf_counter_ns
            for seq in range(warmup + n):
                msg = _payload(size, seq)
                while True:
                    reply = b""
                    t0 = perf()
                    with anyio.move_on_after(timeout):
                        await sock.sendto(msg, peer_host, peer_port)
                        reply, _ = await sock.receive()
                    t1 = perf()
                    if reply[:_SEQ_BYTES] == msg[:_SEQ_BYTES]:
                        break
                    if not reply:
                        lost += 1
                        if lost > max(20, n // 100):
                            raise TimeoutError(f"{lost} round trips lost")
                if seq >= warmup:
                    samples.append(t1 - t0)
            result = {"samples_ns": samples, "lost": lost}
        elif role == "send":
            await go.wait()
            payload = _payload(int(job["size"]))
            duration = float(job["duration"])
            sent = 0
            start = time.perf_counter()
            deadline = start + duration
            while time.perf_counter() < deadline:
                for _ in range(64):
                    await sock.sendto(payload, peer_host, peer_port)
                sent += 64
            result = {"sent": sent, "elapsed_s": time.perf_counter() - start}
        else:
            raise ValueError(f"role {role!r} is not an event-loop role")
        if spec.api == "raw-anyio":
            from rawtransport.anyio_socket import RawSocketAttribute

            result["stats"] = dict(sock.extra(RawSocketAttribute.stats))
    result["errors"] = 0
    return result


# ------------------------------------------------------------------------------ plain sockets
def _plain_job(job: dict[str, Any]) -> dict[str, Any]:
    role = job["role"]
    sock = socket.socket(_family(job), socket.SOCK_DGRAM)
    try:
        if role == "hole":
            # The smallest receive buffer: datagrams are dropped at the socket at once, cheaply.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        sock.bind((job["bind"], int(job.get("port", 0))))
        stop = threading.Event()
        _StdinWatch(lambda line: stop.set() if line != "go" else None)
        _emit(event="ready", pid=os.getpid(), port=sock.getsockname()[1])
        if role == "hole":
            stop.wait()
            return {}
        if role == "blast":
            payload = _payload(int(job["size"]))
            dest = (job["peer"], int(job["peer_port"]))
            sendto = sock.sendto
            sent = errors = 0
            t0 = time.perf_counter()
            is_set = stop.is_set
            while not is_set():
                for _ in range(256):
                    try:
                        sendto(payload, dest)
                        sent += 1
                    except OSError:  # ENOBUFS and the like: the point is to offer too much
                        errors += 1
            return {"sent": sent, "errors": errors, "elapsed_s": time.perf_counter() - t0}
        raise ValueError(f"unknown role {role!r}")
    finally:
        sock.close()


def _run(spec: PathSpec, job: dict[str, Any]) -> dict[str, Any]:
    if spec.max_size is not None:
        # The stock transport reads every datagram with recvfrom(256 KiB); the fixed
        # variant shows how much of asyncio's cost is that one constant.
        from asyncio import selector_events

        selector_events._SelectorDatagramTransport.max_size = spec.max_size  # type: ignore[attr-defined]
    if spec.api in ("anyio", "raw-anyio"):
        import anyio

        return anyio.run(_anyio_job, spec, job, backend=spec.loop)
    coro: Coroutine[Any, Any, dict[str, Any]] = _asyncio_job(spec, job)
    if spec.loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Run the job given as the single JSON argument; print JSON lines; 0 on success."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m rawtransport.bench.worker JOB_JSON\n")
        return 2
    try:
        job = json.loads(args[0])
        if job.get("cpu") is not None:
            os.sched_setaffinity(0, {int(job["cpu"])})
        before = _rusage()
        if job["role"] in ("blast", "hole"):
            result = _plain_job(job)
        else:
            result = _run(get_path(job["path"]), job)
        result["rusage"] = _since(before)
    except KeyboardInterrupt:
        _emit(event="error", error="interrupted")
        return 1
    except Exception as exc:
        _emit(event="error", error=f"{type(exc).__name__}: {exc}")
        return 1
    _emit(event="result", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
