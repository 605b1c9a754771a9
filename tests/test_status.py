import json
import os
import subprocess
import time

from capsfus_hpc.columns import ColumnMapping
from capsfus_hpc.fingerprint import Fingerprint
from capsfus_hpc.manifest import InputFile, Manifest, Shard
from capsfus_hpc.progress import Attempt, ChunkRecord, ProgressRecord
from capsfus_hpc.display import reduce_line
from capsfus_hpc.scheduler import GONE, ReduceJobState, TaskState
from capsfus_hpc.status import DAMAGED, DONE, FAILED, PENDING, RUNNING, derive_status, gather_status

SCHEDULER_RUNNING, SCHEDULER_PENDING, SCHEDULER_GONE = (TaskState("7_1", "RUNNING", True), TaskState("7_1", "PENDING", True),
                                                         TaskState("99", GONE))

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
    assert status.counts == {PENDING: 1, RUNNING: 1, DONE: 1, FAILED: 2, DAMAGED: 0}
    assert (status.rows_done, status.rows_total, status.ok_rows) == (250, 500, 245)
    assert not status.complete


def test_a_verified_damaged_part_makes_a_done_shard_damaged_but_not_a_running_one():
    records = {0: _record(0, 2, FINISHED), 1: _record(1, 1, OPEN)}
    status = derive_status(MANIFEST, records, {1: SCHEDULER_RUNNING}, damaged={0: "chunk 1 ...", 1: "chunk 0 ..."})
    assert [(s.state, s.error) for s in status.shards[:2]] == [(DAMAGED, "chunk 1 ..."), (RUNNING, None)]
    assert status.counts[DAMAGED] == 1 and not status.complete


def test_rate_and_eta_come_from_chunk_timings():
    status = derive_status(MANIFEST, {1: _record(1, 1, OPEN)}, {1: SCHEDULER_RUNNING})
    shard = status.shards[1]
    assert shard.rate == 10.0 and shard.eta_s == 5.0
    assert status.rate == 10.0 and status.eta_s == 45.0


def test_a_scheduler_that_says_queued_wins_over_an_old_failure():
    status = derive_status(MANIFEST, {2: _record(2, 1, BROKEN)}, {2: SCHEDULER_PENDING})
    assert status.shards[2].state == PENDING


def test_slurm_end_states_fail_a_shard_and_requeues_are_counted():
    stopped = Attempt(0.0, "node1", 1, "7_3", ended_at=5.0, stopped_by="SIGUSR2")
    record = _record(3, 1, stopped).with_attempt(OPEN)
    status = derive_status(MANIFEST, {3: record, 2: _record(2, 1, FINISHED)},
                           {3: TaskState("7_3", "CANCELLED"), 2: TaskState("7_2", "TIMEOUT")})
    assert (status.shards[3].state, status.shards[3].error) == (FAILED, "CANCELLED")
    assert (status.shards[3].requeues, status.shards[3].job_id, status.shards[3].slurm_state) == (1, "7_3", "CANCELLED")
    assert (status.shards[2].state, status.shards[2].error) == (FAILED, "TIMEOUT")
    requeued = derive_status(MANIFEST, {3: record}, {3: TaskState("7_3", "REQUEUED")})
    assert requeued.shards[3].state == PENDING


def test_a_requeue_limit_error_is_a_failure_even_when_slurm_says_completed():
    limit = Attempt(0.0, "node1", 1, "7_4", ended_at=5.0, error="time limit reached", stopped_by="SIGUSR2")
    status = derive_status(MANIFEST, {4: _record(4, 1, limit)}, {4: TaskState("7_4", "COMPLETED")})
    assert (status.shards[4].state, status.shards[4].error) == (FAILED, "time limit reached")


def test_all_done_is_complete():
    records = {i: _record(i, 2, FINISHED) for i in range(5)}
    status = derive_status(MANIFEST, records, {})
    assert status.complete and status.counts[DONE] == 5 and status.rate is None and status.eta_s is None


def test_a_worker_on_another_node_whose_lease_went_stale_is_failed_not_running(tmp_path, real_records, smoke_model):
    from capsfus_hpc.progress import write_progress
    from capsfus_hpc.settings import load_run

    from .conftest import make_run, with_urls, write_parquet

    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:20]))], smoke_model, 10)
    _, manifest = load_run(paths)
    for shard in (0, 1):
        record = ProgressRecord.new(manifest.shard(shard)).with_attempt(Attempt(0.0, "gpu-node-17", 4242, f"7_{shard}"))
        paths.shard_dir(shard).mkdir(parents=True, exist_ok=True)
        write_progress(paths.progress(shard), record)
    heartbeat = time.time() - 700  # the lease timeout is 600 s
    for shard, beat in ((0, heartbeat), (1, heartbeat + 650)):  # stopped renewing 700 s ago; 50 s ago: at work
        paths.lease(shard).write_text(json.dumps({"shard": shard, "job_id": f"7_{shard}", "host": "gpu-node-17",
                                                  "pid": 4242}))
        os.utime(paths.lease(shard), (beat, beat))  # the heartbeat is the file's modification time
    states = [(s.state, s.error) for s in gather_status(paths, manifest, slurm=False).shards]
    assert states == [(FAILED, "the worker process died without reporting (killed or crashed)"), (RUNNING, None)]


def test_a_run_is_settled_only_once_its_reduce_job_is_neither_pending_nor_running():
    records = {i: _record(i, 2, FINISHED) for i in range(5)}
    queued = ReduceJobState("61", "/data/final", None, {"PENDING": 1})
    assert not derive_status(MANIFEST, records, {}, reduce_jobs=(queued,)).settled
    ended = ReduceJobState("61", "/data/final", None, {"FAILED": 1})
    status = derive_status(MANIFEST, records, {}, reduce_jobs=(ended,))
    assert status.settled and list(status.as_dict()["reduce_jobs"]) == [
        {"job_id": "61", "final": "/data/final", "stage": None, "states": {"FAILED": 1}, "submitted_at": 0.0,
         "ended_at": None}]
    assert derive_status(MANIFEST, records, {}).settled
    assert not derive_status(MANIFEST, {**records, 4: _record(4, 1, OPEN)}, {}).settled


def test_a_pending_shard_no_scheduler_holds_is_stranded_and_leaves_the_run_settled():
    """A shard never submitted, or stopped (an attempt that ended without error) and not requeued,
    waits for a resume, not for SLURM: a watch must not wait for it forever."""
    done = {i: _record(i, 2, FINISHED) for i in range(3)}
    never, stopped = derive_status(MANIFEST, done, {}), derive_status(MANIFEST, {**done, 3: _record(3, 1, FINISHED)}, {})
    assert never.stranded == (3, 4) and never.settled
    assert stopped.stranded == (3, 4) and stopped.counts[PENDING] == 2 and stopped.settled
    queued = derive_status(MANIFEST, done, {3: SCHEDULER_PENDING, 4: TaskState("7_2", "PENDING")})  # 4: sacct only
    assert queued.stranded == () and not queued.settled


def test_only_the_latest_reduce_of_each_final_folder_counts_as_failed():
    records = {i: _record(i, 2, FINISHED) for i in range(5)}

    def failed(*jobs):
        return [job.job_id for job in derive_status(MANIFEST, records, {}, reduce_jobs=jobs).failed_reduces]

    whole_failed = ReduceJobState("61", "/f", None, {"FAILED": 1})
    staged = [ReduceJobState("70", "/f", "keys", {"FAILED": 1, "COMPLETED": 3}),
              ReduceJobState("71", "/f", "dedup", {"DEPENDENCY_NEVER_SATISFIED": 2}),
              ReduceJobState("72", "/f", "assemble", {"DEPENDENCY_NEVER_SATISFIED": 1})]
    rerun = [ReduceJobState("80", "/f", "keys", {"COMPLETED": 4}), ReduceJobState("81", "/f", "dedup", {"RUNNING": 2}),
             ReduceJobState("82", "/f", "assemble", {"PENDING": 1})]
    assert failed(whole_failed) == ["61"]
    assert failed(whole_failed, *staged) == ["70", "71", "72"]  # the stages of one reduce go together
    assert failed(whole_failed, *staged, *rerun) == []  # a later reduce into /f replaced them
    assert failed(whole_failed, ReduceJobState("90", "/other", None, {"COMPLETED": 1})) == ["61"]
    # A dataset published in /f after the job ended (by a local reduce: no job) ends it too; where
    # SLURM does not say when it ended, after it was submitted.
    submitted = ReduceJobState("62", "/f", None, {"FAILED": 1}, submitted_at=1000.0)
    ended = ReduceJobState("63", "/f", None, {"FAILED": 1}, submitted_at=1000.0, ended_at=5000.0)
    for job, published, named in ((submitted, {"/f": 1010.0}, []), (submitted, {"/f": 990.0}, ["62"]),
                                  (submitted, {"/other": 1010.0}, ["62"]),
                                  (ended, {"/f": 1010.0}, ["63"]),  # published while it waited, then it failed
                                  (ended, {"/f": 5010.0}, [])):
        assert [job.job_id for job in derive_status(MANIFEST, records, {}, reduce_jobs=(job,),
                                                    published=published).failed_reduces] == named


def test_a_reduce_job_reads_as_one_line_with_its_states_and_log():
    assert reduce_line(ReduceJobState("61", "/data/final", None, {"COMPLETED": 1}), None) == (
        "reduce job 61 into /data/final: [green]1 COMPLETED[/]")
    assert reduce_line(ReduceJobState("70", "/f", "keys", {"FAILED": 1, "COMPLETED": 3}), "/f/.reduce/logs") == (
        "reduce keys job 70 into /f: [red]3 COMPLETED, 1 FAILED[/]; log: /f/.reduce/logs")
    assert reduce_line(ReduceJobState("62", None, None, {}), None) == "reduce job 62: no SLURM state (no accounting)"


def test_a_then_reduce_waits_only_for_jobs_squeue_lists(tmp_path):
    """A local worker's id, or a job only sacct still knows, in a dependency makes sbatch refuse it."""
    from capsfus_hpc.launch import plan_slurm
    from capsfus_hpc.paths import RunPaths
    from capsfus_hpc.slurm import SlurmOptions

    tasks = {0: TaskState("8_0", "PENDING", True), 1: TaskState("4242", "RUNNING"),  # a local worker
             2: TaskState("6_2", "RUNNING"), 3: TaskState("9", "RUNNING", True)}  # 6_2: sacct only
    status = derive_status(MANIFEST, {}, tasks)
    plan = plan_slurm(RunPaths(tmp_path), status, SlurmOptions(), 1, 1000, 50.0, tmp_path / "final")
    assert plan.reduce_after == ("8", "9")
    assert "#SBATCH --dependency='afterany:<fuse job ids>:8:9'\n" in plan.scripts()[-1]


def test_a_resume_leaves_a_shard_to_the_task_squeue_lists_but_not_to_one_only_sacct_knows():
    """sacct can still call a task PENDING that the controller no longer has: nothing would run it."""
    from capsfus_hpc.launch import shards_to_run

    tasks = {0: TaskState("8_0", "PENDING", True), 1: TaskState("8_1", "PENDING"), 2: TaskState("8_2", "RUNNING", True)}
    status = derive_status(MANIFEST, {3: _record(3, 2, FINISHED)}, tasks)
    assert shards_to_run(status) == [1, 4]


def test_a_local_queue_holds_its_unstarted_shards_only_while_its_process_lives(tmp_path):
    from capsfus_hpc.local_queue import held_shards, holding
    from capsfus_hpc.paths import RunPaths

    paths = RunPaths(tmp_path)
    records = {0: _record(0, 2, FINISHED)}  # shard 0: started before the queue (a rerun would redo it)
    with holding(paths, [0, 1, 2]) as queue:
        assert held_shards(paths, records) == {0: queue.job_id, 1: queue.job_id, 2: queue.job_id}
        started = Attempt(time.time() + 1, queue.host, 1, None)  # shard 1: begun by the queue itself
        assert set(held_shards(paths, {**records, 1: _record(1, 0, started)})) == {0, 2}
    assert held_shards(paths, records) == {} and not list(paths.local_queues.iterdir())
    dead = subprocess.Popen(["true"])
    dead.wait()
    paths.local_queue(queue.host, dead.pid).write_text(json.dumps(
        {"host": queue.host, "pid": dead.pid, "started_at": 0.0, "shards": [3]}))  # left by a SIGKILLed driver
    assert held_shards(paths, records) == {}
    with holding(paths, [4]):  # the next local submit on the host clears it away
        assert [p.name for p in paths.local_queues.iterdir()] == [f"{queue.host}-{os.getpid()}.json"]


def test_slurm_speaks_for_its_own_tasks_and_a_live_local_run_for_itself():
    from capsfus_hpc.status import joined_tasks

    folder = {0: TaskState("local:41", "PENDING", queued=True), 1: TaskState("41", "RUNNING"),
              2: TaskState("7_2", "RUNNING"), 3: TaskState("41", GONE)}
    slurm = {shard: TaskState(f"7_{shard}", "FAILED") for shard in range(5)}
    joined = joined_tasks(folder, slurm)
    assert joined[0] == folder[0] and joined[1] == folder[1]  # a live local run started after task 7_x failed
    assert joined[2] == slurm[2]  # the same task: SLURM knows more than its process on this host
    assert joined[3] == slurm[3] and joined[4] == slurm[4]  # a gone process says nothing newer


def test_a_local_attempt_whose_pid_now_names_a_newer_process_is_failed_not_running(tmp_path, real_records, smoke_model):
    import socket

    from capsfus_hpc.progress import write_progress
    from capsfus_hpc.settings import load_run

    from .conftest import make_run, with_urls, write_parquet

    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:20]))], smoke_model, 10)
    _, manifest = load_run(paths)
    for shard, started in ((0, time.time() - 2 * 86400), (1, time.time())):  # this pid, two days ago; and now
        record = ProgressRecord.new(manifest.shard(shard)).with_attempt(Attempt(started, socket.gethostname(),
                                                                                os.getpid(), None))
        paths.shard_dir(shard).mkdir(parents=True, exist_ok=True)
        write_progress(paths.progress(shard), record)
    states = [(s.state, s.error) for s in gather_status(paths, manifest, slurm=False).shards]
    assert states == [(FAILED, "the worker process died without reporting (killed or crashed)"), (RUNNING, None)]


def test_every_committed_part_is_checked_and_each_damaged_shard_named_in_order(tmp_path, real_records):
    from capsfus_hpc.settings import load_run
    from capsfus_hpc.status import read_records, verify_parts

    from .conftest import make_run, run_with_official_captions, with_urls, write_parquet

    records = real_records[:40]
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(records))], "-", 4, chunk_rows=2)
    run_with_official_captions(paths, records)
    _, manifest = load_run(paths)
    on_disk = read_records(paths, manifest)
    for shard, chunk in ((7, 1), (2, 0), (9, 1)):
        part = paths.part(shard, chunk)
        part.write_bytes(part.read_bytes()[:-1] + b"\0")
    paths.part(2, 1).unlink()
    checked = []
    damaged = verify_parts(paths, on_disk, checked.append)
    assert list(damaged) == [2, 7, 9] and checked == list(range(1, 11))
    assert damaged[2].startswith("chunk 0 (rows 8-9), chunk 1 (rows 10-11) of shard 2: the part on disk does not match")


def test_status_without_verify_names_a_deleted_part_without_reading_any(tmp_path, real_records):
    """A deleted part is seen from its shard folder's listing; a changed one only by --verify."""
    from capsfus_hpc.settings import load_run

    from .conftest import make_run, run_with_official_captions, with_urls, write_parquet

    records = real_records[:20]
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(records))], "-", 4, chunk_rows=2)
    run_with_official_captions(paths, records)
    _, manifest = load_run(paths)
    paths.part(3, 1).unlink()
    paths.part(1, 0).write_bytes(b"not parquet")
    status = gather_status(paths, manifest, slurm=False)
    assert [s.state for s in status.shards] == [DONE, DONE, DONE, DAMAGED, DONE]
    assert status.shards[3].error == (f"chunk 1 (rows 14-15) of shard 3: the part is missing; capsfus-hpc resume "
                                      f"{paths.root} regenerates only these")
    assert [s.state for s in gather_status(paths, manifest, slurm=False, verify=True).shards] == [
        DONE, DAMAGED, DONE, DAMAGED, DONE]
