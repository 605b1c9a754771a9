"""Stopping early and cleanly, on a time-limit warning or a preemption.

SLURM sends SIGUSR2 `--signal-delay` seconds before the time limit (sbatch --signal=USR2@N) and
SIGTERM when it preempts, requeues or cancels a task, killing it KillWait seconds later. Either
sets the StopRequest. The worker then starts no new window, finishes the one in flight only if
it fits the deadline, commits the rows it has as a (possibly partial) chunk, and on SIGUSR2
requeues its own task, at most CAPSFUS_MAX_REQUEUES times.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from .errors import CapsfusError
from .slurm import MAX_REQUEUES_ENV, SIGNAL_DELAY_ENV

TERM_GRACE_S = 20.0  # SLURM's KillWait is usually 30 s
COMMIT_MARGIN_S = 8.0  # kept for committing and requeueing after the last window


class WindowAborted(Exception):
    """The window in flight would not finish before the deadline; its rows are redone later."""


class StopRequest:
    def __init__(self, signal_delay_s: float = 120.0, max_requeues: int = 5,
                 clock: Callable[[], float] = time.monotonic):
        self.signal_delay_s = signal_delay_s
        self.max_requeues = max_requeues
        self.clock = clock
        self.signal_name: str | None = None
        self.deadline: float | None = None
        self._previous: dict[int, object] = {}

    @classmethod
    def from_environment(cls) -> "StopRequest":
        return cls(float(os.environ.get(SIGNAL_DELAY_ENV, 120)), int(os.environ.get(MAX_REQUEUES_ENV, 5)))

    def install(self) -> "StopRequest":
        """Take SIGUSR2 and SIGTERM over from submitit, whose handlers requeue at once."""
        for signum in (signal.SIGUSR2, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            grace = self.signal_delay_s if signum == signal.SIGUSR2 else TERM_GRACE_S
            self.deadline = self.clock() + grace

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def wants_requeue(self) -> bool:
        return self.signal_name == "SIGUSR2"

    def fits(self, seconds: float | None) -> bool:
        """Whether work of about `seconds` (None: not known yet) ends before the deadline."""
        if not self.requested:
            return True
        left = self.deadline - self.clock() - COMMIT_MARGIN_S
        return left >= (seconds if seconds is not None else 30.0)

    def check_batch(self, seconds: float | None) -> None:
        """Called before each batch of a window: abort the window when the batch would not fit."""
        if self.requested and not self.fits(seconds):
            raise WindowAborted()


NEVER_STOP = StopRequest()


def restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", 0))


def requeue_own_task() -> None:
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise CapsfusError("asked to requeue, but this is not a SLURM task (no SLURM_JOB_ID)")
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise CapsfusError(f"scontrol requeue {job_id} failed: {result.stderr.strip()}")
