"""Whole runs through the command line: real captions, local submitit tasks, a SIGKILLed worker."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capsfus_hpc.paths import RunPaths
from capsfus_hpc.progress import read_progress
from capsfus_hpc.reduce import DATA_FILE, REJECTS_FILE
from capsfus_hpc.settings import open_or_create, requested_settings

from ..conftest import EXAMPLES_5K, make_run, run_with_official_captions, with_urls, write_parquet
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


def test_a_run_on_other_column_names_reads_only_those_columns(tmp_path, real_records, smoke_model):
    """--raw-column, --synthetic-column and --key-column, in parquet and JSON Lines, with decoy columns
    under the default names: a null laion_2b everywhere and one image_url shared by every row."""
    records = real_records[:20]
    rows = [{"url": f"https://example.org/{min(i, 4) if i == 5 else i}.jpg", "alt": r["laion_2b"],
             "blip": r["laion_coco"], "laion_2b": None, "laion_coco": "", "image_url": "https://example.org/same.jpg"}
            for i, r in enumerate(records)]
    rows[7]["alt"] = None
    parquet = write_parquet(tmp_path / "a.parquet", rows[:12], row_group_rows=4)
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows[12:]))
    manifest, run, final = tmp_path / "m.json", tmp_path / "run", tmp_path / "final"
    summary = json.loads(capsfus("manifest", "build", parquet, jsonl, "-o", manifest, "--rows-per-shard", 4,
                                 "--raw-column", "alt", "--synthetic-column", "blip", "--key-column", "url",
                                 "--json").stdout)
    assert summary["columns"] == {"raw_caption": "alt", "synthetic_caption": "blip", "key": "url"}
    capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--local", "--greedy", "--max-new-tokens", 4)
    stats = json.loads(capsfus("reduce", run, "--final", final, "--json").stdout)
    assert stats["rows_in"] == 20 == stats["rows_out"] + stats["rejected_total"] + stats["duplicates"]
    rejects = {r["row_id"]: r for r in pq.read_table(final / REJECTS_FILE).to_pylist()}
    assert rejects[7]["reject_reason"] == "raw_caption_null" and rejects[7]["reject_detail"] == "alt is null"
    assert [r for r in rejects.values() if not r["reject_reason"].startswith("caption_")] == [rejects[7]]
    kept = pq.read_table(final / DATA_FILE).to_pylist() + list(rejects.values())
    assert sorted(r["row_id"] for r in kept) == list(range(20))
    assert all(r["alt"] == rows[r["row_id"]]["alt"] and r["blip"] == rows[r["row_id"]]["blip"] for r in kept)
    assert all(r["prompt_tokens"] for r in kept if r["row_id"] != 7)

    # Keys: with captions that pass the rules (the release's), only url 4's second row is a duplicate.
    official = RunPaths(tmp_path / "official")
    open_or_create(official, requested_settings(manifest, str(smoke_model), None, num_beams=1), {"num_beams"})
    run_with_official_captions(official, [{**r, "laion_2b": row["alt"]} for r, row in zip(records, rows)])
    deduped = json.loads(capsfus("reduce", official.root, "--final", tmp_path / "official-final", "--json").stdout)
    assert deduped["duplicates_by_kind"] == {"duplicate_key": 1}  # the decoy image_url is shared by all 20
    [duplicate] = pq.read_table(tmp_path / "official-final" / REJECTS_FILE).filter(
        pc.field("reject_reason") == "duplicate_key").to_pylist()
    assert (duplicate["row_id"], duplicate["duplicate_of"]) == (5, 4)
