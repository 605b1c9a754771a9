"""Run state: one pure derivation used by status, submit, resume and reduce.

`derive_status` turns plain data (manifest, progress records, what the scheduler says of
each shard's task) into a RunStatus; `gather_status` is the I/O edge that collects that data.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import ledger, scheduler
from .integrity import damage_report, damaged_chunks, missing_chunks
from .lease import abandoned
from .local_queue import held_shards
from .manifest import Manifest
from .paths import ReducePaths, RunPaths
from .process import alive
from .progress import ProgressRecord, read_progress
from .reduce_publish import last_published_at
from .scheduler import FAILURE_STATES, GONE, MISSING, PENDING_STATES, RUNNING_STATES, ReduceJobState, TaskState

VERIFY_THREADS = 8
PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
DAMAGED = "damaged"  # a committed part is gone, or (status --verify) no longer matches its checksum
STATES = (PENDING, RUNNING, DONE, FAILED, DAMAGED)


@dataclass(frozen=True)
class ShardStatus:
    shard: int
    rows_total: int
    rows_done: int
    ok_rows: int
    state: str
    error: str | None
    attempts: int
    requeues: int  # attempts stopped by a time-limit or preemption signal
    job_id: str | None  # the task that last ran or will run the shard
    slurm_state: str | None
    rate: float | None  # rows per second while working
    eta_s: float | None
    queued: bool = False  # squeue lists its task now (a local worker never is)


@dataclass(frozen=True)
class RunStatus:
    shards: tuple[ShardStatus, ...]
    rows_total: int
    rows_done: int
    ok_rows: int
    counts: dict[str, int]
    rate: float | None
    eta_s: float | None
    note: str | None = None  # what the scheduler view lacked
    reduce_jobs: tuple[ReduceJobState, ...] = ()  # as SLURM sees them, in submission order
    published: dict[str, float] = field(default_factory=dict)  # a reduce job's final folder -> when a dataset was published there

    @property
    def complete(self) -> bool:
        return self.counts[DONE] == len(self.shards)

    @property
    def stranded(self) -> tuple[int, ...]:
        """Pending shards that no scheduler holds a task for: never submitted (an interrupted or
        partly refused submit), or stopped and not requeued. Only a resume runs them."""
        return tuple(s.shard for s in self.shards if s.state == PENDING and s.slurm_state not in PENDING_STATES)

    @property
    def settled(self) -> bool:
        """Nothing will change without a new command: no shard running or waiting in a queue, and
        no reduce job pending or running."""
        waiting = self.counts[PENDING] - len(self.stranded)
        return not waiting and not self.counts[RUNNING] and not any(j.active for j in self.reduce_jobs)

    @property
    def failed_reduces(self) -> tuple[ReduceJobState, ...]:
        """The failed jobs of each final folder's latest reduce (a whole one, or the stages from its
        keys stage on); a failure that a later reduce into the same folder followed (a SLURM one,
        or one whose dataset was published there after the job ended, as a local reduce) is
        history. (Where SLURM does not say when it ended, its submission stands in.)"""
        latest: dict[str | None, list[ReduceJobState]] = {}
        for job in self.reduce_jobs:
            if job.stage in (None, ledger.REDUCE_STAGES[0]) or job.final not in latest:
                latest[job.final] = []
            latest[job.final].append(job)
        return tuple(job for final, jobs in latest.items() for job in jobs
                     if job.failed and self.published.get(final or "", 0.0) <= (job.ended_at or job.submitted_at))

    def as_dict(self) -> dict:
        return asdict(self)


def _shard_state(record: ProgressRecord | None, task: TaskState | None) -> tuple[str, str | None]:
    attempt = record.last_attempt if record else None
    if record is not None and record.done:
        return DONE, None
    if task is not None and task.state in RUNNING_STATES:
        return RUNNING, None
    if task is not None and task.state in PENDING_STATES:
        return PENDING, None
    if task is not None and task.state == GONE:
        return FAILED, "the worker process died without reporting (killed or crashed)"
    if task is not None and task.state == MISSING:
        return FAILED, (f"task {task.job_id} is neither queued nor in SLURM's accounting "
                        "(cancelled before it started?)")
    if task is not None and task.state in FAILURE_STATES:
        return FAILED, f"{task.state}" + (f": {attempt.error}" if attempt and attempt.error else "")
    if attempt is None:
        return PENDING, None
    if attempt.error is not None:
        return FAILED, attempt.error
    if attempt.ended_at is None:
        return RUNNING, None
    return PENDING, None


def derive_status(manifest: Manifest, records: dict[int, ProgressRecord], tasks: dict[int, TaskState],
                  note: str | None = None, damaged: dict[int, str] | None = None,
                  reduce_jobs: tuple[ReduceJobState, ...] = (), published: dict[str, float] | None = None) -> RunStatus:
    """The state of every shard from plain data: progress records, what the scheduler says, and
    (when parts were verified) which shards hold damaged parts; reduce jobs, and when a dataset
    was published in their final folders, are passed through."""
    shards = []
    for shard in manifest.shards:
        record = records.get(shard.id)
        task = tasks.get(shard.id)
        state, error = _shard_state(record, task)
        if damaged and shard.id in damaged and state != RUNNING:
            state, error = DAMAGED, damaged[shard.id]
        rows_done = record.rows_done if record else 0
        seconds = sum(c.seconds for c in record.chunks) if record else 0.0
        rate = rows_done / seconds if seconds > 0 else None
        eta = (shard.rows - rows_done) / rate if rate and state == RUNNING else None
        shards.append(ShardStatus(
            shard=shard.id, rows_total=shard.rows, rows_done=rows_done,
            ok_rows=sum(c.ok_rows for c in record.chunks) if record else 0, state=state, error=error,
            attempts=len(record.attempts) if record else 0, requeues=record.requeues if record else 0,
            job_id=task.job_id if task else None, slurm_state=task.state if task and task.state != GONE else None,
            rate=rate, eta_s=eta, queued=bool(task and task.queued),
        ))
    counts = {state: sum(1 for s in shards if s.state == state) for state in STATES}
    running_rates = [s.rate for s in shards if s.state == RUNNING and s.rate]
    rate = sum(running_rates) if running_rates else None
    rows_total = sum(s.rows_total for s in shards)
    rows_done = sum(s.rows_done for s in shards)
    return RunStatus(
        shards=tuple(shards), rows_total=rows_total, rows_done=rows_done,
        ok_rows=sum(s.ok_rows for s in shards), counts=counts, rate=rate,
        eta_s=(rows_total - rows_done) / rate if rate else None, note=note, reduce_jobs=tuple(reduce_jobs),
        published=dict(published or {}),
    )


def read_records(paths: RunPaths, manifest: Manifest) -> dict[int, ProgressRecord]:
    records = {}
    for shard in manifest.shards:
        record = read_progress(paths.progress(shard.id))
        if record is not None:
            records[shard.id] = record
    return records


def rows_committed(paths: RunPaths, shard_ids: list[int]) -> int:
    """Rows the progress records of these shards name as committed."""
    return sum(record.rows_done for shard_id in set(shard_ids) if (record := read_progress(paths.progress(shard_id))))


def worker_tasks(paths: RunPaths, records: dict[int, ProgressRecord]) -> dict[int, TaskState]:
    """What the run folder says of attempts still open: on this host, whether their process is
    alive; elsewhere, gone if their lease's heartbeat stopped (where SLURM knows more, it wins).
    A shard a live local submit has yet to start is pending in its queue (local_queue.py)."""
    host = socket.gethostname()
    tasks = {shard: TaskState(job, "PENDING", queued=True) for shard, job in held_shards(paths, records).items()}
    for shard_id, record in records.items():
        attempt = record.last_attempt
        if not attempt or attempt.ended_at is not None or shard_id in tasks:
            continue  # (in tasks: an earlier attempt's, which the local queue will run again)
        job = attempt.job_id or str(attempt.pid)
        if attempt.host == host:
            tasks[shard_id] = TaskState(job, "RUNNING" if alive(attempt.pid, attempt.started_at) else GONE)
        elif abandoned(paths.lease(shard_id)):
            tasks[shard_id] = TaskState(job, GONE)
    return tasks


def joined_tasks(folder: dict[int, TaskState], slurm: dict[int, TaskState]) -> dict[int, TaskState]:
    """SLURM's word on each shard's latest task over the run folder's, except where a live process
    of another job holds the shard (a local run started since that task): that is the newer news."""
    joined = {**folder, **slurm}
    for shard, task in folder.items():
        if task.state != GONE and shard in slurm and slurm[shard].job_id != task.job_id:
            joined[shard] = task
    return joined


def verify_parts(paths: RunPaths, records: dict[int, ProgressRecord],
                 on_shards: Callable[[int], None] | None = None) -> dict[int, str]:
    """Shard -> what is damaged, for every shard with a committed part that no longer matches its
    checksum. Reads every part, a few shards at a time (hashing releases the GIL, and a parallel
    file system serves several readers faster than one); on_shards gets how many are checked."""
    damaged = {}
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:
        checks = {pool.submit(damaged_chunks, paths, record): shard_id for shard_id, record in records.items()}
        for count, check in enumerate(as_completed(checks), start=1):
            if bad := check.result():
                shard_id = checks[check]
                damaged[shard_id] = damage_report(paths, records[shard_id], bad)
            if on_shards:
                on_shards(count)
    return dict(sorted(damaged.items()))


def absent_parts(paths: RunPaths, records: dict[int, ProgressRecord]) -> dict[int, str]:
    """Shard -> what is missing, for every shard with a committed part no longer in its folder."""
    missing = {shard_id: damage_report(paths, record, gone, "the part is missing")
               for shard_id, record in records.items() if (gone := missing_chunks(paths, record))}
    return dict(sorted(missing.items()))


def gather_status(paths: RunPaths, manifest: Manifest, slurm: bool | None = None,
                  records: dict[int, ProgressRecord] | None = None, verify: bool = False,
                  on_verified: Callable[[int], None] | None = None) -> RunStatus:
    """Status of a run from its folder (or the records already read from it), joined with SLURM
    when the run has submitted jobs. Every committed part must be in its shard's folder; with
    verify, each is also checked against its checksum (reads them all; on_verified gets how
    many shards are checked)."""
    records = read_records(paths, manifest) if records is None else records
    damaged = verify_parts(paths, records, on_verified) if verify else absent_parts(paths, records)
    tasks = worker_tasks(paths, records)
    entries = ledger.read(paths.ledger)
    view = scheduler.query(entries) if entries and slurm is not False else scheduler.SchedulerView()
    published = {job.final: when for job in view.reduce_jobs
                 if job.final and (when := last_published_at(ReducePaths(Path(job.final)))) is not None}
    return derive_status(manifest, records, joined_tasks(tasks, view.tasks), view.note, damaged, view.reduce_jobs,
                         published)
