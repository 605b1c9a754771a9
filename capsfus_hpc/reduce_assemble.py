"""Reduce stage 3, one task: judge every row and write the final dataset, in manifest order.

The parts are read (checksums checked) and screened on reader threads, one per CPU up to
MAX_READERS; each batch is judged (reduce_judge.py), its rows that pass are offered to the
duplicate groups of each kind in turn (reduce_dedup.py), then to the near-duplicate index
(near_dup.py, opt-in); what is left goes to the data files, the rest to rejects.parquet with the
reason. Reading each row once, here, is why captions are not judged in the parallel key tasks:
judging there meant decoding every part twice. The dataset is written into FINAL/.reduce/dataset/
and moved into FINAL only once complete (reduce_publish.py).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .atomic import atomic_write_bytes, atomic_write_json
from .columns import DETAIL, FUSED_CAPTION, REASON, ROW_ID, STATUS
from .dataset_card import dataset_card
from .dataset_writer import DataWriter
from .errors import CapsfusError
from .near_dup import NearDuplicates
from .reconcile import committed_parts
from .reduce_dedup import DUPLICATE_OF, DuplicateGroups, settle_in_order
from .reduce_judge import REJECT_DETAIL, REJECT_REASON, Judged, batches, conform, judge_batch, load_screen, screened_rows
from .reduce_plan import CAPTION, KEY, ReducePlan, read_plan, rules_document
from .reduce_publish import publish
from .settings import load_run
from .status import read_records

# Reader threads, one per CPU up to this: each holds up to two batches (~25 MB each) in flight,
# and past a handful the main thread's judging and the one encoder are the limit anyway.
MAX_READERS = 8
DUPLICATE_KEY = "duplicate_key"
DUPLICATE_CAPTION = "duplicate_caption"
DUPLICATE_NEAR = "duplicate_near"
DUPLICATES_SCHEMA = pa.schema([pa.field(ROW_ID, pa.int64()), pa.field(DUPLICATE_OF, pa.int64()),
                               pa.field(REJECT_REASON, pa.string())])


def _keyed_rows(plan: ReducePlan) -> int:
    """How many fused rows the key tasks saw; each must have finished."""
    ok = 0
    for task in range(len(plan.key_tasks)):
        path = plan.final_paths.map_done(task)
        if not path.exists():
            raise CapsfusError(f"key task {task} did not finish ({path} is missing); run the reduce again")
        ok += json.loads(path.read_text())["ok"]
    return ok


def _dropped_rows(table: pa.Table, judged: Judged, found: list[tuple[str, str, np.ndarray]]) -> pa.Table | None:
    """The batch's rejected rows in row order, with reason, detail and (for a duplicate) winner.
    found: (reason, what the detail says, each row's winner or -1) per kind of duplicate."""
    offsets, reasons, details = [judged.offsets], [judged.reasons], [judged.details]
    winners = [pa.nulls(len(judged.offsets), pa.int64())]
    for reason, said, winner in found:
        at = np.flatnonzero(winner >= 0)
        if len(at):
            offsets.append(at)
            reasons.append(pa.repeat(pa.scalar(reason, pa.string()), len(at)))
            winners.append(pa.array(winner[at]))
            details.append(pc.binary_join_element_wise(pa.repeat(pa.scalar(f"{said} as row ", pa.string()), len(at)),
                                                       pc.cast(winners[-1], pa.string()), ""))
    offsets = np.concatenate(offsets)
    if not len(offsets):
        return None
    order = pa.array(np.argsort(offsets, kind="stable"))
    dropped = table.take(pa.array(offsets).take(order))
    for name, values in ((REJECT_REASON, reasons), (REJECT_DETAIL, details), (DUPLICATE_OF, winners)):
        dropped = dropped.append_column(name, pa.concat_arrays(values).take(order))
    return dropped


def _remove_on_error(folder: Path, error: BaseException | None) -> None:
    if error is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _write_dropped(rejects: DataWriter, dropped: pa.Table | None, duplicates: DataWriter | None) -> None:
    if dropped is None:
        return
    rejects.write(dropped)
    if duplicates is not None:
        duplicates.write(conform(dropped.filter(pc.is_valid(dropped.column(DUPLICATE_OF))), DUPLICATES_SCHEMA))


def assemble_task(final_dir: str, on_rows=None, cpus: int | None = None) -> dict:
    """Write the data files, rejects, duplicates, card and, last, stats.json, then publish them
    into the final folder; returns the stats. Reads with up to `cpus` threads (default: the CPUs
    this process may use), at most MAX_READERS."""
    plan = read_plan(Path(final_dir))
    run, final, options = plan.run_paths, plan.final_paths, plan.options
    out = final.staged
    settings, manifest = load_run(run)
    load_screen()
    columns = manifest.columns
    parts, gaps = committed_parts(run, manifest, read_records(run, manifest))
    keyed = _keyed_rows(plan)
    kinds = [(kind, reason, said, DuplicateGroups.load(plan, kind))
             for kind, reason, said in ((KEY, DUPLICATE_KEY, f"same {columns.key}"),
                                        (CAPTION, DUPLICATE_CAPTION, "same caption")) if kind in plan.kinds]
    near = NearDuplicates(options.near_dup) if options.near_dup else None
    data_schema = pa.schema([f for f in plan.schema if f.name not in (STATUS, REASON, DETAIL)])
    rejects_schema = pa.schema([*plan.schema, pa.field(REJECT_REASON, pa.string()),
                                pa.field(REJECT_DETAIL, pa.string()), pa.field(DUPLICATE_OF, pa.int64())])
    counts: Counter = Counter()
    duplicates_by_kind: Counter = Counter()
    rows_out = 0
    # Commit order, in the staging folder: each file appears under its name only when complete
    # (atomic_path): the data files as they fill, then (as the stack unwinds) duplicates and
    # rejects; then the card, and stats.json last; publish() then moves them into FINAL in its
    # own order. A reduce that fails (a damaged part, say) removes the staging folder, and the
    # earlier dataset in FINAL is untouched.
    with ExitStack() as stack:
        stack.push(lambda kind, error, trace: _remove_on_error(out.root, error))  # last out: after the writers
        rejects = stack.enter_context(DataWriter(lambda _: out.rejects, rejects_schema, float("inf"),
                                                 options.row_group_rows))
        duplicates = stack.enter_context(DataWriter(lambda _: out.duplicates, DUPLICATES_SCHEMA, float("inf"),
                                                    options.row_group_rows)) if options.write_duplicates else None
        data = stack.enter_context(DataWriter(out.data_file, data_schema, options.target_file_bytes,
                                              options.row_group_rows))
        # Two threads write (parquet encoding releases the GIL): one the data files, the
        # longest job of this stage, and one the rejects and duplicates; so encoding overlaps
        # judging the next batch. Each file has one writer; at most two batches wait.
        data_writer = stack.enter_context(ThreadPoolExecutor(1))
        dropped_writer = stack.enter_context(ThreadPoolExecutor(1))
        pending = deque()
        read = screened_rows(plan.schema, columns, options.rules)
        for table, flags in batches(parts, read, readers=min(cpus or len(os.sched_getaffinity(0)), MAX_READERS)):
            judged = judge_batch(table, flags, columns, options.rules, counts)
            row_ids = table.column(ROW_ID).to_numpy()
            settled = settle_in_order(row_ids, judged.passed, [groups for *_, groups in kinds], near,
                                      table.column(FUSED_CAPTION) if near else None)
            found = [(reason, said, winners) for (_, reason, said, _), winners in zip(kinds, settled)]
            if near is not None:
                found.append((DUPLICATE_NEAR, "caption nearly the same", settled[-1]))
            kept = judged.passed & np.all([winners < 0 for winners in settled], axis=0) if settled else judged.passed
            for reason, _, winners in found:
                duplicates_by_kind[reason] += int((winners >= 0).sum())
            rows_out += int(kept.sum())
            pending.append((data_writer.submit(data.write, conform(table.filter(pa.array(kept)), data_schema)),
                            dropped_writer.submit(_write_dropped, rejects, _dropped_rows(table, judged, found),
                                                  duplicates)))
            while len(pending) > 2:
                for future in pending.popleft():
                    future.result()
            if on_rows:
                on_rows(table.num_rows)
        while pending:
            for future in pending.popleft():
                future.result()
        for _, _, _, groups in kinds:
            groups.check_all_seen()
        ok = counts.pop("ok", 0)
        if ok != keyed:
            raise CapsfusError(f"the parts changed during the reduce: the key tasks saw {keyed} fused rows, "
                               f"assemble {ok}; run the reduce again")
    rejected = dict(sorted(counts.items()))
    duplicates_by_kind = {reason: n for reason, n in duplicates_by_kind.items() if n}
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
        "dedup_key": manifest.columns.key if manifest.columns.key in plan.schema.names else None,  # None: no input had it
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
        "data_bytes": sum((out.root / name).stat().st_size for name in data.files),
        "files": {"data": data.files, "rejects": out.rejects.name,
                  "duplicates": out.duplicates.name if options.write_duplicates else None},
    }
    if stats["rows_out"] + stats["rejected_total"] + stats["duplicates"] + missing_rows != stats["rows_in"]:
        raise CapsfusError(f"internal error: rows do not add up: {json.dumps(stats)}")
    atomic_write_bytes(out.card, dataset_card(stats, data_schema, settings).encode())
    atomic_write_json(out.stats, stats)
    publish(out, final)
    # The plan goes first: stats.json without a plan beside it is a published reduce, even if this
    # task is killed before its scratch is gone (reduce_slurm.wait_for_reduce reads it so).
    final.plan.unlink()
    for entry in final.work.iterdir():
        if entry not in (final.logs, final.lock):  # the lock is its holder's to remove (reduce_lock.py)
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if not any(final.work.iterdir()):
        final.work.rmdir()
    return stats
