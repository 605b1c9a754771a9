import json

import pyarrow.parquet as pq
import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.reduce import DATA_FILE, REJECTS_FILE, STATS_FILE, reduce_run
from capsfus_hpc.worker import run_shards

from .conftest import make_run, with_urls, write_parquet


@pytest.fixture
def finished_run(tmp_path, real_records, smoke_model):
    """60 real rows in two files: every 5th repeats the URL of the row before, two invalid rows."""
    rows = with_urls(real_records[:60], duplicate_every=5)
    rows[7]["laion_coco"] = ""
    rows[33]["laion_2b"] = None
    a = write_parquet(tmp_path / "a.parquet", rows[:40], row_group_rows=10)
    b = write_parquet(tmp_path / "b.parquet", rows[40:], row_group_rows=10)
    paths = make_run(tmp_path, [a, b], smoke_model, rows_per_shard=20, chunk_rows=8, max_new_tokens=8)
    return paths


def _run_all(paths):
    run_shards(str(paths.root), [2, 0, 1])  # finishing order must not matter


def test_every_row_lands_in_final_or_rejects_once(tmp_path, finished_run):
    _run_all(finished_run)
    stats = reduce_run(finished_run, tmp_path / "final")
    data = pq.read_table(tmp_path / "final" / DATA_FILE).to_pylist()
    rejects = pq.read_table(tmp_path / "final" / REJECTS_FILE).to_pylist()
    assert sorted(r["row_id"] for r in data + rejects) == list(range(60))
    assert stats["rows_in"] == 60 and stats["rows_out"] == len(data)
    assert stats["rejected"] == {"raw_caption_null": 1, "synthetic_caption_empty": 1}
    assert stats["duplicates"] == 11 == sum(r["reject_reason"] == "duplicate_key" for r in rejects)
    assert json.loads((tmp_path / "final" / STATS_FILE).read_text()) == stats
    assert [r["row_id"] for r in data] == sorted(r["row_id"] for r in data)  # manifest order
    assert "status" not in data[0] and data[0]["fused_caption"] is not None


def test_the_first_row_in_manifest_order_wins_a_duplicate_key(tmp_path, finished_run):
    _run_all(finished_run)
    reduce_run(finished_run, tmp_path / "final")
    rejects = pq.read_table(tmp_path / "final" / REJECTS_FILE).to_pylist()
    duplicates = {r["row_id"]: r["duplicate_of"] for r in rejects if r["reject_reason"] == "duplicate_key"}
    # row 34 repeats the URL of row 33, which was rejected: only an accepted row can win a key
    assert duplicates == {i: i - 1 for i in range(4, 60, 5) if i != 34}
    invalid = {r["row_id"]: (r["reject_reason"], r["reject_detail"]) for r in rejects if r["duplicate_of"] is None}
    assert invalid == {7: ("synthetic_caption_empty", "laion_coco is empty or whitespace"),
                       33: ("raw_caption_null", "laion_2b is null")}


def test_reduce_is_byte_identical_when_run_again(tmp_path, finished_run):
    _run_all(finished_run)
    reduce_run(finished_run, tmp_path / "one")
    reduce_run(finished_run, tmp_path / "two")
    reduce_run(finished_run, tmp_path / "one")  # over an earlier reduce
    for name in (DATA_FILE, REJECTS_FILE):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_an_incomplete_run_is_refused_with_the_missing_shards(tmp_path, finished_run):
    run_shards(str(finished_run.root), [1])
    with pytest.raises(CapsfusError) as refused:
        reduce_run(finished_run, tmp_path / "final")
    message = str(refused.value)
    assert "2 of 3 shards are not done" in message
    assert "shard 0: pending, 0/20 rows" in message and "shard 2: pending, 0/20 rows" in message
    assert "shard 1" not in message
    assert not (tmp_path / "final" / STATS_FILE).exists()


def test_a_damaged_part_is_named_by_shard_and_chunk(tmp_path, finished_run):
    _run_all(finished_run)
    part = finished_run.part(1, 2)
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    with pytest.raises(CapsfusError, match=r"shard 1 chunk 2: part .*part-00002.parquet does not match its checksum"):
        reduce_run(finished_run, tmp_path / "final")
    part.unlink()
    with pytest.raises(CapsfusError, match=r"shard 1 chunk 2: part .* is missing"):
        reduce_run(finished_run, tmp_path / "final")


def test_a_foreign_final_folder_is_not_overwritten(tmp_path, finished_run):
    _run_all(finished_run)
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "precious.txt").write_text("mine")
    with pytest.raises(CapsfusError, match="not empty"):
        reduce_run(finished_run, tmp_path / "final")
