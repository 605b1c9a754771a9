"""Whole runs through the command line: real captions, local submitit tasks, a SIGKILLed worker."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from capsfus_hpc.progress import read_progress
from capsfus_hpc.reduce import DATA_FILE, REJECTS_FILE

from ..conftest import EXAMPLES_5K, make_run, with_urls, write_parquet
from ..test_cli import capsfus


def test_5000_real_records_are_all_accounted_for(tmp_path, smoke_model):
    manifest, run, final = tmp_path / "m.json", tmp_path / "run", tmp_path / "final"
    capsfus("manifest", "build", EXAMPLES_5K, "-o", manifest, "--rows-per-shard", 1250)
    capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--local", "--workers", 2, "--greedy",
            "--batch-size", 32)
    status = json.loads(capsfus("status", run, "--json").stdout)
    assert status["counts"]["done"] == 4 and status["rows_done"] == 5000
    stats = json.loads(capsfus("reduce", run, "--final", final, "--json").stdout)
    data, rejects = pq.read_table(final / DATA_FILE), pq.read_table(final / REJECTS_FILE)
    assert stats["rows_in"] == 5000
    assert stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] == 5000
    assert data.num_rows + rejects.num_rows == 5000
    assert sorted(data.column("row_id").to_pylist() + rejects.column("row_id").to_pylist()) == list(range(5000))
    # the official fused caption passes through beside ours
    assert data.column("capsfuion_official").null_count == 0


def _final_rows(run, final):
    capsfus("reduce", run, "--final", final)
    return pq.read_table(final / DATA_FILE), pq.read_table(final / REJECTS_FILE)


def test_a_worker_killed_mid_shard_and_restarted_gives_the_same_dataset(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:320], duplicate_every=9), row_group_rows=50)
    options = dict(rows_per_shard=320, chunk_rows=16, batch_size=8)
    clean = make_run(tmp_path, [source], smoke_model, name="clean", **options)
    paths = make_run(tmp_path, [source], smoke_model, name="killed", **options)
    killed = paths.root
    capsfus("work", clean.root, "--shard", 0)

    worker = subprocess.Popen([sys.executable, "-m", "capsfus_hpc", "work", str(killed), "--shard", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        record = read_progress(paths.progress(0))
        if record and len(record.chunks) >= 4:
            break
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    interrupted = read_progress(paths.progress(0))
    assert 4 <= len(interrupted.chunks) < 20, "the kill should land mid-shard"
    status = json.loads(capsfus("status", killed, "--json").stdout)
    assert status["shards"][0]["state"] == "failed" and "died" in status["shards"][0]["error"]
    refused = capsfus("reduce", killed, "--final", tmp_path / "early", check=False)
    assert refused.returncode == 1 and "shard 0: failed" in refused.stderr

    capsfus("work", killed, "--shard", 0)
    resumed = read_progress(paths.progress(0))
    assert resumed.chunks[: len(interrupted.chunks)] == interrupted.chunks  # committed chunks kept
    clean_data, clean_rejects = _final_rows(clean.root, tmp_path / "clean-final")
    killed_data, killed_rejects = _final_rows(killed, tmp_path / "killed-final")
    assert killed_data.equals(clean_data) and killed_rejects.equals(clean_rejects)
    assert killed_data.num_rows + killed_rejects.num_rows == 320
    assert pa.compute.sum(pa.compute.equal(killed_data.column("fused_caption"), clean_data.column("fused_caption"))).as_py() == killed_data.num_rows


def test_the_demo_runs_the_whole_flow(tmp_path):
    folder = tmp_path / "demo folder"
    result = capsfus("demo", folder)
    stats = json.loads((folder / "final" / "stats.json").read_text())
    assert stats["rows_in"] == 200 and stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] == 200
    assert "$ capsfus-hpc reduce" in result.stderr
    capsfus("demo", folder)  # a second demo in the same folder starts afresh
    assert_refuses_foreign = capsfus("demo", tmp_path, check=False)
    assert assert_refuses_foreign.returncode == 1 and "not a demo folder" in assert_refuses_foreign.stderr
