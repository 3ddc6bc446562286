"""What the report says about the machine: CPU, cores, kernel, Python, loop versions, offloads, RPS."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

from rawtransport.datapath import DATAPATH

__all__ = ["describe", "offloads", "rps_masks"]

#: The offloads that change what a packet socket sees (checksums, segmentation, coalescing).
_OFFLOAD_KEYS = (
    "rx-checksumming",
    "tx-checksumming",
    "scatter-gather",
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "rx-gro-list",
    "rx-udp-gro-forwarding",
    "tx-udp-segmentation",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    if dist == "rawtransport":
        # Run from a source tree the distribution is not installed: the package knows its version.
        import rawtransport

        return rawtransport.__version__
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hypervisor() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            if " hypervisor" not in f.read():
                return None
    except OSError:
        return None
    try:
        with open("/sys/class/dmi/id/sys_vendor") as f:
            return f.read().strip() or "yes"
    except OSError:
        return "yes"


def offloads(prefix: list[str], ifname: str) -> dict[str, str]:
    """``ethtool -k`` of ``ifname`` (run under ``prefix``, e.g. ``ip netns exec NS``), the keys above.

    Empty when ethtool is missing or fails: the report then says "unknown" rather than guessing.
    """
    if shutil.which("ethtool") is None:
        return {}
    try:
        res = subprocess.run(
            [*prefix, "ethtool", "-k", ifname],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key in _OFFLOAD_KEYS:
            out[key] = value.strip()
    return out


def rps_masks(prefix: list[str], ifname: str) -> dict[str, str]:
    """The ``rps_cpus`` mask of each receive queue of ``ifname`` (hex, as the kernel prints it)."""
    script = f"for q in /sys/class/net/{ifname}/queues/rx-*; do echo $q $(cat $q/rps_cpus); done"
    try:
        res = subprocess.run(
            [*prefix, "sh", "-c", script], check=False, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    masks: dict[str, str] = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            masks[parts[0].rsplit("/", 1)[-1]] = parts[1]
    return masks


def describe() -> dict[str, Any]:
    """The machine in the report's terms (only what can be read without side effects)."""
    uname = platform.uname()
    return {
        "cpu_model": _cpu_model(),
        "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "hypervisor": _hypervisor(),
        "kernel": uname.release,
        "kernel_version": uname.version,
        "arch": uname.machine,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "versions": {
            name: _version(name)
            for name in ("rawtransport", "uvloop", "anyio", "trio", "matplotlib", "rich")
        },
        "datapath": DATAPATH,
        "trafgen": shutil.which("trafgen"),
        "strace": shutil.which("strace"),
    }
