"""Run state: one pure derivation used by status, submit, reduce (and later resume).

`derive_status` turns plain data (manifest, progress records, what the scheduler says of
each shard's task) into a RunStatus; `gather_status` is the I/O edge that collects that data.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from .manifest import Manifest
from .paths import RunPaths
from .progress import ProgressRecord, read_progress

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)

# A scheduler row is what a launcher knows of a shard's task: alive (RUNNING, PENDING) or not.
SCHEDULER_RUNNING = "RUNNING"
SCHEDULER_PENDING = "PENDING"
SCHEDULER_GONE = "GONE"  # the task's process no longer exists


@dataclass(frozen=True)
class ShardStatus:
    shard: int
    rows_total: int
    rows_done: int
    ok_rows: int
    state: str
    error: str | None
    attempts: int
    rate: float | None  # rows per second while working
    eta_s: float | None


@dataclass(frozen=True)
class RunStatus:
    shards: tuple[ShardStatus, ...]
    rows_total: int
    rows_done: int
    ok_rows: int
    counts: dict[str, int]
    rate: float | None
    eta_s: float | None

    @property
    def complete(self) -> bool:
        return self.counts[DONE] == len(self.shards)

    def as_dict(self) -> dict:
        return asdict(self)


def _shard_state(record: ProgressRecord | None, scheduler: str | None) -> tuple[str, str | None]:
    if record is not None and record.done:
        return DONE, None
    if scheduler == SCHEDULER_RUNNING:
        return RUNNING, None
    if scheduler == SCHEDULER_PENDING:
        return PENDING, None
    attempt = record.last_attempt if record else None
    if attempt is None:
        return PENDING, None
    if attempt.error is not None:
        return FAILED, attempt.error
    if attempt.ended_at is None:
        if scheduler == SCHEDULER_GONE:
            return FAILED, "the worker process died without reporting (killed or crashed)"
        return RUNNING, None
    return PENDING, None


def derive_status(manifest: Manifest, records: dict[int, ProgressRecord], scheduler: dict[int, str]) -> RunStatus:
    shards = []
    for shard in manifest.shards:
        record = records.get(shard.id)
        state, error = _shard_state(record, scheduler.get(shard.id))
        rows_done = record.rows_done if record else 0
        seconds = sum(c.seconds for c in record.chunks) if record else 0.0
        rate = rows_done / seconds if seconds > 0 else None
        eta = (shard.rows - rows_done) / rate if rate and state == RUNNING else None
        shards.append(ShardStatus(
            shard=shard.id, rows_total=shard.rows, rows_done=rows_done,
            ok_rows=sum(c.ok_rows for c in record.chunks) if record else 0, state=state, error=error,
            attempts=len(record.attempts) if record else 0, rate=rate, eta_s=eta,
        ))
    counts = {state: sum(1 for s in shards if s.state == state) for state in STATES}
    running_rates = [s.rate for s in shards if s.state == RUNNING and s.rate]
    rate = sum(running_rates) if running_rates else None
    rows_total = sum(s.rows_total for s in shards)
    rows_done = sum(s.rows_done for s in shards)
    return RunStatus(
        shards=tuple(shards), rows_total=rows_total, rows_done=rows_done,
        ok_rows=sum(s.ok_rows for s in shards), counts=counts, rate=rate,
        eta_s=(rows_total - rows_done) / rate if rate else None,
    )


def read_records(paths: RunPaths, manifest: Manifest) -> dict[int, ProgressRecord]:
    records = {}
    for shard in manifest.shards:
        record = read_progress(paths.progress(shard.id))
        if record is not None:
            records[shard.id] = record
    return records


def local_scheduler(records: dict[int, ProgressRecord]) -> dict[int, str]:
    """For attempts still open on this host, whether their process is alive."""
    host = socket.gethostname()
    rows = {}
    for shard_id, record in records.items():
        attempt = record.last_attempt
        if attempt and attempt.ended_at is None and attempt.host == host:
            rows[shard_id] = SCHEDULER_RUNNING if _alive(attempt.pid) else SCHEDULER_GONE
    return rows


def _alive(pid: int) -> bool:
    if not Path(f"/proc/{pid}").exists():
        return False
    try:
        # A zombie is a finished process whose parent has not reaped it yet.
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return os.path.exists(f"/proc/{pid}")


def gather_status(paths: RunPaths, manifest: Manifest, scheduler: dict[int, str] | None = None) -> RunStatus:
    """Status of a run from its folder; `scheduler` adds what a launcher knows of its tasks."""
    records = read_records(paths, manifest)
    rows = local_scheduler(records)
    rows.update(scheduler or {})
    return derive_status(manifest, records, rows)
