from capsfus_hpc.ledger import FUSE, REDUCE, Submission
from datetime import datetime

from capsfus_hpc.scheduler import (NEVER_STARTS, ReduceJobState, parse_sacct, parse_sacct_ends, parse_squeue, reduce_jobs,
                                   shard_tasks)


def test_squeue_lines_give_each_array_task_its_state():
    assert parse_squeue("12_0|RUNNING|None\n12_3|PENDING|JobArrayTaskLimit\n15|PENDING|Dependency\n"
                        "16_0|PENDING|DependencyNeverSatisfied\n17|RUNNING\n") == {
        "12_0": "RUNNING", "12_3": "PENDING", "15": "PENDING", "16_0": NEVER_STARTS, "17": "RUNNING"}


def test_sacct_states_are_read_per_task_and_grouped_records_expanded():
    text = "19_0|COMPLETED\n19_1|CANCELLED by 0\n19_[2-3%2]|CANCELLED by 0\n19_2|RUNNING\n20|TIMEOUT\n21_[5,7-8]|PENDING\n"
    assert parse_sacct(text) == {
        "19_0": "COMPLETED", "19_1": "CANCELLED", "19_2": "RUNNING", "19_3": "CANCELLED", "20": "TIMEOUT",
        "21_5": "PENDING", "21_7": "PENDING", "21_8": "PENDING"}


def test_sacct_end_times_are_read_for_the_tasks_that_ended():
    text = ("19_0|COMPLETED|2026-12-07T15:30:55\n19_1|RUNNING|Unknown\n19_[2-3%2]|PENDING|None\n"
            "20|FAILED|2026-12-07T16:00:00\n21|PENDING\n")
    assert parse_sacct_ends(text) == {"19_0": datetime(2026, 12, 7, 15, 30, 55).timestamp(),
                                      "20": datetime(2026, 12, 7, 16, 0).timestamp()}
    assert parse_sacct(text)["19_0"] == "COMPLETED"  # the states read the same with the End column


def test_a_reduce_job_ended_when_its_last_task_did():
    entries = [Submission("70", REDUCE, (("70_0", ()), ("70_1", ())), 2.0, final="/f", stage="keys"),
               Submission("71", REDUCE, (("71", ()),), 3.0, final="/f", stage="dedup")]
    sacct = {"70_0": "COMPLETED", "70_1": "FAILED", "71": "CANCELLED"}
    jobs = reduce_jobs(entries, {}, sacct, ends={"70_0": 100.0, "70_1": 160.0})
    assert [(job.job_id, job.ended_at) for job in jobs] == [("70", 160.0), ("71", None)]


def test_a_shard_takes_the_state_of_its_latest_task_squeue_first():
    entries = [Submission("30", FUSE, (("30_0", (0, 1)), ("30_1", (2,))), 1.0),
               Submission("31", FUSE, (("31", (2,)),), 2.0)]
    tasks = shard_tasks(entries, {"31": "PENDING"}, {"30_0": "COMPLETED", "30_1": "CANCELLED", "31": "CANCELLED"})
    assert {shard: (t.job_id, t.state) for shard, t in tasks.items()} == {
        0: ("30_0", "COMPLETED"), 1: ("30_0", "COMPLETED"), 2: ("31", "PENDING")}


def test_a_submitted_task_unknown_to_squeue_and_sacct_is_missing_but_only_with_accounting():
    entries = [Submission("50", FUSE, (("50_0", (0,)), ("50_1", (1,))), 1.0)]
    with_accounting = shard_tasks(entries, {}, {"50_0": "COMPLETED"})
    assert (with_accounting[1].job_id, with_accounting[1].state) == ("50_1", "MISSING")
    assert shard_tasks(entries, {}, None) == {}


def test_reduce_jobs_count_their_tasks_states_and_say_whether_they_are_active_or_failed():
    entries = [Submission("60", FUSE, (("60_0", (0,)),), 1.0),
               Submission("61", REDUCE, (("61", ()),), 1.0, final="/data/final"),
               Submission("70", REDUCE, (("70_0", ()), ("70_1", ()), ("70_2", ())), 2.0, final="/f", stage="keys"),
               Submission("71", REDUCE, (("71_0", ()),), 2.0, final="/f", stage="dedup")]
    jobs = reduce_jobs(entries, {"70_2": "RUNNING", "71_0": NEVER_STARTS},
                       {"60_0": "COMPLETED", "61": "COMPLETED", "70_0": "COMPLETED", "70_1": "FAILED"})
    assert jobs == (ReduceJobState("61", "/data/final", None, {"COMPLETED": 1}, 1.0),
                    ReduceJobState("70", "/f", "keys", {"COMPLETED": 1, "FAILED": 1, "RUNNING": 1}, 2.0),
                    ReduceJobState("71", "/f", "dedup", {NEVER_STARTS: 1}, 2.0))
    assert [(job.active, job.failed) for job in jobs] == [(False, False), (True, True), (False, True)]
    assert reduce_jobs(entries, {}, {})[0].states == {"MISSING": 1}
    assert reduce_jobs(entries, {}, None)[0].states == {}  # no accounting: an ended task has no state


def test_a_stage_behind_one_that_never_starts_never_starts_either():
    stages = [Submission(job, REDUCE, ((f"{job}_0", ()),), 2.0, final="/f", stage=stage)
              for job, stage in (("70", "keys"), ("71", "dedup"), ("72", "assemble"))]
    # keys failed; SLURM gives dedup DependencyNeverSatisfied but assemble a plain Dependency
    jobs = reduce_jobs(stages, {"71_0": NEVER_STARTS, "72_0": "PENDING"}, {"70_0": "FAILED"})
    assert [job.states for job in jobs] == [{"FAILED": 1}, {NEVER_STARTS: 1}, {NEVER_STARTS: 1}]
    assert not any(job.active for job in jobs)
    # a later reduce --slurm into /f is a new chain: its assemble waits on its own dedup
    rerun = [Submission(job, REDUCE, ((f"{job}_0", ()),), 3.0, final="/f", stage=stage)
             for job, stage in (("80", "keys"), ("81", "dedup"), ("82", "assemble"))]
    jobs = reduce_jobs(stages + rerun, {"71_0": NEVER_STARTS, "72_0": "PENDING", "80_0": "RUNNING", "81_0": "PENDING",
                                        "82_0": "PENDING"}, {"70_0": "FAILED"})
    assert [job.states for job in jobs[3:]] == [{"RUNNING": 1}, {"PENDING": 1}, {"PENDING": 1}]
