"""Reduce stage 1, one task per group of shards: read each part's row ids, status and dedup
columns, and spill the normalised keys of the rows the workers fused into hash partitions.
Captions are judged later, where the rows are read whole (assemble), so this pass decodes only
the small columns (and the fused captions with --dedup-caption). It leaves the checksums to
assemble, which checks every part before it writes a row of it: a damaged part still stops
the reduce, and hashing every part twice cost a tenth of this pass.

Commit order: every partition file appears atomically (possibly empty), then done.json with
the counts; a task that did not write done.json is run again whole.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .atomic import atomic_path, atomic_write_json
from .columns import FUSED_CAPTION, ROW_ID, STATUS, STATUS_OK
from .dedup import key_hashes, partition_of
from .keys import normalize_caption_column, normalize_url_column
from .progress import read_progress
from .reconcile import committed_parts
from .reduce_judge import batches, read_rows
from .reduce_plan import CAPTION, KEY, read_plan
from .settings import load_run

SPILL_SCHEMA = pa.schema([pa.field(ROW_ID, pa.int64()), pa.field("key", pa.large_string())])


class _Spill:
    """One IPC file per partition of each key kind, written as batches arrive."""

    def __init__(self, stack: ExitStack, paths, task: int, kinds: tuple[str, ...], partitions: int):
        self.partitions = partitions
        self.writers = {(kind, p): stack.enter_context(pa.ipc.new_file(
            stack.enter_context(atomic_path(paths.map_keys(task, kind, p))), SPILL_SCHEMA))
            for kind in kinds for p in range(partitions)}

    def write(self, kind: str, row_ids: pa.Array, keys: pa.Array) -> None:
        # An empty key (a missing URL written as "", or a caption of punctuation only) is no key: its rows never share it.
        valid = pc.and_(keys.is_valid(), pc.greater(pc.binary_length(keys), 0)).fill_null(False)
        row_ids, keys = row_ids.filter(valid), keys.filter(valid)
        where = partition_of(key_hashes(keys), self.partitions)
        order = np.argsort(where, kind="stable")  # by partition, in row order within each
        bounds = np.searchsorted(where[order], np.arange(self.partitions + 1)).tolist()
        spilled = pa.table([row_ids, keys], schema=SPILL_SCHEMA).take(pa.array(order))
        for p in range(self.partitions):
            if bounds[p] < bounds[p + 1]:
                self.writers[(kind, p)].write_table(spilled.slice(bounds[p], bounds[p + 1] - bounds[p]))


def keys_task(final_dir: str, task: int) -> dict:
    """Spill the keys of key task `task` of the plan in FINAL/.reduce/plan.json; returns its counts."""
    plan = read_plan(Path(final_dir))
    run, out = plan.run_paths, plan.final_paths
    _, manifest = load_run(run)
    shard_ids = set(plan.key_tasks[task])
    records = {shard: record for shard in shard_ids if (record := read_progress(run.progress(shard))) is not None}
    parts, _ = committed_parts(run, manifest, records, shard_ids)
    key = manifest.columns.key if manifest.columns.key in plan.schema.names else None
    schema = pa.schema([plan.schema.field(name) for name in dict.fromkeys(
        [ROW_ID, STATUS, *([key] if key else []), *([FUSED_CAPTION] if CAPTION in plan.kinds else [])])])

    rows = ok = 0
    out.map_dir(task).mkdir(parents=True, exist_ok=True, mode=0o755)
    out.map_done(task).unlink(missing_ok=True)
    with ExitStack() as stack:
        spill = _Spill(stack, out, task, plan.kinds, plan.partitions)
        for table in batches(parts, read_rows(schema, verify=False)):
            rows += table.num_rows
            table = table.filter(pc.equal(table.column(STATUS), STATUS_OK).fill_null(False))
            ok += table.num_rows
            row_ids = table.column(ROW_ID).combine_chunks()
            if key:
                spill.write(KEY, row_ids, normalize_url_column(table.column(key).cast(pa.string())))
            if CAPTION in plan.kinds:
                spill.write(CAPTION, row_ids, normalize_caption_column(table.column(FUSED_CAPTION)))
    done = {"rows": rows, "ok": ok, "parts": len(parts)}
    atomic_write_json(out.map_done(task), done)
    return done
