import json

import pyarrow.parquet as pq
import pytest
import zstandard

from capsfus_hpc.columns import INPUT_ERROR, ColumnMapping
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.inputs import JSON_LINES, JSON_LINES_ZST, JSON_LIST, PARQUET, detect_format, stage_to_parquet

from .conftest import with_urls, write_parquet

GOOD = {"image_url": "u1", "laion_2b": "raw one", "laion_coco": "a synthetic one", "score": 0.5}


def _jsonl_with_bad_lines(path):
    lines = [
        json.dumps(GOOD).encode(),
        b"",  # blank lines are not records
        b'{"laion_2b": "cut off',  # malformed
        b'{"laion_2b": "caf\xe9", "laion_coco": "x"}',  # latin-1, not UTF-8
        b"[1, 2]",  # not an object
        json.dumps({"laion_2b": 42, "laion_coco": "y", "score": "high"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_formats_are_detected_by_name_and_content(tmp_path):
    (tmp_path / "a.json").write_text('[{"x": 1}]')
    (tmp_path / "b.json").write_text('{"x": 1}\n')
    for name, expected in (("a.json", JSON_LIST), ("b.json", JSON_LINES), ("c.jsonl", JSON_LINES),
                           ("d.jsonl.zst", JSON_LINES_ZST), ("e.parquet", PARQUET)):
        path = tmp_path / name
        path.touch(exist_ok=True)
        assert detect_format(path) == expected
    with pytest.raises(CapsfusError, match="f.csv"):
        detect_format(tmp_path / "f.csv")


def test_bad_json_lines_become_rows_that_carry_their_line_number(tmp_path):
    source = _jsonl_with_bad_lines(tmp_path / "in.jsonl")
    staged, _ = stage_to_parquet(source, JSON_LINES, tmp_path / "staging", ColumnMapping())
    rows = pq.read_table(staged).to_pylist()
    assert len(rows) == 5  # every non-blank line is a row
    assert rows[0]["laion_2b"] == "raw one" and rows[0][INPUT_ERROR] is None
    errors = [row[INPUT_ERROR] for row in rows[1:]]
    assert errors[0].startswith("malformed_json: line 3")
    assert errors[1].startswith("invalid_utf8: line 4")
    assert errors[2].startswith("not_an_object: line 5")
    assert errors[3].startswith("raw_caption_not_string: line 6: laion_2b is a int")
    # a passthrough column of mixed types keeps every value, as JSON text
    assert [row["score"] for row in rows] == ["0.5", None, None, None, "high"]


def test_zstd_json_lines_stream_and_stage_like_plain_ones(tmp_path):
    plain = _jsonl_with_bad_lines(tmp_path / "in.jsonl")
    packed = tmp_path / "in.jsonl.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    a, _ = stage_to_parquet(plain, JSON_LINES, tmp_path / "s1", ColumnMapping())
    b, _ = stage_to_parquet(packed, JSON_LINES_ZST, tmp_path / "s2", ColumnMapping())
    assert pq.read_table(a).to_pylist() == pq.read_table(b).to_pylist()


def test_corrupt_zstd_is_refused_naming_the_file(tmp_path):
    packed = tmp_path / "broken.jsonl.zst"
    lines = b"".join(b'{"laion_2b": "%d", "laion_coco": "%x"}\n' % (i, i * 7919) for i in range(5000))
    compressed = zstandard.ZstdCompressor().compress(lines)
    packed.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(CapsfusError, match="broken.jsonl.zst"):
        stage_to_parquet(packed, JSON_LINES_ZST, tmp_path / "s", ColumnMapping())


def test_json_list_layout_of_the_capsfusion_release(tmp_path, real_records):
    source = tmp_path / "example_data.json"
    source.write_text(json.dumps(real_records[:50]))
    staged, _ = stage_to_parquet(source, JSON_LIST, tmp_path / "s", ColumnMapping())
    table = pq.read_table(staged)
    assert table.column("laion_2b").to_pylist() == [r["laion_2b"] for r in real_records[:50]]
    assert table.column("capsfuion_official").to_pylist() == [r["capsfuion_official"] for r in real_records[:50]]


def test_staging_happens_once_per_source_content(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(GOOD) + "\n")
    first, _ = stage_to_parquet(source, JSON_LINES, tmp_path / "s", ColumnMapping())
    stamp = first.stat().st_mtime_ns
    again, _ = stage_to_parquet(source, JSON_LINES, tmp_path / "s", ColumnMapping())
    assert again == first and again.stat().st_mtime_ns == stamp
    source.write_text(json.dumps({**GOOD, "laion_2b": "changed"}) + "\n")
    changed, _ = stage_to_parquet(source, JSON_LINES, tmp_path / "s", ColumnMapping())
    assert changed != first


def test_staging_under_another_column_mapping_is_not_reused(tmp_path):
    """The mapping decides which columns are text and must hold strings: a manifest rebuilt with
    another --raw-column must not get the first mapping's staged file."""
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({**GOOD, "TEXT": 12}) + "\n")
    first, _ = stage_to_parquet(source, JSON_LINES, tmp_path / "s", ColumnMapping())
    other, _ = stage_to_parquet(source, JSON_LINES, tmp_path / "s", ColumnMapping(raw_caption="TEXT"))
    assert other != first
    assert pq.read_table(first).to_pylist()[0][INPUT_ERROR] is None
    row = pq.read_table(other).to_pylist()[0]
    assert row["TEXT"] is None and row[INPUT_ERROR].startswith("raw_caption_not_string: line 1: TEXT is a int")


def test_missing_caption_column_names_column_and_file(tmp_path):
    source = tmp_path / "nococo.jsonl"
    source.write_text(json.dumps({"laion_2b": "a"}) + "\n")
    with pytest.raises(CapsfusError, match=r"nococo.jsonl: missing synthetic caption column 'laion_coco'"):
        stage_to_parquet(source, JSON_LINES, tmp_path / "s", ColumnMapping())


@pytest.mark.parametrize("fmt", [JSON_LINES, JSON_LINES_ZST, JSON_LIST])
def test_staging_reports_every_byte_of_each_pass_over_the_source(tmp_path, real_records, fmt):
    from capsfus_hpc.inputs import STAGING_PASSES
    from capsfus_hpc.manifest import build_manifest, bytes_to_read

    rows = with_urls(real_records[:3000]) * 3  # more records than are read between two reports
    if fmt == JSON_LIST:
        source = tmp_path / "in.json"
        source.write_text(json.dumps(rows))
    else:
        text = "".join(json.dumps(row) + "\n" for row in rows).encode()
        source = tmp_path / ("in.jsonl" if fmt == JSON_LINES else "in.jsonl.zst")
        source.write_bytes(text if fmt == JSON_LINES else zstandard.ZstdCompressor().compress(text))
    parquet = write_parquet(tmp_path / "b.parquet", rows[:5])
    reads = []
    build_manifest([source, parquet], tmp_path / "m.json", 1000, on_bytes=reads.append)
    total = STAGING_PASSES * source.stat().st_size + parquet.stat().st_size
    assert bytes_to_read([source, parquet]) == total == sum(reads)
    assert len(reads) > STAGING_PASSES + 1 or fmt == JSON_LIST  # as it goes, not once at the end
    again = []  # staged before: the passes it skips count as read
    build_manifest([source, parquet], tmp_path / "m.json", 1000, on_bytes=again.append, replace=True)
    assert sum(again) == total


def test_a_byte_order_mark_before_the_first_record_is_skipped(tmp_path, real_records):
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode() + b"\n")
    listed = tmp_path / "bom.json"
    listed.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD, GOOD]).encode())
    assert detect_format(listed) == JSON_LIST
    for source, fmt in ((lines, JSON_LINES), (listed, JSON_LIST)):
        staged, _ = stage_to_parquet(source, fmt, tmp_path / fmt, ColumnMapping())
        assert [row[INPUT_ERROR] for row in pq.read_table(staged).to_pylist()] == [None, None]


def test_a_lone_surrogate_escape_makes_its_record_a_rejected_row_not_a_crash(tmp_path):
    pair = {"laion_2b": "smile \\ud83d\\ude00", "laion_coco": "b"}  # an escaped pair is one character
    lines = [json.dumps(GOOD), '{"laion_2b": "half \\ud800 of a pair", "laion_coco": "x"}',
             '{"laion_2b": "a", "laion_coco": "b", "note": "\\uDFFF"}', json.dumps(pair).replace("\\\\", "\\")]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    listed = tmp_path / "in.json"
    listed.write_text("[" + ",".join(lines) + "]")
    for path, fmt, where in ((source, JSON_LINES, "line"), (listed, JSON_LIST, "element")):
        rows = pq.read_table(stage_to_parquet(path, fmt, tmp_path / fmt, ColumnMapping())[0]).to_pylist()
        assert [(row[INPUT_ERROR] or "").split(":")[0] for row in rows] == ["", "invalid_unicode", "invalid_unicode", ""]
        assert rows[1][INPUT_ERROR].startswith(f"invalid_unicode: {where} {1 if where == 'element' else 2}: a \\u escape")
        assert rows[3]["laion_2b"] == "smile \U0001F600"


def test_integers_too_wide_for_a_float_keep_their_digits(tmp_path):
    values = [1.5, 9007199254740993, 3]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({**GOOD, "score": v, "id": int(v)}) + "\n" for v in values))
    table = pq.read_table(stage_to_parquet(source, JSON_LINES, tmp_path / "s", ColumnMapping())[0])
    assert table.column("score").to_pylist() == ["1.5", "9007199254740993", "3"]  # mixed: as JSON text
    assert table.column("id").type == "int64" and table.column("id").to_pylist() == [1, 9007199254740993, 3]


def test_a_record_with_the_staging_error_column_is_refused_naming_the_file(tmp_path):
    source = tmp_path / "reserved.jsonl"
    source.write_text(json.dumps({**GOOD, INPUT_ERROR: "mine"}) + "\n")
    with pytest.raises(CapsfusError, match=f"reserved.jsonl: column {INPUT_ERROR} is capsfus-hpc's own"):
        stage_to_parquet(source, JSON_LINES, tmp_path / "s", ColumnMapping())
