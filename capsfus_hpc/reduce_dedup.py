"""Reduce stage 2, one task per partition and key kind: the first row of each key wins.

Judge tasks cover the manifest in order, so reading a partition's files task by task gives its
rows in row id order. Caption partitions run after every key partition: a row already dropped
for its key takes no part in caption dedup.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from .atomic import atomic_path
from .columns import ROW_ID
from .dedup import first_seen
from .errors import CapsfusError
from .reduce_plan import CAPTION, KEY, ReducePlan, read_plan

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
    table = pa.concat_tables([_read_ipc(plan.final_paths.dedup(kind, p)) for p in range(plan.partitions)])
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
    out.dedup(kind, partition).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with atomic_path(out.dedup(kind, partition)) as tmp, pa.ipc.new_file(tmp, FOUND_SCHEMA) as writer:
        writer.write_table(found)
    return found.num_rows
