import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capsfus_hpc.caption_rules import STRICT_ECHO_PHRASES, CaptionRules, judge
from capsfus_hpc.errors import CapsfusError
from capsfus_hpc import reduce_judge, reduce_plan
from capsfus_hpc.faults import FAULT_ENV, REDUCE_CRASH_STEPS
from capsfus_hpc.reduce_lock import active_reduces, hold_final, refuse_active_reduce, refuse_held
from capsfus_hpc.scheduler import ReduceJobState
from capsfus_hpc.reduce import prepare_reduce, DATA_FILE, DUPLICATES_FILE, REJECTS_FILE, STATS_FILE, ReduceOptions, reduce_run
from capsfus_hpc.settings import load_run
from capsfus_hpc.worker import run_shard

from .conftest import REPO, ReplayEngine, make_run, run_with_official_captions, with_urls, write_parquet


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


@pytest.fixture
def _run_all(real_records):
    return lambda paths: run_with_official_captions(paths, real_records)


def test_every_row_lands_in_final_or_rejects_once(tmp_path, finished_run, _run_all):
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


def test_the_first_row_in_manifest_order_wins_a_duplicate_key(tmp_path, finished_run, _run_all):
    _run_all(finished_run)
    reduce_run(finished_run, tmp_path / "final")
    rejects = pq.read_table(tmp_path / "final" / REJECTS_FILE).to_pylist()
    duplicates = {r["row_id"]: r["duplicate_of"] for r in rejects if r["reject_reason"] == "duplicate_key"}
    # row 34 repeats the URL of row 33, which was rejected: only an accepted row can win a key
    assert duplicates == {i: i - 1 for i in range(4, 60, 5) if i != 34}
    invalid = {r["row_id"]: (r["reject_reason"], r["reject_detail"]) for r in rejects if r["duplicate_of"] is None}
    assert invalid == {7: ("synthetic_caption_empty", "laion_coco is empty or shows only whitespace or invisible characters"),
                       33: ("raw_caption_null", "laion_2b is null")}


def test_reduce_is_byte_identical_when_run_again(tmp_path, finished_run, _run_all):
    _run_all(finished_run)
    reduce_run(finished_run, tmp_path / "one")
    reduce_run(finished_run, tmp_path / "two")
    reduce_run(finished_run, tmp_path / "one")  # over an earlier reduce
    for name in (DATA_FILE, REJECTS_FILE):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_the_dataset_of_another_run_is_not_replaced(tmp_path, finished_run, _run_all, real_records, smoke_model):
    _run_all(finished_run)
    reduce_run(finished_run, tmp_path / "final")
    before = (tmp_path / "final" / DATA_FILE).read_bytes()
    source = write_parquet(tmp_path / "other.parquet", with_urls(real_records[100:110]))
    other = make_run(tmp_path, [source], smoke_model, 10, name="other")
    _run_all(other)
    with pytest.raises(CapsfusError, match=f"holds the reduce of another run \\({finished_run.root}\\)"):
        reduce_run(other, tmp_path / "final")
    assert (tmp_path / "final" / DATA_FILE).read_bytes() == before


def test_a_caption_column_of_numbers_is_reduced_to_rejects_not_a_crash(tmp_path, real_records, smoke_model):
    rows = [{**row, "laion_2b": index} for index, row in enumerate(with_urls(real_records[:6]))]
    paths = make_run(tmp_path, [write_parquet(tmp_path / "numbers.parquet", rows)], smoke_model, 6)
    run_with_official_captions(paths, real_records)
    stats = reduce_run(paths, tmp_path / "final")
    assert stats["rows_out"] == 0 and stats["rejected"] == {"raw_caption_not_string": 6}


def test_a_key_column_of_integers_deduplicates_on_their_text(tmp_path, real_records, smoke_model):
    rows = [{**row, "image_url": [7, 8, 7, 9, 8, 7][index]} for index, row in enumerate(real_records[:6])]
    paths = make_run(tmp_path, [write_parquet(tmp_path / "ids.parquet", rows)], smoke_model, 6)
    run_with_official_captions(paths, real_records)
    stats = reduce_run(paths, tmp_path / "final")
    assert stats["duplicates_by_kind"] == {"duplicate_key": 3}
    assert [r["image_url"] for r in pq.read_table(tmp_path / "final" / DATA_FILE).to_pylist()] == [7, 8, 9]


def test_an_incomplete_run_is_refused_with_the_missing_shards(tmp_path, finished_run, real_records):
    settings, manifest = load_run(finished_run)
    engine = ReplayEngine(real_records)
    run_shard(finished_run, settings, manifest, 1, lambda: engine)
    with pytest.raises(CapsfusError) as refused:
        reduce_run(finished_run, tmp_path / "final")
    message = str(refused.value)
    assert "2 of 3 shards are not done" in message
    assert "shard 0: pending, 0/20 rows" in message and "shard 2: pending, 0/20 rows" in message
    assert "shard 1" not in message and f"capsfus-hpc resume {finished_run.root}" in message
    assert not (tmp_path / "final" / STATS_FILE).exists()


def test_a_damaged_part_is_named_by_shard_and_chunk(tmp_path, finished_run, _run_all, monkeypatch):
    _run_all(finished_run)
    part = finished_run.part(1, 2)
    clean = part.read_bytes()
    data = bytearray(clean)
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    with pytest.raises(CapsfusError, match=r"shard 1 chunk 2: part .*part-00002.parquet does not match its checksum"):
        reduce_run(finished_run, tmp_path / "final")
    # Damage the fused captions, which only assemble decodes: it finds the part after it published
    # data files, which it then removes; stats.json is never written.
    metadata = pq.ParquetFile(io.BytesIO(clean)).metadata
    column = metadata.row_group(0).column(metadata.schema.names.index("fused_caption"))
    data = bytearray(clean)
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0x01
    part.write_bytes(bytes(data))
    monkeypatch.setattr(reduce_judge, "BATCH_ROWS", 8)
    with pytest.raises(CapsfusError, match=r"shard 1 chunk 2: part .*part-00002.parquet does not match its checksum"):
        reduce_run(finished_run, tmp_path / "small", ReduceOptions(target_file_bytes=1, row_group_rows=4))
    assert not list((tmp_path / "small").glob("data-*.parquet")) and not (tmp_path / "small" / STATS_FILE).exists()
    part.unlink()
    with pytest.raises(CapsfusError, match=r"incomplete.*\n  shard 1: damaged, 20/20 rows: chunk 2 \(rows 36-39\) of "
                                           r"shard 1: the part is missing"):
        reduce_run(finished_run, tmp_path / "final")
    with pytest.raises(CapsfusError, match=r"shard 1 chunk 2: part .* is missing"):
        reduce_run(finished_run, tmp_path / "final", ReduceOptions(allow_partial=True))


def test_bad_options_are_refused_before_an_earlier_dataset_is_removed(tmp_path, finished_run, _run_all, monkeypatch):
    _run_all(finished_run)
    reduce_run(finished_run, tmp_path / "final")
    before = sorted(p.name for p in (tmp_path / "final").iterdir())
    with pytest.raises(CapsfusError, match=r"--near-dup 1.5: a Jaccard similarity must be in \(0, 1\]"):
        reduce_run(finished_run, tmp_path / "final", ReduceOptions(near_dup=1.5))
    monkeypatch.setitem(sys.modules, "datasketch", None)  # not installed
    with pytest.raises(CapsfusError, match=r"--near-dup needs datasketch"):
        reduce_run(finished_run, tmp_path / "final", ReduceOptions(near_dup=0.9))
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == before and STATS_FILE in before


def test_a_foreign_final_folder_is_not_overwritten(tmp_path, finished_run, _run_all):
    _run_all(finished_run)
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "precious.txt").write_text("mine")
    with pytest.raises(CapsfusError, match="not empty"):
        reduce_run(finished_run, tmp_path / "final")
    (tmp_path / "final" / ".reduce").mkdir()  # as a reduce stopped before its plan leaves it, but not alone
    with pytest.raises(CapsfusError, match="not empty"):
        reduce_run(finished_run, tmp_path / "final")
    (tmp_path / "final" / "precious.txt").unlink()
    assert reduce_run(finished_run, tmp_path / "final")["rows_in"] == 60


def _records_run(tmp_path, smoke_model, records, rows, rows_per_shard=10):
    source = write_parquet(tmp_path / "r.parquet", rows, row_group_rows=5)
    return make_run(tmp_path, [source], smoke_model, rows_per_shard=rows_per_shard, chunk_rows=5, name="r")


def test_keys_are_compared_as_normalised_urls_and_captions_optionally(tmp_path, real_records, smoke_model):
    records = [dict(r) for r in real_records[:6]]
    records[5]["laion_2b"] += " (again)"
    records[5]["capsfuion_official"] = records[3]["capsfuion_official"]  # same caption, other image
    records[4]["capsfuion_official"] = records[4]["laion_coco"]  # a rule's reject among the duplicates
    rows = [{"image_url": u, "laion_2b": r["laion_2b"], "laion_coco": r["laion_coco"]} for u, r in zip(
        ["https://Example.org/1.jpg", "HTTPS://EXAMPLE.ORG/1.jpg/", "https://example.org/1.jpg#top",
         "https://example.org/2.jpg", "https://example.org/2.JPG", "https://example.org/3.jpg"], records)]
    paths = _records_run(tmp_path, smoke_model, records, rows)
    run_with_official_captions(paths, records)
    stats = reduce_run(paths, tmp_path / "final", ReduceOptions(dedup_caption=True, write_duplicates=True))
    assert stats["duplicates_by_kind"] == {"duplicate_caption": 1, "duplicate_key": 2}
    duplicates = pq.read_table(tmp_path / "final" / DUPLICATES_FILE).to_pylist()
    assert duplicates == [{"row_id": 1, "duplicate_of": 0, "reject_reason": "duplicate_key"},
                          {"row_id": 2, "duplicate_of": 0, "reject_reason": "duplicate_key"},
                          {"row_id": 5, "duplicate_of": 3, "reject_reason": "duplicate_caption"}]
    rejects = pq.read_table(tmp_path / "final" / REJECTS_FILE).select(["row_id", "reject_reason", "reject_detail",
                                                                        "duplicate_of"]).to_pylist()
    assert rejects == [
        {"row_id": 1, "reject_reason": "duplicate_key", "reject_detail": "same image_url as row 0", "duplicate_of": 0},
        {"row_id": 2, "reject_reason": "duplicate_key", "reject_detail": "same image_url as row 0", "duplicate_of": 0},
        {"row_id": 4, "reject_reason": "caption_copy_through",
         "reject_detail": "the synthetic caption, give or take case, punctuation and spacing", "duplicate_of": None},
        {"row_id": 5, "reject_reason": "duplicate_caption", "reject_detail": "same caption as row 3",
         "duplicate_of": 3}]
    assert [r["row_id"] for r in pq.read_table(tmp_path / "final" / DATA_FILE).to_pylist()] == [0, 3]


def _kept_and_duplicates(folder):
    kept = pq.read_table(folder / DATA_FILE).select(["row_id", "image_url"]).to_pylist()
    duplicates = pq.read_table(folder / DUPLICATES_FILE).select(["row_id", "duplicate_of", "reject_reason"]).to_pylist()
    return kept, duplicates


def test_a_row_is_kept_unless_a_row_kept_before_it_has_its_key_or_its_caption(tmp_path, real_records, smoke_model):
    """No image is lost to a duplicate that was itself dropped, and duplicate_of names a kept row."""
    records = [dict(r) for r in real_records[:6]]
    captions = [r["capsfuion_official"] for r in real_records[6:12]]
    urls = ["https://example.org/0.jpg", "https://example.org/1.jpg", "https://example.org/1.jpg",  # 1 and 2: one image
            "https://example.org/3.jpg", "https://example.org/3.jpg", "https://example.org/5.jpg"]  # 3 and 4: one image
    wrote = [captions[0], captions[0].upper(), captions[2],  # 1 says what 0 says; 2 is the only other caption of 1.jpg
             captions[3], captions[4], captions[4]]  # 4, a copy of 3.jpg, says what 5 (another image) says
    for record, caption in zip(records, wrote):
        record["capsfuion_official"] = caption
    rows = [{"image_url": u, "laion_2b": r["laion_2b"], "laion_coco": r["laion_coco"]} for u, r in zip(urls, records)]
    paths = _records_run(tmp_path, smoke_model, records, rows)
    run_with_official_captions(paths, records)
    reduce_run(paths, tmp_path / "final", ReduceOptions(dedup_caption=True, write_duplicates=True))
    kept, duplicates = _kept_and_duplicates(tmp_path / "final")
    assert [row["row_id"] for row in kept] == [0, 2, 3, 5]
    assert duplicates == [{"row_id": 1, "duplicate_of": 0, "reject_reason": "duplicate_caption"},
                          {"row_id": 4, "duplicate_of": 3, "reject_reason": "duplicate_key"}]
    assert {row["image_url"] for row in kept} == set(urls)


def test_rows_with_an_empty_key_are_not_duplicates_of_each_other(tmp_path, real_records, smoke_model):
    records = real_records[:6]
    rows = [{"image_url": u, "laion_2b": r["laion_2b"], "laion_coco": r["laion_coco"]} for u, r in zip(
        ["", "   ", "\t", None, "https://example.org/1.jpg", " https://example.org/1.jpg"], records)]
    paths = _records_run(tmp_path, smoke_model, records, rows)
    run_with_official_captions(paths, records)
    stats = reduce_run(paths, tmp_path / "final")
    assert stats["duplicates_by_kind"] == {"duplicate_key": 1}
    assert [r["row_id"] for r in pq.read_table(tmp_path / "final" / DATA_FILE).to_pylist()] == [0, 1, 2, 3, 4]


def test_caption_rules_reject_with_their_reason(tmp_path, real_records, smoke_model):
    records = [dict(r) for r in real_records[:5]]
    records[1]["capsfuion_official"] = records[1]["laion_coco"]  # the model copied its input
    records[3]["capsfuion_official"] = "Sentence 1: " + records[3]["capsfuion_official"]
    rows = with_urls(records)
    paths = _records_run(tmp_path, smoke_model, records, rows)
    run_with_official_captions(paths, records)
    stats = reduce_run(paths, tmp_path / "final")
    assert stats["rejected"] == {"caption_copy_through": 1, "caption_prompt_echo": 1}
    rejects = {r["row_id"]: r["reject_reason"] for r in pq.read_table(tmp_path / "final" / REJECTS_FILE).to_pylist()}
    assert rejects == {1: "caption_copy_through", 3: "caption_prompt_echo"}


def test_a_rules_file_changes_what_is_rejected_and_a_bad_one_is_named(tmp_path, real_records, smoke_model):
    from .test_cli import assert_one_line_error, capsfus

    records = real_records[:300]
    paths = _records_run(tmp_path, smoke_model, records, with_urls(records), rows_per_shard=100)
    run_with_official_captions(paths, records)
    default = json.loads(capsfus("reduce", paths.root, "--final", tmp_path / "default", "--json").stdout)
    strict_file = tmp_path / "strict.json"
    strict_file.write_text(json.dumps({"echo_phrases": list(STRICT_ECHO_PHRASES), "min_words": 5}))
    strict = json.loads(capsfus("reduce", paths.root, "--final", tmp_path / "strict", "--rules", strict_file,
                                "--json").stdout)
    expected = Counter(f"caption_{verdict[0]}" for r in records
                       if (verdict := judge(r["capsfuion_official"], r["laion_2b"], r["laion_coco"], "eos",
                                            CaptionRules(echo_phrases=STRICT_ECHO_PHRASES, min_words=5))))
    assert strict["rows_in"] == 300 and default["rejected_total"] == sum(default["rejected"].values())
    assert {k: v for k, v in strict["rejected"].items() if k.startswith("caption_")} == dict(expected)
    assert strict["rejected"]["caption_prompt_echo"] > default["rejected"].get("caption_prompt_echo", 0)
    assert strict["rules"]["min_words"] == 5 and strict["rules"]["echo_phrases"] == list(STRICT_ECHO_PHRASES)
    assert "| `min_words` | 5 |" in (tmp_path / "strict" / "README.md").read_text()  # the card says which rules

    for text, named in (('{"min_wrods": 5}', "unknown caption rule 'min_wrods'"), ("[1, 2]", "not a JSON object"),
                        ('{"min_words": 3', "not a JSON object"), ('{"max_chars": 5}', "bad.json: caption rules: a minimum"),
                        ('{"min_words": "x"}', "bad.json: caption rule 'min_words' must be a number")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        result = capsfus("reduce", paths.root, "--final", tmp_path / "refused", "--rules", bad, check=False)
        assert_one_line_error(result, named)
        assert not (tmp_path / "refused").exists()
    missing = capsfus("reduce", paths.root, "--final", tmp_path / "refused", "--rules", tmp_path / "nope.json",
                      check=False)
    assert_one_line_error(missing, "nope.json: no such rules file")


def test_data_files_roll_over_at_the_target_size_and_a_card_describes_them(tmp_path, finished_run, _run_all):
    _run_all(finished_run)
    final = tmp_path / "final"
    stats = reduce_run(finished_run, final, ReduceOptions(target_file_bytes=1, row_group_rows=10))
    assert len(stats["files"]["data"]) >= 3 and stats["files"]["data"][0] == DATA_FILE
    tables = [pq.read_table(final / name) for name in stats["files"]["data"]]
    assert sum(t.num_rows for t in tables) == stats["rows_out"]
    assert all(pq.ParquetFile(final / name).metadata.row_group(0).num_rows <= 10 for name in stats["files"]["data"])
    # row_id ranges let a reader skip row groups; text columns carry no min/max.
    group = pq.ParquetFile(final / DATA_FILE).metadata.row_group(0)
    by_name = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert by_name["row_id"].statistics.min == tables[0].column("row_id")[0].as_py()
    assert not by_name["fused_caption"].is_stats_set
    card = (final / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "path: data-*.parquet" in card
    assert f"| rows out | {stats['rows_out']} |" in card and "`fused_caption`" in card


def test_allow_partial_assembles_what_is_there_and_lists_the_gaps(tmp_path, finished_run, real_records):
    settings, manifest = load_run(finished_run)
    engine = ReplayEngine(real_records)
    run_shard(finished_run, settings, manifest, 0, lambda: engine)
    stats = reduce_run(finished_run, tmp_path / "final", ReduceOptions(allow_partial=True))
    assert stats["missing"] == [{"shard": 1, "row_id_start": 20, "row_id_stop": 40},
                                {"shard": 2, "row_id_start": 40, "row_id_stop": 60}]
    assert stats["missing_rows"] == 40
    assert stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] + stats["missing_rows"] == 60


def test_the_final_folder_loads_with_datasets_without_the_rejects(tmp_path, finished_run, _run_all, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    _run_all(finished_run)
    final = tmp_path / "final"
    stats = reduce_run(finished_run, final, ReduceOptions(target_file_bytes=1, row_group_rows=10))
    loaded = datasets.load_dataset(str(final), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == stats["rows_out"] and "reject_reason" not in loaded.column_names
    assert loaded["row_id"] == sorted(loaded["row_id"])


def test_datasets_loads_each_reduce_into_a_folder_of_the_same_name_not_its_cache_of_another(
        tmp_path, finished_run, _run_all, monkeypatch):
    """datasets names its cache after the folder's name and the card's header only."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    _run_all(finished_run)
    cache = str(tmp_path / "cache")
    for folder, options in ((tmp_path / "a" / "final", ReduceOptions()),
                            (tmp_path / "b" / "final", ReduceOptions(dedup_caption=True)),
                            (tmp_path / "a" / "final", ReduceOptions(rules=CaptionRules(min_words=12)))):
        stats = reduce_run(finished_run, folder, options)
        loaded = datasets.load_dataset(str(folder), split="train", cache_dir=cache)
        assert loaded.num_rows == stats["rows_out"]
        assert loaded["row_id"] == pq.read_table(folder / DATA_FILE).column("row_id").to_pylist()


def _file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != STATS_FILE}


def test_the_same_bytes_however_many_tasks_and_partitions(tmp_path, finished_run, _run_all, monkeypatch):
    _run_all(finished_run)
    options = ReduceOptions(dedup_caption=True, write_duplicates=True)
    reduce_run(finished_run, tmp_path / "one", options, workers=1)
    assert not (tmp_path / "one" / ".reduce").exists()  # the scratch space is gone after a reduce
    monkeypatch.setattr(reduce_plan, "MIN_ROWS_PER_KEY_TASK", 7)
    monkeypatch.setattr(reduce_plan, "ROWS_PER_PARTITION", 5)
    monkeypatch.setattr(reduce_judge, "BATCH_ROWS", 10)  # assemble settles duplicates across batches
    plan = prepare_reduce(finished_run, tmp_path / "many", options, workers=2)
    assert len(plan.key_tasks) > 1 and plan.partitions > 1
    reduce_run(finished_run, tmp_path / "many", options, workers=2)
    assert _file_bytes(tmp_path / "many") == _file_bytes(tmp_path / "one")


@pytest.mark.parametrize("rows, partitions", [(199_999, 1), (200_000, 4), (9_000_000, 5)])
def test_key_partitions_are_the_workers_from_200k_rows_on_and_one_per_2m_rows_beyond(finished_run, rows, partitions):
    """What the README and reduce --workers help promise."""
    _, manifest = load_run(finished_run)
    count = len(manifest.shards)
    shard_rows = {shard.id: rows // count + (i < rows % count) for i, shard in enumerate(manifest.shards)}
    plan = reduce_plan.plan_reduce(finished_run.root, finished_run.root / "final", manifest, shard_rows, pa.schema([]),
                                   ReduceOptions(), workers=4)
    assert plan.partitions == partitions


def test_the_fork_servers_preload_runs_the_kernels_it_names():
    # reduce_preload swallows errors (loading ahead only saves time); here they would show.
    from capsfus_hpc.reduce_preload import load_kernels
    load_kernels()


def _all_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _damage_fused_captions(part):
    """Flip a bit inside the fused captions' page: only assemble decodes it, after the key stage."""
    clean = part.read_bytes()
    metadata = pq.ParquetFile(io.BytesIO(clean)).metadata
    column = metadata.row_group(0).column(metadata.schema.names.index("fused_caption"))
    data = bytearray(clean)
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0x01
    part.write_bytes(bytes(data))
    return clean


def test_a_reduce_that_fails_leaves_the_earlier_dataset_whole(tmp_path, finished_run, _run_all, monkeypatch):
    _run_all(finished_run)
    final = tmp_path / "final"
    options = ReduceOptions(target_file_bytes=1, row_group_rows=4, write_duplicates=True)
    reduce_run(finished_run, final, options)
    before = _all_bytes(final)
    assert len([name for name in before if name.startswith("data-")]) >= 3 and STATS_FILE in before
    clean = _damage_fused_captions(finished_run.part(1, 2))
    monkeypatch.setattr(reduce_judge, "BATCH_ROWS", 8)  # new data files are written before the damage is met
    with pytest.raises(CapsfusError, match=r"shard 1 chunk 2: part .* does not match its checksum"):
        reduce_run(finished_run, final, options)
    assert _all_bytes(final) == before  # stats.json included: still a complete dataset
    assert not (final / ".reduce" / "dataset").exists()  # what the failed reduce staged is gone
    finished_run.part(1, 2).write_bytes(clean)
    # A reduce that writes fewer files leaves none of the earlier ones behind.
    stats = reduce_run(finished_run, final, ReduceOptions())
    assert sorted(_all_bytes(final)) == sorted([*stats["files"]["data"], REJECTS_FILE, "README.md", STATS_FILE])
    assert stats["files"]["data"] == [DATA_FILE] and not (final / ".reduce").exists()


@pytest.mark.parametrize("step", REDUCE_CRASH_STEPS)
def test_a_reduce_killed_while_publishing_reads_unfinished_and_the_next_one_completes_it(
        tmp_path, finished_run, _run_all, step):
    _run_all(finished_run)
    reduce_run(finished_run, tmp_path / "clean", ReduceOptions(dedup_caption=True))
    final = tmp_path / "final"
    reduce_run(finished_run, final, ReduceOptions(target_file_bytes=1, row_group_rows=4))  # an earlier dataset
    killed = subprocess.run([sys.executable, "-m", "capsfus_hpc", "reduce", str(finished_run.root), "--final",
                             str(final), "--dedup-caption", "--workers", "1"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, FAULT_ENV: f"crash_at:{step}@1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (final / STATS_FILE).exists() and (final / ".reduce" / "plan.json").exists()
    reduce_run(finished_run, final, ReduceOptions(dedup_caption=True))
    assert _all_bytes(final).keys() == _all_bytes(tmp_path / "clean").keys()
    assert _file_bytes(final) == _file_bytes(tmp_path / "clean")


def test_a_second_reduce_into_a_folder_being_written_is_refused(tmp_path, finished_run, _run_all):
    _run_all(finished_run)
    final = tmp_path / "final"
    with hold_final(final):
        with pytest.raises(CapsfusError, match=rf"another reduce is writing {final} right now"):
            reduce_run(finished_run, final)
    assert not final.exists()  # the folder made to be held, and left empty, is gone again
    assert reduce_run(finished_run, final)["rows_in"] == 60


def test_reduce_jobs_into_the_folder_that_slurm_still_has_are_active_but_not_the_asking_one(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (tmp_path / "link").symlink_to(final)
    jobs = (ReduceJobState("11", str(tmp_path / "link"), "keys", {"PENDING": 2}),
            ReduceJobState("12_0", str(final), None, {"RUNNING": 1}),
            ReduceJobState("13", str(final), "assemble", {"COMPLETED": 1}),
            ReduceJobState("14", str(final), "dedup", {"DEPENDENCY_NEVER_SATISFIED": 3}),
            ReduceJobState("15", str(tmp_path / "other"), "keys", {"RUNNING": 1}),
            ReduceJobState("16", str(final), "keys", {"COMPLETED": 1, "SQUEUE_FAILED": 1}))
    assert [job.job_id for job in active_reduces(final, jobs, own_job=None)] == ["11", "12_0", "16"]
    assert [job.job_id for job in active_reduces(final, jobs, own_job="12")] == ["11", "16"]
    with pytest.raises(CapsfusError, match=r"still queued or running \(or SLURM did not answer whether it is\): "
                                           r".*keys job 16 \(COMPLETED, SQUEUE_FAILED\); wait for it, or scancel 11 12 16"):
        refuse_active_reduce(final, jobs)


def test_the_lock_is_a_file_its_holder_removes_and_a_removed_one_is_taken_afresh(tmp_path):
    final = tmp_path / "final"
    lock = final / ".reduce" / "lock"
    refuse_held(final)  # nothing there: nobody holds it, and nothing is made
    assert not final.exists()
    with ExitStack() as first:
        first.enter_context(hold_final(final))
        assert lock.is_file()
        for refused in (lambda: hold_final(final).__enter__(), lambda: refuse_held(final)):
            with pytest.raises(CapsfusError, match=f"is writing {final} right now"):
                refused()
        lock.unlink()  # as its holder does on the way out: whoever opened it before takes a new one
        with ExitStack() as second:
            second.enter_context(hold_final(final))
            first.close()  # the first holder leaves the second's lock alone
            assert lock.is_file()
            with pytest.raises(CapsfusError, match=f"is writing {final} right now"):
                refuse_held(final)
        assert not (final / ".reduce").exists()  # the lock went with its holder, and the emptied work folder
    (final / ".reduce").mkdir()
    lock.write_text("")  # left by a holder that was killed: its lock went with its process
    with hold_final(final):
        pass
    assert not lock.exists() and final.is_dir()


def test_a_work_folder_on_another_file_system_is_refused_before_anything_is_written(tmp_path, finished_run, _run_all):
    elsewhere = Path("/dev/shm") / f"capsfus-test-{os.getpid()}"
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same file system as the test folder")
    _run_all(finished_run)
    final = tmp_path / "final"
    reduce_run(finished_run, final)
    before = _all_bytes(final)
    shutil.rmtree(final / ".reduce", ignore_errors=True)
    elsewhere.mkdir()
    try:
        (final / ".reduce").symlink_to(elsewhere)
        with pytest.raises(CapsfusError, match=rf"{final}/.reduce is on another file system than {final} "
                                               r"\(a mount or a link\).*make it a plain folder"):
            reduce_run(finished_run, final)
    finally:
        shutil.rmtree(elsewhere)
    (final / ".reduce").unlink()
    assert _all_bytes(final) == before


def test_a_local_reduce_reads_with_no_more_threads_than_its_workers(tmp_path, finished_run, _run_all, monkeypatch):
    from capsfus_hpc import reduce_assemble

    _run_all(finished_run)
    asked = []
    real = reduce_assemble.batches
    monkeypatch.setattr(reduce_assemble, "batches", lambda parts, read, readers: asked.append(readers) or real(
        parts, read, readers=readers))
    reduce_run(finished_run, tmp_path / "final", workers=1)  # --workers 1 on a shared login node
    assert asked == [1]


def test_a_run_without_a_key_column_says_it_was_not_deduplicated(tmp_path, real_records, smoke_model):
    from .test_cli import capsfus

    records = real_records[:6]
    rows = [{"laion_2b": r["laion_2b"], "laion_coco": r["laion_coco"]} for r in records * 2]  # every row twice
    source = write_parquet(tmp_path / "r.parquet", rows)
    result = capsfus("manifest", "build", source, "-o", tmp_path / "m.json", "--json")
    assert json.loads(result.stdout)["files_without_key"] == [str(source)]
    assert "1 of 1 file(s) have no image_url column: reduce cannot find their duplicates" in " ".join(result.stderr.split())
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=20)
    run_with_official_captions(paths, records)
    stats = reduce_run(paths, tmp_path / "final")
    assert stats["dedup_key"] is None and stats["duplicates"] == 0 and stats["rows_out"] == 12
    card = " ".join((tmp_path / "final" / "README.md").read_text().split())
    assert "No input had a key column, so no row was dropped as a duplicate." in card
    assert "image_url" not in card


def test_an_input_of_arrow_view_types_is_fused_and_reduced_as_its_plain_twin(tmp_path, real_records):
    """Polars writes string_view columns; the reducer's kernels take no view type, so a run of
    them fused every row and then failed its reduce."""
    rows = [{**row, "tags": [row["image_url"][-3:]]} for row in with_urls(real_records[:24], duplicate_every=4)]
    rows[5]["laion_coco"] = ""  # a rejected row, taken from the parts by its row id
    plain = pa.Table.from_pylist(rows)
    views = plain.cast(pa.schema([pa.field(f.name, pa.string_view()) if f.type == pa.string()
                                  else pa.field(f.name, pa.list_(pa.string_view())) if f.name == "tags" else f
                                  for f in plain.schema]))
    datasets = []
    for name, table in (("plain", plain), ("views", views)):
        pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=8)
        paths = make_run(tmp_path, [tmp_path / f"{name}.parquet"], "-", 12, name=name, chunk_rows=4)
        run_with_official_captions(paths, real_records[:24])
        stats = reduce_run(paths, tmp_path / f"{name}-final", ReduceOptions(write_duplicates=True))
        datasets.append((stats["rows_out"], [pq.read_table(p) for p in sorted((tmp_path / f"{name}-final").glob("*.parquet"))]))
    assert datasets[1] == datasets[0] and datasets[0][0] > 0


def test_a_file_whose_key_column_is_all_null_is_taken_and_its_rows_have_no_key(tmp_path, real_records):
    """pyarrow types an all-None column null; manifest build refused it as not a key column."""
    records = real_records[:20]
    unkeyed = [{**r, "image_url": None} for r in records[:10]]
    keyed = [{**r, "image_url": f"u{i % 3}"} for i, r in enumerate(records[10:])]
    pq.write_table(pa.Table.from_pylist(unkeyed), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(keyed), tmp_path / "b.parquet")
    assert pq.read_schema(tmp_path / "a.parquet").field("image_url").type == pa.null()
    paths = make_run(tmp_path, [tmp_path / "a.parquet", tmp_path / "b.parquet"], "-", 5, chunk_rows=5)
    run_with_official_captions(paths, records)
    stats = reduce_run(paths, tmp_path / "final")
    assert (stats["rows_out"], stats["duplicates"]) == (10 + 3, 7)
