"""reduce --slurm on the real dev cluster: the same tasks as a local reduce, as dependent arrays,
give the same bytes."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from capsfus_hpc import reduce_plan
from capsfus_hpc.caption_rules import CaptionRules
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.launch import prepare_slurm
from capsfus_hpc.reduce import STATS_FILE, ReduceOptions, reduce_run
from capsfus_hpc.reduce_slurm import submit_reduce, wait_for_reduce
from capsfus_hpc.scheduler import NEVER_STARTS
from capsfus_hpc.settings import load_run
from capsfus_hpc.slurm import SlurmOptions

from ..conftest import make_run, run_with_official_captions, with_urls, write_parquet
from ..test_cli import assert_one_line_error, capsfus
from .test_slurm_runs import status_of, wait_until

OPTIONS = ReduceOptions(dedup_caption=True, write_duplicates=True, near_dup=0.9)


def _finished_run(tmp_path, real_records, smoke_model):
    rows = with_urls(real_records[:90], duplicate_every=4)
    rows[10]["laion_coco"] = ""  # an invalid input row
    source = write_parquet(tmp_path / "in.parquet", rows, row_group_rows=10)
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=20, chunk_rows=7)
    run_with_official_captions(paths, real_records)
    return paths


def _file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != STATS_FILE}


def test_reduce_on_slurm_arrays_is_byte_identical_to_the_local_reduce(tmp_path, real_records, smoke_model,
                                                                      monkeypatch):
    paths = _finished_run(tmp_path, real_records, smoke_model)
    local = reduce_run(paths, tmp_path / "local", OPTIONS, workers=1)
    # Small stages so each is a real array: several key tasks and several key partitions.
    monkeypatch.setattr(reduce_plan, "MIN_ROWS_PER_KEY_TASK", 15)
    monkeypatch.setattr(reduce_plan, "ROWS_PER_PARTITION", 25)
    jobs = submit_reduce(paths, tmp_path / "slurm", OPTIONS, SlurmOptions(cpus=1, mem="2G", time="10"), tasks=3)
    assert [job.stage for job in jobs] == ["keys", "dedup", "assemble"]
    assert jobs[0].tasks > 1 and jobs[1].tasks > 1
    stats = wait_for_reduce(tmp_path / "slurm", jobs)
    assert _file_bytes(tmp_path / "slurm") == _file_bytes(tmp_path / "local")
    assert {k: v for k, v in stats.items() if k != "run"} == {k: v for k, v in local.items() if k != "run"}
    assert stats["duplicates_by_kind"]["duplicate_key"] > 0
    assert sorted(p.name for p in (tmp_path / "slurm" / ".reduce").iterdir()) == ["logs"]


def test_reduce_slurm_command_waits_and_prints_the_stats(tmp_path, real_records, smoke_model):
    paths = _finished_run(tmp_path, real_records, smoke_model)
    rules = tmp_path / "rules.json"  # through plan.json to the tasks: the same rejects as a local reduce with them
    rules.write_text(json.dumps({"min_words": 13}))
    result = capsfus("reduce", paths.root, "--final", tmp_path / "final", "--slurm", "--wait", "--json",
                     "--cpus", 1, "--mem", "2G", "--time", 10, "--rules", rules)
    stats = json.loads(result.stdout)
    assert stats["rows_in"] == 90 == stats["rows_out"] + stats["rejected_total"] + stats["duplicates"]
    assert stats["rejected"]["synthetic_caption_empty"] == 1
    local = reduce_run(paths, tmp_path / "local", ReduceOptions(rules=CaptionRules(min_words=13)))
    assert stats["rejected"] == local["rejected"] and stats["rejected"]["caption_too_short"] > 0
    assert stats["rules"]["min_words"] == 13
    # status follows the three stages' jobs until SLURM has them all COMPLETED
    wait_until(lambda: all(job["states"] == {"COMPLETED": job["states"].get("COMPLETED", 0)}
                           for job in status_of(paths.root)["reduce_jobs"]), 60, "the reduce jobs to end")
    jobs = status_of(paths.root)["reduce_jobs"]
    assert [(job["stage"], job["final"]) for job in jobs] == [(stage, str(tmp_path / "final"))
                                                               for stage in ("keys", "dedup", "assemble")]
    assert all(job["states"].get("COMPLETED", 0) >= 1 for job in jobs)
    shown = capsfus("status", paths.root).stderr  # the table is for people: on stderr
    assert f"reduce assemble job {jobs[2]['job_id']} into {tmp_path / 'final'}: 1 COMPLETED" in " ".join(shown.split())


@pytest.mark.parametrize("kill", ["yes", "no"])
def test_a_failed_reduce_stage_stops_the_later_ones_and_status_watch_says_which(tmp_path, real_records, smoke_model,
                                                                                kill):
    paths = _finished_run(tmp_path, real_records, smoke_model)
    final = tmp_path / "final"
    held = SlurmOptions(cpus=1, mem="2G", time="10", extra=("--hold", f"--kill-on-invalid-dep={kill}"))
    jobs = submit_reduce(paths, final, OPTIONS, held, tasks=1)
    lost = paths.part(2, 1).read_bytes()
    paths.part(2, 1).unlink()  # planned, then lost before the keys stage reads it
    for job in jobs:
        subprocess.run(["scontrol", "release", job.job_id], check=True)
    with pytest.raises(CapsfusError, match=rf"keys task {jobs[0].job_id}: FAILED"):
        wait_for_reduce(final, jobs, poll_s=0.5)
    assert not (final / STATS_FILE).exists()
    paths.part(2, 1).write_bytes(lost)  # back (else status names that shard damaged first)
    # SLURM cancels the stages behind the failed one (our default), or keeps them queued, never to start
    # (slurmctld cancels them on its next pass over dependencies, so the states may need a moment to settle)
    behind = "CANCELLED" if kill == "yes" else NEVER_STARTS

    def stages():
        return {job["stage"]: job["states"] for job in status_of(paths.root)["reduce_jobs"]}
    wait_until(lambda: set(stages()["dedup"]) == set(stages()["assemble"]) == {behind}, 60,
               f"the stages behind the failed one to be {behind}")
    assert stages()["keys"] == {"FAILED": 1}
    watched = capsfus("status", paths.root, "--watch", 1, check=False)
    assert watched.returncode == 1
    assert watched.stderr.strip().splitlines()[-1] == (
        f"error: reduce keys job {jobs[0].job_id} into {final} failed; its log: {final / '.reduce' / 'logs'}")
    subprocess.run(["scancel", *[job.job_id for job in jobs]], check=True)


def test_no_second_reduce_into_a_folder_while_slurm_has_one_queued(tmp_path, real_records, smoke_model):
    paths = _finished_run(tmp_path, real_records, smoke_model)
    final = tmp_path / "final"
    earlier = reduce_run(paths, final, OPTIONS, workers=1)
    held = SlurmOptions(cpus=1, mem="2G", time="10", extra=("--hold",))
    jobs = submit_reduce(paths, final, OPTIONS, held, tasks=1)
    ids = [job.job_id for job in jobs]
    try:
        queued = ", ".join(f"{job.stage} job {job.job_id} (PENDING)" for job in jobs)
        with pytest.raises(CapsfusError, match=re.escape(f"a reduce into {final} is still queued or running: {queued}; "
                                                         f"wait for it, or scancel {' '.join(sorted(ids))}")):
            reduce_run(paths, final, OPTIONS, workers=1)
        refused = capsfus("reduce", paths.root, "--final", final, "--slurm", check=False)
        assert_one_line_error(refused, f"a reduce into {final} is still queued or running")
        settings, _ = load_run(paths)
        with pytest.raises(CapsfusError, match="is still queued or running"):  # submit --then-reduce
            prepare_slurm(paths, Path(settings.manifest), SlurmOptions(), 1, 50.0, final)
        assert json.loads((final / STATS_FILE).read_text()) == earlier  # the earlier dataset waits, whole
    finally:
        subprocess.run(["scancel", *ids], check=True)
    wait_until(lambda: not any(job["states"].get("PENDING") for job in status_of(paths.root)["reduce_jobs"]), 60,
               "the cancelled reduce jobs to leave the queue")
    assert reduce_run(paths, final, OPTIONS, workers=1) == earlier
