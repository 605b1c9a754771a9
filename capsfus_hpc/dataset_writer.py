"""The final data files: zstd parquet, rolled over at a target size, with large row groups.
(rejects.parquet is written the same way, as one file with no target size.)"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path
from .parquet_layout import statistics_columns


class DataWriter:
    """Buffers accepted rows into row groups of `row_group_rows` and starts a new file once the
    current one has passed `target_bytes`. Each file appears under its final name only when
    complete (atomic_path); `files` lists them in order."""

    def __init__(self, file_for: Callable[[int], Path], schema: pa.Schema, target_bytes: float, row_group_rows: int):
        self.file_for, self.schema = file_for, schema
        self.target_bytes, self.row_group_rows = target_bytes, row_group_rows
        self.files: list[str] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._file: ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> "DataWriter":
        return self

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        combined = pa.concat_tables(self._pending)
        group, rest = combined.slice(0, rows), combined.slice(rows)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if self._writer is None:
            self._open()
        self._writer.write_table(group, row_group_size=rows)
        if self._tmp.stat().st_size >= self.target_bytes:
            self._close_file()

    def _open(self) -> None:
        path = self.file_for(len(self.files))
        self._file = ExitStack()
        self._tmp = self._file.enter_context(atomic_path(path))
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd",
                                        write_statistics=statistics_columns(self.schema))
        self.files.append(path.name)

    def _close_file(self) -> None:
        self._writer.close()
        self._writer = None
        self._file.close()  # fsync and rename into place
        self._file = None

    def __exit__(self, kind, error, trace) -> None:
        if error is None:
            if self._pending_rows:
                self._flush(self._pending_rows)
            if self._writer is None and not self.files:
                self._open()  # an empty dataset is still one valid file
            if self._writer is not None:
                self._close_file()
        elif self._writer is not None:  # the file being filled goes; finished ones are the caller's
            self._writer.close()
            self._file.__exit__(kind, error, trace)
