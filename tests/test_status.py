from capsfus_hpc.columns import ColumnMapping
from capsfus_hpc.inputs import Fingerprint
from capsfus_hpc.manifest import InputFile, Manifest, Shard
from capsfus_hpc.progress import Attempt, ChunkRecord, ProgressRecord
from capsfus_hpc.status import (
    DONE, FAILED, PENDING, RUNNING, SCHEDULER_GONE, SCHEDULER_PENDING, SCHEDULER_RUNNING, derive_status,
)

MANIFEST = Manifest(
    columns=ColumnMapping(), rows_per_shard=100,
    files=(InputFile(0, "a.parquet", "a.parquet", "parquet", 500, 0, True, Fingerprint(1, 1, "f")),),
    shards=tuple(Shard(i, 0, i * 100, (i + 1) * 100, i * 100) for i in range(5)),
)


def _record(shard, chunks, attempt):
    record = ProgressRecord.new(MANIFEST.shards[shard])
    for index in range(chunks):
        start = shard * 100 + index * 50
        record = record.with_chunk(ChunkRecord(index, start, start + 50, 49, "h", 10, 5.0, 1.0))
    return record.with_attempt(attempt) if attempt else record


OPEN = Attempt(0.0, "node1", 1, "7_1")
FINISHED = Attempt(0.0, "node1", 1, "7_1", ended_at=9.0)
BROKEN = Attempt(0.0, "node1", 1, "7_1", ended_at=9.0, error="input a.parquet was deleted")


def test_each_state_is_derived_from_plain_data():
    records = {0: _record(0, 2, FINISHED), 1: _record(1, 1, OPEN), 2: _record(2, 1, BROKEN), 3: _record(3, 1, OPEN)}
    status = derive_status(MANIFEST, records, {1: SCHEDULER_RUNNING, 3: SCHEDULER_GONE})
    states = {s.shard: (s.state, s.error) for s in status.shards}
    assert states == {
        0: (DONE, None), 1: (RUNNING, None), 2: (FAILED, "input a.parquet was deleted"),
        3: (FAILED, "the worker process died without reporting (killed or crashed)"), 4: (PENDING, None),
    }
    assert status.counts == {PENDING: 1, RUNNING: 1, DONE: 1, FAILED: 2}
    assert (status.rows_done, status.rows_total, status.ok_rows) == (250, 500, 245)
    assert not status.complete


def test_rate_and_eta_come_from_chunk_timings():
    status = derive_status(MANIFEST, {1: _record(1, 1, OPEN)}, {1: SCHEDULER_RUNNING})
    shard = status.shards[1]
    assert shard.rate == 10.0 and shard.eta_s == 5.0
    assert status.rate == 10.0 and status.eta_s == 45.0


def test_a_scheduler_that_says_queued_wins_over_an_old_failure():
    status = derive_status(MANIFEST, {2: _record(2, 1, BROKEN)}, {2: SCHEDULER_PENDING})
    assert status.shards[2].state == PENDING


def test_all_done_is_complete():
    records = {i: _record(i, 2, FINISHED) for i in range(5)}
    status = derive_status(MANIFEST, records, {})
    assert status.complete and status.counts[DONE] == 5 and status.rate is None and status.eta_s is None
