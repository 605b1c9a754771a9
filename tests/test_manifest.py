import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capsfus_hpc.columns import INPUT_ERROR, ColumnMapping
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.manifest import build_manifest, load_manifest, plan_shards, verify_input

from .conftest import with_urls, write_parquet


@pytest.mark.parametrize("groups,target", [([1000] * 10, 2500), ([64] * 100, 1000), ([10_000], 3000),
                                           ([7, 300, 5, 999, 1], 100), ([1] * 50, 7), ([], 10)])
def test_shards_tile_the_file_exactly(groups, target):
    ranges = plan_shards(groups, target)
    total = sum(groups)
    if total == 0:
        assert ranges == []
        return
    assert [start for start, _ in ranges] == [0] + [stop for _, stop in ranges[:-1]]
    assert (ranges[-1][1] if ranges else 0) == total
    assert all(stop > start for start, stop in ranges)
    assert all(stop - start <= target + target // 4 for start, stop in ranges)


def test_cuts_snap_to_row_group_boundaries_when_near():
    # Row groups of 900 rows, 1000 rows a shard: cuts land on multiples of 900 (within 250 rows).
    ranges = plan_shards([900] * 10, 1000)
    assert all(stop % 900 == 0 for _, stop in ranges)
    # One huge row group cannot be snapped: cut exactly.
    assert plan_shards([10_000], 3000) == [(0, 3000), (3000, 6000), (6000, 9000), (9000, 10_000)]
    # A tail within a quarter of the target joins the shard before it.
    assert plan_shards([10_000], 3200) == [(0, 3200), (3200, 6400), (6400, 10_000)]


def test_manifest_reads_footers_of_several_files_with_global_row_ids(tmp_path, real_records):
    a = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:250]), row_group_rows=100)
    b = write_parquet(tmp_path / "b.parquet", with_urls(real_records[250:400]), row_group_rows=100)
    manifest = build_manifest([a, b], tmp_path / "m.json", rows_per_shard=100)
    assert manifest.total_rows == 400 and len(manifest.files) == 2
    assert [(s.file, s.start, s.stop, s.row_id_start) for s in manifest.shards] == [
        (0, 0, 100, 0), (0, 100, 200, 100), (0, 200, 250, 200), (1, 0, 100, 250), (1, 100, 150, 350)]
    assert all(f.has_key for f in manifest.files)
    assert load_manifest(tmp_path / "m.json") == manifest
    fingerprint = manifest.files[0].fingerprint
    assert fingerprint.size == a.stat().st_size and len(fingerprint.footer_sha256) == 64


def test_json_inputs_are_staged_next_to_the_manifest(tmp_path, real_records):
    source = tmp_path / "in" / "example.json"
    source.parent.mkdir()
    source.write_text(json.dumps(real_records[:30]))
    manifest = build_manifest([source], tmp_path / "manifests" / "ex.json", rows_per_shard=10)
    staged = manifest.files[0]
    assert staged.source == str(source) and staged.path.startswith(str(tmp_path / "manifests" / "ex.staging"))
    assert staged.rows == 30 and not staged.has_key  # the release has no image_url
    assert staged.source_fingerprint.content_sha256 is not None


def test_missing_column_names_column_and_file(tmp_path, real_records):
    path = write_parquet(tmp_path / "nococo.parquet", [{"laion_2b": r["laion_2b"]} for r in real_records[:5]])
    with pytest.raises(CapsfusError, match=r"nococo.parquet: missing synthetic caption column 'laion_coco'"):
        build_manifest([path], tmp_path / "m.json", 10)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("column", ["status", "fused_caption", "reject_reason", "reject_detail", "duplicate_of"])
def test_an_input_column_the_worker_or_reduce_adds_is_refused(tmp_path, real_records, column):
    rows = [{**row, column: "x"} for row in with_urls(real_records[:3])]
    source = write_parquet(tmp_path / "a.parquet", rows)
    with pytest.raises(CapsfusError, match=rf"a.parquet: column\(s\) {column} clash with output columns; rename them"):
        build_manifest([source], tmp_path / "m.json", 10, ColumnMapping())


def test_a_parquet_column_named_as_the_staging_errors_is_refused(tmp_path, real_records):
    """Its values would reject valid rows under made-up reasons, and the column would vanish."""
    source = write_parquet(tmp_path / "a.parquet", [{**row, INPUT_ERROR: None} for row in with_urls(real_records[:3])])
    with pytest.raises(CapsfusError, match=rf"a.parquet: column {INPUT_ERROR} is capsfus-hpc's own"):
        build_manifest([source], tmp_path / "m.json", 10, ColumnMapping())


@pytest.mark.parametrize("repeated", ["laion_2b", "note"])
def test_a_column_name_given_twice_in_a_file_is_refused_naming_it(tmp_path, real_records, repeated):
    """(A repeated caption column failed every shard; a repeated passthrough one, the reduce.)"""
    table = pa.Table.from_pylist([{**row, "note": "n"} for row in with_urls(real_records[:3])])
    table = table.append_column(repeated, table.column(repeated))
    pq.write_table(table, tmp_path / "twice.parquet")
    with pytest.raises(CapsfusError, match=rf"twice.parquet: column\(s\) {repeated} appear more than once"):
        build_manifest([tmp_path / "twice.parquet"], tmp_path / "m.json", 10, ColumnMapping())


def test_a_file_twice_an_empty_input_and_a_folder_for_output_are_refused(tmp_path, real_records):
    path = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:5]))
    with pytest.raises(CapsfusError, match=r"a.parquet is given more than once"):
        build_manifest([path, tmp_path / "." / "a.parquet"], tmp_path / "m.json", 10)
    os.link(path, tmp_path / "linked.parquet")
    with pytest.raises(CapsfusError, match=r"linked.parquet is given more than once \(as .*a.parquet, or a link"):
        build_manifest([path, tmp_path / "linked.parquet"], tmp_path / "m.json", 10)
    with pytest.raises(CapsfusError, match=r"a.parquet: is one of the inputs; name a new file"):
        build_manifest([path], path, 10, replace=True)
    assert pq.read_table(path).num_rows == 5  # the input is whole
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), empty)
    with pytest.raises(CapsfusError, match=r"the inputs hold no rows: .*empty.parquet"):
        build_manifest([empty], tmp_path / "m.json", 10)
    with pytest.raises(CapsfusError, match=r"is a folder; name the manifest file"):
        build_manifest([path], tmp_path, 10)
    assert not (tmp_path / "m.json").exists()


def test_explicit_key_column_must_exist(tmp_path, real_records):
    path = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:5]))
    with pytest.raises(CapsfusError, match="missing key column 'url'"):
        build_manifest([path], tmp_path / "m.json", 10, ColumnMapping(key="url"), key_required=True)


def test_a_key_column_of_lists_is_refused_naming_file_column_and_type(tmp_path, real_records):
    rows = [{**row, "image_url": [index]} for index, row in enumerate(real_records[:5])]
    path = write_parquet(tmp_path / "lists.parquet", rows)
    with pytest.raises(CapsfusError, match=r"lists.parquet: key column 'image_url' is list<element: int64>, "
                                           r"not a string or integer column; name another with --key-column"):
        build_manifest([path], tmp_path / "m.json", 10)
    assert not (tmp_path / "m.json").exists()


def test_corrupt_input_is_refused_at_manifest_time_naming_the_file(tmp_path, real_records):
    path = write_parquet(tmp_path / "bad.parquet", with_urls(real_records[:50]))
    path.write_bytes(path.read_bytes()[:-100] + b"\0" * 96 + b"PAR1")
    with pytest.raises(CapsfusError, match="bad.parquet"):
        build_manifest([path], tmp_path / "m.json", 10)
    with pytest.raises(CapsfusError, match="nothere.parquet: no such input file"):
        build_manifest([tmp_path / "nothere.parquet"], tmp_path / "m.json", 10)


def test_an_input_changed_after_the_manifest_is_detected(tmp_path, real_records):
    path = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:50]))
    manifest = build_manifest([path], tmp_path / "m.json", 10)
    verify_input(manifest.files[0])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(CapsfusError, match=f"input {path} was modified"):
        verify_input(manifest.files[0])
    write_parquet(path, with_urls(real_records[:60]))
    with pytest.raises(CapsfusError, match=f"input {path} changed"):
        verify_input(manifest.files[0])
    path.unlink()
    with pytest.raises(CapsfusError, match=f"input {path} was deleted"):
        verify_input(manifest.files[0])


def test_a_file_that_is_not_a_manifest_is_named_not_a_traceback(tmp_path, real_records):
    data = tmp_path / "captions.json"
    data.write_text(json.dumps(real_records[:3]))  # the data file given where the manifest belongs
    with pytest.raises(CapsfusError, match=r"captions.json: not a manifest \(no shards\)"):
        load_manifest(data)
    source = write_parquet(tmp_path / "a.parquet", with_urls(real_records[:5]))
    manifest = tmp_path / "m.json"
    build_manifest([source], manifest, 10)
    document = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**document, "shards": [{"shard": 0}]}))
    with pytest.raises(CapsfusError, match=r"m.json: a damaged manifest \(TypeError: .*\); build it again"):
        load_manifest(manifest)
