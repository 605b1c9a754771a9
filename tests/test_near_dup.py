import pyarrow.parquet as pq
import pytest

from capsfus_hpc.errors import CapsfusError
from capsfus_hpc.near_dup import NearDuplicates, shingles
from capsfus_hpc.reduce import DATA_FILE, REJECTS_FILE, ReduceOptions, reduce_run

from .conftest import make_run, run_with_official_captions, write_parquet


def _edited(caption: str) -> str:
    """The same caption with its last word changed and different punctuation: a near duplicate."""
    words = caption.rstrip(".").split()
    return " ".join(words[:-1] + ["indeed"]) + "!"


def test_near_copies_of_real_captions_are_found_and_distinct_ones_kept(real_records):
    captions = [r["capsfuion_official"] for r in real_records[:400]]
    long_ones = [i for i, c in enumerate(captions) if len(c.split()) >= 25][:50]
    rows = list(enumerate(captions)) + [(400 + k, _edited(captions[i])) for k, i in enumerate(long_ones)]
    found = dict(NearDuplicates(0.8).find(rows))
    assert found == {400 + k: i for k, i in enumerate(long_ones)}
    assert found == dict(NearDuplicates(0.8).find(rows))  # the same answer every time
    # Offered in batches, a row is held against the rows kept from earlier batches too.
    state = NearDuplicates(0.8)
    assert dict(state.find(rows[:400]) + state.find(rows[400:])) == found


@pytest.mark.parametrize("threshold", [0.99, 1.0])
def test_a_threshold_above_what_lsh_takes_keeps_only_what_the_estimate_confirms(real_records, threshold):
    captions = [r["capsfuion_official"] for r in real_records[:100]]
    copies = [(100 + i, " ".join(c.split()).upper() + " ") for i, c in enumerate(captions[:20])]  # the same words
    found = dict(NearDuplicates(threshold).find(list(enumerate(captions)) + copies + [(200, _edited(captions[0]))]))
    assert found == {100 + i: i for i in range(20)}  # the edited one is not that similar


def test_short_captions_and_bad_thresholds():
    assert shingles("A cat.") == [b"a cat"]
    assert shingles("one two three four") == [b"one two three", b"two three four"]
    with pytest.raises(CapsfusError, match="Jaccard"):
        NearDuplicates(1.5)


def test_reduce_drops_near_duplicates_after_exact_ones(tmp_path, real_records, smoke_model):
    records = [dict(r) for r in real_records[:6]]
    long_one = next(r for r in real_records if len(r["capsfuion_official"].split()) >= 25)
    records[1] = dict(long_one)
    records[4] = dict(long_one, laion_2b=long_one["laion_2b"] + " (again)", capsfuion_official=_edited(long_one["capsfuion_official"]))
    rows = [{"image_url": f"https://example.org/{i}.jpg", "laion_2b": r["laion_2b"], "laion_coco": r["laion_coco"]}
            for i, r in enumerate(records)]
    source = write_parquet(tmp_path / "r.parquet", rows, row_group_rows=5)
    paths = make_run(tmp_path, [source], smoke_model, rows_per_shard=10, chunk_rows=5)
    run_with_official_captions(paths, records)
    stats = reduce_run(paths, tmp_path / "final", ReduceOptions(near_dup=0.8), workers=1)
    assert stats["duplicates_by_kind"] == {"duplicate_near": 1} and stats["near_dup"] == 0.8
    [rejected] = pq.read_table(tmp_path / "final" / REJECTS_FILE).to_pylist()
    assert (rejected["row_id"], rejected["duplicate_of"], rejected["reject_reason"]) == (4, 1, "duplicate_near")
    card = (tmp_path / "final" / "README.md").read_text()  # the card names the filter and its threshold
    assert "at least 0.8 Jaccard-similar" in " ".join(card.split())


def test_a_near_duplicate_dropped_leaves_its_key_to_the_next_row_with_that_key(tmp_path, real_records, smoke_model):
    long_one = next(r for r in real_records if len(r["capsfuion_official"].split()) >= 25)
    records = [dict(long_one), dict(long_one, laion_2b=long_one["laion_2b"] + " (again)",
                                    capsfuion_official=_edited(long_one["capsfuion_official"])), dict(real_records[0])]
    urls = ["https://example.org/0.jpg", "https://example.org/1.jpg", "https://example.org/1.jpg"]
    rows = [{"image_url": u, "laion_2b": r["laion_2b"], "laion_coco": r["laion_coco"]} for u, r in zip(urls, records)]
    paths = make_run(tmp_path, [write_parquet(tmp_path / "r.parquet", rows)], smoke_model, rows_per_shard=10)
    run_with_official_captions(paths, records)
    reduce_run(paths, tmp_path / "final", ReduceOptions(near_dup=0.8), workers=1)
    [rejected] = pq.read_table(tmp_path / "final" / REJECTS_FILE).to_pylist()
    assert (rejected["row_id"], rejected["duplicate_of"], rejected["reject_reason"]) == (1, 0, "duplicate_near")
    kept = pq.read_table(tmp_path / "final" / DATA_FILE).column("row_id").to_pylist()
    assert kept == [0, 2]  # 1.jpg keeps its other caption
