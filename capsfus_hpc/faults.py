"""Fault injection for tests, through the CAPSFUS_FAULT environment variable (unset in real runs).

  CAPSFUS_FAULT=sleep_per_window:SECONDS   sleep after each window, as a slow model would
  CAPSFUS_FAULT=oom_above:N                a generate call whose KV cache holds more than N tokens
                                           (batching.kv_tokens) runs out of GPU memory
                                           (torch.OutOfMemoryError), as on a small GPU
  CAPSFUS_FAULT=crash_at:STEP@N            SIGKILL this process the Nth time it reaches STEP:
      window            a window of rows has been fused (not committed yet)
      part_write        halfway through writing a part's temporary file
      part_renamed      the part is in place; the progress record does not name it yet
      progress_write    halfway through writing the progress record's temporary file
      progress_written  the progress record names the new part
      publish           (reduce) the earlier stats.json is gone and one new file moved into FINAL

It travels to SLURM tasks with the submitting environment (sbatch --export=ALL, the default).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

FAULT_ENV = "CAPSFUS_FAULT"
CRASH_STEPS = ("window", "part_write", "part_renamed", "progress_write", "progress_written")  # of a worker
REDUCE_CRASH_STEPS = ("publish",)
_reached: Counter = Counter()


def _value(name: str) -> str | None:
    for item in os.environ.get(FAULT_ENV, "").split(","):
        key, _, value = item.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def after_window() -> None:
    seconds = _value("sleep_per_window")
    if seconds:
        time.sleep(float(seconds))
    reached("window")


def reached(step: str) -> None:
    """A named point of the worker (or of a reduce); with crash_at set to it, the Nth call kills the process."""
    spec = _value("crash_at")
    if not spec:
        return
    name, _, count = spec.partition("@")
    if name != step:
        return
    _reached[step] += 1
    if _reached[step] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def simulated_oom(kv_tokens: int) -> bool:
    """Whether a generate call whose KV cache holds `kv_tokens` should fail as out of memory."""
    limit = _value("oom_above")
    return limit is not None and kv_tokens > int(limit)
