"""The reducer: reconcile every manifest row, split accepted from rejected rows, drop
duplicate keys, and assemble the final dataset.

Every input row ends in exactly one place: the final data (accepted), or rejects.parquet with
a reject_reason (an invalid input, an empty fused caption, or a duplicate key whose winner,
the first in manifest order, is named in duplicate_of).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_write, atomic_write_json, sha256_bytes
from .columns import DETAIL, FUSED_CAPTION, REASON, ROW_ID, STATUS, STATUS_OK
from .errors import CapsfusError
from .manifest import Manifest
from .paths import RunPaths
from .progress import ProgressRecord
from .settings import load_run
from .status import gather_status, read_records

DATA_FILE = "data-00000.parquet"
REJECTS_FILE = "rejects.parquet"
STATS_FILE = "stats.json"
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"
DUPLICATE_OF = "duplicate_of"
EMPTY_FUSED_CAPTION = "empty_fused_caption"
DUPLICATE_KEY = "duplicate_key"


@dataclass
class _Tally:
    ok: int = 0
    rejected: Counter = field(default_factory=Counter)
    duplicates: int = 0
    rows_out: int = 0
    parts: int = 0


def _incomplete_message(paths: RunPaths, settings, status) -> str:
    lines = []
    for shard in status.shards:
        if shard.state != "done":
            why = f": {shard.error}" if shard.error else ""
            lines.append(f"  shard {shard.shard}: {shard.state}, {shard.rows_done}/{shard.rows_total} rows{why}")
    return (f"run {paths.root} is incomplete: {len(lines)} of {len(status.shards)} shards are not done\n"
            + "\n".join(lines)
            + f"\nfinish them with: capsfus-hpc submit {settings.manifest} --output {paths.root} "
              f"--model {settings.model} --local")


def _parts(paths: RunPaths, manifest: Manifest, records: dict[int, ProgressRecord]):
    """(shard, chunk record, part path) in manifest order, checking the chunks tile every shard."""
    for shard in manifest.shards:
        record = records[shard.id]
        expected = shard.row_id_start
        for chunk in record.chunks:
            if chunk.row_id_start != expected:
                raise CapsfusError(f"shard {shard.id} chunk {chunk.index}: starts at row {chunk.row_id_start}, "
                                   f"expected {expected}")
            expected = chunk.row_id_stop
            yield shard, chunk, paths.part(shard.id, chunk.index)
        if expected != shard.row_id_stop:
            raise CapsfusError(f"shard {shard.id}: committed rows end at {expected}, the shard at {shard.row_id_stop}")


def _read_part(shard_id: int, chunk, path: Path) -> pa.Table:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise _part_error(shard_id, chunk, path, MISSING) from exc
    if len(data) != chunk.bytes or sha256_bytes(data) != chunk.sha256:
        raise _part_error(shard_id, chunk, path, DAMAGED)
    table = pq.read_table(pa.BufferReader(data))
    row_ids = table.column(ROW_ID)
    expected = pa.array(range(chunk.row_id_start, chunk.row_id_stop), pa.int64())
    if table.num_rows != chunk.rows or not row_ids.combine_chunks().equals(expected):
        raise CapsfusError(f"shard {shard_id} chunk {chunk.index}: part {path} does not hold rows "
                           f"{chunk.row_id_start}..{chunk.row_id_stop - 1} exactly once")
    return table


def _part_schema(shard_id: int, chunk, path: Path) -> pa.Schema:
    """The part's schema from its footer; the full checksum is verified when its rows are read."""
    try:
        if path.stat().st_size == chunk.bytes:
            return pq.read_schema(path)
    except FileNotFoundError as exc:
        raise _part_error(shard_id, chunk, path, MISSING) from exc
    except (OSError, pa.ArrowException):
        pass
    raise _part_error(shard_id, chunk, path, DAMAGED)


MISSING = "is missing"
DAMAGED = "does not match its checksum in the progress record (damaged on disk?)"


def _part_error(shard_id: int, chunk, path: Path, problem: str) -> CapsfusError:
    return CapsfusError(f"shard {shard_id} chunk {chunk.index}: part {path} {problem}")


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _split(table: pa.Table, key_column: str | None, winners: dict, tally: _Tally) -> tuple[pa.Table, pa.Table]:
    """(accepted rows, rejected rows with reason) of one part; `winners` maps kept keys to row ids."""
    status = table.column(STATUS).to_pylist()
    fused = table.column(FUSED_CAPTION).to_pylist()
    reasons = table.column(REASON).to_pylist()
    details = table.column(DETAIL).to_pylist()
    row_ids = table.column(ROW_ID).to_pylist()
    keys = table.column(key_column).to_pylist() if key_column in table.column_names else [None] * table.num_rows
    keep, reject, reject_reason, reject_detail, duplicate_of = [], [], [], [], []
    for i in range(table.num_rows):
        if status[i] != STATUS_OK:
            reject.append(i); reject_reason.append(reasons[i]); reject_detail.append(details[i]); duplicate_of.append(None)
            continue
        tally.ok += 1
        if not fused[i]:
            reject.append(i); reject_reason.append(EMPTY_FUSED_CAPTION)
            reject_detail.append("the model wrote an empty caption"); duplicate_of.append(None)
            continue
        key = keys[i]
        if key is not None and key in winners:
            reject.append(i); reject_reason.append(DUPLICATE_KEY)
            reject_detail.append(f"same {key_column} as row {winners[key]}"); duplicate_of.append(winners[key])
            tally.duplicates += 1
            continue
        if key is not None:
            winners[key] = row_ids[i]
        keep.append(i)
    for reason in reject_reason:
        if reason != DUPLICATE_KEY:
            tally.rejected[reason] += 1
    rejected = table.take(pa.array(reject, pa.int64()))
    rejected = rejected.append_column(REJECT_REASON, pa.array(reject_reason, pa.string()))
    rejected = rejected.append_column(REJECT_DETAIL, pa.array(reject_detail, pa.string()))
    rejected = rejected.append_column(DUPLICATE_OF, pa.array(duplicate_of, pa.int64()))
    return table.take(pa.array(keep, pa.int64())), rejected


def _prepare_final(final: Path) -> None:
    if final.exists() and any(final.iterdir()) and not (final / STATS_FILE).exists():
        raise CapsfusError(f"{final} is not empty and holds no earlier reduce output; choose an empty --final folder")
    final.mkdir(parents=True, exist_ok=True)
    # Without stats.json the folder reads as an unfinished reduce until this one completes.
    (final / STATS_FILE).unlink(missing_ok=True)


def reduce_run(paths: RunPaths, final: Path, on_part: Callable[[int], None] | None = None) -> dict:
    """Check the run is complete and intact, then write the final dataset; returns the stats."""
    settings, manifest = load_run(paths)
    status = gather_status(paths, manifest)
    if not status.complete:
        raise CapsfusError(_incomplete_message(paths, settings, status))
    records = read_records(paths, manifest)
    parts = list(_parts(paths, manifest, records))
    schema = pa.unify_schemas([_part_schema(shard.id, chunk, path) for shard, chunk, path in parts],
                              promote_options="permissive")
    data_schema = pa.schema([f for f in schema if f.name not in (STATUS, REASON, DETAIL)])
    rejects_schema = pa.schema([*schema, pa.field(REJECT_REASON, pa.string()), pa.field(REJECT_DETAIL, pa.string()),
                                pa.field(DUPLICATE_OF, pa.int64())])
    final = final.absolute()
    _prepare_final(final)
    tally = _Tally()
    winners: dict = {}
    key_column = manifest.columns.key

    def write_both(data_tmp: Path, rejects_tmp: Path) -> None:
        with pq.ParquetWriter(data_tmp, data_schema, compression="zstd") as data_out, \
             pq.ParquetWriter(rejects_tmp, rejects_schema, compression="zstd") as rejects_out:
            for shard, chunk, path in parts:
                table = _conform(_read_part(shard.id, chunk, path), schema)
                accepted, rejected = _split(table, key_column, winners, tally)
                data_out.write_table(_conform(accepted, data_schema))
                rejects_out.write_table(_conform(rejected, rejects_schema))
                tally.rows_out += accepted.num_rows
                tally.parts += 1
                if on_part:
                    on_part(chunk.rows)

    # Output order: rejects.parquet, then the data file, then stats.json, each atomic; stats.json
    # is written last and marks a complete reduce.
    atomic_write(final / DATA_FILE,
                 lambda data_tmp: atomic_write(final / REJECTS_FILE, lambda rejects_tmp: write_both(data_tmp, rejects_tmp)))
    stats = {
        "rows_in": manifest.total_rows,
        "ok": tally.ok,
        "rejected": dict(sorted(tally.rejected.items())),
        "rejected_total": sum(tally.rejected.values()),
        "duplicates": tally.duplicates,
        "rows_out": tally.rows_out,
        "shards": len(manifest.shards),
        "parts": tally.parts,
        "dedup_key": key_column,
        "run": str(paths.root),
        "manifest_sha256": settings.manifest_sha256,
        "files": {"data": [DATA_FILE], "rejects": REJECTS_FILE},
    }
    if stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] != stats["rows_in"]:
        raise CapsfusError(f"internal error: rows do not add up: {json.dumps(stats)}")
    atomic_write_json(final / STATS_FILE, stats)
    return stats


def reduce_task(run_dir: str, final: str) -> dict:
    """SLURM task entry point for `submit --then-reduce`: plain arguments, like worker.run_shards."""
    return reduce_run(RunPaths(Path(run_dir)), Path(final))
