"""Whether a process of this host is alive (not gone, not a zombie, not a newer process that was
given the same pid): local tasks, queues and leases."""

from __future__ import annotations

import os
from pathlib import Path

# A start time is boot time (/proc/stat, whole seconds, and moved when the clock is stepped) plus
# ticks: read later than it was, it may have drifted by a clock step. A reused pid is a process
# started long after the one it replaces; a live worker must not be judged gone by a small step.
CLOCK_SLACK_S = 60.0


def started_at(pid: int) -> float | None:
    """When the process started (seconds since the epoch), or None if that cannot be read."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])  # field 22, starttime
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int, since: float | None = None) -> bool:
    """Whether `pid` runs; with `since` (when the process was known to run), only if the process
    with that pid now started by then: pids are reused, and a later one is someone else."""
    if not Path(f"/proc/{pid}").exists():
        return False
    try:
        # A zombie is a finished process whose parent has not reaped it yet.
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z":
            return False
    except (OSError, IndexError):
        return os.path.exists(f"/proc/{pid}")
    start = started_at(pid) if since is not None else None
    return start is None or start <= since + CLOCK_SLACK_S
