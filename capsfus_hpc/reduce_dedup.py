"""Reduce stage 2, one task per partition and key kind: which rows share a key.

Key tasks cover the manifest in order, so reading a partition's files task by task gives its
rows in row id order. A task lists the rows of every key that more than one fused row holds,
each with the first of them (its group); the other rows need no more thought. Which row of a
group wins depends on which pass the caption rules, so assemble settles that as it judges, in
row id order: a passing row is kept unless a row kept before it is in one of its groups (a key's,
with --dedup-caption a caption's) or, with --near-dup, has nearly its caption (near_dup.py).
Only kept rows win, so a row dropped as a duplicate of one kind takes none of its other groups
with it (`settle_in_order`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from .atomic import atomic_path
from .columns import DUPLICATE_OF, ROW_ID
from .dedup import first_seen
from .errors import CapsfusError
from .near_dup import NearDuplicates
from .reduce_plan import ReducePlan, read_plan

_CHANGED = ("the parts changed during the reduce: a row the key tasks saw was not read by assemble; "
            "run the reduce again")
GROUP = "group"  # the first row id of the group: the first fused row with the key
GROUPS_SCHEMA = pa.schema([pa.field(ROW_ID, pa.int64()), pa.field(GROUP, pa.int64())])


def _read_ipc(path: Path) -> pa.Table:
    try:
        with pa.ipc.open_file(path) as reader:
            return reader.read_all()
    except FileNotFoundError as exc:
        raise CapsfusError(f"{path} is missing: an earlier reduce stage did not finish") from exc


def dedup_task(final_dir: str, kind: str, partition: int) -> int:
    """Write the rows of one partition that share their key, with their groups; returns how many."""
    plan = read_plan(Path(final_dir))
    out = plan.final_paths
    table = pa.concat_tables([_read_ipc(out.map_keys(task, kind, partition))
                              for task in range(len(plan.key_tasks))]).combine_chunks()
    row_ids = table.column(ROW_ID).to_numpy()
    first = first_seen(table.column("key").combine_chunks()) if table.num_rows else np.zeros(0, np.int64)
    rows = np.flatnonzero(np.bincount(first, minlength=len(first))[first] > 1)  # in groups of two or more
    groups = pa.table([pa.array(row_ids[rows]), pa.array(row_ids[first[rows]])], schema=GROUPS_SCHEMA)
    path = out.dedup(kind, partition)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with atomic_path(path) as tmp, pa.ipc.new_file(tmp, GROUPS_SCHEMA) as writer:
        writer.write_table(groups)
    return groups.num_rows


class DuplicateGroups:
    """The shared keys of one kind, settled batch by batch in row id order: the first row of a
    group to be offered wins, and each later one offered is a duplicate of it."""

    def __init__(self, row_ids: np.ndarray, groups: np.ndarray):
        order = np.argsort(row_ids, kind="stable")
        self.row_ids = row_ids[order]
        _, group_index = np.unique(groups[order], return_inverse=True)
        self.group = group_index.reshape(-1).astype(np.int64)
        self.winner = np.full(int(self.group.max()) + 1 if len(self.group) else 0, -1, np.int64)
        self._seen = 0  # members before this index have been in a batch

    @classmethod
    def load(cls, plan: ReducePlan, kind: str) -> "DuplicateGroups":
        table = pa.concat_tables([_read_ipc(plan.final_paths.dedup(kind, p)) for p in range(plan.partitions)])
        return cls(table.column(ROW_ID).to_numpy(), table.column(GROUP).to_numpy())

    def groups_of(self, row_ids: np.ndarray) -> np.ndarray:
        """For each row of a batch (row ids ascending, after every earlier batch), the index of
        its group, or -1 if no other row shares its key."""
        out = np.full(len(row_ids), -1, np.int64)
        if not len(row_ids):
            return out
        lo, hi = np.searchsorted(self.row_ids, [row_ids[0], row_ids[-1] + 1])
        members = self.row_ids[lo:hi]
        offsets = np.searchsorted(row_ids, members)
        if lo != self._seen or (len(members) and not np.array_equal(
                row_ids[np.minimum(offsets, len(row_ids) - 1)], members)):
            raise CapsfusError(_CHANGED)
        self._seen = hi
        out[offsets] = self.group[lo:hi]
        return out

    def settle(self, row_ids: np.ndarray, offered: np.ndarray) -> np.ndarray:
        """For each row of a batch, the winner's row id if it is offered and an earlier offered
        row of its group won, else -1 (the whole greedy pass when this is the only kind)."""
        groups = self.groups_of(row_ids)
        out = np.full(len(row_ids), -1, np.int64)
        rows = np.flatnonzero(offered & (groups >= 0))
        unique, first = np.unique(groups[rows], return_index=True)
        fresh = self.winner[unique] < 0
        self.winner[unique[fresh]] = row_ids[rows[first[fresh]]]
        winners = self.winner[groups[rows]]
        lost = winners != row_ids[rows]
        out[rows[lost]] = winners[lost]
        return out

    def check_all_seen(self) -> None:
        """After the last batch: every row that shares a key was in one."""
        if self._seen != len(self.row_ids):
            raise CapsfusError(_CHANGED)


def settle_in_order(row_ids: np.ndarray, offered: np.ndarray, kinds: list[DuplicateGroups],
                    near: NearDuplicates | None = None, captions: pa.Array | None = None) -> list[np.ndarray]:
    """One greedy pass in row id order over every kind at once: an offered row is kept unless a
    row kept before it shares one of its keys (checked in the order of `kinds`) or, with `near`,
    nearly its caption. Returns, per kind (then near), each row's winner or -1; a winner is
    always a kept row, so no key loses its last row to a duplicate that was dropped itself."""
    if near is None and len(kinds) == 1:
        return [kinds[0].settle(row_ids, offered)]
    in_groups = [kind.groups_of(row_ids) for kind in kinds]
    shared = np.logical_or.reduce([g >= 0 for g in in_groups]) if kinds else np.zeros(len(row_ids), bool)
    rows = np.flatnonzero(offered if near is not None else offered & shared).tolist()
    groups = [g.tolist() for g in in_groups]  # read row by row below: lists are quicker than arrays
    winners = [np.full(len(row_ids), -1, np.int64) for _ in range(len(kinds) + (near is not None))]
    texts = captions.take(pa.array(rows, pa.int64())).to_pylist() if near else [None] * len(rows)
    ids = row_ids.tolist()
    for row, text in zip(rows, texts):
        taken = next(((k, kind.winner[g]) for k, kind in enumerate(kinds)
                      if (g := groups[k][row]) >= 0 and kind.winner[g] >= 0), None)
        signature = near.signature(text) if taken is None and near is not None else None
        if signature is not None and (found := near.winner(signature)) is not None:
            taken = (len(kinds), found)
        if taken is not None:
            winners[taken[0]][row] = taken[1]
            continue
        for k, kind in enumerate(kinds):
            if groups[k][row] >= 0:
                kind.winner[groups[k][row]] = ids[row]
        if near is not None:
            near.keep(ids[row], signature)
    return winners
