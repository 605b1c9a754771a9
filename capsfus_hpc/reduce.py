"""The reducer: judge every fused caption, drop duplicates, and assemble the final dataset.

Every manifest row ends in exactly one place: the final data (accepted), rejects.parquet with
a reject_reason (an invalid input, a caption rule, or a duplicate, whose winner is named in
duplicate_of), or, with --allow-partial only, the missing rows that stats.json lists.

Three stages, each a set of independent tasks that read the plan in FINAL/.reduce/plan.json:
keys (reduce_keys.py: groups of shards, in parallel, spilling normalised keys into hash
partitions), dedup (reduce_dedup.py: the rows that share a key, per partition and kind, in
parallel), and assemble (reduce_assemble.py: one task that judges every row and writes the
dataset, in manifest order, reading each part once). Here they run as local processes;
reduce_slurm.py submits the same tasks as SLURM arrays. Dedup semantics, one greedy pass in
manifest order: a row that passes the caption rules is kept unless a row kept before it has the
same normalised key, or with --dedup-caption the same normalised caption, or with --near-dup a
caption that similar (near_dup.py); duplicate_of names that kept row. So the output is the same bytes
whatever order shards finished in, and however many tasks or partitions did the work.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver
from pathlib import Path

from .errors import CapsfusError
from .paths import ReducePaths, RunPaths
from .reconcile import committed_parts, incomplete_message, parts_schema
from .reduce_assemble import DUPLICATE_CAPTION, DUPLICATE_KEY, DUPLICATES_SCHEMA, assemble_task
from .reduce_dedup import DUPLICATE_OF, dedup_task
from .reduce_judge import CAPTION_REASON_PREFIX, REJECT_DETAIL, REJECT_REASON, load_screen
from .reduce_keys import keys_task
from .reduce_lock import hold_final, refuse_active_reduce
from .near_dup import NearDuplicates
from .reduce_plan import ReduceOptions, ReducePlan, load_rules, plan_reduce, write_plan
from .settings import load_run
from .status import gather_status, read_records

_FINAL = ReducePaths(Path("."))
DATA_FILE = _FINAL.data_file(0).name  # the first (in a small dataset, the only) data file
REJECTS_FILE = _FINAL.rejects.name
DUPLICATES_FILE = _FINAL.duplicates.name
STATS_FILE = _FINAL.stats.name
CARD_FILE = _FINAL.card.name
__all__ = ["CAPTION_REASON_PREFIX", "DUPLICATE_CAPTION", "DUPLICATE_KEY", "DUPLICATE_OF", "DUPLICATES_SCHEMA",
           "REJECT_DETAIL", "REJECT_REASON", "ReduceOptions", "check_final", "load_rules", "reduce_run", "reduce_task"]


def default_workers() -> int:
    """CPUs this process may use (SLURM's allocation or the affinity mask)."""
    return len(os.sched_getaffinity(0))


def check_final(final: ReducePaths, run: RunPaths) -> None:
    """Refuse a final folder that holds anything but an earlier reduce of this run (which is replaced)."""
    if not final.root.exists() or not any(final.root.iterdir()):
        return
    if [entry.name for entry in final.root.iterdir()] == [final.work.name] and not final.plan.exists():
        return  # a reduce stopped before it wrote its plan: nothing else is there yet
    try:
        earlier = json.loads((final.stats if final.stats.exists() else final.plan).read_text())["run"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CapsfusError(f"{final.root} is not empty and holds no earlier reduce output; "
                           "choose an empty --final folder") from None
    if Path(earlier).resolve() != run.root.resolve():
        raise CapsfusError(f"{final.root} holds the reduce of another run ({earlier}); choose another --final "
                           "folder, or remove it to replace that dataset")


def _prepare_final(final: ReducePaths) -> None:
    """Room for a new dataset beside the earlier one, which stays whole until the new one is
    published (check_final has vouched for the folder): a failed reduce's staging folder goes."""
    final.root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final.staged.root, ignore_errors=True)
    final.staged.root.mkdir(parents=True)
    if os.stat(final.staged.root).st_dev != os.stat(final.root).st_dev:
        raise CapsfusError(f"{final.work} is on another file system than {final.root} (a mount or a link): the "
                           "new dataset is moved in by rename, which cannot cross file systems; make it a plain "
                           "folder")


def prepare_reduce(paths: RunPaths, final: Path, options: ReduceOptions, workers: int) -> ReducePlan:
    """Check the options, that the run is complete (or --allow-partial) and that no other reduce
    into the folder is queued or running, then write the plan into the final folder. The caller
    holds the folder (reduce_lock.hold_final)."""
    if options.near_dup is not None:
        NearDuplicates(options.near_dup)  # its threshold, and that datasketch is installed
    _, manifest = load_run(paths)
    records = read_records(paths, manifest)
    status = gather_status(paths, manifest, records=records)
    if not status.complete and not options.allow_partial:
        raise CapsfusError(incomplete_message(paths, status))
    refuse_active_reduce(final, status.reduce_jobs)
    parts, _ = committed_parts(paths, manifest, records)
    if not parts:
        raise CapsfusError(f"run {paths.root} has no committed rows to reduce")
    schema = parts_schema(parts)
    shard_rows: dict[int, int] = {}
    for part in parts:
        shard_rows[part.shard.id] = shard_rows.get(part.shard.id, 0) + part.chunk.rows
    final_paths = ReducePaths(final)
    check_final(final_paths, paths)
    _prepare_final(final_paths)
    plan = plan_reduce(paths.root, final_paths.root, manifest, shard_rows, schema, options, workers)
    write_plan(plan)
    return plan


def _run_stage(pool: ProcessPoolExecutor | None, function, argument_lists, on_done=None) -> list:
    """Run the stage's tasks (in the pool, or here in turn), handing each result on in task order."""
    futures = [pool.submit(function, *arguments) for arguments in argument_lists] if pool else None
    results = []
    for index, arguments in enumerate(argument_lists):
        results.append(futures[index].result() if futures else function(*arguments))
        if on_done:
            on_done(results[-1])
    return results


def reduce_run(paths: RunPaths, final: Path, options: ReduceOptions = ReduceOptions(),
               on_rows: Callable[[int], None] | None = None, workers: int | None = None) -> dict:
    """Check the run, then write the final dataset with up to `workers` processes; returns the stats.
    on_rows is told rows done, counting each row twice: once keyed and once judged and written."""
    workers = workers or default_workers()
    context = multiprocessing.get_context("forkserver")
    if workers > 1:  # the server loads reduce_preload while this process plans
        context.set_forkserver_preload([f"{__package__}.reduce_preload"])
        forkserver.ensure_running()
    with hold_final(Path(final).absolute()):
        plan = prepare_reduce(paths, final, options, workers)
        load_screen()  # for assemble, here, while the server loads the workers' kernels
        final_dir = plan.final
        dedup_tasks = [(final_dir, kind, p) for kind in plan.kinds for p in range(plan.partitions)]
        processes = min(workers, max(len(plan.key_tasks), len(dedup_tasks)))
        pool = ProcessPoolExecutor(processes, mp_context=context) if processes > 1 else None
        done = [0]

        def advance(rows: int) -> None:
            done[0] += rows
            if on_rows:
                on_rows(done[0])

        try:
            _run_stage(pool, keys_task, [(final_dir, t) for t in range(len(plan.key_tasks))],
                       lambda result: advance(result["rows"]))
            _run_stage(pool, dedup_task, dedup_tasks)
        finally:
            if pool is not None:
                pool.shutdown()
        return assemble_task(final_dir, on_rows=advance, cpus=workers)


def reduce_task(run_dir: str, final: str) -> dict:
    """SLURM task entry point for `submit --then-reduce`: plain arguments, like worker.run_shards."""
    return reduce_run(RunPaths(Path(run_dir)), Path(final))
