"""Launching shard tasks on this machine through submitit's LocalExecutor.

The tasks are real subprocesses running worker.run_shards, the same function a SLURM array
task runs; only the plain arguments (run folder, shard ids) are pickled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import submitit

from .errors import CapsfusError
from .paths import RunPaths
from .settings import load_run
from .status import DONE, RUNNING, RunStatus, gather_status
from .worker import run_shards


@dataclass(frozen=True)
class TaskOutcome:
    job_id: str
    shard_ids: tuple[int, ...]
    error: str | None  # last line of the task's failure, None on success


def shards_to_run(status: RunStatus) -> list[int]:
    """Shards neither done nor being worked on right now."""
    return [s.shard for s in status.shards if s.state not in (DONE, RUNNING)]


def group_shards(shard_ids: list[int], shards_per_task: int) -> list[list[int]]:
    if shards_per_task < 1:
        raise ValueError("shards_per_task must be at least 1")
    return [shard_ids[i : i + shards_per_task] for i in range(0, len(shard_ids), shards_per_task)]


def _failure(job: submitit.Job) -> str | None:
    """The task's own error: the last line of the traceback submitit relays, before its footer."""
    exception = job.exception()
    if exception is None:
        return None
    trace = str(exception).split("You can check full logs")[0]
    lines = [line for line in trace.splitlines() if line.strip() and not line.startswith((" ", "-"))]
    last = lines[-1] if lines else type(exception).__name__
    return last.removeprefix(f"{CapsfusError.__module__}.{CapsfusError.__name__}: ")


@contextmanager
def _threads_per_task(workers: int) -> Iterator[None]:
    """Tasks inherit the environment: share the cores instead of each spinning on all of them."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = previous or str(max(1, (os.cpu_count() or 1) // max(workers, 1)))
    try:
        yield
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]


def run_local(paths: RunPaths, groups: list[list[int]], workers: int = 1, timeout_min: float = 7 * 24 * 60,
              on_poll: Callable[[], None] | None = None, poll_s: float = 0.5) -> list[TaskOutcome]:
    """Run the shard groups as local tasks, at most `workers` at once; returns each task's outcome."""
    executor = submitit.LocalExecutor(folder=paths.logs)
    executor.update_parameters(timeout_min=timeout_min)
    queue = list(groups)
    running: list[tuple[submitit.Job, list[int]]] = []
    outcomes: list[TaskOutcome] = []
    while queue or running:
        while queue and len(running) < max(workers, 1):
            group = queue.pop(0)
            with _threads_per_task(workers):
                running.append((executor.submit(run_shards, str(paths.root), group), group))
        for job, group in [entry for entry in running if entry[0].done()]:
            running.remove((job, group))
            outcomes.append(TaskOutcome(str(job.job_id), tuple(group), _failure(job)))
        if on_poll:
            on_poll()
        if running:
            time.sleep(poll_s)
    return outcomes


def submit_local(paths: RunPaths, shards_per_task: int = 1, workers: int = 1,
                 on_poll: Callable[[], None] | None = None) -> tuple[list[int], list[TaskOutcome]]:
    """Run every shard of the run folder that is not done or running; returns (shards, outcomes)."""
    _, manifest = load_run(paths)
    shard_ids = shards_to_run(gather_status(paths, manifest))
    return shard_ids, run_local(paths, group_shards(shard_ids, shards_per_task), workers, on_poll=on_poll)
