"""Reduce stage 2, one task per partition and key kind: the first row of each key wins.

Judge tasks cover the manifest in order, so reading a partition's files task by task gives its
rows in row id order. Caption partitions run after every key partition: a row already dropped
for its key takes no part in caption dedup. Near duplicates (opt-in) come last, in one task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path
from .columns import FUSED_CAPTION, ROW_ID
from .dedup import first_seen
from .errors import CapsfusError
from .near_dup import near_duplicates
from .reconcile import committed_parts
from .reduce_judge import batches
from .reduce_plan import CAPTION, KEY, NEAR, ReducePlan, read_plan
from .settings import load_run
from .status import read_records

DUPLICATE_OF = "duplicate_of"
FOUND_SCHEMA = pa.schema([pa.field(ROW_ID, pa.int64()), pa.field(DUPLICATE_OF, pa.int64())])


def _read_ipc(path: Path) -> pa.Table:
    try:
        with pa.ipc.open_file(path) as reader:
            return reader.read_all()
    except FileNotFoundError as exc:
        raise CapsfusError(f"{path} is missing: an earlier reduce stage did not finish") from exc


def duplicates_found(plan: ReducePlan, kind: str) -> pa.Table:
    """Every duplicate of a kind (row_id, duplicate_of), sorted by row id."""
    partitions = 1 if kind == NEAR else plan.partitions
    table = pa.concat_tables([_read_ipc(plan.final_paths.dedup(kind, p)) for p in range(partitions)])
    return table.take(pa.compute.sort_indices(table, [(ROW_ID, "ascending")]))


def dedup_task(final_dir: str, kind: str, partition: int) -> int:
    """Find the duplicates of one partition; returns how many."""
    plan = read_plan(Path(final_dir))
    out = plan.final_paths
    table = pa.concat_tables([_read_ipc(out.map_keys(task, kind, partition))
                              for task in range(len(plan.judge_tasks))]).combine_chunks()
    if kind == CAPTION:
        dropped = duplicates_found(plan, KEY).column(ROW_ID).to_numpy()
        table = table.filter(pa.array(~np.isin(table.column(ROW_ID).to_numpy(), dropped)))
    row_ids = table.column(ROW_ID).to_numpy()
    first = first_seen(table.column("key").combine_chunks()) if table.num_rows else np.zeros(0, np.int64)
    losers = np.flatnonzero(first != np.arange(len(first)))
    found = pa.table([pa.array(row_ids[losers]), pa.array(row_ids[first[losers]])], schema=FOUND_SCHEMA)
    _write_found(out.dedup(kind, partition), found)
    return found.num_rows


def _write_found(path: Path, found: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with atomic_path(path) as tmp, pa.ipc.new_file(tmp, FOUND_SCHEMA) as writer:
        writer.write_table(found)


def near_dup_task(final_dir: str) -> int:
    """Near-duplicate captions among the rows every earlier stage kept, in one pass in row id order."""
    plan = read_plan(Path(final_dir))
    out = plan.final_paths
    dropped = [pq.read_table(out.map_rejects(t), columns=[ROW_ID]).column(ROW_ID).to_numpy()
               for t in range(len(plan.judge_tasks))]
    dropped += [duplicates_found(plan, kind).column(ROW_ID).to_numpy() for kind in plan.kinds]
    dropped = np.sort(np.concatenate(dropped))

    run = plan.run_paths
    _, manifest = load_run(run)
    parts, _ = committed_parts(run, manifest, read_records(run, manifest))

    def kept_captions():
        for batch in batches(parts, plan.schema):
            row_ids = batch.column(ROW_ID).to_numpy()
            keep = ~np.isin(row_ids, dropped)
            yield from zip(row_ids[keep].tolist(), batch.column(FUSED_CAPTION).filter(pa.array(keep)).to_pylist())

    pairs = list(near_duplicates(kept_captions(), plan.options.near_dup))
    found = pa.table([pa.array([p[0] for p in pairs], pa.int64()), pa.array([p[1] for p in pairs], pa.int64())],
                     schema=FOUND_SCHEMA)
    _write_found(out.dedup(NEAR, 0), found)
    return found.num_rows
