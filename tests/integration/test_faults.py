"""Faults injected and survived: SIGKILL at exact points of a worker (CAPSFUS_FAULT=crash_at:STEP@N),
parts damaged on disk, an input deleted. Whatever happened, a restart (or resume) and a reduce
give the same bytes as an undisturbed run."""

import json
import os
import random
import re
import subprocess
import sys

import pytest

from capsfus_hpc.faults import CRASH_STEPS, FAULT_ENV
from capsfus_hpc.paths import RunPaths
from capsfus_hpc.progress import read_progress
from capsfus_hpc.reduce import ReduceOptions, reduce_run

from ..conftest import EXAMPLES_5K, REPO, make_run, run_with_official_captions, with_urls, write_parquet
from ..test_cli import capsfus

ROWS, CHUNK_ROWS, WINDOW_ROWS = 96, 16, 8  # 6 chunks of 2 windows each
# The worker as a separate process, so SIGKILL takes it down for real; the model is replaced by
# the released captions so the bytes depend only on what was committed.
# (conftest's ReplayEngine, without importing torch: a third of a second to start, not five.)
WORKER = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from capsfus_hpc.paths import RunPaths
from capsfus_hpc.settings import load_run
from capsfus_hpc.worker import run_shard
official = {(r["laion_2b"], r["laion_coco"]): r["capsfuion_official"] for r in json.loads(Path(sys.argv[2]).read_text())}
class Replay:
    def fuse(self, pairs, before_batch=None):
        return [SimpleNamespace(fused_caption=official[p], finish_reason="eos", prompt_tokens=100, completion_tokens=30)
                for p in pairs]
paths = RunPaths(Path(sys.argv[1]))
settings, manifest = load_run(paths)
engine = Replay()
run_shard(paths, settings, manifest, 0, lambda: engine)
"""


def _points(seed: int = 20261121) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    points = [("window", n) for n in sorted(rng.sample(range(1, 2 * ROWS // CHUNK_ROWS + 1), 6))]
    for step in CRASH_STEPS[1:]:
        points += [(step, n) for n in sorted(rng.sample(range(1, ROWS // CHUNK_ROWS + 1), 4))]
    return points


POINTS = _points()


def _data_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


@pytest.fixture(scope="module")
def source(tmp_path_factory, real_records):
    folder = tmp_path_factory.mktemp("faults")
    rows = with_urls(real_records[:ROWS], duplicate_every=7)
    rows[5]["laion_2b"] = None
    return write_parquet(folder / "in.parquet", rows, row_group_rows=16)


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory, source, smoke_model, real_records):
    folder = tmp_path_factory.mktemp("clean")
    paths = make_run(folder, [source], smoke_model, rows_per_shard=ROWS, chunk_rows=CHUNK_ROWS, window_rows=WINDOW_ROWS)
    run_with_official_captions(paths, real_records)
    reduce_run(paths, folder / "final", ReduceOptions(), workers=1)
    return _data_bytes(folder / "final")


def test_there_are_at_least_20_points_covering_every_step():
    assert len(POINTS) >= 20 and {step for step, _ in POINTS} == set(CRASH_STEPS)


@pytest.mark.parametrize("step, count", POINTS, ids=[f"{s}@{n}" for s, n in POINTS])
def test_sigkill_at_a_point_then_restart_gives_the_clean_bytes(tmp_path, source, smoke_model, real_records,
                                                                clean_dataset, step, count):
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=ROWS, chunk_rows=CHUNK_ROWS,
                     window_rows=WINDOW_ROWS)
    crashed = subprocess.run([sys.executable, "-c", WORKER, str(paths.root), str(EXAMPLES_5K)], cwd=REPO,
                             env={**os.environ, FAULT_ENV: f"crash_at:{step}@{count}"}, capture_output=True, text=True)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    record = read_progress(paths.progress(0))
    assert record is not None and not record.done
    committed = {"part_renamed": count - 1, "progress_write": count - 1, "progress_written": count}.get(step)
    if committed is not None:
        assert len(record.chunks) == committed  # the crash landed exactly where it was asked to

    run_with_official_captions(paths, real_records)  # the restart
    assert not list(paths.shard_dir(0).glob(".*.tmp")), "a killed write's temporary file is cleaned up"
    reduce_run(paths, tmp_path / "final", ReduceOptions(), workers=1)
    assert _data_bytes(tmp_path / "final") == clean_dataset


def _flip_a_bit(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_damaged_parts_are_found_by_checksum_and_only_they_are_regenerated(tmp_path, source, smoke_model):
    manifest, run = tmp_path / "m.json", tmp_path / "run"
    capsfus("manifest", "build", source, "-o", manifest, "--rows-per-shard", ROWS)
    capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--local", "--greedy", "--max-new-tokens", 8,
            "--chunk-rows", CHUNK_ROWS, "--window-rows", WINDOW_ROWS)
    capsfus("reduce", run, "--final", tmp_path / "before")
    paths = RunPaths(run)
    parts = sorted(paths.shard_dir(0).glob("part-*.parquet"))
    assert len(parts) == ROWS // CHUNK_ROWS
    _flip_a_bit(parts[2], 100)
    parts[4].write_bytes(parts[4].read_bytes()[:-7])  # truncated
    untouched = {p.name: p.stat().st_mtime_ns for i, p in enumerate(parts) if i not in (2, 4)}

    assert json.loads(capsfus("status", run, "--json").stdout)["shards"][0]["state"] == "done"  # no reading without --verify
    verified = capsfus("status", run, "--json", "--verify", check=False)
    assert verified.returncode == 1 and "1 shard(s) failed or damaged" in verified.stderr  # a script can tell
    [shard] = json.loads(verified.stdout)["shards"]
    assert shard["state"] == "damaged"
    assert "chunk 2 (rows 32-47), chunk 4 (rows 64-79) of shard 0" in shard["error"] and "resume" in shard["error"]
    refused = capsfus("reduce", run, "--final", tmp_path / "refused", check=False)
    assert refused.returncode == 1 and "shard 0 chunk 4: part" in refused.stderr  # by size, before any checksum
    assert "does not match its checksum" in refused.stderr and "`resume` regenerates it" in refused.stderr

    capsfus("resume", run, "--local")
    assert {p.name: p.stat().st_mtime_ns for p in parts if p.name in untouched} == untouched
    assert json.loads(capsfus("status", run, "--json", "--verify").stdout)["shards"][0]["state"] == "done"
    capsfus("reduce", run, "--final", tmp_path / "after")
    assert _data_bytes(tmp_path / "after") == _data_bytes(tmp_path / "before")


def test_a_deleted_input_fails_its_shards_by_name_and_the_others_finish(tmp_path, real_records, smoke_model):
    kept = write_parquet(tmp_path / "kept.parquet", with_urls(real_records[:8]))
    lost = write_parquet(tmp_path / "lost.parquet", with_urls(real_records[8:16]))
    manifest, run = tmp_path / "m.json", tmp_path / "run"
    capsfus("manifest", "build", kept, lost, "-o", manifest, "--rows-per-shard", 4)
    lost.unlink()
    result = capsfus("submit", manifest, "-o", run, "--model", smoke_model, "--local", "--greedy",
                     "--max-new-tokens", 4, check=False)
    assert result.returncode == 1 and str(lost) in result.stderr
    shards = json.loads(capsfus("status", run, "--json").stdout)["shards"]
    assert [s["state"] for s in shards] == ["done", "done", "failed", "failed"]
    assert all(f"input {lost} was deleted since the manifest was built" in s["error"] for s in shards[2:])


def test_the_same_shard_started_twice_has_one_writer(tmp_path, source, smoke_model, real_records, clean_dataset):
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=ROWS, chunk_rows=CHUNK_ROWS,
                     window_rows=WINDOW_ROWS)
    first = subprocess.Popen([sys.executable, "-c", WORKER, str(paths.root), str(EXAMPLES_5K)], cwd=REPO,
                             env={**os.environ, FAULT_ENV: "sleep_per_window:0.3"}, stderr=subprocess.PIPE, text=True)
    while not paths.lease(0).exists():
        assert first.poll() is None, first.stderr.read()
    second = subprocess.run([sys.executable, "-c", WORKER, str(paths.root), str(EXAMPLES_5K)], cwd=REPO,
                            capture_output=True, text=True)
    assert second.returncode == 1 and "shard 0 is being written by" in second.stderr
    assert first.wait() == 0, first.stderr.read()
    record = read_progress(paths.progress(0))
    assert record.done and len(record.attempts) == 1  # the refused writer wrote nothing
    assert not paths.lease(0).exists()
    reduce_run(paths, tmp_path / "final", ReduceOptions(), workers=1)
    assert _data_bytes(tmp_path / "final") == clean_dataset


def test_out_of_memory_halves_the_token_budget_and_a_requeued_task_keeps_it(tmp_path, source, smoke_model):
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=ROWS, chunk_rows=16, window_rows=16,
                     batch_size=16, max_new_tokens=4)
    work = [sys.executable, "-m", "capsfus_hpc", "work", str(paths.root), "--shard", "0"]
    small_gpu = {**os.environ, FAULT_ENV: "oom_above:1000"}  # KV tokens: 3 beams x (prompt + 4) a row
    first = subprocess.run(work, env={**small_gpu, FAULT_ENV: "oom_above:1000,crash_at:progress_written@2"},
                           capture_output=True, text=True)
    assert first.returncode == -9
    halvings = [tuple(map(int, found)) for found in re.findall(
        r"out of GPU memory with (\d+) prompts \((\d+) tokens\); token budget now (\d+)", first.stderr)]
    # The first window holds 15 valid rows (row 5 is invalid): halved until a batch fits.
    assert halvings[0][0] == 15 and len(halvings) >= 2
    assert all(budget == tokens // 2 and tokens > 1000 for _, tokens, budget in halvings)
    budget = halvings[-1][2]
    assert budget <= 1000 and read_progress(paths.progress(0)).batch_tokens == budget

    second = subprocess.run(work, env=small_gpu, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"token budget {budget}, remembered from an earlier out-of-memory" in second.stderr
    assert "out of GPU memory" not in second.stderr  # no search again
    record = read_progress(paths.progress(0))
    assert record.done and record.batch_tokens == budget and record.rows_done == ROWS


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: the run folder fills it mid-run (the tests run as root, as CI does)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_fails_the_task_by_path_and_resume_completes_after_space_is_freed(
        small_disk, source, smoke_model, real_records, clean_dataset):
    paths = make_run(small_disk, [source], smoke_model, rows_per_shard=ROWS, chunk_rows=CHUNK_ROWS,
                     window_rows=WINDOW_ROWS)
    filler = small_disk / "filler"
    stats = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - 48 * 1024))  # room for a few parts only
    full = subprocess.run([sys.executable, "-c", WORKER, str(paths.root), str(EXAMPLES_5K)], cwd=REPO,
                          capture_output=True, text=True)
    assert full.returncode == 1
    assert f"no space left on the device while writing {paths.shard_dir(0)}" in full.stderr
    record = read_progress(paths.progress(0))
    assert 0 < len(record.chunks) < ROWS // CHUNK_ROWS
    # The record may not have room for the error either: status then reports the task as dead.
    assert json.loads(capsfus("status", paths.root, "--json").stdout)["shards"][0]["state"] == "failed"
    from capsfus_hpc.integrity import damaged_chunks
    assert damaged_chunks(paths, record) == []  # what was committed is intact
    assert not list(paths.shard_dir(0).glob(".*.tmp"))

    filler.unlink()
    run_with_official_captions(paths, real_records)
    reduce_run(paths, small_disk / "final", ReduceOptions(), workers=1)
    assert _data_bytes(small_disk / "final") == clean_dataset
