"""Reading a shard's rows from its parquet file, one chunk at a time, touching only the
row groups that overlap the rows asked for."""

from __future__ import annotations

import bisect
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class ShardReader:
    def __init__(self, path: Path):
        self.file = pq.ParquetFile(path)
        metadata = self.file.metadata
        self.group_starts = [0]
        for i in range(metadata.num_row_groups):
            self.group_starts.append(self.group_starts[-1] + metadata.row_group(i).num_rows)
        # Successive chunks usually fall in the same row groups: keep the last ones decoded.
        self._cached: tuple[tuple[int, ...], pa.Table] | None = None

    def read(self, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) of the file."""
        first = bisect.bisect_right(self.group_starts, start) - 1
        last = bisect.bisect_left(self.group_starts, stop)
        groups = tuple(range(first, min(last, len(self.group_starts) - 1)))
        if self._cached is None or self._cached[0] != groups:
            table = self.file.read_row_groups(list(groups)) if groups else self.file.schema_arrow.empty_table()
            self._cached = (groups, table)
        return self._cached[1].slice(start - self.group_starts[first], stop - start)
