"""Launching shard tasks: on this machine (submitit's LocalExecutor) or as SLURM job arrays.

Either way a task runs worker.run_shards with plain arguments (run folder, shard ids); only
those are pickled. Every SLURM job is appended to the run's ledger with the shards of each task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import submitit

from . import ledger
from .errors import CapsfusError
from .local_queue import holding
from .paths import RunPaths
from .reduce import reduce_task
from .reduce_lock import refuse_active_reduce, refuse_held
from .manifest import load_manifest, refuse_changed_inputs
from .settings import load_run
from .slurm import (
    DEFAULT_MAX_ARRAY_SIZE, FLAGGED_OPTIONS, ArraySpec, SlurmOptions, max_array_size, plan_arrays, refuse_own_options,
    render_sbatch, sbatch_test_only, slurm_reachable, spec_for, submit_array,
)
from .status import DAMAGED, DONE, PENDING, RUNNING, RunStatus, derive_status, gather_status
from .worker import run_shards


@dataclass(frozen=True)
class TaskOutcome:
    job_id: str
    shard_ids: tuple[int, ...]
    error: str | None  # last line of the task's failure, None on success


def shards_to_run(status: RunStatus) -> list[int]:
    """Shards neither done nor running nor waiting in SLURM's queue."""
    return [s.shard for s in status.shards if s.state not in (DONE, RUNNING) and not (s.state == PENDING and s.queued)]


def group_shards(shard_ids: list[int], shards_per_task: int) -> list[list[int]]:
    if shards_per_task < 1:
        raise ValueError("shards_per_task must be at least 1")
    return [shard_ids[i : i + shards_per_task] for i in range(0, len(shard_ids), shards_per_task)]


def _failure(job: submitit.Job) -> str | None:
    """The task's own error: the last line of the traceback submitit relays, before its footer."""
    exception = job.exception()
    if exception is None:
        return None
    trace = str(exception).split("You can check full logs")[0]
    lines = [line for line in trace.splitlines() if line.strip() and not line.startswith((" ", "-"))]
    last = lines[-1] if lines else type(exception).__name__
    return last.removeprefix(f"{CapsfusError.__module__}.{CapsfusError.__name__}: ")


@contextmanager
def _threads_per_task(workers: int) -> Iterator[None]:
    """Tasks inherit the environment: share the cores instead of each spinning on all of them."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = previous or str(max(1, (os.cpu_count() or 1) // max(workers, 1)))
    try:
        yield
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]


def run_local(paths: RunPaths, groups: list[list[int]], workers: int = 1, timeout_min: float = 7 * 24 * 60,
              on_poll: Callable[[], None] | None = None, poll_s: float = 0.5) -> list[TaskOutcome]:
    """Run the shard groups as local tasks, at most `workers` at once; returns each task's outcome."""
    executor = submitit.LocalExecutor(folder=paths.logs)
    executor.update_parameters(timeout_min=timeout_min)
    queue = list(groups)
    running: list[tuple[submitit.Job, list[int]]] = []
    outcomes: list[TaskOutcome] = []
    with holding(paths, [shard for group in groups for shard in group]):  # status sees the queue as pending
        while queue or running:
            while queue and len(running) < max(workers, 1):
                group = queue.pop(0)
                with _threads_per_task(workers):
                    running.append((executor.submit(run_shards, str(paths.root), group), group))
            for job, group in [entry for entry in running if entry[0].done()]:
                running.remove((job, group))
                outcomes.append(TaskOutcome(str(job.job_id), tuple(group), _failure(job)))
            if on_poll:
                on_poll()
            if running:
                time.sleep(poll_s)
    return outcomes


def submit_local(paths: RunPaths, shards_per_task: int = 1, workers: int = 1,
                 on_poll: Callable[[], None] | None = None,
                 on_verified: Callable[[int], None] | None = None) -> tuple[list[int], list[TaskOutcome]]:
    """Run every shard of the run folder that is not done (with every committed part as its
    checksum says), running, or queued in SLURM; returns (shards, outcomes)."""
    _, manifest = load_run(paths)
    shard_ids = shards_to_run(gather_status(paths, manifest, verify=True, on_verified=on_verified))
    return shard_ids, run_local(paths, group_shards(shard_ids, shards_per_task), workers, on_poll=on_poll)


@dataclass(frozen=True)
class SlurmPlan:
    """What a SLURM submission will do: arrays of shard groups, their scripts, and its cost."""

    arrays: tuple[tuple[tuple[int, ...], ...], ...]  # array -> task -> shard ids
    specs: tuple[ArraySpec, ...]
    reduce_spec: ArraySpec | None
    rows: int
    samples_per_s: float
    gpus_per_task: int
    reduce_after: tuple[str, ...] = ()  # the run's fusion jobs SLURM still has, which the reduce job waits for too

    @property
    def gpus_counted(self) -> int:
        """The GPUs a task is costed at: a CPU task counts as one."""
        return max(self.gpus_per_task, 1)

    @property
    def gpu_hours(self) -> float:
        return self.rows / self.samples_per_s / 3600 * self.gpus_counted

    def scripts(self) -> list[str]:
        return [render_sbatch(spec) for spec in (*self.specs, *([self.reduce_spec] if self.reduce_spec else []))]


# The run commands' options that only a SLURM submission uses (named as the command's parameters).
SLURM_COMMAND_OPTIONS = ("time", "gpus", "cpus", "mem", "partition", "account", "qos", "constraint", "array_parallelism",
                         "signal_delay", "max_requeues", "sbatch_arg")
DEFAULT_SAMPLES_PER_S = 50.0  # of one task, for the dry run's GPU-hour estimate


def slurm_options_for(paths: RunPaths, profile: dict, given: dict) -> SlurmOptions:
    """The options of the run's latest fusion job (none before the first), then the profile's,
    then those given (a command's options, None where not given): a resume keeps the partition,
    account and resources it does not change."""
    refuse_own_options(given["sbatch_arg"] or (), set(FLAGGED_OPTIONS.values()))
    options = dict(ledger.latest_fuse_options(ledger.read(paths.ledger)) or {})
    options.update(profile)
    renamed = {"signal_delay": "signal_delay_s", "sbatch_arg": "extra"}
    for name in SLURM_COMMAND_OPTIONS:
        if given[name] is not None:
            options[renamed.get(name, name)] = given[name]
    known = {f.name for f in fields(SlurmOptions)}
    return SlurmOptions(**{**{k: v for k, v in options.items() if k in known}, "extra": tuple(options.get("extra", ()))})


def plan_slurm(paths: RunPaths, status: RunStatus, options: SlurmOptions, shards_per_task: int, max_tasks: int,
               samples_per_s: float, then_reduce: Path | None) -> SlurmPlan:
    """Pure: the arrays for the shards still to run, cut to the cluster's MaxArraySize."""
    shard_ids = shards_to_run(status)
    # A damaged shard's committed rows count too: an upper bound, for its damaged chunks are fused again.
    rows = sum(s.rows_total if s.state == DAMAGED else s.rows_total - s.rows_done
               for s in status.shards if s.shard in shard_ids)
    arrays = plan_arrays(group_shards(shard_ids, shards_per_task), max_tasks)
    specs = tuple(spec_for(paths.logs, options, len(array), requeue=True) for array in arrays)
    # A resume leaves the shards SLURM has queued or running to their jobs: its reduce waits for those too.
    # Only jobs squeue lists: a local worker's id, or a job SLURM has purged, would make sbatch refuse.
    active = tuple(dict.fromkeys(ledger.job_of(s.job_id) for s in status.shards if s.queued))
    reduce_spec = None
    if then_reduce is not None:
        # The new arrays' job ids are known only once they are submitted: a placeholder stands for them.
        reduce_spec = spec_for(paths.logs, replace(options, gpus=None), 1,
                               dependency=_after([*(["<fuse job ids>"] if arrays else []), *active]))
    return SlurmPlan(tuple(tuple(tuple(g) for g in a) for a in arrays), specs, reduce_spec, rows,
                     samples_per_s, options.gpus or 0, active)


def _after(job_ids: list[str]) -> str | None:
    return "afterany:" + ":".join(job_ids) if job_ids else None


def prepare_slurm(paths: RunPaths, manifest_path: Path, options: SlurmOptions, shards_per_task: int,
                  samples_per_s: float, then_reduce: Path | None,
                  on_verified: Callable[[int], None] | None = None) -> tuple[SlurmPlan, bool]:
    """The plan for what is left of a run (a run folder not created yet: all of it), and whether
    SLURM answered; away from a cluster (a dry run on a laptop) SLURM's default MaxArraySize is
    assumed. Every committed part is checked first (on_verified: shards checked), so a damaged
    one is fused again."""
    manifest = load_manifest(manifest_path)
    status = (gather_status(paths, manifest, verify=True, on_verified=on_verified) if paths.run_config.exists()
              else derive_status(manifest, {}, {}))
    if then_reduce is not None:
        refuse_held(then_reduce.absolute())
        refuse_active_reduce(then_reduce, status.reduce_jobs)
    refuse_changed_inputs(manifest, shards_to_run(status))
    reachable = slurm_reachable()
    max_tasks = max_array_size() if reachable else DEFAULT_MAX_ARRAY_SIZE
    return plan_slurm(paths, status, options, shards_per_task, max_tasks, samples_per_s, then_reduce), reachable


def validate_plan(plan: SlurmPlan, reachable: bool) -> list[tuple[bool, str]]:
    """sbatch --test-only's answer for each array's script: (accepted, what it said)."""
    return [sbatch_test_only(script) if reachable else (True, "SLURM not reachable: not validated")
            for script in plan.scripts()[: len(plan.specs)]]


def refusal(checks: list[tuple[bool, str]]) -> str | None:
    """The first array sbatch --test-only refused, as an error line; None if it refused none."""
    return next((f"sbatch --test-only refused array {index}: {message}"
                 for index, (accepted, message) in enumerate(checks) if not accepted), None)


def submit_plan(paths: RunPaths, plan: SlurmPlan, then_reduce: Path | None) -> list[ledger.Submission]:
    """Submit the plan's arrays (then the reduce job), recording each in the ledger as it goes."""
    paths.logs.mkdir(parents=True, exist_ok=True, mode=0o755)
    entries = []
    for array, spec in zip(plan.arrays, plan.specs):
        task_ids = submit_array(spec, run_shards, [(str(paths.root), list(group)) for group in array])
        job_id = ledger.job_of(task_ids[0])
        entries.append(ledger.append(paths.ledger, job_id, ledger.FUSE, [(t, list(g)) for t, g in zip(task_ids, array)],
                                     asdict(spec.options)))
    if plan.reduce_spec is not None and then_reduce is not None:
        spec = replace(plan.reduce_spec, dependency=_after([*(e.job_id for e in entries), *plan.reduce_after]))
        [task_id] = submit_array(spec, reduce_task, [(str(paths.root), str(then_reduce.absolute()))])
        entries.append(ledger.append(paths.ledger, task_id, ledger.REDUCE, [(task_id, [])],
                                     final=str(then_reduce.absolute())))
    return entries
