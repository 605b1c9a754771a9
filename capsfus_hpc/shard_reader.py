"""Reading a shard's rows from its parquet file, one chunk at a time, touching only the
row groups that overlap the rows asked for.

Columns a writer stored as Arrow view types (string_view, binary_view: Polars writes them) are
read as plain string and binary, which every kernel the worker and the reducer use takes."""

from __future__ import annotations

import bisect
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _plain(kind: pa.DataType) -> pa.DataType:
    """The type with every view type in it (nested ones too) replaced by its plain form."""
    if pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        item = kind.value_field.with_type(_plain(kind.value_type))
        if pa.types.is_fixed_size_list(kind):
            return pa.list_(item, kind.list_size)
        return pa.large_list(item) if pa.types.is_large_list(kind) else pa.list_(item)
    if pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        return pa.list_(kind.value_field.with_type(_plain(kind.value_type)))
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_plain(field.type)) for field in kind])
    if pa.types.is_map(kind):
        return pa.map_(kind.key_field.with_type(_plain(kind.key_type)),
                       kind.item_field.with_type(_plain(kind.item_type)), kind.keys_sorted)
    return kind


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """An input's schema as the worker reads it (see above)."""
    return pa.schema([field.with_type(_plain(field.type)) for field in schema], schema.metadata)


class ShardReader:
    def __init__(self, path: Path):
        self.file = pq.ParquetFile(path)
        metadata = self.file.metadata
        self.group_starts = [0]
        for i in range(metadata.num_row_groups):
            self.group_starts.append(self.group_starts[-1] + metadata.row_group(i).num_rows)
        self.schema = plain_schema(self.file.schema_arrow)
        # Successive chunks usually fall in the same row groups: keep the last ones decoded.
        self._cached: tuple[tuple[int, ...], pa.Table] | None = None

    def read(self, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) of the file."""
        first = bisect.bisect_right(self.group_starts, start) - 1
        last = bisect.bisect_left(self.group_starts, stop)
        groups = tuple(range(first, min(last, len(self.group_starts) - 1)))
        if self._cached is None or self._cached[0] != groups:
            table = self.file.read_row_groups(list(groups)) if groups else self.file.schema_arrow.empty_table()
            self._cached = (groups, table if table.schema == self.schema else table.cast(self.schema))
        return self._cached[1].slice(start - self.group_starts[first], stop - start)
