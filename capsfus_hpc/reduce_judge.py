"""Reduce stage 1, one task per group of shards: read and verify each part, judge every fused
caption, and spill the dedup keys of the rows that pass into hash partitions.

Commit order: the rejects file and every partition file appear atomically
(possibly empty), then done.json with the counts; a task that did not write done.json is run
again whole.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import atomic_path, atomic_write_json
from .caption_screen import judge_column
from .columns import DETAIL, FINISH_REASON, FUSED_CAPTION, REASON, ROW_ID, STATUS, STATUS_INVALID, STATUS_OK
from .dedup import key_hashes, partition_of
from .keys import normalize_caption_column, normalize_url_column
from .progress import read_progress
from .reconcile import committed_parts, iter_tables
from .reduce_plan import CAPTION, KEY, read_plan
from .settings import load_run

CAPTION_REASON_PREFIX = "caption_"
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"
JUDGED_SCHEMA = pa.schema([pa.field(ROW_ID, pa.int64()), pa.field(REJECT_REASON, pa.string()),
                           pa.field(REJECT_DETAIL, pa.string())])
SPILL_SCHEMA = pa.schema([pa.field(ROW_ID, pa.int64()), pa.field("key", pa.large_string())])
BATCH_ROWS = 65_536  # parts are judged in batches of about this many rows


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns and types (absent ones null)."""
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def batches(parts, schema: pa.Schema, readers: int = 1):
    """The parts' verified rows, conformed to the schema, in batches of about BATCH_ROWS."""
    pending, rows = [], 0
    for _, table in iter_tables(parts, 2 * BATCH_ROWS, readers):
        pending.append(table)
        rows += table.num_rows
        if rows >= BATCH_ROWS:
            yield conform(pa.concat_tables(pending, promote_options="permissive"), schema).combine_chunks()
            pending, rows = [], 0
    if pending:
        yield conform(pa.concat_tables(pending, promote_options="permissive"), schema).combine_chunks()


class _Spill:
    """One IPC file per partition of each key kind, written as batches arrive."""

    def __init__(self, stack: ExitStack, paths, task: int, kinds: tuple[str, ...], partitions: int):
        self.partitions = partitions
        self.writers = {(kind, p): stack.enter_context(pa.ipc.new_file(
            stack.enter_context(atomic_path(paths.map_keys(task, kind, p))), SPILL_SCHEMA))
            for kind in kinds for p in range(partitions)}

    def write(self, kind: str, row_ids: pa.Array, keys: pa.Array) -> None:
        valid = keys.is_valid()
        row_ids, keys = row_ids.filter(valid), keys.filter(valid)
        where = partition_of(key_hashes(keys), self.partitions)
        for p in np.unique(where).tolist():
            rows = pa.array(np.flatnonzero(where == p))
            self.writers[(kind, p)].write_table(pa.table([row_ids.take(rows), keys.take(rows)], schema=SPILL_SCHEMA))


def _judge_batch(table: pa.Table, columns, plan, spill: _Spill, counts: Counter) -> pa.Table:
    """Rejected rows of the batch (row_id, reason, detail); spills the keys of the rest.
    Only the columns the rules and keys read are filtered, not the whole batch; after the rules,
    only those the keys read."""
    ok = pc.equal(table.column(STATUS), STATUS_OK).fill_null(False)
    has_key = columns.key is not None and columns.key in table.column_names
    keyed = [ROW_ID, *([columns.key] if has_key else []), *([FUSED_CAPTION] if CAPTION in plan.kinds else [])]
    needed = [*keyed, FUSED_CAPTION, columns.raw_caption, columns.synthetic_caption, FINISH_REASON]
    rejected = []
    if not pc.all(ok).as_py():
        invalid = table.filter(pc.invert(ok))
        rejected.append(pa.table([invalid.column(ROW_ID),
                                  invalid.column(REASON).cast(pa.string()).fill_null(STATUS_INVALID),
                                  invalid.column(DETAIL).cast(pa.string())], schema=JUDGED_SCHEMA))
        counts.update(rejected[0].column(REJECT_REASON).to_pylist())
        table = table.select(list(dict.fromkeys(needed))).filter(ok)
    counts["ok"] += table.num_rows
    verdicts = judge_column(table.column(FUSED_CAPTION), table.column(columns.raw_caption),
                            table.column(columns.synthetic_caption), table.column(FINISH_REASON), plan.options.rules)
    if verdicts:
        rows, reasons, details = zip(*verdicts)
        reasons = [CAPTION_REASON_PREFIX + r for r in reasons]
        counts.update(reasons)
        rejected.append(pa.table([table.column(ROW_ID).take(pa.array(rows)), pa.array(reasons, pa.string()),
                                  pa.array(details, pa.string())], schema=JUDGED_SCHEMA))
        keep = np.ones(table.num_rows, np.bool_)
        keep[list(rows)] = False
        table = table.select(list(dict.fromkeys(keyed))).filter(pa.array(keep))
    row_ids = table.column(ROW_ID).combine_chunks()
    if has_key:
        spill.write(KEY, row_ids, normalize_url_column(table.column(columns.key).cast(pa.string())))
    if CAPTION in plan.kinds:
        spill.write(CAPTION, row_ids, normalize_caption_column(table.column(FUSED_CAPTION)))
    return pa.concat_tables(rejected) if rejected else JUDGED_SCHEMA.empty_table()


def judge_task(final_dir: str, task: int) -> dict:
    """Judge the shards of judge task `task` of the plan in FINAL/.reduce/plan.json."""
    plan = read_plan(Path(final_dir))
    run, out = plan.run_paths, plan.final_paths
    _, manifest = load_run(run)
    shard_ids = set(plan.judge_tasks[task])
    records = {shard: record for shard in shard_ids if (record := read_progress(run.progress(shard))) is not None}
    parts, _ = committed_parts(run, manifest, records, shard_ids)
    counts: Counter = Counter()
    out.map_dir(task).mkdir(parents=True, exist_ok=True, mode=0o755)
    out.map_done(task).unlink(missing_ok=True)
    with ExitStack() as stack:
        spill = _Spill(stack, out, task, plan.kinds, plan.partitions)
        rejects = stack.enter_context(pq.ParquetWriter(stack.enter_context(atomic_path(out.map_rejects(task))),
                                                       JUDGED_SCHEMA, compression="zstd"))
        for batch in batches(parts, plan.schema):
            counts["rows"] += batch.num_rows
            rejects.write_table(_judge_batch(batch, manifest.columns, plan, spill, counts))
    done = {"rows": counts.pop("rows", 0), "ok": counts.pop("ok", 0), "rejected": dict(sorted(counts.items())),
            "parts": len(parts)}
    atomic_write_json(out.map_done(task), done)
    return done
