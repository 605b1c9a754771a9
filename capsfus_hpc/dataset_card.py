"""The dataset card (README.md) of a final dataset: what it holds and how it was made.

The YAML header follows the Hugging Face datasets convention, so the folder loads with
datasets.load_dataset(FOLDER) or load_dataset("parquet", data_files=FOLDER + "/data-*.parquet").
Its dataset_info (rows and bytes of the data) is what tells one dataset from another to datasets'
cache, which is named after the folder's name and the header alone: without it, a reduce into a
folder of the same name loaded an earlier dataset from the cache.
"""

from __future__ import annotations

import pyarrow as pa

COLUMN_MEANINGS = {
    "row_id": "the row's number in the manifest: input file order, then row order",
    "fused_caption": "the caption written by the model from the two input captions",
    "finish_reason": "eos (the model ended the caption) or length (cut at max_new_tokens)",
    "prompt_tokens": "tokens of the prompt, after truncation to the token budget",
    "completion_tokens": "tokens generated, the end-of-sequence token included",
}


def _dedup(stats: dict) -> str:
    """What made a row a duplicate of an earlier kept one, as the reduce applied it."""
    key = (f"the same normalised `{stats['dedup_key']}` (scheme and host case, default port, fragment and "
           "trailing slash ignored)" if stats["dedup_key"] else None)
    caption = "the same normalised fused caption" if stats["dedup_caption"] else None
    if not key and not caption:
        return "" if stats.get("near_dup") else " No input had a key column, so no row was dropped as a duplicate."
    return (" Then, in row order, a row is dropped as a duplicate when a row kept before it has "
            + " or ".join(filter(None, [key, caption])) + ".")


def dataset_card(stats: dict, schema: pa.Schema, settings) -> str:
    counts = [("rows in", stats["rows_in"]), ("fused by the model", stats["ok"]),
              *[(f"rejected: {reason}", n) for reason, n in stats["rejected"].items()],
              *[(f"dropped: {kind}", n) for kind, n in stats["duplicates_by_kind"].items()],
              ("missing (partial reduce)", stats["missing_rows"]), ("rows out", stats["rows_out"])]
    rules = "\n".join(f"| `{name}` | {', '.join(value) if isinstance(value, (list, tuple)) else value} |"
                      for name, value in stats["rules"].items())
    near_dup = (f" A row is also dropped, as `duplicate_near`, when its caption's word 3-grams are at least "
                f"{stats['near_dup']} Jaccard-similar (MinHash and LSH) to an earlier kept row's."
                if stats.get("near_dup") else "")
    columns = "\n".join(f"| `{f.name}` | {f.type} | {COLUMN_MEANINGS.get(f.name, 'passed through from the input')} |"
                        for f in schema)
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data-*.parquet
dataset_info:
  download_size: {stats['data_bytes']}
  splits:
  - name: train
    num_examples: {stats['rows_out']}
---
# CapsFusion captions

Captions fused by `{settings.model}` from raw web alt-texts (`{settings.columns['raw_caption']}`) and
synthetic captions (`{settings.columns['synthetic_caption']}`), made with capsfus-hpc {stats['package_version']}.

## Counts

| | rows |
| --- | ---: |
""" + "\n".join(f"| {what} | {n} |" for what, n in counts) + f"""

Rejected rows, with their reasons, are in `rejects.parquet`; nothing was dropped silently.

## Filters

Rows whose input could not be fused, and fused captions failing a rule, are rejected.{_dedup(stats)}{near_dup}

| rule threshold | value |
| --- | --- |
{rules}

## Provenance

| | |
| --- | --- |
| model | `{settings.model}` |
| model revision | `{settings.model_revision}` |
| generation | num_beams={settings.num_beams}, max_new_tokens={settings.max_new_tokens}, no sampling |
| prompt template sha256 | `{settings.prompt_template_sha256}` |
| manifest sha256 | `{stats['manifest_sha256']}` |
| run folder | `{stats['run']}` |

## Columns

Rows are in `row_id` order, in row groups of about {stats['row_group_rows']} rows; row groups carry
min/max statistics for the numeric columns (so a reader can select `row_id` ranges), not for text.

| column | type | meaning |
| --- | --- | --- |
{columns}
"""
