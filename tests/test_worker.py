import json
import shutil
import time
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from capsfus_hpc.atomic import sha256_file
from capsfus_hpc.columns import ROW_ID, STATUS_INVALID, STATUS_OK
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.lease import TIMEOUT_ENV, ShardLease, abandoned
from capsfus_hpc.progress import ProgressRecord, read_progress, write_progress
from capsfus_hpc.settings import load_run, refuse_drift
from capsfus_hpc.worker import chunk_ranges, run_shard, run_shards

from .conftest import ReplayEngine, make_run, with_urls, write_parquet


def test_chunks_sit_on_a_fixed_grid_from_the_shard_start():
    record = ProgressRecord(shard=3, row_id_start=1000, row_id_stop=1250)
    assert chunk_ranges(record, 100) == [(1000, 1100), (1100, 1200), (1200, 1250)]
    # after a short commit the next chunk realigns to the grid
    from capsfus_hpc.progress import ChunkRecord

    partial = record.with_chunk(ChunkRecord(0, 1000, 1030, 30, "h", 1, 1.0, 1.0))
    assert chunk_ranges(partial, 100) == [(1030, 1100), (1100, 1200), (1200, 1250)]


def _bad_rows_jsonl(path, real_records):
    good = with_urls(real_records[:6])
    lines = [json.dumps(row) for row in good]
    lines += [
        json.dumps({"image_url": "n", "laion_2b": None, "laion_coco": "x"}),
        json.dumps({"image_url": "e", "laion_2b": "   ", "laion_coco": "x"}),
        json.dumps({"image_url": "i", "laion_2b": 12, "laion_coco": "x"}),
        json.dumps({"image_url": "l", "laion_2b": "w" * 5000, "laion_coco": "x"}),
        '{"image_url": "broken"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_input_row_gives_exactly_one_output_row(tmp_path, real_records, smoke_model):
    source = _bad_rows_jsonl(tmp_path / "in.jsonl", real_records)
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=100, chunk_rows=4, max_new_tokens=12)
    assert run_shards(str(paths.root), [0]) == {0: 11}
    record = read_progress(paths.progress(0))
    assert [(c.row_id_start, c.row_id_stop) for c in record.chunks] == [(0, 4), (4, 8), (8, 11)]
    rows = [row for c in record.chunks for row in pq.read_table(paths.part(0, c.index)).to_pylist()]
    assert [row[ROW_ID] for row in rows] == list(range(11))
    assert [row["status"] for row in rows[:6]] == [STATUS_OK] * 6
    assert all(row["fused_caption"] is not None and row["finish_reason"] in ("eos", "length") for row in rows[:6])
    assert all(row["prompt_tokens"] > 100 and 1 <= row["completion_tokens"] <= 12 for row in rows[:6])
    reasons = [(row["status"], row["reason"]) for row in rows[6:]]
    assert reasons == [(STATUS_INVALID, "raw_caption_null"), (STATUS_INVALID, "raw_caption_empty"),
                       (STATUS_INVALID, "raw_caption_not_string"), (STATUS_INVALID, "raw_caption_too_long"),
                       (STATUS_INVALID, "malformed_json")]
    assert rows[10]["detail"].startswith("line 11:")
    assert rows[0]["image_url"] == "https://example.org/0.jpg"  # passthrough columns stay
    assert "__capsfus_input_error" not in rows[0]


def test_a_prompt_the_models_context_cannot_hold_is_rejected_and_the_rest_fused(tmp_path, real_records, smoke_model):
    rows = with_urls(real_records[:5])
    rows[2] = {**rows[2], "laion_coco": " ".join([rows[2]["laion_coco"]] * 40)}  # under 4,000 characters
    assert len(rows[2]["laion_coco"]) < 4000
    paths = make_run(tmp_path, [write_parquet(tmp_path / "in.parquet", rows)], smoke_model, rows_per_shard=100,
                     max_new_tokens=12)
    assert run_shards(str(paths.root), [0]) == {0: 5}
    out = pq.read_table(paths.part(0, 0)).to_pylist()
    assert [row["status"] for row in out] == [STATUS_OK, STATUS_OK, STATUS_INVALID, STATUS_OK, STATUS_OK]
    assert out[2]["reason"] == "prompt_too_long" and out[2]["fused_caption"] is None
    tokens = int(out[2]["detail"].split()[3])
    assert tokens > 512 - 12 and out[2]["detail"].endswith(f"over the {512 - 12} the model's context leaves beside "
                                                            "the new tokens")  # the smoke model's 512 positions


def test_progress_record_names_durable_parts_with_their_checksums(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:30]), row_group_rows=7)
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=30, chunk_rows=8, max_new_tokens=8)
    run_shards(str(paths.root), [0])
    record = read_progress(paths.progress(0))
    assert record.done and record.rows_done == 30
    for chunk in record.chunks:
        part = paths.part(0, chunk.index)
        assert sha256_file(part) == chunk.sha256 and part.stat().st_size == chunk.bytes
    assert sorted(p.name for p in paths.shard_dir(0).iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "part-00003.parquet", "progress.json"]
    assert record.last_attempt.ended_at is not None and record.last_attempt.error is None


def test_parts_keep_dictionaries_and_statistics_only_where_they_pay(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:20]))
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=20, chunk_rows=20, max_new_tokens=8)
    run_shards(str(paths.root), [0])
    group = pq.ParquetFile(paths.part(0, 0)).metadata.row_group(0)
    by_name = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    # Captions and URLs are unique within a part: stored plain, without min/max.
    for name in ("fused_caption", "laion_2b", "laion_coco", "image_url"):
        assert "RLE_DICTIONARY" not in by_name[name].encodings and not by_name[name].is_stats_set, name
    assert "RLE_DICTIONARY" in by_name["status"].encodings
    assert by_name["row_id"].statistics.min == 0 and by_name["row_id"].statistics.max == 19


def test_restart_redoes_only_uncommitted_chunks_and_overwrites_orphans(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:40]))
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=40, chunk_rows=10, max_new_tokens=8)
    run_shards(str(paths.root), [0])
    complete = read_progress(paths.progress(0))
    # As after a crash between the part rename and the progress update of chunk 2.
    write_progress(paths.progress(0), ProgressRecord(0, 0, 40, complete.chunks[:2], complete.attempts))
    paths.part(0, 3).unlink()
    run_shards(str(paths.root), [0])
    redone = read_progress(paths.progress(0))
    assert [c.sha256 for c in redone.chunks] == [c.sha256 for c in complete.chunks]
    assert redone.chunks[:2] == complete.chunks[:2]  # committed chunks untouched
    assert len(redone.attempts) == 2


def test_a_changed_input_fails_its_shard_naming_the_file_and_others_still_run(tmp_path, real_records, smoke_model):
    a = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:10]))
    b = write_parquet(tmp_path / "b.parquet", with_urls(real_records[10:20]))
    paths = make_run(tmp_path, [a, b], smoke_model, rows_per_shard=10, max_new_tokens=8)
    write_parquet(a, with_urls(real_records[:12]))
    with pytest.raises(CapsfusError, match=f"shard 0: input {a} changed"):
        run_shards(str(paths.root), [0, 1])
    assert read_progress(paths.progress(0)).last_attempt.error.startswith(f"input {a} changed")
    assert read_progress(paths.progress(1)).done


def test_finished_shards_are_not_redone(tmp_path, real_records, smoke_model):
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:10]))
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=10, max_new_tokens=8)
    run_shards(str(paths.root), [0])
    before = paths.progress(0).read_bytes()
    run_shards(str(paths.root), [0])
    assert paths.progress(0).read_bytes() == before
    settings, _ = load_run(paths)
    assert settings.num_beams == 1


def test_a_task_refuses_a_model_folder_changed_since_the_run_started(tmp_path, real_records, smoke_model):
    model = tmp_path / "model"
    shutil.copytree(smoke_model, model)
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:20]))
    paths = make_run(tmp_path, [source], model, rows_per_shard=10, max_new_tokens=8)
    run_shards(str(paths.root), [0])
    original = (model / "config.json").read_bytes()  # then re-saved from another checkpoint, say
    (model / "config.json").write_text(json.dumps({**json.loads(original), "rms_norm_eps": 2e-5}))
    with pytest.raises(CapsfusError, match=f"shard 1: the run's model folder {model} changed since the run started"):
        run_shards(str(paths.root), [1])
    assert "changed since the run started" in read_progress(paths.progress(1)).last_attempt.error
    assert not read_progress(paths.progress(1)).chunks  # nothing fused by the other model
    (model / "config.json").write_bytes(original)  # put back: the shard runs
    run_shards(str(paths.root), [1])
    assert read_progress(paths.progress(1)).done
    shutil.rmtree(model)
    with pytest.raises(CapsfusError, match=f"the run's model folder {model} is gone"):
        refuse_drift(load_run(paths)[0])


def test_a_task_refuses_a_prompt_template_other_than_the_frozen_one(tmp_path, real_records, smoke_model):
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:4]))], smoke_model, 4)
    settings, _ = load_run(paths)
    refuse_drift(settings)
    with pytest.raises(CapsfusError, match="prompt template .* is not the one the run was frozen with"):
        refuse_drift(replace(settings, prompt_template_sha256="0" * 64))


def test_a_worker_keeps_its_lease_through_a_chunk_longer_than_the_lease_timeout(tmp_path, real_records,
                                                                                 monkeypatch):
    """The heartbeat does not wait for a commit: a slow chunk (faithful mode on a small GPU, say)
    is neither reported abandoned nor taken over by a second task while its worker lives."""
    paths = make_run(tmp_path, [write_parquet(tmp_path / "a.parquet", with_urls(real_records[:8]))], "-", 8,
                     chunk_rows=4)
    settings, manifest = load_run(paths)
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    seen = []

    class SlowReplay(ReplayEngine):
        def fuse(self, pairs, before_batch=None):
            time.sleep(2.5)  # more than twice the lease timeout without a commit
            seen.append(abandoned(paths.lease(0)))
            try:
                ShardLease(paths.lease(0), 0, "second-task").acquire()
                seen.append("taken over")
            except CapsfusError as refused:
                seen.append(str(refused))
            return super().fuse(pairs)

    engine = SlowReplay(real_records[:8])
    record = run_shard(paths, settings, manifest, 0, lambda: engine)
    assert record.done and len(record.chunks) == 2
    assert seen[0] is None and seen[2] is None
    assert all(isinstance(outcome, str) and "shard 0 is being written by job" in outcome for outcome in seen[1::2])
    assert not paths.lease(0).exists()  # given back at the end
