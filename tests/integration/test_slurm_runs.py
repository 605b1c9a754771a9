"""Runs on the real single-node SLURM cluster (slurm/dev-cluster): arrays, splitting, requeues,
cancellation and resume. Every row must be accounted for exactly once."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from capsfus_hpc import ledger
from capsfus_hpc.paths import RunPaths
from capsfus_hpc.progress import read_progress
from capsfus_hpc.reduce import DATA_FILE, REJECTS_FILE
from capsfus_hpc.slurm import max_array_size

from ..conftest import with_urls, write_parquet
from ..test_cli import capsfus

CHEAP = ["--cpus", 1, "--mem", "2G", "--time", 10]


def wait_until(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def status_of(run):
    return json.loads(capsfus("status", run, "--json").stdout)


def all_done(run):
    return lambda: status_of(run)["counts"]["done"] == len(status_of(run)["shards"])


def manifest_of(tmp_path, rows, rows_per_shard, row_group_rows=10):
    source = write_parquet(tmp_path / "in.parquet", rows, row_group_rows=row_group_rows)
    manifest = tmp_path / "m.json"
    capsfus("manifest", "build", source, "-o", manifest, "--rows-per-shard", rows_per_shard)
    return manifest


def test_an_array_of_8_shards_with_throttle_2_completes_and_reduces(tmp_path, real_records, smoke_model):
    manifest = manifest_of(tmp_path, with_urls(real_records[:80], duplicate_every=10), 10)
    run, final = tmp_path / "run it's; \"odd\" $x", tmp_path / "final"
    options = ["--model", smoke_model, "--greedy", "--max-new-tokens", 8, "--array-parallelism", 2, *CHEAP]
    plan = json.loads(capsfus("submit", manifest, "-o", run, *options, "--dry-run", "--json").stdout)
    assert not run.exists(), "a dry run leaves no files"
    assert [len(array) for array in plan["arrays"]] == [8] and "#SBATCH --array=0-7%2" in plan["scripts"][0]
    assert plan["test_only"][0].startswith("sbatch: Job")

    capsfus("submit", manifest, "-o", run, *options, "--then-reduce", final)
    fuse, reduce_job = ledger.read(RunPaths(run).ledger)
    assert (fuse.kind, reduce_job.kind) == (ledger.FUSE, ledger.REDUCE)
    assert (RunPaths(run).logs / f"{fuse.job_id}_submission.sh").read_text() == plan["scripts"][0]
    wait_until(lambda: (final / "stats.json").exists(), 300, "the reduce job after the array")
    stats = json.loads((final / "stats.json").read_text())
    assert stats["rows_in"] == 80 and stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] == 80
    status = status_of(run)
    assert status["counts"]["done"] == 8 and {s["slurm_state"] for s in status["shards"]} == {"COMPLETED"}
    wait_until(lambda: status_of(run)["reduce_jobs"][0]["states"] == {"COMPLETED": 1}, 60, "the reduce job's end")
    (job,) = status_of(run)["reduce_jobs"]
    assert job == {"job_id": reduce_job.job_id, "final": str(final), "stage": None, "states": {"COMPLETED": 1},
                   "submitted_at": reduce_job.submitted_at, "ended_at": job["ended_at"]}
    assert int(reduce_job.submitted_at) <= job["ended_at"] <= time.time()  # sacct's End, to the second
    assert status_of(run)["published"] == {str(final): (final / "stats.json").stat().st_mtime}


def test_more_shards_than_max_array_size_go_out_as_several_arrays(tmp_path):
    limit = max_array_size()
    count = limit + 7
    # Rows with an empty raw caption need no model, so each task is cheap.
    rows = [{"image_url": f"u{i}", "laion_2b": "", "laion_coco": "a caption"} for i in range(count)]
    manifest = manifest_of(tmp_path, rows, 1, row_group_rows=1)
    run = tmp_path / "run"
    capsfus("submit", manifest, "-o", run, "--model", "unused/model", "--array-parallelism", 2, *CHEAP)
    entries = ledger.read(RunPaths(run).ledger)
    assert [len(e.tasks) for e in entries] == [limit, 7]
    submitted = [shard for e in entries for _, shards in e.tasks for shard in shards]
    assert sorted(submitted) == list(range(count)), "every shard submitted exactly once"
    wait_until(all_done(run), 400, "all shards of both arrays")
    stats = json.loads(capsfus("reduce", run, "--final", tmp_path / "final", "--json").stdout)
    assert stats["rows_in"] == count and stats["rejected"] == {"raw_caption_empty": count}


def every_row_once(final, rows):
    """The contract: each input row in the data or in rejects, exactly once."""
    ids = pq.read_table(final / DATA_FILE).column("row_id").to_pylist()
    ids += pq.read_table(final / REJECTS_FILE).column("row_id").to_pylist()
    return sorted(ids) == list(range(rows))


def final_tables(final):
    return pq.read_table(final / DATA_FILE), pq.read_table(final / REJECTS_FILE)


def assert_same_dataset_as_an_undisturbed_run(tmp_path, run, manifest, options, rows):
    """The disturbed run reduces to every row once, and to the data and rejects of a clean run."""
    capsfus("reduce", run, "--final", tmp_path / "final")
    assert every_row_once(tmp_path / "final", rows)
    assert final_tables(tmp_path / "final") == _clean_local_run(tmp_path, manifest, options)


def _clean_local_run(tmp_path, manifest, options):
    """Data and rejects of the same run made undisturbed, on this machine."""
    clean = tmp_path / "clean"
    capsfus("submit", manifest, "-o", clean, *options, "--local")
    capsfus("reduce", clean, "--final", tmp_path / "clean-final")
    return final_tables(tmp_path / "clean-final")


def test_a_preempted_task_is_requeued_and_finishes_without_losing_or_repeating_rows(tmp_path, real_records,
                                                                                    smoke_model):
    manifest = manifest_of(tmp_path, with_urls(real_records[:240]), 240)
    options = ["--model", smoke_model, "--chunk-rows", 32, "--window-rows", 16, "--batch-size", 8]
    run = tmp_path / "run"
    capsfus("submit", manifest, "-o", run, *options, *CHEAP)
    paths = RunPaths(run)
    wait_until(lambda: (r := read_progress(paths.progress(0))) is not None and len(r.chunks) >= 2, 180,
               "two committed chunks")
    [entry] = ledger.read(paths.ledger)
    subprocess.run(["scontrol", "requeue", entry.tasks[0][0]], check=True)
    wait_until(all_done(run), 300, "the requeued task to finish")
    record = read_progress(paths.progress(0))
    assert record.attempts[0].stopped_by == "SIGTERM" and record.requeues >= 1
    assert status_of(run)["shards"][0]["requeues"] >= 1
    assert_same_dataset_as_an_undisturbed_run(tmp_path, run, manifest, options, 240)


def test_a_task_whose_time_limit_is_shorter_than_its_work_finishes_after_requeues(tmp_path, real_records,
                                                                                  smoke_model):
    # SLURM checks time limits every 30 s, so with a one-minute limit and the warning 45 s before
    # it, USR2 comes 15-45 s into each attempt. A slow model (4 s a window, 12 windows: 48 s and
    # more) cannot finish before it, so it needs several attempts (with 2 s a window one once did).
    manifest = manifest_of(tmp_path, with_urls(real_records[:96]), 96)
    options = ["--model", smoke_model, "--chunk-rows", 32, "--window-rows", 8, "--batch-size", 8,
               "--greedy", "--max-new-tokens", 8]
    run = tmp_path / "run"
    slow = {**os.environ, "CAPSFUS_FAULT": "sleep_per_window:4"}
    subprocess.run([sys.executable, "-m", "capsfus_hpc", "submit", manifest, "-o", run, *map(str, options),
                    "--cpus", "1", "--mem", "2G", "--time", "1", "--signal-delay", "45", "--max-requeues", "12"],
                   check=True, env=slow, capture_output=True)
    wait_until(all_done(run), 420, "the shard to finish across time-limit requeues")
    record = read_progress(RunPaths(run).progress(0))
    assert record.requeues >= 1 and all(a.stopped_by == "SIGUSR2" for a in record.attempts[:-1])
    assert status_of(run)["shards"][0]["requeues"] == record.requeues
    assert_same_dataset_as_an_undisturbed_run(tmp_path, run, manifest, options, 96)


def test_a_cancelled_shard_shows_cancelled_and_resume_resubmits_exactly_it(tmp_path, real_records, smoke_model):
    manifest = manifest_of(tmp_path, with_urls(real_records[:90]), 30)
    run = tmp_path / "run"
    options = ["--model", smoke_model, "--chunk-rows", 8, "--window-rows", 4, "--batch-size", 4]
    # A slow model (1 s a window, 8 windows a shard), so the cancel lands mid-shard: a fast one once
    # finished its last chunk after the SIGTERM, and the shard was done.
    subprocess.run([sys.executable, "-m", "capsfus_hpc", "submit", manifest, "-o", run, *map(str, options),
                    "--array-parallelism", "1", *map(str, CHEAP)], check=True, capture_output=True,
                   env={**os.environ, "CAPSFUS_FAULT": "sleep_per_window:1"})
    paths = RunPaths(run)
    [entry] = ledger.read(paths.ledger)
    wait_until(lambda: (r := read_progress(paths.progress(0))) is not None and r.chunks, 180, "shard 0 working")
    subprocess.run(["scancel", entry.tasks[0][0]], check=True)
    wait_until(lambda: [s["state"] for s in status_of(run)["shards"]] == ["failed", "done", "done"], 300,
               "shard 0 cancelled, shards 1 and 2 done")
    status = status_of(run)
    shard = status["shards"][0]
    assert shard["slurm_state"] == "CANCELLED" and shard["error"].startswith("CANCELLED")
    assert "stopped by SIGTERM" in status["log_tails"]["0"], "a failed shard shows the end of its task's log"
    assert 0 < shard["rows_done"] < 30, "the cancelled task committed what it had"
    plan = json.loads(capsfus("resume", run, "--dry-run", "--json").stdout)
    assert plan["arrays"] == [[[0]]]
    for inherited in ("--cpus-per-task=1", "--mem=2G", "--time=10"):  # from the submit, not given again
        assert f"#SBATCH {inherited}\n" in plan["scripts"][0]
    capsfus("resume", run)
    latest = ledger.read(paths.ledger)[-1]
    assert [shards for _, shards in latest.tasks] == [(0,)]
    wait_until(all_done(run), 240, "the resubmitted shard")
    assert_same_dataset_as_an_undisturbed_run(tmp_path, run, manifest, options, 90)


def test_a_resume_s_reduce_waits_for_the_shards_slurm_still_has(tmp_path, real_records, smoke_model):
    """Every shard is queued already, so the resume submits no array: its --then-reduce job must
    still wait for the queued ones, not start at once on an unfinished run and fail."""
    manifest = manifest_of(tmp_path, with_urls(real_records[:20]), 10)
    run, final = tmp_path / "run", tmp_path / "final"
    capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--greedy", "--max-new-tokens", 4, *CHEAP,
            "--sbatch-arg=--hold")
    [fuse] = ledger.read(RunPaths(run).ledger)
    try:
        not_held = ["--then-reduce", final, "--sbatch-arg=--comment=resumed"]  # replaces the inherited --hold
        dry = capsfus("resume", run, *not_held, "--dry-run").stdout
        assert f"# reduce job, after the run's jobs still queued or running ({fuse.job_id})" in dry
        assert f"#SBATCH --dependency=afterany:{fuse.job_id}\n" in dry
        capsfus("resume", run, *not_held)
        reduce_job = ledger.read(RunPaths(run).ledger)[-1]
        assert reduce_job.kind == ledger.REDUCE
        shown = subprocess.run(["scontrol", "show", "job", reduce_job.job_id], capture_output=True, text=True,
                               check=True).stdout
        assert f"Dependency=afterany:{fuse.job_id}" in shown and "JobState=PENDING" in shown
        subprocess.run(["scontrol", "release", fuse.job_id], check=True)
        wait_until(lambda: (final / "stats.json").exists(), 300, "the reduce job after the released array")
    finally:
        subprocess.run(["scancel", fuse.job_id], check=False)
    assert json.loads((final / "stats.json").read_text())["rows_in"] == 20 and every_row_once(final, 20)


def test_a_local_submit_leaves_the_shards_slurm_has_queued(tmp_path, real_records, smoke_model):
    manifest = manifest_of(tmp_path, with_urls(real_records[:40]), 20)
    run = tmp_path / "run"
    options = ["--model", smoke_model, "--greedy", "--max-new-tokens", 4]
    capsfus("submit", manifest, "-o", run, *options, *CHEAP, "--sbatch-arg=--begin=now+3600")  # held an hour
    [entry] = ledger.read(RunPaths(run).ledger)
    try:
        assert [s["state"] for s in status_of(run)["shards"]] == ["pending", "pending"]
        local = json.loads(capsfus("submit", manifest, "-o", run, *options, "--local", "--json").stdout)
        assert local["shards_run"] == []  # not run a second time here
    finally:
        subprocess.run(["scancel", entry.job_id], check=True)


def test_status_without_accounting_still_works_and_says_so(tmp_path, real_records, smoke_model):
    manifest = manifest_of(tmp_path, with_urls(real_records[:20]), 10)
    run = tmp_path / "run"
    capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--greedy", "--max-new-tokens", 8, *CHEAP)
    wait_until(all_done(run), 180, "both shards")
    subprocess.run(["pkill", "-x", "slurmdbd"], check=True)
    try:
        wait_until(lambda: subprocess.run(["pgrep", "-x", "slurmdbd"], capture_output=True).returncode != 0, 60,
                   "slurmdbd to exit")
        status = status_of(run)
        assert "no accounting" in status["note"]
        assert status["counts"]["done"] == 2 and {s["slurm_state"] for s in status["shards"]} == {None}
        assert "no accounting" in capsfus("status", run).stderr
    finally:
        restarted = subprocess.run(["slurm/dev-cluster/up"], capture_output=True, text=True,
                                   cwd=Path(__file__).resolve().parents[2])
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr


def _node() -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()[0]


def test_a_node_lost_mid_task_comes_back_and_the_run_completes(tmp_path, real_records, smoke_model):
    manifest = manifest_of(tmp_path, with_urls(real_records[:96]), 96)
    options = ["--model", smoke_model, "--chunk-rows", 16, "--window-rows", 8, "--batch-size", 8,
               "--greedy", "--max-new-tokens", 8]
    run = tmp_path / "run"
    slow = {**os.environ, "CAPSFUS_FAULT": "sleep_per_window:1"}
    subprocess.run([sys.executable, "-m", "capsfus_hpc", "submit", manifest, "-o", run, *map(str, options), *map(str, CHEAP)],
                   check=True, env=slow, capture_output=True)
    paths, node = RunPaths(run), _node()
    wait_until(lambda: (r := read_progress(paths.progress(0))) is not None and len(r.chunks) >= 2, 180,
               "two committed chunks")
    worker_pid = read_progress(paths.progress(0)).last_attempt.pid
    # The node goes away: its daemon and everything running on it die at once, and the
    # controller marks it DOWN, which requeues the job.
    subprocess.run(["pkill", "-9", "-x", "slurmd"], check=True)
    subprocess.run(["pkill", "-9", "-x", "slurmstepd"])
    subprocess.run(["kill", "-9", str(worker_pid)])
    try:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=capsfus node-lost test"],
                       check=True)
        wait_until(lambda: status_of(run)["shards"][0]["slurm_state"] in ("PENDING", "REQUEUED", None), 60,
                   "the task to be requeued off the lost node")
    finally:
        restarted = subprocess.run(["slurm/dev-cluster/up"], capture_output=True, text=True,
                                   cwd=Path(__file__).resolve().parents[2])
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"])
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    wait_until(all_done(run), 300, "the requeued task to finish on the returned node")
    record = read_progress(paths.progress(0))
    assert len(record.attempts) >= 2 and record.attempts[0].ended_at is None  # the first died with its node
    assert_same_dataset_as_an_undisturbed_run(tmp_path, run, manifest, options, 96)
