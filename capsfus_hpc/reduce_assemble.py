"""Reduce stage 3, one task: write the final dataset in manifest order.

Every row of the parts (read again and checked against their checksums again) goes to the data
files unless a judge task rejected it or a dedup task found it a duplicate; those go to
rejects.parquet with the reason. Only the dropped rows are held in memory (a row id, a winner
and a code each), not the keys.
"""

from __future__ import annotations

import json
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .atomic import atomic_write_bytes, atomic_write_json
from .columns import DETAIL, REASON, ROW_ID, STATUS
from .dataset_card import dataset_card
from .dataset_writer import DataWriter
from .errors import CapsfusError
from .reconcile import committed_parts
from .reduce_dedup import DUPLICATE_OF, duplicates_found
from .reduce_judge import REJECT_DETAIL, REJECT_REASON, batches, conform
from .reduce_plan import CAPTION, KEY, NEAR, ReducePlan, read_plan, rules_document
from .settings import load_run
from .status import read_records

DUPLICATE_KEY = "duplicate_key"
DUPLICATE_CAPTION = "duplicate_caption"
DUPLICATE_NEAR = "duplicate_near"
DUPLICATES_SCHEMA = pa.schema([pa.field(ROW_ID, pa.int64()), pa.field(DUPLICATE_OF, pa.int64()),
                               pa.field(REJECT_REASON, pa.string())])
_JUDGED, _KEY, _CAPTION, _NEAR = 0, 1, 2, 3
_KIND_REASON = {_KEY: DUPLICATE_KEY, _CAPTION: DUPLICATE_CAPTION, _NEAR: DUPLICATE_NEAR}


@dataclass
class _Dropped:
    """Dropped rows sorted by row id: the code says judged (reason in `judged`) or which duplicate."""

    row_ids: np.ndarray
    codes: np.ndarray
    index: np.ndarray  # row in `judged` for a judged row, else the winner's row id
    judged: pa.Table

    @classmethod
    def load(cls, plan: ReducePlan) -> "_Dropped":
        out = plan.final_paths
        judged = pa.concat_tables([pq.read_table(out.map_rejects(t)) for t in range(len(plan.judge_tasks))])
        found = {kind: duplicates_found(plan, kind) for kind in plan.kinds}
        if plan.options.near_dup:
            found[NEAR] = duplicates_found(plan, NEAR)
        row_ids = [judged.column(ROW_ID).to_numpy()]
        codes, index = [np.full(judged.num_rows, _JUDGED, np.int8)], [np.arange(judged.num_rows)]
        for code, kind in ((_KEY, KEY), (_CAPTION, CAPTION), (_NEAR, NEAR)):
            if kind in found:
                row_ids.append(found[kind].column(ROW_ID).to_numpy())
                codes.append(np.full(found[kind].num_rows, code, np.int8))
                index.append(found[kind].column(DUPLICATE_OF).to_numpy())
        row_ids = np.concatenate(row_ids)
        order = np.argsort(row_ids, kind="stable")
        if len(row_ids) and (np.diff(row_ids[order]) == 0).any():
            raise CapsfusError("internal error: a row was dropped twice (judged and duplicate, or two kinds)")
        return cls(row_ids[order], np.concatenate(codes)[order], np.concatenate(index)[order], judged)

    def split(self, table: pa.Table, key_name: str) -> tuple[pa.Table, pa.Table]:
        """(kept rows, dropped rows with reason, detail and winner) of a batch of rows in row id order."""
        row_ids = table.column(ROW_ID).to_numpy()
        lo, hi = np.searchsorted(self.row_ids, [row_ids[0], row_ids[-1] + 1]) if len(row_ids) else (0, 0)
        if lo == hi:
            return table, None
        offsets = np.searchsorted(row_ids, self.row_ids[lo:hi])
        keep = np.ones(table.num_rows, np.bool_)
        keep[offsets] = False
        codes, index = self.codes[lo:hi], self.index[lo:hi]
        judged = codes == _JUDGED
        # Judged rows take their reason and detail from the judge tasks; duplicates get theirs
        # from the code and the winner, built column-wise.
        judged_rows = self.judged.take(pa.array(index, pa.int64(), mask=~judged))  # null where a duplicate
        winners = pa.array(index, pa.int64(), mask=judged)
        by_code = range(_NEAR + 1)  # the codes, as indexes into these per-code texts
        said = {_KEY: f"same {key_name}", _CAPTION: "same caption", _NEAR: "caption nearly the same"}
        what = np.array([f"{said[c]} as row " if c in said else "" for c in by_code], object)[codes]
        kinds = np.array([_KIND_REASON.get(c, "") for c in by_code], object)[codes]
        mask = pa.array(judged)
        reasons = pc.if_else(mask, judged_rows.column(REJECT_REASON), pa.array(kinds, pa.string()))
        details = pc.if_else(mask, judged_rows.column(REJECT_DETAIL),
                             pc.binary_join_element_wise(pa.array(what, pa.string()), pc.cast(winners, pa.string()), ""))
        dropped = table.take(pa.array(offsets))
        for name, values in ((REJECT_REASON, reasons), (REJECT_DETAIL, details), (DUPLICATE_OF, winners)):
            dropped = dropped.append_column(name, values)
        return table.filter(pa.array(keep)), dropped

    def counts(self) -> dict[str, int]:
        return {_KIND_REASON[c]: int((self.codes == c).sum()) for c in (_KEY, _CAPTION, _NEAR)
                if (self.codes == c).any()}


def _judge_counts(plan: ReducePlan) -> tuple[int, dict[str, int]]:
    ok, rejected = 0, {}
    for task in range(len(plan.judge_tasks)):
        path = plan.final_paths.map_done(task)
        if not path.exists():
            raise CapsfusError(f"judge task {task} did not finish ({path} is missing); run the reduce again")
        done = json.loads(path.read_text())
        ok += done["ok"]
        for reason, count in done["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + count
    return ok, dict(sorted(rejected.items()))


def _write_dropped(rejects: DataWriter, dropped: pa.Table | None, duplicates: DataWriter | None,
                   found: pa.Table | None) -> None:
    if dropped is not None:
        rejects.write(dropped)
    if found is not None:
        duplicates.write(found)


def assemble_task(final_dir: str, on_rows=None) -> dict:
    """Write the data files, rejects, duplicates, card and, last, stats.json; returns the stats."""
    plan = read_plan(Path(final_dir))
    run, out, options = plan.run_paths, plan.final_paths, plan.options
    settings, manifest = load_run(run)
    parts, gaps = committed_parts(run, manifest, read_records(run, manifest))
    dropped = _Dropped.load(plan)
    ok, rejected = _judge_counts(plan)
    data_schema = pa.schema([f for f in plan.schema if f.name not in (STATUS, REASON, DETAIL)])
    rejects_schema = pa.schema([*plan.schema, pa.field(REJECT_REASON, pa.string()),
                                pa.field(REJECT_DETAIL, pa.string()), pa.field(DUPLICATE_OF, pa.int64())])
    rows_out = 0
    # Commit order: each file appears under its final name only when complete (atomic_path):
    # the data files as they fill, then (as the stack unwinds) duplicates and rejects; then the
    # card, and stats.json last, which marks a complete reduce.
    with ExitStack() as stack:
        rejects = stack.enter_context(DataWriter(lambda _: out.rejects, rejects_schema, float("inf"),
                                                 options.row_group_rows))
        duplicates = stack.enter_context(DataWriter(lambda _: out.duplicates, DUPLICATES_SCHEMA, float("inf"),
                                                    options.row_group_rows)) if options.write_duplicates else None
        data = stack.enter_context(DataWriter(out.data_file, data_schema, options.target_file_bytes,
                                              options.row_group_rows))
        # Two threads write (parquet encoding releases the GIL): one the data files, the
        # longest job of this stage, and one the rejects and duplicates; so encoding overlaps
        # splitting the next batch. Each file has one writer; at most two batches wait.
        data_writer = stack.enter_context(ThreadPoolExecutor(1))
        dropped_writer = stack.enter_context(ThreadPoolExecutor(1))
        pending = deque()
        # The parts are read again, checksums and all, on two threads (decoding releases the
        # GIL) beside the encoder: handing rows over from the judge tasks as uncompressed Arrow
        # cost them more than this, and ~330 bytes a row of scratch space.
        for table in batches(parts, plan.schema, readers=2):
            kept, dropped_rows = dropped.split(table, manifest.columns.key)
            rows_out += kept.num_rows
            found = None
            if dropped_rows is not None and duplicates is not None:
                found = conform(dropped_rows.filter(pc.is_valid(dropped_rows.column(DUPLICATE_OF))), DUPLICATES_SCHEMA)
            pending.append((data_writer.submit(data.write, conform(kept, data_schema)),
                            dropped_writer.submit(_write_dropped, rejects, dropped_rows, duplicates, found)))
            while len(pending) > 2:
                for future in pending.popleft():
                    future.result()
            if on_rows:
                on_rows(table.num_rows)
        while pending:
            for future in pending.popleft():
                future.result()
    duplicates_by_kind = dropped.counts()
    missing_rows = sum(gap.rows for gap in gaps)
    stats = {
        "rows_in": manifest.total_rows,
        "ok": ok,
        "rejected": rejected,
        "rejected_total": sum(rejected.values()),
        "duplicates": sum(duplicates_by_kind.values()),
        "duplicates_by_kind": duplicates_by_kind,
        "rows_out": rows_out,
        "missing_rows": missing_rows,
        "missing": [asdict(gap) for gap in gaps],
        "shards": len(manifest.shards),
        "parts": len(parts),
        "dedup_key": manifest.columns.key,
        "dedup_caption": options.dedup_caption,
        "near_dup": options.near_dup,
        "target_file_bytes": options.target_file_bytes,
        "row_group_rows": options.row_group_rows,
        "rules": rules_document(options.rules),
        "run": str(run.root),
        "manifest_sha256": settings.manifest_sha256,
        "model": settings.model,
        "model_revision": settings.model_revision,
        "package_version": __version__,
        "files": {"data": data.files, "rejects": out.rejects.name,
                  "duplicates": out.duplicates.name if options.write_duplicates else None},
    }
    if stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] + missing_rows != stats["rows_in"]:
        raise CapsfusError(f"internal error: rows do not add up: {json.dumps(stats)}")
    atomic_write_bytes(out.card, dataset_card(stats, data_schema, settings).encode())
    atomic_write_json(out.stats, stats)
    for entry in out.work.iterdir():
        if entry != out.logs:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if not any(out.work.iterdir()):
        out.work.rmdir()
    return stats
