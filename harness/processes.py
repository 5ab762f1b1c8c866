"""What the processes the tests and the benchmark start share with this one: the repository they
run from, their memory read from /proc, and the open-files limit they inherit."""

from __future__ import annotations

import resource
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def raise_open_files_limit(wanted: int | None = None) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it) to `wanted`, or to the hard
    limit when not given (65536 when that is unlimited), never above the hard limit; returns the
    new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:
        wanted = 1 << 16 if hard == resource.RLIM_INFINITY else hard
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """Resident set size from /proc/<pid>/status (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS line for pid {pid}")
