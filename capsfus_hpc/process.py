"""Whether a process of this host is alive (not gone, not a zombie): local tasks and queues."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    if not Path(f"/proc/{pid}").exists():
        return False
    try:
        # A zombie is a finished process whose parent has not reaped it yet.
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return os.path.exists(f"/proc/{pid}")
