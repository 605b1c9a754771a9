"""How our parquet files are encoded: zstd, min/max statistics only where a reader can use them,
and dictionaries only where values repeat. Parts (worker.commit_chunk) and the final data files
(dataset_writer.py) follow it."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq

from .columns import DETAIL, FINISH_REASON, REASON, STATUS

# The worker's own columns that take few values. Captions, keys and passthrough columns are
# as good as unique within a part, and a part (a few thousand rows) never outgrows the 1 MB
# at which the writer would give up on a dictionary: encoding them through one costs a third
# of reading a part and a fifth of writing it, for no smaller file.
PART_DICTIONARY_COLUMNS = (STATUS, REASON, DETAIL, FINISH_REASON)


def statistics_columns(schema: pa.Schema) -> list[str]:
    """The columns whose row groups get min/max statistics: all but the text ones. Rows are in
    row id order, so row_id ranges let a reader skip row groups; min and max of captions or URLs
    let it skip nothing, and computing them costs a quarter of the writing."""
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    return [f.name for f in schema if not any(is_text(f.type) for is_text in text)]


def part_bytes(table: pa.Table) -> bytes:
    """A part file's bytes: one row group of the chunk's rows."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=statistics_columns(table.schema),
                   use_dictionary=[name for name in PART_DICTIONARY_COLUMNS if name in table.column_names])
    return sink.getvalue().to_pybytes()


def schema_fingerprint(schema: pa.Schema) -> str:
    """A digest of the column names and types. The progress record keeps it for each part, so
    the reducer reads one footer per schema, not one per part (a run's parts share a handful)."""
    fields = [[f.name, str(f.type), f.nullable] for f in schema]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()
