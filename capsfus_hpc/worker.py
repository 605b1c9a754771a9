"""The fusion worker: runs shards chunk by chunk, committing every chunk durably.

`run_shards` is the task function both launchers submit: module-level, plain arguments, and
everything else read from the run folder.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from . import __version__, faults
from .atomic import atomic_write_bytes, sha256_bytes
from .columns import (
    COMPLETION_TOKENS, DETAIL, FINISH_REASON, FUSED_CAPTION, INPUT_ERROR, PROMPT_TOKENS, REASON, ROW_ID,
    STATUS, STATUS_INVALID, STATUS_OK, ColumnMapping,
)
from .errors import CapsfusError
from .integrity import damaged_chunks
from .lease import LeaseLost, ShardLease
from .manifest import Manifest, verify_input
from .parquet_layout import part_bytes, schema_fingerprint
from .paths import RunPaths
from .permissions import check_folders, restrict_umask
from .preemption import NEVER_STOP, StopRequest, WindowAborted, requeue_own_task, restart_count
from .progress import Attempt, ChunkRecord, ProgressRecord, read_progress, write_progress
from .settings import RunSettings, load_run, refuse_drift
from .shard_reader import ShardReader
from .validate import PromptTooLong, input_problem

log = logging.getLogger(__name__)


def chunk_ranges(record: ProgressRecord, chunk_rows: int) -> list[tuple[int, int]]:
    """The uncommitted row-id ranges of a shard, cut on the grid shard start + k * chunk_rows."""
    ranges = []
    start = record.next_row_id
    while start < record.row_id_stop:
        grid_index = (start - record.row_id_start) // chunk_rows + 1
        stop = min(record.row_id_start + grid_index * chunk_rows, record.row_id_stop)
        ranges.append((start, stop))
        start = stop
    return ranges


def windows(start: int, stop: int, origin: int, window_rows: int) -> list[tuple[int, int]]:
    """[start, stop) cut on the grid origin + k * window_rows.

    Rows of one window are sorted and batched together, and an early stop commits whole
    windows only, so a stopped-and-resumed shard forms the same batches as an uninterrupted one.
    """
    cuts = []
    while start < stop:
        end = min(origin + ((start - origin) // window_rows + 1) * window_rows, stop)
        cuts.append((start, end))
        start = end
    return cuts


def fuse_chunk(table: pa.Table, row_id_start: int, columns: ColumnMapping, max_caption_chars: int,
               engine: Callable[[], object], window_cuts: list[tuple[int, int]] | None = None,
               stop: StopRequest = NEVER_STOP, started: bool = True) -> pa.Table:
    """One output row per input row: the input columns plus the fused caption and its status.

    With a stop request only the windows done in time are returned: a prefix of the chunk.
    `started` says whether this attempt already committed rows; until it has, one window is
    begun even after a stop request if it fits the deadline, so every attempt makes progress.
    """
    rows = table.num_rows
    raw = table.column(columns.raw_caption).to_pylist()
    synthetic = table.column(columns.synthetic_caption).to_pylist()
    staging_errors = table.column(INPUT_ERROR).to_pylist() if INPUT_ERROR in table.column_names else [None] * rows
    problems = [input_problem(raw[i], synthetic[i], staging_errors[i], columns, max_caption_chars) for i in range(rows)]
    fusions: dict = {}
    done = 0
    window_seconds = None
    for first, last in window_cuts or [(row_id_start, row_id_start + rows)]:
        if stop.requested and (started or done or not stop.fits(window_seconds)):
            break
        begun = time.perf_counter()
        valid = [i for i in range(first - row_id_start, last - row_id_start) if problems[i] is None]
        try:
            if valid:
                results = engine().fuse([(raw[i], synthetic[i]) for i in valid], before_batch=stop.check_batch)
                for i, result in zip(valid, results):
                    if isinstance(result, PromptTooLong):
                        problems[i] = (result.reason, result.detail)
                    else:
                        fusions[i] = result
        except WindowAborted:
            break
        faults.after_window()
        done = last - row_id_start
        window_seconds = time.perf_counter() - begun
    table, problems = table.slice(0, done), problems[:done]
    rows = done

    def column(value: Callable[[int], object], arrow_type: pa.DataType) -> pa.Array:
        return pa.array([value(i) for i in range(rows)], arrow_type)

    added = {
        FUSED_CAPTION: column(lambda i: fusions[i].fused_caption if i in fusions else None, pa.string()),
        STATUS: column(lambda i: STATUS_OK if i in fusions else STATUS_INVALID, pa.string()),
        REASON: column(lambda i: problems[i][0] if problems[i] else None, pa.string()),
        DETAIL: column(lambda i: problems[i][1] if problems[i] else None, pa.string()),
        FINISH_REASON: column(lambda i: fusions[i].finish_reason if i in fusions else None, pa.string()),
        PROMPT_TOKENS: column(lambda i: fusions[i].prompt_tokens if i in fusions else None, pa.int32()),
        COMPLETION_TOKENS: column(lambda i: fusions[i].completion_tokens if i in fusions else None, pa.int32()),
    }
    if INPUT_ERROR in table.column_names:
        table = table.drop_columns([INPUT_ERROR])
    table = table.add_column(0, ROW_ID, pa.array(range(row_id_start, row_id_start + rows), pa.int64()))
    for name, array in added.items():
        table = table.append_column(name, array)
    return table


def commit_chunk(paths: RunPaths, record: ProgressRecord, table: pa.Table, seconds: float,
                 index: int | None = None) -> ProgressRecord:
    """Make one chunk durable and return the progress record that now names it: the next chunk,
    or with `index`, a regenerated chunk in place of a damaged one."""
    data = part_bytes(table)
    replacing = index is not None
    index = len(record.chunks) if index is None else index
    row_ids = table.column(ROW_ID)
    chunk = ChunkRecord(
        index=index, row_id_start=row_ids[0].as_py(), row_id_stop=row_ids[-1].as_py() + 1,
        ok_rows=table.column(STATUS).to_pylist().count(STATUS_OK), sha256=sha256_bytes(data),
        bytes=len(data), seconds=round(seconds, 3), committed_at=time.time(),
        schema_sha256=schema_fingerprint(table.schema),
    )
    # Commit order, the contract resume relies on: the part file is durable under its final
    # name (temp, fsync, rename, fsync dir) BEFORE the progress record naming it is replaced
    # the same way. A crash in between leaves an orphan part that the redo overwrites; a crash
    # mid-write leaves a temporary file that the next attempt on the shard removes.
    atomic_write_bytes(paths.part(record.shard, index), data, midway=lambda: faults.reached("part_write"))
    faults.reached("part_renamed")
    record = record.with_chunk_replaced(chunk) if replacing else record.with_chunk(chunk)
    write_progress(paths.progress(record.shard), record, midway=lambda: faults.reached("progress_write"))
    faults.reached("progress_written")
    return record


class _LazyEngine:
    """Loads the model on first use, once per task, so finished or all-invalid shards cost nothing.
    Holds the token budget a shard's record says fits in GPU memory, for a requeued task."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self.engine = None
        self.token_cap: int | None = None

    def __call__(self):
        if self.engine is None:
            from .engine import FusionEngine

            refuse_drift(self.settings)  # raised again for each shard: each is recorded failed, with the reason
            self.engine = FusionEngine.load(self.settings)
            self._apply_cap()
        return self.engine

    def limit_tokens(self, budget: int) -> None:
        self.token_cap = budget if self.token_cap is None else min(self.token_cap, budget)
        if self.engine is not None:
            self._apply_cap()

    def _apply_cap(self) -> None:
        if self.token_cap is not None:
            log.info("token budget %d, remembered from an earlier out-of-memory", self.token_cap)
            self.engine.limit_tokens(self.token_cap)

    @property
    def fitted_tokens(self) -> int | None:
        return self.engine.fitted_tokens if self.engine is not None else None


def _remember_budget(record: ProgressRecord, engine: Callable) -> ProgressRecord:
    """The record with the token budget an out-of-memory left, if there is a new one."""
    budget = getattr(engine, "fitted_tokens", None)
    if budget is not None and budget != record.batch_tokens:
        return replace(record, batch_tokens=budget)
    return record


def _job_id() -> str | None:
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


def run_shard(paths: RunPaths, settings: RunSettings, manifest: Manifest, shard_id: int, engine: Callable,
              stop: StopRequest = NEVER_STOP) -> ProgressRecord:
    record = read_progress(paths.progress(shard_id)) or ProgressRecord.new(manifest.shard(shard_id))
    if record.done and not damaged_chunks(paths, record):
        log.info("shard %d: already done", shard_id)
        return record
    if (stops := record.time_limit_stops(_job_id())) > stop.max_requeues:  # this task, requeued for its other shards
        raise CapsfusError(_past_the_requeue_limit(stops, stop.max_requeues))
    # Nothing of the shard is touched before the lease is ours: a second writer leaves here.
    lease = ShardLease(paths.lease(shard_id), shard_id, _job_id()).acquire()
    try:
        return _run_leased(paths, settings, manifest, shard_id, engine, stop, lease)
    finally:
        lease.release()


def _run_leased(paths: RunPaths, settings: RunSettings, manifest: Manifest, shard_id: int, engine: Callable,
                stop: StopRequest, lease: ShardLease) -> ProgressRecord:
    shard = manifest.shard(shard_id)
    record = read_progress(paths.progress(shard_id)) or ProgressRecord.new(shard)  # again, under the lease
    damaged = damaged_chunks(paths, record)
    if record.done and not damaged:
        return record
    for leftover in paths.shard_dir(shard_id).glob(".*.tmp"):  # of an attempt killed mid-write
        leftover.unlink(missing_ok=True)
    record = record.with_attempt(Attempt(time.time(), socket.gethostname(), os.getpid(), _job_id(), restart_count()))
    write_progress(paths.progress(shard_id), record)
    if record.batch_tokens is not None and hasattr(engine, "limit_tokens"):
        engine.limit_tokens(record.batch_tokens)
    committed = 0
    try:
        input_file = manifest.files[shard.file]
        verify_input(input_file)
        reader = ShardReader(Path(input_file.path))
        offset = input_file.row_id_start
        for chunk in damaged:  # regenerated first, rows and batches as the first time
            log.warning("shard %d chunk %d: part damaged on disk; regenerating rows %d-%d", shard_id, chunk.index,
                        chunk.row_id_start, chunk.row_id_stop)
            began = time.perf_counter()
            table = reader.read(chunk.row_id_start - offset, chunk.row_id_stop - offset)
            cuts = windows(chunk.row_id_start, chunk.row_id_stop, record.row_id_start, settings.window_rows)
            fused = fuse_chunk(table, chunk.row_id_start, manifest.columns, settings.max_caption_chars, engine, cuts)
            lease.renew()
            record = _remember_budget(record, engine)
            record = commit_chunk(paths, record, fused, time.perf_counter() - began, index=chunk.index)
        for start, stop_row in chunk_ranges(record, settings.chunk_rows):
            if stop.requested and committed:
                break
            began = time.perf_counter()
            table = reader.read(start - offset, stop_row - offset)
            cuts = windows(start, stop_row, record.row_id_start, settings.window_rows)
            fused = fuse_chunk(table, start, manifest.columns, settings.max_caption_chars, engine, cuts, stop,
                               started=committed > 0)
            if fused.num_rows == 0:
                break
            lease.renew()  # raises if another writer took the shard over: nothing more is committed
            record = _remember_budget(record, engine)
            record = commit_chunk(paths, record, fused, time.perf_counter() - began)
            committed += fused.num_rows
            chunk = record.chunks[-1]
            log.info("shard %d chunk %d: rows %d-%d, %d ok, %.1f s", shard_id, chunk.index,
                     chunk.row_id_start, chunk.row_id_stop, chunk.ok_rows, chunk.seconds)
    except LeaseLost:
        raise  # the record is the new holder's now
    except BaseException as exc:
        message = str(exc) if isinstance(exc, CapsfusError) else f"{type(exc).__name__}: {exc}"
        write_progress(paths.progress(shard_id), record.with_attempt_ended(time.time(), message or type(exc).__name__))
        raise
    if stop.requested and not record.done:
        return _stopped(paths, record, stop)
    record = record.with_attempt_ended(time.time(), None)
    write_progress(paths.progress(shard_id), record)
    return record


def _stopped(paths: RunPaths, record: ProgressRecord, stop: StopRequest) -> ProgressRecord:
    """Close the attempt of a shard stopped early; past the requeue limit it is a failure.

    The limit counts this task's time-limit stops of the shard, not SLURM_RESTART_COUNT, which also
    counts preemptions: a shard preempted often still gets its --max-requeues time-limit requeues."""
    stops = record.time_limit_stops(_job_id()) + int(stop.wants_requeue)  # with this attempt's
    error = None
    if stop.wants_requeue and stops > stop.max_requeues:
        error = _past_the_requeue_limit(stops, stop.max_requeues)
    record = record.with_attempt_ended(time.time(), error, stopped_by=stop.signal_name)
    write_progress(paths.progress(record.shard), record)
    log.warning("shard %d: stopped by %s at row %d of %d-%d", record.shard, stop.signal_name,
                record.next_row_id, record.row_id_start, record.row_id_stop)
    if error:
        raise CapsfusError(error)
    return record


def _past_the_requeue_limit(stops: int, max_requeues: int) -> str:
    return (f"time limit reached with rows left after {stops - 1} time-limit requeues of this shard "
            f"(the limit, --max-requeues {max_requeues}); give tasks more --time or fewer rows")


def needs_requeue(stop: StopRequest, finished: dict[int, bool], shard_ids: list[int]) -> bool:
    """Whether a task stopped by a time-limit warning should run again: some of its shards are
    unsettled (neither done nor failed, or never reached).

    This cannot loop without progress: an attempt either finishes a shard or records a time-limit
    stop on the one in flight, which fails once it has more than --max-requeues of them."""
    unfinished = [shard for shard in shard_ids if not finished.get(shard, False)]
    return stop.wants_requeue and bool(unfinished)


def run_shards(run_dir: str, shard_ids: list[int]) -> dict[int, int]:
    """Task entry point: fuse the given shards of a run folder; returns committed rows per shard.

    A failing shard is recorded and the others still run; the task fails at the end if any did.
    On a time-limit warning or a preemption the task commits what it has and stops; on a
    time-limit warning it then requeues itself.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths = RunPaths(Path(run_dir))
    restrict_umask()
    check_folders(paths.root, paths.shards, paths.logs)
    settings, manifest = load_run(paths)
    if settings.package_version != __version__:
        log.warning("run.json was written by capsfus-hpc %s; this is %s", settings.package_version, __version__)
    engine = _LazyEngine(settings)
    stop = StopRequest.from_environment().install()
    records: dict[int, ProgressRecord] = {}
    failures: list[str] = []
    settled: dict[int, bool] = {}  # shard -> nothing more a requeue could do for it
    try:
        for shard_id in shard_ids:
            if stop.requested:
                break
            try:
                records[shard_id] = run_shard(paths, settings, manifest, shard_id, engine, stop)
                settled[shard_id] = records[shard_id].done
            except Exception as exc:  # recorded in the shard's progress; the next shard still runs
                settled[shard_id] = True
                log.error("shard %d failed: %s", shard_id, exc)
                if not isinstance(exc, CapsfusError):
                    log.error("%s", traceback.format_exc())
                failures.append(f"shard {shard_id}: {exc}")
    finally:
        stop.restore()
    # Every attempt is recorded before the requeue, since SLURM kills the task right after it.
    if needs_requeue(stop, settled, shard_ids):
        log.warning("requeueing this task (SLURM restart %d; at most %d time-limit requeues a shard)",
                    restart_count() + 1, stop.max_requeues)
        requeue_own_task()
    if failures:
        raise CapsfusError("; ".join(failures))
    return {shard: record.rows_done for shard, record in records.items()}
