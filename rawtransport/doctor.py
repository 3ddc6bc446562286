"""``python -m rawtransport doctor``: what this machine allows the raw path, and what to do about gaps.

Every check only reads (files under /proc and /sys, ``ethtool -k``, ``nft --version``) or opens a
socket and closes it; the nftables netdev probe runs in a private, throw-away network namespace
(``unshare --net``). Nothing here raises to the user: an unprivileged run reports what it cannot see.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass

__all__ = ["Check", "main", "run_checks"]

SOL_PACKET = 263
PACKET_VERSION = 10
#: ``enum tpacket_versions`` (linux/if_packet.h): TPACKET_V1 = 0, V2 = 1, V3 = 2.
_TPACKET = {"TPACKET_V1": 0, "TPACKET_V2": 1, "TPACKET_V3": 2}
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13

_GRANT_RAW = (
    "run as root, or grant CAP_NET_RAW to the process only, as your own user: e.g. "
    '`sudo setpriv --reuid="$(id -u)" --regid="$(id -g)" --init-groups '
    "--inh-caps=+net_raw --ambient-caps=+net_raw python …` (without --reuid the program runs as "
    "root), or AmbientCapabilities=CAP_NET_RAW in a systemd unit; never setcap the shared python "
    "binary"
)
#: ``SO_BUSY_POLL`` (asm-generic/socket.h): known to the kernel iff CONFIG_NET_RX_BUSY_POLL.
SO_BUSY_POLL = 46


@dataclass(frozen=True)
class Check:
    """One finding: ``status`` is ``ok``, ``warn`` (works, with a caveat) or ``missing``."""

    name: str
    status: str
    value: str
    advice: str = ""


def _run(argv: list[str], timeout: float = 5) -> tuple[int, str]:
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return res.returncode, (res.stdout + res.stderr).strip()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _caps() -> int:
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split()[1], 16)
            except (IndexError, ValueError):
                return 0
    return 0


def _packet_socket() -> tuple[socket.socket | None, str]:
    try:
        return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0), ""
    except PermissionError as exc:
        return None, f"permission denied ({exc.strerror})"
    except (OSError, AttributeError) as exc:
        return None, str(exc)


def check_privileges() -> list[Check]:
    """CAP_NET_RAW (by opening an AF_PACKET socket) and CAP_NET_ADMIN (kernel_bypass, the bench)."""
    sock, why = _packet_socket()
    checks = []
    if sock is not None:
        sock.close()
        checks.append(Check("CAP_NET_RAW", "ok", "AF_PACKET socket opened"))
    else:
        checks.append(
            Check("CAP_NET_RAW", "missing", f"AF_PACKET socket refused: {why}", _GRANT_RAW)
        )
    if (_caps() >> CAP_NET_ADMIN) & 1:
        checks.append(
            Check("CAP_NET_ADMIN", "ok", "kernel_bypass and the bench's namespaces are possible")
        )
    else:
        checks.append(
            Check(
                "CAP_NET_ADMIN",
                "missing",
                "not held",
                "kernel_bypass=True (its nftables table) and busy_poll above net.core.busy_read "
                "need it, and the bench builds network namespaces: run those as root (the raw "
                "path itself needs only CAP_NET_RAW)",
            )
        )
    return checks


def _kernel_tuple(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_kernel() -> list[Check]:
    """Kernel version against the features the raw path uses."""
    release = platform.release()
    ver = _kernel_tuple(release)
    if ver >= (4, 20):
        return [Check("kernel", "ok", release)]
    return [
        Check(
            "kernel",
            "warn" if ver >= (3, 2) else "missing",
            release,
            "PACKET_IGNORE_OUTGOING needs 4.20 (older kernels: own frames are dropped in Python); "
            "TPACKET_V3 needs 3.2",
        )
    ]


def check_tpacket() -> list[Check]:
    """Which ``PACKET_VERSION`` values the kernel accepts (needs the packet socket)."""
    sock, why = _packet_socket()
    if sock is None:
        return [Check("TPACKET versions", "missing", f"unknown: {why}", _GRANT_RAW)]
    ok, refused = [], []
    with sock:
        for name, value in _TPACKET.items():
            try:
                sock.setsockopt(SOL_PACKET, PACKET_VERSION, value)
                ok.append(name)
            except OSError:
                refused.append(name)
    if "TPACKET_V2" in ok and "TPACKET_V3" in ok:
        return [Check("TPACKET versions", "ok", ", ".join(ok))]
    return [
        Check(
            "TPACKET versions",
            "warn",
            f"accepted {', '.join(ok) or 'none'}; refused {', '.join(refused)}",
            "use rx_mode='recv' (one recvmsg per frame); rings need TPACKET_V2/V3",
        )
    ]


def check_nftables() -> list[Check]:
    """``nft`` present, and a netdev-family table accepted (probed in a throw-away namespace)."""
    nft = shutil.which("nft")
    if nft is None:
        return [
            Check(
                "nftables",
                "missing",
                "nft not installed",
                "install nftables (Debian/Ubuntu: apt install nftables) for the ingress-drop mode",
            )
        ]
    code, out = _run([nft, "--version"])
    version = out.splitlines()[0] if code == 0 and out else "nft present, version unknown"
    unshare = shutil.which("unshare")
    if unshare is None:
        return [Check("nftables", "warn", f"{version}; netdev family not probed (no unshare)")]
    code, out = _run([unshare, "--net", nft, "add table netdev rawtransport_probe"])
    if code == 0:
        return [Check("nftables", "ok", f"{version}; netdev family works")]
    if "ermission" in out or "not permitted" in out:
        return [
            Check(
                "nftables",
                "warn",
                f"{version}; netdev family not probed (needs CAP_NET_ADMIN/CAP_SYS_ADMIN)",
                "run doctor as root to probe it",
            )
        ]
    return [
        Check(
            "nftables",
            "missing",
            f"{version}; netdev family refused: {out.splitlines()[-1] if out else code}",
            "the kernel lacks nf_tables netdev support (CONFIG_NF_TABLES_NETDEV)",
        )
    ]


_OFFLOADS = (
    "rx-checksumming",
    "generic-receive-offload",
    "generic-segmentation-offload",
    "tx-udp-segmentation",
    "rx-udp-gro-forwarding",
)


def check_offloads() -> list[Check]:
    """Offloads of each non-loopback interface (read-only ``ethtool -k``)."""
    try:
        names = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
    except OSError:
        names = []
    if not names:
        return [Check("offloads", "warn", "no interfaces besides lo")]
    ethtool = shutil.which("ethtool")
    if ethtool is None:
        return [Check("offloads", "warn", "ethtool not installed", "apt install ethtool")]
    checks = []
    for name in names[:8]:
        code, out = _run([ethtool, "-k", name])
        if code != 0:
            checks.append(Check(f"offloads {name}", "warn", "ethtool -k failed"))
            continue
        found = {}
        for line in out.splitlines():
            key, _, value = line.strip().partition(":")
            if key in _OFFLOADS:
                found[key] = value.split()[0] if value.split() else "?"
        value = ", ".join(f"{k} {v}" for k, v in found.items())
        advice = ""
        if (
            found.get("generic-receive-offload") == "on"
            or found.get("rx-udp-gro-forwarding") == "on"
        ):
            advice = (
                "GRO may hand the packet socket merged super-frames: the raw path drops and "
                "counts them (gso_unsplit); `ethtool -K IF gro off` if the counters show many"
            )
        checks.append(Check(f"offloads {name}", "ok", value or "none reported", advice))
    return checks


def check_busy_poll() -> list[Check]:
    """``net.core.busy_poll``/``busy_read`` (microseconds; 0 = off)."""
    poll = _read("/proc/sys/net/core/busy_poll")
    read = _read("/proc/sys/net/core/busy_read")
    if poll is None and read is None:
        # The sysctls belong to the initial network namespace only (net_core_table is registered
        # for init_net): absent in any other even when the kernel busy-polls. The socket option
        # says which it is.
        if _so_busy_poll_known():
            return [
                Check(
                    "busy-poll",
                    "ok",
                    "supported (SO_BUSY_POLL); net.core.busy_poll/busy_read are not visible in "
                    "this network namespace",
                    "the sysctls are set in the initial namespace; `busy_poll=` sets it per stack",
                )
            ]
        return [
            Check(
                "busy-poll", "missing", "sysctls absent", "kernel without CONFIG_NET_RX_BUSY_POLL"
            )
        ]
    value = f"busy_poll={poll} busy_read={read}"
    if poll in ("0", None) and read in ("0", None):
        return [
            Check(
                "busy-poll",
                "warn",
                value + " (off)",
                "optional: `sysctl net.core.busy_poll=50` trades CPU for latency on NICs with "
                "NAPI busy-poll support (no effect on veth)",
            )
        ]
    return [Check("busy-poll", "ok", value)]


def _so_busy_poll_known() -> bool:
    """Whether the kernel knows ``SO_BUSY_POLL`` (ENOPROTOOPT without CONFIG_NET_RX_BUSY_POLL)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL)
    except OSError:
        return False
    return True


def check_tools() -> list[Check]:
    """What ``python -m rawtransport bench`` uses."""
    checks = []
    for tool, why in (("ip", "iproute2: namespaces"), ("trafgen", "netsniff-ng: load generator"),
                      ("strace", "syscall counts"), ("taskset", "util-linux: CPU pinning")):  # fmt: skip
        path = shutil.which(tool)
        checks.append(
            Check(
                f"tool {tool}",
                "ok" if path else "warn",
                path or "not found",
                "" if path else f"bench uses it for {why}",
            )
        )
    import importlib.util

    for mod in ("uvloop", "trio", "matplotlib", "rich"):
        found = importlib.util.find_spec(mod) is not None
        checks.append(
            Check(
                f"python {mod}",
                "ok" if found else "warn",
                "installed" if found else "missing",
                "" if found else "pip install 'rawtransport[bench]'",
            )
        )
    return checks


def check_datapath() -> list[Check]:
    """Whether the compiled per-frame datapath runs (:mod:`rawtransport.datapath`)."""
    from rawtransport.datapath import DATAPATH, PURE_ENV

    if DATAPATH == "compiled":
        return [Check("datapath", "ok", DATAPATH)]
    advice = (
        f"unset {PURE_ENV} for the compiled path"
        if PURE_ENV in DATAPATH
        else "reinstall with gcc and the Python headers (apt-get install gcc python3-dev)"
    )
    return [Check("datapath", "warn", DATAPATH, advice)]


_TOPICS = (
    "privileges", "kernel", "tpacket", "nftables", "offloads", "busy_poll", "datapath", "tools",
)  # fmt: skip


def run_checks() -> list[Check]:
    """Every check, in report order; each one catches its own failures."""
    checks: list[Check] = []
    for topic in _TOPICS:
        try:
            checks += globals()[f"check_{topic}"]()
        except Exception as exc:  # a doctor must not crash on an odd machine
            checks.append(Check(topic, "warn", f"check failed: {exc}"))
    return checks


_MARK = {"ok": "ok  ", "warn": "warn", "missing": "MISS"}


def main(argv: list[str] | None = None) -> int:
    """Print the findings (``--json`` for machines). 0 if the raw path can run here, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m rawtransport doctor",
        description="What this machine allows the raw path, and what to do about what is missing.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    checks = run_checks()
    usable = any(c.name == "CAP_NET_RAW" and c.status == "ok" for c in checks)
    if args.json:
        print(json.dumps({"usable": usable, "checks": [asdict(c) for c in checks]}, indent=1))
    else:
        for c in checks:
            print(f"[{_MARK.get(c.status, c.status)}] {c.name}: {c.value}")
            if c.advice:
                print(f"       -> {c.advice}")
        print()
        print(
            "the raw path can run here"
            if usable
            else "the raw path cannot run here yet: CAP_NET_RAW is missing (see above)"
        )
    sys.stdout.flush()
    return 0 if usable else 1


if __name__ == "__main__":
    sys.exit(main())
