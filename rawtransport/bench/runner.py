"""Runs the workloads: worker processes in the two namespaces, the load generator, strace, counters.

Every process started here is tracked and ended by its PID (terminate, then kill) before the
namespaces are deleted; every command is recorded verbatim in the run's JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rawtransport.bench import stats as st
from rawtransport.bench.paths import get_path
from rawtransport.bench.topology import NicSite, Topology

__all__ = ["BenchConfig", "Runner"]

_PKG_ROOT = str(Path(__file__).resolve().parents[2])
_BENCH_PORT = 9000


@dataclass
class BenchConfig:
    """Everything that selects what a run measures (stored in the JSON as given)."""

    paths: list[str]
    sizes: list[int] = field(default_factory=lambda: [64, 1400])
    reps: int = 3
    duration: float = 0.75
    rtt_count: int = 3000
    rtt_warmup: int = 300
    families: list[int] = field(default_factory=lambda: [4])
    rps: bool = False
    workloads: list[str] = field(default_factory=lambda: ["rtt", "rx", "tx"])
    strace: bool = True
    strace_count: int = 1000
    generator: str = "trafgen"
    gen_rate: int = 1_200_000
    quick: bool = False
    client_cpu: int | None = 0
    server_cpu: int | None = 1

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class WorkerError(RuntimeError):
    """A worker or tool failed; the message carries its error line or stderr tail."""


class Proc:
    """A started process with JSON-lines stdout, stdin for control lines, stderr in a temp file."""

    def __init__(self, argv: list[str], registry: list[Proc]) -> None:
        self.argv = argv
        # Lives as long as the process (a file, so a chatty stderr can never fill a pipe and block
        # the worker); closed in stop().
        self._err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH")) if p)
        self.popen: subprocess.Popen[str] = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=env,
        )
        registry.append(self)

    @property
    def pid(self) -> int:
        """The process id (``ip netns exec`` execs, so it is the command's own)."""
        return self.popen.pid

    def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr."""
        with contextlib.suppress(OSError, ValueError):
            self._err.seek(0)
            return "\n".join(self._err.read().strip().splitlines()[-8:])
        return ""

    def event(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; ``WorkerError`` on an error event, EOF or timeout."""
        out = self.popen.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"no answer within {timeout:.0f}s from {self.argv[-2:]}")
            # poll(), not select(): a descriptor above FD_SETSIZE is refused by select().
            poller = select.poll()
            poller.register(out, select.POLLIN)
            if not poller.poll(left * 1000):
                continue
            line = out.readline()
            if not line:
                self.popen.wait(timeout=5)
                raise WorkerError(f"exited {self.popen.returncode}: {self.stderr_tail()}")
            try:
                msg: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # a stray line from a library: not ours
            if msg.get("event") == "error":
                raise WorkerError(str(msg.get("error")))
            return msg

    def send(self, line: str) -> None:
        """Write a control line (``go``/``stop``); ignore a worker that already went away."""
        with contextlib.suppress(OSError, ValueError):
            assert self.popen.stdin is not None
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()

    def stop(self) -> None:
        """End the process by its PID: terminate, then kill; close its pipes."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            try:
                self.popen.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout=3)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        self._err.close()


def _read_proc_stat() -> dict[str, st.CpuTimes]:
    with open("/proc/stat") as f:
        return st.parse_proc_stat(f.read())


class Runner:
    """Runs workloads on one :class:`Topology`: side A = clients/senders, side B = servers/sinks."""

    def __init__(self, topo: Topology | NicSite, config: BenchConfig) -> None:
        self.topo = topo
        self.remote = isinstance(topo, NicSite)
        self.config = config
        self.procs: list[Proc] = []
        self._python = sys.executable

    # --------------------------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Stop every process this runner started (by PID)."""
        while self.procs:
            self.procs.pop().stop()

    @contextlib.contextmanager
    def _scope(self) -> Iterator[list[Proc]]:
        started: list[Proc] = []
        try:
            yield started
        finally:
            for proc in started:
                proc.stop()
                if proc in self.procs:
                    self.procs.remove(proc)

    def _worker(self, side: str, job: dict[str, Any], scope: list[Proc]) -> Proc:
        argv = [
            *self.topo.exec_prefix(side),
            self._python,
            "-m",
            "rawtransport.bench.worker",
            json.dumps(job, separators=(",", ":")),
        ]
        proc = Proc(argv, self.procs)
        scope.append(proc)
        return proc

    def _job(self, role: str, side: str, path: str, family: int, **extra: Any) -> dict[str, Any]:
        cpu = self.config.client_cpu if side == "a" else self.config.server_cpu
        job: dict[str, Any] = {
            "role": role,
            "path": path,
            "family": family,
            "bind": self.topo.ip(side, family),
            "ifname": self.topo.ifname(side),
            "cpu": cpu,
        }
        job.update(extra)
        return job

    def _peer(self, family: int) -> dict[str, Any]:
        port = self.topo.peer_port if isinstance(self.topo, NicSite) else _BENCH_PORT
        return {"peer": self.topo.ip("b", family), "peer_port": port}

    def _snmp_drops(self, family: int) -> int:
        path = "/proc/net/snmp" if family == 4 else "/proc/net/snmp6"
        counters = st.parse_snmp(self.topo.read_file("b", path))
        key = "Udp.RcvbufErrors" if family == 4 else "Udp6RcvbufErrors"
        return counters.get(key, 0)

    # -------------------------------------------------------------------------------- workloads
    def rtt(self, path: str, size: int, family: int) -> tuple[dict[str, Any], list[str]]:
        """Ping-pong ``rtt_count`` round trips (after ``rtt_warmup``); both sides on ``path``."""
        cfg = self.config
        echo_res: dict[str, Any] = {}
        commands: list[str] = []
        with self._scope() as scope:
            echo = None
            if not self.remote:  # a real NIC's peer runs its own echo
                job = self._job("echo", "b", path, family, port=_BENCH_PORT)
                echo = self._worker("b", job, scope)
                echo.event(30)
                commands.append(" ".join(echo.argv))
            cap = get_path(path).rtt_count_cap or cfg.rtt_count
            job = self._job(
                "rtt", "a", path, family, size=size, count=min(cfg.rtt_count, cap),
                warmup=min(cfg.rtt_warmup, cap // 10), **self._peer(family),
            )  # fmt: skip
            client = self._worker("a", job, scope)
            client.event(30)
            commands.append(" ".join(client.argv))
            res = client.event(60 + cfg.rtt_count * 0.01)
            if echo is not None:
                echo.send("stop")
                echo_res = echo.event(30)
        figures: dict[str, Any] = st.summarize_rtt(res.pop("samples_ns"))
        figures.update(
            lost=res.get("lost", 0),
            client_rusage=res.get("rusage"),
            echo_rusage=echo_res.get("rusage"),
            echo_received=echo_res.get("received"),
            echo_stats=echo_res.get("stats"),
        )
        return figures, commands

    def _generator(
        self, family: int, size: int, count: int, rate: int | None, scope: list[Proc]
    ) -> tuple[Callable[[], float], list[str]]:
        """Start the load generator toward B's bench port; return (wait-for-it, command)."""
        topo = self.topo
        if (
            isinstance(topo, Topology)
            and self.config.generator == "trafgen"
            and shutil.which("trafgen")
        ):
            ip_hdr = (
                f"ipv4(sa={topo.ip4_a}, da={topo.ip4_b}, ttl=64)"
                if family == 4
                else f"ipv6(sa={topo.ip6_a}, da={topo.ip6_b}, hl=64)"
            )
            conf = (
                f"{{ eth(da={topo.mac_b}, sa={topo.mac_a}), {ip_hdr}, "
                f"udp(sp=40000, dp={_BENCH_PORT}), fill(0xa5, {size}) }}"
            )
            argv = [
                *topo.exec_prefix("a"), "taskset", "-c", str(self.config.client_cpu or 0),
                "trafgen", "--dev", topo.if_a, "--cpus", "1", "-n", str(count),
                "--no-sock-mem", "--notouch-irq", "--no-cpu-stats",
            ]  # fmt: skip
            if rate:
                argv += ["-b", f"{rate}pps"]
            argv.append(conf)
            t0 = time.monotonic()
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )

            def wait() -> float:
                try:
                    _, err = proc.communicate(timeout=60 + count / 10_000)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise WorkerError("trafgen did not finish") from None
                if proc.returncode != 0:
                    raise WorkerError(f"trafgen exit {proc.returncode}: {err.strip()[-300:]}")
                return time.monotonic() - t0

            return wait, [" ".join(argv)]
        # The C-free generator: a plain socket in a tight sendto loop, for `duration` seconds.
        job = self._job("blast", "a", "-", family, size=size, **self._peer(family))
        blast = self._worker("a", job, scope)
        blast.event(30)
        t0 = time.monotonic()
        duration = count / self.config.gen_rate

        def wait_blast() -> float:
            time.sleep(duration)  # the load lasts this long: a workload length, not a wait-to-pass
            blast.send("stop")
            blast.event(30)
            return time.monotonic() - t0

        return wait_blast, [" ".join(blast.argv)]

    def rx(
        self, path: str, size: int, family: int, idle: int = 0
    ) -> tuple[dict[str, Any], list[str]]:
        """Receive throughput: the generator offers more than the sink on ``path`` can take.

        ``idle``: that many more endpoints, never sent to, open beside the sink on its loop (the
        1-busy-N-idle figure of :mod:`rawtransport.bench.idle`).
        """
        cfg = self.config
        count = int(cfg.gen_rate * cfg.duration)
        # Only a non-zero count goes into the job, so the main bench's recorded commands stay as
        # they were.
        extra = {"idle": idle} if idle else {}
        with self._scope() as scope:
            job = self._job("sink", "b", path, family, port=_BENCH_PORT, **extra)
            sink = self._worker("b", job, scope)
            sink.event(30)
            drops0 = self._snmp_drops(family)
            tx0 = self.topo.link_counters("a")
            cpu0 = _read_proc_stat()
            wait, gen_cmd = self._generator(family, size, count, None, scope)
            elapsed = wait()
            cpu1 = _read_proc_stat()
            tx1 = self.topo.link_counters("a")
            # Let the sink drain what is already queued (a socket buffer's worth) before stopping.
            time.sleep(0.1)
            sink.send("stop")
            res = sink.event(30)
            drops1 = self._snmp_drops(family)
        sent = tx1.get("tx_packets", 0) - tx0.get("tx_packets", 0)
        received = int(res.get("received", 0))
        span_ns = int(res.get("last_ns", 0)) - int(res.get("first_ns", 0))
        busy = st.busy_fractions(cpu0, cpu1)
        stats_ = res.get("stats") or {}
        # The sink's own CPU time (user + system, from ready to stop) per datagram: on two cores the
        # generator's CPU also runs the veth's receive softirq, so the offered rate can be what caps
        # the received one; the CPU a datagram costs the receiving program is not capped by it.
        ru = res.get("receive_rusage") or {}
        cpu_s = float(ru.get("user_s", 0.0)) + float(ru.get("system_s", 0.0))
        figures = {
            "offered": sent,
            "offered_kpps": sent / elapsed / 1e3 if elapsed > 0 else None,
            "received": received,
            "kpps": (received - 1) / span_ns * 1e6 if received > 1 and span_ns > 0 else None,
            "drops": max(0, sent - received),
            "drop_fraction": (sent - received) / sent if sent else None,
            "udp_rcvbuf_errors": drops1 - drops0,
            "kernel_drops": stats_.get("kernel_drops"),
            "cpu_generator": busy.get(f"cpu{cfg.client_cpu}"),
            "cpu_sink": busy.get(f"cpu{cfg.server_cpu}"),
            "sink_cpu_us": cpu_s / received * 1e6 if received and cpu_s > 0 else None,
            "capacity_kpps": received / cpu_s / 1e3 if received and cpu_s > 0 else None,
            "sink_rusage": res.get("rusage"),
            "sink_receive_rusage": res.get("receive_rusage"),
            "sink_stats": stats_ or None,
        }
        if idle:
            figures.update(idle=res.get("idle", 0), idle_received=res.get("idle_received", 0))
        return figures, [" ".join(sink.argv), *gen_cmd]

    def tx(self, path: str, size: int, family: int) -> tuple[dict[str, Any], list[str]]:
        """Send rate: the path sends as fast as it can; the veth's ``tx_packets`` says what left."""
        cfg = self.config
        commands: list[str] = []
        with self._scope() as scope:
            hole = None
            if not self.remote:
                job = self._job("hole", "b", "-", family, port=_BENCH_PORT)
                hole = self._worker("b", job, scope)
                hole.event(30)
                commands.append(" ".join(hole.argv))
            job = self._job("send", "a", path, family, size=size, duration=cfg.duration,
                            **self._peer(family))  # fmt: skip
            sender = self._worker("a", job, scope)
            commands.append(" ".join(sender.argv))
            sender.event(30)
            tx0 = self.topo.link_counters("a")
            cpu0 = _read_proc_stat()
            sender.send("go")
            res = sender.event(60 + cfg.duration * 2)
            cpu1 = _read_proc_stat()
            tx1 = self.topo.link_counters("a")
            if hole is not None:
                hole.send("stop")
        elapsed = float(res.get("elapsed_s", 0.0))
        frames = tx1.get("tx_packets", 0) - tx0.get("tx_packets", 0)
        busy = st.busy_fractions(cpu0, cpu1)
        figures = {
            "frames": frames,
            "send_kpps": frames / elapsed / 1e3 if elapsed > 0 else None,
            "calls_kpps": res.get("sent", 0) / elapsed / 1e3 if elapsed > 0 else None,
            "errors": res.get("errors", 0),
            "cpu_sender": busy.get(f"cpu{cfg.client_cpu}"),
            "sender_rusage": res.get("rusage"),
            "sender_stats": res.get("stats"),
        }
        return figures, commands

    # --------------------------------------------------------------------------------- syscalls
    def _strace(self, pid: int, out: str, scope: list[Proc]) -> Proc:
        argv = ["strace", "-c", "-f", "-q", "-o", out, "-p", str(pid)]
        proc = Proc(argv, self.procs)
        scope.append(proc)
        # strace announces nothing on stdout; wait until the tracee's status shows the tracer.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                if any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f):
                    return proc
            time.sleep(0.01)
        raise WorkerError(f"strace did not attach to {pid}: {proc.stderr_tail()}")

    def syscalls(self, path: str, role: str, family: int) -> dict[str, Any]:
        """Count system calls per datagram with ``strace -c -f`` on the echo or sink process.

        ``echo``: per echoed datagram (one received + one sent) over ``strace_count`` round trips.
        ``sink``: per datagram received while a paced generator offers ``strace_count`` datagrams.
        """
        cfg = self.config
        fd, out = tempfile.mkstemp(prefix="rt-strace-", suffix=".txt")
        os.close(fd)
        commands: list[str] = []
        try:
            with self._scope() as scope:
                server = self._worker(
                    "b", self._job(role, "b", path, family, port=_BENCH_PORT), scope
                )
                ready = server.event(30)
                tracer = self._strace(int(ready["pid"]), out, scope)
                commands += [" ".join(server.argv), " ".join(tracer.argv)]
                if role == "echo":
                    job = self._job("rtt", "a", path, family, size=64, count=cfg.strace_count,
                                    warmup=0, timeout=2.0, **self._peer(family))  # fmt: skip
                    client = self._worker("a", job, scope)
                    commands.append(" ".join(client.argv))
                    client.event(30)
                    client.event(120)
                else:
                    # Paced well below what a traced process can take, so batching is not faked.
                    wait, gen = self._generator(family, 64, cfg.strace_count, 20_000, scope)
                    commands += gen
                    wait()
                    time.sleep(0.2)
                server.send("stop")
                res = server.event(30)
                tracer.popen.wait(timeout=30)
            with open(out) as f:
                text = f.read()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(out)
        calls = st.parse_strace_summary(text)
        datagrams = int(res.get("received", 0))
        top = sorted(((k, v) for k, v in calls.items() if k != "total"), key=lambda kv: -kv[1])[:8]
        return {
            "path": path,
            "role": role,
            "datagrams": datagrams,
            "syscalls": calls.get("total", 0),
            "per_datagram": calls.get("total", 0) / datagrams if datagrams else None,
            "top": {k: v / datagrams if datagrams else None for k, v in top},
            "commands": commands,
        }
