"""Cutting a process off from its database without a word, as when its host loses power or its
network: find its TCP connections in /proc, drop their packets both ways with nft."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def tcp_ports_to(pid: int, remote_port: int) -> set[int]:
    """The local ports of `pid`'s TCP connections to `remote_port`: its sockets' inodes (from
    /proc/<pid>/fd) looked up in /proc/net/tcp and tcp6."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def nft_unavailable() -> str | None:
    """Why nft cannot drop packets here (not installed, not root), or None when it can."""
    if shutil.which("nft") is None:
        return "nft is not installed (apt-get install nftables)"
    if os.geteuid() != 0:
        return "nft needs root (CAP_NET_ADMIN)"
    probe = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"nft does not work here: {probe.stderr.strip()}"
    return None


@contextlib.contextmanager
def dropped_tcp(local_ports: set[int], server_port: int) -> Iterator[None]:
    """Drop every packet between these local ports and the server's port, both ways, silently
    (no RST, no ICMP): what a host that lost power or its network looks like to its peer. On
    loopback both directions pass the output hook. The table is ours and always deleted."""
    table = f"gpuqueue_test_{os.getpid()}"
    ports = ", ".join(str(p) for p in sorted(local_ports))
    script = (
        f"add table inet {table}\n"
        f"add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}\n"
        f"add rule inet {table} out tcp sport {{ {ports} }} tcp dport {server_port} drop\n"
        f"add rule inet {table} out tcp sport {server_port} tcp dport {{ {ports} }} drop\n"
    )
    try:
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
