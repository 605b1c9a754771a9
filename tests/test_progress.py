"""The progress record: what a file holds is read back, and an edited or damaged one is named."""

import json

import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.progress import Attempt, ChunkRecord, ProgressRecord, read_progress, write_progress


def _record() -> ProgressRecord:
    record = ProgressRecord(shard=3, row_id_start=100, row_id_stop=120, batch_tokens=None)
    record = record.with_attempt(Attempt(started_at=1.5, host="node1", pid=42, job_id="7_3"))
    for index, (start, stop) in enumerate([(100, 108), (108, 116)]):
        record = record.with_chunk(ChunkRecord(index, start, stop, stop - start, "ab" * 32, 999, 0.5, 2.0, None))
    return record


def test_a_written_record_reads_back_equal(tmp_path):
    write_progress(tmp_path / "progress.json", _record())
    assert read_progress(tmp_path / "progress.json") == _record()
    assert read_progress(tmp_path / "none.json") is None


def _edit(document: dict, where: str, value) -> dict:
    *path, name = where.split(".")
    target = document
    for step in path:
        target = target[int(step)] if step.isdigit() else target[step]
    target[name] = value
    return document


@pytest.mark.parametrize("where, value, reason", [
    ("row_id_stop", "120", "row_id_stop is '120', not int"),
    ("shard", True, "shard is True, not int"),
    ("chunks.0.sha256", None, "sha256 is None, not str"),
    ("chunks.1.seconds", "fast", "seconds is 'fast', not float"),
    ("attempts.0.job_id", 7, "job_id is 7, not str | None"),
    ("batch_tokens", 1.5, "batch_tokens is 1.5, not int | None"),
    ("chunks.1.row_id_start", 109, "chunk 1 does not follow the rows before it within 100-119"),
    ("chunks.1.row_id_stop", 125, "chunk 1 does not follow the rows before it within 100-119"),
    ("chunks.0.row_id_start", 99, "chunk 0 does not follow the rows before it within 100-119"),
    ("chunks.1.index", 2, "chunk 1 does not follow the rows before it within 100-119"),
    ("chunks", {"index": 0}, ""),
])
def test_an_edited_record_is_named_damaged_with_what_is_wrong(tmp_path, where, value, reason):
    path = tmp_path / "progress.json"
    path.write_text(json.dumps(_edit(_record().as_dict(), where, value)))
    with pytest.raises(CapsfusError) as raised:
        read_progress(path)
    assert str(raised.value).startswith(f"{path}: damaged progress record (") and reason in str(raised.value)
    assert str(raised.value).endswith(f"move {tmp_path} aside (its parts with it) and resume, which fuses that "
                                      "shard again")


def test_an_empty_or_truncated_record_is_named_damaged(tmp_path):
    path = tmp_path / "progress.json"
    for text in ["", json.dumps(_record().as_dict())[:-20], "[]", "{}"]:
        path.write_text(text)
        with pytest.raises(CapsfusError, match=f"{path}: damaged progress record"):
            read_progress(path)
