"""Reconciliation: which committed parts hold which manifest rows, checked against the
progress records, and what is missing, named per shard with the command that fixes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import sha256_bytes
from .columns import ROW_ID
from .errors import CapsfusError
from .manifest import Manifest, Shard
from .paths import RunPaths
from .progress import ChunkRecord, ProgressRecord
from .status import DONE, RunStatus

MISSING = "is missing"
DAMAGED = "does not match its checksum in the progress record (damaged on disk?); `resume` regenerates it"


@dataclass(frozen=True)
class Part:
    shard: Shard
    chunk: ChunkRecord
    path: Path


@dataclass(frozen=True)
class Gap:
    """Rows of a shard that no committed part holds."""

    shard: int
    row_id_start: int
    row_id_stop: int

    @property
    def rows(self) -> int:
        return self.row_id_stop - self.row_id_start


def _part_error(part: Part, problem: str) -> CapsfusError:
    return CapsfusError(f"shard {part.shard.id} chunk {part.chunk.index}: part {part.path} {problem}")


def committed_parts(paths: RunPaths, manifest: Manifest, records: dict[int, ProgressRecord],
                    shard_ids: set[int] | None = None) -> tuple[list[Part], list[Gap]]:
    """Every committed part in manifest order (of the given shards, else all), and the gaps;
    chunks must tile each shard from its start."""
    parts, gaps = [], []
    for shard in manifest.shards:
        if shard_ids is not None and shard.id not in shard_ids:
            continue
        record = records.get(shard.id)
        expected = shard.row_id_start
        for chunk in record.chunks if record else ():
            if chunk.row_id_start != expected:
                raise CapsfusError(f"shard {shard.id} chunk {chunk.index}: starts at row {chunk.row_id_start}, "
                                   f"expected {expected}")
            expected = chunk.row_id_stop
            parts.append(Part(shard, chunk, paths.part(shard.id, chunk.index)))
        if expected > shard.row_id_stop:
            raise CapsfusError(f"shard {shard.id}: committed rows end at {expected}, past the shard's end")
        if expected < shard.row_id_stop:
            gaps.append(Gap(shard.id, expected, shard.row_id_stop))
    return parts, gaps


def parts_schema(parts: list[Part]) -> pa.Schema:
    """The schema every part's rows fit, reading one footer per schema fingerprint that the
    progress records name (each footer when they name none); every part's size is checked, and
    the full checksum when its rows are read. A part matching its checksum is the file the
    worker fingerprinted, so the footers not read hold nothing new."""
    schemas, firsts = {}, {}
    for part in parts:
        try:
            size = part.path.stat().st_size
        except FileNotFoundError as exc:
            raise _part_error(part, MISSING) from exc
        if size != part.chunk.bytes:
            raise _part_error(part, DAMAGED)
        key = part.chunk.schema_sha256 or part.path
        if key not in schemas:
            try:
                schemas[key], firsts[key] = pq.read_schema(part.path), part
            except (OSError, pa.ArrowException) as exc:
                raise _part_error(part, DAMAGED) from exc
    try:
        return pa.unify_schemas(list(schemas.values()), promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise _schema_clash(list(schemas.values()), list(firsts.values())) from exc


def _schema_clash(schemas: list[pa.Schema], parts: list[Part]) -> CapsfusError:
    """The first part whose columns no earlier part's types take in, named with the column."""
    unified = schemas[0]
    for schema, part in zip(schemas[1:], parts[1:]):
        try:
            unified = pa.unify_schemas([unified, schema], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            name = next(f.name for f in schema if f.name in unified.names and not _unify(unified.field(f.name), f))
            # manifest build refuses inputs whose columns differ so: the part changed after the worker wrote it
            return _part_error(part, f"has column {name} as {schema.field(name).type} where the parts before it "
                                     f"have {unified.field(name).type}: not as the worker wrote it; redo the "
                                     f"shard (delete its folder and resume)")
    return CapsfusError("the parts' schemas do not unify")


def _unify(a: pa.Field, b: pa.Field) -> bool:
    try:
        pa.unify_schemas([pa.schema([a]), pa.schema([b])], promote_options="permissive")
        return True
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return False


def read_part(part: Part, columns: list[str] | None = None, verify: bool = True) -> pa.Table:
    """The part's rows (of the given columns that it has, and row_id; else all), after checking
    that it holds exactly its chunk's rows and (if `verify`) its checksum. Unverified, a part
    that cannot be decoded is still named damaged when its checksum says so."""
    try:
        data = part.path.read_bytes()
    except FileNotFoundError as exc:
        raise _part_error(part, MISSING) from exc
    if len(data) != part.chunk.bytes or (verify and sha256_bytes(data) != part.chunk.sha256):
        raise _part_error(part, DAMAGED)
    try:
        return _decode_part(part, data, columns)
    except Exception as exc:  # unverified bytes can fail anywhere in decoding: the checksum says why
        if not verify and sha256_bytes(data) != part.chunk.sha256:
            raise _part_error(part, DAMAGED) from exc
        if isinstance(exc, CapsfusError):
            raise
        raise _part_error(part, f"cannot be read ({type(exc).__name__}: {exc})") from exc


def _decode_part(part: Part, data: bytes, columns: list[str] | None) -> pa.Table:
    # ParquetFile.read: a third of read_table's cost for a small file (no dataset discovery).
    file = pq.ParquetFile(pa.BufferReader(data))
    if columns is not None:
        names = set(file.schema_arrow.names)
        columns = [ROW_ID, *(c for c in columns if c in names and c != ROW_ID)]
    table = file.read(columns, use_threads=False)
    row_ids = table.column(ROW_ID)
    # A chunk's own to_numpy: the chunked array's took 60 times as long (0.9 us a row).
    if (table.num_rows != part.chunk.rows or row_ids.null_count or not np.array_equal(
            row_ids.chunk(0).to_numpy() if row_ids.num_chunks == 1 else row_ids.to_numpy(),
            np.arange(part.chunk.row_id_start, part.chunk.row_id_stop))):
        raise _part_error(part, f"does not hold rows {part.chunk.row_id_start}..{part.chunk.row_id_stop - 1} "
                                "exactly once")
    return table


def incomplete_message(paths: RunPaths, status: RunStatus) -> str:
    lines = [f"  shard {s.shard}: {s.state}, {s.rows_done}/{s.rows_total} rows" + (f": {s.error}" if s.error else "")
             for s in status.shards if s.state != DONE]
    return (f"run {paths.root} is incomplete: {len(lines)} of {len(status.shards)} shards are not done\n"
            + "\n".join(lines)
            + f"\nfinish them with: capsfus-hpc resume {paths.root}   (or reduce with --allow-partial)")
