"""read_part: a part is read only when its bytes match its progress record and it holds exactly
the chunk's rows, in order. parts_schema: every part's columns, every part's size checked."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capsfus_hpc.atomic import sha256_file
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.manifest import Shard
from capsfus_hpc.progress import ChunkRecord
from capsfus_hpc.parquet_layout import schema_fingerprint
from capsfus_hpc.reconcile import Part, parts_schema, read_part


def _part(tmp_path, row_ids, start=10, stop=14):
    path = tmp_path / "part-00003.parquet"
    pq.write_table(pa.table({"row_id": pa.array(row_ids, pa.int64()), "fused_caption": ["x"] * len(row_ids)}), path)
    chunk = ChunkRecord(3, start, stop, len(row_ids), sha256_file(path), path.stat().st_size, 0.0, 0.0)
    return Part(Shard(7, 0, 0, 20, 0), chunk, path)


def test_a_part_holding_its_chunk_rows_is_read(tmp_path):
    assert read_part(_part(tmp_path, [10, 11, 12, 13])).column("row_id").to_pylist() == [10, 11, 12, 13]


@pytest.mark.parametrize("row_ids", [[11, 12, 13, 14], [10, 11, 11, 13], [10, 12, 11, 13], [10, None, 12, 13],
                                     [10, 11, 12]])
def test_a_part_with_other_rows_is_refused_naming_shard_and_chunk(tmp_path, row_ids):
    with pytest.raises(CapsfusError, match=r"shard 7 chunk 3: part .*part-00003.parquet"):
        read_part(_part(tmp_path, row_ids))


def test_a_part_whose_bytes_changed_is_refused(tmp_path):
    part = _part(tmp_path, [10, 11, 12, 13])
    data = bytearray(part.path.read_bytes())
    data[len(data) // 2] ^= 1
    part.path.write_bytes(bytes(data))
    with pytest.raises(CapsfusError, match="shard 7 chunk 3"):
        read_part(part)


def test_an_unverified_read_of_a_damaged_part_still_names_it_damaged(tmp_path):
    part = _part(tmp_path, [10, 11, 12, 13])
    clean = part.path.read_bytes()
    for at in range(0, len(clean), 3):  # data pages, page headers and the footer
        for bit in (0x01, 0x80):
            data = bytearray(clean)
            data[at] ^= bit
            part.path.write_bytes(bytes(data))
            try:
                table = read_part(part, ["fused_caption"], verify=False)
            except CapsfusError as exc:
                assert "shard 7 chunk 3" in str(exc) and "does not match its checksum" in str(exc)
            else:  # decoded: assemble's verified read still refuses it
                assert table.num_rows == 4
                with pytest.raises(CapsfusError, match="does not match its checksum"):
                    read_part(part)


def _part_of(tmp_path, name, table, fingerprinted=True):
    path = tmp_path / name
    pq.write_table(table, path)
    chunk = ChunkRecord(0, 0, table.num_rows, table.num_rows, sha256_file(path), path.stat().st_size, 0.0, 0.0,
                        schema_fingerprint(table.schema) if fingerprinted else None)
    return Part(Shard(0, 0, 0, table.num_rows, 0), chunk, path)


def test_the_parts_schema_holds_every_column_of_every_part(tmp_path):
    plain = pa.table({"row_id": pa.array([0], pa.int64()), "fused_caption": ["x"]})
    wider = plain.append_column("width", pa.array([3], pa.int32()))
    parts = [_part_of(tmp_path, "a.parquet", plain), _part_of(tmp_path, "b.parquet", plain),
             _part_of(tmp_path, "c.parquet", wider), _part_of(tmp_path, "d.parquet", wider.drop_columns(["fused_caption"]), False)]
    assert parts_schema(parts).names == ["row_id", "fused_caption", "width"]


def test_a_part_whose_column_types_clash_with_the_others_is_named(tmp_path):
    table = pa.table({"row_id": pa.array([0], pa.int64()), "fused_caption": ["x"]})
    clashing = pa.table({"row_id": pa.array([0], pa.int64()), "fused_caption": pa.array([5], pa.int64())})
    parts = [_part_of(tmp_path, "a.parquet", table), _part_of(tmp_path, "b.parquet", clashing)]
    with pytest.raises(CapsfusError, match=rf"shard 0 chunk 0: part {tmp_path / 'b.parquet'} has column fused_caption "
                                           r"as int64 where the parts before it have string: not as the worker"):
        parts_schema(parts)


def test_the_parts_schema_names_a_missing_or_resized_part(tmp_path):
    table = pa.table({"row_id": pa.array([0], pa.int64())})
    parts = [_part_of(tmp_path, "a.parquet", table), _part_of(tmp_path, "b.parquet", table)]
    parts[1].path.write_bytes(parts[1].path.read_bytes() + b"x")
    with pytest.raises(CapsfusError, match=r"shard 0 chunk 0: part .*b.parquet does not match its checksum"):
        parts_schema(parts)
    parts[1].path.unlink()
    with pytest.raises(CapsfusError, match=r"shard 0 chunk 0: part .*b.parquet is missing"):
        parts_schema(parts)
