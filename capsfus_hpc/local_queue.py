"""The shards a running `submit --local` still holds: they are queued there, not stranded.

A local submit runs its shard groups a few at a time from one process, so a shard it has not
started yet has no progress record and no task that status could see. While it runs, the
driver keeps DIR/local/<host>-<pid>.json naming every shard it was given (written atomically
before the first task starts, removed when the last ends). status reads a shard it names as
pending in that queue, and resume leaves it alone, as long as the driver's process lives and
the shard has not started since. A driver killed with SIGKILL leaves its file; a dead process
holds nothing, and the next local submit on this host removes the file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from .atomic import atomic_write_json
from .paths import RunPaths
from .progress import ProgressRecord
from .process import alive


@dataclass(frozen=True)
class LocalQueue:
    host: str
    pid: int
    started_at: float
    shards: tuple[int, ...]

    @property
    def job_id(self) -> str:
        return f"local:{self.pid}"


@contextmanager
def holding(paths: RunPaths, shard_ids: list[int]) -> Iterator[LocalQueue]:
    """Name these shards as this process's queue while the block runs."""
    queue = LocalQueue(socket.gethostname(), os.getpid(), time.time(), tuple(shard_ids))
    path = paths.local_queue(queue.host, queue.pid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    for stale in _queues(paths):
        if stale.host == queue.host and not alive(stale.pid, stale.started_at):
            paths.local_queue(stale.host, stale.pid).unlink(missing_ok=True)
    atomic_write_json(path, asdict(queue))
    try:
        yield queue
    finally:
        path.unlink(missing_ok=True)


def held_shards(paths: RunPaths, records: dict[int, ProgressRecord]) -> dict[int, str]:
    """Shard -> the job id of the live local queue that has yet to start it. A queue on another
    host cannot be checked from here and is not counted."""
    host = socket.gethostname()
    held = {}
    for queue in _queues(paths):
        if queue.host != host or not alive(queue.pid, queue.started_at):
            continue
        for shard in queue.shards:
            attempt = records[shard].last_attempt if shard in records else None
            if attempt is None or attempt.started_at < queue.started_at:  # an earlier attempt's outcome is history
                held[shard] = queue.job_id
    return held


def _queues(paths: RunPaths) -> list[LocalQueue]:
    queues = []
    for path in sorted(paths.local_queues.glob("*.json")) if paths.local_queues.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            queues.append(LocalQueue(str(data["host"]), int(data["pid"]), float(data["started_at"]),
                                     tuple(int(s) for s in data["shards"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a file being replaced, or not ours: it holds nothing
    return queues
